#!/usr/bin/env bash
# The screencast bridge's benchmark (not a test): the bridge vs the bare
# `pipewiresrc ! waylandsink` on the same Mutter screen-cast node, in one run; see ../bench.py.
#   pipelines/screencast/bench/run.sh [--rounds 3] [--seconds 8] [--size 1280x720]
set -euo pipefail
exec /usr/bin/python3 "$(dirname "$0")/../bench.py" "$@"
