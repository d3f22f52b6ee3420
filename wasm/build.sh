#!/usr/bin/env bash
# Build the browser replica: wasm32 release build, wasm-bindgen (ES module for browsers and
# Node), and wasm-opt when available. Output: wasm/web/pkg/, committed and compiled into the
# node (served at /pkg/), with the hash of its sources in pkg/SOURCES.sha256 (wasm/sources.sh).
# `--raw`: with the session-less exports the apply benchmarks use (feature `raw`), into
# wasm/bench/raw/pkg (not committed; `serve --web wasm/bench/raw` lays it over the built-in one).
set -euo pipefail
features=()
out=wasm/web/pkg
if [ "${1:-}" = "--raw" ]; then
  features=(--features raw)
  out=wasm/bench/raw/pkg
fi
cd "$(dirname "$0")/.."
export CFLAGS_wasm32_unknown_unknown="${CFLAGS_wasm32_unknown_unknown:--fdouble-square-bracket-attributes}"
WB_VERSION=0.2.130
if ! wasm-bindgen --version 2>/dev/null | grep -q "$WB_VERSION"; then
  echo "wasm-bindgen-cli $WB_VERSION is needed: cargo install wasm-bindgen-cli --version $WB_VERSION" >&2
  exit 1
fi
cargo build -p hivesync-wasm --target wasm32-unknown-unknown --profile wasm-release "${features[@]}"
rm -rf "$out"
mkdir -p "$(dirname "$out")"
wasm-bindgen --target web --out-dir "$out" --out-name hivesync_wasm \
  target/wasm32-unknown-unknown/wasm-release/hivesync_wasm.wasm
# Debian's binaryen (108) miscompiles this module; only the npm build (>= 132) is used.
if [ -x wasm/node_modules/.bin/wasm-opt ]; then
  wasm/node_modules/.bin/wasm-opt -Oz --enable-bulk-memory --enable-nontrapping-float-to-int \
    --enable-sign-ext --enable-mutable-globals \
    "$out/hivesync_wasm_bg.wasm" -o "$out/hivesync_wasm_bg.wasm"
fi
bash wasm/sources.sh > "$out/SOURCES.sha256"
raw=$(stat -c %s "$out/hivesync_wasm_bg.wasm")
gz=$(gzip -9 -c "$out/hivesync_wasm_bg.wasm" | wc -c)
echo "built $out: wasm $raw bytes, $gz bytes gzipped"
