#!/usr/bin/env python3
"""The peer of `retina bench detect --model DIR` for a torchvision RetinaNet model directory:
torchvision's own model (the variant and state dict of DIR) in `eval()` on the same photo
resized to the same size, the whole detection (transform, network, post-processing) per image,
median of ITERS after one warm-up, at each thread count asked. Prints JSON rows of the crate's
bench form (`backend: "torchvision"`), with the process's peak resident memory.

    pip install torch torchvision safetensors pillow
    python3 scripts/torchvision_bench.py --model DIR [--image photos/coffee.png] [--size 1333x800]
        [--iters 5] [--threads 2]
"""

import argparse
import json
import os
import resource
import statistics
import time

import numpy as np
import torch
import torchvision
from PIL import Image
from safetensors.torch import load_file
from torchvision.models.detection import retinanet_resnet50_fpn, retinanet_resnet50_fpn_v2

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--image", default=os.path.join(ROOT, "photos/coffee.png"))
    ap.add_argument("--size", default="1333x800")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--threads", type=int, nargs="*", default=[os.cpu_count()])
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    config = json.load(open(os.path.join(args.model, "config.json")))
    make = retinanet_resnet50_fpn if config["variant"] == "v1" else retinanet_resnet50_fpn_v2
    model = make(weights=None, weights_backbone=None, num_classes=config["num_classes"],
                 min_size=config["min_size"], max_size=config["max_size"],
                 score_thresh=config["score_threshold"], nms_thresh=config["nms_threshold"],
                 detections_per_img=config["detections_per_image"], topk_candidates=config["topk_candidates"])
    model.load_state_dict(load_file(os.path.join(args.model, "model.safetensors")), strict=False)
    model.eval()
    rgb = np.asarray(Image.open(args.image).convert("RGB").resize((w, h), Image.BILINEAR))
    x = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255.0
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        times = []
        with torch.no_grad():
            (det,) = model([x])
            for _ in range(args.iters):
                t = time.perf_counter()
                (det,) = model([x])
                times.append(time.perf_counter() - t)
        s = statistics.median(times)
        op = f"torchvision_{config['variant']}_{w}x{h}"
        rows.append({
            "op": op, "backend": "torchvision",
            "adapter": f"PyTorch {torch.__version__} CPU ({threads} threads)",
            "size": 1, "seconds": s, "throughput": 1.0 / s, "unit": "images/s", "compare": op,
            "detections": len(det["scores"]),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        })
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
