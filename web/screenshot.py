#!/usr/bin/env python3
"""Loads the web page in headless Chromium through chromedriver (WebDriver over HTTP, standard
library only), waits until the page has run the detector on its first synthetic scene, checks
that boxes were drawn, and saves a screenshot.

    python3 web/screenshot.py [--out docs/web-page.png] [--timeout 180] [--runs N] [--console]
                              [--bad-files] [--faces] [--torchvision DIR [--torchvision-expect R.json]]
                              [--nms N,N,...] [--ort]

With --bad-files it then picks, through the page's file input, an empty file, a text file, a
truncated PNG, a PNG of 20,000 x 20,000 pixels and a file over the page's size limit, and checks
that each gives a message on the page (not a frozen tab), then a good image, which must be
detected.

With --ort it then opens web/ort.html, the browser peer: the same small RetinaNet exported to
ONNX (scripts/export_onnx.py) on onnxruntime-web's WebGPU execution provider in the same browser,
forward pass only (it has no NMS or TopK on WebGPU), its outputs checked against PyTorch's; and
prints its time per pass beside the page's time per image. A peer that cannot run (no
onnxruntime-web, no WebGPU, wrong outputs) is reported as skipped with its reason.

With --nms 5000,20000 it then times greedy NMS (IoU 0.5) of `retina bench nms`'s boxes on
WebGPU in the page (a device of its own, from the detector's adapter) and on the CPU twin in the page's WebAssembly, each case class-agnostic and
over 80 classes, after checking that both keep the same boxes; one row per case.

Needs web/pkg/ (web/build.sh), `chromium` and `chromedriver` (Debian: chromium, chromium-driver).
Exits non-zero when the page reports an error, draws no box, or times out."""

import argparse
import base64
import functools
import http.server
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zlib

WEB = os.path.dirname(os.path.abspath(__file__))
FLAGS = ["--headless=new", "--no-sandbox", "--enable-unsafe-webgpu", "--window-size=820,880"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(base, method, path, body=None, timeout=120):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())["value"]


def png(width, height, rows=None):
    """A greyscale PNG; `rows(y)` gives row y's bytes (zeros when None), compressed as they
    come so that a 20,000 x 20,000 image never exists uncompressed here."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    z = zlib.compressobj(9)
    blank = bytes(width + 1)
    idat = b"".join(z.compress(blank if rows is None else b"\0" + rows(y)) for y in range(height))
    idat += z.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def bad_files(folder):
    """(file name, words its message must contain) for each file the page must refuse."""
    good = png(64, 48, lambda y: bytes((x * 4 + y * 2) % 256 for x in range(64)))
    files = {
        "empty.png": (b"", "is empty"),
        "notes.txt": (b"not an image\n" * 20, "could not be decoded"),
        "truncated.png": (good[: len(good) // 2], "could not be decoded"),
        "huge.png": (png(20000, 20000), "20000 x 20000 pixels"),
        "oversized.png": (good + bytes(65 << 20), "the page reads images up to 64 MB"),
    }
    out = []
    for name, (data, words) in files.items():
        path = os.path.join(folder, name)
        with open(path, "wb") as f:
            f.write(data)
        out.append((path, words))
    return out


def check_faces(base, s, timeout, runs):
    """Switches the page to the face model; exits non-zero unless the faces it finds on the
    sample photo are the reference pipeline's (boxes and landmarks within 0.05 px)."""
    call(base, "POST", s + "/execute/sync", {
        "script": "const m = document.getElementById('model'); m.value = 'faces';"
                  " m.dispatchEvent(new Event('change'));", "args": []})
    deadline = time.time() + timeout
    state = {}
    while time.time() < deadline:
        state = call(base, "POST", s + "/execute/sync", {
            "script": "return Object.assign({}, document.body.dataset,"
                      " {status: document.getElementById('status').textContent});", "args": []})
        if int(state.get("runs", "0")) > runs or "error" in state:
            break
        time.sleep(0.5)
    print(state.get("status", "(no status)"))
    if "error" in state:
        sys.exit(f"the face model failed: {state['error']}")
    if "faceValues" not in state:
        sys.exit(f"the page found no faces within {timeout} s")
    got = [float(v) for v in state["faceValues"].split()]
    golden = os.path.join(WEB, "..", "crates", "retina-wgpu", "tests", "golden", "retinaface.json")
    with open(golden) as f:
        cases = json.load(f)["cases"]
    want = next(c for c in cases if c["photo"] == "photos/astronaut.png" and c["crop"] == [0, 0, 512, 512]
                and c["score_threshold"] == 0.9)["faces"]
    if len(got) != 15 * len(want):
        sys.exit(f"the page found {len(got) // 15} faces, the reference {len(want)}")
    for i, face in enumerate(want):
        x, y, w, h, score = face[:5]
        expect = [x, y, x + w, y + h, score] + face[5:]
        page = got[15 * i:15 * (i + 1)]
        worst = max(abs(a - b) for a, b in zip(page, expect))
        print(f"face {i}: page {page[:5]}, reference {[round(v, 2) for v in expect[:5]]}, largest difference {worst:.3f}")
        # The page rounds to 0.01 px.
        if worst > 0.05:
            sys.exit(f"face {i} differs from the reference by {worst:.3f} px")


