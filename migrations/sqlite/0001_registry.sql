-- The beatlab run registry. Times are Unix seconds (REAL) so that lease arithmetic is plain SQL.

CREATE TABLE experiments (
    name        TEXT PRIMARY KEY NOT NULL,
    spec_path   TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL
);

CREATE TABLE runs (
    num           INTEGER PRIMARY KEY,      -- compact key for the metrics table
    id            TEXT NOT NULL UNIQUE,
    experiment    TEXT NOT NULL REFERENCES experiments(name),
    cell_index    INTEGER NOT NULL,
    cell_label    TEXT NOT NULL,
    overrides     TEXT NOT NULL,          -- JSON object: sweep key -> value
    spec_json     TEXT NOT NULL,          -- canonical resolved spec
    spec_hash     TEXT NOT NULL,
    seed          INTEGER NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('pending', 'running', 'finished', 'failed', 'stale')),
    attempt       INTEGER NOT NULL DEFAULT 1,
    stage         TEXT,                   -- stage running now (or last run)
    code_rev      TEXT NOT NULL,
    code_dirty    INTEGER NOT NULL,
    host          TEXT NOT NULL,
    device        TEXT NOT NULL,
    worker        TEXT NOT NULL,
    run_dir       TEXT NOT NULL,
    created_at    REAL NOT NULL,
    started_at    REAL,
    heartbeat_at  REAL,
    lease_s       REAL NOT NULL DEFAULT 60, -- the holder heartbeats well within this; past it the run is stale
    finished_at   REAL,
    error         TEXT
);
CREATE INDEX runs_by_hash ON runs (spec_hash, created_at);
CREATE INDEX runs_by_experiment ON runs (experiment, status);

-- Metric names, stored once: the metrics table holds integer ids, which halves its size and
-- doubles its write rate compared with repeating the run id and key text in every point.
CREATE TABLE metric_keys (
    id    INTEGER PRIMARY KEY,
    name  TEXT NOT NULL UNIQUE
);

CREATE TABLE metrics (
    run     INTEGER NOT NULL REFERENCES runs(num),
    key     INTEGER NOT NULL REFERENCES metric_keys(id),
    step    INTEGER NOT NULL,
    value   REAL NOT NULL,
    time    REAL NOT NULL,
    PRIMARY KEY (run, key, step)
) WITHOUT ROWID;

CREATE TABLE summaries (
    run_id  TEXT NOT NULL REFERENCES runs(id),
    key     TEXT NOT NULL,
    value   REAL NOT NULL,
    PRIMARY KEY (run_id, key)
) WITHOUT ROWID;

CREATE TABLE checkpoints (
    run_id      TEXT NOT NULL REFERENCES runs(id),
    stage       TEXT NOT NULL,
    step        INTEGER NOT NULL,
    epoch       INTEGER NOT NULL,
    final       INTEGER NOT NULL DEFAULT 0,  -- 1: the stage finished with this checkpoint
    path        TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    bytes       INTEGER NOT NULL,
    created_at  REAL NOT NULL,
    PRIMARY KEY (run_id, stage, step)
) WITHOUT ROWID;
