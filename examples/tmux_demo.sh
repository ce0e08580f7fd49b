#!/usr/bin/env bash
# Two terminal clients collaborating, driven through tmux and checked.
#
#   bash examples/tmux_demo.sh          # run the check, print the panes
#   KEEP=1 bash examples/tmux_demo.sh   # leave the session open: tmux attach -t cssync-demo
#
# Starts examples/server.rs on a free port and two examples/client.rs
# ("alice" and "bob") in three tmux panes, types a line in each client, and
# checks with `tmux capture-pane` that each client printed the other's line
# and saw the other in its presence list. Exits non-zero on failure.
set -euo pipefail
cd "$(dirname "$0")/.."

SESSION=cssync-demo
PORT=${PORT:-$((20000 + RANDOM % 20000))}
URL="ws://127.0.0.1:$PORT"
FEATURES="tokio,yrs,loro,automerge"

cargo build --quiet --features "$FEATURES" --example server --example client
BIN=target/debug/examples

tmux kill-session -t "$SESSION" 2>/dev/null || true
tmux new-session -d -s "$SESSION" -x 200 -y 50 "$BIN/server --addr 127.0.0.1:$PORT"
SERVER="$SESSION:0.0"; ALICE="$SESSION:0.1"; BOB="$SESSION:0.2"

cleanup() { [ "${KEEP:-0}" = 1 ] || tmux kill-session -t "$SESSION" 2>/dev/null || true; }
trap cleanup EXIT

# Waits (at most 15 s) until pane $1 shows text $2.
wait_for() {
  for _ in $(seq 1 150); do
    if tmux capture-pane -p -t "$1" -S -200 | grep -qF -- "$2"; then return 0; fi
    sleep 0.1
  done
  echo "FAILED: pane $1 never showed: $2" >&2
  tmux capture-pane -p -t "$1" -S -200 >&2
  return 1
}

wait_for "$SERVER" "crdt-socket-sync server:"
tmux split-window -t "$SERVER" -h "$BIN/client --url $URL --name alice; sleep 600"
tmux split-window -t "$SESSION:0.1" -v "$BIN/client --url $URL --name bob; sleep 600"
wait_for "$ALICE" "connected to"
wait_for "$BOB" "connected to"
tmux send-keys -t "$ALICE" "hello from alice" Enter
wait_for "$BOB" "hello from alice"
tmux send-keys -t "$BOB" "hi alice, bob here" Enter
wait_for "$ALICE" "hi alice, bob here"
wait_for "$ALICE" "here with you: bob"
wait_for "$BOB" "here with you: alice"

for pane in "$ALICE" "$BOB" "$SERVER"; do
  echo "===== $pane ====="
  tmux capture-pane -p -t "$pane" -S -200 | sed '/^$/d' | tail -20
done
echo "OK: two terminal clients collaborated through the server"
