#!/usr/bin/env bash
# SPDX-License-Identifier: MPL-2.0
# Benchmark: vcambridge-webrtc-agent against an aiortc agent, side by side in one run.
#
#   pipelines/webrtc-agent/bench/run.sh [--rounds 3] [--frames 60] [--hold 12] [--viewers 3]
#                                       [--codec vp8|h264] [--size 640x480] [--fps 30]
#                                       [--out DIR]
#
# One backend; per round, ours then aiortc, each: start the agent, 1 viewer, then --viewers
# viewers at once (vcb-webrtc-viewer --stamp), stop the agent. Same frames (pattern.py), size,
# rate, codec and a fixed bitrate (aiortc's default: VP8 500 kbit/s, H.264 1000 kbit/s) for
# both. Our agent reads stamp_source.py through shmringsrc; that process's CPU is counted as
# ours. Needs the binaries (cargo build -p vcambridge-webrtc-agent -p vcambridge-webrtc-backend
# -p vcambridge-tests --bins) and target/venv with aiortc (scripts/install-deps.sh).
# Results: DIR/results.jsonl and the table on stdout; logs in DIR. About 3.5 min with defaults.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
BIN="$ROOT/target/debug"
PY="${VCAMBRIDGE_VENV:-$ROOT/target/venv}/bin/python"

ROUNDS=3 FRAMES=60 HOLD=12 VIEWERS=3 CODEC=vp8 SIZE=640x480 FPS=30 OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS="$2"; shift 2 ;;
    --frames) FRAMES="$2"; shift 2 ;;
    --hold) HOLD="$2"; shift 2 ;;
    --viewers) VIEWERS="$2"; shift 2 ;;
    --codec) CODEC="$2"; shift 2 ;;
    --size) SIZE="$2"; shift 2 ;;
    --fps) FPS="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) sed -n '3,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$CODEC" in
  vp8) KBPS=500 ;;
  h264) KBPS=1000 ;;
  *) echo "run.sh: --codec must be vp8 or h264" >&2; exit 2 ;;
esac
W="${SIZE%x*}" H="${SIZE#*x}"

for b in vcambridge-webrtc-agent vcambridge-webrtc-backend vcb-webrtc-viewer; do
  if [ ! -x "$BIN/$b" ]; then
    echo "run.sh: $BIN/$b is missing; build it: cargo build -p vcambridge-webrtc-agent" \
      "-p vcambridge-webrtc-backend -p vcambridge-tests --bins" >&2
    exit 1
  fi
done
probe="$("$BIN/vcb-webrtc-viewer" --stamp 2>&1 || true)"
if [[ "$probe" == *"unknown argument"* ]]; then
  echo "run.sh: $BIN/vcb-webrtc-viewer has no --stamp; rebuild it (cargo build -p vcambridge-tests --bins)" >&2
  exit 1
fi
if ! "$PY" -c 'import aiortc, av, numpy, websockets' 2>/dev/null; then
  echo "run.sh: $PY lacks aiortc/av/numpy/websockets; run scripts/install-deps.sh" >&2
  exit 1
fi

OUT="${OUT:-$(mktemp -d /tmp/vcb-bench.XXXXXX)}"
mkdir -p "$OUT"
: > "$OUT/results.jsonl"
export GST_PLUGIN_PATH="$BIN${GST_PLUGIN_PATH:+:$GST_PLUGIN_PATH}"
RING="/vcb-bench-$$"
PIDS=()

forget() {  # a stopped pid leaves PIDS, so cleanup never signals a reused pid
  local keep=() p
  for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}
