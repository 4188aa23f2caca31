//! vcambridge-webrtc-agent: serves any GStreamer video source to browsers over WebRTC, speaking
//! the device protocol of a camera backend (see the README next to this crate).

mod control;
mod encoders;
mod ice;
mod media;
mod offer;
mod protocol;
mod signalling;
mod stats;

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use log::{error, info};

use media::{Command, MediaConfig};
use offer::Codec;
use signalling::SignallingConfig;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CodecArg {
    /// H.264 or VP8, whichever comes first in the viewer's offer.
    Auto,
    H264,
    Vp8,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum IcePolicy {
    All,
    /// Only relayed (TURN) candidates.
    Relay,
}

/// A WebRTC camera agent: keeps a WebSocket to a camera backend and streams the source to each
/// viewer the backend sends, peer to peer (or through TURN).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The backend's device WebSocket.
    #[arg(
        long,
        env = "BACKEND_URL",
        default_value = "ws://localhost:8000/ws/device"
    )]
    backend: String,
    /// This device's id (default: generated once and kept in
    /// $XDG_CONFIG_HOME/vcambridge/device-id).
    #[arg(long, env = "DEVICE_ID")]
    device_id: Option<String>,
    /// Name sent with the registration.
    #[arg(long, default_value = "vcambridge camera")]
    device_name: String,
    /// Type sent with the registration.
    #[arg(long, default_value = "camera")]
    device_type: String,
    /// Do not POST /api/devices/register before connecting.
    #[arg(long)]
    no_register: bool,
    /// The video source, as a gst-launch description with one unlinked video pad
    /// (e.g. 'v4l2src device=/dev/video0', 'rtmpflvsrc port=1935 name=s s.video ! decodebin',
    /// 'shmringsrc shm-name=/vcam0', 'pipewiresrc path=42').
    #[arg(long, default_value = "videotestsrc is-live=true pattern=ball")]
    source: String,
    /// Codec sent to viewers.
    #[arg(long, value_enum, default_value_t = CodecArg::Auto)]
    codec: CodecArg,
    /// Encoder element to use instead of the best one found (hardware first, then x264enc/vp8enc).
    #[arg(long)]
    encoder: Option<String>,
    /// Width sent to viewers (the source is scaled).
    #[arg(long, default_value_t = 1280)]
    width: u32,
    /// Height sent to viewers.
    #[arg(long, default_value_t = 720)]
    height: u32,
    /// Frame rate sent to viewers (frames are dropped or repeated to reach it).
    #[arg(long, default_value_t = 30)]
    fps: u32,
    /// Start bitrate, kbit/s; it follows the viewers' loss reports between the min and max.
    #[arg(long, default_value_t = 2000)]
    bitrate: u32,
    /// Lowest bitrate, kbit/s.
    #[arg(long, default_value_t = 150)]
    min_bitrate: u32,
    /// Highest bitrate, kbit/s.
    #[arg(long, default_value_t = 6000)]
    max_bitrate: u32,
    /// ICE candidates to use: all, or relay (TURN) only.
    #[arg(long, value_enum, default_value_t = IcePolicy::All)]
    ice_transport_policy: IcePolicy,
    /// Seconds between heartbeats.
    #[arg(long, default_value_t = 10.0)]
    heartbeat_interval: f64,
    /// First reconnect delay in seconds (then doubling, with up to 10 % jitter).
    #[arg(long, default_value_t = 1.0)]
    reconnect_base: f64,
    /// Largest reconnect delay in seconds.
    #[arg(long, default_value_t = 60.0)]
    reconnect_max: f64,
    /// Seconds between the per-session stats lines on stdout (JSON).
    #[arg(long, default_value_t = 5.0)]
    stats_interval: f64,
    /// Viewers served at once; more watch requests are refused with watch_end.
    #[arg(long, default_value_t = 8)]
    max_sessions: usize,
}

fn seconds(name: &str, v: f64) -> Result<Duration, String> {
    if v.is_finite() && v > 0.0 && v < 1e6 {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(format!(
            "--{name} {v}: expected a positive number of seconds"
        ))
    }
}

