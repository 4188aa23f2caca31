#!/usr/bin/env bash
# The shmring benchmark (not a test), one command: the "app as a webcam" paths at 1280x720 and
# 1920x1080 — the Python API (vcamera.py, over the ring), pipelines/stdin-camera.sh and
# `ffmpeg -f rawvideo -i - -f v4l2` — frames/s and CPU per frame, in the qemu guest with the real
# v4l2loopback module (Debian's). Ends with one common report per size
# (scripts/bench_report.py: title, machine, rounds, Markdown table, ratios).
#
#   plugins/shmring/bench/run.sh                 build (release) and run it in the guest
#   BENCH_RUNS=5 BENCH_FRAMES_720=300 BENCH_FRAMES_1080=150 plugins/shmring/bench/run.sh
#
# Output: the guest console (and target/guest/out/<version>/console.log).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../../.." && pwd)"
if [ "${1:-}" = --in-guest ]; then
  # Inside the guest: the release plugins, with a registry of our own in the guest's /tmp.
  export GST_PLUGIN_PATH="$ROOT/target/release" GST_REGISTRY=/tmp/registry-vcamera-bench.bin
  export GST_REGISTRY_UPDATE=yes
  unset G_DEBUG
  gst-inspect-1.0 v4l2loopsink >/dev/null
  exec python3 "$ROOT/plugins/shmring/bench/vcamera_bench.py"
fi
cd "$ROOT"
cargo build -q --release -p gst-plugin-shmring -p gst-plugin-v4l2loopsink
env_args=""
for v in BENCH_RUNS BENCH_FRAMES_720 BENCH_FRAMES_1080 BENCH_DEVICE; do
  [ -n "${!v:-}" ] && env_args="$env_args $v=${!v}"
done
VCB_GUEST_VERSIONS="${VCB_GUEST_VERSIONS:-debian}" \
  VCB_GUEST_CMD="env$env_args $ROOT/plugins/shmring/bench/run.sh --in-guest" \
  exec tests/guest/run.sh
