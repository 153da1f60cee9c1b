#!/usr/bin/env bash
# kill -9 at random points of every stage kind, longer than CI's run: TRIALS runs of the
# four-stage pipeline (default 24, six per stage kind) are SIGKILLed at random moments, resumed,
# and compared with an uninterrupted run (tests/kill9.rs). SEED picks other random points.
#
#   scripts/kill9.sh            # 24 trials, seed 1
#   TRIALS=40 SEED=7 scripts/kill9.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BEATLAB_KILL9_TRIALS="${TRIALS:-24}" BEATLAB_KILL9_SEED="${SEED:-1}" \
    cargo test --locked --test kill9 runs_killed_at_random_points -- --nocapture
