#!/usr/bin/env bash
# Soak test (not part of CI): one long-running process ingests RTMP and serves a shared-memory
# ring and a surface socket, while publishers reconnect and readers come and go. Every minute it
# logs the process's RSS and open fds; at the end it says whether both stayed flat.
#
#   tests/soak.sh                  60 minutes (the README's figures)
#   tests/soak.sh --minutes 5      shorter
#   tests/soak.sh --no-build       use the release plugins already built
#
# The process under test: rtmpflvsrc -> decodebin -> tee -> shmringsink + surfacesink (release
# build). Around it: an ffmpeg publisher that publishes for 55 s and reconnects each minute; a
# shmringsrc reader and a surfacesrc reader that each take 150 frames, exit and come back every
# 20 s. Logs and a TSV of the samples go to target/soak/.
# Exit status: 0 if RSS grew less than 16 MiB and the fd count by at most 4 from minute 2 (after
# warm-up) to the end, and every reader and publisher cycle succeeded; 1 otherwise.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
MINUTES=60
BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) MINUTES="$2"; shift ;;
    --no-build) BUILD=0 ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

OUT="$ROOT/target/soak"
mkdir -p "$OUT"
LOG="$OUT/soak.log"
TSV="$OUT/samples.tsv"
: >"$LOG"
say() { printf '[soak %s] %s\n' "$(date -u +%T)" "$*" | tee -a "$LOG" >&2; }

if [ "$BUILD" = 1 ]; then
  (cd "$ROOT" && cargo build --release --locked --workspace --lib)
fi
export GST_PLUGIN_PATH="${CARGO_TARGET_DIR:-$ROOT/target}/release"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
SHM="vcb-soak-$$"
SOCK="$OUT/surface-$$.sock"
rm -f "$SOCK"

PIDS=()
cleanup() {
  # The publisher and reader loops are subshells: their current child goes with them.
  # (stopped first, so a loop cannot start its next child in between)
  for p in "${PIDS[@]}"; do
    kill -STOP "$p" 2>/dev/null || true
    pkill -TERM -P "$p" 2>/dev/null || true
    kill -TERM "$p" 2>/dev/null || true
    kill -CONT "$p" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -f "/dev/shm/$SHM" "$SOCK"
}
trap cleanup EXIT INT TERM

gst-launch-1.0 -q rtmpflvsrc name=src port="$PORT" \
  src.video ! queue ! decodebin ! videoconvert ! video/x-raw,format=I420 ! tee name=t \
  t. ! queue ! shmringsink shm-name="$SHM" \
  t. ! queue ! surfacesink socket-path="$SOCK" \
  src.audio ! queue ! fakesink sync=false async=false >"$OUT/main.log" 2>&1 &
MAIN=$!
PIDS+=("$MAIN")
say "process under test: pid $MAIN, rtmp://127.0.0.1:$PORT/live, ring $SHM, surface $SOCK"
for _ in $(seq 1 100); do
  ss -Hltn "sport = :$PORT" | grep -q LISTEN && break
  sleep 0.1
done

fail_count="$OUT/failures"
: >"$OUT/events"
: >"$fail_count"
# Publisher: 55 s of 640x360 H.264 + AAC, then a new connection, until the end.
(
  while true; do
    if ! ffmpeg -hide_banner -loglevel error -nostdin -re -f lavfi -i testsrc2=size=640x360:rate=30 \
        -f lavfi -i sine=frequency=440:sample_rate=48000 -t 55 -c:v libx264 -preset ultrafast \
        -tune zerolatency -g 60 -pix_fmt yuv420p -c:a aac -f flv "rtmp://127.0.0.1:$PORT/live/soak" \
        >>"$OUT/publisher.log" 2>&1; then
      echo "publisher $(date -u +%T)" >>"$fail_count"
    fi
    echo "publish $(date -u +%T)" >>"$OUT/events"
    sleep 5
  done
) &
PIDS+=("$!")
# Readers: 150 frames each, then gone for a while, then back.
reader() { # <name> <source element and properties...>
  local name="$1"; shift
  while true; do
    if ! timeout 60 gst-launch-1.0 -q "$@" num-buffers=150 ! fakesink >>"$OUT/$name.log" 2>&1; then
      echo "$name $(date -u +%T)" >>"$fail_count"
    fi
    echo "$name $(date -u +%T)" >>"$OUT/events"
    sleep 15
  done
}
sleep 3
reader ring shmringsrc shm-name="$SHM" timeout=20000 &
PIDS+=("$!")
reader surface surfacesrc socket-path="$SOCK" &
PIDS+=("$!")

printf 'minute\trss_kib\tfds\tthreads\tpublishes\treader_cycles\tfailures\n' >"$TSV"
sample() { # <minute>
  local rss fds threads
  rss="$(awk '/^VmRSS/{print $2}' "/proc/$MAIN/status")"
  threads="$(awk '/^Threads/{print $2}' "/proc/$MAIN/status")"
  fds="$(ls "/proc/$MAIN/fd" | wc -l)"
  local pubs readers fails
  pubs="$(grep -c '^publish' "$OUT/events" 2>/dev/null || true)"
  readers="$(grep -c -E '^(ring|surface)' "$OUT/events" 2>/dev/null || true)"
  fails="$(wc -l <"$fail_count")"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$rss" "$fds" "$threads" "${pubs:-0}" "${readers:-0}" "$fails" >>"$TSV"
  say "minute $1: RSS $((rss / 1024)) MiB, $fds fds, $threads threads, ${pubs:-0} publishes, ${readers:-0} reader cycles, $fails failures"
}

for m in $(seq 1 "$MINUTES"); do
  sleep 60
  if ! kill -0 "$MAIN" 2>/dev/null; then
    say "the process under test died; its log:"; cat "$OUT/main.log" >&2; exit 1
  fi
  sample "$m"
done

# Verdict: from minute 2 (warmed up) to the end.
read -r rss0 fds0 < <(awk -F'\t' 'NR==3{print $2, $3}' "$TSV") || true
[ -n "${rss0:-}" ] || read -r rss0 fds0 < <(awk -F'\t' 'NR==2{print $2, $3}' "$TSV")
read -r rss1 fds1 fails < <(awk -F'\t' 'END{print $2, $3, $7}' "$TSV")
say "RSS $((rss0 / 1024)) -> $((rss1 / 1024)) MiB, fds $fds0 -> $fds1, failures $fails (samples: $TSV)"
if [ $((rss1 - rss0)) -lt $((16 * 1024)) ] && [ $((fds1 - fds0)) -le 4 ] && [ "$fails" = 0 ]; then
  say "flat: passed"
else
  say "NOT flat or failures: see $OUT"; exit 1
fi
