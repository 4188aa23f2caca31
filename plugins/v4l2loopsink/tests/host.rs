//! Host-side tests of `v4l2loopsink` that need no v4l2loopback module: registration, caps,
//! properties, and the precise errors for a missing device, a non-V4L2 path, an unknown card
//! label and `create=true` without the 0.13 control device.

use std::time::Duration;

use gst::prelude::*;
use vcambridge_tests::init_gst;
use vcambridge_tests::v4l2::Pipeline;

const T: Duration = Duration::from_secs(20);

fn start_error(sink_props: &str) -> String {
    let p = Pipeline::new(&format!(
        "videotestsrc num-buffers=1 ! video/x-raw,format=YUY2,width=320,height=240 ! \
         v4l2loopsink name=sink {sink_props}"
    ));
    p.set_state_wait(gst::State::Playing, T)
        .expect_err("the pipeline must fail")
}

#[test]
fn element_registers_with_documented_caps_and_properties() {
    init_gst();
    let sink = gst::ElementFactory::make("v4l2loopsink")
        .build()
        .expect("v4l2loopsink is registered (cargo build -p gst-plugin-v4l2loopsink)");
    let caps = sink
        .static_pad("sink")
        .expect("sink pad")
        .pad_template_caps();
    let s = caps.to_string();
    for f in ["YUY2", "UYVY", "I420", "NV12", "BGRx", "RGB", "GRAY8"] {
        assert!(s.contains(f), "{f} missing from {s}");
    }
    for prop in [
        "device",
        "card-label",
        "create",
        "device-number",
        "exclusive-caps",
        "max-width",
        "max-height",
        "keepalive",
        "placeholder",
        "allow-format-lock",
        "offer-pool",
        "current-device",
        "stats",
    ] {
        assert!(sink.find_property(prop).is_some(), "property {prop}");
    }
    assert!(sink.property::<bool>("keepalive"));
    assert!(!sink.property::<bool>("allow-format-lock"));
    assert!(!sink.property::<bool>("offer-pool"));
    let stats = sink.property::<gst::Structure>("stats");
    assert_eq!(stats.get::<u64>("frames-written").ok(), Some(0));
    for counter in ["frames-zero-copy", "frames-copied", "frames-dropped"] {
        assert_eq!(
            stats.get::<u64>(counter).ok(),
            Some(0),
            "{counter}: {stats}"
        );
    }
    assert_eq!(stats.get::<bool>("pool-offered").ok(), Some(false));
    assert_eq!(stats.get::<&str>("copy-reason").ok(), Some(""));
}

#[test]
fn missing_device_names_it_and_the_modprobe_line() {
    let e = start_error("device=/dev/video-vcambridge-missing");
    assert!(
        e.contains("/dev/video-vcambridge-missing does not exist")
            && e.contains("sudo modprobe v4l2loopback devices=1 video_nr=10")
            && e.contains("create=true"),
        "{e}"
    );
}

#[test]
fn non_v4l2_paths_are_refused_precisely() {
    let e = start_error("device=/dev/null");
    assert!(e.contains("/dev/null is not a V4L2 video device"), "{e}");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("frames.raw");
    std::fs::write(&file, b"x").expect("write");
    let e = start_error(&format!("device={}", file.display()));
    assert!(e.contains("is not a device node"), "{e}");
    // A node that exists but has no device behind it for us (no controlling terminal: ENXIO;
    // with one, the open works and VIDIOC_QUERYCAP fails) is never said not to exist.
    let e = start_error("device=/dev/tty");
    assert!(
        !e.contains("does not exist")
            && (e.contains("/dev/tty exists but no device answers behind it")
                || e.contains("/dev/tty is not a V4L2 video device")),
        "{e}"
    );
}

#[test]
fn unknown_card_label_and_create_without_control_device() {
    if std::path::Path::new("/dev/v4l2loopback").exists() {
        eprintln!("skipping: this host has v4l2loopback >= 0.13 loaded");
        return;
    }
    let e = start_error("card-label=vcambridge-test-none");
    assert!(
        e.contains("no v4l2loopback device with card label 'vcambridge-test-none'")
            && e.contains("modprobe v4l2loopback"),
        "{e}"
    );
    let e = start_error("create=true card-label=vcam device-number=12");
    assert!(
        e.contains("create=true needs v4l2loopback >= 0.13 (control device /dev/v4l2loopback)")
            && e.contains(
                "modprobe v4l2loopback devices=1 video_nr=12 card_label=\"vcam\" exclusive_caps=1"
            ),
        "{e}"
    );
}

#[test]
fn placeholder_must_be_a_colour_or_an_image() {
    // Checked when the format is set, i.e. with a device only; here the parser's contract.
    use gstv4l2loopsink::v4l2::parse_color;
    assert_eq!(parse_color("#336699"), Some(0x336699));
    assert_eq!(parse_color("no-such-file.png"), None);
}
