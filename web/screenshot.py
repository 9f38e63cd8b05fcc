#!/usr/bin/env python3
"""Loads the web page in headless Chromium through chromedriver (WebDriver over HTTP, standard
library only), waits until the page has run the detector on its first synthetic scene, checks
that boxes were drawn, and saves a screenshot.

    python3 web/screenshot.py [--out docs/web-page.png] [--timeout 180] [--runs N] [--console]

Needs web/pkg/ (web/build.sh), `chromium` and `chromedriver` (Debian: chromium, chromium-driver).
Exits non-zero when the page reports an error, draws no box, or times out."""

import argparse
import base64
import functools
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

WEB = os.path.dirname(os.path.abspath(__file__))
FLAGS = ["--headless=new", "--no-sandbox", "--enable-unsafe-webgpu", "--window-size=820,880"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(base, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())["value"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(WEB, "..", "docs", "web-page.png"))
    ap.add_argument("--timeout", type=float, default=180)
    ap.add_argument("--console", action="store_true", help="print the page's console messages")
    ap.add_argument("--runs", type=int, default=1, help="scenes to time after the first (the picture is the last)")
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
            png = base64.b64decode(call(base, "GET", s + "/screenshot"))
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            with open(args.out, "wb") as f:
                f.write(png)
            print(f"saved {args.out} ({len(png)} bytes); {state['boxes']} boxes drawn in {state.get('ms')} ms")
            if int(state["boxes"]) < 1:
                sys.exit("no box was drawn")
        finally:
            call(base, "DELETE", s)
    finally:
        driver.terminate()
        server.shutdown()


if __name__ == "__main__":
    main()
