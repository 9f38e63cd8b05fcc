#!/usr/bin/env bash
# A torchvision RetinaNet per image, side by side on this machine: `retina bench detect --model
# DIR` (the crate's CPU backend; add GPU=1 for its GPU path too) and torchvision's own model in
# eval() (scripts/torchvision_bench.py) at the same thread count, on the same photo resized to the
# same size (1333x800: torchvision's default transform then runs it at 1344x800). Prints one
# table: images/s, the ratio to torchvision, and each process's peak resident memory.
#
#   scripts/torchvision_bench.sh MODEL_DIR [1333x800] [ITERS]
# Needs: pip install torch torchvision safetensors pillow; MODEL_DIR from scripts/import_torchvision.py
set -euo pipefail
cd "$(dirname "$0")/.."
model="$1"
size="${2:-1333x800}"
iters="${3:-5}"
python="${PYTHON:-python3}"
backend=cpu
[ "${GPU:-0}" = 1 ] && backend=both
cargo build --release --quiet -p retina-cli
"$python" - "$model" "$size" "$iters" "$backend" "$(nproc)" "$python" <<'PY'
import json, resource, subprocess, sys
model, size, iters, backend, cores, python = sys.argv[1:]
crate = json.loads(subprocess.run(
    ["target/release/retina", "bench", "detect", "--model", model, "--image", "photos/coffee.png",
     "--size", size, "--iters", iters, "--backend", backend, "--json"],
    check=True, capture_output=True, text=True).stdout)
crate_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
peer = json.loads(subprocess.run(
    [python, "scripts/torchvision_bench.py", "--model", model, "--size", size, "--iters", iters,
     "--threads", cores], check=True, capture_output=True, text=True).stdout)
base = peer[0]
print(f"{'op':<34} {'backend':<12} {'adapter':<40} {'s/image':>8} {'vs torchvision':>15} {'peak RSS':>9}")
for r in crate:
    ratio = base["seconds"] / r["seconds"] if r["op"] == base["op"] else float("nan")
    print(f"{r['op']:<34} {r['backend']:<12} {r['adapter'][:40]:<40} {r['seconds']:>8.3f} {ratio:>14.2f}x {crate_rss:>6.0f} MB")
for r in peer:
    print(f"{r['op']:<34} {r['backend']:<12} {r['adapter'][:40]:<40} {r['seconds']:>8.3f} {1.0:>14.2f}x {r['peak_rss_mb']:>6.0f} MB")
print(f"(vs torchvision: its seconds per image over the row's; {cores} threads each; peak RSS of each process, model load included)")
PY
