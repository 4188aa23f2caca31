// SPDX-License-Identifier: MPL-2.0
//! chunksink without PipeWire: audiotestsrc/appsrc into chunks, read back through the strict
//! WAV parser and compared byte for byte with a tee copy of the sink's input.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Run, init, read_chunks, read_index, run, tempdir};
use gst::prelude::*;
use gstchunksink::chunk::ChunkGeometry;
use gstchunksink::wav::{SampleFormat, WavFormat};

const T: Duration = Duration::from_secs(60);

/// `src ! caps ! tee ! chunksink <props>` with a reference appsink on the other branch.
fn tee_run(src: &str, caps: &str, dir: &Path, props: &str) -> Run {
    run(
        &format!(
            "{src} ! {caps} ! tee name=t ! queue max-size-buffers=0 max-size-time=0 \
             max-size-bytes=0 ! chunksink name=sink directory={} {props} \
             t. ! queue max-size-buffers=0 max-size-time=0 max-size-bytes=0 ! \
             appsink name=ref sync=false",
            dir.display()
        ),
        T,
    )
}

/// Chunks hold the reference stream once, in order; every chunk but the last is exactly full;
/// the messages and the index agree with the files.
fn check_exact(dir: &Path, r: &Run, g: &ChunkGeometry) {
    assert!(r.error.is_none(), "{:?}", r.error);
    let chunks = read_chunks(dir);
    let ba = g.block_align() as usize;
    let total = r.reference.len() / ba;
    let expected_chunks = total.div_ceil(g.frames_per_chunk as usize);
    assert_eq!(chunks.len(), expected_chunks, "{total} frames");
    let mut all = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        let frames = if last {
            total - i * g.frames_per_chunk as usize
        } else {
            g.frames_per_chunk as usize
        };
        assert_eq!(c.wav.frames() as usize, frames, "{}", c.path.display());
        // Full chunks have the length created up front; the last one was cut to its data.
        let want_len = g.layout.file_len((frames * ba) as u64) as usize;
        assert_eq!(c.file_len, want_len, "{}", c.path.display());
        all.extend_from_slice(&c.data);
    }
    assert!(all == r.reference, "chunk data differs from the stream");
    let index = read_index(dir);
    assert_eq!(index.len(), chunks.len());
    assert_eq!(r.sealed.len(), chunks.len());
    for (i, (line, msg)) in index.iter().zip(&r.sealed).enumerate() {
        let first = i as u64 * g.frames_per_chunk;
        assert_eq!(line["index"], i as u64);
        assert_eq!(line["first_sample"], first);
        assert_eq!(line["samples"].as_u64(), Some(chunks[i].wav.frames()));
        assert_eq!(line["path"].as_str(), chunks[i].path.to_str());
        assert_eq!(line["gaps"].as_array().map(|a| a.len()), Some(0));
        assert_eq!(line["rate"].as_u64(), Some(u64::from(g.layout.format.rate)));
        // audiotestsrc starts at 0: the chunk's PTS is its first sample's time (+-1 ns rounding)
        let pts = line["pts"].as_u64().expect("pts");
        let want = first * 1_000_000_000 / u64::from(g.layout.format.rate);
        assert!(pts.abs_diff(want) <= 1, "chunk {i}: pts {pts}, want {want}");
        assert_eq!(msg.get::<u64>("index").unwrap(), i as u64);
        assert_eq!(msg.get::<u64>("first-sample").unwrap(), first);
        assert_eq!(
            msg.get::<u64>("sample-count").unwrap(),
            chunks[i].wav.frames()
        );
        assert_eq!(msg.get::<&str>("path").ok(), chunks[i].path.to_str());
        // A stream that ends exactly at a chunk boundary has no partial chunk to seal at EOS.
        let partial_last = !total.is_multiple_of(g.frames_per_chunk as usize);
        let sealed = if i + 1 == chunks.len() && partial_last {
            "eos"
        } else {
            "full"
        };
        assert_eq!(line["sealed"], sealed);
        assert_eq!(msg.get::<&str>("sealed").unwrap(), sealed);
    }
}

