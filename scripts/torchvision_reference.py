#!/usr/bin/env python3
"""Reference vectors for the torchvision RetinaNet tests (crates/retina-wgpu/tests/torchvision.rs):
torchvision's own `retinanet_resnet50_fpn` (v1) and `retinanet_resnet50_fpn_v2` in `eval()` mode
on the committed photos in photos/, with every tensor of the state dict set by a formula that the
Rust test reproduces bit for bit (so no 150 MB model is committed, only the detections).

    pip install torch==2.5.1 torchvision==0.20.1 numpy pillow
    python3 scripts/torchvision_reference.py [--out crates/retina-wgpu/tests/golden/torchvision_retinanet.json]

The formula (`formula_values`): for the tensor called NAME with n values, value i comes from
u = splitmix64(fnv1a64(NAME) + i) >> 40 mapped to [-1, 1) (exact in f32), then per kind of tensor,
in f32 arithmetic:

    4-D weight (convolution)         u * f32(sqrt(6 / fan_in))       (He-uniform: variance 2/fan_in)
    `*cls_logits.weight`             u * f32(CLS_GAIN * sqrt(6 / fan_in))
    `*.bn3.weight`, `*.downsample.1.weight`   0.2 + 0.1 u  (a residual branch's last BatchNorm:
                                     keeps the trunk's scale from growing block after block)
    other 1-D `*.weight` (BatchNorm/GroupNorm)   0.6 + 0.2 u
    `*.running_mean`                 0.1 u
    `*.running_var`                  0.75 + 0.25 u
    `*cls_logits.bias`               CLS_BIAS + 0.5 u   (-14 for v1, -12.5 for v2: about 1,000 scores
                                     above 0.05 per photo, 50-100 detections, none cut at 300)
    other 1-D `*.bias`               0.1 u
    `*.num_batches_tracked`          left as torchvision made it (int64 0)

The models run at min_size 256, max_size 512 (CI speed; the transform, anchors and post-processing
are the same code at 800/1333) with torchvision's default thresholds (score 0.05, NMS 0.5, 1000
candidates per level, 300 detections). Stored per variant and photo: the image size, the resized
size, every detection (box in original pixels, score, label) in torchvision's output order, and
the mean and standard deviation of each FPN level and of the head outputs (a layer-by-layer
diagnosis for when the detections differ). `batch` holds v1's detections of two photos
of different sizes given to torchvision in one call (padded to one canvas). `small` holds the
same models on one photo at min_size
64 / max_size 100, for the GPU test (lavapipe is slow). Also a max-pool vector (3x3, stride 2, padding 1, an
odd size) for the layer's own test.
"""

import argparse
import json
import math
import os

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision.models.detection import retinanet_resnet50_fpn, retinanet_resnet50_fpn_v2

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "camera.png"]
MIN_SIZE, MAX_SIZE = 256, 512
SMALL_MIN, SMALL_MAX = 64, 100
CLS_BIAS = {"v1": -14.0, "v2": -12.5}
CLS_GAIN = 4.0
M64 = (1 << 64) - 1


def fnv1a64(name):
    h = 0xCBF29CE484222325
    for b in name.encode():
        h = ((h ^ b) * 0x100000001B3) & M64
    return h