def check_torchvision(base, s, timeout, runs, expect):
    """Switches the page to a torchvision model (the folder served as web/torchvision/), presses
    Load and waits for its detections on the sample photo; with `expect` (the results.json of
    `retina detect --model DIR faces/sample.png`) they must be the same detections (labels
    equal, boxes within 0.01 px and scores within 1e-3 as the page rounds them)."""
    call(base, "POST", s + "/execute/sync", {
        "script": "const m = document.getElementById('model'); m.value = 'torchvision';"
                  " m.dispatchEvent(new Event('change')); document.getElementById('tvload').click();",
        "args": []})
    deadline = time.time() + timeout
    state = {}
    while time.time() < deadline:
        state = call(base, "POST", s + "/execute/sync", {
            "script": "return Object.assign({}, document.body.dataset,"
                      " {status: document.getElementById('status').textContent});", "args": []})
        if int(state.get("runs", "0")) > runs or "error" in state:
            break
        time.sleep(1)
    print(state.get("status", "(no status)"))
    if "error" in state:
        sys.exit(f"the torchvision model failed: {state['error']}")
    if "tvValues" not in state:
        sys.exit(f"the page gave no torchvision detections within {timeout} s")
    got = [float(v) for v in state["tvValues"].split()]
    if expect:
        with open(expect) as f:
            want = [r for r in json.load(f) if r["image_id"] == 1]
        if len(got) != 6 * len(want):
            sys.exit(f"the page found {len(got) // 6} detections, retina detect {len(want)}")
        worst = 0.0
        for i, r in enumerate(want):
            x, y, w, h = r["bbox"]
            page = got[6 * i:6 * i + 6]
            if int(page[5]) != r["category_id"] or abs(page[4] - r["score"]) > 1e-3:
                sys.exit(f"detection {i}: page {page}, retina detect {r}")
            worst = max([worst] + [abs(a - b) for a, b in zip(page[:4], [x, y, x + w, y + h])])
        print(f"{len(want)} detections equal to retina detect's (largest box difference {worst:.3f} px)")
        if worst > 0.01 + 1e-3:
            sys.exit(f"a box differs from retina detect's by {worst:.3f} px")


