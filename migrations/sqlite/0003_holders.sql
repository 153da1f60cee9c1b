-- Who holds a run and how often it failed.
--
-- `failures` counts the attempts of a run that ended without finishing: an error or panic, or a
-- holder that died (its process gone, or its lease expired). A run that failed `--max-failures`
-- times is marked failed instead of being taken over again, so a cell that crashes every worker
-- stops being retried.
--
-- `job` names the batch job that holds (or last held) the run: `JOBID_TASK` for a Slurm array
-- task, `JOBID` for a plain Slurm job, NULL outside a batch system.
--
-- At most one unfinished run per cell: claims and enqueues rely on it when several workers
-- create a cell's run at once (the loser's insert fails instead of duplicating the cell).

ALTER TABLE runs ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN job TEXT;
CREATE UNIQUE INDEX runs_one_open_per_cell ON runs (spec_hash)
    WHERE status IN ('pending', 'running', 'stale');
