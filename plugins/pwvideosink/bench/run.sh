#!/usr/bin/env bash
# The pwvideosink benchmark (not part of the test command), one command: producer -> consumer
# latency and CPU per frame, pwvideosink against pipewiresink mode=provide, on a private PipeWire
# session, then what a new consumer gets after one was SIGKILLed; ends with the common report
# (vcambridge_tests::bench::Report: title, machine, rounds, Markdown table, ratios).
#
#   plugins/pwvideosink/bench/run.sh                              5 rounds x 300 frames, 1280x720
#   plugins/pwvideosink/bench/run.sh --rounds 1 --frames 60 --width 320 --height 240    quick
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../../.." && pwd)"
cd "$ROOT"
exec cargo bench --locked -p gst-plugin-pwvideosink --bench latency -- "$@"
