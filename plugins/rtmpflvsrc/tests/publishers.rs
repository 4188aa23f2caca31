//! Real publishers into rtmpflvsrc over real TCP, decoded: ffmpeg (H.264 + AAC), GStreamer's
//! `x264enc ! flvmux ! rtmp2sink`, and Enhanced RTMP (HEVC, AV1, VP9, Opus) from libavformat 8
//! (PyAV). Each asserts the decoded frame count, a pixel of the solid published colour and caps.

mod common;

use std::time::Duration;

use common::{Options, Receiver, assert_colour_close, have_element};
use vcambridge_tests::rtmp::{
    FfmpegPublisher, GstPublisher, PyavPublisher, pyav_missing, rgb_components,
};

const FRAMES: u32 = 30;
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(90);
const EOS_TIMEOUT: Duration = Duration::from_secs(30);

/// The checks every publisher shares once the stream ended (EOS, thanks to eos-on-disconnect):
/// every frame decoded, the colour survived, no error, connect/disconnect messages, stats.
fn check_decoded(rx: &Receiver, frames: u32, colour: u32, codec: &str, audio: bool) {
    rx.wait_pads_eos(
        if audio {
            &["video", "audio"]
        } else {
            &["video"]
        },
        EOS_TIMEOUT,
    );
    rx.assert_no_error();
    rx.check(|d| {
        assert_eq!(
            d.samples.len(),
            frames as usize,
            "decoded video frames (published {frames}); {} elementary buffers on the video pad",
            d.video.len()
        );
        assert_eq!(
            d.video.len(),
            frames as usize,
            "one elementary buffer (access unit) per published frame"
        );
        for (i, s) in d.samples.iter().enumerate() {
            assert_eq!((s.width, s.height), (320, 240), "frame {i} size");
        }
        // Skip the first frames (encoders ramp up quality); the centre of a solid frame must be
        // close to the published colour, allowing for YUV 4:2:0 round trips and quantisation.
        for s in d.samples.iter().skip(2) {
            assert_colour_close(
                s.centre.expect("RGB sample"),
                rgb_components(colour),
                12,
                "decoded centre pixel",
            );
        }
        let pts: Vec<_> = d.video.iter().filter_map(|b| b.dts.or(b.pts)).collect();
        assert_eq!(
            pts.len(),
            d.video.len(),
            "every video buffer is timestamped"
        );
        for w in pts.windows(2) {
            assert!(w[1] >= w[0], "decode timestamps go backwards: {pts:?}");
        }
        let connected = d.element_messages("rtmpflvsrc-connected");
        assert_eq!(connected.len(), 1, "one rtmpflvsrc-connected message");
        assert_eq!(connected[0].get::<String>("app").unwrap(), "live");
        assert_eq!(connected[0].get::<String>("stream-key").unwrap(), "key");
        assert!(
            !d.element_messages("rtmpflvsrc-disconnected").is_empty(),
            "an rtmpflvsrc-disconnected message"
        );
    });
    let stats = rx.stats();
    assert_eq!(stats.name(), "rtmpflvsrc-stats");
    assert_eq!(stats.get::<String>("video-codec").unwrap(), codec);
    assert_eq!(stats.get::<u64>("video-frames").unwrap(), frames as u64);
    assert_eq!(stats.get::<u64>("connections").unwrap(), 1);
    assert!(stats.get::<u64>("bytes").unwrap() > 0);
}

fn video_caps_name(rx: &Receiver) -> gst::Structure {
    rx.check(|d| {
        d.video_caps
            .first()
            .and_then(|c| c.structure(0))
            .map(|s| s.to_owned())
            .expect("caps on the video pad")
    })
}

fn audio_caps(rx: &Receiver) -> gst::Structure {
    rx.check(|d| {
        d.audio_caps
            .first()
            .and_then(|c| c.structure(0))
            .map(|s| s.to_owned())
            .expect("caps on the audio pad")
    })
}

fn assert_aac_caps(rx: &Receiver) {
    let a = audio_caps(rx);
    assert_eq!(a.name(), "audio/mpeg", "audio caps {a}");
    assert_eq!(a.get::<i32>("mpegversion").unwrap(), 4, "audio caps {a}");
    assert_eq!(
        a.get::<String>("stream-format").unwrap(),
        "raw",
        "audio caps {a}"
    );
    let cd = a.get::<gst::Buffer>("codec_data").expect("AAC codec_data");
    assert!(cd.size() >= 2, "AudioSpecificConfig is at least 2 bytes");
    rx.check(|d| assert!(!d.audio.is_empty(), "AAC frames arrived"));
}

