// SPDX-License-Identifier: MPL-2.0
//! Frames end to end: videotestsrc → pwvideosink → pipewiresrc in another process, for several
//! formats: frame count and pixel content checked; pw-dump shows class, role, description and
//! a fixed-size format.

mod common;

use std::time::Duration;

use common::*;
use gst::prelude::*;
use vcambridge_tests::ChildGuard;
use vcambridge_tests::pipewire::PipeWireSession;

const FRAMES: usize = 15;

#[test]
fn frames_and_pixels_reach_pipewiresrc_in_several_formats() {
    init();
    let session = PipeWireSession::start();
    for format in ["I420", "NV12", "YUY2", "UYVY", "BGRx", "RGBA", "RGB"] {
        let node = format!("vcam-rt-{}", format.to_lowercase());
        let producer = Producer::start(&session, &node, format, "");
        session.wait_for_node(&node, Duration::from_secs(10));
        let reference = reference_frame(format);
        assert_eq!(reference.len(), frame_size(format));
        let what = format!("{format}: pipewiresrc consumer");
        Consumer::spawn(&session, &node, Some(FRAMES), &caps_str(format), &what)
            .check(&session, &reference, FRAMES, format);
        assert!(
            producer.stats().get::<bool>("driving").expect("driving"),
            "{format}: nothing else drives this graph, the node should"
        );
        let sent = producer.stat_u64("frames-sent");
        assert!(sent >= FRAMES as u64, "{format}: stats frames-sent={sent}");
        // videotestsrc writes into the PipeWire buffers the sink lends it. Only frames it
        // got before the sink held a free PipeWire buffer (system memory from the pool:
        // `lend-misses`, no consumer yet or the first cycle) are copied.
        let [in_place, copied, misses] =
            ["frames-in-place", "frames-copied", "lend-misses"].map(|f| producer.stat_u64(f));
        assert!(
            in_place + copied == sent && copied <= misses.min(3) && in_place >= FRAMES as u64 - 3,
            "{format}: {:?}",
            producer.stats()
        );
        assert_eq!(producer.first_error(), None, "{format}: producer error");
    }
}

#[test]
fn pw_dump_shows_a_camera_node_with_fixed_formats() {
    let node = "vcam-dump";
    let (session, _producer) = session_with_producer(
        node,
        "NV12",
        "node-description=\"vcambridge test camera\" stream-properties=\"props,node.nick=vcamnick\"",
    );
    let obj = session.wait_for_node(node, Duration::from_secs(10));
    let props = &obj["info"]["props"];
    assert_eq!(props["media.class"], "Video/Source", "{props}");
    assert_eq!(props["media.role"], "Camera", "{props}");
    assert_eq!(
        props["node.description"], "vcambridge test camera",
        "{props}"
    );
    assert_eq!(props["node.nick"], "vcamnick", "{props}");
    let formats = obj["info"]["params"]["EnumFormat"]
        .as_array()
        .expect("EnumFormat params");
    assert_eq!(formats.len(), 1, "{formats:?}");
    let f = &formats[0];
    assert_eq!(f["mediaType"], "video");
    assert_eq!(f["mediaSubtype"], "raw");
    assert_eq!(f["format"], "NV12");
    // Fixed values, not ranges/choices (libwebrtc ignores ranges).
    assert_eq!(f["size"]["width"], WIDTH, "{f}");
    assert_eq!(f["size"]["height"], HEIGHT, "{f}");
    assert_eq!(f["framerate"]["num"], FPS, "{f}");
    assert_eq!(f["framerate"]["denom"], 1, "{f}");
}

#[test]
fn media_role_is_overridable() {
    let node = "vcam-screen";
    let (session, _producer) = session_with_producer(node, "BGRx", "media-role=Screen");
    let obj = session.wait_for_node(node, Duration::from_secs(10));
    assert_eq!(obj["info"]["props"]["media.role"], "Screen");
    // Without a description the node name is used (libwebrtc ignores nodes without one).
    assert_eq!(obj["info"]["props"]["node.description"], node);
}

