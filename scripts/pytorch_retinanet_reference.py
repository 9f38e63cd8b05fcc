"""The small RetinaNet of docs/ARCHITECTURE.md in PyTorch: the peer that `retina train --backend cpu` is
compared with, and a check that the crate's checkpoints load into PyTorch as they are.

The network is the crate's (crates/retina-wgpu/src/model/retinanet.rs) module for module, so that the parameter
names of `model.safetensors` are this module's state dict keys:

    backbone.{0-4}.{down,conv}.conv.weight   3x3 convolutions (stride 2, then 1), no bias when
    backbone.{0-4}.{down,conv}.norm.{weight,bias}     GroupNorm follows (16 groups, C/4 below 64)
    fpn.lateral{3,4,5}.conv.{weight,bias}    1x1 laterals on C3-C5
    fpn.output{3,4,5}.conv.{weight,bias}     3x3 outputs after nearest x2 top-down additions
    fpn.p6.conv.{weight,bias}                3x3 stride 2 on C5
    fpn.p7.conv.{weight,bias}                3x3 stride 2 on ReLU(P6)
    head.{cls,box}.{0,1}.conv.weight + .norm.{weight,bias}   shared over P3-P7
    head.{cls,box}.output.conv.{weight,bias} A*K (bias -log((1-0.01)/0.01)) and A*4 outputs

(`"group_norm": false` in the configuration gives the plain network: every convolution then
has a bias and no GroupNorm.) The outputs are anchor rows in the crate's order (level P3-P7,
row, column, anchor; anchor = ratio * 3 + scale) against the crate's anchors: base sizes 16-256,
scales 2^(0, 1/3, 2/3), ratios h/w 0.5, 1, 2, centred in their cells (3069 per 128x128 image).
Training follows torchvision's RetinaNet with the crate's normalisation: the matcher (0.5 / 0.4,
low-quality matches), sigmoid focal loss (alpha 0.25, gamma 2) summed over non-ignored anchors
plus smooth L1 (beta 1/9) on the encoded boxes of positives, both divided by max(1, positive
anchors in the batch); SGD (lr 0.01 constant, no warmup, momentum 0.9, weight decay 1e-4 on
convolution weights only), the global gradient norm clipped at 10 (the crate's TrainOptions
defaults).

Needs torch, torchvision (batched_nms) and safetensors, e.g. the venv /opt/torchref:

    /opt/torchref/bin/python scripts/pytorch_retinanet_reference.py speed [--threads 2]
        [--batch 8] [--steps 20] [--warmup 5] [--no-group-norm]
    /opt/torchref/bin/python scripts/pytorch_retinanet_reference.py load DIR

`speed` (torch.set_num_threads(2) by default) times, on random normalised images with 1-4
random boxes each (a few batches made up front and cycled, so data generation is not timed):
  - training: forward + loss (matching included) + backward + clipping + SGD step;
  - inference: forward only under torch.no_grad, and forward + torchvision-style
    post-processing (score > 0.05, top 1000 per level, decode, clip, batched_nms 0.5, 100 per
    image), each the median over --steps timed iterations after --warmup untimed ones (the
    post-processing's cost depends on how many scores pass 0.05: the JSON gives the candidates
    per image that reached NMS);
  - the peak RSS (getrusage ru_maxrss) before and after the training loop (the training loop
    runs first, so the second is its peak; `import torch` alone, CUDA wheel, is ~530 MiB);
and prints one JSON line with the figures, the torch version and the load average.

`load DIR` reads DIR/config.json and DIR/model.safetensors (as `retina train --out DIR`
writes them), loads the weights with strict=True, runs a forward pass on a fixed input and
prints one JSON line with the output shapes and checksums.
"""
import argparse
import json
import math
import os
import resource
import statistics
import sys
import time

import torch
from torch import nn
import torch.nn.functional as F

# The crate's RetinaNetConfig defaults (crates/retina-wgpu/src/model/retinanet.rs); config.json overrides them.
DEFAULT_CONFIG = {
    "input_size": 128,
    "num_classes": 4,
    "backbone_channels": [16, 32, 64, 96, 128],
    "fpn_channels": 64,
    "head_convs": 2,
    "head_channels": 64,
    "group_norm": True,
    "prior": 0.01,
    "anchor_base": 16.0,
}
STRIDES = [8, 16, 32, 64, 128]
SCALES = [1.0, 2.0 ** (1.0 / 3.0), 2.0 ** (2.0 / 3.0)]
RATIOS = [0.5, 1.0, 2.0]
ANCHORS_PER_CELL = len(SCALES) * len(RATIOS)
BOX_CLAMP = math.log(1000.0 / 16.0)


