//! Test harness helpers for the v4l2 area: writer pipelines with bounded state changes, the three
//! real readers (v4l2src, ffmpeg `-f v4l2`, `v4l2-ctl --stream-mmap`) and reference frames packed
//! the way V4L2 lays them out, independently of the element's own layout code.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use gst::prelude::*;

use crate::{init_gst, run_with_timeout};

/// Are we inside the qemu guest of `tests/guest/run.sh` (real v4l2loopback loaded)?
pub fn in_guest() -> bool {
    std::env::var_os("VCAMBRIDGE_GUEST").is_some()
}

/// The start of every guest test: fails on the host with the command to run instead,
/// initialises GStreamer and logs the module version.
pub fn guest_only() {
    assert!(
        in_guest(),
        "these tests need the v4l2loopback module: run tests/guest/run.sh"
    );
    init_gst();
    eprintln!("v4l2loopback {}", loopback_version());
}

/// The loaded v4l2loopback version (`0.12.7`, `0.13.2`), from sysfs; 0.12.x publishes none,
/// then the version `tests/guest/run.sh` built (`VCAMBRIDGE_V4L2LOOPBACK_VERSION`).
pub fn loopback_version() -> String {
    std::fs::read_to_string("/sys/module/v4l2loopback/version")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("VCAMBRIDGE_V4L2LOOPBACK_VERSION"))
        .unwrap_or_default()
}

/// True for v4l2loopback ≥ 0.13 (control device, one streaming reader at a time).
pub fn loopback_has_control_device() -> bool {
    Path::new("/dev/v4l2loopback").exists()
}

