// SPDX-License-Identifier: MPL-2.0
//! Writes seed inputs for the fuzz targets into corpus/<target>/ (valid publisher streams).

use gstrtmpflvsrc::session::SessionConfig;
use gstrtmpflvsrc::session::testing::{
    Publisher, avc_frame, avc_sequence_header, sample_publish_stream,
};

fn main() -> std::io::Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    std::fs::create_dir_all(dir.join("session"))?;
    std::fs::create_dir_all(dir.join("session_published"))?;
    std::fs::create_dir_all(dir.join("flv"))?;

    // session: split byte + a whole publisher stream.
    let mut seed = vec![3u8];
    seed.extend(sample_publish_stream(8));
    std::fs::write(dir.join("session/publish"), seed)?;

    // session_published: what a publisher sends after publish was accepted.
    let config = SessionConfig {
        app: "live".into(),
        ..Default::default()
    };
    let (publisher, _) = Publisher::connect(config, "live", "key");
    let mut p = publisher.expect("accepted");
    let mut media = p.video(avc_sequence_header(), 0);
    media.extend(p.audio(bytes::Bytes::from_static(&[0xaf, 0, 0x12, 0x10]), 0));
    for i in 0..6u32 {
        media.extend(p.video(avc_frame(i == 0, 66, 100 + i as usize * 500), i * 33));
        media.extend(p.audio(bytes::Bytes::from_static(&[0xaf, 1, 0x21, 0x10]), i * 33));
    }
    std::fs::write(dir.join("session_published/media"), media)?;

    // flv: a few tag bodies.
    std::fs::write(dir.join("flv/avc"), avc_sequence_header())?;
    let mut hevc = vec![0x90u8 | 1];
    hevc.extend_from_slice(b"hvc1\x00\x00\x21\x01\x02");
    std::fs::write(dir.join("flv/hevc"), hevc)?;
    let mut opus = vec![0x90u8];
    opus.extend_from_slice(b"OpusOpusHead\x01\x02\x38\x01\x80\xbb\x00\x00\x00\x00\x00");
    std::fs::write(dir.join("flv/opus"), opus)?;
    Ok(())
}
