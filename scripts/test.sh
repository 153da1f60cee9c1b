#!/usr/bin/env bash
# The README's test command, for a fresh machine that has Rust, Python 3 and pip: install and
# start what the tests need (each part in scripts/test.d/, in name order), run the whole test
# suite, and stop every server it started, whatever the outcome. Extra arguments go to
# `cargo test` (e.g. `scripts/test.sh --test e2e`).
#
# A part file is sourced by this shell. It installs and starts its piece, exports the variables
# the tests read (e.g. BEATLAB_TEST_POSTGRES), and registers its cleanup with `on_exit CMD`.
set -euo pipefail
cd "$(dirname "$0")/.."

# Tests that need a server skip outside this setup and say so; under it they must run.
export BEATLAB_TEST_SETUP=1
export BEATLAB_ECG_DATA="${BEATLAB_ECG_DATA:-$(cd .. && pwd)/shared/data/ecg}"

cleanups=()
on_exit() { cleanups+=("$*"); }
run_cleanups() {
    local i
    for ((i = ${#cleanups[@]} - 1; i >= 0; i--)); do
        eval "${cleanups[i]}" || echo "test.sh: cleanup failed: ${cleanups[i]}" >&2
    done
}
trap run_cleanups EXIT

# apt-get update at most once per run, for the parts that install Debian packages.
apt_updated=0
apt_install() {
    if [ "$apt_updated" = 0 ]; then
        apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

for part in scripts/test.d/*.sh; do
    # shellcheck source=/dev/null
    source "$part"
done

cargo test --workspace --locked "$@"
