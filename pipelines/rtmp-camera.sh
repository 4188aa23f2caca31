#!/usr/bin/env bash
# README command 1 — the main job: receive an RTMP stream (OBS, MeldStudio, ffmpeg) with
# rtmpflvsrc and make it a camera.
#
#   pipelines/rtmp-camera.sh            wait for a publisher on rtmp://127.0.0.1:1935/live
#   pipelines/rtmp-camera.sh --demo     ... and publish a test stream into it with ffmpeg
#
# Where the video goes (first that applies, or force one with --sink):
#   v4l2      a v4l2loopback webcam (--device /dev/videoN, or a device labelled --label, or one
#             created through /dev/v4l2loopback on v4l2loopback >= 0.13)
#   pipewire  a PipeWire Video/Source camera node (when a PipeWire session is running)
#   window    a window (when a display exists)
#   terminal  frame-rate statistics on the terminal plus a PNG snapshot every 2 s
#
# One Ctrl-C (SIGINT) or SIGTERM stops the job and everything it started within 2 s (exit 0).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

ADDRESS=127.0.0.1
PORT=1935
APP=live
KEY=""
SINK=auto
DEVICE=""
LABEL="vcambridge"
NODE_NAME="vcambridge"
WIDTH=1280
HEIGHT=720
FPS=30
FORMAT=YUY2
LATENCY_MS=20
DEMO=0
DEMO_SECONDS=0
BUILD=1
PROFILE=release

usage() {
  sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
  cat <<EOF

Options:
  --demo               also start an ffmpeg test publisher (testsrc2 + sine, H.264/AAC)
  --demo-seconds N     end the demo publisher after N seconds, then the whole job (default: run until Ctrl-C)
  --address A          listen address (default $ADDRESS; 0.0.0.0 for other machines)
  --port N             listen port (default $PORT; 0 = a free port)
  --app NAME           RTMP application (default $APP)
  --key KEY            required stream key (default: any)
  --sink KIND          auto|v4l2|pipewire|window|terminal (default auto)
  --device PATH        v4l2loopback device to write (implies --sink v4l2)
  --label NAME         v4l2loopback card label to find or create (default $LABEL)
  --node-name NAME     PipeWire node name (default $NODE_NAME)
  --size WxH           camera size (default ${WIDTH}x${HEIGHT}; the picture is letterboxed)
  --fps N              most frames per second the camera gets (default $FPS), on average: a
                       faster publisher is thinned out, a slower one keeps its own rate (frames
                       are never repeated to fill a rate: that holds each frame back until the
                       next)
  --format FMT         raw format for the webcam (default $FORMAT)
  --latency MS         jitter allowance before frames are shown (default $LATENCY_MS: enough for a
                       publisher on this machine or the LAN; raise it for a publisher far away)
  --no-build           use the plugins already built (no install, no cargo build)
  --profile P          cargo profile to build and load: release (default) or debug

A bad value is refused with exit status 2 before anything is installed, built or started.
EOF
}

bad() { echo "rtmp-camera.sh: $* (see --help)" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --demo-seconds|--address|--port|--app|--key|--sink|--device|--label|--node-name|--size|--fps|--format|--latency|--profile)
      [ $# -ge 2 ] || bad "$1 needs a value" ;;
  esac
  case "$1" in
    --demo) DEMO=1 ;;
    --demo-seconds) DEMO_SECONDS="$2"; shift ;;
    --address) ADDRESS="$2"; shift ;;
    --port) PORT="$2"; shift ;;
    --app) APP="$2"; shift ;;
    --key) KEY="$2"; shift ;;
    --sink) SINK="$2"; shift ;;
    --device) DEVICE="$2"; SINK=v4l2; shift ;;
    --label) LABEL="$2"; shift ;;
    --node-name) NODE_NAME="$2"; shift ;;
    --size)
      [[ "$2" =~ ^([0-9]{1,5})x([0-9]{1,5})$ ]] || bad "--size must be WIDTHxHEIGHT (e.g. 1280x720), got '$2'"
      WIDTH=$((10#${BASH_REMATCH[1]})); HEIGHT=$((10#${BASH_REMATCH[2]})); shift ;;
    --fps) FPS="$2"; shift ;;
    --format) FORMAT="$2"; shift ;;
    --latency) LATENCY_MS="$2"; shift ;;
    --no-build) BUILD=0 ;;
    --profile) PROFILE="$2"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

