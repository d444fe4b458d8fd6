"""sumo-supervisor: the daemon (config, wiring, API, CLI, database access)."""
