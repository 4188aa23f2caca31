// SPDX-License-Identifier: MPL-2.0
#![allow(clippy::non_send_fields_in_send_ty)]

//! Zero-copy memfd/DMA-BUF surfaces between processes.

use gst::glib;

pub mod hub;
pub mod platform;
mod surfacesink;
mod surfacesrc;
pub mod wire;

pub use surfacesink::pool::SurfacePool;

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    surfacesink::register(plugin)?;
    surfacesrc::register(plugin)?;
    Ok(())
}

gst::plugin_define!(
    surface,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    concat!(env!("CARGO_PKG_VERSION"), "-", env!("COMMIT_ID")),
    "MPL-2.0",
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_REPOSITORY"),
    env!("BUILD_REL_DATE")
);