def groups_for(channels):
    """GroupNorm::small_retinanet: 16 groups from 64 channels on, channels / 4 below."""
    g = 16 if channels >= 64 else channels // 4
    return max(g, 1)


class Block(nn.Module):
    """A convolution (`conv`), optionally GroupNorm (`norm`, the convolution then has no bias)
    and ReLU: the crate's Block."""

    def __init__(self, cin, cout, k, stride, norm, relu):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, padding=k // 2, bias=not norm)
        self.norm = nn.GroupNorm(groups_for(cout), cout, eps=1e-5) if norm else None
        self.relu = relu

    def forward(self, x):
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        return F.relu(x) if self.relu else x


class Stage(nn.Module):
    """A backbone stage: `down` (3x3 stride 2) then `conv` (3x3 stride 1)."""

    def __init__(self, cin, cout, gn):
        super().__init__()
        self.down = Block(cin, cout, 3, 2, gn, True)
        self.conv = Block(cout, cout, 3, 1, gn, True)

    def forward(self, x):
        return self.conv(self.down(x))


class FPN(nn.Module):
    def __init__(self, ch, f):
        super().__init__()
        self.lateral3 = Block(ch[2], f, 1, 1, False, False)
        self.lateral4 = Block(ch[3], f, 1, 1, False, False)
        self.lateral5 = Block(ch[4], f, 1, 1, False, False)
        self.output3 = Block(f, f, 3, 1, False, False)
        self.output4 = Block(f, f, 3, 1, False, False)
        self.output5 = Block(f, f, 3, 1, False, False)
        self.p6 = Block(ch[4], f, 3, 2, False, False)
        self.p7 = Block(f, f, 3, 2, False, False)

    def forward(self, c3, c4, c5):
        m5 = self.lateral5(c5)
        m4 = self.lateral4(c4) + F.interpolate(m5, size=c4.shape[-2:], mode="nearest")
        m3 = self.lateral3(c3) + F.interpolate(m4, size=c3.shape[-2:], mode="nearest")
        p6 = self.p6(c5)
        p7 = self.p7(F.relu(p6))
        return [self.output3(m3), self.output4(m4), self.output5(m5), p6, p7]


def head_branch(f, convs, channels, outputs, gn):
    """`0`, `1`, ... (3x3 conv, GroupNorm, ReLU) then `output` (3x3 conv with bias)."""
    blocks = nn.ModuleDict()
    cin = f
    for i in range(convs):
        blocks[str(i)] = Block(cin, channels, 3, 1, gn, True)
        cin = channels
    blocks["output"] = Block(cin, outputs, 3, 1, False, False)
    return blocks