def run_ort_peer(base, s, http_port, timeout, runs, page_times):
    """Times the page's forward pass alone (`retinaForwardTimes`: input written, the network
    recorded, its raw outputs read back), then opens web/ort.html (onnxruntime-web on WebGPU, the
    same network, timed the same way) and prints both beside the page's per-image times, or why
    the peer was skipped."""
    call(base, "POST", s + "/timeouts", {"script": int(timeout * 1000)})
    forward = call(base, "POST", s + "/execute/async", {
        "script": "const done = arguments[arguments.length - 1];"
                  " window.retinaForwardTimes(arguments[0]).then(done, e => done(String(e)));",
        "args": [max(runs, 1)]})
    if isinstance(forward, str):
        sys.exit(f"the page's forward pass failed: {forward}")
    forward_ms = sorted(forward)[len(forward) // 2]
    if not os.path.exists(os.path.join(WEB, "ort", "dist", "VERSION")):
        subprocess.run([os.path.join(WEB, "ort_fetch.sh")], check=False)
    call(base, "POST", s + "/url", {"url": f"http://127.0.0.1:{http_port}/ort.html?runs={max(runs, 1)}"})
    deadline = time.time() + timeout
    state = {}
    while time.time() < deadline:
        state = call(base, "POST", s + "/execute/sync", {
            "script": "return Object.assign({}, document.body.dataset);", "args": []})
        if state.get("ortDone"):
            break
        time.sleep(0.5)
    page = sorted(page_times)[len(page_times) // 2] if page_times else None
    reason = state.get("ortSkipped") or ("" if state.get("ortDone") else f"no answer within {timeout} s")
    if not reason and float(state.get("ortWorst", "inf")) > 1e-3:
        reason = f"its outputs differ from PyTorch's by {state.get('ortWorst')}"
    print(f"{'runtime':<44} {'adapter':<28} {'ms':>8}")
    if page is not None:
        print(f"{'retina-wgpu page (whole detection)':<44} {state.get('ortAdapter', '')[:28]:<28} {page:>8.1f}")
    print(f"{'retina-wgpu (forward + readback)':<44} {state.get('ortAdapter', '')[:28]:<28} {forward_ms:>8.1f}")
    if reason:
        print(f"onnxruntime-web (WebGPU): skipped: {reason}")
        return
    ort_ms = float(state["ortMs"])
    name = f"onnxruntime-web {state.get('ortVersion', '')} (forward + readback)"
    print(f"{name:<44} {state.get('ortAdapter', '')[:28]:<28} {ort_ms:>8.1f}")
    print(f"(medians of {len(forward)}; onnxruntime-web's outputs within {float(state['ortWorst']):.1e} of "
          f"PyTorch's; the crate's forward times: {' '.join(f'{t:.1f}' for t in forward)}; onnxruntime-web's: "
          f"{state.get('ortTimes')})")
    print(f"forward pass: onnxruntime-web / retina-wgpu = {ort_ms / forward_ms:.2f} (above 1: the crate is faster)")


def run_nms(base, s, timeout, sizes, runs):
    """Times greedy NMS on WebGPU in the page (`retinaNmsTimes`: `retina bench nms`'s boxes, IoU
    0.5, class-agnostic and over 80 classes) beside the CPU twin in the page's WebAssembly, and
    prints one row per case in the form of `retina bench nms`'s table. The page checks the GPU's
    keep list against the CPU twin's before timing; a mismatch fails the run."""
    call(base, "POST", s + "/timeouts", {"script": int(timeout * 1000)})
    print(f"{'op':<22} {'boxes':>8} {'kept':>7} {'webgpu ms':>10} {'wasm cpu ms':>12} {'gpu/cpu':>8}  adapter")
    for n in sizes:
        for classes, op in ((0, "nms"), (80, "batched_nms[80]")):
            r = call(base, "POST", s + "/execute/async", {
                "script": "const done = arguments[arguments.length - 1];"
                          " window.retinaNmsTimes(arguments[0], arguments[1], arguments[2])"
                          ".then(done, e => done(String(e)));",
                "args": [n, classes, max(runs, 1)]}, timeout=timeout + 30)
            if isinstance(r, str):
                sys.exit(f"the page's NMS of {n} boxes failed: {r}")
            gpu = sorted(r["gpu"])[len(r["gpu"]) // 2]
            cpu = sorted(r["cpu"])[len(r["cpu"]) // 2]
            ratio = f"{cpu / gpu:>8.2f}" if gpu > 0 else f"{'n/a':>8}"
            print(f"{op:<22} {n:>8} {r['kept']:>7} {gpu:>10.1f} {cpu:>12.1f} {ratio}  {r['adapter']}")
    print(f"(medians of {max(runs, 1)} runs after an untimed one; gpu/cpu above 1: the GPU is faster)")


def check_bad_files(base, s, timeout, good_image):
    """Picks each bad file, then a good one; exits non-zero unless every bad file gave its
    message and the good one was detected afterwards."""
    field = call(base, "POST", s + "/element", {"using": "css selector", "value": "#file"})
    element = next(iter(field.values()))

    def pick(path, n):
        call(base, "POST", s + f"/element/{element}/value", {"text": path})
        deadline = time.time() + timeout
        while time.time() < deadline:
            state = call(base, "POST", s + "/execute/sync", {
                "script": "return Object.assign({}, document.body.dataset);", "args": []})
            if int(state.get("picks", "0")) >= n:
                return state
            time.sleep(0.2)
        sys.exit(f"the page did not answer picking {os.path.basename(path)} within {timeout} s")

    with tempfile.TemporaryDirectory() as folder:
        cases = bad_files(folder)
        for n, (path, words) in enumerate(cases, start=1):
            state = pick(path, n)
            message = state.get("error", "")
            print(f"picked {os.path.basename(path)}: {message or '(no message)'}")
            if words not in message:
                sys.exit(f"picking {os.path.basename(path)} should say '{words}', said '{message}'")
        runs = int(state.get("runs", "0"))
        state = pick(good_image, len(cases) + 1)
        print(f"picked {os.path.basename(good_image)}: {state.get('boxes')} boxes, error: {state.get('error')}")
        if "error" in state or int(state.get("runs", "0")) != runs + 1:
            sys.exit("the good image after the bad ones was not detected")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(WEB, "..", "docs", "web-page.png"))
    ap.add_argument("--timeout", type=float, default=180)
    ap.add_argument("--console", action="store_true", help="print the page's console messages")
    ap.add_argument("--runs", type=int, default=1, help="scenes to time after the first (the picture is the last)")
    ap.add_argument("--faces", action="store_true",
                    help="then run the face model on the sample photo and check its faces")
    ap.add_argument("--torchvision", metavar="DIR",
                    help="then load the torchvision model folder DIR (served as web/torchvision/) and run it on the sample photo")
    ap.add_argument("--torchvision-expect", metavar="RESULTS.json",
                    help="with --torchvision: retina detect's results.json on web/faces/sample.png, to compare with")
    ap.add_argument("--ort", action="store_true",
                    help="then run the browser peer (web/ort.html: onnxruntime-web on WebGPU) and print both times")
    ap.add_argument("--nms", metavar="N,N,...",
                    help="then time greedy NMS of N boxes on WebGPU in the page and the CPU twin (e.g. 5000,20000)")
    ap.add_argument("--bad-files", action="store_true",
                    help="then pick bad files and a good one through the file input")
    args = ap.parse_args()
    if not os.path.exists(os.path.join(WEB, "pkg", "retina_web.js")):
        sys.exit("web/pkg/ is missing: run web/build.sh first")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=WEB)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = free_port()
    driver = subprocess.Popen([os.environ.get("CHROMEDRIVER", "chromedriver"), f"--port={port}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                call(base, "GET", "/status")
                break
            except OSError:
                time.sleep(0.1)
        caps = {"capabilities": {"alwaysMatch": {"goog:chromeOptions": {"args": FLAGS},
                                                 "goog:loggingPrefs": {"browser": "ALL"}}}}
        session = call(base, "POST", "/session", caps)["sessionId"]
        s = f"/session/{session}"
        try:
            call(base, "POST", s + "/url", {"url": f"http://127.0.0.1:{server.server_port}/index.html"})
            deadline = time.time() + args.timeout
            state = {}

            def wait_for_run(n):
                nonlocal state
                while time.time() < deadline:
                    state = call(base, "POST", s + "/execute/sync", {
                        "script": "return Object.assign({}, document.body.dataset,"
                                  " {status: document.getElementById('status').textContent});",
                        "args": []})
                    if int(state.get("runs", "0")) >= n or "error" in state:
                        return
                    time.sleep(0.5)

            # The first scene runs as the page loads (and warms the device up); the picture and
            # the time are those of the second, as a user's next click would give.
            wait_for_run(1)
            times = []
            for n in range(2, 2 + args.runs):
                if "runs" not in state or "error" in state:
                    break
                call(base, "POST", s + "/execute/sync",
                     {"script": "document.getElementById('scene').click();", "args": []})
                wait_for_run(n)
                if int(state.get("runs", "0")) >= n:
                    times.append(float(state["ms"]))
            if times:
                print(f"time per image over {len(times)} scenes after the first: median "
                      f"{sorted(times)[len(times) // 2]:.1f} ms (all: {', '.join(f'{t:.0f}' for t in times)})")
            print(state.get("status", "(no status)"))
            print("best scores:", state.get("best"))
            if args.console:
                for entry in call(base, "POST", s + "/se/log", {"type": "browser"}):
                    print("console:", entry.get("level"), entry.get("message", "")[:2000])
            if "error" in state:
                sys.exit(f"the page failed: {state['error']}")
            if int(state.get("runs", "0")) < 1 + args.runs:
                sys.exit(f"the page did not finish {1 + args.runs} detections within {args.timeout} s")
            if args.faces:
                check_faces(base, s, args.timeout, int(state.get("runs", "0")))
            if args.torchvision:
                link = os.path.join(WEB, "torchvision")
                if os.path.islink(link):
                    os.remove(link)
                os.symlink(os.path.abspath(args.torchvision), link)
                try:
                    check_torchvision(base, s, args.timeout, int(call(base, "POST", s + "/execute/sync", {
                        "script": "return document.body.dataset.runs || '0';", "args": []})),
                        args.torchvision_expect)
                finally:
                    os.remove(link)
            png = base64.b64decode(call(base, "GET", s + "/screenshot"))
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            with open(args.out, "wb") as f:
                f.write(png)
            print(f"saved {args.out} ({len(png)} bytes); {state['boxes']} boxes drawn in {state.get('ms')} ms")
            if int(state.get("boxes", "0")) < 1:
                sys.exit("no box was drawn")
            if args.bad_files:
                check_bad_files(base, s, args.timeout,
                                os.path.abspath(os.path.join(WEB, "..", "docs", "demo-detections.png")))
            if args.nms:
                run_nms(base, s, args.timeout, [int(v) for v in args.nms.split(",")], args.runs)
            if args.ort:
                run_ort_peer(base, s, server.server_port, args.timeout, args.runs, times)
        finally:
            call(base, "DELETE", s)
    finally:
        driver.terminate()
        server.shutdown()


if __name__ == "__main__":
    main()
