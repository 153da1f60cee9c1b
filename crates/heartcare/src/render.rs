//! Printed 12-lead ECG images: the standard paper layouts (6 x 2, and 3 x 4 with a lead II rhythm
//! strip) on red millimetre grid paper, calibrated in mm/s and mm/mV, with calibration pulses and
//! lead labels, rendered to an RGB `[3, H, W]` f32 buffer at the vision encoder's size and to PNG.
//!
//! Drawing happens on a "paper" canvas at `px_per_mm` pixels per millimetre, where the geometry is
//! exact (grid pitch, pulse height, panel boxes); the paper is then resampled to the requested
//! output size with an antialiasing (area-scaled triangle) filter. Pixel centres sit at integer
//! coordinates: a point at `x` mm lies at continuous pixel coordinate `x * px_per_mm`.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use beatlab_ecg::{Record, STANDARD_LEADS};

/// Errors of rendering and of PNG encoding/decoding.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A configuration field is out of its valid range.
    #[error("render config: field `{field}` {reason}")]
    BadConfig { field: &'static str, reason: String },
    /// The record has no samples or a malformed shape, so nothing can be drawn.
    #[error("record `{record}`: {reason}")]
    BadRecord { record: String, reason: String },
    /// PNG encoding or decoding failed.
    #[error("PNG {context}: {message}")]
    Png { context: String, message: String },
    /// Reading or writing an image file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where the twelve leads go on the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// Limb leads I..aVF in the left column (first half of the time span), V1..V6 in the right
    /// column (second half), as in the HeartcareGPT images.
    SixByTwo,
    /// Four columns of a quarter of the time span each (I/II/III, aVR/aVL/aVF, V1-V3, V4-V6),
    /// plus a full-length rhythm strip underneath.
    ThreeByFourRhythm,
}

/// How a record is drawn and at what size the result is delivered.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RenderConfig {
    pub layout: Layout,
    /// Output width in pixels (the vision encoder's input size).
    pub width: usize,
    /// Output height in pixels.
    pub height: usize,
    /// Drawing scale of the paper canvas before resampling to `width` x `height`.
    pub px_per_mm: f32,
    /// Draw the red millimetre grid.
    pub grid: bool,
    /// Draw lead labels and the footer (record id, speed, gain).
    pub labels: bool,
    /// Draw a 1 mV calibration pulse at the start of every row.
    pub calibration: bool,
    /// Paper speed; 25 mm/s is the clinical standard.
    pub speed_mm_per_s: f32,
    /// Amplitude scale; 10 mm/mV is the clinical standard.
    pub gain_mm_per_mv: f32,
    /// Time span of the page in seconds (10 s is one standard resting ECG). Records shorter than
    /// `start_s + duration_s` leave the rest of their panels blank.
    pub duration_s: f32,
    /// Time of the record shown at the left edge of the page.
    pub start_s: f32,
    /// Height of one row of panels. 30 mm leaves 2 mV above and 1 mV below the baseline.
    pub row_height_mm: f32,
    /// Blank paper (grid only) around the traces; also holds the footer text.
    pub margin_mm: f32,
    /// Pen width of traces and calibration pulses.
    pub trace_width_mm: f32,
    /// Clip each trace to its own panel, so that a tall QRS never paints over a neighbouring
    /// lead; encoders then see each lead only where its label says it is.
    pub clip_to_panel: bool,
    /// Lead of the rhythm strip in the 3 x 4 layout.
    pub rhythm_lead: String,
}

impl Default for RenderConfig {
    fn default() -> Self {
        Self::six_by_two(384, 384)
    }
}

impl RenderConfig {
    /// The 6 x 2 layout at 25 mm/s and 10 mm/mV, delivered at `width` x `height`.
    pub fn six_by_two(width: usize, height: usize) -> Self {
        Self {
            layout: Layout::SixByTwo,
            width,
            height,
            // 4 px/mm keeps the 1 mm grid resolvable and is ~3x the 384 px output, so the
            // resampling filter has real area to average.
            px_per_mm: 4.0,
            grid: true,
            labels: true,
            calibration: true,
            speed_mm_per_s: 25.0,
            gain_mm_per_mv: 10.0,
            duration_s: 10.0,
            start_s: 0.0,
            row_height_mm: 30.0,
            margin_mm: 5.0,
            trace_width_mm: 0.3,
            clip_to_panel: true,
            rhythm_lead: "II".to_string(),
        }
    }

