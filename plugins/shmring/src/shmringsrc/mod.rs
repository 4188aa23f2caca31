// SPDX-License-Identifier: MPL-2.0
/**
 * SECTION:element-shmringsrc
 *
 * Reads frames from a shared-memory ring written by shmringsink (or by any program following
 * the layout in the plugin README, e.g. the Python module `shmring.py`). Live source: outputs
 * the writer's caps (renegotiating when they change) and the writer's timestamps shifted onto
 * this pipeline's running time. It can start before the writer exists (waits up to `timeout`),
 * follows writer restarts, and skips frames it was too slow to read (never blocking the writer).
 *
 * ## Example launch line
 * ```sh
 * gst-launch-1.0 shmringsrc shm-name=/vcam0 ! videoconvert ! autovideosink
 * ```
 */
use gst::glib;
use gst::prelude::*;

mod imp;

glib::wrapper! {
    pub struct ShmRingSrc(ObjectSubclass<imp::ShmRingSrc>) @extends gst_base::PushSrc, gst_base::BaseSrc, gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "shmringsrc",
        gst::Rank::NONE,
        ShmRingSrc::static_type(),
    )
}
