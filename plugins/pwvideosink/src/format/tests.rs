// SPDX-License-Identifier: MPL-2.0
//! Unit tests of the format pods: built, parsed back from bytes, checked field by field.

use super::*;

fn spec() -> VideoSpec {
    VideoSpec {
        format: VideoFormat::NV12.as_raw(),
        width: 1280,
        height: 720,
        fps_n: 30,
        fps_d: 1,
    }
}

/// One 1280x720 NV12 frame, three planes.
fn layout() -> FrameLayout {
    FrameLayout {
        spec: spec(),
        size: 1280 * 720 * 3 / 2,
        stride: 1280,
        planes: 3,
    }
}

/// The object a pod holds (panics on anything else).
fn object(bytes: &[u8]) -> Object {
    let (_, Value::Object(obj)) = PodDeserializer::deserialize_from::<Value>(bytes).unwrap() else {
        panic!("not an object")
    };
    obj
}

/// The value of property `key` of `obj`.
fn property(obj: &Object, key: u32) -> Value {
    obj.properties
        .iter()
        .find(|p| p.key == key)
        .unwrap()
        .value
        .clone()
}

/// An integer range choice.
fn int_range(default: i32, min: i32, max: i32) -> Value {
    Value::Choice(ChoiceValue::Int(Choice(
        ChoiceFlags::empty(),
        ChoiceEnum::Range { default, min, max },
    )))
}

#[test]
fn required_formats_map_both_ways() {
    for name in [
        "I420", "NV12", "YUY2", "UYVY", "BGRx", "RGBx", "BGRA", "RGBA", "RGB", "BGR",
    ] {
        let spa = spa_format_from_gst(name).unwrap_or_else(|| panic!("{name} unmapped"));
        assert_ne!(spa, VideoFormat::Unknown.as_raw());
        assert_eq!(gst_format_from_spa(spa), Some(name));
    }
    assert_eq!(
        spa_format_from_gst("I420"),
        Some(VideoFormat::I420.as_raw())
    );
    assert_eq!(
        spa_format_from_gst("BGRx"),
        Some(VideoFormat::BGRx.as_raw())
    );
    assert_eq!(spa_format_from_gst("P010_10LE"), None);
    assert_eq!(gst_format_from_spa(VideoFormat::Encoded.as_raw()), None);
}

#[test]
fn enum_format_is_fixed_and_round_trips() {
    let bytes = enum_format_pod(&spec()).unwrap();
    let (_, value) = PodDeserializer::deserialize_from::<Value>(&bytes).unwrap();
    let Value::Object(obj) = value else {
        panic!("not an object")
    };
    assert_eq!(obj.id, ParamType::EnumFormat.as_raw());
    assert_eq!(obj.type_, SpaTypes::ObjectParamFormat.as_raw());
    // Size and frame rate are plain values, never choices/ranges.
    for p in &obj.properties {
        assert!(
            !matches!(p.value, Value::Choice(_)),
            "property {} is a choice",
            p.key
        );
    }
    assert_eq!(parse_video_format(&bytes).unwrap(), spec());
}

#[test]
fn alternatives_follow_the_current_format_without_duplicates() {
    let i420 = VideoFormat::I420.as_raw();
    let yuy2 = VideoFormat::YUY2.as_raw();
    let pods = enum_format_pods(
        &spec(),
        &[
            i420,
            spec().format,
            yuy2,
            i420,
            VideoFormat::Encoded.as_raw(),
        ],
        false,
    )
    .unwrap();
    let specs: Vec<VideoSpec> = pods
        .iter()
        .map(|p| parse_video_format(p).unwrap())
        .collect();
    assert_eq!(specs.len(), 3);
    assert_eq!(specs[0], spec());
    assert_eq!(
        specs[1],
        VideoSpec {
            format: i420,
            ..spec()
        }
    );
    assert_eq!(
        specs[2],
        VideoSpec {
            format: yuy2,
            ..spec()
        }
    );
    assert!(specs.iter().all(|s| same_geometry(s, &spec())));
    assert!(!same_geometry(
        &spec(),
        &VideoSpec {
            width: 640,
            ..spec()
        }
    ));
}

#[test]
fn parses_format_with_none_choices() {
    // What a peer may send back: values wrapped in choices.
    let bytes = serialize(Object {
        type_: SpaTypes::ObjectParamFormat.as_raw(),
        id: ParamType::Format.as_raw(),
        properties: media_props(
            MediaType::Video,
            [
                prop(
                    FormatProperties::VideoFormat.as_raw(),
                    Value::Choice(ChoiceValue::Id(Choice(
                        ChoiceFlags::empty(),
                        ChoiceEnum::Enum {
                            default: Id(VideoFormat::YUY2.as_raw()),
                            alternatives: vec![Id(VideoFormat::YUY2.as_raw())],
                        },
                    ))),
                ),
                prop(
                    FormatProperties::VideoSize.as_raw(),
                    Value::Choice(ChoiceValue::Rectangle(Choice(
                        ChoiceFlags::empty(),
                        ChoiceEnum::None(Rectangle {
                            width: 640,
                            height: 480,
                        }),
                    ))),
                ),
            ],
        ),
    })
    .unwrap();
    let s = parse_video_format(&bytes).unwrap();
    assert_eq!(s.format, VideoFormat::YUY2.as_raw());
    assert_eq!((s.width, s.height, s.fps_n, s.fps_d), (640, 480, 0, 1));
    assert_eq!(s.describe(), "YUY2 640x480@0/1");
}