stop_pid() {  # SIGTERM, then SIGKILL after 5 s
  local pid="$1" i
  forget "$pid"
  kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
in_background() {  # runs a command as a child we can stop: bash runs traps only between commands
  "$@" &
  local pid=$! rc=0
  PIDS+=("$pid")
  wait "$pid" || rc=$?
  forget "$pid"
  return "$rc"
}
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  PIDS=()
  rm -f "/dev/shm$RING"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$BIN/vcambridge-webrtc-backend" --listen 127.0.0.1:0 --data "$OUT/registrations.json" \
  --register bench-ours --register bench-aiortc > "$OUT/backend.out" 2> "$OUT/backend.log" &
PIDS+=($!)
for _ in $(seq 100); do
  ADDR="$(sed -n 's/^listening on //p' "$OUT/backend.out" 2>/dev/null | head -1)"
  [ -n "$ADDR" ] && break
  sleep 0.1
done
[ -n "${ADDR:-}" ] || { echo "run.sh: the backend did not start (see $OUT/backend.log)" >&2; exit 1; }
echo "backend on $ADDR; $ROUNDS rounds, $SIZE@$FPS $CODEC at $KBPS kbit/s, 1 and $VIEWERS viewers," \
  "$FRAMES frames then $HOLD s each; output in $OUT" >&2

measure() {  # label round device agent_pid source_pid viewers
  local args=(run --label "$1" --round "$2" --device "$3" --agent-pid "$4" --viewers "$6"
    --viewer-bin "$BIN/vcb-webrtc-viewer" --backend "ws://$ADDR/ws/viewer" --frames "$FRAMES"
    --hold "$HOLD" --codec "$CODEC" --timeout 20 --out "$OUT/results.jsonl")
  [ -n "$5" ] && args+=(--source-pid "$5")
  in_background "$PY" "$HERE/measure.py" "${args[@]}" >&2 ||
    echo "run.sh: $1 round $2 with $6 viewers failed" >&2
}

agent_up() {  # device
  in_background "$PY" "$HERE/measure.py" wait-online --backend "http://$ADDR" --device "$1" \
    --timeout 15
}

for round in $(seq "$ROUNDS"); do
  # Ours: the stamped frames through a shm ring.
  "$PY" "$HERE/stamp_source.py" --name "$RING" --width "$W" --height "$H" --fps "$FPS" \
    --seconds 300 > "$OUT/source-$round.out" 2>&1 &
  SRC=$!; PIDS+=("$SRC")
  "$BIN/vcambridge-webrtc-agent" --backend "ws://$ADDR/ws/device" --device-id bench-ours \
    --no-register --source "shmringsrc shm-name=$RING ! videoconvert" --codec "$CODEC" \
    --width "$W" --height "$H" --fps "$FPS" \
    --bitrate "$KBPS" --min-bitrate "$KBPS" --max-bitrate "$KBPS" \
    > "$OUT/ours-$round.out" 2> "$OUT/ours-$round.log" &
  AG=$!; PIDS+=("$AG")
  if agent_up bench-ours; then
    measure ours "$round" bench-ours "$AG" "$SRC" 1
    measure ours "$round" bench-ours "$AG" "$SRC" "$VIEWERS"
  fi
  stop_pid "$AG"; stop_pid "$SRC"

  # aiortc: the same frames made in-process.
  "$PY" "$HERE/aiortc_agent.py" --backend "ws://$ADDR/ws/device" --device-id bench-aiortc \
    --codec "$CODEC" --width "$W" --height "$H" --fps "$FPS" \
    > "$OUT/aiortc-$round.out" 2> "$OUT/aiortc-$round.log" &
  AG=$!; PIDS+=("$AG")
  if agent_up bench-aiortc; then
    measure aiortc "$round" bench-aiortc "$AG" "" 1
    measure aiortc "$round" bench-aiortc "$AG" "" "$VIEWERS"
  fi
  stop_pid "$AG"
done

echo
"$PY" "$HERE/measure.py" table "$OUT/results.jsonl" --title \
  "aiortc $("$PY" -c 'import aiortc; print(aiortc.__version__)'), $SIZE@$FPS, $CODEC at $KBPS kbit/s, $FRAMES frames + $HOLD s hold"
