// SPDX-License-Identifier: MPL-2.0

//! PipeWire format and buffer pods for a raw video source, and the mapping between GStreamer
//! video format names and SPA video formats.
//!
//! Plain Rust: no GStreamer types, no PipeWire objects. Pods are built with libspa's serializer
//! and parsed back from bytes, so everything here is unit-tested on bytes alone.

use std::io::Cursor;

use pipewire::spa;
use spa::param::ParamType;
use spa::param::format::{FormatProperties, MediaSubtype, MediaType};
use spa::param::video::VideoFormat;
use spa::pod::deserialize::PodDeserializer;
use spa::pod::serialize::PodSerializer;
use spa::pod::{ChoiceValue, Object, Property, PropertyFlags, Value};
use spa::utils::{Choice, ChoiceEnum, ChoiceFlags, Fraction, Id, Rectangle, SpaTypes};

/// GStreamer format names (as in `video/x-raw,format=…`) and their SPA counterparts.
///
/// The memory layout of each pair is identical, so frames are copied byte for byte.
const FORMAT_TABLE: &[(&str, VideoFormat)] = &[
    ("I420", VideoFormat::I420),
    ("YV12", VideoFormat::YV12),
    ("NV12", VideoFormat::NV12),
    ("NV21", VideoFormat::NV21),
    ("YUY2", VideoFormat::YUY2),
    ("UYVY", VideoFormat::UYVY),
    ("YVYU", VideoFormat::YVYU),
    ("Y42B", VideoFormat::Y42B),
    ("Y444", VideoFormat::Y444),
    ("BGRx", VideoFormat::BGRx),
    ("RGBx", VideoFormat::RGBx),
    ("xRGB", VideoFormat::xRGB),
    ("xBGR", VideoFormat::xBGR),
    ("BGRA", VideoFormat::BGRA),
    ("RGBA", VideoFormat::RGBA),
    ("ARGB", VideoFormat::ARGB),
    ("ABGR", VideoFormat::ABGR),
    ("RGB", VideoFormat::RGB),
    ("BGR", VideoFormat::BGR),
    ("GRAY8", VideoFormat::GRAY8),
];

/// Every GStreamer format name this element can publish, in order of preference.
pub fn supported_gst_formats() -> impl Iterator<Item = &'static str> {
    FORMAT_TABLE.iter().map(|(name, _)| *name)
}

/// The SPA video format (raw id) for a GStreamer format name.
pub fn spa_format_from_gst(name: &str) -> Option<u32> {
    FORMAT_TABLE
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| f.as_raw())
}

/// The GStreamer format name for a SPA video format (raw id).
pub fn gst_format_from_spa(format: u32) -> Option<&'static str> {
    FORMAT_TABLE
        .iter()
        .find(|(_, f)| f.as_raw() == format)
        .map(|(n, _)| *n)
}

/// One fixed raw video format: what an EnumFormat entry offers and what a Format param fixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoSpec {
    /// SPA video format (raw id, see [`spa_format_from_gst`]).
    pub format: u32,
    pub width: u32,
    pub height: u32,
    /// Frame rate numerator/denominator; 0/1 means variable.
    pub fps_n: u32,
    pub fps_d: u32,
}

impl VideoSpec {
    /// Short human-readable form, e.g. `I420 1280x720@30/1`.
    pub fn describe(&self) -> String {
        let name = gst_format_from_spa(self.format).unwrap_or("unknown");
        format!(
            "{name} {}x{}@{}/{}",
            self.width, self.height, self.fps_n, self.fps_d
        )
    }
}

/// Buffer layout of one frame in the format negotiated with upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLayout {
    pub spec: VideoSpec,
    /// Total frame size in bytes (all planes, GStreamer's default layout).
    pub size: u32,
    /// Stride of the first plane in bytes.
    pub stride: u32,
    /// Number of planes (one `spa_data` each when DMA-BUFs are passed through).
    pub planes: u32,
}

/// Buffer count negotiation: consumers such as pipewiresrc ask for 8 or more.
pub const BUFFERS_DEFAULT: i32 = 8;
pub const BUFFERS_MIN: i32 = 2;
pub const BUFFERS_MAX: i32 = 16;

