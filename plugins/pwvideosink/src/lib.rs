// SPDX-License-Identifier: MPL-2.0
#![allow(clippy::non_send_fields_in_send_ty)]

//! PipeWire Video/Source camera node.

use gst::glib;

pub mod format;
mod pwvideosink;

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    pwvideosink::register(plugin)
}

gst::plugin_define!(
    pwvideosink,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    concat!(env!("CARGO_PKG_VERSION"), "-", env!("COMMIT_ID")),
    "MPL-2.0",
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_REPOSITORY"),
    env!("BUILD_REL_DATE")
);
