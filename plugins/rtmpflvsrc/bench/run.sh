#!/usr/bin/env bash
# rtmpflvsrc benchmark (on demand, NOT part of the test command).
#
# In one run, alternating: ffmpeg -> rtmpflvsrc -> decode  versus  ffmpeg -> nginx-rtmp ->
# rtmp2src ! flvdemux -> decode. Prints median glass-to-glass latency, receiver CPU per frame,
# ingest throughput (Mbit/s) and the ratios.
#
# Knobs: BENCH_RUNS (3), BENCH_FRAMES (300 per latency run), BENCH_FPS (30), BENCH_SIZE (320x240),
#        BENCH_ONLY=rtmpflvsrc|nginx (one side only), BENCH_PROFILE=release|dev.
set -euo pipefail
cd "$(dirname "$0")/../../.."
profile="${BENCH_PROFILE:-release}"
args=()
if [ "$profile" = "release" ]; then args+=(--release); fi
exec cargo test "${args[@]}" -p gst-plugin-rtmpflvsrc --test bench -- \
  --ignored --exact rtmp_bench --nocapture --test-threads=1
