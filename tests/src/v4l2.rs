//! Test harness helpers for the v4l2 area (owned by that area's developer).
