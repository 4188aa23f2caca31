// SPDX-License-Identifier: MPL-2.0
//! Raw bytes from the first byte on (handshake included) through the per-connection session.
#![no_main]

use gstrtmpflvsrc::session::{Session, SessionConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    let mut session = Session::new(SessionConfig {
        app: "live".into(),
        stream_key: if split & 1 == 0 {
            String::new()
        } else {
            "key".into()
        },
        limits: Default::default(),
    });
    let mut gate = |_: &str, _: &str| Ok(());
    // Feed in pieces whose size the first byte picks, as TCP reads would split them.
    for piece in data.chunks(usize::from(split).max(1) * 37) {
        if session.feed(piece, &mut gate).is_err() || session.is_closed() {
            break;
        }
    }
});