#[test]
fn upstream_caps_change_is_renegotiated_with_the_consumer() {
    let node = "vcam-recaps";
    let (session, producer) = session_with_producer(node, "I420", "");
    // fakesink silent=false with -v prints every buffer's size. (pipewiresrc 0.3.65 takes the
    // new PipeWire format and its buffers but does not update its GStreamer caps, so the sizes
    // are what shows the renegotiation.)
    let mut cmd = printing_consumer(&session, node, 60, "video/x-raw !");
    let consumer = ChildGuard::spawn("consumer across caps change", &mut cmd);
    vcambridge_tests::wait_for(Duration::from_secs(15), "first frames sent", || {
        (producer.stat_u64("frames-sent") >= 10).then_some(())
    });
    let capsfilter = producer.pipeline.by_name("caps").expect("capsfilter");
    let new_caps: gst::Caps = "video/x-raw,format=I420,width=640,height=480,framerate=30/1"
        .parse()
        .expect("caps");
    capsfilter.set_property("caps", &new_caps);
    let res = consumer.wait_output(Duration::from_secs(30));
    let stdout = String::from_utf8_lossy(&res.stdout);
    assert!(
        res.status.success(),
        "consumer failed: {}",
        output_text(&res)
    );
    let small = 320 * 240 * 3 / 2;
    let large = 640 * 480 * 3 / 2;
    assert!(stdout.contains(&format!("({small} bytes")), "{stdout}");
    assert!(
        stdout.contains(&format!("({large} bytes")),
        "consumer never got a 640x480 frame:\n{stdout}"
    );
    let stats = producer.stats();
    assert_eq!(
        stats.get::<String>("format").expect("format"),
        "I420 640x480@30/1"
    );
    // pw-dump shows the new fixed size.
    let obj = session.wait_for_node(node, Duration::from_secs(5));
    assert_eq!(obj["info"]["params"]["EnumFormat"][0]["size"]["width"], 640);
}

/// Upstream buffers with padded strides (a `VideoMeta`, as decoders produce) reach the
/// consumer as plain default-layout frames.
#[test]
fn padded_strides_from_upstream_are_copied_plane_by_plane() {
    init();
    let session = PipeWireSession::start();
    let node = "vcam-strides";
    let format = "I420";
    let reference = reference_frame(format);
    let (w, h) = (WIDTH as usize, HEIGHT as usize);
    // Padded layout: Y stride 384, U/V stride 192, garbage (0xEE) in the padding.
    let strides = [384usize, 192, 192];
    let offsets = [0usize, 384 * h, 384 * h + 192 * h / 2];
    let size = offsets[2] + 192 * h / 2;
    let default_offsets = [0usize, w * h, w * h + w * h / 4];
    let default_strides = [w, w / 2, w / 2];
    let rows = [h, h / 2, h / 2];
    let mut padded = vec![0xEEu8; size];
    for p in 0..3 {
        for r in 0..rows[p] {
            let src = default_offsets[p] + r * default_strides[p];
            let dst = offsets[p] + r * strides[p];
            padded[dst..dst + default_strides[p]]
                .copy_from_slice(&reference[src..src + default_strides[p]]);
        }
    }

    let caps = format!("caps=\"{}\"", caps_str(format));
    let (pipeline, appsrc, _sink) = appsrc_pipeline(&session, node, &caps, "");
    let pusher = Pusher::start(appsrc, move || {
        let mut buf = gst::Buffer::from_slice(padded.clone());
        gst_video::VideoMeta::add_full(
            buf.get_mut().expect("writable"),
            gst_video::VideoFrameFlags::empty(),
            gst_video::VideoFormat::I420,
            WIDTH,
            HEIGHT,
            &offsets,
            &strides.map(|s| s as i32),
        )
        .expect("video meta");
        Some(buf)
    });
    session.wait_for_node(node, Duration::from_secs(10));
    let out = Consumer::run(&session, node, 10, format, "consumer of padded frames");
    pusher.stop();
    let _ = pipeline.set_state(gst::State::Null);
    check_frames(out.path(), &reference, 10, "padded I420");
}

/// With a converter upstream the node offers every format upstream can deliver (current one
/// first, all with the fixed size and rate); a consumer that only takes another one gets it:
/// pwvideosink asks upstream to switch.
#[test]
fn consumer_choice_among_upstream_formats_is_honoured() {
    init();
    let session = PipeWireSession::start();
    let node = "vcam-choice";
    let desc = format!(
        "videotestsrc is-live=true pattern=colors ! {} ! videoconvert ! \
         pwvideosink name=sink node-name={node} remote=\"{}\"",
        caps_str("BGRx"),
        session.socket_path().display()
    );
    let pipeline = vcambridge_tests::launch_pipeline(&desc);
    let sink = pipeline.by_name("sink").expect("sink");
    pipeline.set_state(gst::State::Playing).expect("play");
    // The node may be published with upstream's possible formats before the caps are fixed;
    // it then updates its EnumFormat with the current format first (bounded wait for that).
    let read_formats = || fixed_formats(&session.wait_for_node(node, Duration::from_secs(10)));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut formats = read_formats();
    while formats.first().map(String::as_str) != Some("BGRx")
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
        formats = read_formats();
    }
    assert_eq!(formats[0], "BGRx", "current format first: {formats:?}");
    for f in [
        "I420", "NV12", "YUY2", "UYVY", "RGBx", "BGRA", "RGBA", "RGB", "BGR",
    ] {
        assert!(formats.iter().any(|x| x == f), "{f} missing in {formats:?}");
    }

    let reference = converted_reference("BGRx", "I420");

    Consumer::spawn(
        &session,
        node,
        Some(10),
        &caps_str("I420"),
        "I420-only consumer",
    )
    .check(&session, &reference, 10, "I420 from BGRx upstream");
    let stats = stats(&sink);
    let _ = pipeline.set_state(gst::State::Null);
    assert_eq!(
        stats.get::<String>("format").expect("format"),
        "I420 320x240@30/1"
    );
}

