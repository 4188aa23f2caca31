//! The media side. One pipeline: the source, converted to the configured size and rate, into a
//! raw tee; one encoder per codec in use, shared by every viewer of that codec, into an encoded
//! tee; per viewer a queue, a payloader and a `webrtcbin`. All changes to the graph happen on
//! one control thread ([`run`]), fed by [`Command`]s from the signalling task, from GStreamer
//! callbacks and from the stats timer, so the graph needs no lock.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::prelude::*;
use log::{debug, info, warn};
use serde_json::json;

use crate::control::LossBasedRate;
use crate::encoders::{configure_encoder, force_key_unit, make, pick_encoder, set_encoder_bitrate};
use crate::ice;
use crate::offer::{self, Codec, VideoOffer};
use crate::protocol::{self, IceServer};

/// Remote candidates kept for a session whose offer has not arrived yet.
const MAX_EARLY_CANDIDATES: usize = 64;

/// A session whose connection is not up this long after its offer is ended (ICE failure).
const ICE_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct MediaConfig {
    /// A gst-launch description of the source (one unlinked video src pad).
    pub source: String,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// Codecs offered to viewers, in the agent's order of preference.
    pub codecs: Vec<Codec>,
    /// Encoder factory forced by the user (else the best available).
    pub encoder: Option<String>,
    pub start_kbps: u32,
    pub min_kbps: u32,
    pub max_kbps: u32,
    pub relay_only: bool,
    pub max_sessions: usize,
}

/// Work for the control thread.
pub enum Command {
    Watch {
        session_id: String,
        ice_servers: Vec<IceServer>,
    },
    Offer {
        session_id: String,
        sdp: String,
    },
    Candidate {
        session_id: String,
        candidate: String,
        mline: Option<u32>,
        mid: Option<String>,
    },
    /// Ends one session; `tell_backend` sends `watch_end` for it.
    End {
        session_id: String,
        reason: String,
        tell_backend: bool,
    },
    /// The viewer's connection is up: ask the encoder for a key frame.
    Connected {
        session_id: String,
    },
    StatsTick,
    Stats {
        session_id: String,
        stats: gst::Structure,
    },
    /// Something outside any session failed (the source, the encoder): the agent stops.
    Fatal(String),
    Shutdown,
}

/// Sends protocol messages to the backend (dropped while the WebSocket is down).
pub type Outbox = tokio::sync::mpsc::UnboundedSender<String>;

struct EncoderBranch {
    factory: String,
    encoder: gst::Element,
    elements: Vec<gst::Element>,
    raw_pad: gst::Pad,
    tee: gst::Element,
    users: usize,
    kbps: u32,
}

struct SessionBranch {
    codec: Codec,
    elements: Vec<gst::Element>,
    tee_pad: gst::Pad,
}

struct Session {
    name: String,
    webrtcbin: gst::Element,
    offer: Option<VideoOffer>,
    mid: Arc<Mutex<Option<String>>>,
    early_candidates: Vec<(String, Option<u32>, Option<String>)>,
    branch: Option<SessionBranch>,
    frames: Arc<AtomicU64>,
    rate: LossBasedRate,
    last: Option<(Instant, u64, u64)>,
    offer_at: Option<Instant>,
    connected: Arc<AtomicBool>,
    /// How this session's ICE failure is explained (depends on TURN and the policy).
    ice_hint: &'static str,
}

pub struct Media {
    cfg: MediaConfig,
    pipeline: gst::Pipeline,
    raw_tee: gst::Element,
    encoders: HashMap<Codec, EncoderBranch>,
    sessions: HashMap<String, Session>,
    next_name: u64,
    out: Outbox,
    commands: Sender<Command>,
}

