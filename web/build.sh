#!/usr/bin/env bash
# Builds the web page's module: a wasm32 build of the `retina-web` crate (web/Cargo.toml) (release; `--dev` for
# the dev profile, which reuses what the browser tests built), then wasm-bindgen's JavaScript
# glue, into web/pkg/, and copies the face model and a sample photo into web/faces/. Serve web/ over HTTP afterwards, e.g.
#   python3 -m http.server -d web 8000   and open http://localhost:8000/
# Needs the wasm32-unknown-unknown target and wasm-bindgen-cli at the version of the
# wasm-bindgen crate in Cargo.lock (.ci/run installs both).
set -euo pipefail
cd "$(dirname "$0")/.."
profile=release
flags=(--release)
if [ "${1:-}" = "--dev" ]; then
    profile=debug
    flags=()
fi
cargo build "${flags[@]}" --target wasm32-unknown-unknown -p retina-web
wasm-bindgen --target web --no-typescript --out-dir web/pkg \
    "target/wasm32-unknown-unknown/$profile/retina_web.wasm"
# The face model and a sample photo, served from web/faces/ (copies; not committed twice).
mkdir -p web/faces
cp models/retinaface-mobilenet0.25/config.json models/retinaface-mobilenet0.25/model.safetensors web/faces/
cp photos/astronaut.png web/faces/sample.png
echo "built web/pkg/ ($(du -sh web/pkg | cut -f1)); serve web/ and open index.html"