    /// The 3 x 4 + rhythm strip layout; rows are taller (40 mm) as on a printed A4 page.
    pub fn three_by_four(width: usize, height: usize) -> Self {
        Self {
            layout: Layout::ThreeByFourRhythm,
            row_height_mm: 40.0,
            ..Self::six_by_two(width, height)
        }
    }

    fn validate(&self) -> Result<(), RenderError> {
        let positive = [
            ("px_per_mm", self.px_per_mm),
            ("speed_mm_per_s", self.speed_mm_per_s),
            ("gain_mm_per_mv", self.gain_mm_per_mv),
            ("duration_s", self.duration_s),
            ("row_height_mm", self.row_height_mm),
            ("trace_width_mm", self.trace_width_mm),
        ];
        for (field, value) in positive {
            if !(value.is_finite() && value > 0.0) {
                return Err(RenderError::BadConfig {
                    field,
                    reason: format!("must be a positive finite number, got {value}"),
                });
            }
        }
        for (field, value) in [("margin_mm", self.margin_mm), ("start_s", self.start_s)] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(RenderError::BadConfig {
                    field,
                    reason: format!("must be a finite number >= 0, got {value}"),
                });
            }
        }
        for (field, value) in [("width", self.width), ("height", self.height)] {
            if value == 0 || value > MAX_SIDE_PX {
                return Err(RenderError::BadConfig {
                    field,
                    reason: format!("must be in 1..={MAX_SIDE_PX} pixels, got {value}"),
                });
            }
        }
        Ok(())
    }
}

/// Largest side of any canvas; keeps a typo in `px_per_mm` from allocating gigabytes.
const MAX_SIDE_PX: usize = 16_384;

/// Width of the calibration column: 2.5 mm lead-in, 5 mm (0.2 s) pulse, 2.5 mm lead-out.
const CALIBRATION_COLUMN_MM: f32 = 10.0;

const PAPER: [f32; 3] = [1.0, 0.976, 0.965];
const GRID_THIN: [f32; 3] = [0.98, 0.78, 0.78];
const GRID_THICK: [f32; 3] = [0.91, 0.47, 0.47];
const INK: [f32; 3] = [0.0, 0.0, 0.0];

/// An RGB image with channels first (`[3, H, W]`), values in `[0, 1]`: the layout a vision
/// encoder takes (normalisation, e.g. SigLIP's mean/std 0.5, is the encoder's business).
#[derive(Debug, Clone, PartialEq)]
pub struct EcgImage {
    pub width: usize,
    pub height: usize,
    /// `3 * height * width` values: the R plane, then G, then B, each row-major.
    pub data: Vec<f32>,
}

impl EcgImage {
    /// An image filled with one colour.
    pub fn filled(width: usize, height: usize, rgb: [f32; 3]) -> Self {
        let mut data = Vec::with_capacity(3 * width * height);
        for value in rgb {
            data.extend(std::iter::repeat_n(value, width * height));
        }
        Self {
            width,
            height,
            data,
        }
    }

    /// The `[3, H, W]` tensor-ready buffer.
    pub fn chw(&self) -> &[f32] {
        &self.data
    }

    /// Shape as `[channels, height, width]`.
    pub fn shape(&self) -> [usize; 3] {
        [3, self.height, self.width]
    }

    /// The RGB value of pixel (`x`, `y`).
    pub fn pixel(&self, x: usize, y: usize) -> [f32; 3] {
        let plane = self.width * self.height;
        let i = y * self.width + x;
        [self.data[i], self.data[plane + i], self.data[2 * plane + i]]
    }

    fn set_pixel(&mut self, x: usize, y: usize, rgb: [f32; 3]) {
        let plane = self.width * self.height;
        let i = y * self.width + x;
        self.data[i] = rgb[0];
        self.data[plane + i] = rgb[1];
        self.data[2 * plane + i] = rgb[2];
    }

    /// Interleaved 8-bit RGB (`H * W * 3` bytes), the way PNG stores it.
    pub fn to_rgb8(&self) -> Vec<u8> {
        let plane = self.width * self.height;
        let mut out = Vec::with_capacity(3 * plane);
        for i in 0..plane {
            for c in 0..3 {
                out.push((self.data[c * plane + i].clamp(0.0, 1.0) * 255.0).round() as u8);
            }
        }
        out
    }

