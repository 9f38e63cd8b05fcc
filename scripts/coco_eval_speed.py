"""Times pycocotools and faster-coco-eval on the files `retina bench eval --keep DIR` wrote, checks
that their 12 stats agree with each other and with retina's, and prints the times side by side.

Run (the venv at /opt/cocoref has pycocotools, faster-coco-eval and numpy):

    cargo run --release -- bench eval --keep /tmp/cocobench
    /opt/cocoref/bin/python scripts/coco_eval_speed.py /tmp/cocobench [--pycocotools-runs 1] [--faster-runs 3]

Each run is the whole evaluation from the files to the stats: COCO(instances.json),
loadRes(results.json), COCOeval(gt, dt, "bbox"), evaluate(), accumulate(), summarize(); the
median wall seconds of the runs is printed. retina's rows and stats are read from
DIR/retina_bench.json (written by --keep; --retina-json names another file). Exits with 1 when
any two sets of stats differ by more than 1e-9.
"""
import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import time

TOLERANCE = 1e-9


def run_pycocotools(gt_file, results_file):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO(gt_file)
    dt = gt.loadRes(results_file)
    e = COCOeval(gt, dt, "bbox")
    e.evaluate()
    e.accumulate()
    e.summarize()
    return [float(v) for v in e.stats]


def run_faster_coco_eval(gt_file, results_file):
    from faster_coco_eval import COCO, COCOeval_faster

    quiet = lambda *args, **kwargs: None  # noqa: E731
    gt = COCO(gt_file, print_function=quiet)
    dt = gt.loadRes(results_file)
    e = COCOeval_faster(gt, dt, "bbox", print_function=quiet)
    e.evaluate()
    e.accumulate()
    e.summarize()
    return [float(v) for v in e.stats[:12]]


def timed(name, fn, runs, gt_file, results_file):
    times, stats = [], None
    for i in range(runs):
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            stats = fn(gt_file, results_file)
        times.append(time.perf_counter() - start)
        print(f"  {name} run {i + 1}/{runs}: {times[-1]:.3f} s", file=sys.stderr)
    return statistics.median(times), stats


def max_difference(a, b):
    diffs = [abs(x - y) for x, y in zip(a, b)]
    worst = max(range(len(diffs)), key=diffs.__getitem__)
    return diffs[worst], worst, diffs


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", nargs="?", default="/tmp/cocobench", help="the --keep directory")
    parser.add_argument("--pycocotools-runs", type=int, default=1, help="0 skips pycocotools")
    parser.add_argument("--faster-runs", type=int, default=3, help="0 skips faster-coco-eval")
    parser.add_argument("--retina-json", help="retina's output (default DIR/retina_bench.json)")
    args = parser.parse_args()
    gt_file = os.path.join(args.dir, "instances.json")
    results_file = os.path.join(args.dir, "results.json")
    retina_json = args.retina_json or os.path.join(args.dir, "retina_bench.json")

    seconds, stats = {}, {}
    if os.path.exists(retina_json):
        with open(retina_json) as f:
            retina = json.load(f)
        rows = retina["rows"] if isinstance(retina, dict) else retina
        for row in rows:
            seconds[f"retina {row['op']}"] = row["seconds"]
        if isinstance(retina, dict) and "stats" in retina:
            stats["retina"] = [float(v) for v in retina["stats"]]
    for name, fn, runs in [
        ("pycocotools", run_pycocotools, args.pycocotools_runs),
        ("faster-coco-eval", run_faster_coco_eval, args.faster_runs),
    ]:
        if runs > 0:
            seconds[name], stats[name] = timed(name, fn, runs, gt_file, results_file)

    total = seconds.get("retina coco_eval_total")
    print(f"{'evaluator':<30} {'seconds':>10} {'vs retina total':>16}")
    for name, s in seconds.items():
        ratio = f"{s / total:.2f}x" if total else ""
        print(f"{name:<30} {s:>10.4f} {ratio:>16}")

    ok = True
    names = list(stats)
    print()
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            worst, at, diffs = max_difference(stats[a], stats[b])
            agree = worst <= TOLERANCE
            ok &= agree
            print(f"{a} vs {b}: max |difference| {worst:.3e} (stat {at}) {'agree' if agree else 'DISAGREE'}")
            if not agree:
                for k, d in enumerate(diffs):
                    if d > TOLERANCE:
                        print(f"  stats[{k}]: {a} {stats[a][k]!r} {b} {stats[b][k]!r} (difference {d:.3e})")
    if names:
        print(f"\nstats ({names[0]}): {stats[names[0]]}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
