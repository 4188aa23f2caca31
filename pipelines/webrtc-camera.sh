#!/usr/bin/env bash
# README command — a camera watched from a browser: starts the WebRTC signalling backend and the
# device agent on a video source, then prints the page to open.
#
#   pipelines/webrtc-camera.sh                      a test pattern, backend on 127.0.0.1:8000
#   pipelines/webrtc-camera.sh --source 'v4l2src device=/dev/video0'
#   pipelines/webrtc-camera.sh --backend ws://HOST:8000/ws/device    use a running backend
#
# stdout carries one line, `viewer: http://HOST:PORT/?device=ID`, once the backend has accepted
# the device (with --backend: as soon as the agent runs; it keeps retrying until it gets in).
# Logs of the backend and the agent go to stderr, prefixed [backend] and [agent].
#
# One Ctrl-C (SIGINT) or SIGTERM stops the job and everything it started within 2 s (exit 0).
# If the backend or the agent dies, the other is stopped and the script exits 1 with its last
# log lines.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

LISTEN=127.0.0.1:8000
BACKEND_URL=""
DEVICE_ID=""
SOURCE="videotestsrc is-live=true pattern=ball"
CODEC=""
WIDTH=""
HEIGHT=""
FPS=""
ICE_POLICY=""
TURN_URL=""
TURN_SECRET="${VCAMBRIDGE_TURN_SECRET:-}"
LISTEN_GIVEN=0
BUILD=auto
PROFILE=release
CONFIG_DIR="${XDG_CONFIG_HOME:-$HOME/.config}/vcambridge"
STATE_DIR="${XDG_STATE_HOME:-$HOME/.local/state}/vcambridge"
DEFAULT_DEVICE_ID=webrtc-camera

usage() {
  sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
  cat <<EOF

Options:
  --listen ADDR:PORT   address of the backend this script starts (default $LISTEN;
                       0.0.0.0:8000 for other machines; port 0 = a free port)
  --backend URL        use a running backend's device WebSocket (ws://HOST:PORT/ws/device)
                       instead of starting one
  --device-id ID       the device's id (default: the agent's remembered id from
                       $CONFIG_DIR/device-id if there is one, else $DEFAULT_DEVICE_ID)
  --source DESC        the video source, a gst-launch description with one unlinked video pad
                       (default '$SOURCE';
                       e.g. 'v4l2src device=/dev/video0', 'pipewiresrc path=42')
  --codec C            auto|h264|vp8, codec sent to viewers (agent default: auto)
  --width N, --height N, --fps N
                       size and rate sent (agent defaults: 1280, 720, 30)
  --ice-transport-policy P
                       all|relay (relay = TURN only; agent default: all)
  --turn-url turn:HOST:PORT
                       TURN server the started backend offers to both peers (needs a secret)
  --turn-secret S      its shared secret; prefer the environment variable VCAMBRIDGE_TURN_SECRET
                       (the script hands it to the backend through the environment)
  --no-build           never build; fail if the binaries are missing
  --build              run cargo build even if the binaries exist (after a source change)
  --profile P          cargo profile to build and run: release (default) or debug
  -h, --help           this text

Environment:
  VCAMBRIDGE_BIN_DIR   directory holding vcambridge-webrtc-backend and vcambridge-webrtc-agent;
                       when set, nothing is built (the tests point it at target/debug)
  XDG_STATE_HOME       the started backend keeps its registrations in
                       $STATE_DIR/webrtc-camera.json

Files: the binaries come from target/PROFILE; when they are missing the script installs the
Debian packages (scripts/install-deps.sh) and runs
  cargo build --release -p vcambridge-webrtc-agent -p vcambridge-webrtc-backend
EOF
}

say() { printf '[vcambridge] %s\n' "$*" >&2; }
bad_usage() { say "$* (see --help)"; exit 2; }

while [ $# -gt 0 ]; do
  opt="$1"
  val=""
  has_val=0
  case "$opt" in
    --*=*) val="${opt#*=}"; opt="${opt%%=*}"; has_val=1 ;;
  esac
  # value <option>: the option's value, from "--opt=V" or the next argument.
  case "$opt" in
    --listen|--backend|--device-id|--source|--codec|--width|--height|--fps|--turn-url|--turn-secret|--ice-transport-policy|--profile)
      if [ "$has_val" = 0 ]; then
        [ $# -ge 2 ] || bad_usage "$opt needs a value"
        val="$2"
        shift
      fi
      ;;
    *)
      [ "$has_val" = 0 ] || bad_usage "$opt takes no value"
      ;;
  esac
  case "$opt" in
    --listen) LISTEN="$val"; LISTEN_GIVEN=1 ;;
    --backend) BACKEND_URL="$val" ;;
    --device-id) DEVICE_ID="$val" ;;
    --source) SOURCE="$val" ;;
    --codec) CODEC="$val" ;;
    --width) WIDTH="$val" ;;
    --height) HEIGHT="$val" ;;
    --fps) FPS="$val" ;;
    --ice-transport-policy) ICE_POLICY="$val" ;;
    --turn-url) TURN_URL="$val" ;;
    --turn-secret) TURN_SECRET="$val" ;;
    --no-build) BUILD=never ;;
    --build) BUILD=always ;;
    --profile) PROFILE="$val" ;;
    -h|--help) usage; exit 0 ;;
    *) bad_usage "unknown option: $opt" ;;
  esac
  shift
