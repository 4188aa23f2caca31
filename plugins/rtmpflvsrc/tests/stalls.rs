//! A paced publisher whose frames are held back for 2 s: after a network stall (timestamps kept
//! running, the held frames arrive in a burst) the output keeps the session's mapping, so the
//! stall does not stay behind as latency; after a publisher pause (timestamps resume where they
//! stopped) the mapping moves forward by about the pause, once the frames stayed late for a second.

mod common;

use std::time::{Duration, Instant};

use common::client::{RtmpClient, h264_flv_video_tags};
use common::{Options, Receiver};

const FRAME_MS: u32 = 33;
const WAIT: Duration = Duration::from_secs(30);
/// Frames before the stall, during it (held back) and after it.
const BEFORE: usize = 30;
const HELD: usize = 60;
const AFTER: usize = 60;

/// How the publisher's timestamps behave across the 2 s hold.
#[derive(Clone, Copy)]
enum Stall {
    /// The network held the frames: their timestamps are real time, sent in a burst after it.
    Network,
    /// The publisher paused: nothing is sent for 2 s, then timestamps go on where they stopped.
    Pause,
}

/// Publishes BEFORE + HELD + AFTER frames paced at 33 ms with the given stall after BEFORE and
/// returns each frame's output PTS offset from the first one, in ms.
fn publish(stall: Stall) -> Vec<i64> {
    let frames = BEFORE + HELD + AFTER;
    let tags = h264_flv_video_tags(frames as u32, 320, 240);
    let rx = Receiver::start(Options::default().prop("eos-on-disconnect", "true"));
    {
        let mut c = RtmpClient::publisher(rx.port, "live", "stall").expect("publish");
        c.send_video(&tags[0].data, 0, false)
            .expect("sequence header");
        let start = Instant::now();
        let pace = |slot: usize| {
            let due = start + Duration::from_millis(u64::from(FRAME_MS) * slot as u64);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        };
        for (i, t) in tags[1..].iter().enumerate() {
            match stall {
                // Frames BEFORE..BEFORE+HELD all go out at the end of the hold.
                Stall::Network if (BEFORE..BEFORE + HELD).contains(&i) => pace(BEFORE + HELD),
                Stall::Network => pace(i),
                // Nothing for HELD frame times, then every frame one hold later than its slot.
                Stall::Pause if i < BEFORE => pace(i),
                Stall::Pause => pace(i + HELD),
            }
            c.send_video(&t.data, FRAME_MS * i as u32, false)
                .expect("frame");
        }
    }
    rx.wait_pads_eos(&["video"], WAIT);
    rx.assert_no_error();
    let pts = rx.check(|d| {
        assert_eq!(d.video.len(), frames, "video buffers");
        d.video
            .iter()
            .map(|b| b.pts.expect("PTS").mseconds() as i64)
            .collect::<Vec<_>>()
    });
    rx.stop();
    pts.iter().map(|p| p - pts[0]).collect()
}

#[test]
fn a_network_stall_leaves_no_latency_behind() {
    let pts = publish(Stall::Network);
    // Every frame keeps the session's mapping: PTS = first PTS + its RTMP timestamp.
    for (i, p) in pts.iter().enumerate() {
        assert_eq!(
            *p,
            i64::from(FRAME_MS) * i as i64,
            "frame {i}: the mapping moved (PTS offsets {pts:?})"
        );
    }
}

#[test]
fn a_paused_publisher_is_moved_forward_once() {
    let pts = publish(Stall::Pause);
    // Where the mapping moved: exactly one step that is not 33 ms, and it is about the pause
    // (2 s, less what the pause's lateness bound and the second of late frames took up).
    let steps: Vec<(usize, i64)> = pts
        .windows(2)
        .enumerate()
        .map(|(i, w)| (i + 1, w[1] - w[0]))
        .filter(|&(_, d)| d != i64::from(FRAME_MS))
        .collect();
    assert_eq!(steps.len(), 1, "one re-anchoring step expected: {steps:?}");
    let (at, step) = steps[0];
    let pause = i64::from(FRAME_MS) * HELD as i64;
    assert!(
        (pause - 500..=pause + 500).contains(&(step - i64::from(FRAME_MS))),
        "the mapping moved by {step} ms at frame {at}, not by about the {pause} ms pause"
    );
    // Not before the frames had been late for a second (30 frames after the pause).
    assert!(
        at >= BEFORE + 1 + 25,
        "moved at frame {at}, before a second of late frames"
    );
}
