#!/usr/bin/env bash
# Every `retina bench`, GPU and CPU backend side by side, on a machine with a real GPU: the
# script to run once on a lent accelerator machine. Builds in release mode, records the
# adapter, and writes one JSON file per benchmark (rows as documented in README.md) into $OUT
# (default: ./gpu-bench); progress goes to stderr.
#
#   OUT=/tmp/results scripts/gpu_bench.sh
#
# Budget: about 2-3 minutes to build on 16 cores, then 2-4 minutes of benchmarks on a
# data-centre GPU (the CPU side dominates), then a 3-minute demo training on the GPU (its
# detections.png, loss.png and metrics.json land in $OUT/demo). Last, the same GPU work with
# Burn's wgpu backend on the same adapter (scripts/peer_bench.sh: ~3 minutes to build Burn on 16
# cores, then its autotune and the runs), paired tables in $OUT/peer.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-bench}"
mkdir -p "$out"

cargo build --release --quiet
bin=target/release/retina
"$bin" info | tee "$out/info.txt"

run() {
    local name=$1
    shift
    echo "== retina bench $name $*" >&2
    "$bin" bench "$name" "$@" --json >"$out/$name.json"
}

run focal --iters 5
run match --iters 5
run nms --iters 3
run conv --iters 5
run gemm --iters 5
run train --iters 10
run detect --model faces --size 640x480 --iters 10
echo "== retina demo --backend gpu --minutes 3" >&2
"$bin" demo --backend gpu --minutes 3 --out "$out/demo" >"$out/demo.txt"
echo "== scripts/peer_bench.sh (Burn's wgpu backend beside the crate)" >&2
OUT="$out/peer" ITERS=5 scripts/peer_bench.sh >"$out/peer.txt" || echo "peer bench failed (see $out/peer)" >&2
echo "results in $out"
