//! `vcambridge-webrtc-backend`: the WebRTC signalling backend for vcambridge
//! device agents and browser viewers. See `--help` and README.md.

mod cli;
mod hub;
mod ice;
mod logging;
mod protocol;
mod registry;
mod server;

use clap::Parser as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// Everything after SIGINT/SIGTERM (closing connections, stopping the server) fits in this.
const SHUTDOWN_BUDGET: Duration = Duration::from_millis(800);

fn main() -> ExitCode {
    let args = cli::Args::parse();
    logging::init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            log::error!("{msg}");
            ExitCode::from(1)
        }
    }
}

fn run(args: cli::Args) -> Result<(), String> {
    let data_path = match args.data.clone() {
        Some(p) => p,
        None => registry::default_path()?,
    };
    let mut devices = registry::load(&data_path)?;
    let mut added = false;
    for id in &args.register {
        if !devices.iter().any(|d| &d.device_id == id) {
            devices.push(registry::DeviceInfo {
                device_id: id.clone(),
                device_name: id.clone(),
                device_type: "camera".into(),
            });
            added = true;
        }
    }
    if added {
        registry::save(&data_path, &devices)?;
    }
    if args.turn_secret.is_some() && args.turn_url.is_none() {
        log::warn!("a TURN secret is set but no --turn-url: no TURN server is offered");
    }
    let ice = ice::IceConfig {
        stun_url: args.stun_url.clone(),
        turn: match (&args.turn_url, &args.turn_secret) {
            (Some(url), Some(secret)) => Some(ice::TurnConfig {
                url: url.clone(),
                secret: secret.clone(),
                ttl: args.turn_ttl,
            }),
            _ => None,
        },
    };
    let hub = hub::Hub::new(ice, args.heartbeat_interval, devices);
    log::info!(
        "device registry {} devices={}",
        data_path.display(),
        hub.registrations().len()
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let result = rt.block_on(serve(
        args.listen,
        hub,
        data_path,
        Duration::from_secs(args.heartbeat_interval),
    ));
    rt.shutdown_timeout(Duration::from_millis(100));
    result
}

async fn serve(
    listen: SocketAddr,
    hub: hub::Hub,
    data_path: std::path::PathBuf,
    heartbeat: Duration,
) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        format!(
            "cannot listen on {listen}: {e}; stop the program that holds it or choose another \
             address with --listen ADDR:PORT (port 0 picks a free port)"
        )
    })?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot read the bound address of {listen}: {e}"))?;
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| format!("cannot watch SIGTERM: {e}"))?;
    let mut sigint =
        signal(SignalKind::interrupt()).map_err(|e| format!("cannot watch SIGINT: {e}"))?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let app = server::App::new(hub, data_path, heartbeat, shutdown_rx.clone());
    let mut open_conns = app.open_connections();
    let router = server::router(app);
    let mut graceful = shutdown_rx;
    let mut server = tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = graceful.wait_for(|stop| *stop).await;
        })
        .await
    });

    // Scripts and tests read this line to learn the port; a closed stdout is no reason to stop.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening on {local}").and_then(|()| out.flush());
    drop(out);
    log::info!("listening on {local}");

    let why = tokio::select! {
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
        res = &mut server => {
            return Err(match res {
                Ok(Ok(())) => "the HTTP server stopped by itself".to_owned(),
                Ok(Err(e)) => format!("the HTTP server on {local} failed: {e}"),
                Err(e) => format!("the HTTP server on {local} failed: {e}"),
            });
        }
    };
    log::info!("shutting down on {why}");
    let deadline = tokio::time::Instant::now() + SHUTDOWN_BUDGET;
    let _ = shutdown_tx.send(true);
    if tokio::time::timeout_at(deadline, open_conns.wait_for(|n| *n == 0))
        .await
        .is_err()
    {
        log::warn!("some WebSocket connections did not close in time; dropping them");
    }
    if tokio::time::timeout_at(deadline, &mut server)
        .await
        .is_err()
    {
        log::warn!("open HTTP requests did not finish in time; dropping them");
        server.abort();
    }
    log::info!("stopped");
    Ok(())
}