#[test]
fn rejects_non_video_and_garbage() {
    let audio = serialize(Object {
        type_: SpaTypes::ObjectParamFormat.as_raw(),
        id: ParamType::Format.as_raw(),
        properties: media_props(MediaType::Audio, []),
    })
    .unwrap();
    assert_eq!(parse_video_format(&audio), Err(PodError::NotVideoRaw));
    assert!(matches!(
        parse_video_format(&[1, 2, 3]),
        Err(PodError::Parse(_))
    ));
    let mut truncated = enum_format_pod(&spec()).unwrap();
    truncated.truncate(20);
    assert!(parse_video_format(&truncated).is_err());
}

#[test]
fn buffers_param_is_a_range_with_frame_size() {
    let obj = object(&buffers_pod(&layout()).unwrap());
    assert_eq!(obj.id, ParamType::Buffers.as_raw());
    let get = |k| property(&obj, k);
    assert_eq!(
        get(spa::sys::SPA_PARAM_BUFFERS_buffers),
        int_range(8, 2, 16)
    );
    assert_eq!(
        get(spa::sys::SPA_PARAM_BUFFERS_size),
        Value::Int(1280 * 720 * 3 / 2)
    );
    assert_eq!(get(spa::sys::SPA_PARAM_BUFFERS_stride), Value::Int(1280));
    assert_eq!(get(spa::sys::SPA_PARAM_BUFFERS_blocks), Value::Int(1));
    let meta = header_meta_pod().unwrap();
    assert!(spa::pod::Pod::from_bytes(&meta).is_some());
}

#[test]
fn dmabuf_variant_comes_first_with_a_mandatory_linear_modifier() {
    let yuy2 = VideoFormat::YUY2.as_raw();
    let pods = enum_format_pods(&spec(), &[yuy2], true).unwrap();
    assert_eq!(
        pods.len(),
        3,
        "DMA-BUF variant, then memfd current + alternative"
    );
    assert_eq!(parse_video_format(&pods[0]).unwrap(), spec());
    assert_eq!(format_modifier(&pods[0]), Some(DRM_FORMAT_MOD_LINEAR));
    assert_eq!(format_modifier(&pods[1]), None);
    assert_eq!(parse_video_format(&pods[1]).unwrap(), spec());
    assert_eq!(parse_video_format(&pods[2]).unwrap().format, yuy2);
    let obj = object(&pods[0]);
    let m = obj
        .properties
        .iter()
        .find(|p| p.key == FormatProperties::VideoModifier.as_raw())
        .unwrap();
    assert!(m.flags.contains(PropertyFlags::MANDATORY));
    // A consumer's fixed Format may carry the modifier as a plain long.
    let fixed = serialize(Object {
        type_: SpaTypes::ObjectParamFormat.as_raw(),
        id: ParamType::Format.as_raw(),
        properties: vec![prop(
            FormatProperties::VideoModifier.as_raw(),
            Value::Long(0x0100_0000_0000_0001),
        )],
    })
    .unwrap();
    assert_eq!(format_modifier(&fixed), Some(0x0100_0000_0000_0001));
    assert_eq!(format_modifier(b"garbage"), None);
}

#[test]
fn dmabuf_buffers_param_has_one_block_per_plane_and_room_for_every_upstream_buffer() {
    for (known, range) in [(3, (8, 3, 16)), (12, (12, 12, 16)), (40, (16, 16, 16))] {
        let obj = object(&dmabuf_buffers_pod(&layout(), known).unwrap());
        let get = |k| property(&obj, k);
        assert_eq!(
            get(spa::sys::SPA_PARAM_BUFFERS_buffers),
            int_range(range.0, range.1, range.2),
            "{known} upstream buffers"
        );
        assert_eq!(get(spa::sys::SPA_PARAM_BUFFERS_blocks), Value::Int(3));
        let dmabuf = 1i32 << spa::sys::SPA_DATA_DmaBuf;
        assert_eq!(
            get(spa::sys::SPA_PARAM_BUFFERS_dataType),
            Value::Choice(ChoiceValue::Int(Choice(
                ChoiceFlags::empty(),
                ChoiceEnum::Flags {
                    default: dmabuf,
                    flags: vec![dmabuf]
                }
            )))
        );
    }
}

#[test]
fn socket_path_follows_libpipewire_rules() {
    let env = |vars: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    };
    assert_eq!(
        socket_path(None, env(&[("XDG_RUNTIME_DIR", "/run/user/1000")])),
        "/run/user/1000/pipewire-0"
    );
    assert_eq!(
        socket_path(
            None,
            env(&[("XDG_RUNTIME_DIR", "/run/x/"), ("PIPEWIRE_REMOTE", "pw-9")])
        ),
        "/run/x/pw-9"
    );
    assert_eq!(
        socket_path(
            Some("/tmp/s/pipewire-0"),
            env(&[("PIPEWIRE_REMOTE", "other")])
        ),
        "/tmp/s/pipewire-0"
    );
    assert_eq!(
        socket_path(
            None,
            env(&[("PIPEWIRE_RUNTIME_DIR", "/a"), ("XDG_RUNTIME_DIR", "/b")])
        ),
        "/a/pipewire-0"
    );
    assert!(socket_path(None, env(&[])).contains("XDG_RUNTIME_DIR is not set"));
}
