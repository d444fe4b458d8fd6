-- sumo-supervisor's database. Applied at every start; every statement is idempotent.
-- The database is the source of truth: a restarted daemon rebuilds its view from these tables.

-- A named scenario. Its content lives in immutable versions.
CREATE TABLE IF NOT EXISTS templates (
    name        text PRIMARY KEY CHECK (name ~ '^[a-z0-9][a-z0-9_.-]{0,62}$'),
    created_at  timestamptz NOT NULL DEFAULT now()
);
-- The highest version number ever given: a deleted version's number is never given again to
-- other content while the template exists.
ALTER TABLE templates ADD COLUMN IF NOT EXISTS last_version integer NOT NULL DEFAULT 0;

-- One upload of a template. Never changed after insert; a new upload of the same name is a new
-- version. `sha256` hashes the config path and every (path, file hash) pair, so equal content
-- gives an equal hash.
CREATE TABLE IF NOT EXISTS template_versions (
    name         text NOT NULL REFERENCES templates (name) ON DELETE CASCADE,
    version      integer NOT NULL CHECK (version >= 1),
    config_path  text NOT NULL,
    sha256       text NOT NULL,
    total_bytes  bigint NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);

-- The files of a template version, by relative path (subfolders allowed). SUMO reads them from a
-- per-session temp dir they are materialized into.
CREATE TABLE IF NOT EXISTS template_files (
    name     text NOT NULL,
    version  integer NOT NULL,
    path     text NOT NULL,
    sha256   text NOT NULL,
    size     bigint NOT NULL,
    content  bytea NOT NULL,
    PRIMARY KEY (name, version, path),
    FOREIGN KEY (name, version) REFERENCES template_versions (name, version) ON DELETE CASCADE
);

-- One simulation run. The id starts with its UTC creation time (fixed width), so ids sort by
-- creation. `pid` and `pid_started_at` identify the SUMO process, so a restarted daemon kills
-- only that process, never a later one that reused the pid.
CREATE TABLE IF NOT EXISTS sessions (
    id                text PRIMARY KEY,
    template_name     text NOT NULL,
    template_version  integer NOT NULL,
    status            text NOT NULL CHECK (status IN
                        ('queued', 'starting', 'running', 'completed', 'failed', 'stopped', 'timed_out')),
    request           jsonb NOT NULL,
    label             text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    ended_at          timestamptz,
    end_time          double precision,
    sim_time          double precision,
    port              integer,
    pid               integer,
    pid_started_at    double precision,
    exit_code         integer,
    cause             text,
    error             text,
    FOREIGN KEY (template_name, template_version) REFERENCES template_versions (name, version)
);
CREATE INDEX IF NOT EXISTS sessions_status_idx ON sessions (status, id);
CREATE INDEX IF NOT EXISTS sessions_label_idx ON sessions (label, id) WHERE label IS NOT NULL;

-- Every status change of a session, with why.
CREATE TABLE IF NOT EXISTS session_events (
    id          bigserial PRIMARY KEY,
    session_id  text NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    status      text NOT NULL,
    reason      text
);
CREATE INDEX IF NOT EXISTS session_events_session_idx ON session_events (session_id, id);