# The values, checked before anything is installed, built or started: a bad one would
# otherwise surface as a parse error of the pipeline description, or as a camera nobody can
# open. `number VALUE MIN MAX` (decimal digits only).
number() {
  [[ "$1" =~ ^[0-9]{1,9}$ ]] && [ $((10#$1)) -ge "$2" ] && [ $((10#$1)) -le "$3" ]
}
number "$FPS" 1 1000 || bad "--fps must be a whole number of frames per second from 1 to 1000, got '$FPS'"
FPS=$((10#$FPS))
number "$PORT" 0 65535 || bad "--port must be a TCP port from 0 (any free one) to 65535, got '$PORT'"
PORT=$((10#$PORT))
number "$LATENCY_MS" 0 60000 || bad "--latency must be milliseconds from 0 to 60000, got '$LATENCY_MS'"
LATENCY_MS=$((10#$LATENCY_MS))
number "$DEMO_SECONDS" 0 999999999 || bad "--demo-seconds must be a whole number of seconds (0: until Ctrl-C), got '$DEMO_SECONDS'"
DEMO_SECONDS=$((10#$DEMO_SECONDS))
# Even sizes: YUY2, I420 and NV12 cameras carry chroma for pairs of pixels.
if ! number "$WIDTH" 2 16384 || ! number "$HEIGHT" 2 16384 || [ $((WIDTH % 2)) -ne 0 ] || [ $((HEIGHT % 2)) -ne 0 ]; then
  bad "--size must be even WIDTHxHEIGHT from 2x2 to 16384x16384, got '${WIDTH}x${HEIGHT}'"
fi
case "$SINK" in
  auto|v4l2|pipewire|window|terminal) ;;
  *) bad "--sink must be auto, v4l2, pipewire, window or terminal, got '$SINK'" ;;
esac
case "$PROFILE" in
  release|debug) ;;
  *) bad "--profile must be release or debug, got '$PROFILE'" ;;
esac

say() { printf '[vcambridge] %s\n' "$*" >&2; }

if [ "$PORT" = 0 ]; then
  # Resolve "any free port" here so the printed URL (and the demo publisher) can use it.
  PORT="$(python3 -c 'import socket,sys; s=socket.socket(); s.bind((sys.argv[1], 0)); print(s.getsockname()[1])' "$ADDRESS")"
fi

if [ "$BUILD" = 1 ]; then
  VCAMBRIDGE_SKIP_GUEST=1 "$ROOT/scripts/install-deps.sh"
  say "building the plugins ($PROFILE)"
  PROFILE_ARGS=(--release)
  [ "$PROFILE" = debug ] && PROFILE_ARGS=()
  (cd "$ROOT" && cargo build "${PROFILE_ARGS[@]}" --locked --workspace --lib)
fi
PLUGIN_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE"
export GST_PLUGIN_PATH="$PLUGIN_DIR${GST_PLUGIN_PATH:+:$GST_PLUGIN_PATH}"
if ! gst-inspect-1.0 rtmpflvsrc >/dev/null 2>&1; then
  say "rtmpflvsrc is not available from $PLUGIN_DIR (build failed?)"
  exit 1
fi

have_element() { gst-inspect-1.0 --exists "$1" 2>/dev/null; }

# --- hardware decoders: decodebin picks by rank; make sure a present one wins ---------------
HW_DECODERS=(vah264dec nvh264dec v4l2slh264dec v4l2h264dec vaapih264dec msdkh264dec)
RANKS=""
for d in "${HW_DECODERS[@]}"; do
  if have_element "$d"; then
    RANKS="${RANKS:+$RANKS,}$d:MAX"
    say "hardware H.264 decoder found: $d (preferred by decodebin)"
    break
  fi
done
if [ -n "$RANKS" ]; then
  export GST_PLUGIN_FEATURE_RANK="${GST_PLUGIN_FEATURE_RANK:+$GST_PLUGIN_FEATURE_RANK,}$RANKS"
else
  say "no hardware H.264 decoder found; decoding in software (avdec_h264)"
fi

# --- choose the output ---------------------------------------------------------------------
find_loopback() {
  # Print the /dev/videoN of a v4l2loopback device (labelled $LABEL if one is).
  local first="" dev name
  for sys in /sys/class/video4linux/video*; do
    [ -e "$sys" ] || continue
    dev="/dev/$(basename "$sys")"
    if v4l2-ctl -d "$dev" -D 2>/dev/null | grep -q "v4l2 loopback"; then
      name="$(cat "$sys/name" 2>/dev/null || true)"
      if [ "$name" = "$LABEL" ]; then echo "$dev"; return 0; fi
      [ -n "$first" ] || first="$dev"
    fi
  done
  [ -n "$first" ] && echo "$first"
}

pipewire_running() {
  command -v pw-cli >/dev/null 2>&1 && timeout 3 pw-cli info 0 >/dev/null 2>&1
}

MODPROBE_HINT="sudo modprobe v4l2loopback devices=1 video_nr=10 card_label=\"$LABEL\" exclusive_caps=1"
if [ -z "$DEVICE" ] && { [ "$SINK" = auto ] || [ "$SINK" = v4l2 ]; }; then
  DEVICE="$(find_loopback || true)"
fi
if [ "$SINK" = auto ]; then
  if [ -n "$DEVICE" ] || [ -e /dev/v4l2loopback ]; then
    SINK=v4l2
  elif pipewire_running; then
    say "no v4l2loopback device (for a webcam: $MODPROBE_HINT)"
    SINK=pipewire
  elif [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]; then
    SINK=window
  else
    SINK=terminal
  fi
fi

# The pipeline is built as gst-launch-1.0 arguments (one word per array element, so values with
# spaces need no quoting and no eval): gst-launch-1.0 then runs as our direct child.
# The rate: at most --fps, by dropping only. A plain videorate (duplicating up to a fixed rate)
# holds every frame until the next one arrives to decide, a frame interval of latency (33 ms at
# 30 fps, measured: configured latency 73 vs 40 ms); drop-only decides on the frame at hand.
CAMERA_CAPS="video/x-raw,width=$WIDTH,height=$HEIGHT,pixel-aspect-ratio=1/1"
CONVERT=(videoconvert ! videoscale add-borders=true ! videorate drop-only=true skip-to-first=true "max-rate=$FPS")
# The sinks render at the frame's time + --latency: `processing-deadline=0` because --latency
# (rtmpflvsrc's allowance) already covers the decode; GstBaseSink's default 20 ms deadline would
# add another 20 ms to every frame. A frame decoded later than that is shown as soon as it is
# ready (the sinks drop nothing for lateness).
SINK_TIMING=(processing-deadline=0)
VERBOSE=()
FILTER=(cat)
case "$SINK" in
  v4l2)
    if [ -n "$DEVICE" ]; then
      OUT=("${CONVERT[@]}" ! "$CAMERA_CAPS,format=$FORMAT" ! v4l2loopsink "device=$DEVICE" "${SINK_TIMING[@]}")
      say "webcam: $DEVICE — pick \"$(cat "/sys/class/video4linux/$(basename "$DEVICE")/name" 2>/dev/null || echo "$LABEL")\" in the browser's camera list"
    elif [ ! -e /dev/v4l2loopback ]; then
      say "no v4l2loopback device and no /dev/v4l2loopback control device; load the module: $MODPROBE_HINT"
      exit 1
    else
      OUT=("${CONVERT[@]}" ! "$CAMERA_CAPS,format=$FORMAT" ! v4l2loopsink create=true "card-label=$LABEL" "${SINK_TIMING[@]}")
      say "webcam: creating a v4l2loopback device labelled \"$LABEL\" — pick it in the browser's camera list"
    fi
    ;;
  pipewire)
    OUT=("${CONVERT[@]}" ! "$CAMERA_CAPS" ! pwvideosink "node-name=$NODE_NAME" "node-description=vcambridge camera" "${SINK_TIMING[@]}")
    say "PipeWire camera node: $NODE_NAME (shown as \"vcambridge camera\" in portal/browser camera lists)"
    ;;
  window)
    OUT=(videoconvert ! autovideosink)
    ;;
  terminal)
    SNAPDIR="$ROOT/target/snapshots"
    mkdir -p "$SNAPDIR"
    OUT=(videoconvert ! tee name=t
         t. ! queue ! fpsdisplaysink name=stats video-sink=fakesink text-overlay=false sync=false fps-update-interval=2000
         t. ! queue leaky=downstream max-size-buffers=2 ! videorate drop-only=true ! video/x-raw,framerate=1/2
            ! pngenc ! multifilesink "location=$SNAPDIR/frame-%05d.png" max-files=5)
    VERBOSE=(-v)
    FILTER=(sed -un 's/.*stats.*last-message = rendered: \([0-9]*\), dropped: \([0-9]*\), current: \([0-9.]*\), average: \([0-9.]*\).*/[vcambridge] frames \1  dropped \2  fps \3 (avg \4)/p; /ERROR\|WARNING\|Setting pipeline/p')
    say "no camera sink or display: printing stats; snapshots (every 2 s) in $SNAPDIR"
    ;;
  *) say "unknown --sink $SINK"; exit 2 ;;
esac

URL="rtmp://$ADDRESS:$PORT/$APP${KEY:+/$KEY}"
[ "$ADDRESS" = 0.0.0.0 ] && URL="rtmp://<this-host>:$PORT/$APP${KEY:+/$KEY}"
say "publish to: $URL  (OBS: server rtmp://…/$APP, stream key ${KEY:-anything})"

KEY_PROP=()
[ -n "$KEY" ] && KEY_PROP=("stream-key=$KEY")
PIPELINE=(rtmpflvsrc name=src "address=$ADDRESS" "port=$PORT" "app=$APP" "latency=$LATENCY_MS" "${KEY_PROP[@]}"
  src.video ! queue max-size-time=2000000000 ! decodebin ! "${OUT[@]}"
  src.audio ! queue ! fakesink sync=false async=false)

# Stopping: EOS first (gst-launch-1.0 -e turns SIGINT into an EOS event; rtmpflvsrc ends its
# pads with or without a publisher), so sinks finish cleanly; whatever is still running after
# STOP_GRACE is killed. Every wait is bounded: the script is gone within ~2 s of a signal.
STOP_GRACE_TENTHS=15
PUBLISHER_PID=""
GST_PID=""
alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }
wait_gone() { # <tenths of a second> <pid>...
  local n="$1"; shift
  while [ "$n" -gt 0 ]; do
    local any=0
    for p in "$@"; do alive "$p" && any=1; done
    [ "$any" = 0 ] && return 0
    sleep 0.1; n=$((n - 1))
  done
  return 1
}
stop_all() {
  alive "$PUBLISHER_PID" && kill -TERM "$PUBLISHER_PID" 2>/dev/null
  alive "$GST_PID" && kill -INT "$GST_PID" 2>/dev/null
  if ! wait_gone "$STOP_GRACE_TENTHS" "$GST_PID" "$PUBLISHER_PID"; then
    alive "$GST_PID" && say "the pipeline did not stop after EOS; killing it"
    for p in "$GST_PID" "$PUBLISHER_PID"; do alive "$p" && kill -KILL "$p" 2>/dev/null; done
  fi
  # The output filter (a child of gst-launch-1.0) ends when gst-launch-1.0's output closes.
  wait 2>/dev/null || true
}
on_signal() {
  trap - INT TERM
  say "stopping"
  stop_all
  exit 0
}
trap on_signal INT TERM
trap stop_all EXIT

# setsid: a Ctrl-C on the terminal reaches only this script, which sends one SIGINT (a second
# one would make gst-launch-1.0 quit before EOS reached the sinks).
setsid gst-launch-1.0 -e "${VERBOSE[@]}" "${PIPELINE[@]}" > >("${FILTER[@]}") 2>&1 &
GST_PID=$!

if [ "$DEMO" = 1 ]; then
  # Publish once the server listens (checked with ss, so no probe connection is made).
  for _ in $(seq 1 100); do
    if ss -Hltn "sport = :$PORT" 2>/dev/null | grep -q LISTEN; then break; fi
    alive "$GST_PID" || { say "the pipeline exited before listening"; exit 1; }
    sleep 0.1
  done
  say "demo: publishing testsrc2 1280x720 H.264 + AAC with ffmpeg to rtmp://127.0.0.1:$PORT/$APP/${KEY:-demo}"
  DURATION=()
  [ "$DEMO_SECONDS" != 0 ] && DURATION=(-t "$DEMO_SECONDS")
  setsid ffmpeg -hide_banner -loglevel error -nostdin -re \
    -f lavfi -i "testsrc2=size=1280x720:rate=30" -f lavfi -i "sine=frequency=440:sample_rate=48000" \
    "${DURATION[@]}" -c:v libx264 -preset veryfast -tune zerolatency -g 60 -pix_fmt yuv420p \
    -c:a aac -b:a 128k -f flv "rtmp://127.0.0.1:$PORT/$APP/${KEY:-demo}" &
  PUBLISHER_PID=$!
  if [ "$DEMO_SECONDS" != 0 ]; then
    # `wait` returns early when a trapped signal arrives, so the handler runs at once.
    wait "$PUBLISHER_PID" || true
    PUBLISHER_PID=""
    say "demo: publisher finished after ${DEMO_SECONDS}s; stopping the pipeline"
    stop_all
    exit 0
  fi
fi

set +e
wait "$GST_PID"
rc=$?
set -e
GST_PID=""
exit "$rc"
