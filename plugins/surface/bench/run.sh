#!/usr/bin/env bash
# The surface benchmark (not part of the test command), one command: builds the release plugins,
# then runs surfacesink -> surfacesrc and shmringsink -> shmringsrc across processes at 1920x1080
# BGRx and 1280x720 I420 next to shmsink -> shmsrc and a plain memcpy, and prints one report per transport of ours
# (vcambridge_tests::bench::Report: title, machine, rounds, Markdown table, ratios).
#
#   plugins/surface/bench/run.sh                                     3 rounds, 300 + 90 frames
#   BENCH_RUNS=1 BENCH_FRAMES=60 BENCH_LATENCY_FRAMES=30 plugins/surface/bench/run.sh   quick
#   BENCH_SKIP_SURFACE=1 plugins/surface/bench/run.sh                 shmring and shmsink only
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../../.." && pwd)"
cd "$ROOT"
cargo build --locked --release -p gst-plugin-surface
# The shmring report is skipped (with a note) if that plugin does not build.
cargo build --locked --release -p gst-plugin-shmring || echo "note: gst-plugin-shmring did not build" >&2
cargo bench --locked -p gst-plugin-surface --bench ipc
