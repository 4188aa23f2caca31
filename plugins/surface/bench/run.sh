#!/usr/bin/env bash
# Issue-5 benchmark (not part of the test command): builds the release plugins, then runs
# shmsink/shmringsink/surfacesink -> their sources at 1920x1080 BGRx next to a memcpy.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../../.." && pwd)"
cd "$ROOT"
cargo build --release -p gst-plugin-surface
# The shmring row is skipped (with a note) if that plugin does not build.
cargo build --release -p gst-plugin-shmring || echo "note: gst-plugin-shmring did not build" >&2
cargo bench -p gst-plugin-surface --bench ipc
