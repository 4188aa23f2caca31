// SPDX-License-Identifier: MPL-2.0
//! The sink lends PipeWire's buffers upstream (allocation query → buffer pool): frames written
//! into them go out with no copy, frames from anywhere else are copied; buffers still lent when
//! their PipeWire buffers go away (consumer killed, daemon restarted, new size) stay writable
//! and are copied, never queued in place, when they come back.
//!
//! Upstream here is an appsrc whose buffers the test acquires from the sink's own pool (what
//! videotestsrc / videoconvert do through the allocation query; `roundtrip.rs` checks those),
//! so the test can hold lent buffers across the events.

mod common;

use std::time::Duration;

use common::*;
use gst::prelude::*;
use vcambridge_tests::pipewire::PipeWireSession;
use vcambridge_tests::wait_for;

const FORMAT: &str = "I420";

/// The pool the sink proposes for `caps` (an allocation query on its sink pad), active.
fn sink_pool(sink: &gst::Element, caps: &str) -> gst::BufferPool {
    let caps: gst::Caps = caps.parse().expect("caps");
    let mut query = gst::query::Allocation::new(Some(&caps), true);
    assert!(
        sink.static_pad("sink").expect("pad").query(&mut query),
        "allocation query"
    );
    let (pool, size, _, _) = query
        .allocation_pools()
        .next()
        .expect("the sink proposes a pool");
    let pool = pool.expect("a pool object, not just sizes");
    let mut config = pool.config();
    config.set_params(Some(&caps), size, 0, 0);
    pool.set_config(config).expect("pool config");
    pool.set_active(true).expect("activate the pool");
    pool
}

/// A buffer from `pool` holding `frame`.
fn pooled(pool: &gst::BufferPool, frame: &[u8]) -> Option<gst::Buffer> {
    let mut buf = pool.acquire_buffer(None).ok()?;
    buf.get_mut()?.map_writable().ok()?.copy_from_slice(frame);
    Some(buf)
}

fn stat(sink: &gst::Element, field: &str) -> u64 {
    stats(sink).get::<u64>(field).expect(field)
}

/// Acquire `n` buffers that really are lent (not the system-memory fallback).
fn hold_lent(
    sink: &gst::Element,
    pool: &gst::BufferPool,
    frame: &[u8],
    n: usize,
) -> Vec<gst::Buffer> {
    wait_for(Duration::from_secs(10), "lent buffers to hold", || {
        let (lent, misses) = (stat(sink, "buffers-lent"), stat(sink, "lend-misses"));
        let held: Vec<_> = (0..n).filter_map(|_| pooled(pool, frame)).collect();
        (held.len() == n
            && stat(sink, "lend-misses") == misses
            && stat(sink, "buffers-lent") >= lent + n as u64)
            .then_some(held)
    })
}

/// Push `bufs` one at a time, 40 ms apart (each one rendered, none replaced in the mailbox).
fn push_slowly(appsrc: &gst_app::AppSrc, bufs: Vec<gst::Buffer>) {
    for b in bufs {
        appsrc.push_buffer(b).expect("push");
        std::thread::sleep(Duration::from_millis(40));
    }
}

#[test]
fn pooled_frames_go_out_in_place_and_others_are_copied() {
    init();
    let session = PipeWireSession::start();
    let node = "vcam-lend";
    let reference = reference_frame(FORMAT);
    let (pipeline, appsrc, sink) = appsrc_pipeline(
        &session,
        node,
        &format!("caps=\"{}\"", caps_str(FORMAT)),
        "",
    );
    let pool = sink_pool(&sink, &caps_str(FORMAT));
    let pusher = Pusher::start(appsrc.clone(), {
        let (pool, reference) = (pool.clone(), reference.clone());
        move || pooled(&pool, &reference)
    });
    session.wait_for_node(node, Duration::from_secs(10));
    run_consumer(
        &session,
        node,
        FORMAT,
        20,
        &reference,
        "consumer of pooled frames",
    );
    let [in_place, copied, misses] =
        ["frames-in-place", "frames-copied", "lend-misses"].map(|f| stat(&sink, f));
    assert!(
        in_place >= 17 && copied <= misses,
        "pooled frames are sent in place: {:?}",
        stats(&sink)
    );
    assert_eq!(
        pusher.stop(),
        0,
        "the pool never failed to hand out a buffer"
    );

    // System memory from elsewhere: copied, exact.
    let pusher = Pusher::start(appsrc, {
        let reference = reference.clone();
        move || Some(gst::Buffer::from_slice(reference.clone()))
    });
    let copied_before = stat(&sink, "frames-copied");
    let late_before = stat(&sink, "copies-on-data-thread");
    run_consumer(
        &session,
        node,
        FORMAT,
        20,
        &reference,
        "consumer of system-memory frames",
    );
    assert!(
        stat(&sink, "frames-copied") >= copied_before + 20,
        "{:?}",
        stats(&sink)
    );
    // Copied by render() before the cycle (`lend::copy_ahead`), not in a later graph cycle,
    // which copies only a frame that found no free buffer.
    let late = stat(&sink, "copies-on-data-thread") - late_before;
    assert!(
        late <= 2,
        "{late} of the copies ran in a later graph cycle: {:?}",
        stats(&sink)
    );
    pusher.stop();
    let _ = pipeline.set_state(gst::State::Null);
}

