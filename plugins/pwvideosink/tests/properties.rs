// SPDX-License-Identifier: MPL-2.0
//! Property defaults, round trips and the stats structure (no daemon needed).

mod common;

use gst::prelude::*;

#[test]
fn defaults_and_round_trips() {
    common::init();
    let sink = gst::ElementFactory::make("pwvideosink")
        .build()
        .expect("pwvideosink");
    assert_eq!(sink.property::<Option<String>>("node-name"), None);
    assert_eq!(sink.property::<Option<String>>("node-description"), None);
    assert_eq!(sink.property::<String>("media-class"), "Video/Source");
    assert_eq!(sink.property::<String>("media-role"), "Camera");
    assert!(sink.property::<bool>("reconnect"));
    assert_eq!(sink.property::<Option<String>>("remote"), None);
    assert_eq!(
        sink.property::<Option<gst::Structure>>("stream-properties"),
        None
    );

    let props: gst::Structure = "props,node.nick=cam,priority.session=100".parse().unwrap();
    sink.set_property("node-name", "cam0");
    sink.set_property("node-description", "Camera zero");
    sink.set_property("media-role", "Screen");
    sink.set_property("reconnect", false);
    sink.set_property("stream-properties", &props);
    assert_eq!(
        sink.property::<Option<String>>("node-name").as_deref(),
        Some("cam0")
    );
    assert_eq!(
        sink.property::<Option<String>>("node-description")
            .as_deref(),
        Some("Camera zero")
    );
    assert_eq!(sink.property::<String>("media-role"), "Screen");
    assert!(!sink.property::<bool>("reconnect"));
    assert_eq!(
        sink.property::<Option<gst::Structure>>("stream-properties"),
        Some(props)
    );
    // Resetting a string property to NULL restores the default.
    sink.set_property("media-role", None::<String>);
    assert_eq!(sink.property::<String>("media-role"), "Camera");

    let stats = sink.property::<gst::Structure>("stats");
    assert_eq!(stats.get::<u32>("consumers").unwrap(), 0);
    assert_eq!(stats.get::<u64>("frames-sent").unwrap(), 0);
    assert_eq!(stats.get::<u64>("frames-dropped").unwrap(), 0);
    assert_eq!(stats.get::<String>("format").unwrap(), "");
    assert!(!stats.get::<bool>("driving").unwrap());
    let pspec = sink.find_property("stats").expect("stats pspec");
    assert!(!pspec.flags().contains(gst::glib::ParamFlags::WRITABLE));
}

#[test]
fn sink_caps_cover_the_required_formats() {
    common::init();
    let factory = gst::ElementFactory::find("pwvideosink").expect("factory");
    let tmpl = factory
        .static_pad_templates()
        .into_iter()
        .find(|t| t.name_template() == "sink")
        .expect("sink template");
    let caps = tmpl.caps();
    for f in [
        "I420", "NV12", "YUY2", "UYVY", "BGRx", "RGBx", "BGRA", "RGBA", "RGB", "BGR",
    ] {
        let want: gst::Caps = format!("video/x-raw,format={f},width=640,height=480,framerate=30/1")
            .parse()
            .unwrap();
        assert!(want.can_intersect(&caps), "{f} not accepted by {caps}");
    }
    let encoded: gst::Caps = "video/x-h264".parse().unwrap();
    assert!(!encoded.can_intersect(&caps));
}