#[test]
fn ffmpeg_h264_aac() {
    // latency=10 s: no re-anchoring of the timeline if this loaded machine stalls the publisher
    // (the decoded-PTS spacing below is about composition times).
    let rx = Receiver::start(
        Options::default()
            .prop("eos-on-disconnect", "true")
            .prop("latency", "10000"),
    );
    let mut p = FfmpegPublisher::new(&rx.url("live", "key"), FRAMES);
    // Keep B-frames: the FLV composition time must turn into correct PTS for the decoder.
    p.zerolatency = false;
    let (ok, err) = p.run(PUBLISH_TIMEOUT);
    assert!(ok, "ffmpeg failed to publish: {err}");
    check_decoded(&rx, FRAMES, p.color, "h264", true);

    let v = video_caps_name(&rx);
    assert_eq!(v.name(), "video/x-h264", "video caps {v}");
    assert_eq!(v.get::<String>("stream-format").unwrap(), "avc");
    assert_eq!(v.get::<String>("alignment").unwrap(), "au");
    assert!(
        v.get::<gst::Buffer>("codec_data").is_ok(),
        "avcC codec_data"
    );
    assert_aac_caps(&rx);
    assert_eq!(rx.stats().get::<String>("audio-codec").unwrap(), "aac");
    // B-frames: some buffer has PTS > DTS (composition time honoured).
    rx.check(|d| {
        assert!(
            d.video
                .iter()
                .any(|b| matches!((b.pts, b.dts), (Some(p), Some(d)) if p > d)),
            "with B-frames some PTS must exceed its DTS"
        );
        // Decoded frames come out in display order, 1/30 s apart: composition times applied.
        let pts: Vec<_> = d
            .samples
            .iter()
            .map(|s| s.pts.expect("decoded PTS"))
            .collect();
        common::assert_strictly_increasing(&pts, "decoded PTS");
        for w in pts.windows(2) {
            let ms = (w[1] - w[0]).mseconds();
            assert!(
                (32..=35).contains(&ms),
                "decoded PTS spacing {ms} ms: {pts:?}"
            );
        }
    });
    rx.stop();
}

#[test]
fn gst_rtmp2sink_h264_aac() {
    let rx = Receiver::start(Options::default().prop("eos-on-disconnect", "true"));
    let mut p = GstPublisher::new(&rx.url("live", "key"), FRAMES);
    p.color = 0xE04020;
    p.audio = have_element("avenc_aac");
    let (ok, err) = p.run(PUBLISH_TIMEOUT);
    assert!(ok, "gst-launch publisher failed: {err}");
    check_decoded(&rx, FRAMES, p.color, "h264", p.audio);
    let v = video_caps_name(&rx);
    assert_eq!(v.name(), "video/x-h264", "video caps {v}");
    if p.audio {
        assert_aac_caps(&rx);
    } else {
        println!("avenc_aac missing: published video only");
    }
    rx.stop();
}

/// Publish `codec` (+ `audio`) with libavformat's FLV muxer (Enhanced RTMP) and decode it.
fn enhanced_rtmp(codec: &str, audio: &str, caps_name: &str, decoder: &[&str]) {
    if let Some(why) = pyav_missing() {
        panic!("the Enhanced-RTMP publisher needs PyAV (scripts/install-deps.sh): {why}");
    }
    common::init();
    let can_decode = decoder.iter().any(|d| have_element(d));
    let opts = Options::default().prop("eos-on-disconnect", "true");
    let opts = if can_decode {
        opts
    } else {
        println!("no decoder among {decoder:?}: counting parsed frames only, decode skipped");
        opts.video_branch(common::COUNT_ONLY)
    };
    let rx = Receiver::start(opts);
    let mut p = PyavPublisher::new(&rx.url("live", "key"), codec, FRAMES);
    p.audio = audio.to_string();
    p.color = 0x20C060;
    // Paced at 30 fps like a real encoder: GStreamer 1.22's av1dec (libaom) has no drain(), so
    // frames still inside libaom when EOS arrives would be lost if the whole stream came at once
    // on a loaded machine.
    p.realtime = true;
    let (ok, out) = p.run(PUBLISH_TIMEOUT);
    assert!(ok, "PyAV {codec} publisher failed: {out}");
    assert!(
        out.contains(&format!("published video={FRAMES}")),
        "publisher output: {out}"
    );
    if can_decode {
        check_decoded(&rx, FRAMES, p.color, codec, audio != "none");
    } else {
        rx.wait_pads_eos(&["video"], EOS_TIMEOUT);
        rx.check(|d| assert_eq!(d.video.len(), FRAMES as usize, "parsed frames"));
    }
    let v = video_caps_name(&rx);
    assert_eq!(v.name(), caps_name, "video caps {v}");
    if codec == "hevc" {
        assert_eq!(v.get::<String>("stream-format").unwrap(), "hvc1", "{v}");
        assert!(
            v.get::<gst::Buffer>("codec_data").is_ok(),
            "hvcC codec_data"
        );
    }
    match audio {
        "aac" => assert_aac_caps(&rx),
        "opus" => {
            let a = audio_caps(&rx);
            assert_eq!(a.name(), "audio/x-opus", "audio caps {a}");
            rx.check(|d| assert!(!d.audio.is_empty(), "Opus packets arrived"));
            assert_eq!(rx.stats().get::<String>("audio-codec").unwrap(), "opus");
        }
        _ => {}
    }
    rx.stop();
}

