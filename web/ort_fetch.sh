#!/usr/bin/env bash
# Fetches onnxruntime-web (MIT, from the npm registry) into web/ort/dist/ for the browser peer,
# web/ort.html: the same small RetinaNet as the page (web/ort/model.onnx, made by
# scripts/export_onnx.py) on onnxruntime-web's WebGPU execution provider. Not committed
# (~140 MB); `web/screenshot.py --ort` runs this when it is missing.
set -euo pipefail
cd "$(dirname "$0")"
version="${ORT_WEB_VERSION:-1.31.1}"
if [ -e ort/dist/VERSION ] && [ "$(cat ort/dist/VERSION)" = "$version" ]; then
    exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "onnxruntime-web@$version" >/dev/null && tar xzf onnxruntime-web-*.tgz)
rm -rf ort/dist
mkdir -p ort/dist
# The WebGPU build and the WebAssembly it loads.
cp "$tmp"/package/dist/ort.webgpu.min.mjs "$tmp"/package/dist/ort-wasm-simd-threaded.* ort/dist/
cp "$tmp"/package/package.json ort/dist/  # names its licence: MIT
echo "$version" > ort/dist/VERSION
echo "fetched onnxruntime-web $version into web/ort/dist/ ($(du -sh ort/dist | cut -f1))"
