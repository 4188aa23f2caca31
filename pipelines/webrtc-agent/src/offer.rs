//! What the viewer's offer asks for: the video m-line, its mid, and the codec and payload type
//! this agent sends. Plain text parsing (SDP, RFC 8866), no GStreamer types.

use std::fmt;

/// Codecs the agent encodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    H264,
    Vp8,
}

impl Codec {
    pub fn name(self) -> &'static str {
        match self {
            Codec::H264 => "H264",
            Codec::Vp8 => "VP8",
        }
    }
}

/// The part of an offer the agent answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoOffer {
    /// Index of the first video m-line.
    pub mline: u32,
    pub mid: Option<String>,
    pub codec: Codec,
    pub payload_type: u8,
    /// H.264 only: the `profile-level-id` the viewer offered for that payload type.
    pub profile_level_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OfferError {
    NoVideo,
    NotReceiving(String),
    NoCommonCodec(Vec<String>),
}

impl fmt::Display for OfferError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OfferError::NoVideo => write!(f, "the offer has no video m-line"),
            OfferError::NotReceiving(d) => {
                write!(
                    f,
                    "the offer's video m-line is '{d}': the viewer does not receive video"
                )
            }
            OfferError::NoCommonCodec(offered) => write!(
                f,
                "the offer has no codec this agent sends (H264 with packetization-mode=1 and a \
                 baseline profile, or VP8); offered: {}",
                if offered.is_empty() {
                    "none".to_owned()
                } else {
                    offered.join(", ")
                }
            ),
        }
    }
}

struct Format {
    pt: u8,
    encoding: String,
    fmtp: Vec<(String, String)>,
}

