#!/usr/bin/env bash
# chunksink benchmark (not a test), everything in one run, medians over BENCH_RUNS:
#  1. capture from a real PipeWire node: CPU per second of 48 kHz stereo F32, the capturing process
#     `pipewiresrc ! chunksink` (1 s chunks) vs `pw-record` writing one WAV from the same node
#     (a null sink fed a sine by pw-play, captured from its monitor; private pipewire + wireplumber
#     on a private D-Bus);
#  2. the element alone, 64 channels F32 48 kHz (`audiotestsrc wave=silence ! chunksink` minus
#     the same into `fakesink`), in MB/s, next to a plain single-thread memcpy of the same buffers.
#
#   plugins/chunksink/bench/run.sh              build (release) and run
#   BENCH_SECONDS=10 BENCH_RUNS=3 plugins/chunksink/bench/run.sh --no-build
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../../.." && pwd)"
SECS="${BENCH_SECONDS:-10}"
RUNS="${BENCH_RUNS:-3}"
[ "${1:-}" = "--no-build" ] || (cd "$ROOT" && cargo build -q --release --locked -p gst-plugin-chunksink)
export GST_PLUGIN_PATH="${CARGO_TARGET_DIR:-$ROOT/target}/release"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/chunksink-bench.XXXXXX")"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM
say() { printf '%s\n' "$*" >&2; }
median() { sort -n | awk '{a[NR]=$1} END{print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
# CPU time of every thread of a process in ns (schedstat: ns resolution, unlike /proc/PID/stat).
cpu_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $1} END{printf "%.0f\n", s}'; }

# --- 1. PipeWire capture -------------------------------------------------------------------------
export XDG_RUNTIME_DIR="$WORK/run"
mkdir -m 0700 "$XDG_RUNTIME_DIR"
dbus-daemon --session --address="unix:path=$XDG_RUNTIME_DIR/bus" --nofork >/dev/null 2>&1 &
PIDS+=("$!")
export DBUS_SESSION_BUS_ADDRESS="unix:path=$XDG_RUNTIME_DIR/bus"
for _ in $(seq 50); do [ -S "$XDG_RUNTIME_DIR/bus" ] && break; sleep 0.1; done
pipewire >"$WORK/pipewire.log" 2>&1 &
PIDS+=("$!")
for _ in $(seq 50); do [ -S "$XDG_RUNTIME_DIR/pipewire-0" ] && break; sleep 0.1; done
wireplumber >"$WORK/wireplumber.log" 2>&1 &
PIDS+=("$!")
timeout 10 pw-cli create-node adapter '{ factory.name=support.null-audio-sink node.name=bench_sink media.class=Audio/Sink object.linger=true audio.position=[FL FR] }' >/dev/null
for _ in $(seq 100); do timeout 2 pw-cli ls Node 2>/dev/null | grep -q bench_sink && break; sleep 0.1; done
gst-launch-1.0 -q audiotestsrc freq=1000 volume=0.5 num-buffers=$(( (SECS * 2 * RUNS + 30) * 50 )) samplesperbuffer=960 \
  ! audio/x-raw,format=S16LE,rate=48000,channels=2 ! wavenc ! filesink location="$WORK/sine.wav"
pw-play --target bench_sink "$WORK/sine.wav" &
PIDS+=("$!")
sleep 1