impl Media {
    /// Builds the source part of the pipeline and starts it.
    pub fn start(cfg: MediaConfig, out: Outbox, commands: Sender<Command>) -> Result<Self, String> {
        let pipeline = gst::Pipeline::with_name("webrtc-agent");
        // The converter inside the description gives sources with sometimes pads
        // (`rtmpflvsrc ! decodebin`, `uridecodebin`) a static pad to ghost: gst-launch's
        // delayed linking connects them when their pad appears.
        // Only that converter's output is ghosted: unlinked pads elsewhere in the description
        // (a delayed link's sink pad) must stay for gst-launch's linking.
        let source = gst::parse::bin_from_description(
            &format!("{} ! videoconvert name=vcb-source-out", cfg.source),
            false,
        )
        .map_err(|e| {
            let hint = if e.matches(gst::ParseError::Link) {
                " (the source must produce video)"
            } else {
                ""
            };
            format!("--source '{}': {e}{hint}", cfg.source)
        })?;
        let source_out = source
            .by_name("vcb-source-out")
            .and_then(|c| c.static_pad("src"))
            .ok_or_else(|| format!("--source '{}' has no video output", cfg.source))?;
        let ghost = gst::GhostPad::builder_with_target(&source_out)
            .map_err(|e| e.to_string())?
            .name("src")
            .build();
        source.add_pad(&ghost).map_err(|e| e.to_string())?;
        let scale = make("videoscale")?;
        // Drop-only: lowers a faster source's rate without holding a frame back (plain
        // videorate keeps one frame to decide, one frame interval of latency).
        let rate = make("videorate")?;
        rate.set_property("drop-only", true);
        rate.set_property("max-rate", cfg.fps as i32);
        let caps = gst::ElementFactory::make("capsfilter")
            .property(
                "caps",
                gst::Caps::builder("video/x-raw")
                    .field("format", "I420")
                    .field("width", cfg.width as i32)
                    .field("height", cfg.height as i32)
                    .field(
                        "framerate",
                        gst::FractionRange::new(
                            gst::Fraction::new(0, 1),
                            gst::Fraction::new(cfg.fps as i32, 1),
                        ),
                    )
                    .build(),
            )
            .build()
            .map_err(|e| e.to_string())?;
        // Paces buffers that arrive ahead of their time: files and non-live test sources, and
        // live sources that burst (an RTMP publisher sending faster than real time). For live
        // sources it is offset (below) so that frames on time never wait.
        let sync = make("clocksync")?;
        let raw_tee = make("tee")?;
        raw_tee.set_property("allow-not-linked", true);
        let elements = [source.upcast_ref(), &scale, &rate, &caps, &sync, &raw_tee];
        pipeline.add_many(elements).map_err(|e| e.to_string())?;
        gst::Element::link_many(elements).map_err(|_| {
            format!(
                "--source '{}' cannot be converted to {}x{}@{} raw video (is it a video source?)",
                cfg.source, cfg.width, cfg.height, cfg.fps
            )
        })?;
        let media = Media {
            cfg,
            pipeline,
            raw_tee,
            encoders: HashMap::new(),
            sessions: HashMap::new(),
            next_name: 0,
            out,
            commands,
        };
        media.watch_bus();
        let failed = |_| "the source pipeline failed to start (see the error above)".to_owned();
        let live = media
            .pipeline
            .set_state(gst::State::Paused)
            .map_err(failed)?
            == gst::StateChangeSuccess::NoPreroll;
        if live {
            let mut q = gst::query::Latency::new();
            let min = if source.query(&mut q) {
                q.result().1
            } else {
                gst::ClockTime::ZERO
            };
            // Frames up to 100 ms ahead of the source's declared latency pass at once (some
            // live sources stamp a frame interval ahead of what they declare); only a burst
            // further ahead is held back to real time.
            let early = min.nseconds().min(i64::MAX as u64 / 2) as i64 + 100_000_000;
            sync.set_property("ts-offset", -early);
            debug!("the source is live, latency {min}");
        } else {
            debug!("the source is not live: paced by the clock");
        }
        media
            .pipeline
            .set_state(gst::State::Playing)
            .map_err(failed)?;
        Ok(media)
    }

