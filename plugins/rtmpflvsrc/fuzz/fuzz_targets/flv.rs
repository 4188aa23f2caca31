// SPDX-License-Identifier: MPL-2.0
//! FLV / Enhanced RTMP tag bodies and the codec configuration parsers.
#![no_main]

use bytes::Bytes;
use gstrtmpflvsrc::flv;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let bytes = Bytes::copy_from_slice(data);
    let _ = flv::parse_video(&bytes);
    let _ = flv::parse_audio(&bytes);
    let _ = flv::parse_aac_config(data);
    let _ = flv::parse_opus_head(data);
});
