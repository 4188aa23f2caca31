// SPDX-License-Identifier: MPL-2.0

//! Unit tests of the FLV tag parser.

use super::*;

fn b(v: &[u8]) -> Bytes {
    Bytes::copy_from_slice(v)
}

#[test]
fn legacy_avc_sequence_header_and_frames() {
    let tag = parse_video(&b(&[0x17, 0, 0, 0, 0, 1, 0x64, 0, 0x1f])).unwrap();
    assert_eq!(
        tag,
        VideoTag::SequenceStart {
            codec: VideoCodec::H264,
            config: b(&[1, 0x64, 0, 0x1f])
        }
    );
    let tag = parse_video(&b(&[0x27, 1, 0, 0, 0x50, 0, 0, 0, 1, 0x41])).unwrap();
    assert_eq!(
        tag,
        VideoTag::Frame {
            codec: VideoCodec::H264,
            keyframe: false,
            composition_time: 0x50,
            data: b(&[0, 0, 0, 1, 0x41])
        }
    );
    let tag = parse_video(&b(&[0x17, 2, 0, 0, 0])).unwrap();
    assert_eq!(
        tag,
        VideoTag::SequenceEnd {
            codec: VideoCodec::H264
        }
    );
}

#[test]
fn negative_composition_time_is_sign_extended() {
    let tag = parse_video(&b(&[0x17, 1, 0xff, 0xff, 0xd8, 9])).unwrap();
    match tag {
        VideoTag::Frame {
            composition_time,
            keyframe,
            ..
        } => {
            assert_eq!(composition_time, -40);
            assert!(keyframe);
        }
        other => panic!("unexpected {other:?}"),
    }
    let tag = parse_video(&b(&[0x17, 1, 0x80, 0, 0, 9])).unwrap();
    assert!(matches!(
        tag,
        VideoTag::Frame {
            composition_time: -8_388_608,
            ..
        }
    ));
    let tag = parse_video(&b(&[0x17, 1, 0x7f, 0xff, 0xff, 9])).unwrap();
    assert!(matches!(
        tag,
        VideoTag::Frame {
            composition_time: 8_388_607,
            ..
        }
    ));
}

#[test]
fn unknown_legacy_video_codec_is_typed() {
    // Codec id 4 = On2 VP6.
    let err = parse_video(&b(&[0x14, 0, 0])).unwrap_err();
    assert_eq!(err, FlvError::UnknownVideoCodec(CodecId::Legacy(4)));
    assert!(err.to_string().contains("codec id 4"), "{err}");
}

#[test]
fn enhanced_hevc_coded_frames_carry_composition_time() {
    // 0x80 | keyframe << 4 | CodedFrames
    let mut v = vec![0x80 | 0x10 | 1];
    v.extend_from_slice(b"hvc1");
    v.extend_from_slice(&[0, 0, 33, 0xAA, 0xBB]);
    assert_eq!(
        parse_video(&b(&v)).unwrap(),
        VideoTag::Frame {
            codec: VideoCodec::H265,
            keyframe: true,
            composition_time: 33,
            data: b(&[0xAA, 0xBB])
        }
    );
    // CodedFramesX: no composition time.
    let mut v = vec![0x80 | 0x20 | 3];
    v.extend_from_slice(b"hvc1");
    v.extend_from_slice(&[0xAA]);
    assert_eq!(
        parse_video(&b(&v)).unwrap(),
        VideoTag::Frame {
            codec: VideoCodec::H265,
            keyframe: false,
            composition_time: 0,
            data: b(&[0xAA])
        }
    );
}

#[test]
fn enhanced_sequence_start_av1_vp9() {
    let mut v = vec![0x80 | 0x10];
    v.extend_from_slice(b"av01");
    v.extend_from_slice(&[0x81, 0x08, 0x0c, 0x00]);
    assert_eq!(
        parse_video(&b(&v)).unwrap(),
        VideoTag::SequenceStart {
            codec: VideoCodec::Av1,
            config: b(&[0x81, 0x08, 0x0c, 0x00])
        }
    );
    // AV1 CodedFrames has no composition time field.
    let mut v = vec![0x80 | 0x10 | 1];
    v.extend_from_slice(b"vp09");
    v.extend_from_slice(&[1, 2, 3]);
    assert_eq!(
        parse_video(&b(&v)).unwrap(),
        VideoTag::Frame {
            codec: VideoCodec::Vp9,
            keyframe: true,
            composition_time: 0,
            data: b(&[1, 2, 3])
        }
    );
    let mut v = vec![0x80 | 0x10 | 2];
    v.extend_from_slice(b"vp09");
    assert_eq!(
        parse_video(&b(&v)).unwrap(),
        VideoTag::SequenceEnd {
            codec: VideoCodec::Vp9
        }
    );
}

#[test]
fn enhanced_modex_prefix_is_skipped() {
    // ModEx (7) with 2 bytes of data, then modExType 0 / packet type CodedFramesX.
    let mut v = vec![0x80 | 0x10 | 7, 1, 0xde, 0xad, 0x03];
    v.extend_from_slice(b"av01");
    v.extend_from_slice(&[5, 6]);
    assert_eq!(
        parse_video(&b(&v)).unwrap(),
        VideoTag::Frame {
            codec: VideoCodec::Av1,
            keyframe: true,
            composition_time: 0,
            data: b(&[5, 6])
        }
    );
}

