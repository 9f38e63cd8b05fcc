"""Reference vectors for one full training step of a tiny RetinaNet: forward, matching, both
losses, backward and one SGD update, computed by PyTorch + torchvision in float64. Writes
crates/retina-wgpu/tests/golden/retinanet_step.json, which crates/retina-wgpu/tests/pytorch_step.rs replays on the crate's CPU and
GPU engines (the test needs no Python).

    /opt/torchref/bin/python scripts/pytorch_step_reference.py [--out PATH]

The network is scripts/pytorch_retinanet_reference.py's SmallRetinaNet (the crate's network
module for module, its state dict keys are the crate's parameter names) on a tiny configuration
(64 x 64 input, 4 classes, backbone [4, 8, 8, 16, 16], FPN 8, one head convolution of 8,
GroupNorm on) with the crate's anchors (P3-P7, base 16, 3 scales x 3 ratios, cells centred).
What is torchvision's and what is the crate's:

  - matching: torchvision's `Matcher(0.5, 0.4, allow_low_quality_matches=True)` on
    `torchvision.ops.box_iou`; the script checks that float32 and float64 IoUs give the same
    matches, that no anchor's best IoU lies within 1e-4 of a threshold and that no ground truth
    has near-ties (IoUs within 1e-6 of its best that are not exactly its best), so that the
    crate's float32 matcher must reach the same decisions;
  - box targets and box loss: torchvision's `_box_loss("smooth_l1", BoxCoder((1, 1, 1, 1)),
    ..., cnf={"beta": 1 / 9})` (torchvision's RetinaNet defaults to "l1"; the crate, as
    Detectron, uses smooth L1 with beta 1/9);
  - class loss: `torchvision.ops.sigmoid_focal_loss` (alpha 0.25, gamma 2, reduction "sum")
    over the non-ignored anchors of each image;
  - normalisation, the crate's (Detectron's): each loss summed over the batch and divided by
    max(1, positive anchors in the batch). torchvision divides each image's loss by its own
    positives and averages over images; that value is written too (`torchvision_normalised`),
    for information only;
  - the update: `torch.nn.utils.clip_grad_norm_` (max norm 10) then `torch.optim.SGD` (lr 0.01,
    momentum 0.9 from zero velocity, weight decay 1e-4 on the `conv.weight` tensors only).
    The gradients written are those of the loss, before clipping; `clip_coefficient` says
    whether the clip was active (min(1, 10 / (norm + 1e-6))). Written too: SGD's momentum
    buffer after the step (`velocity`, clip * grad + decay * weight from zero velocity), in
    which weight decay is visible (its share of a weight's update, lr * 1e-4 * w, is not).

Inputs are exact float32 values (the crate computes in f32 from the same numbers), rounded to
4 (weights) and 3 (images) decimal places so that they print short: weights (seeded torch
generator: N(0, 0.1) for convolution weights and biases, GroupNorm gamma
1 + N(0, 0.1) and beta N(0, 0.1), the class output's bias at the prior -ln(99) + N(0, 0.1)),
two images of smooth random patterns with bumps where the boxes are, and boxes in pixels on a
1/4 px grid. Expected values are float64 results written to 8 significant digits (relative
rounding 5e-9, far below the test's 1e-4). Parameters are listed in the state dict's order
under the crate's names, with PyTorch's shapes ([C] where the crate has [1, C, 1, 1]).
Also written, to localise a mismatch: the anchors (float32, as the reference used them) and
the per-anchor labels (class, -1 background, -2 ignored) of both images.
"""
import argparse
import json
import math
import os
import sys

import numpy
import torch
import torchvision
from torchvision.models.detection import _utils as det_utils
from torchvision.ops import box_iou, sigmoid_focal_loss

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pytorch_retinanet_reference as ref  # noqa: E402  (the network twin, its anchors)

CONFIG = {
    "input_size": 64,
    "num_classes": 4,
    "backbone_channels": [4, 8, 8, 16, 16],
    "fpn_channels": 8,
    "head_convs": 1,
    "head_channels": 8,
    "group_norm": True,
    "prior": 0.01,
    "anchor_base": 16.0,
}
SGD = {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4, "max_grad_norm": 10.0}
# Two images, x1 y1 x2 y2 in pixels and classes: boxes of 17-46 px (positives on P3, P4 and
# P5), one long thin box whose best IoU is below 0.4 (low-quality matches), overlapping boxes.
# (P6 and P7, anchors of 128 px and more, see only negatives in a 64 px image.)
TARGETS = [
    ([[6.0, 10.0, 26.0, 28.5], [30.25, 6.0, 61.0, 40.0], [8.0, 44.0, 56.0, 52.0]], [0, 3, 1]),
    ([[2.0, 1.0, 47.5, 47.0], [38.0, 34.0, 55.5, 61.25]], [1, 2]),
]
SEED = 20240611