done

# --- check the options ---------------------------------------------------------------------
positive() { [[ "$1" =~ ^[1-9][0-9]{0,5}$ ]]; }
for pair in "--width:$WIDTH" "--height:$HEIGHT" "--fps:$FPS"; do
  v="${pair#*:}"
  [ -z "$v" ] || positive "$v" || bad_usage "${pair%%:*} $v: expected a positive whole number"
done
case "$CODEC" in ""|auto|h264|vp8) ;; *) bad_usage "--codec $CODEC: expected auto, h264 or vp8" ;; esac
case "$ICE_POLICY" in ""|all|relay) ;; *) bad_usage "--ice-transport-policy $ICE_POLICY: expected all or relay" ;; esac
case "$PROFILE" in release|debug) ;; *) bad_usage "--profile $PROFILE: expected release or debug" ;; esac
[ -n "$SOURCE" ] || bad_usage "--source needs a gst-launch description, e.g. 'v4l2src device=/dev/video0'"

if [ -n "$BACKEND_URL" ]; then
  [ "$LISTEN_GIVEN" = 0 ] || bad_usage "--listen and --backend exclude each other: --listen is for the backend this script starts"
  [ -z "$TURN_URL" ] || bad_usage "--turn-url applies to the backend this script starts; with --backend, give it to that backend"
  [[ "$BACKEND_URL" =~ ^(wss?)://([^/?#]+)(/[^?#]*)?/ws/device$ ]] ||
    bad_usage "--backend $BACKEND_URL: expected the backend's device WebSocket, ws://HOST:PORT/ws/device"
else
  [[ "$LISTEN" =~ ^(.+):([0-9]{1,5})$ ]] && [ "${BASH_REMATCH[2]}" -le 65535 ] ||
    bad_usage "--listen $LISTEN: expected ADDR:PORT, e.g. 127.0.0.1:8000 or 0.0.0.0:8000"
  if [ -n "$TURN_URL" ] && [ -z "$TURN_SECRET" ]; then
    bad_usage "--turn-url needs the TURN server's shared secret: --turn-secret S or VCAMBRIDGE_TURN_SECRET"
  fi
fi

if [ -z "$DEVICE_ID" ]; then
  # The agent remembers a generated id here; a camera keeps its id (and its viewer URL) that way.
  DEVICE_ID="$(head -n 1 "$CONFIG_DIR/device-id" 2>/dev/null | tr -d '[:space:]' || true)"
  [ -n "$DEVICE_ID" ] || DEVICE_ID="$DEFAULT_DEVICE_ID"
fi
[[ "$DEVICE_ID" =~ ^[A-Za-z0-9._~:@+=-]{1,128}$ ]] ||
  bad_usage "--device-id '$DEVICE_ID': use 1 to 128 letters, digits and . _ ~ : @ + = -"

# --- the binaries --------------------------------------------------------------------------
BACKEND_NAME=vcambridge-webrtc-backend
AGENT_NAME=vcambridge-webrtc-agent
built() { [ -x "$BIN_DIR/$BACKEND_NAME" ] && [ -x "$BIN_DIR/$AGENT_NAME" ]; }
if [ -n "${VCAMBRIDGE_BIN_DIR:-}" ]; then
  BIN_DIR="$VCAMBRIDGE_BIN_DIR"
  if ! built; then
    say "$BIN_DIR (VCAMBRIDGE_BIN_DIR) lacks $BACKEND_NAME or $AGENT_NAME: build them with" \
      "\`cargo build -p $AGENT_NAME -p $BACKEND_NAME\` or unset VCAMBRIDGE_BIN_DIR"
    exit 1
  fi
else
  BIN_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE"
  if [ "$BUILD" = always ] || { [ "$BUILD" = auto ] && ! built; }; then
    command -v cargo >/dev/null 2>&1 || {
      say "cargo is not installed: install Rust (https://rustup.rs) to build $AGENT_NAME and $BACKEND_NAME"
      exit 1
    }
    VCAMBRIDGE_SKIP_GUEST=1 "$ROOT/scripts/install-deps.sh"
    say "building the WebRTC agent and backend ($PROFILE)"
    PROFILE_ARGS=(--release)
    [ "$PROFILE" = debug ] && PROFILE_ARGS=()
    (cd "$ROOT" && cargo build "${PROFILE_ARGS[@]}" --locked -p "$AGENT_NAME" -p "$BACKEND_NAME")
  fi
  if ! built; then
    RELEASE_FLAG=" --release"
    [ "$PROFILE" = debug ] && RELEASE_FLAG=""
    say "$BACKEND_NAME or $AGENT_NAME is missing from $BIN_DIR: run without --no-build, or" \
      "\`cargo build$RELEASE_FLAG -p $AGENT_NAME -p $BACKEND_NAME\`"
    exit 1
  fi
fi

# --- helpers -------------------------------------------------------------------------------
url_encode() { # percent-encodes everything but the unreserved characters
  local s="$1" out="" c i
  for ((i = 0; i < ${#s}; i++)); do
    c="${s:i:1}"
    case "$c" in
      [A-Za-z0-9._~-]) out+="$c" ;;
      *) out+="$(printf '%%%02X' "'$c")" ;;
    esac
  done
  printf '%s' "$out"
}
# A wildcard listen address is reached through loopback from here.
local_host() {
  case "$1" in 0.0.0.0) echo 127.0.0.1 ;; "[::]") echo "[::1]" ;; *) echo "$1" ;; esac
}

