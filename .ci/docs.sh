#!/usr/bin/env bash
# Docs and packaging checks: the API docs build without warnings (broken
# intra-doc links included) with the default features, with all of them and
# with a few single features,
# and the package ships the library alone (no bench results, images,
# Python caches, traces or fuzz corpus).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> docs, default features"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps
echo "==> docs, all features"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --all-features
# Links that only resolve with a sibling feature break with partial sets.
for features in tokio smol sqlite unstable-relay yrs; do
    echo "==> docs, feature $features alone"
    RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --features "$features"
done

echo "==> cargo package --list"
list="$(cargo package --list --allow-dirty)"
printf '%s\n' "$list" | sed 's/^/    /'
bad="$(printf '%s\n' "$list" | grep -v '^\.cargo_vcs_info\.json$' | grep -E '\.(png|svg|json|json\.gz|pyc|py|mjs)$|^benches/|^fuzz/|^traces/|^tests/|^examples/|__pycache__' || true)"
if [ -n "$bad" ]; then
    echo "files that must not be packaged:" >&2
    printf '%s\n' "$bad" >&2
    exit 1
fi
for need in Cargo.toml README.md LICENSE-MIT LICENSE-APACHE src/lib.rs; do
    printf '%s\n' "$list" | grep -qx "$need" || { echo "missing from the package: $need" >&2; exit 1; }
done
