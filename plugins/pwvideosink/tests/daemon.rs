// SPDX-License-Identifier: MPL-2.0
//! The PipeWire daemon restarted under a running pipeline — frames resume for a
//! new consumer (reconnect=true), or a clear error (reconnect=false). A frozen daemon or
//! consumer never holds up the streaming thread, which runs the graph cycles itself. And no
//! daemon at start: an error naming the socket it tried.

mod common;

use std::time::{Duration, Instant};

use common::*;
use gst::prelude::*;
use vcambridge_tests::pipewire::PipeWireSession;
use vcambridge_tests::{ChildGuard, gst_command};

const FORMAT: &str = "YUY2";

#[test]
fn frames_resume_after_daemon_restart() {
    let node = "vcam-restart";
    let (mut session, producer) = session_with_producer(node, FORMAT, "");
    let reference = reference_frame(FORMAT);
    let consumer = |what: &str, session: &PipeWireSession| {
        run_consumer(session, node, FORMAT, 10, &reference, what)
    };
    consumer("consumer before restart", &session);

    session.restart_pipewire();
    let warning = producer
        .wait_message(gst::MessageType::Warning, Duration::from_secs(10), |t| {
            t.contains("lost the PipeWire daemon")
        })
        .expect("a warning about the lost daemon");
    assert!(
        warning.contains(&session.socket_path().display().to_string()),
        "warning should name the socket: {warning}"
    );
    // The element reconnects by itself and publishes the node again.
    session.wait_for_node(node, Duration::from_secs(15));
    let before = producer.frames();
    consumer("consumer after restart", &session);
    assert!(producer.frames() > before);
    assert_eq!(producer.first_error(), None, "no error with reconnect=true");
    assert_eq!(producer.pipeline.current_state(), gst::State::Playing);
}

#[test]
fn daemon_gone_with_reconnect_false_is_a_clear_error() {
    init();
    let mut session = PipeWireSession::start_without_session_manager();
    let node = "vcam-noreconnect";
    let producer = Producer::start(&session, node, FORMAT, "reconnect=false");
    let _ = session.wait_for_node(node, Duration::from_secs(10));
    session.stop_pipewire();
    let err = producer
        .wait_message(gst::MessageType::Error, Duration::from_secs(10), |_| true)
        .expect("an error once the daemon is gone");
    assert!(err.contains("lost the PipeWire daemon"), "{err}");
    assert!(err.contains("reconnect=false"), "{err}");
    assert!(
        err.contains(&session.socket_path().display().to_string()),
        "{err}"
    );
}

/// `render()` runs each frame's graph cycle on the streaming thread, under the lock the loop
/// thread holds while it dispatches (`wake.rs`): with the daemon or the consumer stopped
/// (SIGSTOP) the frames must keep coming through the sink all the same (dropped, not waited
/// for), and reach the consumer again once both run.
#[test]
fn frozen_daemon_or_consumer_never_stalls_the_streaming_thread() {
    let node = "vcam-frozen";
    let (session, producer) = session_with_producer(node, FORMAT, "");
    let consumer = Consumer::spawn(&session, node, None, &caps_str(FORMAT), "consumer");
    vcambridge_tests::wait_for(Duration::from_secs(15), "frames at the consumer", || {
        (consumer.len() > 0).then_some(())
    });
    let daemon = session.pipewire_pid().expect("daemon pid") as i32;
    let consumer_pid = consumer.guard.child.as_ref().expect("consumer").id() as i32;
    for (what, pid) in [("consumer", consumer_pid), ("daemon", daemon)] {
        // SAFETY: signals a child process this test started (still running: checked above).
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        let (frames, sent) = (producer.frames(), producer.stat_u64("frames-sent"));
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs(2));
        let passed = producer.frames() - frames;
        let elapsed = t0.elapsed();
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGCONT) };
        // 30 frames/s: ~60 in 2 s; a streaming thread held up in render() passes 0 or 1.
        assert!(
            passed >= 30,
            "{passed} frames reached the sink in {elapsed:?} with the {what} stopped ({} sent before, {} after)",
            sent,
            producer.stat_u64("frames-sent")
        );
    }
    // Both run again: the consumer gets frames again.
    let len = consumer.len();
    vcambridge_tests::wait_for(Duration::from_secs(15), "new frames after SIGCONT", || {
        (consumer.len() > len).then_some(())
    });
    assert_eq!(producer.first_error(), None);
}

#[test]
fn no_daemon_at_start_names_the_socket_it_tried() {
    init();
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("pipewire-0");
    // In-process, with the `remote` property.
    let producer = Producer::build(&socket.to_string_lossy(), "vcam-nodaemon", FORMAT, "");
    assert!(producer.pipeline.set_state(gst::State::Playing).is_err());
    let err = producer
        .wait_message(gst::MessageType::Error, Duration::from_secs(5), |_| true)
        .expect("an error message");
    assert!(err.contains(&socket.display().to_string()), "{err}");
    // It says what to do, naming knobs that exist: the element's property and the variable.
    assert!(
        producer.sink.find_property("remote").is_some(),
        "the message names a `remote` property"
    );
    for fix in ["start PipeWire", "`remote` property", "PIPEWIRE_REMOTE"] {
        assert!(err.contains(fix), "error does not mention {fix:?}: {err}");
    }
    drop(producer);

    // As a user would hit it: gst-launch-1.0 with XDG_RUNTIME_DIR pointing at no daemon.
    let mut cmd = gst_command("gst-launch-1.0");
    cmd.env("XDG_RUNTIME_DIR", dir.path())
        .env_remove("PIPEWIRE_REMOTE")
        .env_remove("PIPEWIRE_RUNTIME_DIR")
        .args(["videotestsrc", "num-buffers=5", "!", "pwvideosink"]);
    let res = ChildGuard::spawn("gst-launch without daemon", &mut cmd)
        .wait_output(Duration::from_secs(20));
    assert!(!res.status.success());
    let text = output_text(&res);
    assert!(text.contains(&socket.display().to_string()), "{text}");
    assert!(text.contains("PIPEWIRE_REMOTE"), "{text}");
}
