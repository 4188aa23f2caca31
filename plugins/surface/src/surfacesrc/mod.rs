// SPDX-License-Identifier: MPL-2.0

/**
 * SECTION:element-surfacesrc
 *
 * Receives frames from a `surfacesink` (or any writer speaking the surface protocol) in another
 * process. Surfaces are mapped once; every output buffer wraps the shared memory without copying
 * and releases its surface to the writer when it is freed. Waits for the writer (up to
 * `timeout`), follows writer restarts and renegotiates when the caps change.
 *
 * ## Example launch line
 * ```text
 * gst-launch-1.0 surfacesrc socket-path=/tmp/cam.sock ! videoconvert ! autovideosink
 * ```
 */
use gst::glib;
use gst::prelude::*;

mod imp;

glib::wrapper! {
    pub struct SurfaceSrc(ObjectSubclass<imp::SurfaceSrc>) @extends gst_base::PushSrc, gst_base::BaseSrc, gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "surfacesrc",
        gst::Rank::NONE,
        SurfaceSrc::static_type(),
    )
}