/// When another driver runs the graph (here the consumer joins the group of PipeWire's dummy
/// driver, which has a higher driver priority) the node follows the graph's cycles and still
/// delivers every frame's content.
#[test]
fn follows_another_driver() {
    let node = "vcam-follower";
    let (session, producer) = session_with_producer(node, "I420", "");
    let reference = reference_frame("I420");
    let out = tempfile::NamedTempFile::new().expect("temp file");
    let mut cmd = session.command("gst-launch-1.0");
    cmd.args([
        "-q",
        "pipewiresrc",
        &format!("target-object={node}"),
        "stream-properties=props,media.type=Video,node.group=pipewire.dummy",
        "num-buffers=15",
        "!",
        &caps_str("I420"),
        "!",
        "filesink",
        &format!("location={}", out.path().display()),
    ]);
    let consumer = ChildGuard::spawn("consumer in the dummy driver's group", &mut cmd);
    vcambridge_tests::wait_for(Duration::from_secs(15), "frames sent as a follower", || {
        (producer.stat_u64("frames-sent") > 0).then_some(())
    });
    let driving = producer.stats().get::<bool>("driving").expect("driving");
    let res = consumer.wait_output(Duration::from_secs(30));
    assert!(
        res.status.success(),
        "consumer failed: {}\n{}",
        output_text(&res),
        session.logs()
    );
    check_frames(out.path(), &reference, 15, "follower");
    assert!(!driving, "the dummy driver should drive this graph");
    assert_eq!(producer.first_error(), None);
}

/// `spa_meta_header` carries a sequence number and a monotonic-clock PTS: pipewiresrc turns them
/// into buffer offsets and timestamps 1/30 s apart.
#[test]
fn sequence_and_timestamps_reach_the_consumer() {
    let node = "vcam-ts";
    let (session, producer) = session_with_producer(node, "I420", "");
    let mut cmd = printing_consumer(&session, node, 30, "");
    let res =
        ChildGuard::spawn("timestamp consumer", &mut cmd).wait_output(Duration::from_secs(30));
    assert!(res.status.success(), "{}", output_text(&res));
    let stdout = String::from_utf8_lossy(&res.stdout);
    let field = |line: &str, key: &str| -> Option<String> {
        let rest = &line[line.find(key)? + key.len()..];
        Some(rest.split(',').next()?.trim().to_string())
    };
    let ns = |t: &str| -> u64 {
        // H:MM:SS.nnnnnnnnn
        let mut parts = t.split(':');
        let (h, m, s) = (parts.next(), parts.next(), parts.next());
        let (h, m) = (
            h.unwrap().parse::<u64>().unwrap(),
            m.unwrap().parse::<u64>().unwrap(),
        );
        let (s, frac) = s.unwrap().split_once('.').unwrap();
        ((h * 60 + m) * 60 + s.parse::<u64>().unwrap()) * 1_000_000_000
            + frac.parse::<u64>().unwrap()
    };
    let frames: Vec<(u64, u64)> = stdout
        .lines()
        .filter(|l| l.contains("chain"))
        .filter_map(|l| Some((field(l, "offset: ")?.parse().ok()?, ns(&field(l, "pts: ")?))))
        .collect();
    assert_eq!(frames.len(), 30, "{stdout}");
    // videotestsrc writes into lent buffers: every frame reaches the consumer (the sequence
    // steps by one once the consumer runs).
    let gaps = frames[5..]
        .windows(2)
        .filter(|w| w[1].0 != w[0].0 + 1)
        .count();
    assert!(gaps <= 3, "{gaps} gaps in the sequence: {frames:?}");
    for w in frames.windows(2) {
        assert!(w[1].0 > w[0].0, "sequence not increasing: {frames:?}");
        assert!(w[1].1 >= w[0].1, "pts going backwards: {frames:?}");
    }
    // Skip the first frames (stamped before the consumer's base time, clamped to 0).
    let mut deltas: Vec<u64> = frames[10..].windows(2).map(|w| w[1].1 - w[0].1).collect();
    deltas.sort_unstable();
    let median = deltas[deltas.len() / 2];
    assert!(
        (25_000_000..45_000_000).contains(&median),
        "median pts step {median} ns, expected ~33 ms: {frames:?}"
    );
    // The streaming thread ran these frames' graph cycles itself (`wake.rs`), no other
    // thread of ours in between.
    let wakes = producer.stat_u64("cycles-in-render");
    assert!(wakes >= 30, "{wakes} cycles run by render() for 30 frames");
    // And the cycles those frames started did not wake the loop thread at their end
    // (PipeWire's `trigger_done`, which `pw_stream_trigger_process` brings: `wake::on_wake`).
    let trigger_done = producer.stat_u64("trigger-done");
    assert_eq!(
        trigger_done, 0,
        "{trigger_done} graph cycles woke the loop thread at their end ({wakes} frames)"
    );
    // By default that thread is an ordinary one (`client.conf`, no module-rt).
    let realtime = producer
        .stats()
        .get::<bool>("data-thread-realtime")
        .expect("data-thread-realtime");
    assert!(!realtime, "the data-loop thread is realtime by default");
}

