#!/usr/bin/env bash
# meson -> cargo bridge: build the selected plugin crates in ONE cargo invocation (so cargo
# unifies features once and every target reuses the same build), then copy one plugin's .so to
# meson's output path.
# usage: cargo-build-plugin.sh CARGO SOURCE_ROOT TARGET_DIR PROFILE PLUGINS(comma list) PLUGIN OUTPUT
set -euo pipefail
cargo="$1" src="$2" target_dir="$3" profile="$4" plugins="$5" plugin="$6" output="$7"
args=(build --locked --manifest-path "$src/Cargo.toml" --target-dir "$target_dir" --lib)
IFS=',' read -r -a selected <<<"$plugins"
for p in "${selected[@]}"; do args+=(-p "gst-plugin-$p"); done
if [ "$profile" = release ]; then args+=(--release); fi
"$cargo" "${args[@]}"
cp -f "$target_dir/$profile/libgst$plugin.so" "$output"
