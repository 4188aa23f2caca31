// SPDX-License-Identifier: MPL-2.0
//! Chunk-stream bytes fed to a session that already completed handshake, connect and publish,
//! so the fuzzer works on the RTMP chunk / message / FLV layers directly.
//!
//! The publisher's connect + publish is recorded once and replayed into a server session that
//! starts after the handshake (the `session` target covers the handshake), so each run spends
//! its time on the input.
#![no_main]

use std::sync::LazyLock;

use gstrtmpflvsrc::session::SessionConfig;
use gstrtmpflvsrc::session::testing::{HANDSHAKE_LEN, Publisher, session_after_handshake};
use libfuzzer_sys::fuzz_target;

fn config() -> SessionConfig {
    SessionConfig {
        app: "live".into(),
        ..Default::default()
    }
}

/// What a publisher sends after the handshake up to its accepted publish.
static PREAMBLE: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let (publisher, _) = Publisher::connect(config(), "live", "key");
    let sent = publisher.expect("the built-in publisher is accepted").sent;
    sent[HANDSHAKE_LEN..].to_vec()
});

fuzz_target!(|data: &[u8]| {
    let mut session = session_after_handshake(config());
    let mut gate = |_: &str, _: &str| Ok(());
    assert!(session.feed(&PREAMBLE, &mut gate).is_ok());
    assert!(session.is_publishing(), "the replayed publisher is accepted");
    for piece in data.chunks(4096) {
        if session.feed(piece, &mut gate).is_err() || session.is_closed() {
            break;
        }
    }
});