    /// The inverse of [`EcgImage::to_rgb8`].
    pub fn from_rgb8(width: usize, height: usize, rgb: &[u8]) -> Result<Self, RenderError> {
        let plane = width * height;
        if rgb.len() != 3 * plane {
            return Err(RenderError::Png {
                context: "pixel buffer".into(),
                message: format!(
                    "expected {} bytes for {width}x{height} RGB, got {}",
                    3 * plane,
                    rgb.len()
                ),
            });
        }
        let mut data = vec![0.0; 3 * plane];
        for (i, px) in rgb.chunks_exact(3).enumerate() {
            for c in 0..3 {
                data[c * plane + i] = f32::from(px[c]) / 255.0;
            }
        }
        Ok(Self {
            width,
            height,
            data,
        })
    }

    /// 8-bit RGB PNG bytes.
    pub fn encode_png(&self) -> Result<Vec<u8>, RenderError> {
        let png_error = |e: png::EncodingError| RenderError::Png {
            context: "encoding".into(),
            message: e.to_string(),
        };
        let mut bytes = Vec::new();
        {
            let mut encoder = png::Encoder::new(&mut bytes, self.width as u32, self.height as u32);
            encoder.set_color(png::ColorType::Rgb);
            encoder.set_depth(png::BitDepth::Eight);
            let mut writer = encoder.write_header().map_err(png_error)?;
            writer
                .write_image_data(&self.to_rgb8())
                .map_err(png_error)?;
            writer.finish().map_err(png_error)?;
        }
        Ok(bytes)
    }

    /// Decodes an 8-bit RGB or RGBA PNG (alpha is dropped).
    pub fn decode_png(bytes: &[u8]) -> Result<Self, RenderError> {
        let png_error = |e: png::DecodingError| RenderError::Png {
            context: "decoding".into(),
            message: e.to_string(),
        };
        let mut reader = png::Decoder::new(Cursor::new(bytes))
            .read_info()
            .map_err(png_error)?;
        let size = reader
            .output_buffer_size()
            .ok_or_else(|| RenderError::Png {
                context: "decoding".into(),
                message: "image too large".into(),
            })?;
        let mut buf = vec![0; size];
        let info = reader.next_frame(&mut buf).map_err(png_error)?;
        let (width, height) = (info.width as usize, info.height as usize);
        let rgb: Vec<u8> = match (info.color_type, info.bit_depth) {
            (png::ColorType::Rgb, png::BitDepth::Eight) => buf[..3 * width * height].to_vec(),
            (png::ColorType::Rgba, png::BitDepth::Eight) => buf[..4 * width * height]
                .chunks_exact(4)
                .flat_map(|px| [px[0], px[1], px[2]])
                .collect(),
            (color, depth) => {
                return Err(RenderError::Png {
                    context: "decoding".into(),
                    message: format!("unsupported colour type {color:?} at depth {depth:?}"),
                });
            }
        };
        Self::from_rgb8(width, height, &rgb)
    }