#[test]
fn consumer_killed_while_buffers_are_lent_never_stalls_upstream() {
    init();
    let session = PipeWireSession::start();
    let node = "vcam-lend-kill";
    let reference = reference_frame(FORMAT);
    let frame = reference.len() as u64;
    let (pipeline, appsrc, sink) = appsrc_pipeline(
        &session,
        node,
        &format!("caps=\"{}\"", caps_str(FORMAT)),
        "",
    );
    let pool = sink_pool(&sink, &caps_str(FORMAT));
    let pusher = Pusher::start(appsrc.clone(), {
        let (pool, reference) = (pool.clone(), reference.clone());
        move || pooled(&pool, &reference)
    });
    session.wait_for_node(node, Duration::from_secs(10));
    let victim = Consumer::spawn(&session, node, None, &caps_str(FORMAT), "victim consumer");
    wait_for(Duration::from_secs(20), "the victim's first frames", || {
        (victim.len() >= 5 * frame).then_some(())
    });
    let held = hold_lent(&sink, &pool, &reference, 3);
    victim.guard.signal(libc::SIGKILL);
    drop(victim);
    wait_for(
        Duration::from_secs(10),
        "consumers=0 after the kill",
        || (stats(&sink).get::<u32>("consumers").ok() == Some(0)).then_some(()),
    );
    // Their PipeWire buffers are gone: the memory is still ours to write.
    let mut held = held;
    for b in &mut held {
        b.get_mut()
            .expect("writable")
            .map_writable()
            .expect("map")
            .copy_from_slice(&reference);
    }
    // Acquiring never waits: a buffer still in the sink's hands, or system memory when none
    // is free (here 3 are held and PipeWire may have dropped the rest with the consumer).
    let served = || stat(&sink, "lend-misses") + stat(&sink, "buffers-lent");
    let before = served();
    let t = std::time::Instant::now();
    let extra: Vec<_> = (0..20)
        .map(|_| {
            pool.acquire_buffer(None)
                .expect("acquire without a consumer")
        })
        .collect();
    assert!(t.elapsed() < Duration::from_secs(1), "acquire waited");
    assert!(served() >= before + 20, "{:?}", stats(&sink));
    assert!(
        stat(&sink, "lend-misses") > 0,
        "20 held: some were system memory"
    );
    drop(extra);

    let consumer = Consumer::spawn(&session, node, Some(20), &caps_str(FORMAT), "new consumer");
    wait_for(
        Duration::from_secs(20),
        "the new consumer's first frames",
        || (consumer.len() >= 2 * frame).then_some(()),
    );
    // The held buffers come back: sent in place if their PipeWire buffers survived the
    // consumer (PipeWire 0.3.65 keeps an output's buffers across links), copied if not;
    // either way the new consumer's frames are exact.
    let sent = stat(&sink, "frames-sent");
    push_slowly(&appsrc, held);
    consumer.check(&session, &reference, 20, "new consumer after the kill");
    assert!(stat(&sink, "frames-sent") >= sent + 2, "{:?}", stats(&sink));
    let in_place = stat(&sink, "frames-in-place");
    run_consumer(&session, node, FORMAT, 10, &reference, "one more consumer");
    assert!(
        stat(&sink, "frames-in-place") >= in_place + 8,
        "{:?}",
        stats(&sink)
    );
    pusher.stop();
    let _ = pipeline.set_state(gst::State::Null);
}

#[test]
fn daemon_restart_with_buffers_lent() {
    init();
    let mut session = PipeWireSession::start();
    let node = "vcam-lend-restart";
    let reference = reference_frame(FORMAT);
    let frame = reference.len() as u64;
    let (pipeline, appsrc, sink) = appsrc_pipeline(
        &session,
        node,
        &format!("caps=\"{}\"", caps_str(FORMAT)),
        "",
    );
    let pool = sink_pool(&sink, &caps_str(FORMAT));
    let pusher = Pusher::start(appsrc.clone(), {
        let (pool, reference) = (pool.clone(), reference.clone());
        move || pooled(&pool, &reference)
    });
    session.wait_for_node(node, Duration::from_secs(10));
    run_consumer(
        &session,
        node,
        FORMAT,
        10,
        &reference,
        "consumer before restart",
    );
    let held = hold_lent(&sink, &pool, &reference, 2);
    session.restart_pipewire();
    session.wait_for_node(node, Duration::from_secs(15));
    let consumer = Consumer::spawn(&session, node, Some(20), &caps_str(FORMAT), "after restart");
    wait_for(Duration::from_secs(20), "frames after the restart", || {
        (consumer.len() >= 2 * frame).then_some(())
    });
    let copied = stat(&sink, "frames-copied");
    push_slowly(&appsrc, held);
    consumer.check(&session, &reference, 20, "consumer after restart");
    assert!(
        stat(&sink, "frames-copied") > copied,
        "stale buffers are copied: {:?}",
        stats(&sink)
    );
    assert!(stat(&sink, "frames-in-place") > 0);
    pusher.stop();
    let _ = pipeline.set_state(gst::State::Null);
}

