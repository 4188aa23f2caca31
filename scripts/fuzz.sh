#!/usr/bin/env bash
# Runs the cargo-fuzz targets of every plugins/*/fuzz crate (or the named ones), one after the
# other, and prints what each did: executions, seconds, executions/s, corpus size, findings.
#
#   scripts/fuzz.sh                        every target, 60 s each
#   scripts/fuzz.sh --seconds 600 session  one target (by name) for 10 minutes
#   scripts/fuzz.sh --smoke                every target for 30 s (what CI runs)
#   scripts/fuzz.sh --runs 10000000 flv    until 10 M executions (no time limit)
#   scripts/fuzz.sh --grow ...             merge new interesting inputs into the kept corpus
#
# Each target starts from its corpus kept in the repository (plugins/<p>/fuzz/corpus/<target>),
# with the libFuzzer flags in plugins/<p>/fuzz/options/<target> if that file exists;
# inputs found during a run go to a scratch directory under target/fuzz/ and are merged
# (minimized, `-merge=1`) into the kept corpus only with --grow. Debug assertions are on (-a):
# integer overflows panic as in the debug-built plugins. FUZZ_SANITIZER=none runs without ASAN
# (faster; the default is address).
#
# Every run is appended to target/fuzz/results.tsv (date, target, runs, seconds, corpus, result).
# Exits non-zero if a target crashed, leaked, timed out or failed to build; the input that did it
# is printed (plugins/<p>/fuzz/artifacts/<target>/...). Needs cargo-fuzz (installed if missing)
# and runs on the stable toolchain (RUSTC_BOOTSTRAP=1 enables the nightly flags it needs).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SECONDS_EACH=60
RUNS=""
GROW=0
WANT=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) SECONDS_EACH="$2"; shift ;;
    --smoke) SECONDS_EACH=30 ;;
    --runs) RUNS="$2"; SECONDS_EACH=0; shift ;;
    --grow) GROW=1 ;;
    -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    *) WANT+=("$1") ;;
  esac
  shift
done

log() { printf 'fuzz: %s\n' "$*" >&2; }
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  log "installing cargo-fuzz (cargo install --locked cargo-fuzz)"
  cargo install --locked -q cargo-fuzz
fi
export RUSTC_BOOTSTRAP=1
SAN="${FUZZ_SANITIZER:-address}"
OUT="$ROOT/target/fuzz"
mkdir -p "$OUT"
RESULTS="$OUT/results.tsv"
# One build directory for every fuzz crate: the dependencies they share (GStreamer bindings,
# tokio, ...) are compiled once with the fuzzing flags.
BUILD_DIR="$OUT/build"
[ -f "$RESULTS" ] || printf 'date\ttarget\truns\tseconds\tcorpus\tresult\n' >"$RESULTS"

failed=0
summary=()
for dir in "$ROOT"/plugins/*/fuzz; do
  [ -f "$dir/Cargo.toml" ] || continue
  plugin="$(basename "$(dirname "$dir")")"
  mapfile -t targets < <(cd "$dir" && cargo fuzz list 2>/dev/null)
  selected=()
  for t in "${targets[@]}"; do
    if [ "${#WANT[@]}" -eq 0 ]; then selected+=("$t"); continue; fi
    for w in "${WANT[@]}"; do [ "$w" = "$t" ] || [ "$w" = "$plugin" ] && selected+=("$t"); done
  done
  [ "${#selected[@]}" -gt 0 ] || continue
  log "$plugin: building ${selected[*]} (sanitizer $SAN, debug assertions)"
  if ! (cd "$dir" && cargo fuzz build -a -s "$SAN" --target-dir "$BUILD_DIR" >"$OUT/$plugin-build.log" 2>&1); then
    cat "$OUT/$plugin-build.log" >&2
    log "$plugin: build failed"
    failed=1
    continue
  fi
  for t in "${selected[@]}"; do
    kept="$dir/corpus/$t"
    scratch="$OUT/corpus/$plugin/$t"
    mkdir -p "$kept" "$scratch" "$dir/artifacts/$t"
    args=(-print_final_stats=1 -timeout=10 -rss_limit_mb=2048)
    [ "$SECONDS_EACH" != 0 ] && args+=("-max_total_time=$SECONDS_EACH")
    [ -n "$RUNS" ] && args+=("-runs=$RUNS")
    # Per-target libFuzzer flags (e.g. -max_len) in plugins/<p>/fuzz/options/<target>.
    if [ -f "$dir/options/$t" ]; then read -r -a extra <"$dir/options/$t"; args+=("${extra[@]}"); fi
    runlog="$OUT/$plugin-$t.log"
    if [ -n "$RUNS" ]; then budget="$RUNS runs"; else budget="$SECONDS_EACH s"; fi
    log "$plugin/$t: $budget from $(ls "$kept" | wc -l) kept inputs"
    start=$(date +%s)
    set +e
    (cd "$dir" && cargo fuzz run -a -s "$SAN" --target-dir "$BUILD_DIR" "$t" "$scratch" "$kept" -- "${args[@]}") >"$runlog" 2>&1
    rc=$?
    set -e
    took=$(( $(date +%s) - start ))
    runs="$(sed -n 's/^Done \([0-9]*\) runs in.*/\1/p' "$runlog" | tail -n1)"
    [ -n "$runs" ] || runs="$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\)/\1/p' "$runlog" | tail -n1)"
    runs="${runs:-0}"
    if [ "$GROW" = 1 ]; then
      (cd "$dir" && cargo fuzz run -a -s "$SAN" --target-dir "$BUILD_DIR" "$t" "$kept" "$scratch" -- -merge=1) >"$runlog.merge" 2>&1 || true
    fi
    corpus=$(( $(ls "$kept" | wc -l) + $(ls "$scratch" | wc -l) ))
    if [ "$rc" = 0 ]; then
      result="ok"
    else
      artifact="$(grep -o 'artifacts/[^ ]*' "$runlog" | tail -n1 || true)"
      result="FAILED (exit $rc${artifact:+, input $dir/$artifact})"
      failed=1
      tail -n 40 "$runlog" >&2
    fi
    rate=$(( runs / (took > 0 ? took : 1) ))
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$plugin/$t" "$runs" "$took" "$corpus" "$result" >>"$RESULTS"
    summary+=("$(printf '%-32s %12s runs %6s s %8s/s  corpus %6s  %s' "$plugin/$t" "$runs" "$took" "$rate" "$corpus" "$result")")
  done
done

printf '\n%s\n' "fuzz summary (all runs so far: $RESULTS)"
printf '%s\n' "${summary[@]}"
exit $failed