def f32(t, decimals):
    """Rounds to `decimals` decimal places, then to float32 (kept in float64): exact float32
    inputs with short decimal representations."""
    return t.round(decimals=decimals).float().double()


def make_params(model, gen):
    """Deterministic float32-exact weights into `model` (float64)."""
    prior_bias = -math.log((1.0 - CONFIG["prior"]) / CONFIG["prior"])
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.1
            if name.endswith("norm.weight"):
                value = 1.0 + noise
            elif name == "head.cls.output.conv.bias":
                value = prior_bias + noise
            else:
                value = noise
            p.copy_(f32(value, 4))


def make_images(gen, n, s):
    """Smooth random patterns (a few random plane waves per channel) plus soft bumps over the
    boxes, float32-exact, roughly unit scale."""
    y, x = torch.meshgrid(torch.arange(s, dtype=torch.float64), torch.arange(s, dtype=torch.float64), indexing="ij")
    images = torch.zeros(n, 3, s, s)
    for i in range(n):
        for c in range(3):
            for _ in range(4):
                fx, fy = (torch.rand(2, generator=gen, dtype=torch.float64) - 0.5) * 0.6
                phase = float(torch.rand(1, generator=gen, dtype=torch.float64)) * 2 * math.pi
                amp = 0.3 + 0.4 * float(torch.rand(1, generator=gen, dtype=torch.float64))
                images[i, c] += amp * torch.sin(fx * x + fy * y + phase)
        for (x1, y1, x2, y2), k in zip(*TARGETS[i]):
            cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
            bump = torch.exp(-(((x - cx) / (0.5 * w)) ** 4 + ((y - cy) / (0.5 * h)) ** 4))
            images[i, k % 3] += 1.5 * bump
            images[i, (k + 1) % 3] -= 0.75 * bump
    return f32(images, 3)


