#!/usr/bin/env bash
# The whole side-by-side comparison in one command:
#
#   benches/compare/run.sh --quick     # every workload scaled down, < 5 minutes (after the builds)
#   benches/compare/run.sh             # full sizes from issue 10 (~7 minutes)
#   benches/compare/run.sh --quick --workloads A,C --targets ours,ywebsocket
#   benches/compare/run.sh --shards 3  # client processes per target in A and B (default 2)
#
# It installs the pinned npm packages (npm ci), builds the server and the Rust
# load generator in release mode, installs matplotlib into a local venv (for
# the plots), then runs compare.py, which starts each server on 127.0.0.1 on a
# free port, samples it from /proc, drives it and writes
# benches/results/<mode>/{results.json,results.md,*.png}.
# Every server and client binds or dials 127.0.0.1 only; every client run is
# bounded in time (MAX_S) and killed past it.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
MODE=full
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) MODE=quick ;;
    --full) MODE=full ;;
    --workloads|--targets|--shards) EXTRA+=("$1" "$2"); shift ;;
    -h|--help) sed -n 2,15p "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

echo "== npm ci (pinned: package-lock.json)"
(cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error)

echo "== cargo build --release (server, loadgen)"
(cd "$ROOT" && cargo build --release --quiet --features tokio,yrs,loro,automerge,sqlite --example server --example loadgen)
TARGET_DIR="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"

PY=python3
if ! python3 -c 'import matplotlib' 2>/dev/null; then
  echo "== matplotlib into $HERE/.venv"
  [ -x "$HERE/.venv/bin/python" ] || python3 -m venv "$HERE/.venv"
  "$HERE/.venv/bin/pip" install --quiet --disable-pip-version-check 'matplotlib==3.11.2'
  PY="$HERE/.venv/bin/python"
fi

VERSIONS="$(cd "$HERE" && node -e '
const l = require("./package-lock.json").packages;
const pick = ["@hocuspocus/server","@hocuspocus/provider","yjs","y-protocols","ws","@y/websocket-server","y-websocket"];
console.log(pick.map(p => p + "@" + l["node_modules/" + p].version).join(", "))'); crdt-socket-sync $(cd "$ROOT" && git rev-parse --short HEAD) (yrs 0.28)"

ulimit -n 65536 2>/dev/null || true
exec "$PY" "$HERE/compare.py" --mode "$MODE" \
  --server-bin "$TARGET_DIR/release/examples/server" \
  --loadgen-bin "$TARGET_DIR/release/examples/loadgen" \
  --out "$ROOT/benches/results/$MODE" \
  --command "benches/compare/run.sh $([ "$MODE" = quick ] && echo --quick) ${EXTRA[*]:-}" \
  --versions "$VERSIONS" ${EXTRA[@]+"${EXTRA[@]}"}
