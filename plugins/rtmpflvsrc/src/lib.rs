// SPDX-License-Identifier: MPL-2.0
#![allow(clippy::non_send_fields_in_send_ty)]

//! RTMP server inside a GStreamer source element.
//!
//! The protocol work happens in plain-Rust modules without GStreamer types ([`flv`],
//! [`timestamps`], [`session`]); `rtmpflvsrc` adapts them to pads and properties.

use gst::glib;

pub mod flv;
mod rtmpflvsrc;
pub mod session;
pub mod timestamps;

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    rtmpflvsrc::register(plugin)
}

gst::plugin_define!(
    rtmpflvsrc,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    concat!(env!("CARGO_PKG_VERSION"), "-", env!("COMMIT_ID")),
    "MPL-2.0",
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_REPOSITORY"),
    env!("BUILD_REL_DATE")
);
