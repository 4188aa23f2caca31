// SPDX-License-Identifier: MPL-2.0
#![allow(clippy::non_send_fields_in_send_ty)]

//! Raw audio into fixed-size, pre-allocated, mmap'd WAV chunk files.

use gst::glib;

pub mod chunk;
mod chunksink;
mod files;
pub mod wav;

/// Lock a mutex, taking the data even if a panicking thread poisoned it.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

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