-- One aggregate row per session every `sample_every` steps, written in batches by the writer.
-- `departed`/`arrived` count vehicles in the interval since the previous sample, so their sums
-- are the run's totals; `waiting_time` is the vehicle-seconds spent halting in the interval, so
-- its sum is the run's total waiting time.
CREATE TABLE IF NOT EXISTS samples (
    session_id    text NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    sim_time      double precision NOT NULL,
    vehicles      integer NOT NULL,
    departed      integer NOT NULL,
    arrived       integer NOT NULL,
    mean_speed    double precision NOT NULL,
    halting       integer NOT NULL,
    waiting_time  double precision NOT NULL,
    PRIMARY KEY (session_id, sim_time)
);
-- Vehicles that started teleporting in the interval (SUMO's stats.teleports.total, differenced).
ALTER TABLE samples ADD COLUMN IF NOT EXISTS teleports integer NOT NULL DEFAULT 0;

-- Which run of the session this is: a session interrupted by the daemon's death is run again
-- (on_interrupt = 'rerun'), its earlier rows replaced.
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS attempt integer NOT NULL DEFAULT 1;

-- Every command applied to a running session, with the sim time it was applied at, so a run can
-- be replayed (a new session with "replay_of" applies them again at the same times).
CREATE TABLE IF NOT EXISTS session_commands (
    session_id  text NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    seq         integer NOT NULL,
    sim_time    double precision NOT NULL,
    command     jsonb NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (session_id, seq)
);

-- A sweep: one session per combination of seeds and varied parameters.
CREATE TABLE IF NOT EXISTS sweeps (
    id          text PRIMARY KEY,
    request     jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS sweep_id text REFERENCES sweeps (id) ON DELETE SET NULL;
CREATE INDEX IF NOT EXISTS sessions_sweep_idx ON sessions (sweep_id) WHERE sweep_id IS NOT NULL;

-- The big per-session tables are partitioned by session: one partition per session that records
-- them, created when it starts (see create_record_partitions in supervisor/pgstore.py). Rows of
-- one session stay together however many sessions accumulate, the session's own partition has
-- its id as the column default (so SUMO's CSV output is COPYed in as it is), and deleting a
-- session drops its partitions instead of deleting millions of rows.

-- Every vehicle's state every `trajectory_period` seconds (SUMO's FCD output).
CREATE TABLE IF NOT EXISTS trajectories (
    session_id  text NOT NULL,
    time        double precision NOT NULL,
    vehicle     text NOT NULL,
    x           double precision,
    y           double precision,
    angle       double precision,
    speed       double precision,
    lane        text
) PARTITION BY LIST (session_id);

-- One row per finished trip (SUMO's tripinfo output).
CREATE TABLE IF NOT EXISTS trips (
    session_id    text NOT NULL,
    vehicle       text NOT NULL,
    vtype         text,
    depart        double precision,
    arrival       double precision,
    duration      double precision,
    route_length  double precision,
    waiting_time  double precision,
    waiting_count integer,
    time_loss     double precision,
    depart_delay  double precision,
    reroutes      integer
) PARTITION BY LIST (session_id);

-- How far the writer got with each recorded output: the sequence number of its last committed
-- chunk, committed in the same transaction as the chunk's rows. A retry after a commit whose
-- answer was lost (the server died just after committing) is skipped instead of written twice.
CREATE TABLE IF NOT EXISTS ingest_marks (
    session_id  text NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    target      text NOT NULL,
    seq         bigint NOT NULL,
    PRIMARY KEY (session_id, target)
);

-- SUMO's own end-of-run statistics (its --statistic-output, read when SUMO has exited): each
-- element (vehicles, teleports, safety, persons, vehicleTripStatistics, ...) with its attributes.
-- The summary's figures are these; a session whose SUMO wrote none (killed) has no row.
CREATE TABLE IF NOT EXISTS session_statistics (
    session_id  text PRIMARY KEY REFERENCES sessions (id) ON DELETE CASCADE,
    statistics  jsonb NOT NULL
);

-- A finished session's sample totals, kept when its end is written: a summary of a session
-- nobody read for a while is then one row, not every sample page of it from a cold disk.
-- A session without (ended before this table, or not by its own actor) is summed live.
CREATE TABLE IF NOT EXISTS session_totals (
    session_id  text PRIMARY KEY REFERENCES sessions (id) ON DELETE CASCADE,
    inserted    bigint NOT NULL,
    arrived     bigint NOT NULL,
    teleports   bigint NOT NULL,
    running     integer NOT NULL,
    last_time   double precision
);

-- Per-edge aggregates per interval (SUMO's edgeData output).
CREATE TABLE IF NOT EXISTS edge_data (
    session_id      text NOT NULL,
    interval_begin  double precision NOT NULL,
    interval_end    double precision NOT NULL,
    edge            text NOT NULL,
    entered         integer,
    left_edge       integer,
    mean_speed      double precision,
    occupancy       double precision,
    density         double precision,
    sampled_seconds double precision
) PARTITION BY LIST (session_id);

-- API tokens. The token itself is shown once, when made; only its SHA-256 is kept (a token is
-- 256 random bits, so a fast hash is enough). A name is unique among the tokens not revoked;
-- revoked ones stay, for the record. `last_used_at` is written in batches, not per request.
CREATE TABLE IF NOT EXISTS api_tokens (
    id            bigserial PRIMARY KEY,
    name          text NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.@-]{0,62}$'),
    role          text NOT NULL CHECK (role IN ('reader', 'operator', 'admin')),
    hash          bytea NOT NULL UNIQUE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    expires_at    timestamptz,
    revoked_at    timestamptz
);
CREATE UNIQUE INDEX IF NOT EXISTS api_tokens_live_name ON api_tokens (name) WHERE revoked_at IS NULL;

-- Every daemon on this database reloads its tokens when they change (a revocation made with the
-- CLI, straight in the database, takes effect at once); last-used updates do not count.
CREATE OR REPLACE FUNCTION api_tokens_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('api_tokens', '');
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER api_tokens_changed
    AFTER INSERT OR DELETE OR UPDATE OF role, expires_at, revoked_at ON api_tokens
    FOR EACH STATEMENT EXECUTE FUNCTION api_tokens_notify();

-- Every daemon that uses this database, one row per process start: `id` is random for each
-- start, `name` (the hostname by default) is for people and never an identity. `boot_id` is
-- the kernel's, so a node can tell a dead node of its own machine, whose SUMO processes it may
-- kill, from one elsewhere.
CREATE TABLE IF NOT EXISTS nodes (
    id            text PRIMARY KEY,
    name          text NOT NULL,
    api_url       text,
    capacity      integer NOT NULL,
    boot_id       text NOT NULL,
    pid           integer NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    draining      boolean NOT NULL DEFAULT false,
    stopped_at    timestamptz
);

-- The node that runs a starting or running session, under a lease it renews: `lease_epoch`
-- grows by one at every claim, and every write of the owner is conditioned on (owner_node,
-- lease_epoch), so a node that lost its lease changes nothing. Times are the database's.
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS owner_node text;
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS lease_epoch bigint NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS lease_expires_at timestamptz;
CREATE INDEX IF NOT EXISTS sessions_owner_idx ON sessions (owner_node) WHERE owner_node IS NOT NULL;
CREATE INDEX IF NOT EXISTS sessions_lease_idx ON sessions (lease_expires_at)
    WHERE status IN ('starting', 'running');
-- The queue, oldest first: what a claim picks and what a count of the queue reads. Without it
-- the claim walked the primary key from the oldest session and filtered the status, past
-- every finished session (43 ms a claim among 100,000 of them, bench/store_scale.py).
CREATE INDEX IF NOT EXISTS sessions_queued_idx ON sessions (id) WHERE status = 'queued';
-- The schema texts applied to this database, by their SHA-256: a daemon whose schema.sql is
-- already applied skips it. Applying it again would take ALTER TABLE's exclusive lock on the
-- tables other nodes are writing, and a node starting beside running ones deadlocked on it.
CREATE TABLE IF NOT EXISTS schema_applied (
    sha256 text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);