    /// Writes the image as PNG.
    pub fn write_png(&self, path: impl AsRef<Path>) -> Result<(), RenderError> {
        let path = path.as_ref();
        let bytes = self.encode_png()?;
        beatlab_fsio::write_atomically(path, &bytes).map_err(|source| RenderError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Reads a PNG file.
    pub fn read_png(path: impl AsRef<Path>) -> Result<Self, RenderError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| RenderError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::decode_png(&bytes)
    }

    /// Resamples to `width` x `height` with a triangle filter widened by the scale factor
    /// (area-averaging when shrinking, bilinear when enlarging), separably per axis.
    pub fn resize(&self, width: usize, height: usize) -> EcgImage {
        let horizontal = resample_weights(self.width, width);
        let vertical = resample_weights(self.height, height);
        let mut out = EcgImage::filled(width, height, [0.0; 3]);
        let mut row_pass = vec![0.0f32; width * self.height];
        for c in 0..3 {
            let src = &self.data[c * self.width * self.height..(c + 1) * self.width * self.height];
            for y in 0..self.height {
                let src_row = &src[y * self.width..(y + 1) * self.width];
                for (x, (first, weights)) in horizontal.iter().enumerate() {
                    row_pass[y * width + x] = weights
                        .iter()
                        .enumerate()
                        .map(|(k, w)| w * src_row[first + k])
                        .sum();
                }
            }
            let dst = &mut out.data[c * width * height..(c + 1) * width * height];
            for (y, (first, weights)) in vertical.iter().enumerate() {
                for x in 0..width {
                    dst[y * width + x] = weights
                        .iter()
                        .enumerate()
                        .map(|(k, w)| w * row_pass[(first + k) * width + x])
                        .sum();
                }
            }
        }
        out
    }

    /// The sub-image `[x0, x1) x [y0, y1)` (clamped to the image).
    pub fn crop(&self, x0: usize, y0: usize, x1: usize, y1: usize) -> EcgImage {
        let (x1, y1) = (x1.min(self.width), y1.min(self.height));
        let (x0, y0) = (x0.min(x1), y0.min(y1));
        let mut out = EcgImage::filled(x1 - x0, y1 - y0, [0.0; 3]);
        for y in y0..y1 {
            for x in x0..x1 {
                out.set_pixel(x - x0, y - y0, self.pixel(x, y));
            }
        }
        out
    }
}

/// For each output index: the first source index and normalised filter weights.
fn resample_weights(src_len: usize, dst_len: usize) -> Vec<(usize, Vec<f32>)> {
    let scale = src_len as f64 / dst_len as f64;
    let support = scale.max(1.0);
    (0..dst_len)
        .map(|i| {
            // Centre of output pixel i in source coordinates (pixel k spans [k, k+1)).
            let centre = (i as f64 + 0.5) * scale;
            let first = ((centre - support).floor().max(0.0)) as usize;
            let last = ((centre + support).ceil() as usize).min(src_len);
            let mut weights: Vec<f32> = (first..last)
                .map(|k| (1.0 - ((k as f64 + 0.5 - centre) / support).abs()).max(0.0) as f32)
                .collect();
            let total: f32 = weights.iter().sum();
            if total > 0.0 {
                weights.iter_mut().for_each(|w| *w /= total);
            } else {
                // Degenerate tiny source: fall back to nearest neighbour.
                let nearest = (centre.floor() as usize).min(src_len - 1);
                return (nearest, vec![1.0]);
            }
            (first, weights)
        })
        .collect()
}

/// A rectangle in paper pixels (continuous coordinates, pixel centres at integers).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PixelRect {
    pub x0: f32,
    pub y0: f32,
    pub x1: f32,
    pub y1: f32,
}

impl PixelRect {
    /// Whether the pixel centred at (`x`, `y`) lies inside.
    pub fn contains(&self, x: f32, y: f32) -> bool {
        x >= self.x0 && x <= self.x1 && y >= self.y0 && y <= self.y1
    }
}

/// Where one lead was drawn on the paper.
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    pub lead: String,
    /// The panel's box: its time segment horizontally, its row vertically.
    pub rect: PixelRect,
    /// Row of the 0 mV line.
    pub baseline_y: f32,
    /// Time segment of the record shown, in seconds.
    pub t0_s: f32,
    pub t1_s: f32,
}

/// Where a calibration pulse was drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CalibrationPulse {
    /// Horizontal extent of the raised (1 mV) part.
    pub x0: f32,
    pub x1: f32,
    pub baseline_y: f32,
    /// Row of the 1 mV plateau.
    pub top_y: f32,
}

/// The drawn paper at `px_per_mm`, with the geometry of what is on it.
#[derive(Debug, Clone)]
pub struct Paper {
    pub image: EcgImage,
    pub px_per_mm: f32,
    pub panels: Vec<Panel>,
    pub calibration: Vec<CalibrationPulse>,
}

impl Paper {
    /// The panel of a lead (the first, when the lead is also the rhythm strip).
    pub fn panel(&self, lead: &str) -> Option<&Panel> {
        self.panels.iter().find(|p| p.lead == lead)
    }
}

/// Which leads go in which row and column, and the rhythm strip if any.
struct PageLayout {
    columns: usize,
    /// `grid[row][column]` lead names.
    grid: Vec<Vec<&'static str>>,
    rhythm: bool,
}

fn page_layout(layout: Layout) -> PageLayout {
    match layout {
        Layout::SixByTwo => PageLayout {
            columns: 2,
            grid: vec![
                vec!["I", "V1"],
                vec!["II", "V2"],
                vec!["III", "V3"],
                vec!["aVR", "V4"],
                vec!["aVL", "V5"],
                vec!["aVF", "V6"],
            ],
            rhythm: false,
        },
        Layout::ThreeByFourRhythm => PageLayout {
            columns: 4,
            grid: vec![
                vec!["I", "aVR", "V1", "V4"],
                vec!["II", "aVL", "V2", "V5"],
                vec!["III", "aVF", "V3", "V6"],
            ],
            rhythm: true,
        },
    }
}

