// SPDX-License-Identifier: MPL-2.0
//! Pixel formats and frame layouts, in plain Rust (no GStreamer types, no I/O): the format table
//! (GStreamer name ↔ V4L2 fourcc), plane offsets, strides and the exact frame size
//! (`bytesused`) the way V4L2 readers expect them, the stride-repacking copy, solid colours, and
//! the checks of what the driver made of a requested format.

use std::path::Path;

use super::abi::PixFormat;

pub const fn fourcc(c: &[u8; 4]) -> u32 {
    (c[0] as u32) | ((c[1] as u32) << 8) | ((c[2] as u32) << 16) | ((c[3] as u32) << 24)
}

/// Renders a fourcc as its four characters (`YUYV`).
pub fn fourcc_str(code: u32) -> String {
    code.to_le_bytes()
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '?'
            }
        })
        .collect()
}

/// How the pixels of a format are laid out in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One plane, `bytes_per_pixel` bytes per pixel (RGB, GRAY8).
    Packed { bytes_per_pixel: u32 },
    /// One plane of 4:2:2 macro-pixels (2 bytes per pixel, even width).
    Packed422,
    /// Three planes Y, C, C at 4:2:0 (I420, YV12), chroma stride half the luma stride.
    Planar420,
    /// Two planes Y, CbCr interleaved at 4:2:0 (NV12).
    SemiPlanar420,
}

/// One pixel format both GStreamer and v4l2loopback (and its readers) handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FormatInfo {
    /// The GStreamer name (`GstVideoFormat` string, as in caps).
    pub gst_name: &'static str,
    /// The V4L2 pixel format.
    pub fourcc: u32,
    pub layout: Layout,
    /// Byte order of the components for packed formats, used to paint placeholder colours:
    /// `Y`, `U`, `V` (luma/chroma), `R`, `G`, `B`, `x` (padding, 0xff).
    pub components: &'static str,
}

/// The formats `v4l2loopsink` offers, in preference order (the caps template follows it).
pub const FORMATS: &[FormatInfo] = &[
    FormatInfo::new("YUY2", b"YUYV", Layout::Packed422, "YUYV"),
    FormatInfo::new("UYVY", b"UYVY", Layout::Packed422, "UYVY"),
    FormatInfo::new("I420", b"YU12", Layout::Planar420, "YUV"),
    FormatInfo::new("YV12", b"YV12", Layout::Planar420, "YVU"),
    FormatInfo::new("NV12", b"NV12", Layout::SemiPlanar420, "YUV"),
    FormatInfo::new(
        "BGRx",
        b"BGR4",
        Layout::Packed { bytes_per_pixel: 4 },
        "BGRx",
    ),
    FormatInfo::new(
        "xRGB",
        b"RGB4",
        Layout::Packed { bytes_per_pixel: 4 },
        "xRGB",
    ),
    FormatInfo::new("RGB", b"RGB3", Layout::Packed { bytes_per_pixel: 3 }, "RGB"),
    FormatInfo::new("BGR", b"BGR3", Layout::Packed { bytes_per_pixel: 3 }, "BGR"),
    FormatInfo::new("GRAY8", b"GREY", Layout::Packed { bytes_per_pixel: 1 }, "Y"),
];

impl FormatInfo {
    const fn new(
        gst_name: &'static str,
        fourcc_code: &[u8; 4],
        layout: Layout,
        components: &'static str,
    ) -> FormatInfo {
        FormatInfo {
            gst_name,
            fourcc: fourcc(fourcc_code),
            layout,
            components,
        }
    }

