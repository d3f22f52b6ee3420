#!/usr/bin/env bash
# The hash of the sources the browser package (wasm/web/pkg) is built from: the shared Rust
# modules, the wasm crate, the manifests, the lock file and the build script. `wasm/build.sh`
# records it in pkg/SOURCES.sha256; `bash wasm/sources.sh --check` (run by tests/run.sh) fails
# when the committed package was built from other sources than these.
set -euo pipefail
cd "$(dirname "$0")/.."
hash=$(
  {
    find src wasm/src -type f -name '*.rs' -not -path 'src/node/*' -not -path 'src/store/*' -not -path 'src/cli/*' \
      -not -name tests.rs -not -name '*_tests.rs' -not -name conformance.rs \
      -not -path src/main.rs
    printf '%s\n' Cargo.toml Cargo.lock wasm/Cargo.toml wasm/build.sh
  } | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -d' ' -f1
)
if [ "${1:-}" != "--check" ]; then
  echo "$hash"
  exit 0
fi
recorded=$(cat wasm/web/pkg/SOURCES.sha256 2>/dev/null || echo none)
if [ "$recorded" != "$hash" ]; then
  echo "wasm/web/pkg is stale: built from sources $recorded, the tree's hash $hash." >&2
  echo "Rebuild it with 'bash wasm/build.sh' and commit wasm/web/pkg (the node serves it built in)." >&2
  exit 1
fi
echo "wasm/web/pkg: built from the current sources ($hash)"
