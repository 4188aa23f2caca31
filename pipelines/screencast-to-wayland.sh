#!/usr/bin/env bash
# Show a GNOME session's screen on another Wayland compositor, full screen, through a PipeWire
# screen cast (Mutter's org.gnome.Mutter.ScreenCast, or the xdg-desktop-portal ScreenCast).
#   pipelines/screencast-to-wayland.sh --display wayland-1                  # this GNOME session
#   pipelines/screencast-to-wayland.sh --start-headless 1280x720 --display weston-0
#   pipelines/screencast-to-wayland.sh --virtual 1920x1080 --also ring:/sc --also camera
# The work is done by screencast/screencast.py beside this script (/usr/bin/python3 with gi),
# which holds the screen-cast session's D-Bus connection and the GStreamer pipeline
# `pipewiresrc path=NODE ! videoconvert ! waylandsink fullscreen=true`. `--help` is the reference.
# Ctrl-C (SIGINT) or SIGTERM stops it and everything it started within 2 s, status 0.
#
# Plugins for --also (shmringsink, pwvideosink): GST_PLUGIN_PATH if it has them, else
# VCB_PLUGIN_DIR, else the newest cargo build of this checkout, else built here (release).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

needs_ours=0
for a in "$@"; do case "$a" in --also|--also=*) needs_ours=1 ;; esac; done

if [ -n "${VCB_PLUGIN_DIR:-}" ]; then
  plugdir="$VCB_PLUGIN_DIR"
elif [ -e "$ROOT/target/release/libgstshmring.so" ] \
    && { [ ! -e "$ROOT/target/debug/libgstshmring.so" ] \
         || [ "$ROOT/target/release/libgstshmring.so" -nt "$ROOT/target/debug/libgstshmring.so" ]; }; then
  plugdir="$ROOT/target/release"
elif [ -e "$ROOT/target/debug/libgstshmring.so" ]; then
  plugdir="$ROOT/target/debug"
elif [ "$needs_ours" = 1 ] && ! gst-inspect-1.0 shmringsink >/dev/null 2>&1; then
  echo "[screencast] building shmringsink/pwvideosink (cargo build --release)" >&2
  (cd "$ROOT" && cargo build --release -p gst-plugin-shmring -p gst-plugin-pwvideosink >&2)
  plugdir="$ROOT/target/release"
else
  plugdir=""
fi
if [ -n "$plugdir" ]; then
  export GST_PLUGIN_PATH="$plugdir${GST_PLUGIN_PATH:+:$GST_PLUGIN_PATH}"
fi
exec /usr/bin/python3 -u "$ROOT/pipelines/screencast/screencast.py" "$@"
