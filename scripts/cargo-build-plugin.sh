#!/usr/bin/env bash
# meson -> cargo bridge: build one plugin crate and copy its .so to meson's output path.
# usage: cargo-build-plugin.sh CARGO SOURCE_ROOT TARGET_DIR PROFILE PLUGIN OUTPUT
set -euo pipefail
cargo="$1" src="$2" target_dir="$3" profile="$4" plugin="$5" output="$6"
args=(build --locked --manifest-path "$src/Cargo.toml" --target-dir "$target_dir" -p "gst-plugin-$plugin")
if [ "$profile" = release ]; then args+=(--release); fi
"$cargo" "${args[@]}"
cp -f "$target_dir/$profile/libgst$plugin.so" "$output"
