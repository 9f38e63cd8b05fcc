#!/usr/bin/env python3
"""Exports the small RetinaNet (a model directory: config.json + model.safetensors, e.g. web/model)
to ONNX through its PyTorch twin (scripts/pytorch_retinanet_reference.py), for the browser peer:
onnxruntime-web running the same network as the web page (web/ort.html, `web/screenshot.py --ort`).

    python3 scripts/export_onnx.py [--model web/model] [--out web/ort/model.onnx]

The graph takes `input` [1, 3, S, S] (normalised CHW, as the crate's network) and returns the
network's raw outputs, `class_rows` [1, R, K] (logits) and `box_rows` [1, R, 4] (deltas) in the
crate's anchor order: the forward pass only, as onnxruntime-web has no NMS or TopK on WebGPU.
After exporting, onnxruntime (CPU) runs the graph on a fixed input and must agree with PyTorch
(max difference < 1e-4); the script writes beside the model `expected.json`: that input's formula
and sampled outputs, which the browser check compares onnxruntime-web's outputs with.

Needs torch, safetensors and onnxruntime (e.g. /work/torchenv)."""

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pytorch_retinanet_reference import DEFAULT_CONFIG, SmallRetinaNet  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SAMPLES = 256


def fixed_input(s):
    """x[c, y, x] = sin(0.37 i + 0.11 c) with i = y * s + x: the same formula as web/ort.html."""
    i = np.arange(s * s, dtype=np.float64)
    return np.stack([np.sin(0.37 * i + 0.11 * c) for c in range(3)]).reshape(1, 3, s, s).astype(np.float32)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=os.path.join(ROOT, "web", "model"))
    ap.add_argument("--out", default=os.path.join(ROOT, "web", "ort", "model.onnx"))
    args = ap.parse_args()
    from safetensors.torch import load_file

    with open(os.path.join(args.model, "config.json")) as f:
        cfg = dict(DEFAULT_CONFIG, **json.load(f))
    model = SmallRetinaNet(cfg)
    model.load_state_dict(load_file(os.path.join(args.model, "model.safetensors")), strict=True)
    model.eval()
    s = cfg["input_size"]
    x = fixed_input(s)
    with torch.no_grad():
        want = [t.numpy() for t in model(torch.from_numpy(x))]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    torch.onnx.export(model, (torch.from_numpy(x),), args.out, input_names=["input"],
                      output_names=["class_rows", "box_rows"], opset_version=17, dynamo=False)

    import onnxruntime as ort

    session = ort.InferenceSession(args.out, providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x})
    worst = max(float(np.abs(g - w).max()) for g, w in zip(got, want))
    if worst > 1e-4:
        sys.exit(f"onnxruntime's outputs differ from PyTorch's by {worst}")
    # Evenly spaced samples of each output (flat index, value), for the browser's check.
    samples = {}
    for name, w in zip(["class_rows", "box_rows"], want):
        flat = w.reshape(-1)
        idx = np.linspace(0, flat.size - 1, SAMPLES).round().astype(int)
        samples[name] = {"shape": list(w.shape), "index": idx.tolist(), "value": flat[idx].tolist(),
                         "abs_sum": float(np.abs(flat.astype(np.float64)).sum())}
    expected = {"input": "x[c, y, x] = sin(0.37 * (y * S + x) + 0.11 * c)", "size": s,
                "torch": torch.__version__, "onnxruntime": ort.__version__, "outputs": samples}
    with open(os.path.join(os.path.dirname(os.path.abspath(args.out)), "expected.json"), "w") as f:
        json.dump(expected, f)
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes): onnxruntime {ort.__version__} "
          f"agrees with PyTorch to {worst:.2e}")


if __name__ == "__main__":
    main()
