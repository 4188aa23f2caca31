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

/// What one run saw.
struct Run {
    /// Each frame's output PTS offset from the first one, in ms.
    pts: Vec<i64>,
    /// The output buffers' PTS and DTS.
    buffers: Vec<(gst::ClockTime, gst::ClockTime)>,
    /// Segments on the video pad, each with the number of buffers before it.
    segments: Vec<(usize, gst::FormattedSegment<gst::ClockTime>)>,
    /// PTS (ms) of the frames that reached the branch's appsink.
    samples: Vec<i64>,
}

/// Publishes BEFORE + HELD + AFTER frames paced at 33 ms with the given stall after BEFORE.
fn publish(stall: Stall) -> Vec<i64> {
    publish_into(stall, common::DECODE_RGB).pts
}

/// [`publish`] into the video branch `branch`.
fn publish_into(stall: Stall, branch: &str) -> Run {
    let frames = BEFORE + HELD + AFTER;
    let tags = h264_flv_video_tags(frames as u32, 320, 240);
    let rx = Receiver::start(
        Options::default()
            .prop("eos-on-disconnect", "true")
            .video_branch(branch),
    );
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
    let run = rx.check(|d| {
        assert_eq!(d.video.len(), frames, "video buffers");
        let pts: Vec<i64> = d
            .video
            .iter()
            .map(|b| b.pts.expect("PTS").mseconds() as i64)
            .collect();
        Run {
            pts: pts.iter().map(|p| p - pts[0]).collect(),
            buffers: d
                .video
                .iter()
                .map(|b| (b.pts.expect("PTS"), b.dts.expect("DTS")))
                .collect(),
            segments: d.video_segments.clone(),
            samples: d
                .samples
                .iter()
                .map(|s| s.pts.expect("sample PTS").mseconds() as i64)
                .collect(),
        }
    });
    rx.stop();
    run
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

/// The move comes with a new segment on the pad, right before the first moved frame, starting
/// at its DTS and keeping every frame's running time; a frame-rate cap downstream
/// (`videorate drop-only=true max-rate=15`, as the main job's `--fps 15`) then keeps capping
/// across the move. (With the move announced only by the timestamps, videorate counted its
/// output slots from the first frame and let every frame through after the 2 s jump until the
/// count had caught up: ~30 frames 33 ms apart.)
#[test]
fn a_move_starts_a_new_segment_and_a_rate_cap_holds_across_it() {
    let run = publish_into(
        Stall::Pause,
        "decodebin ! videorate drop-only=true max-rate=15 ! videoconvert ! \
         video/x-raw,format=RGB ! appsink name=vsink sync=false",
    );
    let moved: Vec<usize> = run
        .pts
        .windows(2)
        .enumerate()
        .filter(|(_, w)| w[1] - w[0] != i64::from(FRAME_MS))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(moved.len(), 1, "one re-anchoring step expected: {moved:?}");
    let at = moved[0];
    // Two segments: the first one, and one right before the moved frame.
    assert_eq!(
        run.segments.len(),
        2,
        "segments (buffers before each): {:?}",
        run.segments
    );
    assert_eq!(run.segments[0].0, 0, "first segment before the first frame");
    let (before, segment) = &run.segments[1];
    assert_eq!(
        *before, at,
        "the new segment comes right before the moved frame {at}"
    );
    let (_, moved_dts) = run.buffers[at];
    assert_eq!(segment.start(), Some(moved_dts), "{segment:?}");
    // Running times unchanged: the move is in the timestamps, not in the segment.
    for (pts, _) in &run.buffers[at..] {
        assert_eq!(segment.to_running_time(*pts), Some(*pts), "{segment:?}");
    }
    // The cap held: no two frames closer than 50 ms (15 fps: 66.7 ms; a burst: 33 ms).
    let moved_at = run.buffers[at].0.mseconds() as i64;
    let after: Vec<i64> = run
        .samples
        .iter()
        .copied()
        .filter(|&p| p >= moved_at)
        .collect();
    assert!(after.len() >= 20, "{} frames after the move", after.len());
    let close: Vec<i64> = after
        .windows(2)
        .map(|w| w[1] - w[0])
        .filter(|&d| d < 50)
        .collect();
    assert!(
        close.is_empty(),
        "{} intervals under 50 ms after the move ({close:?}); all after it: {after:?}",
        close.len()
    );
}
