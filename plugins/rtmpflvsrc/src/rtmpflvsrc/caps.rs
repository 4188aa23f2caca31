// SPDX-License-Identifier: MPL-2.0

//! Which caps each codec of a publisher gets on the `video` and `audio` pads: the pad templates,
//! the caps of a stream from its codec configuration (sequence header), and the placeholder caps
//! of a pad that only ever carries EOS.

use bytes::Bytes;
use gst::prelude::*;

use crate::flv::{self, AudioCodec, LegacyAudioParams, VideoCodec};
use crate::timestamps::StreamKind;

/// Everything the `video` pad can output.
fn video_template_caps() -> gst::Caps {
    gst::Caps::builder_full()
        .structure(
            gst::Structure::builder("video/x-h264")
                .field("stream-format", "avc")
                .field("alignment", "au")
                .build(),
        )
        .structure(
            gst::Structure::builder("video/x-h265")
                .field("stream-format", "hvc1")
                .field("alignment", "au")
                .build(),
        )
        .structure(
            gst::Structure::builder("video/x-av1")
                .field("stream-format", "obu-stream")
                .field("alignment", "tu")
                .build(),
        )
        .structure(gst::Structure::new_empty("video/x-vp9"))
        .build()
}

/// Everything the `audio` pad can output.
fn audio_template_caps() -> gst::Caps {
    gst::Caps::builder_full()
        .structure(
            gst::Structure::builder("audio/mpeg")
                .field("mpegversion", 4i32)
                .field("stream-format", "raw")
                .build(),
        )
        .structure(
            gst::Structure::builder("audio/mpeg")
                .field("mpegversion", 1i32)
                .field("layer", 3i32)
                .build(),
        )
        .structure(gst::Structure::new_empty("audio/x-opus"))
        .build()
}

/// The `video` and `audio` sometimes pads.
pub(super) fn pad_templates() -> Vec<gst::PadTemplate> {
    [
        ("video", video_template_caps()),
        ("audio", audio_template_caps()),
    ]
    .into_iter()
    .map(|(name, caps)| {
        gst::PadTemplate::new(
            name,
            gst::PadDirection::Src,
            gst::PadPresence::Sometimes,
            &caps,
        )
        .expect("valid pad template")
    })
    .collect()
}

/// Caps for a pad that only carries EOS (no publisher came): H.264 / AAC, the codecs of
/// nearly every RTMP publisher.
pub(super) fn placeholder_caps(kind: StreamKind) -> gst::Caps {
    match kind {
        StreamKind::Video => gst::Caps::builder("video/x-h264")
            .field("stream-format", "avc")
            .field("alignment", "au")
            .build(),
        StreamKind::Audio => gst::Caps::builder("audio/mpeg")
            .field("mpegversion", 4i32)
            .field("stream-format", "raw")
            .build(),
    }
}

/// Caps of a video stream; `None` while a codec that needs its configuration (H.264, HEVC)
/// has not sent it yet.
pub(super) fn video_caps(codec: VideoCodec, config: Option<&Bytes>) -> Option<gst::Caps> {
    let codec_data = config
        .filter(|c| !c.is_empty())
        .map(|c| gst::Buffer::from_slice(c.clone()));
    Some(match codec {
        VideoCodec::H264 => gst::Caps::builder("video/x-h264")
            .field("stream-format", "avc")
            .field("alignment", "au")
            .field("codec_data", codec_data?)
            .build(),
        VideoCodec::H265 => gst::Caps::builder("video/x-h265")
            .field("stream-format", "hvc1")
            .field("alignment", "au")
            .field("codec_data", codec_data?)
            .build(),
        VideoCodec::Av1 => gst::Caps::builder("video/x-av1")
            .field("stream-format", "obu-stream")
            .field("alignment", "tu")
            .field_if_some("codec_data", codec_data)
            .build(),
        VideoCodec::Vp9 => gst::Caps::builder("video/x-vp9").build(),
    })
}

/// Caps of an audio stream; `None` while AAC has not sent its AudioSpecificConfig yet. `params`
/// are the rate / channels of the legacy FLV audio header (used for MP3).
pub(super) fn audio_caps(
    codec: AudioCodec,
    config: Option<&Bytes>,
    params: Option<LegacyAudioParams>,
) -> Option<gst::Caps> {
    Some(match codec {
        AudioCodec::Aac => {
            let config = config.filter(|c| !c.is_empty())?;
            let mut b = gst::Caps::builder("audio/mpeg")
                .field("mpegversion", 4i32)
                .field("stream-format", "raw")
                .field("framed", true)
                .field("codec_data", gst::Buffer::from_slice(config.clone()));
            if let Some(aac) = flv::parse_aac_config(config) {
                b = b
                    .field("rate", aac.rate as i32)
                    .field("channels", aac.channels as i32);
            }
            b.build()
        }
        AudioCodec::Mp3 => {
            let mut b = gst::Caps::builder("audio/mpeg")
                .field("mpegversion", 1i32)
                .field("layer", 3i32)
                .field("parsed", false);
            if let Some(p) = params {
                b = b
                    .field("rate", p.rate as i32)
                    .field("channels", p.channels as i32);
            }
            b.build()
        }
        AudioCodec::Opus => opus_caps(config),
    })
}

