// SPDX-License-Identifier: MPL-2.0

/**
 * SECTION:element-pwvideosink
 *
 * Publishes raw video as a PipeWire camera: a `Video/Source` node with `media.role=Camera`
 * (overridable) that the xdg-desktop-portal Camera interface, browsers and `pipewiresrc` can
 * use. Offers the upstream format with a fixed size and frame rate, shares frames through
 * memfd buffers it lends upstream through the allocation query (upstream writes the frame
 * in place: no copy; other memory is copied), or passes upstream's DMA-BUFs through without a
 * copy when the consumer takes DMA-BUFs; drives the graph at the stream's rate when nothing
 * else does, drops frames cheaply while nobody is watching, survives consumers coming and
 * going and reconnects when the PipeWire daemon restarts.
 *
 * ## Example launch line
 * ```sh
 * gst-launch-1.0 videotestsrc is-live=true ! video/x-raw,width=1280,height=720 ! videoconvert ! \
 *     pwvideosink node-name=vcambridge node-description="vcambridge camera"
 * # elsewhere:
 * gst-launch-1.0 pipewiresrc target-object=vcambridge \
 *     stream-properties="props,media.type=Video" ! videoconvert ! autovideosink
 * ```
 */
use gst::glib;
use gst::prelude::*;

mod data_thread;
mod dmabuf;
mod imp;
mod lend;
mod loop_thread;
mod mailbox;
mod wake;

/// CLOCK_MONOTONIC in ns (PipeWire's clock: header timestamps, pacing).
fn monotonic_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

glib::wrapper! {
    pub struct PwVideoSink(ObjectSubclass<imp::PwVideoSink>)
        @extends gst_base::BaseSink, gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "pwvideosink",
        gst::Rank::NONE,
        PwVideoSink::static_type(),
    )
}