# CPU (ms per second of audio) of the command while it captures for SECS seconds.
measure() { # <name> <command...>
  local name="$1"; shift
  "$@" >"$WORK/$name.log" 2>&1 &
  local pid=$!
  sleep 1
  local t0 c0 t1 c1
  t0=$(date +%s.%N); c0=$(cpu_ns "$pid")
  sleep "$SECS"
  t1=$(date +%s.%N); c1=$(cpu_ns "$pid")
  kill -INT "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  awk -v c="$((c1 - c0))" -v t0="$t0" -v t1="$t1" 'BEGIN{printf "%.2f\n", c / 1e6 / (t1 - t0)}'
}
ours=(); theirs=()
for r in $(seq "$RUNS"); do
  mkdir -p "$WORK/chunks$r"
  ours+=("$(measure "chunksink$r" gst-launch-1.0 -q -e pipewiresrc target-object=bench_sink \
    stream-properties=p,stream.capture.sink=true ! audio/x-raw,format=F32LE,rate=48000,channels=2 \
    ! chunksink directory="$WORK/chunks$r" chunk-duration=1000000000)")
  theirs+=("$(measure "pwrecord$r" pw-record --target bench_sink -P '{ stream.capture.sink=true }' \
    --format f32 --rate 48000 --channels 2 "$WORK/pwrecord$r.wav")")
  [ -n "$(ls "$WORK/chunks$r")" ] || { say "chunksink wrote nothing: $(cat "$WORK/chunksink$r.log")"; exit 1; }
  [ -s "$WORK/pwrecord$r.wav" ] || { say "pw-record wrote nothing: $(cat "$WORK/pwrecord$r.log")"; exit 1; }
done
m_ours=$(printf '%s\n' "${ours[@]}" | median)
m_theirs=$(printf '%s\n' "${theirs[@]}" | median)

# --- 2. the element alone, 64 channels -------------------------------------------------------------
BUFS=$(( SECS * 100 ))   # 4800-frame buffers: SECS*10 s of 64-channel audio
BYTES=$(( BUFS * 4800 * 64 * 4 ))
elapsed() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N); awk -v a="$t0" -v b="$t1" 'BEGIN{print b - a}'; }
SRC=(audiotestsrc wave=silence num-buffers="$BUFS" samplesperbuffer=4800 ! audio/x-raw,format=F32LE,rate=48000,channels=64)
sink_mbs=(); memcpy_mbs=()
for r in $(seq "$RUNS"); do
  mkdir -p "$WORK/c64-$r"
  base=$(elapsed gst-launch-1.0 -q "${SRC[@]}" ! fakesink)
  with=$(elapsed gst-launch-1.0 -q "${SRC[@]}" ! chunksink directory="$WORK/c64-$r" chunk-size=67108864 max-chunks=3)
  sink_mbs+=("$(awk -v b="$BYTES" -v w="$with" -v f="$base" 'BEGIN{d = w - f; if (d < 0.001) d = 0.001; printf "%.0f\n", b / d / 1e6}')")
  rm -rf "$WORK/c64-$r"
  memcpy_mbs+=("$(python3 - <<'PY'
import time
# One 4800-frame buffer copied to successive places of a 256 MiB destination (touched first),
# so the copy goes to memory, not to a cache-resident buffer.
n = 4800 * 64 * 4
src = bytearray(b"\x01" * n)
dst = bytearray(256 << 20)
slots = len(dst) // n
v = memoryview(dst)
t = time.perf_counter(); k = 2000
for i in range(k):
    o = (i % slots) * n
    v[o:o + n] = src
print("%.0f" % (n * k / (time.perf_counter() - t) / 1e6))
PY
)")
done
m_sink=$(printf '%s\n' "${sink_mbs[@]}" | median)
m_memcpy=$(printf '%s\n' "${memcpy_mbs[@]}" | median)

echo
python3 "$ROOT/scripts/bench_report.py" \
  --title "chunksink: PipeWire capture ${SECS} s per run; the element alone at 64 ch" \
  --rounds "$RUNS" --columns "chunksink,pw-record,memcpy" \
  --row "capture CPU, 48 kHz F32 stereo (ms per s of audio)=$m_ours,$m_theirs,-" \
  --row "element alone, 64 ch F32 48 kHz (MB/s)=$m_sink,-,$m_memcpy" \
  --note "runs: chunksink CPU ${ours[*]}; pw-record CPU ${theirs[*]}; chunksink MB/s ${sink_mbs[*]}; memcpy MB/s ${memcpy_mbs[*]}"
