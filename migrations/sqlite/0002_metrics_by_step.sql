-- Metric points keyed (run, step, key) instead of (run, key, step). A training loop logs every
-- key at each step, so each batch now lands at the end of its run's range of the B-tree instead
-- of in one place per key: fewer page splits and seeks, about 1.3x the write rate. Reads of a
-- run's points sort by key name anyway.
--
-- No foreign-key clauses: checking them looked up `runs` and `metric_keys` once per point, a
-- third of the insert time (810k against 540k points/s with Python's sqlite3 on this table).
-- The only writer, `Registry::log_metrics`, resolves both ids inside the same transaction (an
-- unknown run is an error, a new key is inserted first), and runs and keys are never deleted.

CREATE TABLE metrics_by_step (
    run     INTEGER NOT NULL,
    key     INTEGER NOT NULL,
    step    INTEGER NOT NULL,
    value   REAL NOT NULL,
    time    REAL NOT NULL,
    PRIMARY KEY (run, step, key)
) WITHOUT ROWID;

INSERT INTO metrics_by_step (run, key, step, value, time)
    SELECT run, key, step, value, time FROM metrics;

DROP TABLE metrics;

ALTER TABLE metrics_by_step RENAME TO metrics;
