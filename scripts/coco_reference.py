"""Reference vectors for the Rust COCO bbox evaluator (crates/retina-coco), produced by pycocotools.

What it does
  1. Deterministically generates (seeded `random.Random`, no numpy randomness) a small
     edge-case dataset and writes crates/retina-coco/tests/coco/edge_gt.json (COCO instances file) and
     crates/retina-coco/tests/coco/edge_results.json (a list of {image_id, category_id, bbox, score}).
  2. Runs pycocotools `COCOeval(gt, dt, "bbox")` evaluate/accumulate/summarize for three cases:
       val2014_100  crates/retina-coco/tests/coco/instances_val2014_100.json
                    + crates/retina-coco/tests/coco/instances_val2014_fakebbox100_results.json
                    (the COCO API's own test vector, copied from /work/shared/coco)
       edge         crates/retina-coco/tests/coco/edge_gt.json + crates/retina-coco/tests/coco/edge_results.json
       edge_empty   crates/retina-coco/tests/coco/edge_gt.json + no detections at all (loadRes crashes on an
                    empty list, so the results COCO object is built by hand)
  3. Writes crates/retina-coco/tests/coco/expected.json: the 12 stats, the printed summary, the recall array,
     the precision array averaged over the recall axis, sums of precision and scores, and
     per-category AP / AP50 / AP75, for each case.
  4. Asserts that the val2014_100 stats equal the numbers published with the test vector
     (/work/shared/coco/README.md) within 1e-12, and checks that the edge dataset really
     exercises what it is meant to (crowd matches, >100 detections, ties, id 0, ...).

How to run (from anywhere; paths are relative to this file):
    /path/to/python scripts/coco_reference.py
  needs pycocotools and numpy (here: /opt/cocoref/bin/python scripts/coco_reference.py).
  Re-running rewrites the three JSON files byte-identically for the same pycocotools/numpy.

The committed output was produced by pycocotools 2.0.11 with numpy 2.4.6 (Python 3.11.7).

expected.json, per case: "stats" (E.stats), "summary" (summarize()'s stdout verbatim: 12 lines,
each ending in a newline), "category_ids" / "image_count" (params after evaluate()), the array
shapes, "recall" (eval['recall'] flattened in C order, [T, K, A, M]),
"precision_mean_over_recall" (precision[t, :, k, a, m].mean() for each (t, k, a, m), C order,
-1 entries included), "precision_sum" / "scores_sum" (eval[...].sum() over the whole array,
-1 entries included) and "per_category" (AP, AP50, AP75 at area all / maxDets 100: the mean
of the entries > -1, or -1). All means and sums are numpy's: pairwise summation (8
accumulators, then a recursive split above 128 values), so a left-to-right sum of the same
values can differ in the last bits (seen: up to ~2e-14 on the stats, ~2e-15 on the
per-slice means, ~1e-9 absolute on precision_sum, whose magnitude is ~4e4); compare with
a tolerance, or replicate numpy's order.

Edge dataset contents (see build_edge_dataset): crowd GT with detections inside it and
detections overlapping both a crowd and a regular box (pycocotools prefers the regular box and
stops at the first ignored GT once a regular one matched); GT images with no annotations and no
detections; images with detections but no GT; category 13 with detections and no GT; category
55 with neither; category 5 with GT and no detections; tied scores within an image-category and
across images; one image with 130 detections of one category (the per-image-per-category cap of
100 cuts through a run of tied scores) and one with 120 detections over three categories; GT
whose `area` field differs from w*h (area ranges use `area`; areas exactly 32**2 and 96**2 are
in both neighbouring ranges, the bounds being inclusive); IoU exactly 0.5, 0.55, ..., 0.95 from
integer (and binary-exact fractional) boxes; two GT with identical IoU to one detection (the
LATER GT in file order wins: the comparison is `iou < best`, so an equal IoU replaces the
best); a GT with "ignore": 1 and iscrowd 0 (pycocotools overwrites ignore with iscrowd, so it
is a normal GT); a GT with id 0 (a detection matched to it stores 0 in dtMatches and is then
counted as a false positive, while the GT is marked matched and counts as a miss);
zero-width/zero-height GT and detections; non-contiguous category ids 1, 3, 5, 7, 13, 55, 90
listed out of order; image ids non-contiguous and listed out of order; annotation ids in no
particular order; float coordinates with two decimals and with full double precision.
"""
import contextlib
import copy
import importlib.metadata
import io
import json
import math
import random
import sys
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "crates" / "retina-coco" / "tests" / "coco"

SEED = 20240607

# Published in /work/shared/coco/README.md for pycocotools 2.0.11 on the val2014_100 vector.
PUBLISHED_VAL2014_100 = [
    0.5045806987249628, 0.6969727247299577, 0.5729816669904824, 0.5856257209410443,
    0.5193996948036719, 0.5013978986347466, 0.38681277964578054, 0.5936795762842003,
    0.595352982877607, 0.6398109626113442, 0.5664205978994309, 0.5642905982905982,
]