/// The remembered device id, created on first use.
fn default_device_id() -> Result<String, String> {
    let dir = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .ok_or("neither XDG_CONFIG_HOME nor HOME is set: give --device-id")?
        .join("vcambridge");
    let path = dir.join("device-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim();
        if !id.is_empty() {
            return Ok(id.to_owned());
        }
    }
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    let id = format!(
        "cam-{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    );
    std::fs::create_dir_all(&dir)
        .and_then(|_| std::fs::write(&path, format!("{id}\n")))
        .map_err(|e| format!("{}: {e} (give --device-id instead)", path.display()))?;
    Ok(id)
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let args = Args::parse();
    let code = match run(args) {
        Ok(()) => 0,
        Err(e) => {
            error!("{e}");
            1
        }
    };
    log::debug!("exiting with {code}");
    std::process::exit(code);
}

fn run(args: Args) -> Result<(), String> {
    gst::init().map_err(|e| format!("GStreamer: {e}"))?;
    signalling::backend_address(&args.backend)?;
    let device_id = match args.device_id.clone() {
        Some(id) if !id.trim().is_empty() => id,
        _ => default_device_id()?,
    };
    let codecs = match args.codec {
        CodecArg::Auto => vec![Codec::H264, Codec::Vp8],
        CodecArg::H264 => vec![Codec::H264],
        CodecArg::Vp8 => vec![Codec::Vp8],
    };
    if args.width == 0 || args.height == 0 || args.fps == 0 || args.fps > 240 {
        return Err("--width, --height and --fps must be positive (fps at most 240)".into());
    }
    let media_cfg = MediaConfig {
        source: args.source.clone(),
        width: args.width,
        height: args.height,
        fps: args.fps,
        codecs,
        encoder: args.encoder.clone(),
        start_kbps: args.bitrate,
        min_kbps: args.min_bitrate.min(args.bitrate),
        max_kbps: args.max_bitrate.max(args.bitrate),
        relay_only: matches!(args.ice_transport_policy, IcePolicy::Relay),
        max_sessions: args.max_sessions.max(1),
    };
    let sig_cfg = SignallingConfig {
        backend: args.backend.clone(),
        device_id: device_id.clone(),
        device_name: args.device_name.clone(),
        device_type: args.device_type.clone(),
        register: !args.no_register,
        heartbeat: seconds("heartbeat-interval", args.heartbeat_interval)?,
        reconnect_base: seconds("reconnect-base", args.reconnect_base)?,
        reconnect_max: seconds("reconnect-max", args.reconnect_max)?,
    };
    let stats_interval = seconds("stats-interval", args.stats_interval)?;

    let (out_tx, out_rx) = tokio::sync::mpsc::unbounded_channel();
    let (cmd_tx, cmd_rx) = mpsc::channel();
    let media = media::Media::start(media_cfg, out_tx, cmd_tx.clone())?;
    info!(
        "device {device_id}: source '{}' at {}x{}@{}, backend {}",
        args.source, args.width, args.height, args.fps, args.backend
    );
    media::stats_timer(cmd_tx.clone(), stats_interval);
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            let _ = done_tx.send(media::run(media, cmd_rx));
        })
        .map_err(|e| format!("spawning the control thread: {e}"))?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let signalling = rt.spawn(signalling::run(sig_cfg, out_rx, cmd_tx.clone(), stop_rx));
    // Wait for SIGINT/SIGTERM or a fatal error from the control thread.
    let (fatal_tx, mut fatal_rx) = tokio::sync::mpsc::unbounded_channel::<Result<(), String>>();
    std::thread::spawn(move || {
        if let Ok(r) = done_rx.recv() {
            let _ = fatal_tx.send(r);
        }
    });
    let result = rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
        let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
        let early = tokio::select! {
            _ = int.recv() => None,
            _ = term.recv() => None,
            r = fatal_rx.recv() => Some(r.unwrap_or(Ok(()))),
        };
        let result = match early {
            Some(r) => r,
            None => {
                info!("stopping: ending every session");
                let _ = cmd_tx.send(Command::Shutdown);
                match tokio::time::timeout(Duration::from_millis(1500), fatal_rx.recv()).await {
                    Ok(r) => r.unwrap_or(Ok(())),
                    Err(_) => Err("the media pipeline did not stop within 1.5 s".into()),
                }
            }
        };
        log::debug!("media stopped");
        let _ = stop_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_millis(400), signalling).await;
        result
    });
    rt.shutdown_timeout(Duration::from_millis(100));
    log::debug!("stopped");
    result
}
