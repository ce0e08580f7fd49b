#!/usr/bin/env bash
# CI for the browser part: lints of the wasm32 build, the package build
# (web/build.sh: wasm + bindings + npm packages) and the browser end to end
# (web/test/e2e.mjs, headless chromium on loopback). Installs Debian's
# chromium and the npm packages when missing. A few minutes when warm.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

if ! command -v chromium >/dev/null; then
    step "installing chromium (apt)"
    apt-get update -q && apt-get install -y -q chromium
fi

step "clippy for wasm32 (feature wasm)"
rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
cargo clippy --lib --target wasm32-unknown-unknown --features wasm -- -D warnings

step "web/build.sh"
bash web/build.sh

step "browser end to end (web/test/e2e.mjs)"
node web/test/e2e.mjs