class Head(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        f, gn, k = cfg["fpn_channels"], cfg["group_norm"], cfg["num_classes"]
        self.num_classes = k
        self.cls = head_branch(f, cfg["head_convs"], cfg["head_channels"], ANCHORS_PER_CELL * k, gn)
        self.box = head_branch(f, cfg["head_convs"], cfg["head_channels"], ANCHORS_PER_CELL * 4, gn)

    @staticmethod
    def rows(branch, x, values):
        for block in branch.values():
            x = block(x)
        n, _, h, w = x.shape
        # [N, A*V, H, W] -> [N, H*W*A, V]: the crate's permute_head (torchvision's layout).
        return x.view(n, ANCHORS_PER_CELL, values, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, values)

    def forward(self, levels):
        cls = torch.cat([self.rows(self.cls, p, self.num_classes) for p in levels], 1)
        box = torch.cat([self.rows(self.box, p, 4) for p in levels], 1)
        return cls, box


class SmallRetinaNet(nn.Module):
    """Returns class logits [B, R, K] and box deltas [B, R, 4] in the crate's anchor order."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        ch, gn = cfg["backbone_channels"], cfg["group_norm"]
        cins = [3] + list(ch[:-1])
        self.backbone = nn.ModuleList(Stage(cin, c, gn) for cin, c in zip(cins, ch))
        self.fpn = FPN(ch, cfg["fpn_channels"])
        self.head = Head(cfg)
        self.reset_parameters()

    def reset_parameters(self):
        """The crate's initialisation: Kaiming normal (std sqrt(2 / fan_in)) in the backbone
        and FPN, N(0, 0.01) in the heads, zero biases, the class output's bias at the prior."""
        for name, m in self.named_modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                std = 0.01 if name.startswith("head.") else math.sqrt(2.0 / fan_in)
                nn.init.normal_(m.weight, 0.0, std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        prior = self.cfg["prior"]
        nn.init.constant_(self.head.cls["output"].conv.bias, -math.log((1.0 - prior) / prior))

    def forward(self, x):
        feats = []
        for stage in self.backbone:
            x = stage(x)
            feats.append(x)
        return self.head(self.fpn(feats[2], feats[3], feats[4]))


def make_anchors(cfg):
    """The crate's anchors (crates/retina-wgpu/src/ops/anchors.rs, AnchorConfig::small): [R, 4] x1y1x2y2, level,
    row, column, anchor; cell centres at (col + 0.5) * stride; anchor a = ratio * 3 + scale."""
    s = cfg["input_size"]
    out = []
    for level, stride in enumerate(STRIDES):
        size = cfg["anchor_base"] * 2**level
        cell = []
        for ratio in RATIOS:
            h_ratio = math.sqrt(ratio)
            w_ratio = 1.0 / h_ratio
            for scale in SCALES:
                hw, hh = w_ratio * size * scale / 2.0, h_ratio * size * scale / 2.0
                cell.append([-hw, -hh, hw, hh])
        cell = torch.tensor(cell, dtype=torch.float32)
        n = -(-s // stride)
        centres = (torch.arange(n, dtype=torch.float32) + 0.5) * stride
        cy, cx = torch.meshgrid(centres, centres, indexing="ij")
        shifts = torch.stack([cx, cy, cx, cy], -1).reshape(-1, 1, 4)
        out.append((shifts + cell).reshape(-1, 4))
    counts = [a.shape[0] for a in out]
    return torch.cat(out), counts


def box_iou(a, b):
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def match(gt_boxes, anchors, high=0.5, low=0.4):
    """torchvision's Matcher(0.5, 0.4, allow_low_quality_matches=True): the matched ground
    truth per anchor, -1 background, -2 ignored. As in the crate, a ground truth whose best IoU
    is 0 claims no low-quality match."""
    if gt_boxes.numel() == 0:
        return torch.full((anchors.shape[0],), -1, dtype=torch.long)
    iou = box_iou(gt_boxes, anchors)  # [G, R]
    vals, matches = iou.max(0)
    all_matches = matches.clone()
    matches[vals < high] = -2
    matches[vals < low] = -1
    best = iou.max(1).values
    gt_idx, anchor_idx = torch.nonzero((iou == best[:, None]) & (best[:, None] > 0), as_tuple=True)
    matches[anchor_idx] = all_matches[anchor_idx]
    return matches


def encode(gt, anchors):
    """torchvision's BoxCoder((1, 1, 1, 1)).encode_single."""
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ax, ay = anchors[:, 0] + 0.5 * aw, anchors[:, 1] + 0.5 * ah
    gw, gh = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
    gx, gy = gt[:, 0] + 0.5 * gw, gt[:, 1] + 0.5 * gh
    return torch.stack([(gx - ax) / aw, (gy - ay) / ah, torch.log(gw / aw), torch.log(gh / ah)], -1)


def decode(deltas, anchors):
    """torchvision's BoxCoder((1, 1, 1, 1)).decode_single, dw/dh clamped at log(1000/16)."""
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ax, ay = anchors[:, 0] + 0.5 * aw, anchors[:, 1] + 0.5 * ah
    dx, dy = deltas[:, 0], deltas[:, 1]
    dw, dh = deltas[:, 2].clamp(max=BOX_CLAMP), deltas[:, 3].clamp(max=BOX_CLAMP)
    cx, cy, w, h = dx * aw + ax, dy * ah + ay, torch.exp(dw) * aw, torch.exp(dh) * ah
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], -1)


def detection_loss(cls_rows, box_rows, anchors, targets, alpha=0.25, gamma=2.0, beta=1.0 / 9.0):
    """Focal loss over non-ignored anchors + smooth L1 over positives, both / max(1, positives
    in the batch). Returns (class loss, box loss, positives)."""
    b, r, k = cls_rows.shape
    with torch.no_grad():
        labels = torch.full((b, r), -1, dtype=torch.long)
        box_targets = torch.zeros(b, r, 4)
        for i, (boxes, classes) in enumerate(targets):
            m = match(boxes, anchors)
            pos = m >= 0
            labels[i] = torch.where(pos, classes[m.clamp(min=0)], m) if boxes.numel() else m
            if pos.any():
                box_targets[i, pos] = encode(boxes[m[pos]], anchors[pos])
        positive = labels >= 0
        valid = labels != -2
        onehot = torch.zeros(b, r, k)
        onehot[positive] = F.one_hot(labels[positive], k).to(onehot.dtype)
        normaliser = max(1, int(positive.sum()))
    # torchvision.ops.sigmoid_focal_loss, summed over the non-ignored anchors.
    logits = cls_rows[valid]
    t = onehot[valid]
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    focal = ce * (1 - p_t) ** gamma * (alpha * t + (1 - alpha) * (1 - t))
    class_loss = focal.sum() / normaliser
    box_loss = F.smooth_l1_loss(box_rows[positive], box_targets[positive], beta=beta, reduction="sum") / normaliser
    return class_loss, box_loss, normaliser


def postprocess(cls_rows, box_rows, anchors, counts, size, score=0.05, topk=1000, iou=0.5, max_det=100):
    """torchvision's RetinaNet.postprocess_detections over the anchor rows, per image: a list
    of (boxes, scores, labels, candidates before NMS) per image."""
    from torchvision.ops import batched_nms

    k = cls_rows.shape[-1]
    out = []
    for logits, deltas in zip(cls_rows, box_rows):
        boxes_all, scores_all, labels_all = [], [], []
        start = 0
        for n in counts:
            scores = torch.sigmoid(logits[start : start + n]).flatten()
            keep = torch.nonzero(scores > score).squeeze(1)
            scores = scores[keep]
            scores, idx = scores.topk(min(topk, keep.numel()))
            idx = keep[idx]
            anchor_idx = idx // k + start
            boxes = decode(deltas[anchor_idx], anchors[anchor_idx]).clamp(0, size)
            boxes_all.append(boxes)
            scores_all.append(scores)
            labels_all.append(idx % k)
            start += n
        boxes, scores, labels = torch.cat(boxes_all), torch.cat(scores_all), torch.cat(labels_all)
        keep = batched_nms(boxes, scores, labels, iou)[:max_det]
        out.append((boxes[keep], scores[keep], labels[keep], len(scores)))
    return out


def random_batch(gen, batch, size, classes):
    """Random normalised images with 1-4 random boxes (12-64 px) each."""
    images = torch.randn(batch, 3, size, size, generator=gen)
    targets = []
    for _ in range(batch):
        n = int(torch.randint(1, 5, (1,), generator=gen))
        wh = torch.rand(n, 2, generator=gen) * 52 + 12
        xy = torch.rand(n, 2, generator=gen) * (size - wh)
        boxes = torch.cat([xy, xy + wh], 1)
        targets.append((boxes, torch.randint(0, classes, (n,), generator=gen)))
    return images, targets


def make_optimizer(model, lr=0.01, momentum=0.9, weight_decay=1e-4):
    """SGD; weight decay on convolution weights only (not biases, not GroupNorm)."""
    decay = [p for n, p in model.named_parameters() if n.endswith("conv.weight")]
    rest = [p for n, p in model.named_parameters() if not n.endswith("conv.weight")]
    return torch.optim.SGD(
        [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=lr,
        momentum=momentum,
    )


def peak_rss_mib():
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def timed(fn, warmup, steps):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def run_speed(args):
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = dict(DEFAULT_CONFIG, group_norm=not args.no_group_norm)
    model = SmallRetinaNet(cfg)
    anchors, counts = make_anchors(cfg)
    opt = make_optimizer(model)
    gen = torch.Generator().manual_seed(0)
    batches = [random_batch(gen, args.batch, cfg["input_size"], cfg["num_classes"]) for _ in range(4)]
    losses = []
    step = [0]

    def train_step():
        images, targets = batches[step[0] % len(batches)]
        step[0] += 1
        cls_rows, box_rows = model(images)
        class_loss, box_loss, _ = detection_loss(cls_rows, box_rows, anchors, targets)
        loss = class_loss + box_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        losses.append(loss.item())

    rss_before = peak_rss_mib()
    model.train()
    train_times = timed(train_step, args.warmup, args.steps)
    rss_train = peak_rss_mib()

    model.eval()
    images = batches[0][0]

    def infer():
        with torch.no_grad():
            model(images)

    def infer_post():
        with torch.no_grad():
            cls_rows, box_rows = model(images)
            postprocess(cls_rows, box_rows, anchors, counts, cfg["input_size"])

    infer_times = timed(infer, args.warmup, args.steps)
    post_times = timed(infer_post, args.warmup, args.steps)
    # How much work the post-processing had (it depends on the weights: after a few steps on
    # random images many scores pass 0.05; a fresh network, at the 0.01 prior, passes almost none).
    with torch.no_grad():
        dets = postprocess(*model(images), anchors, counts, cfg["input_size"])

    def per_s(times):
        return round(args.batch / statistics.median(times), 1)

    result = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "group_norm": cfg["group_norm"],
        "batch": args.batch,
        "timed_steps": args.steps,
        "warmup_steps": args.warmup,
        "params": sum(p.numel() for p in model.parameters()),
        "anchors": anchors.shape[0],
        "train_images_per_s": per_s(train_times),
        "train_step_ms_median": round(statistics.median(train_times) * 1e3, 2),
        "train_step_ms_min": round(min(train_times) * 1e3, 2),
        "infer_images_per_s": per_s(infer_times),
        "infer_postprocess_images_per_s": per_s(post_times),
        "postprocess_candidates_per_image": round(statistics.mean(d[3] for d in dets), 1),
        "detections_per_image": round(statistics.mean(len(d[0]) for d in dets), 1),
        "peak_rss_mib_before_training": round(rss_before, 1),
        "peak_rss_mib_training": round(rss_train, 1),
        "loss_first_last": [round(losses[0], 4), round(losses[-1], 4)],
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result))


