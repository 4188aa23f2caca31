// SPDX-License-Identifier: MPL-2.0
//! Consumers coming and going: a consumer SIGKILLed mid-stream, then new consumers still get frames
//! (the upstream `pipewiresink mode=provide` never delivers again after that); two consumers
//! at once both get frames.

mod common;

use std::time::Duration;

use common::*;
use vcambridge_tests::wait_for;

const FORMAT: &str = "I420";

#[test]
fn new_consumer_gets_frames_after_one_is_killed_mid_stream() {
    let node = "vcam-kill";
    let (session, producer) = session_with_producer(node, FORMAT, "");
    let reference = reference_frame(FORMAT);
    let frame = reference.len() as u64;

    for round in 1..=2 {
        // A consumer that would run forever, killed once it has received a few frames.
        let victim = Consumer::spawn(&session, node, None, &caps_str(FORMAT), "victim consumer");
        wait_for(
            Duration::from_secs(20),
            "the victim consumer's first frames",
            || (victim.len() >= 5 * frame).then_some(()),
        );
        wait_for(Duration::from_secs(10), "consumers=1 in stats", || {
            (producer.consumers() == 1).then_some(())
        });
        victim.guard.signal(libc::SIGKILL);
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
    let node = "vcam-two";
    let (session, producer) = session_with_producer(node, FORMAT, "");
    let reference = reference_frame(FORMAT);
    let frames = 90; // 3 s at 30 fps: long enough to see both linked at once

    let consumers: Vec<_> = (0..2)
        .map(|i| {
            let what = format!("consumer {i}");
            Consumer::spawn(&session, node, Some(frames), &caps_str(FORMAT), &what)
        })
        .collect();
    wait_for(
        Duration::from_secs(15),
        "both consumers linked (stats consumers=2)",
        || (producer.consumers() == 2).then_some(()),
    );
    wait_for(Duration::from_secs(15), "both consumers receiving", || {
        consumers
            .iter()
            .all(|c| c.len() >= 5 * reference.len() as u64)
            .then_some(())
    });
    for (i, c) in consumers.into_iter().enumerate() {
        c.check(&session, &reference, frames, &format!("consumer {i}"));
    }
    assert_eq!(producer.first_error(), None);
}