def splitmix64(x):
    """Vectorised over a uint64 array (numpy wraps modulo 2^64)."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def uniform(name, n):
    with np.errstate(over="ignore"):
        x = np.uint64(fnv1a64(name)) + np.arange(n, dtype=np.uint64)
    h = splitmix64(x) >> np.uint64(40)
    return h.astype(np.float32) * np.float32(2.0 / 16777216.0) - np.float32(1.0)


def formula_values(name, shape, variant):
    n = int(np.prod(shape))
    u = uniform(name, n)
    f = np.float32
    if len(shape) == 4:
        fan_in = shape[1] * shape[2] * shape[3]
        gain = CLS_GAIN if name.endswith("cls_logits.weight") else 1.0
        v = u * f(gain * math.sqrt(6.0 / fan_in))
    elif name.endswith("running_mean"):
        v = f(0.1) * u
    elif name.endswith("running_var"):
        v = f(0.75) + f(0.25) * u
    elif name.endswith("cls_logits.bias"):
        v = f(CLS_BIAS[variant]) + f(0.5) * u
    elif name.endswith((".bn3.weight", ".downsample.1.weight")):
        v = f(0.2) + f(0.1) * u
    elif name.endswith(".weight"):
        v = f(0.6) + f(0.2) * u
    elif name.endswith(".bias"):
        v = f(0.1) * u
    else:
        raise ValueError(f"no formula for {name} {shape}")
    return v.astype(np.float32).reshape(shape)


def formula_state_dict(model, variant):
    sd = model.state_dict()
    out = {}
    for name, t in sd.items():
        if name.endswith("num_batches_tracked"):
            out[name] = t
        else:
            out[name] = torch.from_numpy(formula_values(name, list(t.shape), variant))
    return out


def load_photo(name):
    img = Image.open(os.path.join(ROOT, "photos", name)).convert("RGB")
    return np.asarray(img)


def stats(t):
    t = t.double()
    return [float(t.mean()), float(t.std(unbiased=False))]


def run(variant, photos, min_size=MIN_SIZE, max_size=MAX_SIZE):
    make = retinanet_resnet50_fpn if variant == "v1" else retinanet_resnet50_fpn_v2
    torch.manual_seed(0)
    model = make(weights=None, weights_backbone=None, num_classes=91, min_size=min_size, max_size=max_size)
    sd = formula_state_dict(model, variant)
    model.load_state_dict(sd)
    model.eval()
    cases = []
    for name in photos:
        rgb = load_photo(name)
        x = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255.0
        with torch.no_grad():
            images, _ = model.transform([x])
            feats = list(model.backbone(images.tensors).values())
            head = model.head(feats)
            (det,) = model([x])
        cases.append(
            {
                "photo": name,
                "min_size": min_size,
                "max_size": max_size,
                "width": rgb.shape[1],
                "height": rgb.shape[0],
                "resized": list(images.image_sizes[0]),
                "padded": list(images.tensors.shape[-2:]),
                "levels": [[list(f.shape[-2:]), stats(f)] for f in feats],
                "cls_logits": stats(head["cls_logits"]),
                "bbox_regression": stats(head["bbox_regression"]),
                "boxes": det["boxes"].tolist(),
                "scores": det["scores"].tolist(),
                "labels": det["labels"].tolist(),
            }
        )
        logits = head["cls_logits"].flatten()
        over = int((torch.sigmoid(logits) > 0.05).sum())
        sc = det["scores"].sort(descending=True)[0]
        gap = float((sc[:-1] - sc[1:]).min()) if len(sc) > 1 else None
        print(variant, name, "candidates", over, "min gap", gap, "logits", cases[-1]["cls_logits"])
        print(variant, name, rgb.shape, "->", images.image_sizes[0], "detections", len(det["scores"]),
              "score range", float(det["scores"].min()) if len(det["scores"]) else None,
              float(det["scores"].max()) if len(det["scores"]) else None)
    tensors = [[k, list(v.shape)] for k, v in sd.items()]
    return {"variant": variant, "tensors": len(tensors), "tensor_shapes": tensors, "cases": cases}


def run_batch(variant, photos):
    """One call on several photos: torchvision pads the batch to its largest image (rounded up
    to 32), so each image's features and anchors are those of that shared canvas."""
    make = retinanet_resnet50_fpn if variant == "v1" else retinanet_resnet50_fpn_v2
    model = make(weights=None, weights_backbone=None, num_classes=91, min_size=MIN_SIZE, max_size=MAX_SIZE)
    model.load_state_dict(formula_state_dict(model, variant))
    model.eval()
    xs = [torch.from_numpy(load_photo(name).copy()).permute(2, 0, 1).float() / 255.0 for name in photos]
    with torch.no_grad():
        images, _ = model.transform(xs)
        dets = model(xs)
    print(variant, "batch", photos, "padded", list(images.tensors.shape[-2:]), [len(d["scores"]) for d in dets])
    return {
        "variant": variant,
        "photos": photos,
        "padded": list(images.tensors.shape[-2:]),
        "cases": [{"photo": name, "boxes": d["boxes"].tolist(), "scores": d["scores"].tolist(),
                   "labels": d["labels"].tolist()} for name, d in zip(photos, dets)],
    }


def max_pool_vector():
    u = uniform("max_pool", 2 * 3 * 9 * 7)
    x = torch.from_numpy(u.reshape(2, 3, 9, 7))
    y = torch.nn.functional.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    return {"input_shape": [2, 3, 9, 7], "output_shape": list(y.shape), "output": y.flatten().tolist()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "crates/retina-wgpu/tests/golden/torchvision_retinanet.json"))
    ap.add_argument("--photos", nargs="*", default=PHOTOS)
    args = ap.parse_args()
    torch.set_num_threads(2)
    out = {
        "source": f"torch {torch.__version__}, torchvision {torchvision.__version__}, scripts/torchvision_reference.py",
        "min_size": MIN_SIZE,
        "max_size": MAX_SIZE,
        "cls_bias": CLS_BIAS, "cls_gain": CLS_GAIN,
        "max_pool": max_pool_vector(),
        "models": [run("v1", args.photos), run("v2", args.photos)],
        # Smaller inputs for the GPU test (lavapipe runs ResNet-50 at about 1 GFLOP/s).
        "small": [run(v, ["chelsea.png"], SMALL_MIN, SMALL_MAX) for v in ("v1", "v2")],
        # A batch of two photos of different sizes (v1, min_size 256): one padded canvas.
        "batch": run_batch("v1", ["chelsea.png", "astronaut.png"]),
    }
    with open(args.out, "w") as f:
        json.dump(out, f)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
