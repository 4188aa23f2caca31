//! A WebRTC viewer on GStreamer's webrtcbin, independent of the browser: watches a device through
//! the backend's viewer WebSocket and decodes what arrives. JSON lines on stdout (`{"frames": ..}`
//! once per second, then `{"result": {..}}`); exit 0 when `--frames` frames were decoded within
//! `--timeout` seconds (and `--hold` seconds more passed).
//!
//! vcb-webrtc-viewer --backend ws://127.0.0.1:8000/ws/viewer --device cam1 [--frames 90]
//!     [--timeout 30] [--hold 0] [--codec vp8|h264] [--relay]

use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use gst::prelude::*;
use serde_json::{Value, json};
use tungstenite::{Message, WebSocket, stream::MaybeTlsStream};

struct Args {
    backend: String,
    device: String,
    frames: u64,
    timeout: f64,
    hold: f64,
    codec: String,
    relay: bool,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        backend: String::new(),
        device: String::new(),
        frames: 90,
        timeout: 30.0,
        hold: 0.0,
        codec: "vp8".into(),
        relay: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().ok_or(format!("{k} needs a value"));
        match k.as_str() {
            "--backend" => a.backend = v()?,
            "--device" => a.device = v()?,
            "--frames" => a.frames = v()?.parse().map_err(|e| format!("--frames: {e}"))?,
            "--timeout" => a.timeout = v()?.parse().map_err(|e| format!("--timeout: {e}"))?,
            "--hold" => a.hold = v()?.parse().map_err(|e| format!("--hold: {e}"))?,
            "--codec" => a.codec = v()?,
            "--relay" => a.relay = true,
            _ => {
                return Err(format!(
                    "unknown argument {k} (see the source's doc comment)"
                ));
            }
        }
    }
    if a.backend.is_empty() || a.device.is_empty() {
        return Err("--backend and --device are required".into());
    }
    Ok(a)
}

fn msg(kind: &str, payload: Value) -> String {
    json!({"type": kind, "payload": payload}).to_string()
}

fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

struct Viewer {
    pipeline: gst::Pipeline,
    webrtc: gst::Element,
    frames: Arc<AtomicU64>,
    color: Arc<Mutex<Option<[u8; 3]>>>,
}

