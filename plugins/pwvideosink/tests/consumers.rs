// SPDX-License-Identifier: MPL-2.0
//! Consumers coming and going: a consumer SIGKILLed mid-stream, then new consumers still get frames
//! (the upstream `pipewiresink mode=provide` never delivers again after that); two consumers
//! at once both get frames.

mod common;

use std::time::Duration;

use common::*;
use vcambridge_tests::pipewire::PipeWireSession;
use vcambridge_tests::{ChildGuard, wait_for};

const FORMAT: &str = "I420";

#[test]
fn new_consumer_gets_frames_after_one_is_killed_mid_stream() {
    init();
    let session = PipeWireSession::start();
    let node = "vcam-kill";
    let producer = Producer::start(&session, node, FORMAT, "");
    session.wait_for_node(node, Duration::from_secs(10));
    let reference = reference_frame(FORMAT);
    let frame = reference.len() as u64;

    for round in 1..=2 {
        // A consumer that would run forever, killed once it has received a few frames.
        let out = tempfile::NamedTempFile::new().expect("temp file");
        let tail = format!(
            "{} ! filesink location={}",
            caps_str(FORMAT),
            out.path().display()
        );
        let victim = ChildGuard::spawn("victim consumer", &mut session.consumer(node, None, &tail));
        wait_for(
            Duration::from_secs(20),
            "the victim consumer's first frames",
            || (file_len(out.path()) >= 5 * frame).then_some(()),
        );
        wait_for(Duration::from_secs(10), "consumers=1 in stats", || {
            (producer.consumers() == 1).then_some(())
        });
        victim.signal(libc::SIGKILL);
        drop(victim);
        wait_for(
            Duration::from_secs(10),
            "consumers=0 after the kill",
            || (producer.consumers() == 0).then_some(()),
        );
        let sent_before = producer.stat_u64("frames-sent");
        run_consumer(
            &session,
            node,
            FORMAT,
            20,
            &reference,
            &format!("consumer after kill #{round}"),
        );
        assert!(producer.stat_u64("frames-sent") >= sent_before + 20);
    }
    assert_eq!(producer.first_error(), None);
}

#[test]
fn two_consumers_at_once_both_get_frames() {
    init();
    let session = PipeWireSession::start();
    let node = "vcam-two";
    let producer = Producer::start(&session, node, FORMAT, "");
    session.wait_for_node(node, Duration::from_secs(10));
    let reference = reference_frame(FORMAT);
    let frames = 90; // 3 s at 30 fps: long enough to see both linked at once

    let outs: Vec<_> = (0..2)
        .map(|_| tempfile::NamedTempFile::new().expect("temp file"))
        .collect();
    let consumers: Vec<_> = outs
        .iter()
        .map(|o| {
            let tail = format!(
                "{} ! filesink location={}",
                caps_str(FORMAT),
                o.path().display()
            );
            ChildGuard::spawn("consumer", &mut session.consumer(node, Some(frames), &tail))
        })
        .collect();
    wait_for(
        Duration::from_secs(15),
        "both consumers linked (stats consumers=2)",
        || (producer.consumers() == 2).then_some(()),
    );
    wait_for(Duration::from_secs(15), "both consumers receiving", || {
        outs.iter()
            .all(|o| file_len(o.path()) >= 5 * reference.len() as u64)
            .then_some(())
    });
    for (i, c) in consumers.into_iter().enumerate() {
        let res = c.wait_output(Duration::from_secs(30));
        assert!(
            res.status.success(),
            "consumer {i} failed: {}",
            String::from_utf8_lossy(&res.stderr)
        );
        check_frames(
            outs[i].path(),
            &reference,
            frames as usize,
            &format!("consumer {i}"),
        );
    }
    assert_eq!(producer.first_error(), None);
}