/// The paper's geometry in millimetres, and its size in pixels.
struct Sheet {
    rows: usize,
    strip_mm: f32,
    column_mm: f32,
    trace_x0_mm: f32,
    height_mm: f32,
    width: usize,
    height: usize,
    /// From a row's top to its baseline: two thirds of the way down, snapped to a 5 mm line
    /// (R waves, upwards, need more room than S waves).
    baseline_offset_mm: f32,
}

impl Sheet {
    fn of(config: &RenderConfig, layout: &PageLayout) -> Result<Self, RenderError> {
        let ppm = config.px_per_mm;
        let rows = layout.grid.len() + usize::from(layout.rhythm);
        let strip_mm = config.duration_s * config.speed_mm_per_s;
        let trace_x0_mm = config.margin_mm + CALIBRATION_COLUMN_MM;
        let width_mm = trace_x0_mm + strip_mm + config.margin_mm;
        let height_mm = 2.0 * config.margin_mm + rows as f32 * config.row_height_mm;
        let width = (width_mm * ppm).ceil() as usize + 1;
        let height = (height_mm * ppm).ceil() as usize + 1;
        if width > MAX_SIDE_PX || height > MAX_SIDE_PX {
            return Err(RenderError::BadConfig {
                field: "px_per_mm",
                reason: format!(
                    "gives a {width}x{height} px paper, larger than {MAX_SIDE_PX} px on a side"
                ),
            });
        }
        let baseline_offset_mm = ((config.row_height_mm * 2.0 / 3.0) / 5.0).round() * 5.0;
        Ok(Sheet {
            rows,
            strip_mm,
            column_mm: strip_mm / layout.columns as f32,
            trace_x0_mm,
            height_mm,
            width,
            height,
            baseline_offset_mm: baseline_offset_mm.clamp(0.0, config.row_height_mm),
        })
    }

    /// The panels of `row`.
    fn cells<'a>(
        &self,
        row: usize,
        layout: &'a PageLayout,
        config: &'a RenderConfig,
    ) -> Vec<Cell<'a>> {
        if row >= layout.grid.len() {
            return vec![Cell {
                lead: config.rhythm_lead.as_str(),
                x0_mm: self.trace_x0_mm,
                x1_mm: self.trace_x0_mm + self.strip_mm,
                t0: config.start_s,
            }];
        }
        layout.grid[row]
            .iter()
            .enumerate()
            .map(|(col, lead)| {
                let x0 = self.trace_x0_mm + col as f32 * self.column_mm;
                let t0 = config.start_s + col as f32 * config.duration_s / layout.columns as f32;
                Cell {
                    lead,
                    x0_mm: x0,
                    x1_mm: x0 + self.column_mm,
                    t0,
                }
            })
            .collect()
    }
}

/// One lead's panel in a row: its left and right edge and the first second it shows.
struct Cell<'a> {
    lead: &'a str,
    x0_mm: f32,
    x1_mm: f32,
    t0: f32,
}

/// What is drawn on the paper besides the grid: the ink, and where each panel, pulse and
/// label went.
struct Drawing {
    ink: Coverage,
    pen_half_width: f32,
    panels: Vec<Panel>,
    calibration: Vec<CalibrationPulse>,
    labels: Vec<(String, f32, f32)>,
}

