"""The harness the tests and the benchmarks share: PostgreSQL for a test run (`pg`), real SUMO
scenarios built with SUMO's own tools (`scenarios`), `sumo-supervisor serve` as a subprocess
(`daemon`), and the daemon's HTTP API (`http`), with the polling they need (`poll`).

Nothing here is a fixture: `tests/conftest.py` declares the fixtures as thin wrappers, and the
benchmarks (`python -m bench.X` from the repo root) call the same functions directly. Importing
it starts nothing: PostgreSQL and SUMO run only when a function that needs them is called."""
