//! Test harness helpers for the ipc area (owned by that area's developer).
