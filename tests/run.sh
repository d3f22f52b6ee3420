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
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "clang, llvm-ar, sqlite3: present"
fi
if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  rustup target add wasm32-unknown-unknown
else
  echo "rust target wasm32-unknown-unknown: present"
fi
rustup component list --installed | grep -q '^clippy' || rustup component add clippy rustfmt

# clang 14 needs this flag for sqlite-wasm-vec's C shim (see toolchain notes).
export CFLAGS_wasm32_unknown_unknown="${CFLAGS_wasm32_unknown_unknown:--fdouble-square-bracket-attributes}"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

step "wasm32: the shared modules and the browser crate compile"
cargo check -p hivesync --no-default-features --target wasm32-unknown-unknown
cargo check -p hivesync-wasm --target wasm32-unknown-unknown

step "cargo test"
cargo test
