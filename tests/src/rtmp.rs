//! Test harness helpers for the rtmp area (owned by that area's developer).
