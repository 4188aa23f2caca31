// SPDX-License-Identifier: MPL-2.0
//! The V4L2 / v4l2loopback side of `v4l2loopsink`, in plain Rust (no GStreamer types), one
//! layer per file:
//!
//! * [`format`] — pure: the format table, [`FrameLayout`] (plane offsets, strides, the exact
//!   `bytesused`), the stride-repacking copy, solid colours, parsing placeholder colours and
//!   judging what the driver made of a requested format ([`check_driver_format`]).
//! * `abi` — the kernel structures and ioctl numbers (`videodev2.h`, `v4l2loopback.h`).
//! * [`device`] — [`LoopbackDevice`] owning a `/dev/videoN` fd, [`open_output`] with its
//!   precise [`DeviceProblem`]s, device listing, [`reopen_output`] for format changes.
//! * [`stream`] — [`OutputStream`]: mmap streaming output, one copy per frame.
//! * [`control`] — [`ControlDevice`]: v4l2loopback ≥ 0.13's `/dev/v4l2loopback`.
//! * `watch` — waiting for a device node to be closed or created (inotify), bounded.

mod abi;
pub mod control;
pub mod device;
pub mod format;
pub mod stream;
mod watch;

pub use abi::{CAP_STREAMING, CAP_VIDEO_CAPTURE, CAP_VIDEO_OUTPUT, PixFormat};
pub use control::{CONTROL_DEVICE, ControlDevice, LoopbackConfig, video_number};
pub use device::{
    Capability, DeviceProblem, FoundDevice, LoopbackDevice, REOPEN_GRACE, list_loopback_devices,
    modprobe_hint, module_version, open_output, reopen_output,
};
pub use format::{
    DriverFormatProblem, FORMATS, FormatInfo, FrameLayout, Layout, PlaneLayout,
    check_driver_format, fourcc, fourcc_str, parse_color,
};
pub use stream::{Lender, LentBuffer, OutputStream, monotonic_now};
pub use watch::wait_for_node;