impl Drawing {
    /// Draws the cell's lead in the row at `row_top_mm`, with its label and the lead-change
    /// bar.
    fn panel(
        &mut self,
        record: &Record,
        config: &RenderConfig,
        sheet: &Sheet,
        cell: &Cell<'_>,
        row_top_mm: f32,
    ) {
        let Cell {
            lead,
            x0_mm,
            x1_mm,
            t0,
        } = *cell;
        let ppm = config.px_per_mm;
        let baseline_mm = row_top_mm + sheet.baseline_offset_mm;
        let t1 = t0 + (x1_mm - x0_mm) / config.speed_mm_per_s;
        let rect = PixelRect {
            x0: x0_mm * ppm,
            y0: row_top_mm * ppm,
            x1: x1_mm * ppm,
            y1: (row_top_mm + config.row_height_mm) * ppm,
        };
        let clip = if config.clip_to_panel {
            rect
        } else {
            self.ink.full_rect()
        };
        if let Some(signal) = record.lead(lead) {
            for run in panel_polylines(record.fs, signal, t0, t1) {
                let points: Vec<(f32, f32)> = run
                    .iter()
                    .map(|&(t, mv)| {
                        (
                            (x0_mm + (t - t0) * config.speed_mm_per_s) * ppm,
                            (baseline_mm - mv * config.gain_mm_per_mv) * ppm,
                        )
                    })
                    .collect();
                self.ink.polyline(&points, self.pen_half_width, clip);
            }
        }
        self.panels.push(Panel {
            lead: lead.to_string(),
            rect,
            baseline_y: baseline_mm * ppm,
            t0_s: t0,
            t1_s: t1,
        });
        self.labels.push((
            lead.to_string(),
            (x0_mm + 1.0) * ppm,
            (row_top_mm + 1.5) * ppm,
        ));
        // Lead-change marker as printers draw it: a short vertical bar at the boundary.
        if x0_mm > sheet.trace_x0_mm {
            let bar = [
                (x0_mm * ppm, (baseline_mm - 2.5) * ppm),
                (x0_mm * ppm, (baseline_mm + 2.5) * ppm),
            ];
            let full = self.ink.full_rect();
            self.ink.polyline(&bar, self.pen_half_width, full);
        }
    }

    /// The 1 mV calibration pulse at the start of a row whose baseline is at `baseline_mm`.
    fn calibration_pulse(&mut self, config: &RenderConfig, baseline_mm: f32) {
        let ppm = config.px_per_mm;
        let x = config.margin_mm + 2.5;
        let top_mm = baseline_mm - config.gain_mm_per_mv;
        let pulse = [
            (config.margin_mm, baseline_mm),
            (x, baseline_mm),
            (x, top_mm),
            (x + 5.0, top_mm),
            (x + 5.0, baseline_mm),
            (config.margin_mm + CALIBRATION_COLUMN_MM, baseline_mm),
        ];
        let points: Vec<(f32, f32)> = pulse.iter().map(|&(x, y)| (x * ppm, y * ppm)).collect();
        let full = self.ink.full_rect();
        self.ink.polyline(&points, self.pen_half_width, full);
        self.calibration.push(CalibrationPulse {
            x0: x * ppm,
            x1: (x + 5.0) * ppm,
            baseline_y: baseline_mm * ppm,
            top_y: top_mm * ppm,
        });
    }
}

/// Draws `record` on paper at `config.px_per_mm` (no resampling).
pub fn draw_paper(record: &Record, config: &RenderConfig) -> Result<Paper, RenderError> {
    config.validate()?;
    check_record(record)?;
    let layout = page_layout(config.layout);
    let ppm = config.px_per_mm;
    let sheet = Sheet::of(config, &layout)?;
    let mut image = EcgImage::filled(sheet.width, sheet.height, PAPER);
    if config.grid {
        draw_grid(&mut image, ppm);
    }
    let mut drawing = Drawing {
        ink: Coverage::new(sheet.width, sheet.height),
        pen_half_width: (config.trace_width_mm * ppm / 2.0).max(0.5),
        panels: Vec::new(),
        calibration: Vec::new(),
        labels: Vec::new(),
    };
    for row in 0..sheet.rows {
        let row_top_mm = config.margin_mm + row as f32 * config.row_height_mm;
        for cell in sheet.cells(row, &layout, config) {
            drawing.panel(record, config, &sheet, &cell, row_top_mm);
        }
        if config.calibration {
            drawing.calibration_pulse(config, row_top_mm + sheet.baseline_offset_mm);
        }
    }
    drawing.ink.composite(&mut image, INK);
    if config.labels {
        draw_labels(&mut image, record, config, &sheet, &drawing.labels);
    }
    Ok(Paper {
        image,
        px_per_mm: ppm,
        panels: drawing.panels,
        calibration: drawing.calibration,
    })
}

/// The lead names and the footer (record id, speed, gain).
fn draw_labels(
    image: &mut EcgImage,
    record: &Record,
    config: &RenderConfig,
    sheet: &Sheet,
    labels: &[(String, f32, f32)],
) {
    let ppm = config.px_per_mm;
    // Text cap height about 3 mm, in whole font pixels so glyphs stay crisp.
    let scale = ((3.0 * ppm) / 8.0).round().max(1.0) as usize;
    for (text, x, y) in labels {
        draw_text(image, text, x.round() as usize, y.round() as usize, scale);
    }
    let footer_y = ((sheet.height_mm - config.margin_mm + 1.0) * ppm).round() as usize;
    let footer = format!(
        "{}  {} mm/s  {} mm/mV",
        record.id, config.speed_mm_per_s, config.gain_mm_per_mv
    );
    draw_text(
        image,
        &footer,
        (config.margin_mm * ppm).round() as usize,
        footer_y,
        scale,
    );
}

