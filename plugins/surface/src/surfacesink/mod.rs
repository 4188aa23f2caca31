// SPDX-License-Identifier: MPL-2.0

/**
 * SECTION:element-surfacesink
 *
 * Publishes frames to other processes as shared memory surfaces (memfd, or the upstream
 * DMA-BUF/memfd itself) over a Unix socket: each surface's fd is sent once per reader, then
 * every frame is a small record naming the surface. Readers release surfaces explicitly; slow,
 * stuck or dead readers are skipped, evicted or dropped — the writer never waits for them.
 *
 * Upstream that accepts the proposed pool writes straight into memfd surfaces (0 copies);
 * other memory is copied once into a surface. The `stats` property counts both.
 *
 * ## Example launch line
 * ```text
 * gst-launch-1.0 videotestsrc is-live=true ! video/x-raw,format=BGRx,width=640,height=480 ! surfacesink socket-path=/tmp/cam.sock
 * gst-launch-1.0 surfacesrc socket-path=/tmp/cam.sock ! videoconvert ! autovideosink
 * ```
 */
use gst::glib;
use gst::prelude::*;

mod imp;
pub mod pool;

glib::wrapper! {
    pub struct SurfaceSink(ObjectSubclass<imp::SurfaceSink>) @extends gst_base::BaseSink, gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "surfacesink",
        gst::Rank::NONE,
        SurfaceSink::static_type(),
    )
}
