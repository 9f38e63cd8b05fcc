#!/usr/bin/env bash
# The crate's GPU kernels beside Burn's wgpu backend (burn-peer) on the same adapter, one paired
# table per benchmark (scripts/peer_table.py): peer seconds / crate seconds, above 1 the crate is
# faster. Writes the rows and tables into $OUT (default ./peer-bench).
#
#   scripts/peer_bench.sh                 # focal conv gemm, 5 timed runs each
#   ITERS=3 scripts/peer_bench.sh conv    # one benchmark
#
# Burn takes ~15 minutes to build on 2 cores (once) and runs its autotune untimed before each
# shape. Where burn-peer cannot build or start, its rows are reported as skipped, with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-peer-bench}"
iters="${ITERS:-5}"
mkdir -p "$out"
benches=("$@")
[ ${#benches[@]} -gt 0 ] || benches=(focal conv gemm)

cargo build --release --quiet -p retina-cli
peer=target/release/burn-peer
if ! cargo build --release --quiet -p burn-peer 2>"$out/burn-build.log"; then
    echo "burn-peer: skipped: it did not build (see $out/burn-build.log)" >&2
    peer=""
fi
for bench in "${benches[@]}"; do
    echo "== $bench: the crate (gpu)" >&2
    target/release/retina bench "$bench" --backend gpu --iters "$iters" --json >"$out/crate-$bench.json"
    if [ -z "$peer" ]; then
        continue
    fi
    echo "== $bench: burn-wgpu" >&2
    if ! "$peer" "$bench" --iters "$iters" --json >"$out/burn-$bench.json" 2>"$out/burn-$bench.log"; then
        echo "burn-peer $bench: skipped: it failed (see $out/burn-$bench.log)" >&2
        continue
    fi
    python3 scripts/peer_table.py "$out/crate-$bench.json" "$out/burn-$bench.json" | tee "$out/table-$bench.txt" || true
done
echo "results in $out" >&2