#[test]
fn enhanced_unknown_fourcc_and_truncation() {
    let mut v = vec![0x80 | 0x10];
    v.extend_from_slice(b"vvc1");
    let err = parse_video(&b(&v)).unwrap_err();
    assert_eq!(err, FlvError::UnknownVideoCodec(CodecId::FourCc(*b"vvc1")));
    assert!(err.to_string().contains("vvc1"));
    assert_eq!(
        parse_video(&b(&[0x80 | 0x10, b'h', b'v'])).unwrap_err(),
        FlvError::Truncated("video FourCC")
    );
    assert_eq!(
        parse_video(&b(&[])).unwrap_err(),
        FlvError::Truncated("video tag header")
    );
    assert_eq!(
        parse_video(&b(&[0x17, 1, 0])).unwrap_err(),
        FlvError::Truncated("composition time")
    );
}

#[test]
fn command_frames_are_ignored() {
    assert_eq!(parse_video(&b(&[0x57, 0])).unwrap(), VideoTag::Ignored);
    assert_eq!(
        parse_video(&b(&[0x80 | 0x50 | 1, 0])).unwrap(),
        VideoTag::Ignored
    );
}

#[test]
fn legacy_audio() {
    // AAC, 44.1 kHz, 16 bit, stereo.
    assert_eq!(
        parse_audio(&b(&[0xaf, 0, 0x12, 0x10])).unwrap(),
        AudioTag::SequenceStart {
            codec: AudioCodec::Aac,
            config: b(&[0x12, 0x10])
        }
    );
    assert_eq!(
        parse_audio(&b(&[0xaf, 1, 0x21])).unwrap(),
        AudioTag::Frame {
            codec: AudioCodec::Aac,
            params: Some(LegacyAudioParams {
                rate: 44100,
                channels: 2
            }),
            data: b(&[0x21])
        }
    );
    // MP3, 22 kHz mono.
    assert_eq!(
        parse_audio(&b(&[0x2a, 0xff, 0xfb])).unwrap(),
        AudioTag::Frame {
            codec: AudioCodec::Mp3,
            params: Some(LegacyAudioParams {
                rate: 22050,
                channels: 1
            }),
            data: b(&[0xff, 0xfb])
        }
    );
    // Speex (11) is unknown.
    assert_eq!(
        parse_audio(&b(&[0xb2, 1])).unwrap_err(),
        FlvError::UnknownAudioCodec(CodecId::Legacy(11))
    );
}

#[test]
fn enhanced_opus_audio() {
    let mut v = vec![0x90];
    v.extend_from_slice(b"Opus");
    let head = [
        b'O', b'p', b'u', b's', b'H', b'e', b'a', b'd', 1, 2, 0x38, 0x01, 0x80, 0xbb, 0, 0, 0, 0, 0,
    ];
    v.extend_from_slice(&head);
    let tag = parse_audio(&b(&v)).unwrap();
    assert_eq!(
        tag,
        AudioTag::SequenceStart {
            codec: AudioCodec::Opus,
            config: b(&head)
        }
    );
    let parsed = parse_opus_head(&head).unwrap();
    assert_eq!(parsed.channels, 2);
    assert_eq!(parsed.pre_skip, 312);
    assert_eq!(parsed.input_rate, 48000);
    assert_eq!(parsed.mapping_family, 0);
    assert!(parsed.mapping.is_none());

    let mut v = vec![0x91];
    v.extend_from_slice(b"Opus");
    v.extend_from_slice(&[0xfc, 0xff]);
    assert_eq!(
        parse_audio(&b(&v)).unwrap(),
        AudioTag::Frame {
            codec: AudioCodec::Opus,
            params: None,
            data: b(&[0xfc, 0xff])
        }
    );
    let mut v = vec![0x90];
    v.extend_from_slice(b"fLaC");
    assert!(matches!(
        parse_audio(&b(&v)).unwrap_err(),
        FlvError::UnknownAudioCodec(CodecId::FourCc(_))
    ));
}

#[test]
fn aac_config() {
    assert_eq!(
        parse_aac_config(&[0x12, 0x10]),
        Some(AacConfig {
            object_type: 2,
            rate: 44100,
            channels: 2
        })
    );
    assert_eq!(
        parse_aac_config(&[0x11, 0x88]),
        Some(AacConfig {
            object_type: 2,
            rate: 48000,
            channels: 1
        })
    );
    assert_eq!(parse_aac_config(&[0x12]), None);
}

#[test]
fn parsers_never_panic_on_short_inputs() {
    for len in 0..12usize {
        for first in 0..=255u8 {
            let mut v = vec![first];
            v.extend((0..len).map(|i| (i as u8).wrapping_mul(37)));
            let data = b(&v);
            let _ = parse_video(&data);
            let _ = parse_audio(&data);
            let _ = parse_aac_config(&v);
            let _ = parse_opus_head(&v);
        }
    }
}