fn start(a: &Args, ice: &Value, session: &str, out: mpsc::Sender<String>) -> Viewer {
    let pipeline = gst::Pipeline::new();
    let webrtc = gst::ElementFactory::make("webrtcbin")
        .build()
        .expect("webrtcbin");
    webrtc.set_property_from_str("bundle-policy", "max-bundle");
    if a.relay {
        webrtc.set_property_from_str("ice-transport-policy", "relay");
    }
    for s in ice.as_array().into_iter().flatten() {
        let urls: Vec<String> = match &s["urls"] {
            Value::String(u) => vec![u.clone()],
            Value::Array(v) => v
                .iter()
                .filter_map(|u| u.as_str().map(str::to_owned))
                .collect(),
            _ => vec![],
        };
        for u in urls {
            let (scheme, rest) = u.split_once(':').unwrap_or(("", ""));
            let rest = rest.split('?').next().unwrap_or("");
            match scheme {
                "stun" => webrtc.set_property("stun-server", format!("stun://{rest}")),
                "turn" => {
                    let (Some(user), Some(cred)) =
                        (s["username"].as_str(), s["credential"].as_str())
                    else {
                        continue;
                    };
                    let url = format!("turn://{}:{}@{rest}", percent(user), percent(cred));
                    webrtc.emit_by_name::<bool>("add-turn-server", &[&url]);
                }
                _ => {}
            }
        }
    }
    pipeline.add(&webrtc).expect("add");
    let frames = Arc::new(AtomicU64::new(0));
    let color = Arc::new(Mutex::new(None));
    {
        let out = out.clone();
        let session = session.to_owned();
        webrtc.connect("on-ice-candidate", false, move |v| {
            let mline = v[1].get::<u32>().ok()?;
            let c = v[2].get::<String>().ok()?;
            let _ = out.send(msg(
                "ice_candidate",
                json!({"session_id": session, "candidate": {"candidate": c, "sdpMid": null, "sdpMLineIndex": mline}}),
            ));
            None
        });
    }
    {
        let pipeline = pipeline.downgrade();
        let frames = frames.clone();
        let color = color.clone();
        let decoder = if a.codec == "h264" {
            "rtph264depay ! avdec_h264"
        } else {
            "rtpvp8depay ! vp8dec"
        };
        webrtc.connect_pad_added(move |_, pad| {
            if pad.direction() != gst::PadDirection::Src {
                return;
            }
            let Some(pipeline) = pipeline.upgrade() else { return };
            let bin = gst::parse::bin_from_description(
                &format!("queue ! {decoder} ! videoconvert ! video/x-raw,format=RGB ! appsink name=sink sync=false"),
                true,
            )
            .expect("decode bin");
            let sink = bin
                .by_name("sink")
                .expect("sink")
                .downcast::<gst_app::AppSink>()
                .expect("appsink");
            let frames = frames.clone();
            let color = color.clone();
            sink.set_callbacks(
                gst_app::AppSinkCallbacks::builder()
                    .new_sample(move |s| {
                        let sample = s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                        frames.fetch_add(1, Ordering::Relaxed);
                        if let (Some(buf), Some(caps)) = (sample.buffer(), sample.caps())
                            && let Ok(info) = gst_video::VideoInfo::from_caps(caps)
                            && let Ok(map) = buf.map_readable()
                        {
                            let stride = info.stride()[0] as usize;
                            let off = (info.height() as usize / 2) * stride + (info.width() as usize / 2) * 3;
                            if let Some(px) = map.get(off..off + 3)
                                && let Ok(mut c) = color.lock()
                            {
                                *c = Some([px[0], px[1], px[2]]);
                            }
                        }
                        Ok(gst::FlowSuccess::Ok)
                    })
                    .build(),
            );
            let _ = pipeline.add(&bin);
            let _ = bin.sync_state_with_parent();
            if let Err(e) = pad.link(&bin.static_pad("sink").expect("ghost pad")) {
                eprintln!("linking {} to the decoder failed: {e:?}", pad.name());
            }
        });
    }
    let caps = match a.codec.as_str() {
        "h264" => {
            "application/x-rtp,media=video,encoding-name=H264,payload=102,clock-rate=90000,packetization-mode=(string)1,profile-level-id=(string)42e01f"
        }
        _ => "application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000",
    };
    let caps = gst::Caps::from_str(caps).expect("caps");
    let _ = webrtc.emit_by_name::<gst_webrtc::WebRTCRTPTransceiver>(
        "add-transceiver",
        &[&gst_webrtc::WebRTCRTPTransceiverDirection::Recvonly, &caps],
    );
    pipeline.set_state(gst::State::Playing).expect("PLAYING");
    // Offer once the pipeline runs.
    let w = webrtc.downgrade();
    let session = session.to_owned();
    let promise = gst::Promise::with_change_func(move |reply| {
        let Some(w) = w.upgrade() else { return };
        let Some(offer) = reply
            .ok()
            .flatten()
            .and_then(|r| r.get::<gst_webrtc::WebRTCSessionDescription>("offer").ok())
        else {
            eprintln!("webrtcbin created no offer");
            return;
        };
        w.emit_by_name::<()>("set-local-description", &[&offer, &None::<gst::Promise>]);
        let sdp = offer.sdp().as_text().unwrap_or_default();
        let _ = out.send(msg(
            "signal_offer",
            json!({"session_id": session, "sdp": {"type": "offer", "sdp": sdp}}),
        ));
    });
    webrtc.emit_by_name::<()>("create-offer", &[&None::<gst::Structure>, &promise]);
    Viewer {
        pipeline,
        webrtc,
        frames,
        color,
    }
}

use std::str::FromStr;

fn set_nonblocking(ws: &WebSocket<MaybeTlsStream<TcpStream>>) {
    if let MaybeTlsStream::Plain(s) = ws.get_ref() {
        let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
    }
}

fn main() {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("vcb-webrtc-viewer: {e}");
            std::process::exit(2);
        }
    };
    gst::init().expect("gst init");
    let t0 = Instant::now();
    let result = run(&a, t0);
    println!("{}", json!({ "result": result }));
    std::process::exit(if result["ok"] == true { 0 } else { 1 });
}

