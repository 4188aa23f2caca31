#!/usr/bin/env bash
# Installs every Debian/Ubuntu package (and PyPI wheel) the build, the main job and the tests need.
# Idempotent: re-running it only installs what is missing.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# Build: GStreamer/PipeWire headers, bindgen's libclang, pkg-config.
BUILD_PKGS=(
  pkg-config clang libclang-dev meson ninja-build
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev
  libpipewire-0.3-dev libspa-0.2-dev
  libgstreamer-plugins-bad1.0-dev
)
# Runtime peers used by the main job and the tests.
RUNTIME_PKGS=(
  gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav
  gstreamer1.0-x gstreamer1.0-pipewire
  ffmpeg v4l-utils
  pipewire pipewire-bin wireplumber dbus
  nginx-light libnginx-mod-rtmp
  python3 python3-venv python3-pip procps psmisc
  # The Python shmring Writer's full fences (libatomic through ctypes) for honoring leases.
  libatomic1
  python3-gi gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0
  # Screencast bridge and its tests: a headless GNOME compositor as the source, weston as the target.
  mutter weston
  # WebRTC agent (ICE needs libnice's plugin) and its tests: TURN, a browser, a second viewer.
  gstreamer1.0-nice coturn chromium
)
# The real-module harness: a qemu guest running Debian's kernel with v4l2loopback.
GUEST_PKGS=(
  qemu-system-x86 busybox-static kmod cpio
  linux-image-amd64 linux-headers-amd64 dkms v4l2loopback-dkms
)

want=("${BUILD_PKGS[@]}" "${RUNTIME_PKGS[@]}")
if [ "${VCAMBRIDGE_SKIP_GUEST:-0}" != "1" ]; then want+=("${GUEST_PKGS[@]}"); fi

missing=()
for p in "${want[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Python side of the tests: PyAV (FFmpeg 8 with libx265/SVT-AV1/libvpx) publishes Enhanced RTMP.
VENV="${VCAMBRIDGE_VENV:-$(cd "$(dirname "$0")/.." && pwd)/target/venv}"
if [ ! -x "$VENV/bin/python" ]; then
  if ! python3 -m venv "$VENV"; then
    rm -rf "$VENV"
    echo "install-deps: '$(command -v python3) -m venv $VENV' failed (see above); free disk:" \
      "$(df -Ph "$(dirname "$VENV")" | awk 'NR == 2 { print $4 }'). Check the disk and python3-venv." >&2
    exit 1
  fi
fi
# aiortc (+ websockets) runs the WebRTC agent benchmark's reference agent
# (pipelines/webrtc-agent/bench); aiortc 1.16 accepts av >=14,<20.
if ! "$VENV/bin/python" -c 'import av, numpy, aiortc, websockets' 2>/dev/null; then
  "$VENV/bin/pip" install -q 'av>=14' numpy 'aiortc==1.16.0' 'websockets>=13,<18'
fi

# The browser tests drive Debian's chromium with playwright-core (npm, pinned in package-lock).
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
if ! command -v npm >/dev/null 2>&1; then
  echo "install-deps: installing nodejs and npm" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends nodejs npm
fi
if [ ! -d "$ROOT/tests/webrtc/node_modules/playwright-core" ]; then
  (cd "$ROOT/tests/webrtc" && npm ci --no-audit --no-fund --silent)
fi
