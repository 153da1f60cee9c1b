-- Metric points keyed (run, step, key), as in migrations/sqlite/0002: a training loop logs
-- every key at each step, so a batch lands at the end of its run's range of the index. No
-- foreign keys on metrics: the only writer resolves the run and key ids in the same
-- transaction, and runs and keys are never deleted.

ALTER TABLE metrics DROP CONSTRAINT metrics_pkey;
ALTER TABLE metrics DROP CONSTRAINT metrics_run_fkey;
ALTER TABLE metrics DROP CONSTRAINT metrics_key_fkey;
ALTER TABLE metrics ADD PRIMARY KEY (run, step, key);