def run_load(args):
    from safetensors.torch import load_file

    torch.manual_seed(0)
    with open(os.path.join(args.dir, "config.json")) as f:
        cfg = dict(DEFAULT_CONFIG, **json.load(f))
    model = SmallRetinaNet(cfg)
    state = load_file(os.path.join(args.dir, "model.safetensors"))
    model.load_state_dict(state, strict=True)  # raises on any missing, extra or misshapen tensor
    model.eval()
    anchors, counts = make_anchors(cfg)
    s = cfg["input_size"]
    # A fixed input: a smooth pattern per channel, reproducible without any RNG.
    ramp = torch.linspace(-2.0, 2.0, s)
    x = torch.stack([ramp[None, :] * ramp[:, None], ramp[None, :].expand(s, s), ramp[:, None].expand(s, s)])
    x = x.unsqueeze(0).repeat(2, 1, 1, 1)
    with torch.no_grad():
        cls_rows, box_rows = model(x)
        dets = postprocess(cls_rows, box_rows, anchors, counts, s)
    print(
        json.dumps(
            {
                "loaded": True,
                "strict": True,
                "tensors": len(state),
                "params": sum(p.numel() for p in model.parameters()),
                "config": cfg,
                "input_shape": list(x.shape),
                "class_rows_shape": list(cls_rows.shape),
                "box_rows_shape": list(box_rows.shape),
                "anchors": anchors.shape[0],
                "class_logit_mean": round(float(cls_rows.mean()), 6),
                "box_delta_abs_mean": round(float(box_rows.abs().mean()), 6),
                "detections_per_image": [len(d[0]) for d in dets],
                "torch": torch.__version__,
            }
        )
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    speed = sub.add_parser("speed", help="training and inference images/s, peak RSS")
    speed.add_argument("--threads", type=int, default=2)
    speed.add_argument("--batch", type=int, default=8)
    speed.add_argument("--steps", type=int, default=20, help="timed iterations (median)")
    speed.add_argument("--warmup", type=int, default=5, help="untimed iterations first")
    speed.add_argument("--no-group-norm", action="store_true", help="the plain network")
    load = sub.add_parser("load", help="load a crate checkpoint with strict=True")
    load.add_argument("dir", help="a model directory: config.json + model.safetensors")
    args = parser.parse_args()
    if args.mode == "speed":
        run_speed(args)
    else:
        run_load(args)


if __name__ == "__main__":
    sys.exit(main())
