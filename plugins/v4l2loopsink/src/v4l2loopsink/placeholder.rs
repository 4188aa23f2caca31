// SPDX-License-Identifier: MPL-2.0
//! The keep-alive placeholder: a colour painted in the V4L2 layout, or an image file decoded
//! (`decodebin`) and scaled with black borders to one frame of the negotiated format.
//!
//! Decoding runs a whole pipeline (up to 10 s): the element calls [`make_placeholder`] with no
//! lock held.

use std::path::Path;

use gst::prelude::*;

use super::output::RepeatFrame;
use crate::v4l2::{self, FrameLayout};

/// Builds the keep-alive placeholder for the negotiated format.
pub(super) fn make_placeholder(
    spec: &str,
    layout: &FrameLayout,
    info: &gst_video::VideoInfo,
) -> Result<RepeatFrame, String> {
    if let Some(rgb) = v4l2::parse_color(spec) {
        return Ok(RepeatFrame::Raw(layout.solid_color(rgb)));
    }
    let path = Path::new(spec);
    if !path.is_file() {
        return Err(format!(
            "placeholder '{spec}' is neither a colour (#rrggbb, 0xrrggbb, black, white, ...) \
             nor an existing image file"
        ));
    }
    let buffer = decode_image(path, info)?;
    Ok(RepeatFrame::Buffer(buffer, info.clone()))
}

/// Decodes an image file into one frame of `info` (format and size) for the placeholder.
fn decode_image(path: &Path, info: &gst_video::VideoInfo) -> Result<gst::Buffer, String> {
    let fail = |m: String| format!("placeholder image {}: {m}", path.display());
    let pipeline = gst::Pipeline::new();
    let make = |name: &str| {
        gst::ElementFactory::make(name)
            .build()
            .map_err(|_| fail(format!("element {name} is missing")))
    };
    let src = make("filesrc")?;
    src.set_property("location", path.to_string_lossy().to_string());
    let decode = make("decodebin")?;
    let convert = make("videoconvert")?;
    let scale = make("videoscale")?;
    let freeze = make("imagefreeze")?;
    let caps = info.to_caps().map_err(|e| fail(format!("caps: {e}")))?;
    let sink = gst_app::AppSink::builder().caps(&caps).sync(false).build();
    pipeline
        .add_many([&src, &decode, &convert, &scale, &freeze, sink.upcast_ref()])
        .map_err(|e| fail(e.to_string()))?;
    src.link(&decode).map_err(|e| fail(e.to_string()))?;
    gst::Element::link_many([&convert, &scale, &freeze, sink.upcast_ref()])
        .map_err(|e| fail(e.to_string()))?;
    let convert_weak = convert.downgrade();
    decode.connect_pad_added(move |_, pad| {
        if let Some(convert) = convert_weak.upgrade()
            && let Some(sinkpad) = convert.static_pad("sink")
            && !sinkpad.is_linked()
        {
            let _ = pad.link(&sinkpad);
        }
    });
    let result = (|| {
        pipeline
            .set_state(gst::State::Paused)
            .map_err(|_| fail("cannot start decoding".into()))?;
        let sample = sink
            .try_pull_preroll(gst::ClockTime::from_seconds(10))
            .ok_or_else(|| {
                let bus_error = pipeline
                    .bus()
                    .and_then(|b| b.pop_filtered(&[gst::MessageType::Error]))
                    .and_then(|m| match m.view() {
                        gst::MessageView::Error(e) => Some(e.error().to_string()),
                        _ => None,
                    })
                    .unwrap_or_else(|| "no frame within 10 s".into());
                fail(format!("cannot decode it ({bus_error})"))
            })?;
        sample
            .buffer_owned()
            .ok_or_else(|| fail("decoder gave no buffer".into()))
    })();
    let _ = pipeline.set_state(gst::State::Null);
    result
}

#[cfg(test)]
mod tests {
    use gst_video::prelude::*;

    use super::*;

    #[test]
    fn placeholder_image_is_decoded_and_scaled_to_the_format() {
        gst::init().expect("gst init");
        let dir = std::env::temp_dir().join(format!("v4l2loopsink-png-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let png = dir.join("white.png");
        let p = gst::parse::launch(&format!(
            "videotestsrc num-buffers=1 pattern=white ! video/x-raw,width=64,height=36 ! pngenc ! \
             filesink location={}",
            png.display()
        ))
        .expect("pipeline");
        p.set_state(gst::State::Playing).expect("play");
        let bus = p.bus().expect("bus");
        bus.timed_pop_filtered(gst::ClockTime::from_seconds(20), &[gst::MessageType::Eos])
            .expect("png written");
        p.set_state(gst::State::Null).expect("null");
        let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::I420, 320, 180)
            .fps(gst::Fraction::new(10, 1))
            .build()
            .expect("info");
        let buffer = decode_image(&png, &info).expect("decoded");
        let frame =
            gst_video::VideoFrameRef::from_buffer_ref_readable(&buffer, &info).expect("mapped");
        assert_eq!(frame.width(), 320);
        let y = frame.plane_data(0).expect("y");
        assert!(y.iter().all(|&v| v == 235), "Y {:?}", &y[..8]);
        assert!(frame.plane_data(1).expect("u").iter().all(|&v| v == 128));
        let missing = decode_image(Path::new("/nonexistent.png"), &info).unwrap_err();
        assert!(missing.contains("/nonexistent.png"), "{missing}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
