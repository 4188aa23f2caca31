// SPDX-License-Identifier: MPL-2.0
//! Chunk-stream bytes fed to a session that already completed handshake, connect and publish,
//! so the fuzzer works on the RTMP chunk / message / FLV layers directly.
#![no_main]

use gstrtmpflvsrc::session::SessionConfig;
use gstrtmpflvsrc::session::testing::Publisher;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let config = SessionConfig {
        app: "live".into(),
        ..Default::default()
    };
    let (publisher, mut session) = Publisher::connect(config, "live", "key");
    assert!(publisher.is_some(), "the built-in publisher is accepted");
    let mut gate = |_: &str, _: &str| Ok(());
    for piece in data.chunks(4096) {
        if session.feed(piece, &mut gate).is_err() || session.is_closed() {
            break;
        }
    }
});
