#!/usr/bin/env bash
# The fuzz harness (tests/fuzz.rs) for longer than CI's 1.5 s per target: SECONDS_PER_TARGET
# (default 300) for each target, or only the targets named. Prints executions per target; a
# failing input is saved under target/fuzz-crashes/<target>/ and the seed that remakes it is
# printed (replay one with ARBTEST_SEED=0x... cargo test --test fuzz <target>).
#
#   scripts/fuzz.sh                          # every target, 300 s each
#   SECONDS_PER_TARGET=60 scripts/fuzz.sh wfdb_record mat_record
set -euo pipefail
cd "$(dirname "$0")/.."
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(spec_loader wfdb_header wfdb_record mat_record annotation_reader ludb_csv ptbxl_csv checkpoint_loader
        instruct_items tokenizer_json lm_weights)
fi
# Built once; the test binary is then run per target (the tests read their seeds relative to
# the repository root, where cargo runs them too).
binary=$(cargo test --locked --test fuzz --no-run --message-format=json \
    | sed -n 's/.*"executable":"\([^"]*fuzz[^"]*\)".*/\1/p' | tail -1)
status=0
for t in "${targets[@]}"; do
    BEATLAB_FUZZ_MS=$(( ${SECONDS_PER_TARGET:-300} * 1000 )) \
        "$binary" "$t" --exact --nocapture 2>&1 | grep -E '^fuzz |panicked|seed|rror' || status=1
done
exit $status