    /// The format with this GStreamer name.
    pub fn from_gst_name(name: &str) -> Option<&'static FormatInfo> {
        FORMATS.iter().find(|f| f.gst_name == name)
    }

    /// The format with this V4L2 fourcc.
    pub fn from_fourcc(code: u32) -> Option<&'static FormatInfo> {
        FORMATS.iter().find(|f| f.fourcc == code)
    }

    /// `YUYV (YUY2)`: how formats are named in messages.
    pub fn describe(&self) -> String {
        format!("{} ({})", fourcc_str(self.fourcc), self.gst_name)
    }

    /// The smallest `bytesperline` of the first plane for this width.
    pub fn min_bytes_per_line(&self, width: u32) -> u32 {
        match self.layout {
            Layout::Packed { bytes_per_pixel } => width * bytes_per_pixel,
            Layout::Packed422 => width * 2,
            Layout::Planar420 | Layout::SemiPlanar420 => width,
        }
    }

    /// Checks the size constraints of the format (chroma subsampling needs even sizes; browsers
    /// refuse odd sizes for 4:2:0 anyway). The error says what to change.
    pub fn check_size(&self, width: u32, height: u32) -> Result<(), String> {
        if width == 0 || height == 0 {
            return Err(format!("invalid frame size {width}x{height}"));
        }
        let (even_w, even_h) = match self.layout {
            Layout::Packed { .. } => (false, false),
            Layout::Packed422 => (true, false),
            Layout::Planar420 | Layout::SemiPlanar420 => (true, true),
        };
        if even_w && !width.is_multiple_of(2) {
            return Err(format!(
                "odd width {width}: {} needs an even width (V4L2 readers and browsers refuse odd \
                 widths); scale to {}x{height} (videoscale ! video/x-raw,width={}) or pick a \
                 packed RGB format",
                self.describe(),
                width + 1,
                width + 1
            ));
        }
        if even_h && !height.is_multiple_of(2) {
            return Err(format!(
                "odd height {height}: {} needs an even height; scale to {width}x{} \
                 (videoscale ! video/x-raw,height={})",
                self.describe(),
                height + 1,
                height + 1
            ));
        }
        Ok(())
    }
}

/// One plane of a V4L2 single-buffer frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlaneLayout {
    /// Offset of the plane from the start of the frame.
    pub offset: usize,
    /// Bytes from one row to the next.
    pub stride: usize,
    /// Bytes of pixel data in a row (≤ stride).
    pub row_bytes: usize,
    /// Number of rows.
    pub rows: usize,
}

impl PlaneLayout {
    const fn new(offset: usize, stride: usize, row_bytes: usize, rows: usize) -> PlaneLayout {
        PlaneLayout {
            offset,
            stride,
            row_bytes,
            rows,
        }
    }
}

/// Where the planes of a frame are in a V4L2 buffer, and its exact size (`bytesused`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameLayout {
    pub format: &'static FormatInfo,
    pub width: u32,
    pub height: u32,
    pub planes: Vec<PlaneLayout>,
    /// The exact image size: what `bytesused` must say (never the page-rounded buffer length).
    pub size: usize,
}

impl FrameLayout {
    /// The layout for `bytes_per_line` (0 = the tightest, as v4l2loopback computes it).
    pub fn new(
        format: &'static FormatInfo,
        width: u32,
        height: u32,
        bytes_per_line: u32,
    ) -> FrameLayout {
        let bpl = bytes_per_line.max(format.min_bytes_per_line(width)) as usize;
        let (w, h) = (width as usize, height as usize);
        let planes = match format.layout {
            Layout::Packed { bytes_per_pixel } => {
                vec![PlaneLayout::new(0, bpl, w * bytes_per_pixel as usize, h)]
            }
            Layout::Packed422 => vec![PlaneLayout::new(0, bpl, w * 2, h)],
            Layout::Planar420 => {
                let (cw, ch, cs) = (w.div_ceil(2), h.div_ceil(2), bpl / 2);
                vec![
                    PlaneLayout::new(0, bpl, w, h),
                    PlaneLayout::new(bpl * h, cs, cw, ch),
                    PlaneLayout::new(bpl * h + cs * ch, cs, cw, ch),
                ]
            }
            Layout::SemiPlanar420 => vec![
                PlaneLayout::new(0, bpl, w, h),
                PlaneLayout::new(bpl * h, bpl, 2 * w.div_ceil(2), h.div_ceil(2)),
            ],
        };
        let size = planes
            .iter()
            .map(|p| p.offset + p.stride * p.rows)
            .max()
            .unwrap_or(0);
        FrameLayout {
            format,
            width,
            height,
            planes,
            size,
        }
    }

