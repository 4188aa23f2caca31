// SPDX-License-Identifier: MPL-2.0
//! Which device `v4l2loopsink` writes to: resolving `device` / `card-label`, creating and
//! removing devices with `create=true`, and turning [`DeviceProblem`]s into element errors.
//! Called from state changes with no element lock held (listing devices opens each node).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::imp::{DEFAULT_CREATE_LABEL, Settings};
use crate::v4l2::{self, Capability, ControlDevice, DeviceProblem, LoopbackConfig, LoopbackDevice};

/// A device this element created through the control device (removed again on NULL).
#[derive(Debug, Clone)]
pub(super) struct Created {
    pub(super) number: u32,
    pub(super) path: PathBuf,
}

/// Finds the device to write to; errors say what was found and what to do.
pub(super) fn resolve_device(
    settings: &Settings,
    created: Option<&Created>,
) -> Result<PathBuf, gst::ErrorMessage> {
    if let Some(created) = created {
        return Ok(created.path.clone());
    }
    if let Some(device) = settings.device.as_deref().filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(device));
    }
    let found = v4l2::list_loopback_devices();
    let listing = if found.is_empty() {
        "no v4l2loopback device exists".to_string()
    } else {
        let names: Vec<String> = found
            .iter()
            .map(|d| format!("{} '{}'", d.path.display(), d.caps.card))
            .collect();
        format!("v4l2loopback devices: {}", names.join(", "))
    };
    let create_hint = if Path::new(v4l2::CONTROL_DEVICE).exists() {
        "set create=true to create one".to_string()
    } else {
        format!(
            "load the module with `{}`",
            v4l2::modprobe_hint(
                10,
                settings
                    .card_label
                    .as_deref()
                    .unwrap_or(DEFAULT_CREATE_LABEL)
            )
        )
    };
    if let Some(label) = settings.card_label.as_deref().filter(|l| !l.is_empty()) {
        return found
            .iter()
            .find(|d| d.caps.card == label)
            .map(|d| d.path.clone())
            .ok_or_else(|| {
                gst::error_msg!(
                    gst::ResourceError::NotFound,
                    [
                        "no v4l2loopback device with card label '{}' ({}); {}",
                        label,
                        listing,
                        create_hint
                    ]
                )
            });
    }
    found
        .iter()
        .find(|d| d.caps.can_output())
        .map(|d| d.path.clone())
        .ok_or_else(|| {
            gst::error_msg!(
                gst::ResourceError::NotFound,
                [
                    "no v4l2loopback device accepts output ({}); set device= or {}",
                    listing,
                    create_hint
                ]
            )
        })
}

/// `create=true`: make a device through the control device unless one with the wanted
/// label or path exists already (then `None`).
pub(super) fn create_device(settings: &Settings) -> Result<Option<Created>, gst::ErrorMessage> {
    let label = settings
        .card_label
        .clone()
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| DEFAULT_CREATE_LABEL.to_string());
    if let Some(device) = settings.device.as_deref().filter(|d| !d.is_empty()) {
        if Path::new(device).exists() {
            return Ok(None);
        }
    } else if v4l2::list_loopback_devices()
        .iter()
        .any(|d| d.caps.card == label)
    {
        return Ok(None);
    }
    let number = if settings.device_number >= 0 {
        settings.device_number
    } else {
        settings
            .device
            .as_deref()
            .and_then(|d| v4l2::video_number(Path::new(d)))
            .map(|n| n as i32)
            .unwrap_or(-1)
    };
    let ctl = ControlDevice::open().map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT) => {
            let loaded = match v4l2::module_version() {
                Some(v) => format!("the loaded v4l2loopback is {v}"),
                None => "v4l2loopback is not loaded".to_string(),
            };
            gst::error_msg!(
                gst::ResourceError::NotFound,
                [
                    "create=true needs v4l2loopback >= 0.13 (control device {}), but {}. \
                     Create the device when loading the module instead: `{}`, then use \
                     device=/dev/video{} or card-label=\"{}\"",
                    v4l2::CONTROL_DEVICE,
                    loaded,
                    v4l2::modprobe_hint(number.max(10) as u32, &label),
                    number.max(10),
                    label
                ]
            )
        }
        Some(libc::EACCES) | Some(libc::EPERM) => gst::error_msg!(
            gst::ResourceError::NotAuthorized,
            [
                "permission denied opening {}: creating loopback devices needs write access \
                 to it (root, or a udev rule for the 'video' group)",
                v4l2::CONTROL_DEVICE
            ]
        ),
        _ => gst::error_msg!(
            gst::ResourceError::OpenWrite,
            ["cannot open {}: {}", v4l2::CONTROL_DEVICE, e]
        ),
    })?;
    let config = LoopbackConfig::new(
        number,
        &label,
        settings.exclusive_caps,
        settings.max_width,
        settings.max_height,
    );
    let nr = ctl.add(&config).map_err(|e| {
        let what = if number >= 0 {
            format!("/dev/video{number}")
        } else {
            "a v4l2loopback device".to_string()
        };
        let hint = if e.raw_os_error() == Some(libc::EEXIST) {
            " (that number is taken: pick another device-number or -1)"
        } else {
            ""
        };
        gst::error_msg!(
            gst::ResourceError::OpenWrite,
            ["creating {} '{}' failed: {}{}", what, label, e, hint]
        )
    })?;
    let path = PathBuf::from(format!("/dev/video{nr}"));
    // devtmpfs creates the node synchronously, udev may take a moment: bounded wait, woken by
    // the node's creation.
    v4l2::wait_for_node(&path, Duration::from_secs(3));
    Ok(Some(Created { number: nr, path }))
}

/// Removes a device made with `create=true`; the error is the warning text (with the command
/// that removes it later).
pub(super) fn remove_device(created: &Created) -> Result<(), String> {
    ControlDevice::open()
        .and_then(|ctl| ctl.remove(created.number))
        .map_err(|e| {
            let why = if e.raw_os_error() == Some(libc::EBUSY) {
                "it is still opened by a reader".to_string()
            } else {
                e.to_string()
            };
            format!(
                "could not remove {}: {}; remove it later with `v4l2loopback-ctl delete {}`",
                created.path.display(),
                why,
                created.number
            )
        })
}

pub(super) fn open_checked(path: &Path) -> Result<(LoopbackDevice, Capability), gst::ErrorMessage> {
    v4l2::open_output(path).map_err(|problem| problem_error(path, problem))
}

/// The element error for a device problem (its message names the device and the fix).
pub(super) fn problem_error(path: &Path, problem: DeviceProblem) -> gst::ErrorMessage {
    let msg = problem.message(path);
    match problem {
        DeviceProblem::Missing | DeviceProblem::NoDevice => {
            gst::error_msg!(gst::ResourceError::NotFound, ["{}", msg])
        }
        DeviceProblem::PermissionDenied => {
            gst::error_msg!(gst::ResourceError::NotAuthorized, ["{}", msg])
        }
        DeviceProblem::NoOutput { .. } => {
            gst::error_msg!(gst::ResourceError::Busy, ["{}", msg])
        }
        _ => gst::error_msg!(gst::ResourceError::Settings, ["{}", msg]),
    }
}