#[test]
fn new_size_with_buffers_lent() {
    let node = "vcam-lend-recaps";
    let (session, producer) = session_with_producer(node, FORMAT, "");
    let sink = producer.pipeline.by_name("sink").expect("sink");
    let small = reference_frame(FORMAT);
    let pool = sink_pool(&sink, &caps_str(FORMAT));
    let mut consumer = printing_consumer(&session, node, 60, "video/x-raw !");
    let consumer =
        vcambridge_tests::ChildGuard::spawn("consumer across caps change", &mut consumer);
    wait_for(Duration::from_secs(15), "first frames sent", || {
        (producer.stat_u64("frames-in-place") >= 5).then_some(())
    });
    let mut held = hold_lent(&sink, &pool, &small, 2);
    let in_place = producer.stat_u64("frames-in-place");
    producer
        .pipeline
        .by_name("caps")
        .expect("capsfilter")
        .set_property(
            "caps",
            "video/x-raw,format=I420,width=640,height=480,framerate=30/1"
                .parse::<gst::Caps>()
                .expect("caps"),
        );
    let res = consumer.wait_output(Duration::from_secs(30));
    assert!(res.status.success(), "consumer: {}", output_text(&res));
    let large = 640 * 480 * 3 / 2;
    let stdout = String::from_utf8_lossy(&res.stdout);
    assert!(stdout.contains(&format!("({large} bytes")), "{stdout}");
    // videotestsrc writes 640x480 frames into new lent buffers; the old ones, still held,
    // are writable and released safely.
    assert!(
        producer.stat_u64("frames-in-place") > in_place + 5,
        "{:?}",
        producer.stats()
    );
    for b in &mut held {
        b.get_mut()
            .expect("writable")
            .map_writable()
            .expect("map")
            .copy_from_slice(&small);
    }
    drop(held);
    assert_eq!(producer.first_error(), None);
}

/// Frames copied from memory of elsewhere all reach the consumer: the offsets (our sequence
/// numbers) it sees step by one. (Reusing the buffer the consumer gave back last lost about
/// one frame in four with pipewiresrc; free buffers go out least recently used first.)
#[test]
fn copied_frames_all_reach_the_consumer() {
    init();
    let session = PipeWireSession::start();
    let node = "vcam-copy-rate";
    let reference = reference_frame(FORMAT);
    let (pipeline, appsrc, sink) = appsrc_pipeline(
        &session,
        node,
        &format!("caps=\"{}\"", caps_str(FORMAT)),
        "",
    );
    let pusher = Pusher::start(appsrc, {
        let reference = reference.clone();
        move || Some(gst::Buffer::from_slice(reference.clone()))
    });
    session.wait_for_node(node, Duration::from_secs(10));
    let mut cmd = printing_consumer(&session, node, 45, "");
    let res = vcambridge_tests::ChildGuard::spawn("consumer of copied frames", &mut cmd)
        .wait_output(Duration::from_secs(30));
    assert!(
        res.status.success(),
        "{}\n{}",
        output_text(&res),
        session.logs()
    );
    let stdout = String::from_utf8_lossy(&res.stdout);
    let offsets: Vec<u64> = stdout
        .lines()
        .filter(|l| l.contains("chain"))
        .filter_map(|l| {
            let rest = &l[l.find("offset: ")? + 8..];
            rest.split(',').next()?.trim().parse().ok()
        })
        .collect();
    assert_eq!(offsets.len(), 45, "{stdout}");
    // Skip the first frames (the consumer links while frames already flow).
    let gaps = offsets[5..].windows(2).filter(|w| w[1] != w[0] + 1).count();
    assert!(
        gaps <= 3,
        "{gaps} gaps in the sequence of 40 copied frames: {offsets:?} ({:?})",
        stats(&sink)
    );
    assert!(stat(&sink, "frames-copied") >= 45, "{:?}", stats(&sink));
    assert!(
        stat(&sink, "copies-on-data-thread") <= 3,
        "copies ran in a later graph cycle: {:?}",
        stats(&sink)
    );
    pusher.stop();
    let _ = pipeline.set_state(gst::State::Null);
}
