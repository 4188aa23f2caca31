// SPDX-License-Identifier: MPL-2.0

/**
 * SECTION:element-rtmpflvsrc
 *
 * `rtmpflvsrc` is an RTMP *server* inside a live source element: publishers such as OBS,
 * ffmpeg or `rtmp2sink` push to `rtmp://HOST:PORT/APP/KEY` and the element outputs the
 * elementary streams on sometimes pads `video` (H.264, and via Enhanced RTMP HEVC, AV1,
 * VP9) and `audio` (AAC, MP3, Opus), ready for parsers and decoders.
 *
 * The port is bound when the element goes to READY (`port=0` picks a free one, readable from
 * `bound-port`) and freed when it returns to NULL; the connection settings (address, port,
 * app, stream-key, timeouts, eos-on-disconnect) are taken at that NULL to READY transition. One publisher at a time; further ones, and
 * publishers with the wrong `app` / `stream-key`, are rejected at the protocol level. When a
 * publisher leaves, the pipeline keeps running and the next publisher resumes the stream
 * (with DISCONT, and new caps if its codec configuration differs), unless
 * `eos-on-disconnect=true`.
 *
 * ## Example launch line
 * |[
 * gst-launch-1.0 rtmpflvsrc port=1935 name=s s.video ! decodebin ! videoconvert ! autovideosink
 * ]|
 * and publish with
 * |[
 * ffmpeg -re -f lavfi -i testsrc=size=320x240:rate=30 -c:v libx264 -f flv rtmp://127.0.0.1:1935/live/key
 * ]|
 */
use gst::glib;
use gst::prelude::*;

use std::sync::{Mutex, MutexGuard};

mod caps;
mod handoff;
mod imp;
mod location;
mod peer_limits;
mod server;
mod settings;
mod stats;
mod stream;

glib::wrapper! {
    pub struct RtmpFlvSrc(ObjectSubclass<imp::RtmpFlvSrc>) @extends gst::Element, gst::Object, @implements gst::URIHandler;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "rtmpflvsrc",
        gst::Rank::NONE,
        RtmpFlvSrc::static_type(),
    )
}

/// Locks `m`, ignoring poison: a panic on one thread (caught at a pad function) must not turn
/// every later lock into a second panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// GStreamer initialised and this plugin registered, once per test binary.
#[cfg(test)]
fn init_for_tests() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        gst::init().expect("gst init");
        crate::plugin_register_static().expect("register rtmpflvsrc");
    });
}
