//! Encoders: which one to use (hardware first, if it really encodes), low-latency settings,
//! bitrate changes and key-frame requests. Every encoder differs in property names and types,
//! so settings are applied only where the element has them.

use gst::glib;
use gst::prelude::*;

use crate::offer::Codec;

pub fn make(factory: &str) -> Result<gst::Element, String> {
    gst::ElementFactory::make(factory).build().map_err(|_| {
        format!("GStreamer element '{factory}' is missing: run scripts/install-deps.sh")
    })
}

/// Sets a numeric property of whatever integer type the element declares; absent properties
/// are skipped (encoders differ).
fn set_number(e: &gst::Element, name: &str, v: u64) {
    let Some(p) = e.find_property(name) else {
        return;
    };
    let t = p.value_type();
    if t == u32::static_type() {
        e.set_property(name, v.min(u32::MAX as u64) as u32);
    } else if t == i32::static_type() {
        e.set_property(name, v.min(i32::MAX as u64) as i32);
    } else if t == u64::static_type() {
        e.set_property(name, v);
    } else if t == i64::static_type() {
        e.set_property(name, v.min(i64::MAX as u64) as i64);
    }
}

/// Sets an enum/flags property by nick when the element has it and the nick is valid.
fn set_nick(e: &gst::Element, name: &str, nick: &str) {
    let Some(p) = e.find_property(name) else {
        return;
    };
    let t = p.value_type();
    let valid = if let Some(c) = glib::EnumClass::with_type(t) {
        c.value_by_nick(nick).is_some()
    } else if let Some(c) = glib::FlagsClass::with_type(t) {
        nick.split('+').all(|n| c.value_by_nick(n).is_some())
    } else {
        false
    };
    if valid {
        e.set_property_from_str(name, nick);
    }
}

/// Encoders tried in order: hardware first (VA, NVENC, V4L2 M2M, VA-API, Quick Sync), then
/// software.
fn encoder_candidates(codec: Codec) -> &'static [&'static str] {
    match codec {
        Codec::H264 => &[
            "vah264lpenc",
            "vah264enc",
            "nvh264enc",
            "v4l2h264enc",
            "vaapih264enc",
            "qsvh264enc",
            "x264enc",
            "openh264enc",
        ],
        Codec::Vp8 => &["vavp8enc", "v4l2vp8enc", "vaapivp8enc", "vp8enc"],
    }
}

/// A hardware encoder must encode one frame in a scratch pipeline before it is used (its
/// plugin loads on machines without the device).
fn encoder_works(factory: &str, codec: Codec) -> bool {
    if matches!(factory, "x264enc" | "vp8enc" | "openh264enc") {
        return gst::ElementFactory::find(factory).is_some();
    }
    if gst::ElementFactory::find(factory).is_none() {
        return false;
    }
    let caps = match codec {
        Codec::H264 => "video/x-h264",
        Codec::Vp8 => "video/x-vp8",
    };
    let desc = format!(
        "videotestsrc num-buffers=2 ! video/x-raw,format=I420,width=320,height=240 ! {factory} ! {caps} ! fakesink"
    );
    let Ok(p) = gst::parse::launch(&desc) else {
        return false;
    };
    let ok = p.set_state(gst::State::Playing).is_ok()
        && p.bus().is_some_and(|bus| {
            matches!(
                bus.timed_pop_filtered(
                    gst::ClockTime::from_seconds(5),
                    &[gst::MessageType::Eos, gst::MessageType::Error]
                )
                .map(|m| m.type_()),
                Some(gst::MessageType::Eos)
            )
        });
    let _ = p.set_state(gst::State::Null);
    ok
}

pub fn pick_encoder(codec: Codec, forced: Option<&str>) -> Result<String, String> {
    if let Some(f) = forced {
        return if gst::ElementFactory::find(f).is_some() {
            Ok(f.to_owned())
        } else {
            Err(format!("--encoder {f}: no such GStreamer element"))
        };
    }
    encoder_candidates(codec)
        .iter()
        .find(|f| encoder_works(f, codec))
        .map(|f| f.to_string())
        .ok_or_else(|| {
            format!(
                "no {} encoder found (tried {}): run scripts/install-deps.sh",
                codec.name(),
                encoder_candidates(codec).join(", ")
            )
        })
}

/// Low-latency settings for the known encoders; any other encoder gets its `bitrate` (kbit/s)
/// and key-frame distance when it has such properties.
pub fn configure_encoder(e: &gst::Element, factory: &str, fps: u32, kbps: u32) {
    let gop = u64::from(fps.max(1) * 2);
    match factory {
        "x264enc" => {
            set_nick(e, "tune", "zerolatency");
            set_nick(e, "speed-preset", "ultrafast");
            set_number(e, "key-int-max", gop);
            set_number(e, "bitrate", kbps.into());
        }
        "vp8enc" => {
            set_number(e, "deadline", 1);
            // Negative: a fixed speed (6, as Chrome's and aiortc's libvpx wrappers). In
            // realtime mode a positive value selects the speed automatically, aiming to spend
            // (16 - cpu-used) / 16 of the frame interval encoding: 8 let libvpx slow down to
            // about half of each 33 ms (1.24x aiortc's CPU per frame at 640x480).
            e.set_property("cpu-used", -6i32);
            set_nick(e, "end-usage", "cbr");
            set_number(e, "target-bitrate", u64::from(kbps) * 1000);
            set_number(e, "keyframe-max-dist", gop);
            set_number(e, "lag-in-frames", 0);
            // One thread: with two, libvpx spends 5-8x the CPU as soon as the cores are
            // contended (measured at 640x480@30 on two cores).
            set_number(e, "threads", 1);
            set_nick(e, "error-resilient", "default");
        }
        "openh264enc" => {
            set_number(e, "bitrate", u64::from(kbps) * 1000);
            set_number(e, "gop-size", gop);
        }
        _ => {
            set_number(e, "bitrate", kbps.into());
            set_number(e, "key-int-max", gop);
            set_number(e, "gop-size", gop);
        }
    }
}

pub fn set_encoder_bitrate(e: &gst::Element, factory: &str, kbps: u32) {
    match factory {
        "vp8enc" => set_number(e, "target-bitrate", u64::from(kbps) * 1000),
        "openh264enc" => set_number(e, "bitrate", u64::from(kbps) * 1000),
        _ => set_number(e, "bitrate", kbps.into()),
    }
}

pub fn force_key_unit(pad: &gst::Pad) {
    let ev = gst_video::UpstreamForceKeyUnitEvent::builder()
        .all_headers(true)
        .build();
    pad.send_event(ev);
}