#[test]
fn rotation_is_exact_for_odd_buffer_and_chunk_sizes() {
    init();
    // 3-byte frames (S24 mono): odd data sizes; chunk sizes that are not whole frames.
    let fmt = WavFormat::new(SampleFormat::S24, 1, 48000, 0).unwrap();
    for (spb, buffers, chunk_bytes) in [
        (1u32, 700u32, 1000u64),
        (7, 300, 1000),
        (441, 20, 4097),
        (1001, 9, 4097),
        (1001, 12, 84), // one frame per chunk
    ] {
        let dir = tempdir();
        let r = tee_run(
            &format!("audiotestsrc wave=white-noise num-buffers={buffers} samplesperbuffer={spb}"),
            "audio/x-raw,format=S24LE,rate=48000,channels=1",
            dir.path(),
            &format!("chunk-size={chunk_bytes}"),
        );
        assert_eq!(r.reference.len(), (spb * buffers * 3) as usize);
        let g = ChunkGeometry::from_bytes(fmt, chunk_bytes).unwrap();
        check_exact(dir.path(), &r, &g);
    }
    // chunk-duration: 10 ms at 44100 Hz = 441 frames, buffers of 1000.
    let fmt = WavFormat::new(SampleFormat::S16, 2, 44100, 0).unwrap();
    let dir = tempdir();
    let r = tee_run(
        "audiotestsrc wave=white-noise num-buffers=10 samplesperbuffer=1000",
        "audio/x-raw,format=S16LE,rate=44100,channels=2",
        dir.path(),
        "chunk-duration=10000000",
    );
    check_exact(
        dir.path(),
        &r,
        &ChunkGeometry::from_duration(fmt, 10_000_000).unwrap(),
    );
}

#[test]
fn every_format_and_channel_count() {
    init();
    for sample in SampleFormat::ALL {
        for channels in [1u32, 2, 6, 8] {
            let dir = tempdir();
            let r = tee_run(
                "audiotestsrc wave=white-noise num-buffers=6 samplesperbuffer=333",
                &format!(
                    "audio/x-raw,format={},rate=48000,channels={channels}",
                    sample.gst_name()
                ),
                dir.path(),
                "chunk-duration=15000000",
            );
            let what = format!("{} x{channels}", sample.gst_name());
            assert!(r.error.is_none(), "{what}: {:?}", r.error);
            let chunks = read_chunks(dir.path());
            assert_eq!(chunks.len(), 3, "{what}: 1998 frames in chunks of 720");
            for c in &chunks {
                assert_eq!(c.wav.sample_format(), Some(sample), "{what}");
                assert_eq!(u32::from(c.wav.channels), channels, "{what}");
                assert_eq!(c.wav.rate, 48000);
                assert_eq!(
                    c.wav.format_tag == 0xFFFE,
                    sample.is_float() || channels > 2,
                    "{what}: extensible iff float or > 2 channels"
                );
            }
            let all: Vec<u8> = chunks.iter().flat_map(|c| c.data.clone()).collect();
            assert!(all == r.reference, "{what}: data differs");
        }
    }
}

#[test]
fn channel_masks_follow_the_caps() {
    init();
    // GStreamer 5.1 (FL FR FC LFE RL RR) and 7.1 (+ SL SR) in WAV speaker bits.
    for (channels, gst_mask, wav_mask) in [(6u32, 0x3fu64, 0x3fu32), (8, 0xc3f, 0x63f)] {
        let dir = tempdir();
        let r = run(
            &format!(
                "audiotestsrc num-buffers=2 ! audio/x-raw,format=F32LE,rate=48000,\
                 channels={channels},channel-mask=(bitmask){gst_mask:#x} ! chunksink directory={}",
                dir.path().display()
            ),
            T,
        );
        assert!(r.error.is_none(), "{:?}", r.error);
        let chunks = read_chunks(dir.path());
        assert_eq!(chunks[0].wav.channel_mask, wav_mask, "{channels} channels");
        assert_eq!(chunks[0].wav.sub_format, 3);
    }
}

#[test]
fn max_chunks_keeps_the_newest() {
    init();
    let dir = tempdir();
    // 80 frames per chunk, 1000 frames: 13 chunks, the newest 3 kept.
    let r = tee_run(
        "audiotestsrc wave=white-noise num-buffers=10 samplesperbuffer=100",
        "audio/x-raw,format=S16LE,rate=8000,channels=1",
        dir.path(),
        "chunk-duration=10000000 max-chunks=3",
    );
    assert!(r.error.is_none(), "{:?}", r.error);
    let chunks = read_chunks(dir.path());
    let names: Vec<String> = chunks
        .iter()
        .map(|c| c.path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["chunk-000010.wav", "chunk-000011.wav", "chunk-000012.wav"]
    );
    let tail: Vec<u8> = chunks.iter().flat_map(|c| c.data.clone()).collect();
    assert!(r.reference.ends_with(&tail) && tail.len() == (2 * 80 + 40) * 2);
    assert_eq!(
        read_index(dir.path()).len(),
        13,
        "the index keeps every line"
    );
}