# Category ids of the edge dataset (listed out of order in the file on purpose).
PERSON, CAR, GTONLY, TRAIN, DETONLY, NEITHER, BRUSH = 1, 3, 5, 7, 13, 55, 90
EDGE_CATEGORIES = [
    (TRAIN, "train"), (PERSON, "person"), (BRUSH, "toothbrush"), (CAR, "car"),
    (NEITHER, "orange_never_seen"), (DETONLY, "stop_sign_no_gt"), (GTONLY, "bicycle_no_dets"),
]
TIE_SCORE = 0.5


class EdgeBuilder:
    """Collects images, GT annotations and detections; ids are assigned in build()."""

    def __init__(self, rng):
        self.rng = rng
        self.images = []   # dicts with a provisional "key"
        self.anns = []     # dicts with "img" key, optional fixed "id"
        self.dets = []     # dicts with "img" key
        self.marks = {}    # name -> object, for the sanity checks

    def image(self, name, width=640, height=480):
        img = {"key": len(self.images), "name": name, "width": width, "height": height}
        self.images.append(img)
        return img

    def gt(self, img, cat, bbox, area=None, iscrowd=0, ann_id=None, extra=None, mark=None):
        if area is None:
            area = bbox[2] * bbox[3]
        ann = {"img": img, "category_id": cat, "bbox": list(bbox), "area": area,
               "iscrowd": iscrowd, "fixed_id": ann_id, "extra": extra or {}}
        self.anns.append(ann)
        if mark:
            self.marks[mark] = ann
        return ann

    def det(self, img, cat, bbox, score, mark=None):
        d = {"img": img, "category_id": cat, "bbox": list(bbox), "score": score}
        self.dets.append(d)
        if mark:
            self.marks[mark] = d
        return d

    def build(self):
        rng = self.rng
        # Image ids: increasing in creation order (the tie scenarios rely on that order),
        # non-contiguous; the file lists the images shuffled.
        ids = sorted(rng.sample(range(1, 600000), len(self.images)))
        for img, iid in zip(self.images, ids):
            img["id"] = iid
        images = [{"id": img["id"], "file_name": "edge_%06d_%s.jpg" % (img["id"], img["name"]),
                   "width": img["width"], "height": img["height"]} for img in self.images]
        rng.shuffle(images)

        # Annotation ids: random distinct, in no order; the fixed ones (0 and the equal-IoU
        # pair) are taken out of the pool.
        fixed = {a["fixed_id"] for a in self.anns if a["fixed_id"] is not None}
        pool = [i for i in rng.sample(range(1, 100000), len(self.anns) + len(fixed))
                if i not in fixed]
        annotations = []
        for ann in self.anns:
            aid = ann["fixed_id"] if ann["fixed_id"] is not None else pool.pop()
            ann["id"] = aid
            out = {"id": aid, "image_id": ann["img"]["id"], "category_id": ann["category_id"],
                   "bbox": ann["bbox"], "area": ann["area"], "iscrowd": ann["iscrowd"]}
            out.update(ann["extra"])
            annotations.append(out)
        assert len({a["id"] for a in annotations}) == len(annotations)

        categories = [{"id": cid, "name": name} for cid, name in EDGE_CATEGORIES]
        gt = {"info": {"description": "retina-wgpu COCO evaluator edge cases, generated by "
                                      "scripts/coco_reference.py (seed %d)" % SEED},
              "images": images, "annotations": annotations, "categories": categories}
        results = [{"image_id": d["img"]["id"], "category_id": d["category_id"],
                    "bbox": d["bbox"], "score": d["score"]} for d in self.dets]
        # Detection ids are assigned by loadRes as (index in the results list) + 1.
        for i, d in enumerate(self.dets):
            d["id"] = i + 1
        return gt, results


def r2(x):
    return round(x, 2)


