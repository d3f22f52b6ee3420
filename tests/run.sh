#!/usr/bin/env bash
# The test command (README and CI run exactly this). Installs what the tests need when it is
# missing (skipping what is there), then runs formatting, lints, the wasm32 build check and
# every test.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

step "prerequisites"
missing=()
command -v clang >/dev/null || missing+=(clang)
command -v llvm-ar >/dev/null || missing+=(llvm)
command -v sqlite3 >/dev/null || missing+=(sqlite3)
# tests/hostile.rs makes a CA and a localhost certificate for its wss:// relay test.
command -v openssl >/dev/null || missing+=(openssl)
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
command -v node >/dev/null || missing+=(nodejs npm)
command -v python3 >/dev/null || missing+=(python3 python3-pip)
# tests/nats.rs starts its own JetStream servers (nats-server -js on loopback ports).
command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || missing+=(nats-server)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "clang, llvm-ar, sqlite3, openssl, chromium, chromedriver, node, nats-server: present"
fi
if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  rustup target add wasm32-unknown-unknown
else
  echo "rust target wasm32-unknown-unknown: present"
fi
rustup component list --installed | grep -q '^clippy' || rustup component add clippy rustfmt
# wasm-bindgen-cli must match the wasm-bindgen crate exactly (pinned in wasm/Cargo.toml).
WB_VERSION=0.2.130
if ! wasm-bindgen --version 2>/dev/null | grep -q "$WB_VERSION"; then
  echo "installing wasm-bindgen-cli $WB_VERSION (a few minutes, once)"
  cargo install wasm-bindgen-cli --version "$WB_VERSION"
else
  echo "wasm-bindgen-cli $WB_VERSION: present"
fi
if [ ! -x wasm/node_modules/.bin/wasm-opt ] || [ ! -d wasm/node_modules/playwright-core ] \
  || [ ! -d wasm/node_modules/typescript ] || [ ! -d wasm/node_modules/react-dom ] \
  || [ ! -d wasm/node_modules/esbuild ]; then
  (cd wasm && npm ci --no-audit --no-fund)
else
  echo "wasm/node_modules: present"
fi

# tests/clients.rs runs the documented Python consumer (docs/examples/consumer.py).
if ! python3 -c 'import websockets' 2>/dev/null; then
  python3 -m pip install --quiet websockets \
    || python3 -m pip install --quiet --break-system-packages websockets
else
  echo "python websockets: present"
fi

# clang 14 needs this flag for sqlite-wasm-vec's C shim (see toolchain notes).
export CFLAGS_wasm32_unknown_unknown="${CFLAGS_wasm32_unknown_unknown:--fdouble-square-bracket-attributes}"

step "the committed browser package was built from the current sources"
bash wasm/sources.sh --check

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

step "wasm32: the shared modules and the browser crate compile, clippy-clean"
cargo clippy -p hivesync --no-default-features --target wasm32-unknown-unknown --lib -- -D warnings
cargo clippy -p hivesync-wasm --target wasm32-unknown-unknown --lib -- -D warnings
cargo clippy -p hivesync-wasm --target wasm32-unknown-unknown --all-targets --features raw -- -D warnings

step "cargo test (native: unit, integration, property, end-to-end over sockets)"
cargo test

step "wasm32 unit tests of the shared modules and the replica, in Node"
export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner
cargo test -p hivesync --no-default-features --lib --target wasm32-unknown-unknown
cargo test -p hivesync-wasm --target wasm32-unknown-unknown --features raw --test replica --test mem

step "the same, in headless Chromium (plus OPFS persistence in a dedicated Worker)"
WASM_BINDGEN_USE_BROWSER=1 CHROMEDRIVER="$(command -v chromedriver)" \
  cargo test -p hivesync --no-default-features --lib --target wasm32-unknown-unknown
WASM_BINDGEN_USE_BROWSER=1 CHROMEDRIVER="$(command -v chromedriver)" \
  cargo test -p hivesync-wasm --target wasm32-unknown-unknown --features raw --test replica --test opfs --test mem

step "browser replica rebuilt from source, end-to-end test (node + CLI + page in Chromium)"
bash wasm/build.sh
cargo build --bin hivesync
(cd wasm && node --test test/)

step "fuzzing: every target for 20 s (long runs: bash tests/fuzz/run.sh 3600)"
bash tests/fuzz/run.sh 20