/// Draws `record` and resamples it to `config.width` x `config.height` (aspect ratio is not
/// kept, as SigLIP's processor does not keep it either).
pub fn render(record: &Record, config: &RenderConfig) -> Result<EcgImage, RenderError> {
    let paper = draw_paper(record, config)?;
    Ok(paper.image.resize(config.width, config.height))
}

/// Twelve images, one per lead, in standard lead order: each panel of the 6 x 2 paper (with its label and grid) cut out
/// and resampled to `config.width` x `config.height` ("12-lead mode"). The layout field of
/// `config` is ignored.
pub fn render_lead_tiles(
    record: &Record,
    config: &RenderConfig,
) -> Result<Vec<(String, EcgImage)>, RenderError> {
    let six_by_two = RenderConfig {
        layout: Layout::SixByTwo,
        ..config.clone()
    };
    let paper = draw_paper(record, &six_by_two)?;
    let mut panels: Vec<&Panel> = paper.panels.iter().collect();
    // Standard lead order (I, II, ..., V6) rather than the page's row-major order.
    panels.sort_by_key(|p| {
        STANDARD_LEADS
            .iter()
            .position(|l| *l == p.lead)
            .unwrap_or(STANDARD_LEADS.len())
    });
    Ok(panels
        .into_iter()
        .map(|panel| {
            let r = panel.rect;
            let tile = paper.image.crop(
                r.x0.round() as usize,
                r.y0.round() as usize,
                r.x1.round() as usize + 1,
                r.y1.round() as usize + 1,
            );
            (panel.lead.clone(), tile.resize(config.width, config.height))
        })
        .collect())
}

fn check_record(record: &Record) -> Result<(), RenderError> {
    let bad = |reason: String| RenderError::BadRecord {
        record: record.id.clone(),
        reason,
    };
    if !(record.fs.is_finite() && record.fs > 0.0) {
        return Err(bad(format!(
            "sampling frequency must be positive, got {}",
            record.fs
        )));
    }
    if record.leads.len() != record.signals.len() {
        return Err(bad(format!(
            "{} lead names but {} signals",
            record.leads.len(),
            record.signals.len()
        )));
    }
    if record.is_empty() {
        return Err(bad("has no samples to draw".into()));
    }
    Ok(())
}

/// The samples of `signal` within `[t0, t1]` as (time s, mV) runs, split at non-finite samples.
fn panel_polylines(fs: f64, signal: &[f32], t0: f32, t1: f32) -> Vec<Vec<(f32, f32)>> {
    let first = ((f64::from(t0) * fs).ceil().max(0.0)) as usize;
    let last = ((f64::from(t1) * fs).floor() as usize).min(signal.len().saturating_sub(1));
    let mut runs = Vec::new();
    let mut run = Vec::new();
    for (n, &value) in signal.iter().enumerate().take(last + 1).skip(first) {
        if value.is_finite() {
            run.push(((n as f64 / fs) as f32, value));
        } else if !run.is_empty() {
            runs.push(std::mem::take(&mut run));
        }
    }
    if !run.is_empty() {
        runs.push(run);
    }
    runs
}

/// Vertical and horizontal lines every millimetre (thin) and every 5 mm (thick), each at the
/// pixel nearest to its position.
fn draw_grid(image: &mut EcgImage, ppm: f32) {
    let thick_px = (ppm / 4.0).round().max(1.0) as usize;
    let lines = |len: usize| -> Vec<(usize, bool)> {
        let mut out = Vec::new();
        let mut k = 0usize;
        loop {
            let pos = (k as f32 * ppm).round() as usize;
            if pos >= len {
                break;
            }
            out.push((pos, k.is_multiple_of(5)));
            k += 1;
        }
        out
    };
    let columns = lines(image.width);
    let rows = lines(image.height);
    // Thin lines first, so thick lines win where they cross.
    for pass_thick in [false, true] {
        let colour = if pass_thick { GRID_THICK } else { GRID_THIN };
        let width = if pass_thick { thick_px } else { 1 };
        for &(x, _) in columns.iter().filter(|(_, t)| *t == pass_thick) {
            for dx in 0..width {
                if x + dx < image.width {
                    for y in 0..image.height {
                        image.set_pixel(x + dx, y, colour);
                    }
                }
            }
        }
        for &(y, _) in rows.iter().filter(|(_, t)| *t == pass_thick) {
            for dy in 0..width {
                if y + dy < image.height {
                    for x in 0..image.width {
                        image.set_pixel(x, y + dy, colour);
                    }
                }
            }
        }
    }
}