def match(gt, anchors):
    """torchvision's matcher on torchvision's IoU, in float64 and float32 (they must agree),
    with the margin checks of the module docstring. Returns the matches (float64)."""
    matcher = det_utils.Matcher(0.5, 0.4, allow_low_quality_matches=True)
    iou = box_iou(gt, anchors)
    m64 = matcher(iou)
    m32 = matcher(box_iou(gt.float(), anchors.float()))
    assert torch.equal(m64, m32), "float32 and float64 matching differ"
    best = iou.max(0).values
    margin = min(float((best - 0.4).abs().min()), float((best - 0.5).abs().min()))
    assert margin > 1e-4, f"an anchor's best IoU is within {margin} of a threshold"
    highest = iou.max(1).values
    near = (iou >= highest[:, None] * (1 - 1e-6)) & (iou != highest[:, None])
    assert not near.any(), "a ground truth has near-ties for its best anchor"
    # Matches that only the low-quality rule made (best IoU below 0.5).
    low_quality = int(((m64 >= 0) & (best < 0.5)).sum())
    return m64, margin, low_quality


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument("--out", default=os.path.join(here, "..", "crates", "retina-wgpu", "tests", "golden", "retinanet_step.json"))
    args = parser.parse_args()

    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)  # SmallRetinaNet's own initialisation, overwritten below
    gen = torch.Generator().manual_seed(SEED)
    cfg = dict(CONFIG)
    model = ref.SmallRetinaNet(cfg).double()
    make_params(model, gen)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    s, k = cfg["input_size"], cfg["num_classes"]
    images = make_images(gen, len(TARGETS), s)
    anchors32, _ = ref.make_anchors(cfg)  # float32, the crate's anchors
    anchors = anchors32.double()
    targets = [(torch.tensor(b), torch.tensor(c, dtype=torch.long)) for b, c in TARGETS]

    # Matching (no gradient).
    matches, labels, margins, low_quality = [], [], [], 0
    for boxes, classes in targets:
        m, margin, lq = match(boxes, anchors)
        matches.append(m)
        labels.append(torch.where(m >= 0, classes[m.clamp(min=0)], m))
        margins.append(margin)
        low_quality += lq
    positives = sum(int((m >= 0).sum()) for m in matches)
    ignored = sum(int((m == det_utils.Matcher.BETWEEN_THRESHOLDS).sum()) for m in matches)
    assert positives > 0 and ignored > 0 and low_quality > 0, (positives, ignored, low_quality)
    normaliser = max(1, positives)

    # Forward and the loss.
    model.train()
    cls_rows, box_rows = model(images)
    coder = det_utils.BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
    class_sums, box_sums = [], []
    for i, ((boxes, classes), m) in enumerate(zip(targets, matches)):
        fg = m >= 0
        onehot = torch.zeros_like(cls_rows[i])
        onehot[fg, classes[m[fg]]] = 1.0
        valid = m != det_utils.Matcher.BETWEEN_THRESHOLDS
        class_sums.append(sigmoid_focal_loss(cls_rows[i][valid], onehot[valid], alpha=0.25, gamma=2.0, reduction="sum"))
        box_sums.append(
            det_utils._box_loss("smooth_l1", coder, anchors[fg], boxes[m[fg]], box_rows[i][fg], cnf={"beta": 1.0 / 9.0})
        )
    class_loss = sum(class_sums) / normaliser
    box_loss = sum(box_sums) / normaliser
    per_image = [max(1, int((m >= 0).sum())) for m in matches]
    torchvision_normalised = {
        "class_loss": float(sum(c.detach() / n for c, n in zip(class_sums, per_image)) / len(per_image)),
        "box_loss": float(sum(b.detach() / n for b, n in zip(box_sums, per_image)) / len(per_image)),
    }

    # Backward, then one SGD step.
    model.zero_grad(set_to_none=True)
    (class_loss + box_loss).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    decay = [p for n, p in model.named_parameters() if n.endswith("conv.weight")]
    rest = [p for n, p in model.named_parameters() if not n.endswith("conv.weight")]
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": SGD["weight_decay"]}, {"params": rest, "weight_decay": 0.0}],
        lr=SGD["lr"],
        momentum=SGD["momentum"],
    )
    norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), SGD["max_grad_norm"]))
    opt.step()
    velocity = {n: opt.state[p]["momentum_buffer"] for n, p in model.named_parameters()}
    clip = min(1.0, SGD["max_grad_norm"] / (norm + 1e-6))

    def exact(t):
        """float32 values as the shortest decimal that reads back as the same float32."""
        values = t.detach().float().flatten().numpy()
        out = [float(str(v)) for v in values]
        assert numpy.array_equal(numpy.array(out, dtype=numpy.float32), values)
        return out

    def expected(t):
        return [float(f"{v:.8g}") for v in t.detach().flatten().tolist()]

    params = []
    for name, p in model.named_parameters():
        params.append(
            {
                "name": name,
                "shape": list(p.shape),
                "decay": name.endswith("conv.weight"),
                "values": exact(initial[name]),
                "grad": expected(grads[name]),
                "velocity": expected(velocity[name]),
                "updated": expected(p),
            }
        )
    out = {
        "description": "one training step of a tiny RetinaNet, PyTorch + torchvision in float64; "
        "see scripts/pytorch_step_reference.py",
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "config": cfg,
        "sgd": SGD,
        "grad_norm": norm,
        "clip_coefficient": clip,
        "images": {"shape": list(images.shape), "values": exact(images)},
        "targets": [{"boxes": b, "classes": c} for b, c in TARGETS],
        "anchors": exact(anchors32),
        "labels": [lab.tolist() for lab in labels],
        "positives": positives,
        "ignored": ignored,
        "low_quality_matches": low_quality,
        "threshold_margin": min(margins),
        "class_loss": float(class_loss.detach()),
        "box_loss": float(box_loss.detach()),
        "torchvision_normalised": torchvision_normalised,
        "params": params,
    }
    text = json.dumps(out, separators=(",", ":"))
    with open(args.out, "w") as f:
        f.write(text + "\n")
    scalars = sum(p.numel() for p in model.parameters())
    print(
        f"wrote {os.path.normpath(args.out)} ({len(text) / 1e6:.2f} MB): {len(params)} tensors, {scalars} scalars, "
        f"{anchors.shape[0]} anchors/image, positives {positives} (low-quality {low_quality}), ignored {ignored}, "
        f"threshold margin {min(margins):.2e}, class loss {out['class_loss']:.6f}, box loss {out['box_loss']:.6f}, "
        f"grad norm {norm:.4f} (clip {clip:.4f})"
    )


if __name__ == "__main__":
    sys.exit(main())
