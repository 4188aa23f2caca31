// SPDX-License-Identifier: MPL-2.0
//! The slow half of negotiation, run by `set_format` with no element lock held: reopening the
//! device for a format change, `VIDIOC_S_FMT` / `S_PARM` and judging the driver's answer,
//! building the placeholder (may decode an image) and starting mmap streaming.

use std::path::Path;
use std::time::Instant;

use gst::subclass::prelude::*;

use super::devices;
use super::imp::{BUFFER_COUNT, CAT, V4l2LoopSink};
use super::output::RepeatFrame;
use super::placeholder::make_placeholder;
use crate::v4l2::{
    self, DriverFormatProblem, FormatInfo, FrameLayout, LoopbackDevice, OutputStream,
};

/// What `set_format` prepared without the lock, installed under it.
pub(super) struct Configured {
    pub(super) stream: OutputStream,
    pub(super) placeholder: Option<RepeatFrame>,
}

/// Reopens the device if a stream was running (v4l2loopback frees a writer's format only
/// when the writer lets go), sets the format and rate, builds the placeholder and starts
/// mmap streaming. Blocking; called with no lock held. Returns the device (if still open)
/// alongside the result, so that the caller can put it back either way.
#[allow(clippy::too_many_arguments)]
pub(super) fn configure(
    sink: &V4l2LoopSink,
    path: &Path,
    device: LoopbackDevice,
    old_stream: Option<OutputStream>,
    format: &'static FormatInfo,
    info: &gst_video::VideoInfo,
    requested: &str,
    placeholder: Option<&str>,
) -> (
    Option<LoopbackDevice>,
    Result<Configured, gst::ErrorMessage>,
) {
    let device = match old_stream {
        None => device,
        Some(old) => {
            gst::info!(
                CAT,
                imp = sink,
                "format change from {} to {requested}: reopening {}",
                old.layout().describe(),
                path.display()
            );
            let released = {
                let l = old.layout();
                (l.format.fourcc, l.width, l.height)
            };
            // STREAMOFF, unmap and close: the writer lets go of the format.
            drop(old);
            drop(device);
            let started = Instant::now();
            match v4l2::reopen_output(path, v4l2::REOPEN_GRACE, Some(released)) {
                Ok((device, _)) => {
                    gst::debug!(
                        CAT,
                        imp = sink,
                        "reopened {} in {} ms",
                        path.display(),
                        started.elapsed().as_millis()
                    );
                    device
                }
                Err(problem) => return (None, Err(devices::problem_error(path, problem))),
            }
        }
    };
    let result = start_stream(sink, path, &device, format, info, requested, placeholder);
    (Some(device), result)
}

fn start_stream(
    sink: &V4l2LoopSink,
    path: &Path,
    device: &LoopbackDevice,
    format: &'static FormatInfo,
    info: &gst_video::VideoInfo,
    requested: &str,
    placeholder: Option<&str>,
) -> Result<Configured, gst::ErrorMessage> {
    let (width, height) = (info.width(), info.height());
    let pix = match device.set_format(format.fourcc, width, height) {
        Ok(pix) => pix,
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            let problem = DriverFormatProblem::Locked(device.format().ok());
            return Err(gst::error_msg!(
                gst::ResourceError::Busy,
                ["{}", problem.message(path, requested)]
            ));
        }
        Err(e) => {
            return Err(gst::error_msg!(
                gst::ResourceError::Settings,
                ["setting {} on {} failed: {}", requested, path.display(), e]
            ));
        }
    };
    let as_requested =
        pix.pixelformat == format.fourcc && pix.width == width && pix.height == height;
    let locked = if as_requested {
        None
    } else {
        device.locked_format().ok().flatten()
    };
    if let Err(problem) = v4l2::check_driver_format(format, width, height, &pix, locked) {
        let kind = match problem {
            DriverFormatProblem::Locked(_) => gst::ResourceError::Busy,
            _ => gst::ResourceError::Settings,
        };
        return Err(gst::error_msg!(
            kind,
            ["{}", problem.message(path, requested)]
        ));
    }
    let fps = info.fps();
    if fps.numer() > 0
        && let Err(e) = device.set_frame_rate(fps.numer() as u32, fps.denom() as u32)
    {
        gst::warning!(CAT, imp = sink, "VIDIOC_S_PARM failed: {e}");
    }
    let layout = FrameLayout::new(format, width, height, pix.bytesperline);
    gst::debug!(
        CAT,
        imp = sink,
        "set {} on {}: bytesperline {}, driver sizeimage {}, frame {} bytes",
        layout.describe(),
        path.display(),
        pix.bytesperline,
        pix.sizeimage,
        layout.size
    );
    let placeholder = match placeholder {
        Some(spec) => {
            gst::debug!(CAT, imp = sink, "preparing placeholder {spec}");
            let started = Instant::now();
            let frame = make_placeholder(spec, &layout, info)
                .map_err(|m| gst::error_msg!(gst::ResourceError::Settings, ["{}", m]))?;
            gst::debug!(
                CAT,
                imp = sink,
                "placeholder ready in {} ms",
                started.elapsed().as_millis()
            );
            Some(frame)
        }
        None => None,
    };
    let stream = OutputStream::start(device, layout, BUFFER_COUNT).map_err(|e| {
        if e.raw_os_error() == Some(libc::EBUSY) {
            gst::error_msg!(
                gst::ResourceError::Busy,
                [
                    "{} refuses a new writer (VIDIOC_REQBUFS: {}): v4l2loopback believes \
                     another writer owns it (0.13.x keeps that state when a write()-based \
                     writer such as ffmpeg left while a reader had the device open). Close \
                     all readers and writers of the device, or remove and re-create it",
                    path.display(),
                    e
                ]
            )
        } else {
            gst::error_msg!(
                gst::ResourceError::Settings,
                [
                    "starting mmap streaming on {} failed: {}",
                    path.display(),
                    e
                ]
            )
        }
    })?;
    gst::info!(
        CAT,
        imp = sink,
        "streaming {} to {} with {} buffers",
        requested,
        path.display(),
        stream.buffer_count()
    );
    Ok(Configured {
        stream,
        placeholder,
    })
}
