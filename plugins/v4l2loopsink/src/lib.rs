// SPDX-License-Identifier: MPL-2.0
#![allow(clippy::non_send_fields_in_send_ty)]

//! v4l2loopback writer (virtual webcam).
//!
//! * `v4l2loopsink`: writes raw video to a v4l2loopback output device so that browsers and
//!   other apps can open it as a webcam.
//! * [`v4l2`]: the GStreamer-free V4L2 / v4l2loopback layer (formats, layouts, ioctls).

use gst::glib;

pub mod v4l2;
mod v4l2loopsink;

pub use v4l2loopsink::V4l2LoopSink;

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    v4l2loopsink::register(plugin)
}

gst::plugin_define!(
    v4l2loopsink,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    concat!(env!("CARGO_PKG_VERSION"), "-", env!("COMMIT_ID")),
    "MPL-2.0",
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_REPOSITORY"),
    env!("BUILD_REL_DATE")
);
