#!/usr/bin/env bash
# Raw video frames on stdin -> a camera (v4l2loopback webcam or PipeWire camera node).
# The drop-in for `myapp | ffmpeg -f rawvideo -pixel_format rgb24 -video_size 1280x720
# -framerate 30 -i - -f v4l2 /dev/video10`:
#
#   myapp | pipelines/stdin-camera.sh --pixel-format rgb24 --size 1280x720 --fps 30
#   ffmpeg -re -i clip.mp4 -f rawvideo -pix_fmt yuv420p -s 1280x720 - | \
#       pipelines/stdin-camera.sh --pixel-format yuv420p --size 1280x720 --fps 30 --device /dev/video10
#
# Frames go through the same path as the Python API (plugins/shmring/python/vcamera.py): into a
# shm ring, out of it with `shmringsrc ! videoconvert ! v4l2loopsink` (or `pwvideosink`), paced at
# --fps. ffmpeg's flag names work too (-pix_fmt, -s, -video_size, -r, -framerate).
# Errors name the camera problem (no loopback device and the modprobe line, no PipeWire session,
# a device held in another format, a producer whose frames don't match --size/--pixel-format).
# Ends with status 0 when stdin ends or on Ctrl-C/SIGTERM; 1 on a camera error; 2 on bad flags.
#
# Plugins: GST_PLUGIN_PATH if set, else this checkout's target/release (or target/debug) when
# built there (cargo build --release), else the system plugin directory (meson install).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
case "${1:-}" in
  -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; echo ;;
esac
exec python3 -u "$ROOT/plugins/shmring/python/vcamera.py" stdin "$@"
