#!/usr/bin/env bash
# Fuzzes every file reader (COCO JSON, a model's config.json, safetensors weights, optimizer
# state, PNG and JPEG images) for a stated time: the proptests of
# crates/retina-wgpu/tests/fuzz_files.rs with many more cases than `cargo test` runs, round after
# round with fresh random seeds, until the time is up. Not part of CI (CI runs the same tests at
# their default case counts). A failure prints proptest's minimal failing input: add it as a
# case of its own to tests/fuzz_files.rs.
#
#   scripts/fuzz_files.sh [SECONDS]     # default 600
set -euo pipefail
cd "$(dirname "$0")/.."
budget="${1:-600}"
cases="${PROPTEST_CASES:-5000}"
cargo build --release -p retina-wgpu --test fuzz_files --quiet
end=$(($(date +%s) + budget))
round=0
while [ "$(date +%s)" -lt "$end" ]; do
    round=$((round + 1))
    left=$((end - $(date +%s)))
    echo "round $round: $cases cases per reader (${left}s left)" >&2
    if ! PROPTEST_CASES="$cases" timeout "$left" \
        cargo test --release -p retina-wgpu --test fuzz_files --quiet 2>&1 | tail -n 30; then
        status=${PIPESTATUS[0]}
        if [ "$status" = 124 ]; then
            break # the time ran out mid-round
        fi
        echo "fuzz_files failed in round $round" >&2
        exit 1
    fi
done
echo "fuzzed for ${budget}s: $round rounds of $cases cases per reader, no failure" >&2
