#!/usr/bin/env python3
"""Turns a torchvision RetinaNet (ResNet-50-FPN, v1 or v2) state dict into a model directory that
`retina detect --model DIR` and `TorchvisionRetinaNet::load` read: `config.json` (architecture,
variant, classes and their names, the transform's sizes, thresholds, BatchNorm epsilon) and
`model.safetensors` (the state dict under torchvision's own key names, f32).

    pip install torch torchvision safetensors
    python3 scripts/import_torchvision.py --weights FILE.pth|FILE.safetensors --variant v1|v2 \\
        --out DIR [--num-classes N] [--min-size N] [--max-size N]

FILE is what `torch.save(model.state_dict(), FILE)` or
`safetensors.torch.save_file(model.state_dict(), FILE)` wrote (a checkpoint dict holding it under
`model` or `state_dict` works too), for example torchvision's published COCO weights
(`retinanet_resnet50_fpn_coco-eeacb38b.pth`, `retinanet_resnet50_fpn_v2_coco-5905b1c5.pth`). The
key names of older torchvision versions (heads as `conv.{0,2,4,6}`, FPN blocks without `.0`) are
renamed as torchvision renames them on load. The state dict is loaded into torchvision's own
model of that variant with `strict=True` first, so a tensor that is missing, extra or of another
shape fails here with torchvision's message naming it. The number of classes comes from
`cls_logits` unless given; with 91 classes the config names them with COCO's categories as
torchvision's weights do (labels are COCO category ids).

BatchNorm's epsilon: torchvision runs its published v1 COCO weights with eps 0
(`retinanet_resnet50_fpn(weights=...)` calls `overwrite_eps(model, 0.0)`), and so every model
fine-tuned from them that way; models built otherwise use 1e-5. `--batch-norm-eps` says which;
by default 0 for a v1 file named like torchvision's COCO weights (`retinanet_resnet50_fpn_coco-*`),
else 1e-5, and the script prints the choice.
"""

import argparse
import json
import re
import os
import sys

import torch
import torchvision
from safetensors.torch import load_file, save_file
from torchvision.models.detection import (
    RetinaNet_ResNet50_FPN_Weights,
    retinanet_resnet50_fpn,
    retinanet_resnet50_fpn_v2,
)

ANCHORS = 9


def read_state_dict(path):
    if path.endswith(".safetensors"):
        return load_file(path)
    # torchvision's references/detection/train.py saves {"model", "optimizer", ..., "args": an
    # argparse.Namespace}: allow that class, nothing else, in the safe loader.
    torch.serialization.add_safe_globals([argparse.Namespace])
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - the loader's message names what it refused
        sys.exit(f"{path}: not loadable as a state dict with torch.load(weights_only=True): {e}")
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        sys.exit(f"{path}: not a state dict (a dict of tensors); save model.state_dict(), not the model")
    # DistributedDataParallel's `module.` prefix.
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def rename_old_keys(sd):
    """torchvision's version-1 names: RetinaNet heads `conv.{2i}.*` and FPN `*_blocks.{i}.*`."""
    out = {}
    for k, v in sd.items():
        parts = k.split(".")
        if k.startswith("head.") and len(parts) == 5 and parts[2] == "conv" and parts[3].isdigit():
            i = int(parts[3])
            if i % 2:
                sys.exit(f"{k}: an odd index in a version-1 head (ReLU layers have no tensors)")
            k = f"{parts[0]}.{parts[1]}.conv.{i // 2}.0.{parts[4]}"
        elif k.startswith("backbone.fpn.") and len(parts) == 5 and parts[2] in ("inner_blocks", "layer_blocks"):
            k = f"backbone.fpn.{parts[2]}.{parts[3]}.0.{parts[4]}"
        out[k] = v
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", required=True, help="a .pth or .safetensors state dict")
    ap.add_argument("--variant", required=True, choices=["v1", "v2"])
    ap.add_argument("--out", required=True, help="the model directory to write")
    ap.add_argument("--num-classes", type=int, help="classes of the head (default: from cls_logits)")
    ap.add_argument("--min-size", type=int, default=800)
    ap.add_argument("--max-size", type=int, default=1333)
    ap.add_argument("--score-threshold", type=float, default=0.05)
    ap.add_argument("--nms-threshold", type=float, default=0.5)
    ap.add_argument("--detections", type=int, default=300, help="detections per image")
    ap.add_argument("--topk-candidates", type=int, default=1000)
    ap.add_argument("--batch-norm-eps", type=float,
                    help="BatchNorm's epsilon: 0 for torchvision's v1 COCO weights and models fine-tuned from "
                         "them, 1e-5 otherwise (default: 0 for a v1 file named retinanet_resnet50_fpn_coco-*)")
    args = ap.parse_args()

    sd = rename_old_keys(read_state_dict(args.weights))
    key = "head.classification_head.cls_logits.weight"
    if key not in sd:
        sys.exit(f"{args.weights}: no `{key}`: not a torchvision RetinaNet state dict")
    num_classes = args.num_classes or sd[key].shape[0] // ANCHORS
    make = retinanet_resnet50_fpn if args.variant == "v1" else retinanet_resnet50_fpn_v2
    model = make(weights=None, weights_backbone=None, num_classes=num_classes)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        sys.exit(f"{args.weights} is not a torchvision RetinaNet {args.variant} with {num_classes} classes:\n{e}")
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    bad = [k for k, v in state.items() if not torch.isfinite(v).all()]
    if bad:
        sys.exit(f"{args.weights}: non-finite values in {bad[:5]}")
    eps = args.batch_norm_eps
    if eps is None:
        coco_v1 = args.variant == "v1" and re.match(r"retinanet_resnet50_fpn_coco-", os.path.basename(args.weights))
        eps = 0.0 if coco_v1 else 1e-5
        print(f"BatchNorm eps {eps:g} ({'torchvision runs its v1 COCO weights with eps 0' if coco_v1 else 'PyTorch default'}; "
              "--batch-norm-eps to choose)")
    categories = []
    if num_classes == 91:
        categories = list(RetinaNet_ResNet50_FPN_Weights.COCO_V1.meta["categories"])
    os.makedirs(args.out, exist_ok=True)
    config = {
        "architecture": "torchvision_retinanet",
        "variant": args.variant,
        "num_classes": num_classes,
        "categories": categories,
        "min_size": args.min_size,
        "max_size": args.max_size,
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
        "size_divisible": 32,
        "score_threshold": args.score_threshold,
        "nms_threshold": args.nms_threshold,
        "detections_per_image": args.detections,
        "topk_candidates": args.topk_candidates,
        "batch_norm_eps": eps,
        "source": {
            "weights": os.path.basename(args.weights),
            "torchvision": torchvision.__version__,
            "script": "scripts/import_torchvision.py",
        },
    }
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    save_file(state, os.path.join(args.out, "model.safetensors"))
    print(f"wrote {args.out}: {args.variant}, {num_classes} classes, {len(state)} tensors, "
          f"{sum(v.numel() for v in state.values()) / 1e6:.1f}M parameters")


if __name__ == "__main__":
    main()