#[test]
fn enhanced_rtmp_hevc_aac() {
    enhanced_rtmp("hevc", "aac", "video/x-h265", &["avdec_h265"]);
}

#[test]
fn enhanced_rtmp_av1_opus() {
    enhanced_rtmp(
        "av1",
        "opus",
        "video/x-av1",
        &["av1dec", "dav1ddec", "avdec_av1"],
    );
}

#[test]
fn enhanced_rtmp_vp9_opus() {
    enhanced_rtmp("vp9", "opus", "video/x-vp9", &["vp9dec", "avdec_vp9"]);
}

#[test]
fn ffmpeg_h264_mp3() {
    let rx = Receiver::start(
        Options::default()
            .prop("eos-on-disconnect", "true")
            .video_branch(common::COUNT_ONLY),
    );
    let mut p = FfmpegPublisher::new(&rx.url("live", "key"), FRAMES);
    p.audio_codec = "libmp3lame".to_string();
    let (ok, err) = p.run(PUBLISH_TIMEOUT);
    assert!(ok, "ffmpeg failed to publish: {err}");
    rx.wait_pads_eos(&["video", "audio"], EOS_TIMEOUT);
    rx.assert_no_error();
    let a = audio_caps(&rx);
    assert_eq!(a.name(), "audio/mpeg", "audio caps {a}");
    assert_eq!(a.get::<i32>("mpegversion").unwrap(), 1, "audio caps {a}");
    assert_eq!(a.get::<i32>("layer").unwrap(), 3, "audio caps {a}");
    rx.check(|d| {
        assert_eq!(d.video.len(), FRAMES as usize);
        // 1 s of 44.1 kHz MP3 is ~38 frames of 1152 samples.
        assert!(d.audio.len() >= 20, "MP3 frames: {}", d.audio.len());
    });
    assert_eq!(rx.stats().get::<String>("audio-codec").unwrap(), "mp3");
    rx.stop();
}

/// An audio-only publisher (ffmpeg `-vn`): only an `audio` pad, AAC decodes, EOS on disconnect.
#[test]
fn ffmpeg_audio_only() {
    let rx = Receiver::start(
        Options::default()
            .prop("eos-on-disconnect", "true")
            .audio_branch("decodebin ! audioconvert ! fakesink sync=false"),
    );
    vcambridge_tests::run_ok(
        "ffmpeg audio-only publisher",
        vcambridge_tests::ffmpeg()
            .args(common::client::SINE_1S_AAC_FLV)
            .arg(rx.url("live", "key")),
        PUBLISH_TIMEOUT,
    );
    rx.wait_pads_eos(&["audio"], EOS_TIMEOUT);
    rx.assert_no_error();
    assert_aac_caps(&rx);
    rx.check(|d| {
        assert_eq!(d.pads, vec!["audio".to_string()], "only an audio pad");
        // 1 s of 44.1 kHz AAC: 43 frames of 1024 samples (+ priming).
        assert!(
            (40..=50).contains(&d.audio.len()),
            "AAC frames: {}",
            d.audio.len()
        );
    });
    assert_eq!(rx.stats().get::<String>("video-codec").unwrap(), "");
    rx.stop();
}