/// Opus caps from the OpusHead the publisher sent (stereo 48 kHz, mapping family 0 without one).
fn opus_caps(config: Option<&Bytes>) -> gst::Caps {
    let Some(head) = config.and_then(|c| flv::parse_opus_head(c)) else {
        return gst::Caps::builder("audio/x-opus")
            .field("rate", 48000i32)
            .field("channels", 2i32)
            .field("channel-mapping-family", 0i32)
            .build();
    };
    let rate = if head.input_rate == 0 {
        48000
    } else {
        head.input_rate as i32
    };
    let mut b = gst::Caps::builder("audio/x-opus")
        .field("rate", rate)
        .field("channels", i32::from(head.channels))
        .field("channel-mapping-family", i32::from(head.mapping_family));
    if let Some((streams, coupled, map)) = &head.mapping {
        b = b
            .field("stream-count", i32::from(*streams))
            .field("coupled-count", i32::from(*coupled))
            .field(
                "channel-mapping",
                gst::Array::new(map.iter().map(|&v| i32::from(v))),
            );
    }
    if let Some(c) = config {
        b = b.field(
            "streamheader",
            gst::Array::new([gst::Buffer::from_slice(c.clone()).to_send_value()]),
        );
    }
    b.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init() {
        let _ = gst::init();
    }

    /// AudioSpecificConfig of AAC-LC, 44.1 kHz, mono.
    const AAC_LC_44100_MONO: [u8; 2] = [0x12, 0x08];
    /// An OpusHead: version 1, 2 channels, pre-skip 312, 48 kHz, mapping family 0.
    const OPUS_HEAD: [u8; 19] = [
        b'O', b'p', b'u', b's', b'H', b'e', b'a', b'd', 1, 2, 0x38, 0x01, 0x80, 0xbb, 0, 0, 0, 0, 0,
    ];

    #[test]
    fn codecs_that_need_their_configuration_wait_for_it() {
        init();
        assert!(video_caps(VideoCodec::H264, None).is_none());
        assert!(video_caps(VideoCodec::H265, Some(&Bytes::new())).is_none());
        assert!(audio_caps(AudioCodec::Aac, None, None).is_none());
        // AV1, VP9, MP3 and Opus can start without one.
        assert!(video_caps(VideoCodec::Av1, None).is_some());
        assert!(video_caps(VideoCodec::Vp9, None).is_some());
        assert!(audio_caps(AudioCodec::Mp3, None, None).is_some());
        assert!(audio_caps(AudioCodec::Opus, None, None).is_some());
    }

    #[test]
    fn caps_carry_the_codec_configuration() {
        init();
        let avc = Bytes::from_static(&[1, 0x64, 0, 0x1f, 0xff]);
        let caps = video_caps(VideoCodec::H264, Some(&avc)).unwrap();
        let s = caps.structure(0).unwrap();
        assert_eq!(s.get::<&str>("stream-format").unwrap(), "avc");
        let data = s.get::<gst::Buffer>("codec_data").unwrap();
        assert_eq!(&*data.map_readable().unwrap(), &avc[..]);

        let aac = Bytes::from_static(&AAC_LC_44100_MONO);
        let caps = audio_caps(AudioCodec::Aac, Some(&aac), None).unwrap();
        let s = caps.structure(0).unwrap();
        assert_eq!(s.get::<i32>("rate").unwrap(), 44100);
        assert_eq!(s.get::<i32>("channels").unwrap(), 1);

        let mp3 = audio_caps(
            AudioCodec::Mp3,
            None,
            Some(LegacyAudioParams {
                rate: 22050,
                channels: 2,
            }),
        )
        .unwrap();
        assert_eq!(mp3.structure(0).unwrap().get::<i32>("rate").unwrap(), 22050);

        let head = Bytes::from_static(&OPUS_HEAD);
        let caps = audio_caps(AudioCodec::Opus, Some(&head), None).unwrap();
        let s = caps.structure(0).unwrap();
        assert_eq!(s.get::<i32>("rate").unwrap(), 48000);
        assert_eq!(s.get::<i32>("channels").unwrap(), 2);
        assert!(s.has_field("streamheader"));
    }

    #[test]
    fn every_output_fits_its_pad_template() {
        init();
        let video = video_template_caps();
        let audio = audio_template_caps();
        let avc = Bytes::from_static(&[1, 0x64, 0, 0x1f, 0xff]);
        let aac = Bytes::from_static(&AAC_LC_44100_MONO);
        let outputs = [
            (video_caps(VideoCodec::H264, Some(&avc)).unwrap(), &video),
            (video_caps(VideoCodec::H265, Some(&avc)).unwrap(), &video),
            (video_caps(VideoCodec::Av1, None).unwrap(), &video),
            (video_caps(VideoCodec::Vp9, None).unwrap(), &video),
            (placeholder_caps(StreamKind::Video), &video),
            (
                audio_caps(AudioCodec::Aac, Some(&aac), None).unwrap(),
                &audio,
            ),
            (audio_caps(AudioCodec::Mp3, None, None).unwrap(), &audio),
            (audio_caps(AudioCodec::Opus, None, None).unwrap(), &audio),
            (placeholder_caps(StreamKind::Audio), &audio),
        ];
        for (caps, template) in outputs {
            assert!(caps.is_subset(template), "{caps} not within {template}");
        }
    }
}
