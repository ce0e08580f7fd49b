#!/usr/bin/env bash
# Interop with the real Yjs clients from npm: y-websocket's WebsocketProvider
# (on Node, with `ws`) and native clients edit one document through the
# server's y-websocket endpoint (tests/yjs/interop.mjs). Needs node and npm;
# installs tests/yjs/node_modules with `npm ci` when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --example yjs_interop --features tokio,yrs
target="${CARGO_TARGET_DIR:-target}"
if [ ! -d tests/yjs/node_modules ]; then
    (cd tests/yjs && npm ci --no-audit --no-fund)
fi
YWS_SERVER="$(cd "$target" && pwd)/debug/examples/yjs_interop" node tests/yjs/interop.mjs
