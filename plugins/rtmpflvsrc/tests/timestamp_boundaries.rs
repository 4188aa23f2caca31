//! RTMP timestamps across the 24-bit extended-timestamp boundary (0xFFFFFF ms, ~4 h 40 min) and
//! the 32-bit wrap (~49.7 days): hand-made streams from rml_rtmp's ClientSession (type-0 and delta
//! chunk headers mixed) and a real ffmpeg publisher shifted with -output_ts_offset.

mod common;

use std::time::Duration;

use common::client::{RtmpClient, h264_flv_video_tags};
use common::{Options, Receiver, assert_strictly_increasing};
use vcambridge_tests::rtmp::FfmpegPublisher;

const WAIT: Duration = Duration::from_secs(30);
const FRAME_MS: u32 = 33;

/// rtmpflvsrc re-anchors a session's mapping when a buffer is handled more than `latency` ms
/// behind the running time (so syncing sinks do not drop everything after a stall). A loaded CI
/// machine can stall a publisher that long; these tests are about the RTMP timestamp arithmetic,
/// so give them 10 s of slack.
fn options() -> Options {
    Options::default()
        .prop("eos-on-disconnect", "true")
        .prop("latency", "10000")
}

/// Publish `frames` H.264 frames with RTMP timestamps `base + i * 33` (wrapping), then close.
/// Every third message is marked droppable, which makes rml_rtmp start the next one with a full
/// type-0 header; the others use delta headers — both paths cross the boundary.
fn publish_around(base: u32, frames: u32) {
    let tags = h264_flv_video_tags(frames, 320, 240);
    let rx = Receiver::start(options());
    {
        let mut c = RtmpClient::publisher(rx.port, "live", "ts").expect("publish");
        c.send_video(&tags[0].data, base, false)
            .expect("sequence header");
        for (i, t) in tags[1..].iter().enumerate() {
            let ts = base.wrapping_add(FRAME_MS * i as u32);
            c.send_video(&t.data, ts, i % 3 == 2).expect("frame");
        }
    }
    rx.wait_pads_eos(&["video"], WAIT);
    rx.assert_no_error();
    rx.check(|d| {
        assert_eq!(d.video.len(), frames as usize, "video buffers");
        assert_eq!(
            d.samples.len(),
            frames as usize,
            "decoded frames: the data crossed the boundary intact"
        );
        let pts: Vec<_> = d.video.iter().map(|b| b.pts.expect("PTS")).collect();
        assert_strictly_increasing(&pts, "video PTS");
        for (i, w) in pts.windows(2).enumerate() {
            let rtmp_ts = base.wrapping_add(FRAME_MS * (i as u32 + 1));
            assert_eq!(
                w[1] - w[0],
                gst::ClockTime::from_mseconds(FRAME_MS as u64),
                "PTS delta before the frame with RTMP timestamp {rtmp_ts:#x}"
            );
        }
        let dts: Vec<_> = d.video.iter().filter_map(|b| b.dts).collect();
        if !dts.is_empty() {
            assert_strictly_increasing(&dts, "video DTS");
        }
    });
    rx.stop();
}

#[test]
fn rml_client_across_extended_timestamp_boundary() {
    // Frame 10 lands exactly on 0xFFFFFF (the value that means "extended timestamp follows").
    publish_around(0xFF_FFFF - 10 * FRAME_MS, 30);
}

#[test]
fn rml_client_across_32bit_wrap() {
    // Frames 0..9 are below 2^32, frame 10 is at 0 after the wrap... plus one ms.
    publish_around(0u32.wrapping_sub(10 * FRAME_MS - 1), 30);
}

#[test]
fn ffmpeg_across_extended_timestamp_boundary() {
    const N: u32 = 30;
    let rx = Receiver::start(options());
    let mut p = FfmpegPublisher::new(&rx.url("live", "key"), N);
    p.audio = false;
    // 0xFFFFFF ms = 16777.215 s: start 215 ms before the boundary (frame ~7 crosses it).
    p.ts_offset = Some(16777.0);
    let (ok, err) = p.run(Duration::from_secs(90));
    assert!(ok, "ffmpeg failed: {err}");
    rx.wait_pads_eos(&["video"], WAIT);
    rx.assert_no_error();
    rx.check(|d| {
        assert_eq!(d.video.len(), N as usize);
        assert_eq!(d.samples.len(), N as usize, "decoded frames");
        let pts: Vec<_> = d.video.iter().map(|b| b.pts.expect("PTS")).collect();
        assert_strictly_increasing(&pts, "video PTS");
        for w in pts.windows(2) {
            let delta = (w[1] - w[0]).mseconds();
            assert!(
                (32..=35).contains(&delta),
                "PTS delta {delta} ms at 30 fps: {pts:?}"
            );
        }
    });
    rx.stop();
}
