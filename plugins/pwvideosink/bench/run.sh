#!/usr/bin/env bash
# The pwvideosink benchmark (not part of the test command), one command: producer -> consumer
# latency and CPU per frame, pwvideosink against pipewiresink mode=provide, on a private PipeWire
# session, then what a new consumer gets after one was SIGKILLed; ends with the common report
# (vcambridge_tests::bench::Report: title, machine, rounds, Markdown table, ratios).
#
#   plugins/pwvideosink/bench/run.sh          a warm-up round, then 7 rounds x 300 frames: 1280x720
#                                             I420, then 1920x1080 BGRx against pipewiresink, then
#                                             DMA-BUF upstream at 720p: pass-through vs the memfd
#                                             copy path
#   plugins/pwvideosink/bench/run.sh --width 1280 --height 720 --realtime-column
#                                             adds pwvideosink realtime=true as a third column
#   plugins/pwvideosink/bench/run.sh --rounds 1 --frames 60 --width 320 --height 240    quick
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../../.." && pwd)"
cd "$ROOT"
if [ "$#" -gt 0 ]; then
    exec cargo bench --locked -p gst-plugin-pwvideosink --bench latency -- "$@"
fi
cargo bench --locked -p gst-plugin-pwvideosink --bench latency -- --width 1280 --height 720 --format I420
cargo bench --locked -p gst-plugin-pwvideosink --bench latency -- --width 1920 --height 1080 --format BGRx
cargo bench --locked -p gst-plugin-pwvideosink --bench latency -- --dmabuf --width 1280 --height 720