/// Per-pixel ink coverage in `[0, 1]`, combined by maximum so that the joints of a polyline do
/// not darken where consecutive segments overlap.
struct Coverage {
    width: usize,
    height: usize,
    cover: Vec<f32>,
}

impl Coverage {
    fn new(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            cover: vec![0.0; width * height],
        }
    }

    fn full_rect(&self) -> PixelRect {
        PixelRect {
            x0: 0.0,
            y0: 0.0,
            x1: (self.width - 1) as f32,
            y1: (self.height - 1) as f32,
        }
    }

    fn polyline(&mut self, points: &[(f32, f32)], half_width: f32, clip: PixelRect) {
        if points.len() == 1 {
            self.segment(points[0], points[0], half_width, clip);
        }
        for pair in points.windows(2) {
            self.segment(pair[0], pair[1], half_width, clip);
        }
    }

    /// Antialiased thick segment: coverage falls off linearly over one pixel at the pen's edge,
    /// measured by the distance from each pixel centre to the segment.
    fn segment(&mut self, a: (f32, f32), b: (f32, f32), half_width: f32, clip: PixelRect) {
        let reach = half_width + 0.5;
        let x_lo = (a.0.min(b.0) - reach).floor().max(clip.x0.ceil()).max(0.0);
        let x_hi = (a.0.max(b.0) + reach)
            .ceil()
            .min(clip.x1.floor())
            .min((self.width - 1) as f32);
        let y_lo = (a.1.min(b.1) - reach).floor().max(clip.y0.ceil()).max(0.0);
        let y_hi = (a.1.max(b.1) + reach)
            .ceil()
            .min(clip.y1.floor())
            .min((self.height - 1) as f32);
        if x_lo > x_hi || y_lo > y_hi {
            return;
        }
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        let length_sq = dx * dx + dy * dy;
        for y in y_lo as usize..=y_hi as usize {
            for x in x_lo as usize..=x_hi as usize {
                let (px, py) = (x as f32, y as f32);
                let t = if length_sq > 0.0 {
                    (((px - a.0) * dx + (py - a.1) * dy) / length_sq).clamp(0.0, 1.0)
                } else {
                    0.0
                };
                let (cx, cy) = (a.0 + t * dx - px, a.1 + t * dy - py);
                let distance = (cx * cx + cy * cy).sqrt();
                let coverage = (reach - distance).clamp(0.0, 1.0);
                let cell = &mut self.cover[y * self.width + x];
                if coverage > *cell {
                    *cell = coverage;
                }
            }
        }
    }

    fn composite(&self, image: &mut EcgImage, colour: [f32; 3]) {
        let plane = self.width * self.height;
        for (i, &alpha) in self.cover.iter().enumerate() {
            if alpha > 0.0 {
                for (c, &ink) in colour.iter().enumerate() {
                    let v = &mut image.data[c * plane + i];
                    *v = *v * (1.0 - alpha) + ink * alpha;
                }
            }
        }
    }
}

/// Draws ASCII text with the 8 x 8 font8x8 glyphs magnified by `scale`; other characters are
/// drawn as '?'.
fn draw_text(image: &mut EcgImage, text: &str, x: usize, y: usize, scale: usize) {
    let advance = 8 * scale;
    for (i, ch) in text.chars().enumerate() {
        let code = if ch.is_ascii() {
            ch as usize
        } else {
            '?' as usize
        };
        let glyph = font8x8::legacy::BASIC_LEGACY[code];
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                // font8x8 stores the leftmost pixel in the least significant bit.
                if bits & (1 << col) == 0 {
                    continue;
                }
                for sy in 0..scale {
                    for sx in 0..scale {
                        let px = x + i * advance + col * scale + sx;
                        let py = y + row * scale + sy;
                        if px < image.width && py < image.height {
                            image.set_pixel(px, py, INK);
                        }
                    }
                }
            }
        }
    }
}
