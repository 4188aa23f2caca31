// SPDX-License-Identifier: MPL-2.0
//! State cycles: the loop thread is joined and nothing leaks. Alone in its own test binary so
//! that thread and fd counts of the process are not disturbed by other tests.

mod common;

use std::time::Duration;

use common::*;
use gst::prelude::*;
use vcambridge_tests::pipewire::PipeWireSession;

const FORMAT: &str = "I420";

/// NULL → PLAYING → NULL cycles: each time the node comes back and serves a consumer, and the
/// loop threads are joined (no thread or fd growth).
#[test]
fn state_cycles_serve_consumers_and_leak_nothing() {
    init();
    let session = PipeWireSession::start();
    let node = "vcam-cycles";
    let reference = reference_frame(FORMAT);
    let producer = Producer::build(&session.socket_path().to_string_lossy(), node, FORMAT, "");
    let count = |dir: &str| std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
    let mut baseline = None;
    for cycle in 0..3 {
        producer
            .pipeline
            .set_state(gst::State::Playing)
            .expect("to PLAYING");
        session.wait_for_node(node, Duration::from_secs(10));
        let what = format!("consumer in cycle {cycle}");
        run_consumer(&session, node, FORMAT, 10, &reference, &what);
        producer
            .pipeline
            .set_state(gst::State::Null)
            .expect("to NULL");
        let mut now = (count("/proc/self/task"), count("/proc/self/fd"));
        // The first cycle loads libraries and GStreamer's own threads; compare from then on.
        match baseline {
            None => baseline = Some(now),
            Some((threads, fds)) => {
                // A joined thread can still be listed for a moment (the kernel wakes
                // pthread_join before it has released the task): bounded wait.
                let deadline = std::time::Instant::now() + Duration::from_secs(2);
                while now.0 > threads && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                    now.0 = count("/proc/self/task");
                }
                assert!(
                    now.0 <= threads,
                    "threads grew: {threads} -> {}: {:?}",
                    now.0,
                    thread_names()
                );
                assert!(now.1 <= fds + 2, "fds grew: {fds} -> {}", now.1);
            }
        }
    }
}

/// This process's thread names (for failure messages).
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .map(|n| n.trim().to_string())
                .collect()
        })
        .unwrap_or_default()
}
