#!/usr/bin/env bash
# The main job's end-to-end benchmark (not a test): publisher -> pipelines/rtmp-camera.sh ->
# v4l2loopback, against publisher -> nginx-rtmp -> `ffmpeg -i rtmp://… -f v4l2`, both read back
# by v4l2src, in the qemu guest with the real module (Debian's). See bench.py for what is measured.
#
#   pipelines/rtmp-camera/bench/run.sh                builds (release), encodes, runs in the guest
#   BENCH_RUNS=3 BENCH_SECONDS=30 BENCH_WARMUP=8 BENCH_SIZES="1280x720 640x360" \
#     pipelines/rtmp-camera/bench/run.sh
#
# Output: the common report on the guest console (also target/guest/out/<version>/console.log).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../../.." && pwd)"
HERE="$ROOT/pipelines/rtmp-camera/bench"
if [ "${1:-}" = --in-guest ]; then
  # Inside the guest: the release plugins, with a registry of our own in the guest's /tmp.
  export GST_PLUGIN_PATH="$ROOT/target/release" GST_REGISTRY=/tmp/registry-main-job-bench.bin
  export GST_REGISTRY_UPDATE=yes
  unset G_DEBUG
  # nginx opens its compiled-in log paths at start; the host root is read-only in the guest.
  for d in /var/log/nginx /var/lib/nginx; do [ -d "$d" ] && mount -t tmpfs tmpfs "$d"; done
  gst-inspect-1.0 rtmpflvsrc >/dev/null && gst-inspect-1.0 v4l2loopsink >/dev/null
  # The registry is built now; rescanning every plugin in each GStreamer process takes minutes
  # under TCG.
  export GST_REGISTRY_UPDATE=no
  exec /usr/bin/python3 "$HERE/bench.py"
fi
cd "$ROOT"
SECS="${BENCH_SECONDS:-30}"
cargo build -q --release --locked -p gst-plugin-rtmpflvsrc -p gst-plugin-v4l2loopsink
# The published streams: H.264 at 30 fps (x264 ultrafast zerolatency, a keyframe a second),
# each frame's index painted as 3 rows of 8 black/white 40x40 blocks (16 bits + a check byte).
mkdir -p "$ROOT/target/guest"
PAINT='
import sys
W, H, B = int(sys.argv[1]), int(sys.argv[2]), 40
n = W * H * 3 // 2
inp, out, i = sys.stdin.buffer, sys.stdout.buffer, 0
while True:
    f = bytearray(inp.read(n))
    if len(f) < n:
        break
    lo, hi = i & 0xFF, (i >> 8) & 0xFF
    for r, byte in enumerate((lo, hi, lo ^ hi ^ 0xA5)):
        for bit in range(8):
            v = bytes([235 if byte & (1 << bit) else 16]) * B
            for y in range(r * B, (r + 1) * B):
                f[y * W + bit * B:y * W + bit * B + B] = v
    out.write(f)
    i += 1
'
FLVS=""
for size in ${BENCH_SIZES:-1280x720 640x360}; do
  w="${size%x*}" h="${size#*x}"
  # About what OBS sends: 3.5 Mbit/s at 720p, scaled by the pixel count (at least 0.5 Mbit/s).
  kbps=$(( w * h * 3500 / (1280 * 720) )); [ "$kbps" -ge 500 ] || kbps=500
  FLV="$ROOT/target/guest/main-job-bench-${size}-${kbps}k-${SECS}s.flv"
  if [ ! -s "$FLV" ]; then
    echo "bench: encoding $FLV" >&2
    # testsrc2 (moving, detailed: a realistic decode load) with the index blocks painted over it.
    ffmpeg -hide_banner -loglevel error -nostdin -f lavfi -i "testsrc2=size=${size}:rate=30" \
        -frames:v $((SECS * 30)) -f rawvideo -pix_fmt yuv420p - \
      | python3 -c "$PAINT" "$w" "$h" \
      | ffmpeg -hide_banner -loglevel error -nostdin -f rawvideo -pix_fmt yuv420p -s "$size" \
        -r 30 -i - -c:v libx264 -preset ultrafast -tune zerolatency -g 30 -b:v "${kbps}k" \
        -maxrate "${kbps}k" -bufsize "${kbps}k" -pix_fmt yuv420p -f flv -y "$FLV.part"
    mv "$FLV.part" "$FLV"
  fi
  FLVS="${FLVS:+$FLVS }$size=$FLV"
done
env_args="BENCH_FLVS='$FLVS'"
for v in BENCH_RUNS BENCH_WARMUP BENCH_DEVICE; do
  [ -n "${!v:-}" ] && env_args="$env_args $v=${!v}"
done
VCB_GUEST_VERSIONS="${VCB_GUEST_VERSIONS:-debian}" \
  VCB_GUEST_CMD="env $env_args $HERE/run.sh --in-guest" \
  exec tests/guest/run.sh
