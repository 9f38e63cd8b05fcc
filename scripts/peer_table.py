#!/usr/bin/env python3
"""The crate's GPU rows beside a peer's, one table with the ratio (standard library only).

    retina bench conv --backend gpu --json > crate.json
    cargo run --release -p burn-peer -- conv --json > burn.json
    scripts/peer_table.py crate.json burn.json [--markdown]

Each file is a JSON array of rows `{"op", "backend", "adapter", "size", "seconds", ...}` as
`retina bench ... --json` and `burn-peer ... --json` print them. Rows pair on (op, size): the
crate's `gpu` rows against every other backend's (`burn-wgpu`, `ort-webgpu`, ...). The ratio is
the peer's seconds over the crate's: above 1 the crate is faster. Rows without a partner are
listed after the table, and a peer that ran on another adapter is named as such (its ratio then
compares two devices, not two implementations). Exits 1 if a file is not such an array.
"""

import argparse
import json
import math
import sys


def load(path):
    try:
        with open(path) as f:
            rows = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        sys.exit(f"peer_table: {path}: {e}")
    if not isinstance(rows, list) or not all(
        isinstance(r, dict) and {"op", "backend", "size", "seconds"} <= r.keys() for r in rows
    ):
        sys.exit(f"peer_table: {path}: not a JSON array of benchmark rows")
    return rows


def seconds(s):
    if s >= 1:
        return f"{s:.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} us"


def geomean(values):
    values = [v for v in values if v > 0 and math.isfinite(v)]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", help="JSON row files (crate and peer, any order)")
    ap.add_argument("--markdown", action="store_true", help="a Markdown table (for the README)")
    args = ap.parse_args()
    rows = [r for path in args.files for r in load(path)]
    crate = {(r["op"], r["size"]): r for r in rows if r["backend"] == "gpu"}
    peers = [r for r in rows if r["backend"] not in ("gpu", "cpu")]
    if not crate:
        sys.exit("peer_table: no row of the crate's GPU backend (run retina bench with --backend gpu or both)")
    if not peers:
        sys.exit("peer_table: no peer row (burn-peer, or the browser peer)")
    crate_adapters = sorted({r["adapter"] for r in crate.values()})
    print(f"crate (gpu): {', '.join(crate_adapters)}")
    for backend in sorted({r["backend"] for r in peers}):
        adapters = sorted({r["adapter"] for r in peers if r["backend"] == backend})
        same = all(any(a.split(" (")[0] in c or c.split(" (")[0] in a for c in crate_adapters) for a in adapters)
        note = "" if same else "   <- NOT the crate's adapter: the ratios compare two devices"
        print(f"{backend}: {', '.join(adapters)}{note}")
    print()
    paired, ratios, unmatched = [], {}, []
    for p in peers:
        c = crate.get((p["op"], p["size"]))
        if c is None:
            unmatched.append(p)
            continue
        ratio = p["seconds"] / c["seconds"]
        ratios.setdefault(p["backend"], []).append(ratio)
        paired.append((p["op"], p["backend"], c["seconds"], p["seconds"], ratio))
    seen = {(p["op"], p["size"]) for p in peers}
    unmatched += [c for key, c in crate.items() if key not in seen]
    if args.markdown:
        print("| op | crate | peer | peer time | peer / crate |")
        print("|---|---:|---|---:|---:|")
        for op, backend, cs, ps, ratio in paired:
            print(f"| `{op}` | {seconds(cs)} | {backend} | {seconds(ps)} | {ratio:.2f}x |")
    else:
        width = max([len(p[0]) for p in paired] + [2])
        print(f"{'op':<{width}} {'crate':>11} {'peer':>10} {'peer time':>11} {'peer/crate':>11}")
        for op, backend, cs, ps, ratio in paired:
            print(f"{op:<{width}} {seconds(cs):>11} {backend:>10} {seconds(ps):>11} {ratio:>10.2f}x")
    print()
    for backend, values in sorted(ratios.items()):
        wins = sum(v >= 1 for v in values)
        print(
            f"{backend}: {len(values)} paired rows, geometric mean peer/crate {geomean(values):.2f}x; "
            f"the crate at least as fast on {wins} of {len(values)}"
        )
    if unmatched:
        print(f"{len(unmatched)} rows without a partner: " + ", ".join(f"{r['op']} ({r['backend']})" for r in unmatched))


if __name__ == "__main__":
    main()
