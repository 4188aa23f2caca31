// SPDX-License-Identifier: MPL-2.0
#![allow(clippy::non_send_fields_in_send_ty)]

//! Raw audio into fixed-size, pre-allocated, mmap'd WAV chunk files.

use gst::glib;

pub mod chunk;
mod chunksink;
mod files;
pub mod wav;

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    chunksink::register(plugin)
}

gst::plugin_define!(
    chunksink,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    concat!(env!("CARGO_PKG_VERSION"), "-", env!("COMMIT_ID")),
    "MPL-2.0",
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_REPOSITORY"),
    env!("BUILD_REL_DATE")
);
