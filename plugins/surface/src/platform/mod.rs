// SPDX-License-Identifier: MPL-2.0

//! The platform seam: everything that differs between operating systems.
//!
//! The elements only use the types re-exported here:
//!
//! * [`SurfaceMemory`] — a shareable block of memory the writer owns (Linux: a sealed memfd).
//! * [`Mapping`] — a process-local view of a received surface (Linux: `mmap` of the fd).
//! * [`SurfaceHandle`] — how a surface travels (Linux: a file descriptor) and
//!   [`surface_identity`], which says whether two handles are the same surface (Linux: inode).
//! * [`Listener`] / [`Channel`] — the rendezvous point at `socket-path` and one writer↔reader
//!   connection carrying [`crate::wire`] messages, with an optional surface handle attached
//!   (Linux: `SOCK_SEQPACKET` Unix socket, handles as `SCM_RIGHTS`). Sends never block.
//! * [`Waker`] — wakes a thread blocked in [`wait_readable`] (Linux: eventfd).
//!
//! A macOS backend would provide the same names (IOSurface + a mach port or XPC connection)
//! in a sibling module; the wire protocol and the elements stay as they are.

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub use linux::*;
