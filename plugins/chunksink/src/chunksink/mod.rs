// SPDX-License-Identifier: MPL-2.0
/**
 * SECTION:element-chunksink
 *
 * Writes raw audio into fixed-size WAV chunk files in a directory. Each file is created at its
 * full size ahead of time (on an I/O thread) and written through a shared mapping, so the
 * streaming thread only copies samples; the header's sizes follow every write, so each file is a
 * valid WAV at every moment (a SIGKILL leaves files every WAV reader opens). A full chunk is
 * announced with a `chunk-full` element message and a line in a JSON-lines index file; gaps
 * (DISCONT, timestamp jumps) are recorded there, and filled with silence only with `fill-gaps`.
 *
 * ## Example launch line
 * ```sh
 * mkdir -p /tmp/rec && gst-launch-1.0 -e audiotestsrc is-live=true ! audio/x-raw,format=F32LE,rate=48000,channels=2 ! chunksink directory=/tmp/rec chunk-duration=1000000000
 * ```
 */
use gst::glib;
use gst::prelude::*;

mod caps;
mod imp;

glib::wrapper! {
    pub struct ChunkSink(ObjectSubclass<imp::ChunkSink>) @extends gst_base::BaseSink, gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "chunksink",
        gst::Rank::NONE,
        ChunkSink::static_type(),
    )
}