/// Errors building or parsing pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodError {
    Serialize(String),
    Parse(String),
    NotVideoRaw,
    Missing(&'static str),
}

impl std::fmt::Display for PodError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PodError::Serialize(e) => write!(f, "could not serialize pod: {e}"),
            PodError::Parse(e) => write!(f, "could not parse pod: {e}"),
            PodError::NotVideoRaw => write!(f, "format is not raw video"),
            PodError::Missing(what) => write!(f, "format has no fixed {what}"),
        }
    }
}

impl std::error::Error for PodError {}

fn serialize(obj: Object) -> Result<Vec<u8>, PodError> {
    PodSerializer::serialize(Cursor::new(Vec::new()), &Value::Object(obj))
        .map(|(c, _)| c.into_inner())
        .map_err(|e| PodError::Serialize(format!("{e:?}")))
}

fn prop(key: u32, value: Value) -> Property {
    Property {
        key,
        flags: PropertyFlags::empty(),
        value,
    }
}

/// The properties of a `media` / raw format object: its media type and subtype, then `rest`.
fn media_props(media: MediaType, rest: impl IntoIterator<Item = Property>) -> Vec<Property> {
    let mut properties = vec![
        prop(
            FormatProperties::MediaType.as_raw(),
            Value::Id(Id(media.as_raw())),
        ),
        prop(
            FormatProperties::MediaSubtype.as_raw(),
            Value::Id(Id(MediaSubtype::Raw.as_raw())),
        ),
    ];
    properties.extend(rest);
    properties
}

/// An `EnumFormat` pod offering exactly one format with a fixed size and frame rate
/// (libwebrtc ignores formats whose size is a range).
pub fn enum_format_pod(spec: &VideoSpec) -> Result<Vec<u8>, PodError> {
    format_object(spec, ParamType::EnumFormat.as_raw(), None)
}

/// `DRM_FORMAT_MOD_LINEAR`: the layout GStreamer 1.22's `video/x-raw(memory:DMABuf)` caps (a
/// plain `format` field, no DRM modifier) stand for.
pub const DRM_FORMAT_MOD_LINEAR: i64 = 0;

/// `EnumFormat` pods for `current` first (the format upstream delivers now), then the same size
/// and rate in each of the `alternatives` (SPA formats upstream could switch to).
///
/// With `dmabuf`, a DMA-BUF variant of `current` (a mandatory `modifier` property, LINEAR) comes
/// before all of them: a consumer that can import DMA-BUFs fixes that one, any other consumer
/// skips it (it lacks the mandatory property) and falls back to shared memory — the order
/// PipeWire's DMA-BUF negotiation asks producers for.
pub fn enum_format_pods(
    current: &VideoSpec,
    alternatives: &[u32],
    dmabuf: bool,
) -> Result<Vec<Vec<u8>>, PodError> {
    let mut pods = Vec::new();
    if dmabuf {
        pods.push(format_object(
            current,
            ParamType::EnumFormat.as_raw(),
            Some(DRM_FORMAT_MOD_LINEAR),
        )?);
    }
    pods.push(enum_format_pod(current)?);
    let mut seen = vec![current.format];
    for &format in alternatives {
        if seen.contains(&format) || gst_format_from_spa(format).is_none() {
            continue;
        }
        seen.push(format);
        pods.push(enum_format_pod(&VideoSpec { format, ..*current })?);
    }
    Ok(pods)
}

/// Same size and frame rate, possibly another pixel format.
pub fn same_geometry(a: &VideoSpec, b: &VideoSpec) -> bool {
    (a.width, a.height, a.fps_n, a.fps_d) == (b.width, b.height, b.fps_n, b.fps_d)
}

