//! The element as users meet it: the README's `gst-launch-1.0` line (a subprocess loading the
//! built plugin from the target directory) and `uridecodebin` with an `rtmpserver://` URI.

mod common;

use std::time::Duration;

use gst::prelude::*;
use vcambridge_tests::rtmp::{FfmpegPublisher, rtmp_url, wait_listening};
use vcambridge_tests::{ChildGuard, free_tcp_port, gst_command, plugin_dir};

const FRAMES: u32 = 20;

#[test]
fn gst_launch_line_decodes_every_frame() {
    let so = plugin_dir().join("libgstrtmpflvsrc.so");
    assert!(
        so.exists(),
        "{} missing: run `cargo build -p gst-plugin-rtmpflvsrc` first",
        so.display()
    );
    let port = free_tcp_port();
    let mut cmd = gst_command("gst-launch-1.0");
    cmd.arg("-v").args(
        format!(
            "rtmpflvsrc port={port} eos-on-disconnect=true name=s \
             s.video ! queue ! decodebin ! videoconvert ! video/x-raw,format=I420 \
             ! fakesink silent=false name=out"
        )
        .split_whitespace(),
    );
    let launch = ChildGuard::spawn("gst-launch-1.0 rtmpflvsrc", &mut cmd);
    wait_listening(port, Duration::from_secs(30));
    let mut p = FfmpegPublisher::new(&rtmp_url(port, "live", "key"), FRAMES);
    p.audio = false;
    p.realtime = true;
    let (ok, err) = p.run(Duration::from_secs(90));
    assert!(ok, "ffmpeg failed: {err}");
    let out = launch.wait_output(Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "gst-launch-1.0 failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Got EOS"), "no EOS: {stdout}");
    let chains = stdout
        .lines()
        .filter(|l| l.contains("(out:sink)") && l.contains("chain"))
        .count();
    assert_eq!(chains, FRAMES as usize, "decoded frames reaching fakesink");
}

#[test]
fn uridecodebin_with_rtmpserver_uri() {
    common::init();
    let port = free_tcp_port();
    let uri = format!("rtmpserver://127.0.0.1:{port}/live/key");
    let pipeline = vcambridge_tests::launch_pipeline(&format!(
        "uridecodebin uri={uri} caps=video/x-raw name=u ! videoconvert \
         ! appsink name=sink sync=false"
    ));
    let u = pipeline.by_name("u").unwrap();
    let source_factory = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sf = source_factory.clone();
    u.connect("source-setup", false, move |args| {
        if let Ok(src) = args[1].get::<gst::Element>() {
            *sf.lock().unwrap() = src
                .factory()
                .map(|f| f.name().to_string())
                .unwrap_or_default();
            if src.find_property("eos-on-disconnect").is_some() {
                src.set_property("eos-on-disconnect", true);
            }
        }
        None
    });
    let sink = pipeline
        .by_name("sink")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = count.clone();
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |s| {
                s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    pipeline.set_state(gst::State::Playing).expect("PLAYING");
    let guard = PipelineGuard(pipeline.clone());
    wait_listening(port, Duration::from_secs(30));
    assert_eq!(
        *source_factory.lock().unwrap(),
        "rtmpflvsrc",
        "rtmpserver:// must resolve to rtmpflvsrc"
    );

    let mut p = FfmpegPublisher::new(&rtmp_url(port, "live", "key"), FRAMES);
    p.audio = false;
    // Real time: if the whole stream (EOS included) arrives while decodebin is still plugging,
    // uridecodebin/decodebin2 (1.22) may drop the EOS ("drained") and tear the chain down.
    p.realtime = true;
    let (ok, err) = p.run(Duration::from_secs(90));
    assert!(ok, "ffmpeg failed: {err}");
    let bus = pipeline.bus().unwrap();
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(60),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("EOS within 60 s");
    if let gst::MessageView::Error(e) = msg.view() {
        panic!("pipeline error: {} ({:?})", e.error(), e.debug());
    }
    assert_eq!(
        count.load(std::sync::atomic::Ordering::SeqCst),
        FRAMES as usize,
        "decoded frames through uridecodebin"
    );
    drop(guard);
}

/// Sets the pipeline to NULL when the test ends, even on failure.
struct PipelineGuard(gst::Pipeline);

impl Drop for PipelineGuard {
    fn drop(&mut self) {
        let _ = self.0.set_state(gst::State::Null);
    }
}
