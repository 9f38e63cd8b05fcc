#!/usr/bin/env python3
"""Checks `retina detect` against torchvision on a torchvision RetinaNet model directory: runs
torchvision's own model (the variant and state dict of DIR, with DIR's sizes and thresholds) in
`eval()` on each photo, runs `retina detect --model DIR --backend BACKEND` on the same photos, and
compares the detections: each detection of either list matched in the other (same label,
score within 1e-4, box within 1e-2 px; detections within 1e-4 of the score threshold may be on
either side of it). The torchvision model takes DIR's config (sizes, thresholds, normalisation,
BatchNorm epsilon). Prints one
line per photo and exits non-zero on a difference.

    pip install torch torchvision safetensors pillow
    python3 scripts/torchvision_check.py --model DIR [--backend cpu|gpu] photos/chelsea.png ...
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torchvision
from PIL import Image
from safetensors.torch import load_file
from torchvision.models.detection import retinanet_resnet50_fpn, retinanet_resnet50_fpn_v2

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def torchvision_model(directory):
    config = json.load(open(os.path.join(directory, "config.json")))
    make = retinanet_resnet50_fpn if config["variant"] == "v1" else retinanet_resnet50_fpn_v2
    model = make(weights=None, weights_backbone=None, num_classes=config["num_classes"],
                 min_size=config.get("min_size", 800), max_size=config.get("max_size", 1333),
                 score_thresh=config.get("score_threshold", 0.05), nms_thresh=config.get("nms_threshold", 0.5),
                 detections_per_img=config.get("detections_per_image", 300),
                 topk_candidates=config.get("topk_candidates", 1000))
    model.transform.image_mean = config.get("image_mean", model.transform.image_mean)
    model.transform.image_std = config.get("image_std", model.transform.image_std)
    model.load_state_dict(load_file(os.path.join(directory, "model.safetensors")), strict=True)
    eps = config.get("batch_norm_eps", 1e-5)
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm2d, torchvision.ops.misc.FrozenBatchNorm2d)):
            m.eps = eps
    return model.eval(), config


def matches(ours, theirs, threshold):
    """Each detection of either list matched in the other, but those near the threshold."""
    used = [False] * len(theirs)
    unmatched = []
    worst = (0.0, 0.0)
    for d in ours:
        hit = None
        for i, t in enumerate(theirs):
            if used[i] or t[0] != d[0] or abs(t[1] - d[1]) > 1e-4:
                continue
            if max(abs(a - b) for a, b in zip(t[2], d[2])) <= 1e-2:
                hit = i
                break
        if hit is None:
            if d[1] >= threshold + 1e-4:
                unmatched.append(("ours", d))
        else:
            used[hit] = True
            t = theirs[hit]
            worst = (max(worst[0], abs(t[1] - d[1])), max(worst[1], max(abs(a - b) for a, b in zip(t[2], d[2]))))
    unmatched += [("torchvision", t) for i, t in enumerate(theirs) if not used[i] and t[1] >= threshold + 1e-4]
    return unmatched, worst


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("photos", nargs="+")
    args = ap.parse_args()
    model, config = torchvision_model(args.model)
    out = tempfile.mkdtemp(prefix="torchvision-check-")
    subprocess.run([os.path.join(ROOT, "target/release/retina"), "detect", "--model", args.model, "--backend",
                    args.backend, "--out", out] + args.photos, check=True, stdout=subprocess.DEVNULL)
    results = json.load(open(os.path.join(out, "results.json")))
    failed = False
    for k, path in enumerate(args.photos):
        rgb = np.asarray(Image.open(path).convert("RGB"))
        x = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255.0
        with torch.no_grad():
            (det,) = model([x])
        theirs = [(int(l), float(s), [float(v) for v in b])
                  for b, s, l in zip(det["boxes"], det["scores"], det["labels"])]
        ours = [(r["category_id"], r["score"], [r["bbox"][0], r["bbox"][1], r["bbox"][0] + r["bbox"][2],
                 r["bbox"][1] + r["bbox"][3]]) for r in results if r["image_id"] == k + 1]
        unmatched, worst = matches(ours, theirs, config.get("score_threshold", 0.05))
        failed |= bool(unmatched)
        print(f"{path} ({rgb.shape[1]} x {rgb.shape[0]}): torchvision {len(theirs)}, retina {len(ours)} detections; "
              f"{'SAME' if not unmatched else 'DIFFERENT'} (worst score {worst[0]:.1e}, box {worst[1]:.1e} px)")
        for who, d in unmatched[:5]:
            print(f"    only {who}: {d}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
