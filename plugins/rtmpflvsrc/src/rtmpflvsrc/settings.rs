// SPDX-License-Identifier: MPL-2.0

//! The element's properties: their specs and defaults, and the settings they hold.

use gst::glib;
use gst::prelude::*;

use super::location::{DEFAULT_APP, DEFAULT_PORT, Location};

pub(super) const DEFAULT_ADDRESS: &str = "127.0.0.1";
pub(super) const DEFAULT_STREAM_KEY: &str = "";
pub(super) const DEFAULT_EOS_ON_DISCONNECT: bool = false;
pub(super) const DEFAULT_HANDSHAKE_TIMEOUT_MS: u32 = 5000;
pub(super) const DEFAULT_IDLE_TIMEOUT_MS: u32 = 10000;
pub(super) const DEFAULT_LATENCY_MS: u32 = 100;

#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub(super) address: String,
    pub(super) port: u32,
    pub(super) app: String,
    pub(super) stream_key: String,
    pub(super) eos_on_disconnect: bool,
    pub(super) handshake_timeout_ms: u32,
    pub(super) idle_timeout_ms: u32,
    pub(super) latency_ms: u32,
    /// Why the last `location` set could not be used: NULL→READY fails with it (a property
    /// setter cannot fail, and listening on the defaults instead would hide the mistake).
    pub(super) location_error: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            address: DEFAULT_ADDRESS.to_string(),
            port: DEFAULT_PORT,
            app: DEFAULT_APP.to_string(),
            stream_key: DEFAULT_STREAM_KEY.to_string(),
            eos_on_disconnect: DEFAULT_EOS_ON_DISCONNECT,
            handshake_timeout_ms: DEFAULT_HANDSHAKE_TIMEOUT_MS,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_MS,
            latency_ms: DEFAULT_LATENCY_MS,
            location_error: None,
        }
    }
}

impl Settings {
    pub(super) fn location(&self) -> Location {
        Location {
            address: self.address.clone(),
            port: self.port,
            app: self.app.clone(),
            stream_key: self.stream_key.clone(),
        }
    }

    pub(super) fn set_location(&mut self, l: Location) {
        self.location_error = None;
        self.address = l.address;
        self.port = l.port;
        self.app = l.app;
        self.stream_key = l.stream_key;
    }

    /// Sets property `name` (one of the settings); an unusable `location` is kept as
    /// `location_error` and returned, so that NULL→READY fails naming it.
    pub(super) fn set(&mut self, name: &str, value: &glib::Value) -> Result<(), String> {
        if matches!(name, "address" | "port" | "app" | "stream-key" | "location") {
            self.location_error = None;
        }
        match name {
            "address" => {
                self.address = value
                    .get::<Option<String>>()
                    .expect("type checked upstream")
                    .unwrap_or_else(|| DEFAULT_ADDRESS.to_string());
            }
            "port" => self.port = value.get().expect("type checked upstream"),
            "location" => {
                let location: Option<String> = value.get().expect("type checked upstream");
                if let Some(location) = location {
                    match Location::parse(&location) {
                        Ok(l) => self.set_location(l),
                        Err(e) => {
                            self.location_error = Some(e.clone());
                            return Err(format!("Invalid location: {e}"));
                        }
                    }
                }
            }
            "app" => {
                self.app = value
                    .get::<Option<String>>()
                    .expect("type checked upstream")
                    .unwrap_or_default();
            }
            "stream-key" => {
                self.stream_key = value
                    .get::<Option<String>>()
                    .expect("type checked upstream")
                    .unwrap_or_default();
            }
            "eos-on-disconnect" => {
                self.eos_on_disconnect = value.get().expect("type checked upstream")
            }
            "handshake-timeout" => {
                self.handshake_timeout_ms = value.get().expect("type checked upstream")
            }
            "idle-timeout" => self.idle_timeout_ms = value.get().expect("type checked upstream"),
            "latency" => self.latency_ms = value.get().expect("type checked upstream"),
            other => unimplemented!("property {other}"),
        }
        Ok(())
    }

