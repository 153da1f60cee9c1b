#!/usr/bin/env bash
# One command for a fresh machine: create bench/.venv with the Python peers (PyTorch, MLflow,
# wfdb), build the benchmark in release mode, and run every benchmark against its peer, printing
# the ratios. Extra arguments go to the benchmark, e.g.
#   scripts/bench.sh beat --rounds 7
#   scripts/bench.sh all --json > bench.json
#   THREADS=16 scripts/bench.sh beat --device cuda     (a CUDA build: CARGO_FEATURES=cuda)
# THREADS (default: every core) sets RAYON_NUM_THREADS for candle, which the benchmark passes
# on to PyTorch, so both sides use the same number of threads.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=bench/.venv
if [ ! -x "$venv/bin/python" ]; then
    echo "creating $venv" >&2
    python3 -m venv "$venv"
fi
# torch from the default index is the CUDA build, about 5 GB with its nvidia packages; pip
# skips everything already installed at the pinned versions.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r bench/requirements.txt

features=()
if [ -n "${CARGO_FEATURES:-}" ]; then
    features=(--features "$CARGO_FEATURES")
fi
cargo build --release -p beatlab --bin beatlab -p beatlab-bench --bin beatlab-bench "${features[@]}"

export RAYON_NUM_THREADS="${THREADS:-$(nproc)}"
export BEATLAB_ECG_DATA="${BEATLAB_ECG_DATA:-$(cd .. && pwd)/shared/data/ecg}"
exec "${CARGO_TARGET_DIR:-target}/release/beatlab-bench" "${@:-all}"
