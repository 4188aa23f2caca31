#!/usr/bin/env bash
# Capture PipeWire audio devices into WAV chunk files (chunksink). --help lists the options.
#   pipelines/audio-capture.sh --list
#   pipelines/audio-capture.sh --device alsa_input.usb-Mic --dir /data/rec --chunk-seconds 10
# The work is done by audio-capture.py beside this script (/usr/bin/python3 with gi). Ctrl-C
# (SIGINT) or SIGTERM seals the chunk being written and exits with status 0.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

# Our plugin: an explicit VCB_PLUGIN_DIR, else the newest cargo build, else build it (release).
if [ -n "${VCB_PLUGIN_DIR:-}" ]; then
  plugdir="$VCB_PLUGIN_DIR"
elif [ -e "$ROOT/target/release/libgstchunksink.so" ] \
    && { [ ! -e "$ROOT/target/debug/libgstchunksink.so" ] \
         || [ "$ROOT/target/release/libgstchunksink.so" -nt "$ROOT/target/debug/libgstchunksink.so" ]; }; then
  plugdir="$ROOT/target/release"
elif [ -e "$ROOT/target/debug/libgstchunksink.so" ]; then
  plugdir="$ROOT/target/debug"
else
  echo "[audio-capture] building chunksink (cargo build --release -p gst-plugin-chunksink)" >&2
  (cd "$ROOT" && cargo build --release -p gst-plugin-chunksink >&2)
  plugdir="$ROOT/target/release"
fi
export GST_PLUGIN_PATH="$plugdir${GST_PLUGIN_PATH:+:$GST_PLUGIN_PATH}"
exec /usr/bin/python3 "$ROOT/pipelines/audio-capture.py" "$@"
