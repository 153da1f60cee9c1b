-- Who holds a run and how often it failed (see migrations/sqlite/0003_holders.sql): `failures`
-- counts attempts that ended without finishing, `job` names the batch job (`JOBID_TASK` for a
-- Slurm array task), and at most one unfinished run exists per cell.

ALTER TABLE runs ADD COLUMN failures BIGINT NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN job TEXT;
CREATE UNIQUE INDEX runs_one_open_per_cell ON runs (spec_hash)
    WHERE status IN ('pending', 'running', 'stale');