    /// Bus errors end the session they come from; any other error stops the agent.
    fn watch_bus(&self) {
        let bus = self.pipeline.bus().expect("a pipeline has a bus");
        let commands = self.commands.clone();
        let pipeline = self.pipeline.downgrade();
        std::thread::Builder::new()
            .name("bus".into())
            .spawn(move || {
                while pipeline.upgrade().is_some() {
                    let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(200)) else {
                        continue;
                    };
                    match msg.view() {
                        gst::MessageView::Error(e) => {
                            let src = msg.src().map(|s| s.path_string().to_string());
                            let text = format!(
                                "{}: {} ({})",
                                src.clone().unwrap_or_default(),
                                e.error(),
                                e.debug().unwrap_or_default()
                            );
                            let session = msg.src().and_then(|s| {
                                let mut o = Some(s.clone());
                                while let Some(cur) = o {
                                    if let Some(n) = cur.name().strip_prefix("session-") {
                                        return Some(n.to_owned());
                                    }
                                    o = cur.parent();
                                }
                                None
                            });
                            let cmd = match session {
                                Some(name) => Command::End {
                                    session_id: format!("\0{name}"),
                                    reason: text,
                                    tell_backend: true,
                                },
                                None => Command::Fatal(text),
                            };
                            if commands.send(cmd).is_err() {
                                break;
                            }
                        }
                        gst::MessageView::Warning(w) => {
                            warn!(
                                "{}: {} ({})",
                                msg.src().map(|s| s.path_string()).unwrap_or_default(),
                                w.error(),
                                w.debug().unwrap_or_default()
                            );
                        }
                        gst::MessageView::Eos(_) => {
                            let _ = commands
                                .send(Command::Fatal("the source ended (end of stream)".into()));
                        }
                        gst::MessageView::Latency(_) => {
                            if let Some(p) = pipeline.upgrade() {
                                let _ = p.recalculate_latency();
                            }
                        }
                        _ => {}
                    }
                }
            })
            .expect("spawning the bus thread");
    }

    fn send(&self, msg: String) {
        // The receiver only goes away when the agent exits.
        let _ = self.out.send(msg);
    }

    /// A session id as reported by a bus message (`"\0" + element name`) back to the id.
    fn resolve(&self, id: &str) -> Option<String> {
        match id.strip_prefix('\0') {
            Some(name) => {
                let name = format!("session-{name}");
                self.sessions
                    .iter()
                    .find(|(_, s)| s.name == name)
                    .map(|(k, _)| k.clone())
            }
            None => self.sessions.contains_key(id).then(|| id.to_owned()),
        }
    }

    fn handle(&mut self, cmd: Command) -> Option<Result<(), String>> {
        match cmd {
            Command::Watch {
                session_id,
                ice_servers,
            } => self.watch(session_id, &ice_servers),
            Command::Offer { session_id, sdp } => self.offer(&session_id, &sdp),
            Command::Candidate {
                session_id,
                candidate,
                mline,
                mid,
            } => self.candidate(&session_id, candidate, mline, mid),
            Command::End {
                session_id,
                reason,
                tell_backend,
            } => {
                if let Some(id) = self.resolve(&session_id) {
                    self.end(&id, &reason, tell_backend);
                }
            }
            Command::Connected { session_id } => {
                if let Some(b) = self
                    .sessions
                    .get(&session_id)
                    .and_then(|s| s.branch.as_ref())
                    && let Some(pad) = b.elements[0].static_pad("src")
                {
                    force_key_unit(&pad);
                }
            }
            Command::StatsTick => {
                self.end_unconnected();
                self.request_stats();
            }
            Command::Stats { session_id, stats } => self.stats(&session_id, &stats),
            Command::Fatal(e) => return Some(Err(e)),
            Command::Shutdown => return Some(Ok(())),
        }
        None
    }

    fn watch(&mut self, session_id: String, ice_servers: &[IceServer]) {
        if self.sessions.contains_key(&session_id) {
            warn!("watch_request for session {session_id}, which exists already: ignored");
            return;
        }
        if self.sessions.len() >= self.cfg.max_sessions {
            warn!(
                "watch_request for session {session_id} refused: {} viewers already (--max-sessions)",
                self.sessions.len()
            );
            self.send(protocol::watch_end(&session_id));
            return;
        }
        match self.new_session(&session_id, ice_servers) {
            Ok(s) => {
                info!("session {session_id}: watch requested ({})", s.name);
                self.sessions.insert(session_id, s);
            }
            Err(e) => {
                warn!("session {session_id}: cannot prepare a peer connection: {e}");
                self.send(protocol::watch_end(&session_id));
            }
        }
    }

    fn new_session(&mut self, session_id: &str, servers: &[IceServer]) -> Result<Session, String> {
        self.next_name += 1;
        let name = format!("session-{}", self.next_name);
        let webrtcbin = gst::ElementFactory::make("webrtcbin")
            .name(&name)
            .build()
            .map_err(|_| {
                "webrtcbin is missing: install gstreamer1.0-plugins-bad and gstreamer1.0-nice \
                 (scripts/install-deps.sh)"
                    .to_owned()
            })?;
        webrtcbin.set_property_from_str("bundle-policy", "max-bundle");
        if self.cfg.relay_only {
            webrtcbin.set_property_from_str("ice-transport-policy", "relay");
        }
        let urls = ice::convert(servers);
        for s in &urls.skipped {
            warn!("session {session_id}: ICE server skipped: {s}");
        }
        if let Some(stun) = &urls.stun {
            webrtcbin.set_property("stun-server", stun);
        }
        for turn in &urls.turn {
            let ok = webrtcbin.emit_by_name::<bool>("add-turn-server", &[turn]);
            if !ok {
                warn!("session {session_id}: webrtcbin refused a TURN server URL");
            }
        }
        if self.cfg.relay_only && urls.turn.is_empty() {
            warn!(
                "session {session_id}: relay-only ICE but the backend sent no usable TURN server: \
                 this session cannot connect"
            );
        }
        let ice_hint = if self.cfg.relay_only || !urls.turn.is_empty() {
            "check the TURN server and its credentials (a wrong --turn-secret on the backend \
             makes the relay refuse them)"
        } else {
            "the viewer is not reachable directly; give the backend a TURN server"
        };
        // webrtcbin (1.22) holds each outgoing packet in a clocksync until its time plus the
        // pipeline latency (one source frame and more): tens of ms of glass-to-glass delay a
        // camera does not need. Its packets leave as soon as they are made instead.
        if let Some(bin) = webrtcbin.downcast_ref::<gst::Bin>() {
            bin.connect_deep_element_added(|_, _, e| {
                if e.factory().is_some_and(|f| f.name() == "clocksync") {
                    e.set_property("sync", false);
                }
            });
        }
        let mid = Arc::new(Mutex::new(None::<String>));
        let gathered = Arc::new(AtomicU32::new(0));
        let connected = Arc::new(AtomicBool::new(false));
        {
            let out = self.out.clone();
            let id = session_id.to_owned();
            let mid = mid.clone();
            let gathered = gathered.clone();
            webrtcbin.connect("on-ice-candidate", false, move |v| {
                let mline = v[1].get::<u32>().ok()?;
                let cand = v[2].get::<String>().ok()?;
                gathered.fetch_add(1, Ordering::Relaxed);
                let mid = mid.lock().map(|m| m.clone()).unwrap_or_default();
                let _ = out.send(protocol::ice_candidate(&id, &cand, mid.as_deref(), mline));
                None
            });
        }
        {
            let commands = self.commands.clone();
            let id = session_id.to_owned();
            let relay = self.cfg.relay_only;
            webrtcbin.connect_notify(Some("ice-gathering-state"), move |w, _| {
                let state =
                    w.property::<gst_webrtc::WebRTCICEGatheringState>("ice-gathering-state");
                if state == gst_webrtc::WebRTCICEGatheringState::Complete
                    && gathered.load(Ordering::Relaxed) == 0
                {
                    let what = if relay {
                        "no relay candidate: the TURN server refused the credentials or is \
                         unreachable (check the backend's --turn-url and --turn-secret)"
                    } else {
                        "no local candidate (no usable network interface?)"
                    };
                    warn!("session {id}: ICE failed: {what}");
                    let _ = commands.send(Command::End {
                        session_id: id.clone(),
                        reason: "ICE failed".into(),
                        tell_backend: true,
                    });
                }
            });
        }
        {
            let commands = self.commands.clone();
            let id = session_id.to_owned();
            let connected = connected.clone();
            webrtcbin.connect_notify(Some("connection-state"), move |w, _| {
                let state = w.property::<gst_webrtc::WebRTCPeerConnectionState>("connection-state");
                debug!("session {id}: connection {state:?}");
                match state {
                    gst_webrtc::WebRTCPeerConnectionState::Connected => {
                        info!("session {id}: connected");
                        connected.store(true, Ordering::Relaxed);
                        let _ = commands.send(Command::Connected {
                            session_id: id.clone(),
                        });
                    }
                    gst_webrtc::WebRTCPeerConnectionState::Failed => {
                        warn!("session {id}: ICE failed: no candidate pair worked: {ice_hint}");
                        let _ = commands.send(Command::End {
                            session_id: id.clone(),
                            reason: "ICE failed".into(),
                            tell_backend: true,
                        });
                    }
                    _ => {}
                }
            });
        }
        self.pipeline
            .add(&webrtcbin)
            .map_err(|e| format!("adding webrtcbin: {e}"))?;
        if webrtcbin.sync_state_with_parent().is_err() {
            let _ = self.pipeline.remove(&webrtcbin);
            return Err("webrtcbin failed to start".into());
        }
        Ok(Session {
            name,
            webrtcbin,
            offer: None,
            mid,
            early_candidates: Vec::new(),
            branch: None,
            frames: Arc::new(AtomicU64::new(0)),
            rate: LossBasedRate::new(self.cfg.start_kbps, self.cfg.min_kbps, self.cfg.max_kbps),
            last: None,
            offer_at: None,
            connected,
            ice_hint,
        })
    }

    fn encoder_for(&mut self, codec: Codec) -> Result<&mut EncoderBranch, String> {
        if !self.encoders.contains_key(&codec) {
            let b = self.build_encoder(codec)?;
            info!("{} encoder {} started", codec.name(), b.factory);
            self.encoders.insert(codec, b);
        }
        Ok(self.encoders.get_mut(&codec).expect("inserted above"))
    }

    fn build_encoder(&self, codec: Codec) -> Result<EncoderBranch, String> {
        let factory = pick_encoder(codec, self.cfg.encoder.as_deref())?;
        let queue = make("queue")?;
        queue.set_property_from_str("leaky", "downstream");
        queue.set_property("max-size-buffers", 2u32);
        queue.set_property("max-size-bytes", 0u32);
        queue.set_property("max-size-time", 0u64);
        let encoder = make(&factory)?;
        let kbps = self.cfg.start_kbps;
        configure_encoder(&encoder, &factory, self.cfg.fps, kbps);
        let caps = match codec {
            Codec::H264 => gst::Caps::builder("video/x-h264")
                .field("profile", "constrained-baseline")
                .field("stream-format", "byte-stream")
                .field("alignment", "au")
                .build(),
            Codec::Vp8 => gst::Caps::new_empty_simple("video/x-vp8"),
        };
        let filter = gst::ElementFactory::make("capsfilter")
            .property("caps", caps)
            .build()
            .map_err(|e| e.to_string())?;
        let tee = make("tee")?;
        tee.set_property("allow-not-linked", true);
        let elements = vec![queue, encoder.clone(), filter, tee.clone()];
        self.pipeline
            .add_many(&elements)
            .map_err(|e| e.to_string())?;
        let fail = |what: String| {
            for e in &elements {
                let _ = e.set_state(gst::State::Null);
                let _ = self.pipeline.remove(e);
            }
            what
        };
        if gst::Element::link_many(&elements).is_err() {
            return Err(fail(format!(
                "{factory} cannot produce {} in the required profile",
                codec.name()
            )));
        }
        for e in elements.iter().rev() {
            if e.sync_state_with_parent().is_err() {
                return Err(fail(format!("{} failed to start", e.name())));
            }
        }
        let raw_pad = self
            .raw_tee
            .request_pad_simple("src_%u")
            .ok_or_else(|| "tee gave no pad".to_owned())?;
        let sink = elements[0]
            .static_pad("sink")
            .expect("queue has a sink pad");
        if raw_pad.link(&sink).is_err() {
            self.raw_tee.release_request_pad(&raw_pad);
            return Err(fail("linking the encoder to the source failed".into()));
        }
        Ok(EncoderBranch {
            factory,
            encoder,
            elements,
            raw_pad,
            tee,
            users: 0,
            kbps,
        })
    }

    fn offer(&mut self, session_id: &str, sdp: &str) {
        let Some(session) = self.sessions.get(session_id) else {
            warn!("signal_offer for unknown session {session_id}: ignored");
            return;
        };
        if session.offer.is_some() {
            warn!("session {session_id}: a second offer (renegotiation) is not supported: ignored");
            return;
        }
        let video = match offer::inspect(sdp, &self.cfg.codecs) {
            Ok(v) => v,
            Err(e) => {
                warn!("session {session_id}: offer rejected: {e}");
                self.end(session_id, "offer rejected", true);
                return;
            }
        };
        let message = match gst_sdp::SDPMessage::parse_buffer(sdp.as_bytes()) {
            Ok(m) => m,
            Err(_) => {
                warn!("session {session_id}: offer rejected: the SDP does not parse");
                self.end(session_id, "offer rejected", true);
                return;
            }
        };
        if let Err(e) = self.attach(session_id, &video) {
            warn!(
                "session {session_id}: cannot send {}: {e}",
                video.codec.name()
            );
            self.end(session_id, "no encoder", true);
            return;
        }
        let session = self.sessions.get_mut(session_id).expect("checked above");
        if let Ok(mut m) = session.mid.lock() {
            *m = video.mid.clone();
        }
        info!(
            "session {session_id}: offer accepted, sending {} as payload type {}",
            video.codec.name(),
            video.payload_type
        );
        session.offer = Some(video);
        session.offer_at = Some(Instant::now());
        let webrtcbin = session.webrtcbin.clone();
        let early = std::mem::take(&mut session.early_candidates);
        let desc =
            gst_webrtc::WebRTCSessionDescription::new(gst_webrtc::WebRTCSDPType::Offer, message);
        let out = self.out.clone();
        let commands = self.commands.clone();
        let id = session_id.to_owned();
        let weak = webrtcbin.downgrade();
        let promise = gst::Promise::with_change_func(move |reply| {
            let Some(webrtcbin) = weak.upgrade() else {
                return;
            };
            if let Err(e) = reply {
                warn!("session {id}: the offer was not applied ({e:?})");
                let _ = commands.send(Command::End {
                    session_id: id,
                    reason: "offer not applied".into(),
                    tell_backend: true,
                });
                return;
            }
            let weak = webrtcbin.downgrade();
            let answer_promise = gst::Promise::with_change_func(move |reply| {
                let Some(webrtcbin) = weak.upgrade() else {
                    return;
                };
                let answer = reply
                    .ok()
                    .flatten()
                    .and_then(|s| s.get::<gst_webrtc::WebRTCSessionDescription>("answer").ok());
                let Some(answer) = answer else {
                    warn!("session {id}: webrtcbin created no answer for the offer");
                    let _ = commands.send(Command::End {
                        session_id: id,
                        reason: "no answer".into(),
                        tell_backend: true,
                    });
                    return;
                };
                webrtcbin
                    .emit_by_name::<()>("set-local-description", &[&answer, &None::<gst::Promise>]);
                match answer.sdp().as_text() {
                    Ok(text) => {
                        let _ = out.send(protocol::answer(&id, &text));
                    }
                    Err(e) => warn!("session {id}: the answer does not serialize: {e}"),
                }
            });
            webrtcbin
                .emit_by_name::<()>("create-answer", &[&None::<gst::Structure>, &answer_promise]);
        });
        webrtcbin.emit_by_name::<()>("set-remote-description", &[&desc, &promise]);
        for (c, mline, mid) in early {
            self.candidate(session_id, c, mline, mid);
        }
    }

    /// Links the session's webrtcbin to the shared encoder of the offered codec.
    fn attach(&mut self, session_id: &str, video: &VideoOffer) -> Result<(), String> {
        let webrtcbin = self.sessions[session_id].webrtcbin.clone();
        let frames = self.sessions[session_id].frames.clone();
        let pipeline = self.pipeline.clone();
        let enc = self.encoder_for(video.codec)?;
        let queue = make("queue")?;
        queue.set_property("max-size-buffers", 0u32);
        queue.set_property("max-size-bytes", 0u32);
        queue.set_property("max-size-time", 500_000_000u64);
        queue.set_property_from_str("leaky", "downstream");
        let pay = match video.codec {
            Codec::H264 => {
                let p = make("rtph264pay")?;
                p.set_property("config-interval", -1i32);
                p.set_property_from_str("aggregate-mode", "zero-latency");
                p
            }
            Codec::Vp8 => {
                let p = make("rtpvp8pay")?;
                p.set_property_from_str("picture-id-mode", "15-bit");
                p
            }
        };
        pay.set_property("pt", u32::from(video.payload_type));
        pay.set_property("mtu", 1200u32);
        let mut elements = vec![queue, pay.clone()];
        if video.codec == Codec::H264 {
            // x264 announces e.g. 42c015; the viewer's offer names the profile-level-id it
            // decodes, and webrtcbin only answers with a matching one.
            let plid = video.profile_level_id.as_deref().unwrap_or("42e01f");
            let setter = make("capssetter")?;
            setter.set_property(
                "caps",
                gst::Caps::builder("application/x-rtp")
                    .field("profile-level-id", plid)
                    .build(),
            );
            elements.push(setter);
        }
        pipeline.add_many(&elements).map_err(|e| e.to_string())?;
        let cleanup = |elements: &[gst::Element]| {
            for e in elements {
                let _ = e.set_state(gst::State::Null);
                let _ = pipeline.remove(e);
            }
        };
        if gst::Element::link_many(&elements).is_err() {
            cleanup(&elements);
            return Err("linking the payloader failed".into());
        }
        let last = elements.last().expect("not empty").clone();
        let sinkpad = format!("sink_{}", video.mline);
        if last
            .link_pads(Some("src"), &webrtcbin, Some(&sinkpad))
            .is_err()
        {
            cleanup(&elements);
            return Err(format!(
                "webrtcbin has no pad {sinkpad} for the offer's video m-line"
            ));
        }
        if let Some(pad) = webrtcbin.static_pad(&sinkpad)
            && let Some(t) = pad.property::<Option<gst_webrtc::WebRTCRTPTransceiver>>("transceiver")
        {
            t.set_direction(gst_webrtc::WebRTCRTPTransceiverDirection::Sendonly);
        }
        if let Some(pad) = pay.static_pad("sink") {
            pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                frames.fetch_add(1, Ordering::Relaxed);
                gst::PadProbeReturn::Ok
            });
        }
        for e in elements.iter().rev() {
            let _ = e.sync_state_with_parent();
        }
        let tee_pad = enc
            .tee
            .request_pad_simple("src_%u")
            .ok_or_else(|| "tee gave no pad".to_owned())?;
        let qsink = elements[0].static_pad("sink").expect("queue sink");
        if tee_pad.link(&qsink).is_err() {
            enc.tee.release_request_pad(&tee_pad);
            cleanup(&elements);
            return Err("linking to the encoder failed".into());
        }
        enc.users += 1;
        // A key frame (with SPS/PPS) for the new viewer; again once it is connected.
        if let Some(src) = elements[0].static_pad("src") {
            force_key_unit(&src);
        }
        self.sessions.get_mut(session_id).expect("exists").branch = Some(SessionBranch {
            codec: video.codec,
            elements,
            tee_pad,
        });
        Ok(())
    }

    fn candidate(
        &mut self,
        session_id: &str,
        cand: String,
        mline: Option<u32>,
        mid: Option<String>,
    ) {
        let Some(s) = self.sessions.get_mut(session_id) else {
            warn!("ice_candidate for unknown session {session_id}: ignored");
            return;
        };
        if cand.is_empty() {
            return; // end of candidates
        }
        let Some(offer) = &s.offer else {
            if s.early_candidates.len() < MAX_EARLY_CANDIDATES {
                s.early_candidates.push((cand, mline, mid));
            } else {
                warn!("session {session_id}: too many candidates before the offer: dropped");
            }
            return;
        };
        // Everything is bundled on the video m-line.
        let index = match (mline, &mid) {
            (Some(i), _) => i,
            (None, Some(m)) if offer.mid.as_deref() == Some(m.as_str()) => offer.mline,
            _ => offer.mline,
        };
        let cand = cand.strip_prefix("a=").unwrap_or(&cand).to_owned();
        debug!("session {session_id}: remote candidate {cand} (m-line {index})");
        s.webrtcbin
            .emit_by_name::<()>("add-ice-candidate", &[&index, &cand]);
    }

    fn end(&mut self, session_id: &str, reason: &str, tell_backend: bool) {
        let Some(s) = self.sessions.remove(session_id) else {
            return;
        };
        info!("session {session_id}: ended ({reason})");
        if tell_backend {
            self.send(protocol::watch_end(session_id));
        }
        if let Some(b) = s.branch {
            let codec = b.codec;
            if let Some(enc) = self.encoders.get_mut(&codec) {
                if let Some(peer) = b.tee_pad.peer() {
                    let _ = b.tee_pad.unlink(&peer);
                }
                enc.tee.release_request_pad(&b.tee_pad);
                enc.users = enc.users.saturating_sub(1);
            }
            for e in &b.elements {
                let _ = e.set_state(gst::State::Null);
                let _ = self.pipeline.remove(e);
            }
        }
        let _ = s.webrtcbin.set_state(gst::State::Null);
        let _ = self.pipeline.remove(&s.webrtcbin);
        self.stop_idle_encoders();
    }

    /// Stops every encoder no viewer uses (also one started for a session that then failed
    /// to attach).
    fn stop_idle_encoders(&mut self) {
        let idle: Vec<Codec> = self
            .encoders
            .iter()
            .filter(|(_, e)| e.users == 0)
            .map(|(c, _)| *c)
            .collect();
        for codec in idle {
            let enc = self.encoders.remove(&codec).expect("listed above");
            if let Some(peer) = enc.raw_pad.peer() {
                let _ = enc.raw_pad.unlink(&peer);
            }
            self.raw_tee.release_request_pad(&enc.raw_pad);
            for e in &enc.elements {
                let _ = e.set_state(gst::State::Null);
                let _ = self.pipeline.remove(e);
            }
            info!(
                "{} encoder {} stopped (no viewer)",
                codec.name(),
                enc.factory
            );
        }
    }

    /// Ends sessions whose connection did not come up in time.
    fn end_unconnected(&mut self) {
        let late: Vec<(String, &'static str)> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                !s.connected.load(Ordering::Relaxed)
                    && s.offer_at
                        .is_some_and(|t| t.elapsed() > ICE_CONNECT_TIMEOUT)
            })
            .map(|(id, s)| (id.clone(), s.ice_hint))
            .collect();
        for (id, hint) in late {
            warn!(
                "session {id}: ICE failed: not connected {} s after the offer: {hint}",
                ICE_CONNECT_TIMEOUT.as_secs()
            );
            self.end(&id, "ICE failed", true);
        }
    }

    fn request_stats(&self) {
        for (id, s) in &self.sessions {
            if s.offer.is_none() {
                continue;
            }
            let commands = self.commands.clone();
            let id = id.clone();
            let promise = gst::Promise::with_change_func(move |reply| {
                if let Ok(Some(stats)) = reply {
                    let _ = commands.send(Command::Stats {
                        session_id: id,
                        stats: stats.to_owned(),
                    });
                }
            });
            s.webrtcbin
                .emit_by_name::<()>("get-stats", &[&None::<gst::Pad>, &promise]);
        }
    }

    fn stats(&mut self, session_id: &str, stats: &gst::StructureRef) {
        let Some(s) = self.sessions.get_mut(session_id) else {
            return;
        };
        log::trace!("session {session_id}: stats {stats}");
        let r = crate::stats::Report::from_webrtcbin(stats);
        let now = Instant::now();
        let frames = s.frames.load(Ordering::Relaxed);
        let (kbps, fps) = match s.last {
            Some((t, bytes, f)) => {
                let dt = now.duration_since(t).as_secs_f64().max(1e-3);
                (
                    (r.bytes_sent.saturating_sub(bytes) as f64 * 8.0 / 1000.0 / dt),
                    (frames.saturating_sub(f) as f64 / dt),
                )
            }
            None => (0.0, 0.0),
        };
        s.last = Some((now, r.bytes_sent, frames));
        if let Some(loss) = r.fraction_lost {
            s.rate.on_report(loss);
        }
        let codec = s.branch.as_ref().map(|b| b.codec);
        let line = json!({
            "event": "stats",
            "session_id": session_id,
            "rtt_ms": r.rtt_ms,
            "packets_lost": r.packets_lost,
            "fraction_lost": r.fraction_lost,
            "bitrate_kbps": (kbps * 10.0).round() / 10.0,
            "fps": (fps * 10.0).round() / 10.0,
            "frames_sent": frames,
            "candidate_pair": r.candidate_pair,
            "codec": codec.map(Codec::name),
            "target_kbps": s.rate.kbps(),
        });
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{line}");
        let _ = stdout.flush();
        drop(stdout);
        // The shared encoder follows its slowest viewer.
        if let Some(codec) = codec {
            let target = self
                .sessions
                .values()
                .filter(|x| x.branch.as_ref().is_some_and(|b| b.codec == codec))
                .map(|x| x.rate.kbps())
                .min();
            if let (Some(t), Some(enc)) = (target, self.encoders.get_mut(&codec))
                && t.abs_diff(enc.kbps) * 20 > enc.kbps
            {
                debug!(
                    "{} encoder bitrate {} → {} kbit/s",
                    codec.name(),
                    enc.kbps,
                    t
                );
                set_encoder_bitrate(&enc.encoder, &enc.factory, t);
                enc.kbps = t;
            }
        }
    }

    /// Ends every session (telling the backend) and stops the pipeline.
    pub fn stop(&mut self) {
        let ids: Vec<String> = self.sessions.keys().cloned().collect();
        for id in ids {
            self.end(&id, "agent stopping", true);
        }
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// The control thread: applies commands one at a time until `Shutdown` (Ok) or `Fatal` (Err).
pub fn run(mut media: Media, commands: Receiver<Command>) -> Result<(), String> {
    let result = loop {
        let Ok(cmd) = commands.recv() else {
            break Ok(());
        };
        if let Some(r) = media.handle(cmd) {
            break r;
        }
    };
    media.stop();
    result
}

/// Sends `StatsTick` every `interval` until the control thread is gone.
pub fn stats_timer(commands: Sender<Command>, interval: Duration) {
    let _ = std::thread::Builder::new()
        .name("stats".into())
        .spawn(move || {
            loop {
                std::thread::sleep(interval);
                if commands.send(Command::StatsTick).is_err() {
                    break;
                }
            }
        });
}
