//! Test harness helpers for the pipewire area (owned by that area's developer).