def build_edge_dataset():
    rng = random.Random(SEED)
    b = EdgeBuilder(rng)

    # --- crowd: detections inside a crowd box, and overlapping a crowd and a regular box ----
    img = b.image("crowd_basic")
    b.gt(img, PERSON, [100, 100, 300, 200], area=60000, iscrowd=1, mark="crowd_basic")  # first
    b.gt(img, PERSON, [150, 150, 60, 40], mark="crowd_basic_r1")       # regular, inside crowd
    b.gt(img, PERSON, [500, 300, 50, 50])                              # regular, outside
    b.det(img, PERSON, [152, 151, 58, 40], 0.95, mark="crowd_basic_d1")  # r1 (crowd IoU is 1)
    b.det(img, PERSON, [150, 150, 60, 40], 0.9, mark="crowd_basic_d2")   # r1 taken -> crowd
    b.det(img, PERSON, [300, 200, 40, 40], 0.85, mark="crowd_basic_d3")  # crowd only
    b.det(img, PERSON, [380, 280, 40, 40], 0.8)     # 400/1600 of it in the crowd: FP
    b.det(img, PERSON, [500, 300, 50, 50], 0.7)     # TP
    b.det(img, PERSON, [310.25, 120.5, 0, 30], 0.65)  # zero width inside the crowd: IoU 0, FP

    img = b.image("crowd_mixed")
    b.gt(img, PERSON, [0, 0, 400, 400], area=160000, iscrowd=1)
    b.gt(img, PERSON, [100, 100, 100, 100], mark="crowd_mixed_r")
    # IoU 0.6 exactly with the regular box, 1 with the crowd: TP for t <= 0.6, then matched to
    # the crowd (ignored) for t >= 0.65.
    b.det(img, PERSON, [100, 100, 100, 60], 0.77, mark="crowd_mixed_d")
    b.det(img, PERSON, [0, 0, 400, 800], 0.33, mark="crowd_half")  # crowd IoU exactly 0.5
    b.det(img, PERSON, [300, 300, 40, 40], 0.31)                   # crowd IoU 1
    b.det(img, PERSON, [390, 0, 40, 10], 0.29)    # crowd IoU 0.25: FP
    b.det(img, PERSON, [370, 200, 40, 40], 0.28)  # crowd IoU exactly 0.75 (30*40/1600)
    # crowd with explicit "ignore": 0 -> still ignored (ignore := iscrowd)
    b.gt(img, CAR, [420, 20, 150, 150], area=22500, iscrowd=1, extra={"ignore": 0},
         mark="crowd_ignore0")
    b.det(img, CAR, [430, 30, 60, 60], 0.66)      # inside that crowd
    b.det(img, CAR, [600, 400, 30, 30], 0.64)     # FP; this image-cat has no regular GT

    # --- images with GT but nothing else, without GT, etc. ---------------------------------
    for i in range(3):
        b.image("empty%d" % i, 320 + 16 * i, 240)
    img = b.image("gt_no_dets")
    b.gt(img, PERSON, [10.5, 20.25, 30, 40])
    b.gt(img, GTONLY, [100, 100, 80, 60])
    b.gt(img, BRUSH, [200, 100, 120.75, 150.5])
    for i in range(3):
        img = b.image("dets_no_gt%d" % i)
        b.det(img, PERSON, [r2(rng.uniform(0, 300)), r2(rng.uniform(0, 200)), 50, 60],
              r2(rng.uniform(0.05, 0.95)))
        b.det(img, CAR, [20, 30, 40, 50], TIE_SCORE)
        b.det(img, DETONLY, [r2(rng.uniform(0, 300)), r2(rng.uniform(0, 200)), 70.5, 20.25],
              round(rng.uniform(0, 1), 3))
        b.det(img, DETONLY, [1, 2, 3, 4], TIE_SCORE)

    # --- tied scores within an image-category and across images ----------------------------
    img = b.image("ties_a")
    b.gt(img, CAR, [10, 10, 50, 50])
    b.det(img, CAR, [300, 300, 50, 50], TIE_SCORE, mark="tie_a_fp")   # FP first in file order
    b.det(img, CAR, [10, 10, 50, 50], TIE_SCORE, mark="tie_a_tp")
    img = b.image("ties_b")
    b.gt(img, CAR, [10, 10, 50, 50])
    b.gt(img, CAR, [200, 10, 50, 50])
    b.det(img, CAR, [10, 10, 50, 50], TIE_SCORE)     # TP
    b.det(img, CAR, [300, 300, 50, 50], TIE_SCORE)   # FP
    b.det(img, CAR, [11, 10, 50, 50], TIE_SCORE)     # duplicate of the first GT: FP
    b.det(img, CAR, [200, 10, 50, 50], TIE_SCORE)    # TP
    b.det(img, CAR, [200, 12, 50, 48], 0.9)          # higher score, takes the second GT

    # --- 130 detections of one category in one image ----------------------------------------
    img = b.image("dets130", 1000, 800)
    gts = []
    for i in range(10):
        x, y = 20 + (i % 5) * 90, 20 + (i // 5) * 120
        w, h = (40, 40) if i % 3 else (24, 20)
        gts.append(b.gt(img, TRAIN, [x, y, w, h]))
    top = [{"bbox": [600, 600, 60, 60], "score": 0.99}]                    # top-1 is an FP
    tps = [{"bbox": list(g["bbox"]), "score": round(0.9 - 0.01 * i, 2)} for i, g in enumerate(gts[:8])]
    fps = [{"bbox": [r2(rng.uniform(520, 900)), r2(rng.uniform(0, 700)),
                     r2(rng.uniform(5, 90)), r2(rng.uniform(5, 90))],
            "score": round(rng.uniform(0.3, 0.8), 3)} for _ in range(84)]
    tied = []
    for i in range(20):
        if i == 4:
            tied.append({"bbox": list(gts[8]["bbox"]), "score": 0.25, "mark": "cap_kept_tp"})
        elif i == 15:
            tied.append({"bbox": list(gts[9]["bbox"]), "score": 0.25, "mark": "cap_dropped_tp"})
        else:
            tied.append({"bbox": [r2(rng.uniform(520, 900)), r2(rng.uniform(0, 700)), 30, 30],
                         "score": 0.25})
    low = [{"bbox": [r2(rng.uniform(520, 900)), r2(rng.uniform(0, 700)), 20, 25],
            "score": round(rng.uniform(0.01, 0.2), 3)} for _ in range(17)]
    allds = top + tps + fps + tied + low
    assert len(allds) == 130
    rng.shuffle(allds)
    # keep the tied run in its designed relative order wherever the shuffle put it
    slots = [i for i, d in enumerate(allds) if d["score"] == 0.25]
    assert len(slots) == 20
    for slot, d in zip(slots, tied):
        allds[slot] = d
    for d in allds:
        b.det(img, TRAIN, d["bbox"], d["score"], mark=d.get("mark"))
    b.marks["img130"] = img

    # --- 120 detections over three categories in one image ----------------------------------
    img = b.image("dets120", 1000, 800)
    b.marks["img120"] = img
    for cat, n in ((PERSON, 45), (CAR, 40), (BRUSH, 35)):
        cgts = []
        for i in range(4):
            bb = [r2(rng.uniform(0, 800)), r2(rng.uniform(0, 600)),
                  r2(rng.uniform(10, 150)), r2(rng.uniform(10, 150))]
            cgts.append(b.gt(img, cat, bb))
        for i in range(n):
            if i < 3:
                g = cgts[i]["bbox"]
                bb = [r2(g[0] + rng.uniform(-3, 3)), r2(g[1] + rng.uniform(-3, 3)), g[2], g[3]]
            else:
                bb = [r2(rng.uniform(0, 900)), r2(rng.uniform(0, 700)),
                      r2(rng.uniform(5, 120)), r2(rng.uniform(5, 120))]
            b.det(img, cat, bb, round(rng.uniform(0.05, 0.99), 3))

    # --- area field vs w*h, and the range bounds -------------------------------------------
    img = b.image("areas", 1000, 800)
    b.gt(img, BRUSH, [10, 10, 40, 40], area=900, mark="area_small_but_1600")  # small, not medium
    b.gt(img, BRUSH, [100, 10, 10, 10], area=1024)          # small and medium
    b.gt(img, BRUSH, [200, 10, 100, 100], area=9216)        # medium and large
    b.gt(img, BRUSH, [400, 10, 20, 20], area=20000, mark="area_large_but_400")
    b.gt(img, BRUSH, [10, 200, 32, 32], area=1024.0)
    b.gt(img, BRUSH, [100, 200, 96, 96], area=9216.0)
    b.gt(img, BRUSH, [300, 200, 31.5, 32.6], area=1026.9)
    b.gt(img, BRUSH, [500, 200, 33, 31], area=1023)         # w*h 1023, area 1023
    b.det(img, BRUSH, [10, 10, 40, 40], 0.81)
    b.det(img, BRUSH, [100, 10, 10, 10], 0.72)
    b.det(img, BRUSH, [201, 10, 100, 100], 0.93)
    b.det(img, BRUSH, [400, 10, 20, 20], 0.68, mark="area_det_400")
    b.det(img, BRUSH, [11, 201, 32, 32], 0.55)
    b.det(img, BRUSH, [100, 200, 96, 96], 0.44)
    b.det(img, BRUSH, [300, 200, 31.5, 32.6], 0.61)
    b.det(img, BRUSH, [500, 200, 33, 31], 0.12)
    # unmatched detections with areas at and around the bounds
    b.det(img, BRUSH, [700, 10, 32, 32], 0.71)      # 1024: small and medium
    b.det(img, BRUSH, [700, 100, 96, 96], 0.69)     # 9216: medium and large
    b.det(img, BRUSH, [800, 10, 25, 41], 0.67)      # 1025: medium only
    b.det(img, BRUSH, [850, 300, 95, 97], 0.66)     # 9215: medium only
    b.det(img, BRUSH, [600, 600, 0.0, 12], 0.65)    # area 0: small
    b.det(img, BRUSH, [650, 650, 96.5, 96.5], 0.64)  # 9312.25: large

    # --- IoU exactly at the thresholds -------------------------------------------------------
    img = b.image("exact_iou", 1200, 1000)
    for i, hgt in enumerate(range(50, 100, 5)):
        x, y = 20 + (i % 4) * 250, 20 + (i // 4) * 250
        b.gt(img, CAR, [x, y, 100, 100])
        # IoU = hgt/100 exactly as a double; hgt == 50 -> 0.5, 75 -> 0.75, 90 -> 0.9 (> the
        # 0.8999999999999999 threshold numpy's linspace gives)
        b.det(img, CAR, [x, y, 100, hgt], round(0.2 + 0.05 * i, 2), mark="exact_iou_%d" % hgt)
    img = b.image("exact_iou_shift", 800, 600)
    b.gt(img, CAR, [10, 10, 30, 30])
    b.det(img, CAR, [20, 10, 30, 30], 0.58, mark="shift_iou_05")    # 600/1200 = 0.5
    b.gt(img, CAR, [100, 100, 70, 10])
    b.det(img, CAR, [110, 100, 70, 10], 0.57, mark="shift_iou_075")  # 600/800 = 0.75
    b.gt(img, CAR, [300.5, 200.25, 50, 40])
    b.det(img, CAR, [300.5, 200.25, 25, 40], 0.56, mark="frac_iou_05")  # 1000/2000 = 0.5
    b.gt(img, CAR, [400, 400, 20, 20])
    b.det(img, CAR, [400, 400, 20, 19.99], 0.54)  # just below 1

    # --- two GT with the same IoU to one detection -------------------------------------------
    img = b.image("equal_iou")
    b.gt(img, BRUSH, [100, 100, 100, 100], ann_id=5000, mark="eq_g1")   # first in file
    b.gt(img, BRUSH, [140, 100, 100, 100], ann_id=4999, mark="eq_g2")   # second, smaller id
    b.det(img, BRUSH, [120, 100, 100, 100], 0.9, mark="eq_dA")   # IoU 2/3 with both
    b.det(img, BRUSH, [100, 100, 100, 100], 0.8, mark="eq_dB")   # IoU 1 with g1, 3/7 with g2

    # --- "ignore": 1 with iscrowd 0, and GT id 0 ---------------------------------------------
    img = b.image("ignore_flag_and_id0")
    b.gt(img, PERSON, [50, 50, 80, 80], extra={"ignore": 1}, mark="ignore1_gt")
    b.det(img, PERSON, [52, 50, 80, 80], 0.74, mark="ignore1_det")
    b.gt(img, CAR, [60, 60, 50, 50], ann_id=0, mark="id0_gt")
    b.gt(img, CAR, [300, 60, 50, 50])
    b.det(img, CAR, [60, 60, 50, 50], 0.97, mark="id0_det")        # matched to id 0
    b.det(img, CAR, [61, 61, 50, 50], TIE_SCORE, mark="id0_det2")  # GT already taken
    b.det(img, CAR, [300, 60, 50, 50], 0.96)

    # --- zero-width / zero-height boxes ------------------------------------------------------
    img = b.image("zero_size")
    b.gt(img, TRAIN, [100, 100, 0, 50], area=0, mark="zero_w_gt")
    b.gt(img, TRAIN, [200, 100, 50, 0], area=25)
    b.gt(img, TRAIN, [300, 300, 60, 60])
    b.det(img, TRAIN, [100, 100, 0, 50], 0.9)      # identical to the zero-width GT: IoU 0
    b.det(img, TRAIN, [200, 100, 50, 0], 0.8)
    b.det(img, TRAIN, [300, 300, 60, 60], 0.7)
    b.det(img, TRAIN, [310, 310, 40, 0], 0.6)

    # a second GT-only-category image
    img = b.image("gtonly")
    b.gt(img, GTONLY, [30, 40, 200, 150])
    b.gt(img, TRAIN, [300, 40, 100, 150])
    b.det(img, TRAIN, [305, 40, 100, 150], 0.88)
    b.det(img, DETONLY, [30, 40, 200, 150], 0.88)

    # --- random filler ----------------------------------------------------------------------
    tie_pool = [0.5, 0.25, 0.125, 0.75]
    for n in range(34):
        w_img, h_img = rng.choice([(640, 480), (480, 640), (800, 600)])
        img = b.image("rand%02d" % n, w_img, h_img)
        for _ in range(rng.randint(0, 5)):
            cat = rng.choice([PERSON, CAR, TRAIN, BRUSH])
            w = rng.uniform(2, 250)
            h = rng.uniform(2, 250)
            x = rng.uniform(0, w_img - w)
            y = rng.uniform(0, h_img - h)
            full = rng.random() < 0.3
            bb = [x, y, w, h] if full else [r2(x), r2(y), r2(w), r2(h)]
            crowd = 1 if rng.random() < 0.06 else 0
            area = bb[2] * bb[3]
            if rng.random() < 0.3:
                area = r2(area * rng.uniform(0.4, 1.3))
            g = b.gt(img, cat, bb, area=area, iscrowd=crowd)
            if rng.random() < 0.8:
                jit = lambda v, s: v + rng.uniform(-s, s)
                sx, sy = 0.15 * bb[2], 0.15 * bb[3]
                db = [jit(bb[0], sx), jit(bb[1], sy), max(0.5, jit(bb[2], sx)),
                      max(0.5, jit(bb[3], sy))]
                if not full:
                    db = [r2(v) for v in db]
                score = rng.choice(tie_pool) if rng.random() < 0.25 else round(rng.random(), 3)
                b.det(img, cat, db, score)
        for _ in range(rng.randint(0, 4)):
            cat = rng.choice([PERSON, CAR, TRAIN, BRUSH, DETONLY])
            w = r2(rng.uniform(3, 200))
            h = r2(rng.uniform(3, 200))
            bb = [r2(rng.uniform(0, w_img - w)), r2(rng.uniform(0, h_img - h)), w, h]
            score = rng.choice(tie_pool) if rng.random() < 0.25 else round(rng.random(), 3)
            b.det(img, cat, bb, score)

    gt, results = b.build()
    return gt, results, b.marks


# ------------------------------------------------------------------------------------------
# JSON writing: structure indented, number lists on one line, floats as repr (round-trip).

def _scalar(v):
    if isinstance(v, float):
        assert math.isfinite(v), v
    return json.dumps(v)


def _dump(v, ind, level):
    pad = " " * (ind * level)
    pad1 = " " * (ind * (level + 1))
    if isinstance(v, dict):
        if not v:
            return "{}"
        if all(not isinstance(x, (dict, list)) or (isinstance(x, list) and
               all(not isinstance(y, (dict, list)) for y in x)) for x in v.values()) and level >= 2:
            return "{" + ", ".join(json.dumps(k) + ": " + _dump(x, ind, level + 1)
                                   for k, x in v.items()) + "}"
        items = [pad1 + json.dumps(k) + ": " + _dump(x, ind, level + 1) for k, x in v.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(v, list):
        if all(not isinstance(x, (dict, list)) for x in v):
            if len(v) <= 24:
                return "[" + ", ".join(_scalar(x) for x in v) + "]"
            # long flat arrays: rows of 12 values (one [A, M] block of recall / precision)
            rows = [pad1 + ", ".join(_scalar(x) for x in v[i:i + 12]) for i in range(0, len(v), 12)]
            return "[\n" + ",\n".join(rows) + "\n" + pad + "]"
        items = [pad1 + _dump(x, ind, level + 1) for x in v]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return _scalar(v)


def write_json(path, obj):
    text = _dump(obj, 1, 0) + "\n"
    assert json.loads(text) == obj
    path.write_text(text)


def write_dataset_json(path, obj):
    """One image / annotation / category / detection per line."""
    if isinstance(obj, list):
        text = "[\n" + ",\n".join(json.dumps(x) for x in obj) + "\n]\n"
    else:
        parts = []
        for k, v in obj.items():
            if isinstance(v, list):
                parts.append(json.dumps(k) + ": [\n" + ",\n".join(json.dumps(x) for x in v) + "\n]")
            else:
                parts.append(json.dumps(k) + ": " + json.dumps(v))
        text = "{\n" + ",\n".join(parts) + "\n}\n"
    assert json.loads(text) == obj
    path.write_text(text)


# ------------------------------------------------------------------------------------------

def run_eval(gt_file, results_file):
    """Returns (COCOeval after evaluate/accumulate/summarize, captured summary text)."""
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):
        gt = COCO(str(gt_file))
        if results_file is None:
            dt = COCO()
            dt.dataset = {"images": gt.dataset["images"],
                          "categories": copy.deepcopy(gt.dataset["categories"]),
                          "annotations": []}
            dt.createIndex()
        else:
            dt = gt.loadRes(str(results_file))
        E = COCOeval(gt, dt, "bbox")
        E.evaluate()
        E.accumulate()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        E.summarize()
    summary = printed.getvalue()
    lines = summary.splitlines()
    assert len(lines) == 12 and all(l.startswith(" Average ") for l in lines), summary
    return E, summary


def mean_valid(s):
    v = s[s > -1]
    return -1.0 if v.size == 0 else float(np.mean(v))


def case_record(E, summary, gt_name, res_name):
    p = E.params
    prec = E.eval["precision"]
    rec = E.eval["recall"]
    T, R, K, A, M = prec.shape
    assert list(prec.shape) == E.eval["counts"]
    # precision[t, :, k, a, m].mean(), one 1-D slice at a time (numpy pairwise summation over
    # the 101 values, then / 101)
    pmean = np.empty((T, K, A, M))
    for t in range(T):
        for k in range(K):
            for a in range(A):
                for m in range(M):
                    pmean[t, k, a, m] = prec[t, :, k, a, m].mean()
    per_cat = []
    for k, cid in enumerate(p.catIds):
        per_cat.append({"category_id": int(cid),
                        "ap": mean_valid(prec[:, :, k, 0, 2]),
                        "ap50": mean_valid(prec[0, :, k, 0, 2]),
                        "ap75": mean_valid(prec[5, :, k, 0, 2])})
    return {
        "gt": gt_name,
        "results": res_name,
        "stats": [float(x) for x in E.stats],
        "summary": summary,
        "category_ids": [int(c) for c in p.catIds],
        "image_count": len(p.imgIds),
        "shape_precision": [int(x) for x in prec.shape],
        "shape_recall": [int(x) for x in rec.shape],
        "recall": [float(x) for x in rec.ravel(order="C")],
        "precision_mean_over_recall": [float(x) for x in pmean.ravel(order="C")],
        "precision_sum": float(prec.sum()),
        "scores_sum": float(E.eval["scores"].sum()),
        "per_category": per_cat,
    }


def eval_img(E, img_id, cat_id, area_idx=0):
    """evalImgs entry for (image, category, area range index), maxDet 100."""
    p = E.params
    k = list(p.catIds).index(cat_id)
    i = list(p.imgIds).index(img_id)
    I, A = len(p.imgIds), len(p.areaRng)
    return E.evalImgs[k * A * I + area_idx * I + i]


def check_edge(E, gt, results, marks):
    """Assert that the edge dataset exercises what it is meant to; print a few facts."""
    p = E.params
    iou_thrs = [float(x) for x in p.iouThrs]
    facts = []
    anns = {a["id"]: a for a in gt["annotations"]}
    crowd_ids = {a["id"] for a in gt["annotations"] if a["iscrowd"]}

    def find(d_mark):
        d = marks[d_mark]
        e = eval_img(E, d["img"]["id"], d["category_id"])
        j = e["dtIds"].index(d["id"])
        return e, j

    # crowd: d1 (IoU 0.92 with r1) takes the regular box although its crowd IoU (1.0) is
    # higher, up to t = 0.9; at t = 0.95 it falls through to the crowd and d2 (IoU 1 with r1)
    # takes r1. d3 matches the crowd only and is ignored everywhere.
    crowd, r1 = marks["crowd_basic"]["id"], marks["crowd_basic_r1"]["id"]
    e, j = find("crowd_basic_d1")
    assert e["dtMatches"][:, j].tolist() == [r1] * 9 + [crowd]
    assert e["dtIgnore"][:, j].tolist() == [False] * 9 + [True]
    e, j = find("crowd_basic_d2")
    assert e["dtMatches"][:, j].tolist() == [crowd] * 9 + [r1]
    assert e["dtIgnore"][:, j].tolist() == [True] * 9 + [False]
    e, j = find("crowd_basic_d3")
    assert all(e["dtMatches"][:, j] == crowd) and e["dtIgnore"][:, j].all()
    facts.append("crowd: a det with IoU 0.92 to a regular box and 1.0 to a crowd matches the "
                 "regular box up to t=0.9 and the crowd (ignored) at t=0.95")
    n_crowd = sum(1 for e in E.evalImgs if e is not None and e["aRng"] == p.areaRng[0]
                  for t in range(len(iou_thrs)) for j in range(len(e["dtIds"]))
                  if e["dtMatches"][t, j] in crowd_ids)
    facts.append("crowd-matched (detection, threshold) pairs, area all: %d" % n_crowd)
    e, j = find("crowd_mixed_d")
    tp_thr = [iou_thrs[t] for t in range(10) if e["dtMatches"][t, j] == marks["crowd_mixed_r"]["id"]]
    assert tp_thr == iou_thrs[:3], tp_thr                     # IoU exactly 0.6: TP up to 0.6
    assert all(e["dtIgnore"][3:, j]) and all(e["dtMatches"][3:, j] != 0)
    facts.append("det with IoU 0.6 to a regular box inside a crowd: TP at %s, crowd-ignored above"
                 % tp_thr)
    e, j = find("crowd_half")
    assert e["dtMatches"][0, j] != 0 and all(e["dtMatches"][1:, j] == 0)
    e = eval_img(E, marks["crowd_ignore0"]["img"]["id"], CAR)
    assert e["gtIgnore"].tolist() == [1]

    # > 100 detections for one image-category: cut to 100; the tied run is cut in file order.
    img130 = marks["img130"]["id"]
    n130 = sum(1 for r in results if r["image_id"] == img130)
    e = eval_img(E, img130, TRAIN)
    assert n130 == 130 and len(e["dtIds"]) == 100
    assert marks["cap_kept_tp"]["id"] in e["dtIds"] and marks["cap_dropped_tp"]["id"] not in e["dtIds"]
    kept_tied = sum(1 for s in e["dtScores"] if s == 0.25)
    facts.append("image %d: 130 detections of category %d, 100 evaluated (%d of the 20 tied at "
                 "0.25 kept, in file order)" % (img130, TRAIN, kept_tied))
    img120 = marks["img120"]["id"]
    n120 = sum(1 for r in results if r["image_id"] == img120)
    kept120 = sum(len(eval_img(E, img120, c)["dtIds"]) for c in (PERSON, CAR, BRUSH))
    assert n120 == 120 and kept120 == 120
    facts.append("image %d: 120 detections over 3 categories, all 120 evaluated (the cap is per "
                 "image AND category)" % img120)

    # ties
    score_count = {}
    for r in results:
        score_count.setdefault((r["image_id"], r["category_id"], r["score"]), []).append(r)
    within = sum(1 for v in score_count.values() if len(v) > 1)
    across = {}
    for (iid, cid, s), v in score_count.items():
        across.setdefault((cid, s), set()).add(iid)
    across_n = sum(1 for v in across.values() if len(v) > 1)
    assert within >= 3 and across_n >= 3
    facts.append("tied scores: %d (image, category, score) groups with >1 detection; %d "
                 "(category, score) values shared by >1 image" % (within, across_n))

    # equal IoU: the later GT in file order wins
    e, j = find("eq_dA")
    assert e["dtMatches"][0, j] == marks["eq_g2"]["id"] == 4999
    e, j = find("eq_dB")
    assert e["dtMatches"][0, j] == marks["eq_g1"]["id"]
    facts.append("equal IoU 2/3 to GT 5000 (first in file) and 4999 (second): matched to 4999")

    # ignore: 1 with iscrowd 0 is an ordinary GT
    e, j = find("ignore1_det")
    assert e["dtMatches"][0, j] == marks["ignore1_gt"]["id"] and not e["dtIgnore"][0, j]
    assert anns[marks["ignore1_gt"]["id"]]["ignore"] == 1
    # GT id 0: matched, but recorded as 0 -> counted as FP; the GT is consumed
    e, j = find("id0_det")
    assert all(e["dtMatches"][:, j] == 0) and not e["dtIgnore"][:, j].any()
    gi = e["gtIds"].index(0)
    assert all(e["gtMatches"][:, gi] == marks["id0_det"]["id"])
    e, j = find("id0_det2")
    assert all(e["dtMatches"][:, j] == 0)
    facts.append("GT id 0: its detection (IoU 1) has dtMatches 0 -> false positive; the GT "
                 "records gtMatches %d and stays a miss" % marks["id0_det"]["id"])

    # exact IoU thresholds
    for hgt in range(50, 100, 5):
        e, j = find("exact_iou_%d" % hgt)
        matched = [t for t in range(10) if e["dtMatches"][t, j] != 0]
        assert matched == list(range(len(matched)))
        want = sum(1 for t in iou_thrs if t <= hgt / 100)
        assert len(matched) == want, (hgt, matched)
    for m, n in (("shift_iou_05", 1), ("shift_iou_075", 6), ("frac_iou_05", 1)):
        e, j = find(m)
        assert [t for t in range(10) if e["dtMatches"][t, j] != 0] == list(range(n)), m
    facts.append("IoU exactly 0.5 / 0.75 boxes match at thresholds up to and including 0.5 / "
                 "0.75; IoU 0.9 matches at 0.8999999999999999 (iouThrs[8])")

    # area field vs w*h
    a_small = marks["area_small_but_1600"]["id"]
    e = eval_img(E, marks["area_small_but_1600"]["img"]["id"], BRUSH, 1)  # small
    assert e["gtIgnore"][e["gtIds"].index(a_small)] == 0
    e_med = eval_img(E, marks["area_small_but_1600"]["img"]["id"], BRUSH, 2)
    assert e_med["gtIgnore"][e_med["gtIds"].index(a_small)] == 1
    # the 20x20 box with area 20000 is large; its 400-px detection is ignored in 'small'
    d = marks["area_det_400"]
    e_s = eval_img(E, d["img"]["id"], BRUSH, 1)
    js = e_s["dtIds"].index(d["id"])
    assert e_s["dtIgnore"][0, js]
    e_l = eval_img(E, d["img"]["id"], BRUSH, 3)
    jl = e_l["dtIds"].index(d["id"])
    assert not e_l["dtIgnore"][0, jl] and e_l["dtMatches"][0, jl] == marks["area_large_but_400"]["id"]

    # categories
    k13 = list(p.catIds).index(DETONLY)
    k55 = list(p.catIds).index(NEITHER)
    k5 = list(p.catIds).index(GTONLY)
    assert (E.eval["precision"][:, :, k13] == -1).all() and (E.eval["precision"][:, :, k55] == -1).all()
    assert (E.eval["recall"][:, k5, 0] == 0).all()
    facts.append("category 13 (dets, no GT) and 55 (nothing): precision/recall -1; category 5 "
                 "(GT, no dets): recall 0, precision 0")

    # images
    img_ids_gt = {a["image_id"] for a in gt["annotations"]}
    img_ids_dt = {r["image_id"] for r in results}
    all_imgs = {im["id"] for im in gt["images"]}
    empty = all_imgs - img_ids_gt - img_ids_dt
    dt_only = img_ids_dt - img_ids_gt
    gt_only = img_ids_gt - img_ids_dt
    assert len(empty) >= 3 and len(dt_only) >= 3 and len(gt_only) >= 1
    zero = sum(1 for a in gt["annotations"] if a["bbox"][2] == 0 or a["bbox"][3] == 0)
    zero_d = sum(1 for r in results if r["bbox"][2] == 0 or r["bbox"][3] == 0)
    assert zero >= 2 and zero_d >= 3
    facts.append("%d images: %d without GT or detections, %d with detections only, %d with GT "
                 "only; %d GT and %d detections with zero width or height"
                 % (len(all_imgs), len(empty), len(dt_only), len(gt_only), zero, zero_d))
    facts.append("%d GT annotations (%d crowd), %d detections"
                 % (len(gt["annotations"]), len(crowd_ids), len(results)))
    return facts


def main():
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    gt, results, marks = build_edge_dataset()
    write_dataset_json(OUT_DIR / "edge_gt.json", gt)
    write_dataset_json(OUT_DIR / "edge_results.json", results)

    cases = {}
    evals = {}
    for name, gt_name, res_name in (
            ("val2014_100", "instances_val2014_100.json", "instances_val2014_fakebbox100_results.json"),
            ("edge", "edge_gt.json", "edge_results.json"),
            ("edge_empty", "edge_gt.json", None)):
        E, summary = run_eval(OUT_DIR / gt_name, None if res_name is None else OUT_DIR / res_name)
        cases[name] = case_record(E, summary, gt_name, res_name)
        evals[name] = E

    stats = cases["val2014_100"]["stats"]
    worst = max(abs(a - b) for a, b in zip(stats, PUBLISHED_VAL2014_100))
    assert worst <= 1e-12, (stats, PUBLISHED_VAL2014_100)
    print("val2014_100: the 12 stats match the published pycocotools numbers (max |diff| %.3g)"
          % worst)

    facts = check_edge(evals["edge"], gt, results, marks)

    expected = {
        "pycocotools_version": importlib.metadata.version("pycocotools"),
        "numpy_version": np.__version__,
        "cases": cases,
    }
    write_json(OUT_DIR / "expected.json", expected)

    for name, c in cases.items():
        print("%s: %d images, categories %s" % (name, c["image_count"], c["category_ids"]))
        print(c["summary"], end="")
    print("edge dataset:")
    for f in facts:
        print("  " + f)
    for f in ("edge_gt.json", "edge_results.json", "expected.json"):
        print("wrote crates/retina-coco/tests/coco/%s (%d bytes)" % (f, (OUT_DIR / f).stat().st_size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
