#!/usr/bin/env bash
# meson -> cargo bridge: build the selected plugin crates in ONE cargo invocation (so cargo
# unifies features once and every target reuses the same build), then write one plugin's .so to
# meson's output path with its debug info split off into OUTPUT.debug (linked by .gnu_debuglink).
# usage: cargo-build-plugin.sh CARGO SOURCE_ROOT TARGET_DIR PROFILE PLUGINS(comma list) PLUGIN OUTPUT DEBUG_OUTPUT OBJCOPY
set -euo pipefail
cargo="$1" src="$2" target_dir="$3" profile="$4" plugins="$5" plugin="$6" output="$7" debug_output="$8" objcopy="$9"
args=(build --locked --manifest-path "$src/Cargo.toml" --target-dir "$target_dir" --lib)
IFS=',' read -r -a selected <<<"$plugins"
for p in "${selected[@]}"; do args+=(-p "gst-plugin-$p"); done
if [ "$profile" = release ]; then args+=(--release); fi
"$cargo" "${args[@]}"
built="$target_dir/$profile/libgst$plugin.so"
"$objcopy" --only-keep-debug "$built" "$debug_output"
# --add-gnu-debuglink reads the debug file from the current directory by its base name.
(cd "$(dirname "$debug_output")" && "$objcopy" --strip-debug --strip-unneeded \
  --add-gnu-debuglink="$(basename "$debug_output")" "$built" "$output")
