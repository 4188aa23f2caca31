// SPDX-License-Identifier: MPL-2.0

//! Element-level unit tests: binding and freeing the port, state cycles, settings errors.

use super::*;

fn init() {
    super::super::init_for_tests();
}

fn element(port: u32) -> gst::Element {
    gst::ElementFactory::make("rtmpflvsrc")
        .property("port", port)
        .build()
        .expect("rtmpflvsrc")
}

#[test]
fn bound_port_bind_failure_and_null_frees_the_port() {
    init();
    let a = element(0);
    assert_eq!(a.property::<u32>("bound-port"), 0);
    a.set_state(gst::State::Ready).expect("READY");
    let port = a.property::<u32>("bound-port");
    assert_ne!(port, 0);

    // A second element on the same port fails with an error naming address:port.
    let pipeline = gst::Pipeline::new();
    let b = element(port);
    pipeline.add(&b).unwrap();
    assert!(pipeline.set_state(gst::State::Ready).is_err());
    let bus = pipeline.bus().unwrap();
    let msg = bus
        .timed_pop_filtered(gst::ClockTime::from_seconds(5), &[gst::MessageType::Error])
        .expect("error message");
    let gst::MessageView::Error(err) = msg.view() else {
        unreachable!()
    };
    let text = err.error().to_string();
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(text.contains("port=0"), "{text}");
    pipeline.set_state(gst::State::Null).unwrap();

    // NULL frees the port at once.
    a.set_state(gst::State::Null).unwrap();
    assert_eq!(a.property::<u32>("bound-port"), 0);
    std::net::TcpListener::bind(("127.0.0.1", port as u16)).expect("port free after NULL");
}

#[test]
fn state_cycles_never_hang() {
    init();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let pipeline = gst::Pipeline::new();
        let src = element(0);
        pipeline.add(&src).unwrap();
        for i in 0..100 {
            pipeline.set_state(gst::State::Playing).unwrap();
            if i % 3 == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
            let target = if i % 2 == 0 {
                gst::State::Null
            } else {
                gst::State::Ready
            };
            pipeline.set_state(target).unwrap();
        }
        pipeline.set_state(gst::State::Null).unwrap();
        let _ = tx.send(());
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("100 PLAYING -> READY/NULL cycles within 30 s (a stuck task join?)");
}

/// The first error or warning `pipeline` posted (within 1 s), as text.
fn first_message(pipeline: &gst::Pipeline, kind: gst::MessageType) -> Option<String> {
    let msg = pipeline
        .bus()
        .unwrap()
        .timed_pop_filtered(gst::ClockTime::from_seconds(1), &[kind])?;
    Some(match msg.view() {
        gst::MessageView::Error(e) => e.error().to_string(),
        gst::MessageView::Warning(w) => w.error().to_string(),
        _ => unreachable!(),
    })
}

#[test]
fn invalid_location_fails_at_ready_naming_the_problem() {
    init();
    for (location, needle) in [
        ("garbage", "'garbage' is not an rtmp://"),
        ("rtmp://127.0.0.1:99999/x", "invalid port '99999'"),
        ("http://127.0.0.1:1935/live", "is not an rtmp://"),
    ] {
        let pipeline = gst::Pipeline::new();
        let e = element(0);
        pipeline.add(&e).unwrap();
        e.set_property("location", location);
        assert!(
            pipeline.set_state(gst::State::Ready).is_err(),
            "{location}: READY must fail instead of listening on the defaults"
        );
        let text = first_message(&pipeline, gst::MessageType::Error).expect("an error");
        assert!(
            text.contains("Invalid location") && text.contains(needle),
            "{location}: {text}"
        );
        pipeline.set_state(gst::State::Null).unwrap();
        // A good location (or address/port) afterwards clears the mistake.
        e.set_property("location", "rtmp://127.0.0.1:0/live");
        pipeline
            .set_state(gst::State::Ready)
            .expect("READY with a good location");
        pipeline.set_state(gst::State::Null).unwrap();
    }
}

#[test]
fn all_interfaces_without_stream_key_warns() {
    init();
    for (key, warns) in [("", true), ("secret", false)] {
        let pipeline = gst::Pipeline::new();
        let e = element(0);
        pipeline.add(&e).unwrap();
        e.set_property("address", "0.0.0.0");
        e.set_property("stream-key", key);
        pipeline.set_state(gst::State::Ready).expect("READY");
        let warning = first_message(&pipeline, gst::MessageType::Warning);
        pipeline.set_state(gst::State::Null).unwrap();
        if warns {
            let text = warning.expect("a warning for 0.0.0.0 without a stream key");
            assert!(
                text.contains("without a stream-key") && text.contains("Set stream-key"),
                "{text}"
            );
        } else {
            assert_eq!(warning, None);
        }
    }
}
