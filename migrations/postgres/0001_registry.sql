-- The beatlab run registry on PostgreSQL: the same tables, columns and version history as
-- migrations/sqlite/. Times are Unix seconds (DOUBLE PRECISION) so that lease arithmetic is
-- plain SQL, taken from the database's clock; integers are BIGINT and flags 0/1 BIGINT, as in
-- SQLite, so that both stores read their rows with the same code.

CREATE TABLE experiments (
    name        TEXT PRIMARY KEY NOT NULL,
    spec_path   TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_at  DOUBLE PRECISION NOT NULL,
    updated_at  DOUBLE PRECISION NOT NULL
);

CREATE TABLE runs (
    num           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, -- compact key for metrics
    id            TEXT NOT NULL UNIQUE,
    experiment    TEXT NOT NULL REFERENCES experiments(name),
    cell_index    BIGINT NOT NULL,
    cell_label    TEXT NOT NULL,
    overrides     TEXT NOT NULL,          -- JSON object: sweep key -> value
    spec_json     TEXT NOT NULL,          -- canonical resolved spec
    spec_hash     TEXT NOT NULL,
    seed          BIGINT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('pending', 'running', 'finished', 'failed', 'stale')),
    attempt       BIGINT NOT NULL DEFAULT 1,
    stage         TEXT,
    code_rev      TEXT NOT NULL,
    code_dirty    BIGINT NOT NULL,
    host          TEXT NOT NULL,
    device        TEXT NOT NULL,
    worker        TEXT NOT NULL,
    run_dir       TEXT NOT NULL,
    created_at    DOUBLE PRECISION NOT NULL,
    started_at    DOUBLE PRECISION,
    heartbeat_at  DOUBLE PRECISION,
    lease_s       DOUBLE PRECISION NOT NULL DEFAULT 60,
    finished_at   DOUBLE PRECISION,
    error         TEXT
);
CREATE INDEX runs_by_hash ON runs (spec_hash, created_at);
CREATE INDEX runs_by_experiment ON runs (experiment, status);

CREATE TABLE metric_keys (
    id    BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name  TEXT NOT NULL UNIQUE
);

CREATE TABLE metrics (
    run     BIGINT NOT NULL REFERENCES runs(num),
    key     BIGINT NOT NULL REFERENCES metric_keys(id),
    step    BIGINT NOT NULL,
    value   DOUBLE PRECISION NOT NULL,
    time    DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (run, key, step)
);

CREATE TABLE summaries (
    run_id  TEXT NOT NULL REFERENCES runs(id),
    key     TEXT NOT NULL,
    value   DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (run_id, key)
);

CREATE TABLE checkpoints (
    run_id      TEXT NOT NULL REFERENCES runs(id),
    stage       TEXT NOT NULL,
    step        BIGINT NOT NULL,
    epoch       BIGINT NOT NULL,
    final       BIGINT NOT NULL DEFAULT 0,  -- 1: the stage finished with this checkpoint
    path        TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    bytes       BIGINT NOT NULL,
    created_at  DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (run_id, stage, step)
);