RUN_DIR="$(mktemp -d "${TMPDIR:-/tmp}/vcambridge-webrtc-camera.XXXXXX")"
BACKEND_LOG="$RUN_DIR/backend.log"
AGENT_LOG="$RUN_DIR/agent.log"
: >"$BACKEND_LOG"
: >"$AGENT_LOG"

# log_to <name> <file>: the child's output goes to stderr prefixed [name] and to <file> (for the
# last lines on failure). The filter ignores SIGINT/SIGTERM so a Ctrl-C on the terminal cannot
# close a child's output before the child has finished stopping; it ends when the child does.
log_to() {
  trap '' INT TERM
  exec sed -u -e "w $2" -e "s/^/[$1] /" >&2
}

# --- stopping ------------------------------------------------------------------------------
# The agent first (it ends its sessions through the backend, so viewers are told), then the
# backend; each gets SIGINT and is killed if it is still running after its grace time. Every
# wait is bounded: the script is gone within 2 s of a signal.
AGENT_GRACE_TENTHS=10
BACKEND_GRACE_TENTHS=7
BACKEND_PID=""
AGENT_PID=""
alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }
wait_gone() { # <tenths of a second> <pid>
  local n="$1"
  while [ "$n" -gt 0 ]; do
    alive "$2" || return 0
    sleep 0.1; n=$((n - 1))
  done
  return 1
}
stop_child() { # <name> <pid> <tenths of a second>
  alive "$2" || return 0
  kill -INT "$2" 2>/dev/null
  if ! wait_gone "$3" "$2"; then
    say "the $1 did not stop within $(($3 / 10)).$(($3 % 10)) s; killing it"
    kill -KILL "$2" 2>/dev/null
  fi
}
stop_all() {
  stop_child agent "$AGENT_PID" "$AGENT_GRACE_TENTHS"
  AGENT_PID=""
  stop_child backend "$BACKEND_PID" "$BACKEND_GRACE_TENTHS"
  BACKEND_PID=""
}
cleanup() {
  stop_all
  rm -rf "$RUN_DIR"
}
on_signal() {
  trap - INT TERM
  say "stopping"
  stop_all
  exit 0
}
# died <name> <log> <status>: report a child that ended by itself, stop the rest, exit 1.
died() {
  say "the $1 exited (status $3); its last lines:"
  tail -n 15 "$2" | sed "s/^/[vcambridge]   /" >&2
  [ $# -lt 4 ] || say "${*:4}"
  exit 1
}
trap on_signal INT TERM
trap cleanup EXIT

# --- the backend ---------------------------------------------------------------------------
if [ -z "$BACKEND_URL" ]; then
  mkdir -p "$STATE_DIR"
  BACKEND_ARGS=(--listen "$LISTEN" --register "$DEVICE_ID" --data "$STATE_DIR/webrtc-camera.json")
  [ -n "$TURN_URL" ] && BACKEND_ARGS+=(--turn-url "$TURN_URL")
  # setsid: a Ctrl-C on the terminal reaches only this script, which stops the children itself.
  # The secret travels in the environment, not on a command line other users can read.
  VCAMBRIDGE_TURN_SECRET="$TURN_SECRET" setsid "$BIN_DIR/$BACKEND_NAME" "${BACKEND_ARGS[@]}" \
    > >(log_to backend "$BACKEND_LOG") 2>&1 &
  BACKEND_PID=$!
  BOUND=""
  for _ in $(seq 1 100); do
    BOUND="$(sed -n 's/^listening on \(.*:[0-9]*\)$/\1/p;T;q' "$BACKEND_LOG")"
    [ -n "$BOUND" ] && break
    if ! alive "$BACKEND_PID"; then
      set +e; wait "$BACKEND_PID"; rc=$?; set -e
      BACKEND_PID=""
      died backend "$BACKEND_LOG" "$rc" "the backend could not start on $LISTEN: if the port is" \
        "busy, choose another with --listen ADDR:PORT, or use the backend running there with" \
        "--backend ws://$(local_host "${LISTEN%:*}"):${LISTEN##*:}/ws/device"
    fi
    sleep 0.1
  done
  [ -n "$BOUND" ] || { say "the backend did not say where it listens within 10 s"; exit 1; }
  HOST="$(local_host "${BOUND%:*}")"
  PORT="${BOUND##*:}"
  BACKEND_URL="ws://$HOST:$PORT/ws/device"
  VIEWER_URL="http://$HOST:$PORT/?device=$(url_encode "$DEVICE_ID")"
  if [ "$HOST" != "${BOUND%:*}" ]; then
    say "other machines: http://<this-host>:$PORT/?device=$(url_encode "$DEVICE_ID")"
  fi
else
  [[ "$BACKEND_URL" =~ ^(wss?)://(.*)/ws/device$ ]]
  SCHEME=http
  [ "${BASH_REMATCH[1]}" = wss ] && SCHEME=https
  VIEWER_URL="$SCHEME://${BASH_REMATCH[2]}/?device=$(url_encode "$DEVICE_ID")"
fi

# --- the agent -----------------------------------------------------------------------------
AGENT_ARGS=(--backend "$BACKEND_URL" --device-id "$DEVICE_ID" --source "$SOURCE")
[ -n "$CODEC" ] && AGENT_ARGS+=(--codec "$CODEC")
[ -n "$WIDTH" ] && AGENT_ARGS+=(--width "$WIDTH")
[ -n "$HEIGHT" ] && AGENT_ARGS+=(--height "$HEIGHT")
[ -n "$FPS" ] && AGENT_ARGS+=(--fps "$FPS")
[ -n "$ICE_POLICY" ] && AGENT_ARGS+=(--ice-transport-policy "$ICE_POLICY")
setsid "$BIN_DIR/$AGENT_NAME" "${AGENT_ARGS[@]}" > >(log_to agent "$AGENT_LOG") 2>&1 &
AGENT_PID=$!

# check_children: a child that ended by itself ends the job.
check_children() {
  local rc
  if ! alive "$AGENT_PID"; then
    set +e; wait "$AGENT_PID"; rc=$?; set -e
    AGENT_PID=""
    died agent "$AGENT_LOG" "$rc"
  fi
  if [ -n "$BACKEND_PID" ] && ! alive "$BACKEND_PID"; then
    set +e; wait "$BACKEND_PID"; rc=$?; set -e
    BACKEND_PID=""
    died backend "$BACKEND_LOG" "$rc"
  fi
}

if [ -n "$BACKEND_PID" ]; then
  # Our own backend: say where to look once the device is online there.
  online=0
  for _ in $(seq 1 200); do
    check_children
    if grep -qF "backend accepted device $DEVICE_ID" "$AGENT_LOG"; then online=1; break; fi
    sleep 0.1
  done
  [ "$online" = 1 ] || say "the backend has not accepted the device within 20 s (see the [agent] lines)"
else
  say "the agent connects to $BACKEND_URL (retrying until it gets in)"
fi
printf 'viewer: %s\n' "$VIEWER_URL"

# --- run until a signal or a child's end -------------------------------------------------
while :; do
  PIDS=("$AGENT_PID")
  [ -n "$BACKEND_PID" ] && PIDS+=("$BACKEND_PID")
  # `wait` returns early when a trapped signal arrives, so the handler runs at once.
  DEAD=""
  set +e; wait -n -p DEAD "${PIDS[@]}"; rc=$?; set -e
  if [ -n "$DEAD" ] && [ "$DEAD" = "$AGENT_PID" ]; then
    AGENT_PID=""
    died agent "$AGENT_LOG" "$rc"
  elif [ -n "$DEAD" ] && [ "$DEAD" = "$BACKEND_PID" ]; then
    BACKEND_PID=""
    died backend "$BACKEND_LOG" "$rc"
  fi
done
