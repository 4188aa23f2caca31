#!/usr/bin/env bash
# README command 2: install what is missing, build, lint and run every test.
#   tests/run-all.sh            everything (host tests, then the v4l2loopback guest harness)
#   SKIP_GUEST=1 tests/run-all.sh   host tests only
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

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

if [ "${SKIP_GUEST:-0}" != "1" ]; then
  step "v4l2loopback guest harness (qemu, real kernel module)"
  "$ROOT/tests/guest/run.sh"
fi

step "all tests passed"
