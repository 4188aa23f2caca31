#!/usr/bin/env bash
# v4l2loopsink benchmark (on demand, NOT part of the test command): in the qemu guest with the
# real v4l2loopback module (Debian's 0.12.x by default), 1280x720 YUY2 frames written as fast as
# they go by v4l2loopsink, v4l2sink (its own pool / an upstream pool) and ffmpeg -f v4l2;
# ends with the common report (CPU and net CPU per frame, wall time, copies per frame, ratios).
#
# Knobs: BENCH_FRAMES (400 per run), BENCH_RUNS (5), BENCH_DEVICE (/dev/video11),
#        VCB_GUEST_VERSIONS=backports (the other module source), VCB_GUEST_TIMEOUT (seconds).
set -euo pipefail
cd "$(dirname "$0")/../../.."
exec tests/guest/run.sh --bench