    /// `YUYV (YUY2) 320x240`.
    pub fn describe(&self) -> String {
        format!("{} {}x{}", self.format.describe(), self.width, self.height)
    }

    /// Copies a frame given as `(plane data, stride)` per plane into `dst` (the V4L2 buffer),
    /// row by row where strides differ, one `memcpy` per plane where they match.
    pub fn copy_into(&self, src: &[(&[u8], usize)], dst: &mut [u8]) -> Result<(), String> {
        if src.len() != self.planes.len() {
            return Err(format!(
                "{} planes given, {} has {}",
                src.len(),
                self.describe(),
                self.planes.len()
            ));
        }
        if dst.len() < self.size {
            return Err(format!(
                "buffer of {} bytes is smaller than the frame ({} bytes)",
                dst.len(),
                self.size
            ));
        }
        for (plane, &(data, stride)) in self.planes.iter().zip(src) {
            let needed = stride * (plane.rows - 1) + plane.row_bytes;
            if stride < plane.row_bytes || data.len() < needed {
                return Err(format!(
                    "plane of {} bytes (stride {stride}) too small for {} rows of {} bytes",
                    data.len(),
                    plane.rows,
                    plane.row_bytes
                ));
            }
            let out = &mut dst[plane.offset..plane.offset + plane.stride * plane.rows];
            if stride == plane.stride && data.len() >= plane.stride * plane.rows {
                out.copy_from_slice(&data[..plane.stride * plane.rows]);
            } else {
                for row in 0..plane.rows {
                    let s = &data[row * stride..row * stride + plane.row_bytes];
                    out[row * plane.stride..row * plane.stride + plane.row_bytes]
                        .copy_from_slice(s);
                }
            }
        }
        Ok(())
    }

    /// A frame of one solid colour (`0xRRGGBB`) in this layout (BT.601 limited range for YUV).
    pub fn solid_color(&self, rgb: u32) -> Vec<u8> {
        let (r, g, b) = (
            ((rgb >> 16) & 0xff) as i32,
            ((rgb >> 8) & 0xff) as i32,
            (rgb & 0xff) as i32,
        );
        let y = (((66 * r + 129 * g + 25 * b + 128) >> 8) + 16) as u8;
        let u = (((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128) as u8;
        let v = (((112 * r - 94 * g - 18 * b + 128) >> 8) + 128) as u8;
        let gray = ((77 * r + 150 * g + 29 * b + 128) >> 8) as u8;
        let value = |c: char| match c {
            'Y' if self.format.components == "Y" => gray,
            'Y' => y,
            'U' => u,
            'V' => v,
            'R' => r as u8,
            'G' => g as u8,
            'B' => b as u8,
            _ => 0xff,
        };
        let mut out = vec![0u8; self.size];
        match self.format.layout {
            Layout::Packed { .. } | Layout::Packed422 => {
                let pattern: Vec<u8> = self.format.components.chars().map(value).collect();
                let p = self.planes[0];
                for row in 0..p.rows {
                    let line = &mut out[p.offset + row * p.stride..][..p.row_bytes];
                    for (i, byte) in line.iter_mut().enumerate() {
                        *byte = pattern[i % pattern.len()];
                    }
                }
            }
            Layout::Planar420 => {
                let comps: Vec<u8> = self.format.components.chars().map(value).collect();
                for (p, c) in self.planes.iter().zip(comps) {
                    out[p.offset..p.offset + p.stride * p.rows].fill(c);
                }
            }
            Layout::SemiPlanar420 => {
                let p0 = self.planes[0];
                out[p0.offset..p0.offset + p0.stride * p0.rows].fill(y);
                let p1 = self.planes[1];
                for (i, byte) in out[p1.offset..p1.offset + p1.stride * p1.rows]
                    .iter_mut()
                    .enumerate()
                {
                    *byte = if i % 2 == 0 { u } else { v };
                }
            }
        }
        out
    }
}

/// Parses a placeholder colour: `#rrggbb`, `0xrrggbb`, `rrggbb` or a few names.
pub fn parse_color(s: &str) -> Option<u32> {
    let s = s.trim();
    let named = match s.to_ascii_lowercase().as_str() {
        "black" => Some(0x000000),
        "white" => Some(0xffffff),
        "gray" | "grey" => Some(0x808080),
        "red" => Some(0xff0000),
        "green" => Some(0x00ff00),
        "blue" => Some(0x0000ff),
        _ => None,
    };
    if named.is_some() {
        return named;
    }
    let hex = s
        .strip_prefix('#')
        .or_else(|| s.strip_prefix("0x"))
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    if hex.len() == 6 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        u32::from_str_radix(hex, 16).ok()
    } else {
        None
    }
}

/// What is wrong with the format the driver set (`VIDIOC_S_FMT` answers with what it made of the
/// request, or `EBUSY`): decided here, worded by [`DriverFormatProblem::message`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriverFormatProblem {
    /// Another user (a streaming reader, another writer, `keep_format`) fixed the device to this
    /// format (`None`: not known).
    Locked(Option<PixFormat>),
    /// The right format, but the size was clamped to the device's `max_width`/`max_height`.
    SizeLimited { width: u32, height: u32 },
    /// The driver chose another format.
    Unsupported(PixFormat),
}