#[test]
fn gaps_are_recorded_and_filled_only_when_asked() {
    init();
    for fill in [false, true] {
        let dir = tempdir();
        let pipeline = vcambridge_tests::launch_pipeline(&format!(
            "appsrc name=src format=time caps=audio/x-raw,format=S16LE,rate=1000,channels=1,\
             layout=interleaved ! chunksink directory={} chunk-duration=250000000 fill-gaps={fill}",
            dir.path().display()
        ));
        let src = pipeline
            .by_name("src")
            .unwrap()
            .downcast::<gst_app::AppSrc>()
            .unwrap();
        pipeline.set_state(gst::State::Playing).unwrap();
        // 100-frame (100 ms) buffers; the 4th starts 50 ms late; the 6th is DISCONT on time.
        let mut pts_ms = 0u64;
        for i in 0..8u64 {
            if i == 3 {
                pts_ms += 50;
            }
            let mut b = gst::Buffer::from_mut_slice(vec![((i + 1) * 10) as u8; 200]);
            {
                let b = b.get_mut().unwrap();
                b.set_pts(gst::ClockTime::from_mseconds(pts_ms));
                if i == 5 {
                    b.set_flags(gst::BufferFlags::DISCONT);
                }
            }
            src.push_buffer(b).unwrap();
            pts_ms += 100;
        }
        src.end_of_stream().unwrap();
        let bus = pipeline.bus().unwrap();
        let msg = bus
            .timed_pop_filtered(
                gst::ClockTime::from_seconds(20),
                &[gst::MessageType::Eos, gst::MessageType::Error],
            )
            .expect("EOS within 20 s");
        assert!(matches!(msg.view(), gst::MessageView::Eos(_)), "{msg:?}");
        pipeline.set_state(gst::State::Null).unwrap();

        let chunks = read_chunks(dir.path());
        let data: Vec<u8> = chunks.iter().flat_map(|c| c.data.clone()).collect();
        let extra = if fill { 50 } else { 0 };
        assert_eq!(data.len(), (800 + extra) * 2, "fill-gaps={fill}");
        if fill {
            assert!(data[600..700].iter().all(|b| *b == 0), "silence in the gap");
            assert!(data[700..900].iter().all(|b| *b == 40), "then buffer 4");
        } else {
            assert!(
                data[600..800].iter().all(|b| *b == 40),
                "buffer 4 follows 3"
            );
        }
        let index = read_index(dir.path());
        let gaps: Vec<&serde_json::Value> = index
            .iter()
            .flat_map(|l| l["gaps"].as_array().unwrap().iter())
            .collect();
        assert_eq!(gaps.len(), 2, "{index:?}");
        assert_eq!(gaps[0]["reason"], "timestamp");
        assert_eq!(gaps[0]["at_sample"], 300);
        assert_eq!(gaps[0]["missing_samples"], 50);
        assert_eq!(gaps[0]["duration_ns"], 50_000_000);
        assert_eq!(gaps[0]["filled"], fill);
        assert_eq!(gaps[1]["reason"], "discont");
        assert_eq!(gaps[1]["at_sample"], 500 + extra);
        assert_eq!(gaps[1]["missing_samples"], 0);
        // The first gap is in the chunk holding sample 300: chunk 1 (250..500).
        assert_eq!(index[1]["gaps"].as_array().unwrap().len(), 1);
    }
}

#[test]
fn a_second_run_continues_the_index_with_a_restart_gap() {
    init();
    let dir = tempdir();
    let desc = format!(
        "audiotestsrc num-buffers=3 samplesperbuffer=1000 ! audio/x-raw,format=S16LE,rate=8000,\
         channels=1 ! chunksink directory={} chunk-duration=125000000",
        dir.path().display()
    );
    assert!(run(&desc, T).error.is_none());
    assert!(run(&desc, T).error.is_none());
    let index = read_index(dir.path());
    // 3000 frames in chunks of 1000, twice.
    assert_eq!(index.len(), 6);
    for (i, l) in index.iter().enumerate() {
        assert_eq!(l["index"], i as u64);
        assert_eq!(l["first_sample"], i as u64 * 1000);
    }
    let gaps = index[3]["gaps"].as_array().unwrap();
    assert_eq!(gaps.len(), 1);
    assert_eq!(gaps[0]["reason"], "restart");
    assert_eq!(gaps[0]["at_sample"], 3000);
    assert_eq!(read_chunks(dir.path()).len(), 6);
}

