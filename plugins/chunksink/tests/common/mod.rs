// SPDX-License-Identifier: MPL-2.0
//! Shared pieces of the chunksink tests: running a pipeline to its end with a bounded wait,
//! collecting `chunk-full` messages and a reference copy of what the sink received, and reading
//! the chunk files back through the strict WAV parser.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gst::prelude::*;
use gstchunksink::wav::{ParsedWav, parse};

/// GStreamer with chunksink registered from this crate (not from a possibly stale .so).
pub fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        gst::init().expect("GStreamer initialisation");
        if gst::ElementFactory::find("chunksink").is_none() {
            gstchunksink::plugin_register_static().expect("register chunksink");
        }
    });
}

/// What a pipeline run produced.
pub struct Run {
    /// `chunk-full` message structures, in order.
    pub sealed: Vec<gst::Structure>,
    /// The first error message's text and debug string.
    pub error: Option<String>,
    /// Bytes that reached the appsink called `ref` (a tee copy of the sink's input).
    pub reference: Vec<u8>,
}

/// Run `desc` to EOS or error (at most `timeout`), then set it to NULL.
pub fn run(desc: &str, timeout: Duration) -> Run {
    let pipeline = vcambridge_tests::launch_pipeline(desc);
    let reference = Arc::new(Mutex::new(Vec::new()));
    if let Some(sink) = pipeline.by_name("ref") {
        let sink = sink
            .downcast::<gst_app::AppSink>()
            .expect("ref is an appsink");
        let r = reference.clone();
        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |s| {
                    let sample = s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    if let Some(b) = sample.buffer() {
                        let m = b.map_readable().map_err(|_| gst::FlowError::Error)?;
                        r.lock().unwrap().extend_from_slice(&m);
                    }
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
    }
    let bus = pipeline.bus().expect("bus");
    // A failing start is reported on the bus (read below).
    let _ = pipeline.set_state(gst::State::Playing);
    let mut sealed = Vec::new();
    let mut error = None;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            let _ = pipeline.set_state(gst::State::Null);
            panic!("`{desc}` did not finish within {timeout:?}");
        }
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(left.as_millis() as u64))
        else {
            continue;
        };
        match msg.view() {
            gst::MessageView::Element(e) => {
                if let Some(s) = e.structure()
                    && s.name() == "chunk-full"
                {
                    sealed.push(s.to_owned());
                }
            }
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => {
                error = Some(format!("{} ({:?})", e.error(), e.debug()));
                break;
            }
            _ => {}
        }
    }
    pipeline.set_state(gst::State::Null).expect("NULL");
    // Messages posted while stopping (the final seal on error).
    while let Some(msg) = bus.pop() {
        if let gst::MessageView::Element(e) = msg.view()
            && let Some(s) = e.structure()
            && s.name() == "chunk-full"
        {
            sealed.push(s.to_owned());
        }
    }
    let reference = std::mem::take(&mut *reference.lock().unwrap());
    Run {
        sealed,
        error,
        reference,
    }
}

/// A chunk file read back.
pub struct Chunk {
    pub path: PathBuf,
    pub file_len: usize,
    pub wav: ParsedWav,
    pub data: Vec<u8>,
}

/// Every `*.wav` in `dir`, by name, each parsed (panics naming the file that does not parse).
pub fn read_chunks(dir: &Path) -> Vec<Chunk> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read the chunk directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "wav"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).expect("read chunk");
            let wav = parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let data = bytes[wav.data.clone()].to_vec();
            Chunk {
                path,
                file_len: bytes.len(),
                wav,
                data,
            }
        })
        .collect()
}

/// The index lines of `dir/index.jsonl`.
pub fn read_index(dir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("index.jsonl")).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("index line {l:?}: {e}")))
        .collect()
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("chunksink-test-")
        .tempdir()
        .expect("tempdir")
}