/// Compares the format the driver set (`got`) with the request; `locked` is the format the
/// device is fixed to by another user, if any (see `LoopbackDevice::locked_format`).
pub fn check_driver_format(
    format: &FormatInfo,
    width: u32,
    height: u32,
    got: &PixFormat,
    locked: Option<PixFormat>,
) -> Result<(), DriverFormatProblem> {
    if got.pixelformat == format.fourcc && got.width == width && got.height == height {
        return Ok(());
    }
    Err(match locked {
        Some(l) => DriverFormatProblem::Locked(Some(l)),
        None if got.pixelformat == format.fourcc => DriverFormatProblem::SizeLimited {
            width: got.width,
            height: got.height,
        },
        None => DriverFormatProblem::Unsupported(*got),
    })
}

impl DriverFormatProblem {
    /// The message for `device` when the pipeline sends `requested` (`YU12 (I420) 640x480`):
    /// what holds the device and the three ways out.
    pub fn message(&self, device: &Path, requested: &str) -> String {
        let d = device.display();
        match self {
            DriverFormatProblem::Locked(locked) => {
                let locked_text = locked
                    .map(|l| l.describe())
                    .unwrap_or_else(|| "another format".into());
                let convert = locked
                    .and_then(|l| {
                        let f = FormatInfo::from_fourcc(l.pixelformat)?;
                        Some(format!(
                            "videoconvert ! videoscale ! video/x-raw,format={},width={},height={} ! ",
                            f.gst_name, l.width, l.height
                        ))
                    })
                    .unwrap_or_default();
                format!(
                    "{d} is locked to {locked_text} by a reader that is still streaming (with \
                     v4l2loopback 0.12.x: by any program that keeps the device open), or by \
                     another writer, or keep_format; this pipeline sends {requested}. Stop the reader \
                     first, convert to the locked format ({convert}v4l2loopsink), or set \
                     allow-format-lock=true to convert automatically"
                )
            }
            DriverFormatProblem::SizeLimited { width, height } => format!(
                "{d} cannot take {requested}: the device is limited to {width}x{height} \
                 (v4l2loopback max_width/max_height); reload the module with larger max_width= \
                 max_height= (or create the device with larger max-width/max-height), or scale \
                 down (videoscale ! video/x-raw,width=...,height=...)"
            ),
            DriverFormatProblem::Unsupported(chosen) => format!(
                "{d} does not support {requested} (the driver chose {}); convert to YUY2 or I420",
                chosen.describe()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_mapping_round_trips() {
        for f in FORMATS {
            assert_eq!(FormatInfo::from_gst_name(f.gst_name), Some(f));
            assert_eq!(FormatInfo::from_fourcc(f.fourcc), Some(f));
        }
        assert_eq!(fourcc_str(fourcc(b"YUYV")), "YUYV");
        assert_eq!(
            FormatInfo::from_gst_name("YUY2").unwrap().fourcc,
            0x5659_5559
        );
        assert_eq!(
            fourcc_str(FormatInfo::from_gst_name("I420").unwrap().fourcc),
            "YU12"
        );
        assert_eq!(
            fourcc_str(FormatInfo::from_gst_name("BGRx").unwrap().fourcc),
            "BGR4"
        );
        assert!(FormatInfo::from_gst_name("P010_10LE").is_none());
    }

    #[test]
    fn frame_sizes_match_the_driver() {
        let f = |n| FormatInfo::from_gst_name(n).unwrap();
        // 320x240 YUY2: 153600 bytes, 37.5 pages (v4l2loopback pads the buffer to 155648).
        let l = FrameLayout::new(f("YUY2"), 320, 240, 0);
        assert_eq!(l.size, 153_600);
        assert_eq!(l.planes[0].stride, 640);
        let l = FrameLayout::new(f("I420"), 320, 180, 320);
        assert_eq!(l.size, 320 * 180 * 3 / 2);
        assert_eq!(l.planes[1].offset, 320 * 180);
        assert_eq!(l.planes[2].offset, 320 * 180 + 160 * 90);
        assert_eq!(l.planes[2].stride, 160);
        let l = FrameLayout::new(f("NV12"), 256, 256, 0);
        assert_eq!(l.size, 256 * 256 * 3 / 2);
        assert_eq!(l.planes[1].row_bytes, 256);
        assert_eq!(FrameLayout::new(f("RGB"), 322, 10, 0).size, 322 * 3 * 10);
        assert_eq!(
            FrameLayout::new(f("BGRx"), 1280, 720, 0).size,
            1280 * 720 * 4
        );
        // A driver stride larger than the tightest one is honoured.
        let l = FrameLayout::new(f("GRAY8"), 10, 4, 16);
        assert_eq!((l.planes[0].stride, l.size), (16, 64));
    }

    #[test]
    fn odd_sizes_are_refused_for_subsampled_formats() {
        let i420 = FormatInfo::from_gst_name("I420").unwrap();
        let e = i420.check_size(321, 240).unwrap_err();
        assert!(e.contains("odd width 321"), "{e}");
        assert!(e.contains("YU12 (I420) needs an even width"), "{e}");
        assert!(e.contains("width=322"), "{e}");
        let nv12 = FormatInfo::from_gst_name("NV12").unwrap();
        assert!(
            nv12.check_size(320, 239)
                .unwrap_err()
                .contains("odd height 239")
        );
        let yuy2 = FormatInfo::from_gst_name("YUY2").unwrap();
        assert!(yuy2.check_size(321, 239).unwrap_err().contains("odd width"));
        assert!(yuy2.check_size(320, 239).is_ok());
        let rgb = FormatInfo::from_gst_name("RGB").unwrap();
        assert!(rgb.check_size(321, 239).is_ok());
    }

    #[test]
    fn copy_repacks_gstreamer_strides() {
        // RGB 3x2: GStreamer pads rows to 4-byte strides (12), V4L2 packs them (9).
        let l = FrameLayout::new(FormatInfo::from_gst_name("RGB").unwrap(), 3, 2, 0);
        let src: Vec<u8> = (0..24).collect();
        let mut dst = vec![0xaa; l.size + 3];
        l.copy_into(&[(&src, 12)], &mut dst).unwrap();
        assert_eq!(
            &dst[..18],
            &[
                0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 13, 14, 15, 16, 17, 18, 19, 20
            ]
        );
        assert_eq!(dst[18], 0xaa);
        // I420 2x2 with matching strides copies plane by plane.
        let l = FrameLayout::new(FormatInfo::from_gst_name("I420").unwrap(), 2, 2, 0);
        let mut dst = vec![0; l.size];
        l.copy_into(&[(&[1, 2, 3, 4], 2), (&[5], 1), (&[6], 1)], &mut dst)
            .unwrap();
        assert_eq!(dst, [1, 2, 3, 4, 5, 6]);
        // Too little data is an error, not a panic.
        assert!(
            l.copy_into(&[(&[1, 2], 2), (&[5], 1), (&[6], 1)], &mut dst)
                .is_err()
        );
        assert!(l.copy_into(&[(&[1, 2, 3, 4], 2)], &mut dst).is_err());
    }

    #[test]
    fn solid_colors() {
        let f = |n| FormatInfo::from_gst_name(n).unwrap();
        let yuy2 = FrameLayout::new(f("YUY2"), 4, 1, 0).solid_color(0xffffff);
        assert_eq!(yuy2, [235, 128, 235, 128, 235, 128, 235, 128]);
        let bgrx = FrameLayout::new(f("BGRx"), 1, 1, 0).solid_color(0x102030);
        assert_eq!(bgrx, [0x30, 0x20, 0x10, 0xff]);
        let i420 = FrameLayout::new(f("I420"), 2, 2, 0).solid_color(0x000000);
        assert_eq!(i420, [16, 16, 16, 16, 128, 128]);
        let nv12 = FrameLayout::new(f("NV12"), 2, 2, 0).solid_color(0x0000ff);
        assert_eq!(&nv12[4..], &[240, 110]);
        assert_eq!(
            FrameLayout::new(f("GRAY8"), 1, 1, 0).solid_color(0xffffff),
            [255]
        );
    }

    #[test]
    fn colors_parse() {
        assert_eq!(parse_color("#00ff80"), Some(0x00ff80));
        assert_eq!(parse_color("0x123456"), Some(0x123456));
        assert_eq!(parse_color("Black"), Some(0));
        assert_eq!(parse_color("/tmp/image.png"), None);
        assert_eq!(parse_color("#12345"), None);
    }

    #[test]
    fn driver_format_answers_are_judged() {
        let i420 = FormatInfo::from_gst_name("I420").unwrap();
        let yuy2 = FormatInfo::from_gst_name("YUY2").unwrap();
        let pix = |f: &FormatInfo, width, height| PixFormat {
            pixelformat: f.fourcc,
            width,
            height,
            ..Default::default()
        };
        assert_eq!(
            check_driver_format(i420, 640, 480, &pix(i420, 640, 480), None),
            Ok(())
        );
        // 0.12.7 answers a locked device with the old format, no error.
        let locked = pix(yuy2, 320, 240);
        let e = check_driver_format(i420, 640, 480, &locked, Some(locked)).unwrap_err();
        let m = e.message(Path::new("/dev/video12"), "YU12 (I420) 640x480");
        assert!(
            m.starts_with("/dev/video12 is locked to YUYV (YUY2) 320x240"),
            "{m}"
        );
        assert!(m.contains("this pipeline sends YU12 (I420) 640x480"), "{m}");
        assert!(
            m.contains("video/x-raw,format=YUY2,width=320,height=240 ! v4l2loopsink"),
            "{m}"
        );
        assert!(m.contains("allow-format-lock=true"), "{m}");
        let e = check_driver_format(yuy2, 1280, 720, &pix(yuy2, 640, 480), None).unwrap_err();
        assert_eq!(
            e,
            DriverFormatProblem::SizeLimited {
                width: 640,
                height: 480
            }
        );
        let m = e.message(Path::new("/dev/video21"), "YUYV (YUY2) 1280x720");
        assert!(
            m.contains(
                "/dev/video21 cannot take YUYV (YUY2) 1280x720: the device is limited to 640x480"
            ),
            "{m}"
        );
        let e = check_driver_format(i420, 64, 64, &pix(yuy2, 64, 64), None).unwrap_err();
        let m = e.message(Path::new("/dev/video11"), "YU12 (I420) 64x64");
        assert!(m.contains("the driver chose YUYV (YUY2) 64x64"), "{m}");
        let m = DriverFormatProblem::Locked(None).message(Path::new("/dev/video12"), "x");
        assert!(m.contains("is locked to another format"), "{m}");
    }
}