fn error_of(desc: &str) -> String {
    run(desc, T)
        .error
        .unwrap_or_else(|| panic!("`{desc}` should fail"))
}

#[test]
fn errors_name_the_fix() {
    init();
    let dir = tempdir();
    let missing = dir.path().join("nope");
    let e = error_of(&format!(
        "audiotestsrc num-buffers=1 ! chunksink directory={}",
        missing.display()
    ));
    assert!(
        e.contains("does not exist") && e.contains(&format!("mkdir -p {}", missing.display())),
        "{e}"
    );
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let e = error_of(&format!(
        "audiotestsrc num-buffers=1 ! chunksink directory={}",
        file.display()
    ));
    assert!(e.contains("is not a directory"), "{e}");
    let e = error_of(&format!(
        "audiotestsrc num-buffers=1 ! chunksink directory={} location=chunk.wav",
        dir.path().display()
    ));
    assert!(
        e.contains("has no %d") && e.contains("chunk-%06d.wav"),
        "{e}"
    );
    let e = error_of(&format!(
        "audiotestsrc num-buffers=1 ! audio/x-raw,format=S16BE ! chunksink directory={}",
        dir.path().display()
    ));
    assert!(
        e.contains("cannot store S16BE") && e.contains("audioconvert"),
        "{e}"
    );
    let e = error_of(&format!(
        "audiotestsrc num-buffers=1 ! audio/x-raw,format=F32LE,layout=non-interleaved ! \
         chunksink directory={}",
        dir.path().display()
    ));
    assert!(e.contains("interleaved"), "{e}");
    let e = error_of(&format!(
        "audiotestsrc num-buffers=1 ! audio/x-raw,format=S16LE,channels=2 ! chunksink \
         directory={} chunk-size=50",
        dir.path().display()
    ));
    assert!(e.contains("chunk-size 50 holds no sample frame"), "{e}");
    // An existing chunk file without an index is never overwritten.
    let d2 = tempdir();
    std::fs::write(d2.path().join("chunk-000000.wav"), b"precious").unwrap();
    let e = error_of(&format!(
        "audiotestsrc num-buffers=1 ! chunksink directory={} index-file=\"\"",
        d2.path().display()
    ));
    assert!(
        e.contains("already exists") && e.contains("never overwrites"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(d2.path().join("chunk-000000.wav")).unwrap(),
        b"precious"
    );
}

/// Unmounts (lazily) when dropped.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn disk_full_seals_the_chunk_and_says_so() {
    init();
    let dir = tempdir();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(dir.path())
        .output();
    match mounted {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            eprintln!(
                "SKIP disk_full_seals_the_chunk_and_says_so: cannot mount a tmpfs here: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return;
        }
        Err(e) => {
            eprintln!("SKIP disk_full_seals_the_chunk_and_says_so: no mount(8): {e}");
            return;
        }
    }
    let _mount = Mount(dir.path().to_path_buf());
    // Files of 60000 bytes (15 pages): four fit in 256 KiB, the fifth does not.
    let r = run(
        &format!(
            "audiotestsrc wave=white-noise num-buffers=1000 samplesperbuffer=1024 ! \
             audio/x-raw,format=S16LE,rate=48000,channels=2 ! chunksink directory={} \
             chunk-size=60000",
            dir.path().display()
        ),
        T,
    );
    let e = r.error.expect("disk full must be an error");
    let fifth = dir.path().join("chunk-000004.wav");
    assert!(
        e.contains("disk full") && e.contains(&fifth.display().to_string()),
        "{e}"
    );
    assert!(e.contains("previous chunks are sealed"), "{e}");
    let chunks = read_chunks(dir.path());
    assert_eq!(chunks.len(), 4);
    let fpc = (60000 - 80) / 4;
    for c in &chunks {
        assert_eq!(c.wav.frames(), fpc, "{} is complete", c.path.display());
    }
    let index = read_index(dir.path());
    assert_eq!(index.len(), 4);
    assert!(index.iter().all(|l| l["sealed"] == "full"));
}

