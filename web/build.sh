#!/usr/bin/env bash
# Builds the browser package: the client core for wasm32 (feature `wasm`,
# release), its JavaScript bindings in web/pkg (wasm-bindgen, --target web),
# and the npm dependencies of the demo page and tests (web/node_modules).
# Installs what is missing: the rustup target and the wasm-bindgen-cli of
# exactly the version Cargo.toml pins.
set -euo pipefail
web="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$web")"
cd "$root"

version="$(sed -n 's/^wasm-bindgen = { version = "=\([0-9.]*\)".*/\1/p' Cargo.toml)"
if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    rustup target add wasm32-unknown-unknown
fi
if [ "$(wasm-bindgen --version 2>/dev/null | cut -d' ' -f2)" != "$version" ]; then
    cargo install --locked --version "$version" wasm-bindgen-cli
fi

target="${CARGO_TARGET_DIR:-$root/target}"
# Small rather than fast (the page downloads it); only this build.
export CARGO_PROFILE_RELEASE_OPT_LEVEL=s CARGO_PROFILE_RELEASE_LTO=true \
    CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 CARGO_PROFILE_RELEASE_PANIC=abort
# A cdylib for this build only: the crate stays an rlib everywhere else.
cargo rustc --lib --release --target wasm32-unknown-unknown --features wasm --crate-type cdylib
wasm-bindgen --target web --out-dir "$web/pkg" --out-name crdt_socket_sync \
    "$target/wasm32-unknown-unknown/release/crdt_socket_sync.wasm"

if [ ! -d "$web/node_modules/yjs" ] || [ ! -d "$web/node_modules/playwright-core" ]; then
    (cd "$web" && npm ci --no-audit --no-fund)
fi
printf 'web/pkg: %s bytes of wasm (%s gzipped)\n' \
    "$(wc -c < "$web/pkg/crdt_socket_sync_bg.wasm")" \
    "$(gzip -9 -c "$web/pkg/crdt_socket_sync_bg.wasm" | wc -c)"
