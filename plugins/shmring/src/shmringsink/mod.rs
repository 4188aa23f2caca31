// SPDX-License-Identifier: MPL-2.0
/**
 * SECTION:element-shmringsink
 *
 * Publishes buffers into a POSIX shared-memory ring (layout documented in the plugin README) that
 * any process can read with `mmap` alone: shmringsrc, the Python module `shmring.py`, or C.
 * One writer, any number of readers; the writer never waits for a reader. Caps travel in the
 * ring. Upstream elements that accept the proposed buffer pool write straight into the ring
 * (no copy).
 *
 * ## Example launch line
 * ```sh
 * gst-launch-1.0 videotestsrc is-live=true ! video/x-raw,format=BGRx,width=640,height=480 ! shmringsink shm-name=/vcam0
 * ```
 */
use gst::glib;
use gst::prelude::*;

mod imp;

glib::wrapper! {
    pub struct ShmRingSink(ObjectSubclass<imp::ShmRingSink>) @extends gst_base::BaseSink, gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "shmringsink",
        gst::Rank::NONE,
        ShmRingSink::static_type(),
    )
}
