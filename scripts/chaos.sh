#!/usr/bin/env bash
# Chaos of issue #10, longer than CI's run: TRIALS sweeps (default 32) of 4 tiny cells whose
# workers are hit at random moments by kill -9, `scancel --signal=USR2`, `scontrol requeue` and
# PostgreSQL restarts, cycling through local and Slurm workers on SQLite and PostgreSQL
# registries (tests/slurm_chaos.rs); every cell must finish exactly once, as uninterrupted.
# scripts/test.sh starts PostgreSQL and Slurm for it. SEED picks other random moments.
#
#   scripts/chaos.sh            # 32 trials, seed 1
#   TRIALS=60 SEED=7 scripts/chaos.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BEATLAB_CHAOS_TRIALS="${TRIALS:-32}" BEATLAB_CHAOS_SEED="${SEED:-1}" \
    scripts/test.sh --test slurm_chaos -- --nocapture
