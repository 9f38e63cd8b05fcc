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
# The device's own timestamps: each kernel's time in one training step beside the roofline's
# estimate, and per kernel of the post-processing at 800 px (stderr of the nms run).
echo "== retina bench train --backend gpu --profile" >&2
"$bin" bench train --backend gpu --iters 3 --profile >"$out/train-profile.txt"
"$bin" bench nms --backend gpu --sizes 20000 --iters 3 --profile 2>"$out/nms-profile.txt" >/dev/null
run detect --model faces --size 640x480 --iters 10
echo "== retina demo --backend gpu --minutes 3" >&2
"$bin" demo --backend gpu --minutes 3 --out "$out/demo" >"$out/demo.txt"
echo "== scripts/peer_bench.sh (Burn's wgpu backend beside the crate)" >&2
OUT="$out/peer" ITERS=5 scripts/peer_bench.sh >"$out/peer.txt" || echo "peer bench failed (see $out/peer)" >&2
echo "results in $out"
