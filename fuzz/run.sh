#!/usr/bin/env bash
# Runs the cargo-fuzz targets over their committed corpus.
#
#   fuzz/run.sh replay                     replay every target's corpus once (-runs=0)
#   SECONDS_PER_TARGET=60 fuzz/run.sh      fuzz every target for 60 s each
#   fuzz/run.sh replay inflate             ... or only the targets named
#
# Timed runs add the new inputs libFuzzer finds to fuzz/corpus/<target>;
# minimize with `cargo fuzz cmin <target>` before committing them. Crashes
# land in fuzz/artifacts/<target>/ and make the script fail.
#
# Needs cargo-fuzz (installed here if missing) and a toolchain able to build
# with sanitizers; on stable, RUSTC_BOOTSTRAP=1 unlocks the nightly flags.
set -euo pipefail

cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1

ALL_TARGETS=(frame_decode inflate message_round_trip client_session server_session server_messages server_frames sim ywebsocket)

mode=timed
if [[ "${1:-}" == replay ]]; then
    mode=replay
    shift
fi
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    targets=("${ALL_TARGETS[@]}")
fi

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

cargo fuzz build

for target in "${targets[@]}"; do
    corpus="corpus/$target"
    mkdir -p "$corpus"
    if [[ $mode == replay ]]; then
        echo "== replay $target ($(find "$corpus" -type f | wc -l) inputs)"
        cargo fuzz run "$target" "$corpus" -- -runs=0
    else
        seconds="${SECONDS_PER_TARGET:-60}"
        echo "== fuzz $target for ${seconds}s"
        cargo fuzz run "$target" "$corpus" -- \
            -max_total_time="$seconds" -max_len=65536 -timeout=10 -print_final_stats=1
    fi
done