#[test]
fn sigkill_mid_write_leaves_parseable_files() {
    init();
    let dir = tempdir();
    let mut cmd = vcambridge_tests::gst_command("gst-launch-1.0");
    cmd.args([
        "-q",
        "audiotestsrc",
        "is-live=true",
        "samplesperbuffer=480",
        "!",
        "audio/x-raw,format=S16LE,rate=48000,channels=2",
        "!",
        "chunksink",
    ])
    .arg(format!("directory={}", dir.path().display()))
    .arg("chunk-duration=200000000")
    .env_remove("G_DEBUG");
    let child = vcambridge_tests::ChildGuard::spawn("gst-launch-1.0 chunksink", &mut cmd);
    vcambridge_tests::wait_for(Duration::from_secs(20), "three sealed chunks", || {
        (read_index(dir.path()).len() >= 3).then_some(())
    });
    std::thread::sleep(Duration::from_millis(90));
    child.signal(libc::SIGKILL);
    let out = child.wait_output(Duration::from_secs(5));
    assert!(!out.status.success());
    let chunks = read_chunks(dir.path());
    let index = read_index(dir.path());
    // sealed ones, the one being written, the pre-created next one (empty, still valid)
    assert!(chunks.len() > index.len(), "{} files", chunks.len());
    for (i, c) in chunks.iter().enumerate() {
        if i < index.len() {
            assert_eq!(c.wav.frames(), 9600, "{}", c.path.display());
        } else {
            assert_eq!(
                c.wav.frames() % 480,
                0,
                "whole buffers in {}",
                c.path.display()
            );
        }
    }
    let partial = &chunks[index.len()];
    assert!(
        partial.wav.frames() > 0,
        "the chunk being written holds what was written before the kill"
    );
}

/// Minor page faults of the calling thread so far (`/proc/thread-self/stat`, field 10).
fn thread_minflt() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("thread stat");
    let rest = stat.rsplit(')').next().unwrap_or("");
    rest.split_whitespace()
        .nth(7)
        .and_then(|v| v.parse().ok())
        .expect("minflt")
}

/// Live 64-channel F32 audio (12.3 MB/s, 1 s chunks, so rotations too): the I/O thread makes
/// the pages ahead of the writer writable (`MADV_POPULATE_WRITE`), so the streaming thread's
/// copies take no page fault — on a disk filesystem each would be a write-protect fault into
/// the filesystem's `page_mkwrite`, which can wait for its journal. Counted on the streaming
/// thread by a probe before each buffer: without the prefault, one fault per 4 KiB page written.
#[test]
fn the_streaming_thread_writes_into_pages_made_writable_ahead() {
    init();
    let dir = tempdir();
    let pipeline = vcambridge_tests::launch_pipeline(&format!(
        "audiotestsrc is-live=true wave=silence samplesperbuffer=4800 num-buffers=35 ! \
         audio/x-raw,format=F32LE,rate=48000,channels=64 ! chunksink name=sink directory={} \
         chunk-duration=1000000000",
        dir.path().display()
    ));
    let faults = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let pad = pipeline
        .by_name("sink")
        .and_then(|s| s.static_pad("sink"))
        .expect("sink pad");
    {
        let faults = faults.clone();
        pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            faults.lock().unwrap().push(thread_minflt());
            gst::PadProbeReturn::Ok
        });
    }
    pipeline.set_state(gst::State::Playing).expect("PLAYING");
    let bus = pipeline.bus().expect("bus");
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(30),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("EOS within 30 s");
    pipeline.set_state(gst::State::Null).expect("NULL");
    assert!(matches!(msg.view(), gst::MessageView::Eos(_)), "{msg:?}");
    let faults = faults.lock().unwrap().clone();
    assert_eq!(faults.len(), 35);
    // Buffers 3..34 (audiotestsrc faults in its first three: fresh buffers): 31 buffers of
    // 1.2 MB, 9300 pages, across three chunk rotations. (Seen: ~300 — audiotestsrc filling one
    // more freshly allocated buffer, a new address, near the first rotation; without the
    // prefault one per page, 9600+.)
    let pages = 31 * 4800 * 64 * 4 / 4096;
    let taken = faults[34] - faults[3];
    let fs = std::process::Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(dir.path())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    eprintln!("streaming thread: {taken} page faults while writing {pages} pages ({fs})");
    assert!(
        taken < pages as u64 / 10,
        "{taken} page faults on the streaming thread while it wrote {pages} pages ({fs})"
    );
    assert_eq!(read_chunks(dir.path()).len(), 4);
}