/// A fresh scratch directory for reader outputs (tmpfs in the guest).
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("v4l2-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// An in-process pipeline set to NULL when dropped; every wait on it is bounded.
pub struct Pipeline {
    pub pipeline: gst::Pipeline,
}

impl Pipeline {
    /// Parses `launch` (gst-launch syntax).
    pub fn new(launch: &str) -> Pipeline {
        init_gst();
        let pipeline = crate::launch_pipeline(launch);
        Pipeline { pipeline }
    }

    pub fn by_name(&self, name: &str) -> gst::Element {
        self.pipeline
            .by_name(name)
            .unwrap_or_else(|| panic!("no element named {name}"))
    }

    /// Sets `state` and waits (≤ `timeout`) until it is reached; `Err` carries the first error
    /// message posted (what a user would see).
    pub fn set_state_wait(&self, state: gst::State, timeout: Duration) -> Result<(), String> {
        if self.pipeline.set_state(state).is_err() {
            return Err(self
                .pop_error(Duration::from_secs(2))
                .unwrap_or_else(|| format!("state change to {state:?} failed without error")));
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.pop_error(Duration::ZERO) {
                return Err(e);
            }
            let (res, cur, _) = self.pipeline.state(gst::ClockTime::from_mseconds(50));
            match res {
                Ok(_) if cur == state => return Ok(()),
                Err(_) => {
                    return Err(self
                        .pop_error(Duration::from_secs(2))
                        .unwrap_or_else(|| format!("state change to {state:?} failed")));
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(format!("timed out after {timeout:?} reaching {state:?}"));
            }
        }
    }

    /// The text of the next error on the bus within `timeout` (message + debug info).
    pub fn pop_error(&self, timeout: Duration) -> Option<String> {
        let bus = self.pipeline.bus()?;
        // A zero timeout does not return queued messages here (seen with GStreamer 1.22):
        // wait at least 1 ms.
        let timeout = timeout.max(Duration::from_millis(1));
        let msg = bus.timed_pop_filtered(
            gst::ClockTime::from_nseconds(timeout.as_nanos() as u64),
            &[gst::MessageType::Error],
        )?;
        match msg.view() {
            gst::MessageView::Error(e) => Some(format!(
                "{} ({})",
                e.error(),
                e.debug().map(|d| d.to_string()).unwrap_or_default()
            )),
            _ => None,
        }
    }

    /// Sets PLAYING and waits (≤ `timeout`) for EOS; panics on an error or timeout.
    pub fn wait_eos_from_playing(&self, timeout: Duration) {
        self.set_state_wait(gst::State::Playing, timeout)
            .unwrap_or_else(|e| panic!("pipeline does not play: {e}"));
        self.wait_eos(timeout);
    }

    /// Waits (≤ `timeout`) for EOS; panics on an error or timeout.
    pub fn wait_eos(&self, timeout: Duration) {
        let bus = self.pipeline.bus().expect("bus");
        let msg = bus
            .timed_pop_filtered(
                gst::ClockTime::from_nseconds(timeout.as_nanos() as u64),
                &[gst::MessageType::Eos, gst::MessageType::Error],
            )
            .unwrap_or_else(|| panic!("no EOS within {timeout:?}"));
        if let gst::MessageView::Error(e) = msg.view() {
            panic!("error instead of EOS: {} ({:?})", e.error(), e.debug());
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// Packs a GStreamer video frame tightly, plane after plane, rows without padding: the layout a
/// V4L2 single-planar buffer of that format has (what ffmpeg/v4l2-ctl write to their files).
pub fn pack_tight(frame: &gst_video::VideoFrameRef<&gst::BufferRef>) -> Vec<u8> {
    use gst_video::prelude::*;
    let finfo = frame.format_info();
    let (w, h) = (frame.width(), frame.height());
    let mut out = Vec::new();
    for plane in 0..frame.n_planes() {
        // The first component stored in this plane decides its size.
        let comp = (0..finfo.n_components())
            .find(|&c| finfo.plane()[c as usize] == plane)
            .expect("a component in every plane");
        let row_bytes = finfo.scale_width(comp as u8, w) as usize
            * finfo.pixel_stride()[comp as usize] as usize;
        let rows = finfo.scale_height(comp as u8, h) as usize;
        let stride = frame.plane_stride()[plane as usize] as usize;
        let data = frame.plane_data(plane).expect("plane data");
        for r in 0..rows {
            out.extend_from_slice(&data[r * stride..r * stride + row_bytes]);
        }
    }
    out
}

/// One frame of `videotestsrc pattern=<pattern>` in `format` at `width`x`height`, tightly packed.
pub fn reference_frame(pattern: &str, format: &str, width: u32, height: u32) -> Vec<u8> {
    let p = Pipeline::new(&format!(
        "videotestsrc num-buffers=1 pattern={pattern} ! \
         video/x-raw,format={format},width={width},height={height} ! appsink name=sink sync=false"
    ));
    let sink = p
        .by_name("sink")
        .downcast::<gst_app::AppSink>()
        .expect("appsink");
    p.set_state_wait(gst::State::Playing, Duration::from_secs(20))
        .expect("reference pipeline plays");
    let sample = sink
        .try_pull_sample(gst::ClockTime::from_seconds(20))
        .expect("a reference frame");
    let info = gst_video::VideoInfo::from_caps(sample.caps().expect("caps")).expect("video info");
    let frame =
        gst_video::VideoFrameRef::from_buffer_ref_readable(sample.buffer().expect("buffer"), &info)
            .expect("map frame");
    pack_tight(&frame)
}

/// A `v4l2src` reader streaming from `device` into `fakesink` (it holds the device's format
/// while it plays); panics if it does not reach PLAYING within `timeout`.
pub fn streaming_reader(device: &str, timeout: Duration) -> Pipeline {
    let reader = Pipeline::new(&format!("v4l2src device={device} ! fakesink sync=false"));
    reader
        .set_state_wait(gst::State::Playing, timeout)
        .expect("reader streams");
    reader
}

/// Reads `count` frames with `v4l2src` (in-process): tightly packed frames and their caps.
pub fn read_v4l2src(
    device: &str,
    count: usize,
    timeout: Duration,
) -> Result<(Vec<Vec<u8>>, gst::Caps), String> {
    let p = Pipeline::new(&format!(
        "v4l2src device={device} ! appsink name=sink sync=false max-buffers=64"
    ));
    let sink = p
        .by_name("sink")
        .downcast::<gst_app::AppSink>()
        .expect("appsink");
    p.set_state_wait(gst::State::Playing, timeout)?;
    let deadline = Instant::now() + timeout;
    let mut frames = Vec::new();
    let mut caps = None;
    while frames.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(sample) =
            sink.try_pull_sample(gst::ClockTime::from_nseconds(left.as_nanos() as u64))
        else {
            return Err(format!(
                "v4l2src got {} of {count} frames within {timeout:?}{}",
                frames.len(),
                p.pop_error(Duration::ZERO)
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ));
        };
        let c = sample.caps_owned().ok_or("sample without caps")?;
        let info = gst_video::VideoInfo::from_caps(&c).map_err(|e| e.to_string())?;
        let buffer = sample.buffer().ok_or("sample without buffer")?;
        let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, &info)
            .map_err(|e| e.to_string())?;
        frames.push(pack_tight(&frame));
        caps = Some(c);
    }
    Ok((frames, caps.expect("caps of at least one frame")))
}

/// Splits a raw file of back-to-back frames.
fn split_frames(data: &[u8], frame_size: usize) -> Result<Vec<Vec<u8>>, String> {
    if frame_size == 0 || !data.len().is_multiple_of(frame_size) {
        return Err(format!(
            "{} bytes is not a whole number of {frame_size}-byte frames",
            data.len()
        ));
    }
    Ok(data.chunks(frame_size).map(|c| c.to_vec()).collect())
}

/// Runs a reader that writes `count` raw frames to `out` (`tool` names it in errors) and splits
/// the file into frames of `frame_size` bytes.
fn read_raw_frames(
    tool: &str,
    command: &mut Command,
    out: &Path,
    count: usize,
    frame_size: usize,
    timeout: Duration,
) -> Result<Vec<Vec<u8>>, String> {
    let _ = std::fs::remove_file(out);
    let output = run_with_timeout(tool, command, timeout);
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    if !output.status.success() {
        return Err(format!("{tool} failed ({}): {stderr}", output.status));
    }
    let data = std::fs::read(out).map_err(|e| format!("{tool} output: {e}; {stderr}"))?;
    let frames = split_frames(&data, frame_size).map_err(|e| format!("{tool}: {e}; {stderr}"))?;
    if frames.len() != count {
        return Err(format!(
            "{tool} read {} of {count} frames; {stderr}",
            frames.len()
        ));
    }
    Ok(frames)
}

/// Reads `count` frames with `ffmpeg -f v4l2` (stream copy, no conversion) into `dir`.
pub fn read_ffmpeg(
    device: &str,
    count: usize,
    frame_size: usize,
    dir: &Path,
    timeout: Duration,
) -> Result<Vec<Vec<u8>>, String> {
    let out = dir.join("ffmpeg.raw");
    read_raw_frames(
        "ffmpeg -f v4l2",
        Command::new("ffmpeg")
            .args(["-hide_banner", "-nostdin", "-loglevel", "warning"])
            .args(["-f", "v4l2", "-i", device])
            .args(["-frames:v", &count.to_string(), "-c:v", "copy"])
            .args(["-f", "rawvideo", "-y"])
            .arg(&out),
        &out,
        count,
        frame_size,
        timeout,
    )
}

/// Reads `count` frames with `v4l2-ctl --stream-mmap` into `dir`.
pub fn read_v4l2ctl(
    device: &str,
    count: usize,
    frame_size: usize,
    dir: &Path,
    timeout: Duration,
) -> Result<Vec<Vec<u8>>, String> {
    let out = dir.join("v4l2ctl.raw");
    read_raw_frames(
        "v4l2-ctl --stream-mmap",
        Command::new("v4l2-ctl")
            .args(["-d", device, "--stream-mmap"])
            .arg(format!("--stream-count={count}"))
            .arg(format!("--stream-to={}", out.display())),
        &out,
        count,
        frame_size,
        timeout,
    )
}

/// Asserts every frame equals `expected`, naming the reader and the first differing byte.
pub fn assert_frames_equal(reader: &str, frames: &[Vec<u8>], expected: &[u8]) {
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(
            f.len(),
            expected.len(),
            "{reader}: frame {i} has {} bytes, expected {}",
            f.len(),
            expected.len()
        );
        if let Some(pos) = f.iter().zip(expected).position(|(a, b)| a != b) {
            panic!(
                "{reader}: frame {i} differs at byte {pos}: got {}, expected {}",
                f[pos], expected[pos]
            );
        }
    }
}

/// `VIDIOC_QUERYCAP` device capabilities of `device` via `v4l2-ctl --info` (independent of the
/// element's ioctl code): (`Video Capture` listed, `Video Output` listed).
pub fn device_caps(device: &str) -> (bool, bool) {
    let out = run_with_timeout(
        "v4l2-ctl --info",
        Command::new("v4l2-ctl").args(["-d", device, "--info"]),
        Duration::from_secs(20),
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    // Only the "Device Caps" block describes this node.
    let device_block = text.split("Device Caps").nth(1).unwrap_or(&text);
    (
        device_block.contains("Video Capture"),
        device_block.contains("Video Output"),
    )
}
