//! What the agent reports per session, read from webrtcbin's `get-stats` structure.

/// One reading of a session's sender statistics.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Report {
    pub bytes_sent: u64,
    pub packets_lost: Option<i64>,
    /// From the viewer's last RTCP receiver report (0..=1).
    pub fraction_lost: Option<f64>,
    pub rtt_ms: Option<f64>,
    /// `host`, `srflx`, `prflx` or `relay`: the local candidate of the selected pair.
    pub candidate_pair: Option<String>,
}

impl Report {
    pub fn from_webrtcbin(stats: &gst::StructureRef) -> Self {
        let mut r = Report::default();
        // webrtcbin (1.22) reports the selected pair only: its local candidate's type is the
        // pair's type (the ids inside are not reliable: the local entry carries the remote id).
        let mut local_type: Option<String> = None;
        for (_, value) in stats.iter() {
            let Ok(s) = value.get::<gst::Structure>() else {
                continue;
            };
            match s.name().as_str() {
                "outbound-rtp" => {
                    r.bytes_sent += s.get::<u64>("bytes-sent").unwrap_or(0);
                }
                "remote-inbound-rtp" => {
                    if let Ok(l) = s.get::<i32>("packets-lost") {
                        r.packets_lost = Some(r.packets_lost.unwrap_or(0) + i64::from(l));
                    } else if let Ok(l) = s.get::<i64>("packets-lost") {
                        r.packets_lost = Some(r.packets_lost.unwrap_or(0) + l);
                    }
                    if let Ok(f) = s.get::<f64>("fraction-lost") {
                        r.fraction_lost = Some(f);
                    }
                    if let Ok(rtt) = s.get::<f64>("round-trip-time") {
                        r.rtt_ms = Some((rtt * 1000.0 * 10.0).round() / 10.0);
                    }
                }
                "local-candidate" => {
                    if let Ok(t) = s.get::<String>("candidate-type") {
                        local_type.get_or_insert(t);
                    }
                }
                _ => {}
            }
        }
        r.candidate_pair = local_type;
        r
    }
}