impl Format {
    fn param(&self, name: &str) -> Option<&str> {
        self.fmtp
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// H.264 the agent can send: packetization-mode 1 and a Baseline-family profile (profile_idc
/// 0x42): x264 in constrained-baseline decodes with any of them.
fn h264_acceptable(f: &Format) -> bool {
    f.param("packetization-mode") == Some("1")
        && f.param("profile-level-id")
            .is_none_or(|p| p.len() == 6 && p[..2].eq_ignore_ascii_case("42"))
}

/// Finds the first video m-line and the first format in the viewer's order of preference that
/// the agent can send (`allowed`, in the agent's order when several are equally preferred).
pub fn inspect(sdp: &str, allowed: &[Codec]) -> Result<VideoOffer, OfferError> {
    let mut mline: i64 = -1;
    let mut video: Option<u32> = None;
    let mut mid = None;
    let mut direction = None;
    let mut order: Vec<u8> = Vec::new();
    let mut formats: Vec<Format> = Vec::new();
    for line in sdp.lines() {
        let line = line.trim_end();
        if let Some(m) = line.strip_prefix("m=") {
            if video.is_some() {
                break;
            }
            mline += 1;
            let mut parts = m.split_whitespace();
            if parts.next() == Some("video") {
                video = Some(mline as u32);
                order = parts.skip(2).filter_map(|p| p.parse().ok()).collect();
            }
            continue;
        }
        if video.is_none() {
            continue;
        }
        let Some(attr) = line.strip_prefix("a=") else {
            continue;
        };
        if let Some(v) = attr.strip_prefix("mid:") {
            mid = Some(v.to_owned());
        } else if matches!(attr, "sendonly" | "recvonly" | "sendrecv" | "inactive") {
            direction = Some(attr.to_owned());
        } else if let Some(v) = attr.strip_prefix("rtpmap:") {
            let mut it = v.splitn(2, ' ');
            if let (Some(Ok(pt)), Some(enc)) = (it.next().map(str::parse::<u8>), it.next()) {
                let encoding = enc.split('/').next().unwrap_or("").to_ascii_uppercase();
                match formats.iter_mut().find(|f| f.pt == pt) {
                    Some(f) => f.encoding = encoding,
                    None => formats.push(Format {
                        pt,
                        encoding,
                        fmtp: Vec::new(),
                    }),
                }
            }
        } else if let Some(v) = attr.strip_prefix("fmtp:") {
            let mut it = v.splitn(2, ' ');
            if let (Some(Ok(pt)), Some(params)) = (it.next().map(str::parse::<u8>), it.next()) {
                let fmtp = params
                    .split(';')
                    .filter_map(|kv| {
                        let (k, v) = kv.trim().split_once('=')?;
                        Some((k.trim().to_owned(), v.trim().to_owned()))
                    })
                    .collect();
                match formats.iter_mut().find(|f| f.pt == pt) {
                    Some(f) => f.fmtp = fmtp,
                    None => formats.push(Format {
                        pt,
                        encoding: String::new(),
                        fmtp,
                    }),
                }
            }
        }
    }
    let mline = video.ok_or(OfferError::NoVideo)?;
    if let Some(d) = direction.filter(|d| d == "sendonly" || d == "inactive") {
        return Err(OfferError::NotReceiving(d));
    }
    let mut offered = Vec::new();
    for pt in order {
        let Some(f) = formats.iter().find(|f| f.pt == pt) else {
            continue;
        };
        let codec = match f.encoding.as_str() {
            "H264" if h264_acceptable(f) => Some(Codec::H264),
            "VP8" => Some(Codec::Vp8),
            _ => None,
        };
        match codec {
            Some(c) if allowed.contains(&c) => {
                // Among the H.264 formats, constrained baseline (42e0xx) first: what our
                // encoder makes, and what Firefox and Safari decode.
                let f = if c == Codec::H264 {
                    formats
                        .iter()
                        .filter(|g| g.encoding == "H264" && h264_acceptable(g))
                        .find(|g| {
                            g.param("profile-level-id")
                                .is_some_and(|p| p.len() == 6 && p[2..4].eq_ignore_ascii_case("e0"))
                        })
                        .unwrap_or(f)
                } else {
                    f
                };
                return Ok(VideoOffer {
                    mline,
                    mid,
                    codec: c,
                    payload_type: f.pt,
                    profile_level_id: f.param("profile-level-id").map(str::to_owned),
                });
            }
            _ => {
                if !matches!(f.encoding.as_str(), "RTX" | "RED" | "ULPFEC" | "FLEXFEC-03") {
                    offered.push(format!("{}/{}", f.encoding, f.pt));
                }
            }
        }
    }
    Err(OfferError::NoCommonCodec(offered))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Abridged from a Chromium recvonly offer.
    const CHROMIUM: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        a=group:BUNDLE 0\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103 106 107\r\n\
        c=IN IP4 0.0.0.0\r\na=mid:0\r\na=recvonly\r\n\
        a=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 nack pli\r\n\
        a=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n\
        a=rtpmap:102 H264/90000\r\n\
        a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f\r\n\
        a=rtpmap:103 rtx/90000\r\na=fmtp:103 apt=102\r\n\
        a=rtpmap:106 H264/90000\r\n\
        a=fmtp:106 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n\
        a=rtpmap:107 H264/90000\r\n\
        a=fmtp:107 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42e01f\r\n";

    #[test]
    fn follows_the_viewers_order() {
        let o = inspect(CHROMIUM, &[Codec::H264, Codec::Vp8]).unwrap();
        assert_eq!((o.codec, o.payload_type, o.mline), (Codec::Vp8, 96, 0));
        assert_eq!(o.mid.as_deref(), Some("0"));
        // Constrained baseline preferred over plain baseline; packetization-mode 0 never.
        let o = inspect(CHROMIUM, &[Codec::H264]).unwrap();
        assert_eq!((o.codec, o.payload_type), (Codec::H264, 106));
        assert_eq!(o.profile_level_id.as_deref(), Some("42e01f"));
        let baseline_only = CHROMIUM.replace("profile-level-id=42e01f", "profile-level-id=640c1f");
        let o = inspect(&baseline_only, &[Codec::H264]).unwrap();
        assert_eq!(
            (o.payload_type, o.profile_level_id.as_deref()),
            (102, Some("42001f"))
        );
    }

    #[test]
    fn refuses_what_it_cannot_answer() {
        let audio_only = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n";
        assert_eq!(inspect(audio_only, &[Codec::Vp8]), Err(OfferError::NoVideo));
        let sendonly = CHROMIUM.replace("a=recvonly", "a=sendonly");
        assert!(matches!(
            inspect(&sendonly, &[Codec::Vp8]),
            Err(OfferError::NotReceiving(_))
        ));
        let av1 = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 45 107\r\na=rtpmap:45 AV1/90000\r\n\
            a=rtpmap:107 H264/90000\r\na=fmtp:107 packetization-mode=0;profile-level-id=42e01f\r\n";
        let e = inspect(av1, &[Codec::H264, Codec::Vp8]).unwrap_err();
        assert_eq!(
            e,
            OfferError::NoCommonCodec(vec!["AV1/45".into(), "H264/107".into()])
        );
        assert!(e.to_string().contains("offered: AV1/45, H264/107"));
        let high = "v=0\r\nm=video 9 RTP/AVP 100\r\na=rtpmap:100 H264/90000\r\n\
            a=fmtp:100 packetization-mode=1;profile-level-id=640032\r\n";
        assert!(inspect(high, &[Codec::H264]).is_err());
    }

    #[test]
    fn video_after_audio_has_its_own_index() {
        let sdp = "v=0\r\nm=audio 9 RTP/AVP 0\r\na=mid:a\r\nm=video 9 RTP/AVP 96\r\na=mid:v\r\n\
            a=rtpmap:96 VP8/90000\r\n";
        let o = inspect(sdp, &[Codec::Vp8]).unwrap();
        assert_eq!((o.mline, o.mid.as_deref()), (1, Some("v")));
    }

    #[test]
    fn never_panics_on_garbage() {
        for s in [
            "",
            "m=",
            "m=video",
            "m=video 9",
            "a=rtpmap:x",
            "m=video 9 P 1\na=rtpmap:1",
            "m=video 9 P 1\na=fmtp:1 ;;=;",
            "m=video 9 P 300\na=rtpmap:300 VP8/1",
        ] {
            let _ = inspect(s, &[Codec::H264, Codec::Vp8]);
        }
    }
}
