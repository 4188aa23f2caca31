// SPDX-License-Identifier: MPL-2.0
/**
 * SECTION:element-v4l2loopsink
 *
 * Writes raw video to a v4l2loopback device: a virtual webcam that browsers (Chrome, Firefox),
 * Zoom, OBS and any V4L2 reader can open.
 *
 * The device is chosen by `device`, by `card-label` (the v4l2loopback card name), or created
 * with `create=true` through v4l2loopback >= 0.13's `/dev/v4l2loopback` control device (and
 * removed again when the element goes to NULL). The format is set with `VIDIOC_S_FMT` before
 * any reader can stream, so exclusive_caps=1 devices show up as cameras once the sink is PAUSED.
 * Frames are written through mmap streaming buffers (one copy per frame) with the exact
 * `bytesused`; with `offer-pool=true` those buffers are offered upstream, and a frame upstream
 * wrote into one of them is queued without a copy (`stats`: `frames-zero-copy`, `copy-reason`). When upstream stalls, pauses or ends, the last frame (or `placeholder`) is
 * repeated at the negotiated rate so readers never freeze (`keepalive`).
 *
 * ## Example launch line
 * ```text
 * gst-launch-1.0 videotestsrc is-live=true ! video/x-raw,width=1280,height=720,framerate=30/1 ! \
 *     videoconvert ! v4l2loopsink device=/dev/video10
 * ```
 */
use gst::glib;
use gst::prelude::*;

mod devices;
mod imp;
mod negotiate;
mod output;
mod placeholder;
mod pool;

glib::wrapper! {
    pub struct V4l2LoopSink(ObjectSubclass<imp::V4l2LoopSink>)
        @extends gst_base::BaseSink, gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "v4l2loopsink",
        gst::Rank::NONE,
        V4l2LoopSink::static_type(),
    )
}
