// SPDX-License-Identifier: MPL-2.0

//! Raw audio caps ↔ the WAV format a chunk file is written in: the sample format, the
//! interleaved layout and GStreamer's channel positions as a WAVE_FORMAT_EXTENSIBLE speaker mask.

use crate::wav::{SampleFormat, Speaker, WavFormat, channel_mask};

fn speaker_of(p: gst_audio::AudioChannelPosition) -> Option<Speaker> {
    use gst_audio::AudioChannelPosition as P;
    Some(match p {
        P::Mono | P::FrontCenter => Speaker::FrontCenter,
        P::FrontLeft => Speaker::FrontLeft,
        P::FrontRight => Speaker::FrontRight,
        P::Lfe1 => Speaker::LowFrequency,
        P::RearLeft => Speaker::BackLeft,
        P::RearRight => Speaker::BackRight,
        P::FrontLeftOfCenter => Speaker::FrontLeftOfCenter,
        P::FrontRightOfCenter => Speaker::FrontRightOfCenter,
        P::RearCenter => Speaker::BackCenter,
        P::SideLeft => Speaker::SideLeft,
        P::SideRight => Speaker::SideRight,
        P::TopCenter => Speaker::TopCenter,
        P::TopFrontLeft => Speaker::TopFrontLeft,
        P::TopFrontCenter => Speaker::TopFrontCenter,
        P::TopFrontRight => Speaker::TopFrontRight,
        P::TopRearLeft => Speaker::TopBackLeft,
        P::TopRearCenter => Speaker::TopBackCenter,
        P::TopRearRight => Speaker::TopBackRight,
        _ => return None,
    })
}

/// The WAV format for raw audio caps, or what is wrong with them.
pub(super) fn wav_format_of(caps: &gst::CapsRef) -> Result<WavFormat, String> {
    let info = gst_audio::AudioInfo::from_caps(caps)
        .map_err(|_| format!("caps {caps} are not complete raw audio caps"))?;
    let supported = || {
        SampleFormat::ALL
            .iter()
            .map(|f| f.gst_name())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let name = info.format().to_str();
    let sample = SampleFormat::from_gst_name(name).ok_or_else(|| {
        format!(
            "chunksink cannot store {name} samples: WAV files hold {}; put audioconvert before \
             chunksink (or ask the source for one of these formats)",
            supported()
        )
    })?;
    if info.layout() != gst_audio::AudioLayout::Interleaved {
        return Err(
            "chunksink stores interleaved samples: put audioconvert (or \
                    audiointerleave) before chunksink for non-interleaved audio"
                .into(),
        );
    }
    let mask = match info.positions() {
        Some(pos) if !info.is_unpositioned() => {
            let speakers: Vec<Option<Speaker>> = pos.iter().map(|p| speaker_of(*p)).collect();
            channel_mask(&speakers)
        }
        _ => 0,
    };
    WavFormat::new(sample, info.channels(), info.rate(), mask).map_err(|e| e.0)
}

/// What the sink pad accepts: the sample formats a WAV file can hold, interleaved.
pub(super) fn supported_caps() -> gst::Caps {
    gst::Caps::builder("audio/x-raw")
        .field(
            "format",
            gst::List::new(SampleFormat::ALL.iter().map(|f| f.gst_name())),
        )
        .field("layout", "interleaved")
        .field("rate", gst::IntRange::new(1, i32::MAX))
        .field("channels", gst::IntRange::new(1, i32::MAX))
        .build()
}
