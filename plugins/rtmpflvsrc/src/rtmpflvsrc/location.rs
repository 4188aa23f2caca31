// SPDX-License-Identifier: MPL-2.0

//! The `location` property and the `rtmpserver://` URI: `rtmp://ADDR[:PORT]/APP[/KEY]` split
//! into address, port, application and stream key, and put back together.

use gst::glib;

/// The RTMP port, when a location names none.
pub(super) const DEFAULT_PORT: u32 = 1935;
/// The application, when a location names none.
pub(super) const DEFAULT_APP: &str = "live";
/// The URI scheme of the element's URI handler: its own, so that it never shadows the
/// `rtmp://` client elements.
pub(super) const URI_SCHEME: &str = "rtmpserver";

/// `rtmp://ADDR[:PORT]/APP[/KEY]` (or `rtmpserver://`) split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Location {
    pub(super) address: String,
    pub(super) port: u32,
    pub(super) app: String,
    pub(super) stream_key: String,
}

impl Location {
    /// Parses an `rtmp://` location or an `rtmpserver://` URI; the error names the problem.
    pub(super) fn parse(location: &str) -> Result<Location, String> {
        let rest = location
            .strip_prefix("rtmpserver://")
            .or_else(|| location.strip_prefix("rtmp://"))
            .ok_or_else(|| {
                format!("'{location}' is not an rtmp://ADDR:PORT/APP/KEY or rtmpserver:// URI")
            })?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (address, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("unterminated IPv6 address in '{location}'"))?;
            (host.to_string(), after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (authority.to_string(), None),
            }
        };
        if address.is_empty() {
            return Err(format!("no address in '{location}'"));
        }
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => p
                .parse::<u16>()
                .map(u32::from)
                .map_err(|_| format!("invalid port '{p}' in '{location}'"))?,
        };
        let path = path.trim_end_matches('/');
        let (app, key) = path.split_once('/').unwrap_or((path, ""));
        Ok(Location {
            address,
            port,
            app: if app.is_empty() {
                DEFAULT_APP.to_string()
            } else {
                app.to_string()
            },
            stream_key: key.to_string(),
        })
    }

    /// Parses an `rtmpserver://` URI for the URI handler (`rtmp://` is refused: that scheme
    /// belongs to the client elements).
    pub(super) fn from_uri(uri: &str) -> Result<Location, glib::Error> {
        if !uri.starts_with("rtmpserver://") {
            return Err(glib::Error::new(
                gst::URIError::UnsupportedProtocol,
                &format!("Unsupported URI '{uri}': expected rtmpserver://ADDR:PORT/APP/KEY"),
            ));
        }
        Location::parse(uri).map_err(|e| glib::Error::new(gst::URIError::BadUri, &e))
    }

    /// `rtmp://ADDR:PORT/APP[/KEY]` (IPv6 addresses in brackets).
    pub(super) fn url(&self) -> String {
        self.with_scheme("rtmp")
    }

    /// `rtmpserver://ADDR:PORT/APP[/KEY]`.
    pub(super) fn uri(&self) -> String {
        self.with_scheme(URI_SCHEME)
    }

    fn with_scheme(&self, scheme: &str) -> String {
        let host = if self.address.contains(':') {
            format!("[{}]", self.address)
        } else {
            self.address.clone()
        };
        if self.stream_key.is_empty() {
            format!("{scheme}://{host}:{}/{}", self.port, self.app)
        } else {
            format!(
                "{scheme}://{host}:{}/{}/{}",
                self.port, self.app, self.stream_key
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gst::prelude::*;

    #[test]
    fn locations() {
        assert_eq!(
            Location::parse("rtmp://0.0.0.0:1936/live/key").unwrap(),
            Location {
                address: "0.0.0.0".into(),
                port: 1936,
                app: "live".into(),
                stream_key: "key".into()
            }
        );
        assert_eq!(
            Location::parse("rtmpserver://[::1]/app").unwrap(),
            Location {
                address: "::1".into(),
                port: 1935,
                app: "app".into(),
                stream_key: "".into()
            }
        );
        assert_eq!(
            Location::parse("rtmp://host:1/a/b/c").unwrap().stream_key,
            "b/c"
        );
        assert!(Location::parse("http://x/live").is_err());
        assert!(Location::parse("rtmp://x:99999/live").is_err());
    }

    #[test]
    fn urls_round_trip() {
        for url in [
            "rtmp://127.0.0.1:1935/live",
            "rtmp://[::1]:1940/show/secret",
        ] {
            let l = Location::parse(url).unwrap();
            assert_eq!(l.url(), url);
            assert_eq!(Location::from_uri(&l.uri()).unwrap(), l);
        }
        assert!(Location::from_uri("rtmp://127.0.0.1/live").is_err());
    }

    /// The element's `location` property and URI handler.
    #[test]
    fn location_and_uri() {
        super::super::init_for_tests();
        let e = gst::ElementFactory::make("rtmpflvsrc")
            .property("port", 1935u32)
            .build()
            .expect("rtmpflvsrc");
        e.set_property("location", "rtmp://0.0.0.0:1940/show/secret");
        assert_eq!(e.property::<String>("address"), "0.0.0.0");
        assert_eq!(e.property::<u32>("port"), 1940);
        assert_eq!(e.property::<String>("app"), "show");
        assert_eq!(e.property::<String>("stream-key"), "secret");
        let handler = e.dynamic_cast_ref::<gst::URIHandler>().unwrap();
        assert_eq!(
            handler.uri().as_deref(),
            Some("rtmpserver://0.0.0.0:1940/show/secret")
        );
        handler.set_uri("rtmpserver://127.0.0.1:1941/live").unwrap();
        assert_eq!(e.property::<u32>("port"), 1941);
        assert_eq!(e.property::<String>("stream-key"), "");
        assert!(handler.set_uri("rtmp://127.0.0.1/live").is_err());
        // Never registered for rtmp://, so the client elements are not shadowed.
        assert_eq!(gst::URIHandler::protocols(handler), vec!["rtmpserver"]);
        let made =
            gst::Element::make_from_uri(gst::URIType::Src, "rtmpserver://127.0.0.1:0/live/k", None)
                .expect("made from rtmpserver:// URI");
        assert_eq!(made.factory().unwrap().name(), "rtmpflvsrc");
        let stats = e.property::<gst::Structure>("stats");
        assert_eq!(stats.name(), "rtmpflvsrc-stats");
        assert_eq!(stats.get::<u64>("connections").unwrap(), 0);
        assert_eq!(stats.get::<String>("publisher").unwrap(), "");
    }
}
