// SPDX-License-Identifier: MPL-2.0
#![allow(clippy::non_send_fields_in_send_ty)]

//! POSIX shared-memory ring sink and source.

use gst::glib;

pub mod framepool;
pub mod ring;
pub mod shm;
mod shmringsink;
mod shmringsrc;
pub mod sigbus;
mod slotpool;
pub mod writer;
mod zerocopy;

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    shmringsink::register(plugin)?;
    shmringsrc::register(plugin)?;
    Ok(())
}

gst::plugin_define!(
    shmring,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    concat!(env!("CARGO_PKG_VERSION"), "-", env!("COMMIT_ID")),
    "MPL-2.0",
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_REPOSITORY"),
    env!("BUILD_REL_DATE")
);
