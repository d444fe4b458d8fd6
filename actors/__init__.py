"""The daemon's actors: each module owns its state and is reached by messages."""