fn run(a: &Args, t0: Instant) -> Value {
    let (mut ws, _) = match tungstenite::connect(&a.backend) {
        Ok(x) => x,
        Err(e) => return json!({"ok": false, "error": format!("{}: {e}", a.backend)}),
    };
    set_nonblocking(&ws);
    let (tx, rx) = mpsc::channel::<String>();
    let _ = ws.send(Message::text(msg(
        "watch_request",
        json!({"device_id": a.device}),
    )));
    let deadline = t0 + Duration::from_secs_f64(a.timeout);
    let mut viewer: Option<Viewer> = None;
    let mut session = String::new();
    let mut pending: Option<Vec<(u32, String)>> = Some(Vec::new());
    let mut first_frame: Option<f64> = None;
    let mut reached: Option<Instant> = None;
    let mut last_print = Instant::now();
    let mut error: Option<String> = None;
    loop {
        let now = Instant::now();
        let frames = viewer
            .as_ref()
            .map_or(0, |v| v.frames.load(Ordering::Relaxed));
        if frames > 0 && first_frame.is_none() {
            first_frame = Some(t0.elapsed().as_secs_f64());
        }
        if frames >= a.frames && reached.is_none() {
            reached = Some(now);
        }
        if let Some(r) = reached
            && now.duration_since(r).as_secs_f64() >= a.hold
        {
            break;
        }
        if reached.is_none() && now > deadline {
            error = Some(format!("only {frames} frames within {} s", a.timeout));
            break;
        }
        if now.duration_since(last_print) >= Duration::from_secs(1) {
            last_print = now;
            println!(
                "{}",
                json!({"t": t0.elapsed().as_secs_f64(), "frames": frames})
            );
        }
        while let Ok(m) = rx.try_recv() {
            let _ = ws.send(Message::text(m));
        }
        let m = match ws.read() {
            Ok(Message::Text(t)) => t.to_string(),
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => {
                // The backend may go away (a restart); the media keeps flowing without it.
                if reached.is_none() && viewer.is_none() {
                    error = Some(format!("viewer WebSocket: {e}"));
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let Ok(v) = serde_json::from_str::<Value>(&m) else {
            continue;
        };
        let p = &v["payload"];
        if std::env::var_os("VCB_VIEWER_TRACE").is_some() {
            eprintln!("viewer < {}", v["type"]);
        }
        match v["type"].as_str().unwrap_or("") {
            "watch_accepted" => {
                session = p["session_id"].as_str().unwrap_or("").to_owned();
                viewer = Some(start(a, &p["ice_servers"], &session, tx.clone()));
            }
            "signal_answer" => {
                let Some(vw) = &viewer else { continue };
                let sdp = p["sdp"]["sdp"].as_str().unwrap_or("");
                match gst_sdp::SDPMessage::parse_buffer(sdp.as_bytes()) {
                    Ok(m) => {
                        let d = gst_webrtc::WebRTCSessionDescription::new(
                            gst_webrtc::WebRTCSDPType::Answer,
                            m,
                        );
                        vw.webrtc.emit_by_name::<()>(
                            "set-remote-description",
                            &[&d, &None::<gst::Promise>],
                        );
                        for (i, c) in pending.take().unwrap_or_default() {
                            vw.webrtc.emit_by_name::<()>("add-ice-candidate", &[&i, &c]);
                        }
                    }
                    Err(_) => {
                        error = Some("the answer does not parse".into());
                        break;
                    }
                }
            }
            "ice_candidate" => {
                let c = p["candidate"]["candidate"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned();
                let i = p["candidate"]["sdpMLineIndex"].as_u64().unwrap_or(0) as u32;
                if c.is_empty() {
                    continue;
                }
                match (&mut pending, &viewer) {
                    (Some(list), _) => list.push((i, c)),
                    (None, Some(vw)) => {
                        vw.webrtc.emit_by_name::<()>("add-ice-candidate", &[&i, &c])
                    }
                    _ => {}
                }
            }
            "error" => {
                error = Some(format!("backend error: {p}"));
                break;
            }
            "watch_end" => {
                error = Some("the device ended the session".into());
                break;
            }
            _ => {}
        }
    }
    let frames = viewer
        .as_ref()
        .map_or(0, |v| v.frames.load(Ordering::Relaxed));
    let color = viewer.as_ref().and_then(|v| *v.color.lock().expect("lock"));
    if !session.is_empty() {
        let _ = ws.send(Message::text(msg(
            "watch_end",
            json!({"session_id": session}),
        )));
        let _ = ws.flush();
    }
    if let Some(v) = viewer {
        let _ = v.pipeline.set_state(gst::State::Null);
    }
    json!({"ok": error.is_none(), "error": error, "frames": frames, "color": color,
           "first_frame_s": first_frame, "session_id": session})
}
