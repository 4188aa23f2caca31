#!/usr/bin/env bash
# README command 2: install what is missing, build, lint and run every test.
#   tests/run-all.sh            everything (host tests, then the v4l2loopback guest harness)
#   SKIP_GUEST=1 tests/run-all.sh   without the qemu guest part
#   SKIP_FUZZ=1 tests/run-all.sh    without the fuzz smoke
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

# A full disk shows up much later as an unrelated-looking failure (ensurepip, rustc exit 101):
# say it first. A clean build plus the guest and meson trees take about 9 GB.
NEED_GB="${VCAMBRIDGE_NEED_GB:-10}"
mkdir -p "$ROOT/target"
free_kb="$(df -Pk "$ROOT/target" | awk 'NR == 2 { print $4 }')"
if [ "$free_kb" -lt $((NEED_GB * 1024 * 1024)) ]; then
  echo "run-all: only $((free_kb / 1024)) MB free on $(df -P "$ROOT/target" | awk 'NR == 2 { print $6 }')" \
    "for $ROOT/target; the build and tests need about ${NEED_GB} GB. Free some space" \
    "(old target/ trees, /tmp) or set VCAMBRIDGE_NEED_GB to override." >&2
  exit 1
fi

"$ROOT/scripts/install-deps.sh"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export VCAMBRIDGE_PYTHON="$ROOT/target/venv/bin/python"

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo build (plugins for subprocess tests)"
cargo build --workspace --locked

step "cargo test"
# fatal_warnings: a GLib critical/warning anywhere in our elements fails the test.
G_DEBUG=fatal_warnings RUST_BACKTRACE=1 \
  cargo test --workspace --locked -- --test-threads="${TEST_THREADS:-2}"

step "meson: default (optimized) build installed under a scratch --prefix, every element loads"
MESON_DIR="$ROOT/target/meson-check"
PREFIX="$MESON_DIR/prefix"
rm -rf "$MESON_DIR" && mkdir -p "$MESON_DIR"
SYS_PLUGINDIR="$(pkg-config --variable=pluginsdir gstreamer-1.0)"
touch "$MESON_DIR/before-install"
meson setup "$MESON_DIR/build" --prefix="$PREFIX" >/dev/null
meson compile -C "$MESON_DIR/build" >/dev/null
meson install -C "$MESON_DIR/build" >/dev/null
# Nothing outside the prefix: neither in meson's record of what it installed nor in the system
# plugin directory.
outside="$(grep -v '^#' "$MESON_DIR/build/meson-logs/install-log.txt" | grep -v -x -e "$PREFIX" -e "$PREFIX/.*" || true)"
if [ -n "$outside" ]; then echo "meson installed outside --prefix=$PREFIX:" >&2; echo "$outside" >&2; exit 1; fi
if [ -n "$(find "$SYS_PLUGINDIR" -newer "$MESON_DIR/before-install" -name 'libgst*' 2>/dev/null)" ]; then
  echo "meson install wrote into the system plugin directory $SYS_PLUGINDIR" >&2; exit 1
fi
LIBDIR="$(meson introspect --buildoptions "$MESON_DIR/build" | python3 -c \
  'import json,sys; print(next(o["value"] for o in json.load(sys.stdin) if o["name"] == "libdir"))')"
PLUGDIR="$PREFIX/$LIBDIR/gstreamer-1.0"
for so in "$PLUGDIR"/libgst*.so; do
  size=$(stat -c %s "$so")
  if [ "$size" -ge $((15 * 1024 * 1024)) ]; then echo "$so is $size bytes (limit 15 MB)" >&2; exit 1; fi
  if readelf -S "$so" | grep -q '\.debug_info'; then echo "$so still carries debug info" >&2; exit 1; fi
  printf '  %s %d KB\n' "$(basename "$so")" $((size / 1024))
done
grep -q "cargo profile *: release" "$MESON_DIR/build/meson-logs/meson-log.txt" \
  || { echo "meson's default build is not cargo's release profile" >&2; exit 1; }
for element in rtmpflvsrc v4l2loopsink pwvideosink shmringsink shmringsrc surfacesink surfacesrc chunksink; do
  if ! GST_PLUGIN_PATH="$PLUGDIR" GST_PLUGIN_SYSTEM_PATH_1_0="" GST_REGISTRY="$MESON_DIR/registry.bin" \
      gst-inspect-1.0 "$element" >/dev/null 2>&1; then
    echo "meson-installed plugins in $PLUGDIR do not provide element '$element'" >&2
    exit 1
  fi
done
echo "meson install under $PREFIX provides all elements (GST_PLUGIN_PATH=$PLUGDIR)"

step "main job smoke run: pipelines/rtmp-camera.sh --demo --demo-seconds 6 (terminal output, debug build)"
MAIN_LOG="$ROOT/target/main-job.log"
# The job must end by itself ~6 s after it started, with status 0; timeout only bounds a hang.
set +e
timeout -k 5 60 "$ROOT/pipelines/rtmp-camera.sh" --demo --demo-seconds 6 --sink terminal \
  --no-build --profile debug --port 0 >"$MAIN_LOG" 2>&1
rc=$?
set -e
if [ "$rc" != 0 ] || ! grep -Eq '^\[vcambridge\] frames [1-9][0-9]+ ' "$MAIN_LOG"; then
  echo "the main job failed (exit $rc; 124 = it did not end by itself) or showed no decoded frames; its output:" >&2
  cat "$MAIN_LOG" >&2
  exit 1
fi
grep -E '^\[vcambridge\] frames' "$MAIN_LOG" | tail -1

if [ "${SKIP_FUZZ:-0}" != "1" ]; then
  step "fuzz smoke: every cargo-fuzz target for 20 s from its kept corpus (scripts/fuzz.sh)"
  "$ROOT/scripts/fuzz.sh" --seconds 20
fi

if [ "${SKIP_GUEST:-0}" != "1" ]; then
  step "v4l2loopback guest harness (qemu, real kernel module)"
  "$ROOT/tests/guest/run.sh"
fi

step "all tests passed"