fn format_object(spec: &VideoSpec, id: u32, modifier: Option<i64>) -> Result<Vec<u8>, PodError> {
    let mut properties = media_props(
        MediaType::Video,
        [
            prop(
                FormatProperties::VideoFormat.as_raw(),
                Value::Id(Id(spec.format)),
            ),
            prop(
                FormatProperties::VideoSize.as_raw(),
                Value::Rectangle(Rectangle {
                    width: spec.width,
                    height: spec.height,
                }),
            ),
            prop(
                FormatProperties::VideoFramerate.as_raw(),
                Value::Fraction(Fraction {
                    num: spec.fps_n,
                    denom: spec.fps_d,
                }),
            ),
        ],
    );
    if let Some(m) = modifier {
        properties.push(Property {
            key: FormatProperties::VideoModifier.as_raw(),
            flags: PropertyFlags::MANDATORY,
            value: Value::Choice(ChoiceValue::Long(Choice(
                ChoiceFlags::empty(),
                ChoiceEnum::Enum {
                    default: m,
                    alternatives: vec![m],
                },
            ))),
        });
    }
    serialize(Object {
        type_: SpaTypes::ObjectParamFormat.as_raw(),
        id,
        properties,
    })
}

/// The DRM modifier of a `Format` pod, if the consumer fixed a DMA-BUF variant (the property
/// is there only then).
pub fn format_modifier(pod: &[u8]) -> Option<i64> {
    let (_, value) = PodDeserializer::deserialize_from::<Value>(pod).ok()?;
    let Value::Object(obj) = value else {
        return None;
    };
    let p = obj
        .properties
        .iter()
        .find(|p| p.key == FormatProperties::VideoModifier.as_raw())?;
    match &p.value {
        Value::Long(m) => Some(*m),
        Value::Choice(ChoiceValue::Long(Choice(_, c))) => Some(*choice_default(c)),
        _ => None,
    }
}

/// A `Buffers` param for shared-memory (memfd) buffers holding one frame of `layout`,
/// with the buffer count as a range.
pub fn buffers_pod(layout: &FrameLayout) -> Result<Vec<u8>, PodError> {
    let data_types = (1i32 << spa::sys::SPA_DATA_MemFd) | (1i32 << spa::sys::SPA_DATA_MemPtr);
    buffers_object(
        (BUFFERS_DEFAULT, BUFFERS_MIN, BUFFERS_MAX),
        1,
        layout,
        data_types,
    )
}

/// A `Buffers` param for DMA-BUF buffers passed through from upstream: one block per plane,
/// and at least `known` buffers (the distinct upstream DMA-BUFs, so each gets a `pw_buffer`).
pub fn dmabuf_buffers_pod(layout: &FrameLayout, known: u32) -> Result<Vec<u8>, PodError> {
    let known = (known as i32).clamp(1, BUFFERS_MAX);
    buffers_object(
        (BUFFERS_DEFAULT.max(known), known, BUFFERS_MAX),
        layout.planes.max(1) as i32,
        layout,
        1i32 << spa::sys::SPA_DATA_DmaBuf,
    )
}

fn buffers_object(
    (default, min, max): (i32, i32, i32),
    blocks: i32,
    layout: &FrameLayout,
    data_types: i32,
) -> Result<Vec<u8>, PodError> {
    serialize(Object {
        type_: SpaTypes::ObjectParamBuffers.as_raw(),
        id: ParamType::Buffers.as_raw(),
        properties: vec![
            prop(
                spa::sys::SPA_PARAM_BUFFERS_buffers,
                Value::Choice(ChoiceValue::Int(Choice(
                    ChoiceFlags::empty(),
                    ChoiceEnum::Range { default, min, max },
                ))),
            ),
            prop(spa::sys::SPA_PARAM_BUFFERS_blocks, Value::Int(blocks)),
            prop(
                spa::sys::SPA_PARAM_BUFFERS_size,
                Value::Int(layout.size as i32),
            ),
            prop(
                spa::sys::SPA_PARAM_BUFFERS_stride,
                Value::Int(layout.stride as i32),
            ),
            prop(
                spa::sys::SPA_PARAM_BUFFERS_dataType,
                Value::Choice(ChoiceValue::Int(Choice(
                    ChoiceFlags::empty(),
                    ChoiceEnum::Flags {
                        default: data_types,
                        flags: vec![data_types],
                    },
                ))),
            ),
        ],
    })
}