/// Main-job shape (decoder → videoconvert → videoscale → fixed-size capsfilter): the camera is
/// published before the first frame, with every format at the fixed size; a consumer that links
/// early gets its format once frames flow.
#[test]
fn camera_is_published_before_the_first_frame() {
    init();
    let session = PipeWireSession::start();
    let node = "vcam-early";
    let middle = format!(
        "videoconvert ! videoscale ! video/x-raw,width={WIDTH},height={HEIGHT},framerate={FPS}/1 !"
    );
    let (pipeline, appsrc, sink) = appsrc_pipeline(&session, node, "", &middle);

    // No frame yet: the node is there with fixed-size formats.
    let formats = fixed_formats(&session.wait_for_node(node, Duration::from_secs(10)));
    for f in ["I420", "NV12", "YUY2", "BGRx", "RGBA"] {
        assert!(formats.iter().any(|x| x == f), "{f} missing in {formats:?}");
    }
    assert_eq!(stats(&sink).get::<u64>("frames-sent").unwrap(), 0);

    // A consumer links before any frame exists.
    let consumer = Consumer::spawn(
        &session,
        node,
        Some(10),
        &caps_str("YUY2"),
        "early consumer",
    );
    vcambridge_tests::wait_for(Duration::from_secs(15), "the early consumer linked", || {
        (stats(&sink).get::<u32>("consumers").unwrap() == 1).then_some(())
    });

    // Now frames arrive (BGRx, like a decoder's output after conversion).
    let source = reference_frame("BGRx");
    appsrc.set_caps(Some(&caps_str("BGRx").parse::<gst::Caps>().expect("caps")));
    let pusher = Pusher::start(appsrc, move || {
        Some(gst::Buffer::from_slice(source.clone()))
    });
    let (_, out) = consumer.finish(&session, Duration::from_secs(30));
    pusher.stop();
    let stats = stats(&sink);
    let _ = pipeline.set_state(gst::State::Null);
    check_frames(
        out.path(),
        &converted_reference("BGRx", "YUY2"),
        10,
        "early consumer",
    );
    assert_eq!(stats.get::<String>("format").unwrap(), "YUY2 320x240@30/1");
}

/// `realtime=true`: the context comes from `client-rt.conf` (module-rt), whose thread utils
/// create the sink's data-loop thread and make it realtime where the system allows it — as
/// root (CI) or with an RLIMIT_RTPRIO — and frames flow as before.
#[test]
fn realtime_true_raises_the_data_thread_where_allowed() {
    let node = "vcam-rt";
    let (session, producer) = session_with_producer(node, "I420", "realtime=true");
    let mut cmd = printing_consumer(&session, node, 10, "");
    let res = ChildGuard::spawn("consumer", &mut cmd).wait_output(Duration::from_secs(30));
    assert!(res.status.success(), "{}", output_text(&res));
    let realtime = producer
        .stats()
        .get::<bool>("data-thread-realtime")
        .expect("data-thread-realtime");
    let mut rtprio = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we own; geteuid is always safe.
    let allowed = unsafe {
        libc::getrlimit(libc::RLIMIT_RTPRIO, &mut rtprio) == 0 && rtprio.rlim_cur > 0
            || libc::geteuid() == 0
    };
    if allowed {
        assert!(
            realtime,
            "realtime=true, yet the data-loop thread is not realtime though this process may \
             raise it"
        );
    }
    let sent = producer.stat_u64("frames-sent");
    assert!(sent >= 10, "{sent} frames sent");
}