    /// The value of property `name` (one of the settings).
    pub(super) fn get(&self, name: &str) -> glib::Value {
        match name {
            "address" => self.address.to_value(),
            "port" => self.port.to_value(),
            "location" => self.location().url().to_value(),
            "app" => self.app.to_value(),
            "stream-key" => self.stream_key.to_value(),
            "eos-on-disconnect" => self.eos_on_disconnect.to_value(),
            "handshake-timeout" => self.handshake_timeout_ms.to_value(),
            "idle-timeout" => self.idle_timeout_ms.to_value(),
            "latency" => self.latency_ms.to_value(),
            other => unimplemented!("property {other}"),
        }
    }
}

/// The element's properties: the settings, plus the read-only `bound-port` and `stats`.
pub(super) fn property_specs() -> Vec<glib::ParamSpec> {
    vec![
        glib::ParamSpecString::builder("address")
            .nick("Address")
            .blurb("Address to listen on (0.0.0.0 / :: for all interfaces)")
            .default_value(Some(DEFAULT_ADDRESS))
            .mutable_ready()
            .build(),
        glib::ParamSpecUInt::builder("port")
            .nick("Port")
            .blurb("TCP port to listen on (0 = pick a free port, see bound-port)")
            .maximum(65535)
            .default_value(DEFAULT_PORT)
            .mutable_ready()
            .build(),
        glib::ParamSpecUInt::builder("bound-port")
            .nick("Bound port")
            .blurb("The port actually listened on (valid from READY on, else 0)")
            .maximum(65535)
            .read_only()
            .build(),
        glib::ParamSpecString::builder("location")
            .nick("Location")
            .blurb("rtmp://ADDR:PORT/APP[/KEY]: sets address, port, app and stream-key")
            .mutable_ready()
            .build(),
        glib::ParamSpecString::builder("app")
            .nick("Application")
            .blurb("RTMP application name publishers must connect to")
            .default_value(Some(DEFAULT_APP))
            .mutable_ready()
            .build(),
        glib::ParamSpecString::builder("stream-key")
            .nick("Stream key")
            .blurb("Stream key publishers must use (empty = any key)")
            .default_value(Some(DEFAULT_STREAM_KEY))
            .mutable_ready()
            .build(),
        glib::ParamSpecBoolean::builder("eos-on-disconnect")
            .nick("EOS on disconnect")
            .blurb("Send EOS when the publisher leaves instead of waiting for the next one")
            .default_value(DEFAULT_EOS_ON_DISCONNECT)
            .mutable_ready()
            .build(),
        glib::ParamSpecUInt::builder("handshake-timeout")
            .nick("Handshake timeout")
            .blurb("Milliseconds a new connection has, from connecting, to start publishing (handshake, connect, publish); trickled bytes do not extend it")
            .minimum(1)
            .default_value(DEFAULT_HANDSHAKE_TIMEOUT_MS)
            .mutable_ready()
            .build(),
        glib::ParamSpecUInt::builder("idle-timeout")
            .nick("Idle timeout")
            .blurb("A publisher that delivers less than 1 KiB of audio/video within this many milliseconds is dropped")
            .minimum(1)
            .default_value(DEFAULT_IDLE_TIMEOUT_MS)
            .mutable_ready()
            .build(),
        glib::ParamSpecUInt::builder("latency")
            .nick("Latency")
            .blurb("Minimum latency reported to the pipeline, in milliseconds")
            .default_value(DEFAULT_LATENCY_MS)
            .mutable_ready()
            .build(),
        glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
            .nick("Statistics")
            .blurb("rtmpflvsrc-stats: publisher, app, stream-key, video-codec, audio-codec, bytes, video-frames, audio-frames, bitrate, connections, rejected")
            .read_only()
            .build(),
    ]
}