pub fn header_meta_pod() -> Result<Vec<u8>, PodError> {
    serialize(Object {
        type_: SpaTypes::ObjectParamMeta.as_raw(),
        id: ParamType::Meta.as_raw(),
        properties: vec![
            prop(
                spa::sys::SPA_PARAM_META_type,
                Value::Id(Id(spa::sys::SPA_META_Header)),
            ),
            prop(
                spa::sys::SPA_PARAM_META_size,
                Value::Int(std::mem::size_of::<spa::sys::spa_meta_header>() as i32),
            ),
        ],
    })
}

/// Parse a (fixed) `Format` or `EnumFormat` pod into a [`VideoSpec`].
pub fn parse_video_format(pod: &[u8]) -> Result<VideoSpec, PodError> {
    let (_, value) = PodDeserializer::deserialize_from::<Value>(pod)
        .map_err(|e| PodError::Parse(format!("{e:?}")))?;
    let Value::Object(obj) = value else {
        return Err(PodError::Parse("not an object".into()));
    };
    let find = |key: FormatProperties| {
        obj.properties
            .iter()
            .find(|p| p.key == key.as_raw())
            .map(|p| fixed(&p.value))
    };
    match (
        find(FormatProperties::MediaType),
        find(FormatProperties::MediaSubtype),
    ) {
        (Some(Value::Id(t)), Some(Value::Id(s)))
            if t.0 == MediaType::Video.as_raw() && s.0 == MediaSubtype::Raw.as_raw() => {}
        _ => return Err(PodError::NotVideoRaw),
    }
    let format = match find(FormatProperties::VideoFormat) {
        Some(Value::Id(f)) => f.0,
        _ => return Err(PodError::Missing("video format")),
    };
    let size = match find(FormatProperties::VideoSize) {
        Some(Value::Rectangle(r)) => r,
        _ => return Err(PodError::Missing("size")),
    };
    let (fps_n, fps_d) = match find(FormatProperties::VideoFramerate) {
        Some(Value::Fraction(f)) => (f.num, f.denom),
        _ => (0, 1),
    };
    Ok(VideoSpec {
        format,
        width: size.width,
        height: size.height,
        fps_n,
        fps_d,
    })
}

/// The value of a property, taking the default of a choice (a fixed Format may still carry
/// a `None` choice around its value).
fn fixed(v: &Value) -> Value {
    match v {
        Value::Choice(ChoiceValue::Id(Choice(_, c))) => Value::Id(*choice_default(c)),
        Value::Choice(ChoiceValue::Rectangle(Choice(_, c))) => Value::Rectangle(*choice_default(c)),
        Value::Choice(ChoiceValue::Fraction(Choice(_, c))) => Value::Fraction(*choice_default(c)),
        Value::Choice(ChoiceValue::Int(Choice(_, c))) => Value::Int(*choice_default(c)),
        other => other.clone(),
    }
}

fn choice_default<T: spa::pod::CanonicalFixedSizedPod>(c: &ChoiceEnum<T>) -> &T {
    match c {
        ChoiceEnum::None(v) => v,
        ChoiceEnum::Range { default, .. }
        | ChoiceEnum::Step { default, .. }
        | ChoiceEnum::Enum { default, .. }
        | ChoiceEnum::Flags { default, .. } => default,
    }
}

/// The socket a PipeWire client connects to, given the client's environment: `PIPEWIRE_REMOTE`
/// (a name or an absolute path), else `pipewire-0`, in `PIPEWIRE_RUNTIME_DIR`, `XDG_RUNTIME_DIR`
/// or `USERPROFILE`, as libpipewire resolves it. `remote` (the element's property) wins.
pub fn socket_path(remote: Option<&str>, env: impl Fn(&str) -> Option<String>) -> String {
    let name = remote
        .map(str::to_owned)
        .or_else(|| env("PIPEWIRE_REMOTE"))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "pipewire-0".to_owned());
    if name.starts_with('/') {
        return name;
    }
    let dir = ["PIPEWIRE_RUNTIME_DIR", "XDG_RUNTIME_DIR", "USERPROFILE"]
        .iter()
        .find_map(|k| env(k).filter(|s| !s.is_empty()));
    match dir {
        Some(d) => format!("{}/{name}", d.trim_end_matches('/')),
        None => format!("{name} (no runtime dir: XDG_RUNTIME_DIR is not set)"),
    }
}

#[cfg(test)]
mod tests;
