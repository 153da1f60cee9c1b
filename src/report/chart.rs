//! Cartesian charts on top of [`Svg`]: linear and log scales with round ticks, a framed plot
//! area with grid lines and axis labels, and a legend.

use super::svg::{Marker, Svg, n, text_width};

/// How data values map onto an axis.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scale {
    Linear {
        lo: f64,
        hi: f64,
    },
    /// Base 10; `lo > 0`.
    Log {
        lo: f64,
        hi: f64,
    },
}

impl Scale {
    /// A linear scale over `values` padded to round ticks (`zero`: include 0).
    pub fn linear(values: impl IntoIterator<Item = f64>, zero: bool) -> Scale {
        let (mut lo, mut hi) = bounds(values);
        if zero {
            lo = lo.min(0.0);
            hi = hi.max(0.0);
        }
        if lo == hi {
            let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
            lo -= pad;
            hi += pad;
        }
        let step = nice_step((hi - lo) / 5.0);
        Scale::Linear {
            lo: (lo / step).floor() * step,
            hi: (hi / step).ceil() * step,
        }
    }

    /// Log scale when the positive `values` span more than `ratio` (and none is <= 0),
    /// a linear one otherwise.
    pub fn auto(values: &[f64], ratio: f64) -> Scale {
        let (lo, hi) = bounds(values.iter().copied());
        if lo > 0.0 && hi / lo > ratio {
            Scale::Log {
                lo: 10f64.powf(lo.log10().floor()),
                hi: 10f64.powf(hi.log10().ceil()),
            }
        } else {
            Scale::linear(values.iter().copied(), false)
        }
    }

    /// Where `v` falls, 0 at `lo` and 1 at `hi`.
    pub fn fraction(&self, v: f64) -> f64 {
        match *self {
            Scale::Linear { lo, hi } => (v - lo) / (hi - lo),
            Scale::Log { lo, hi } => (v.max(lo * 1e-3).log10() - lo.log10()) / (hi / lo).log10(),
        }
    }

    pub fn is_log(&self) -> bool {
        matches!(self, Scale::Log { .. })
    }

    /// Tick positions and labels.
    pub fn ticks(&self) -> Vec<(f64, String)> {
        match *self {
            Scale::Linear { lo, hi } => {
                let step = nice_step((hi - lo) / 5.0);
                let first = (lo / step).ceil() as i64;
                let last = (hi / step + 1e-9).floor() as i64;
                (first..=last)
                    .map(|k| {
                        let v = k as f64 * step;
                        (v, tick_label(v, step))
                    })
                    .collect()
            }
            Scale::Log { lo, hi } => {
                let (a, b) = (lo.log10().round() as i32, hi.log10().round() as i32);
                let mut ticks = Vec::new();
                for e in a..=b {
                    let mantissas: &[f64] = if b - a <= 2 { &[1.0, 2.0, 5.0] } else { &[1.0] };
                    for m in mantissas {
                        let v = m * 10f64.powi(e);
                        if v >= lo * 0.999 && v <= hi * 1.001 {
                            ticks.push((v, tick_label(v, v)));
                        }
                    }
                }
                ticks
            }
        }
    }
}

/// The smallest and largest finite values (0, 1 for none).
fn bounds(values: impl IntoIterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .into_iter()
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if lo > hi { (0.0, 1.0) } else { (lo, hi) }
}

/// 1, 2 or 5 times a power of ten, near `raw`.
pub fn nice_step(raw: f64) -> f64 {
    if raw <= 0.0 || !raw.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(raw.log10().floor());
    let m = raw / p;
    let nice = if m < 1.5 {
        1.0
    } else if m < 3.5 {
        2.0
    } else if m < 7.5 {
        5.0
    } else {
        10.0
    };
    nice * p
}

/// A tick's label with as many decimals as the step needs (`1e4` style for large or tiny).
pub fn tick_label(v: f64, step: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let mag = v.abs();
    if !(1e-3..1e5).contains(&mag) {
        return format!("{v:.0e}");
    }
    let decimals = (-step.abs().log10().floor()).max(0.0) as usize;
    format!("{v:.decimals$}")
}

/// A value with about four significant digits (tooltips, bar labels).
pub fn short(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let mag = v.abs();
    if mag != 0.0 && !(1e-3..1e6).contains(&mag) {
        return format!("{v:.3e}");
    }
    let decimals = if mag == 0.0 {
        0
    } else {
        (3 - mag.log10().floor() as i64).clamp(0, 6) as usize
    };
    format!("{v:.decimals$}")
}

/// A framed plot area inside an [`Svg`], with its scales.
pub struct Frame {
    pub left: f64,
    pub top: f64,
    pub width: f64,
    pub height: f64,
    pub x: Scale,
    pub y: Scale,
}

/// The margins of a chart of the usual size: room for the title, ticks and labels.
pub const MARGIN: (f64, f64, f64, f64) = (58.0, 30.0, 16.0, 42.0);

impl Frame {
    /// The plot area of `svg` less the margins (left, top, right, bottom).
    pub fn inside(svg: &Svg, (l, t, r, b): (f64, f64, f64, f64), x: Scale, y: Scale) -> Frame {
        Frame {
            left: l,
            top: t,
            width: svg.width() - l - r,
            height: svg.height() - t - b,
            x,
            y,
        }
    }

    /// Pixel x of a data x.
    pub fn px(&self, x: f64) -> f64 {
        self.left + self.x.fraction(x) * self.width
    }

    /// Pixel y of a data y.
    pub fn py(&self, y: f64) -> f64 {
        self.top + (1.0 - self.y.fraction(y)) * self.height
    }

    pub fn bottom(&self) -> f64 {
        self.top + self.height
    }

    pub fn right(&self) -> f64 {
        self.left + self.width
    }

    /// Grid lines and ticks of both axes, the frame, the axis labels and the title.
    pub fn draw(&self, svg: &mut Svg, title: &str, x_label: &str, y_label: &str) {
        self.draw_y(svg, y_label);
        svg.raw("<g class=\"tick\">");
        for (v, label) in self.x.ticks() {
            let x = self.px(v);
            svg.line((x, self.top), (x, self.bottom()), "class=\"grid\"");
            svg.text((x, self.bottom() + 14.0), "middle", "", &label);
        }
        svg.raw("</g>");
        self.draw_box(svg);
        svg.text(
            (self.left + self.width / 2.0, self.bottom() + 32.0),
            "middle",
            "class=\"axis-label\"",
            x_label,
        );
        svg.text((self.left, 18.0), "start", "class=\"title\"", title);
    }

    /// The y axis only (charts whose x axis is categorical draw their own).
    pub fn draw_y(&self, svg: &mut Svg, y_label: &str) {
        svg.raw("<g class=\"tick\">");
        for (v, label) in self.y.ticks() {
            let y = self.py(v);
            svg.line((self.left, y), (self.right(), y), "class=\"grid\"");
            svg.text((self.left - 5.0, y + 3.5), "end", "", &label);
        }
        svg.raw("</g>");
        let label = match self.y.is_log() {
            true => format!("{y_label} (log)"),
            false => y_label.to_string(),
        };
        svg.vertical_text(
            (14.0, self.top + self.height / 2.0),
            "class=\"axis-label\"",
            &label,
        );
    }

    /// The frame around the plot area.
    pub fn draw_box(&self, svg: &mut Svg) {
        svg.rect(
            (self.left, self.top),
            (self.width, self.height),
            "fill=\"none\" class=\"axis\"",
            "",
        );
    }
}

/// One legend entry: colour, marker, dash pattern (empty: solid) and label.
pub struct LegendEntry {
    pub colour: String,
    pub marker: Marker,
    pub dash: &'static str,
    pub label: String,
}

/// Height of a legend row.
pub const LEGEND_ROW: f64 = 16.0;

/// More entries than this are laid out in aligned columns rather than as wrapped text.
const FLOW_MAX: usize = 8;

/// Where each entry goes (its offset from the legend's top left) and how many rows they take:
/// up to [`FLOW_MAX`] entries wrap like words; more go into columns of equal width, filled row
/// by row, so that a long legend reads as a table.
fn legend_layout(entries: &[LegendEntry], width: f64) -> (Vec<(f64, f64)>, usize) {
    let widths: Vec<f64> = entries
        .iter()
        .map(|e| 26.0 + text_width(&e.label, 11.0) + 14.0)
        .collect();
    let mut at = Vec::with_capacity(entries.len());
    if entries.len() > FLOW_MAX {
        let col = widths.iter().copied().fold(0.0, f64::max).min(width);
        let cols = ((width / col).floor() as usize).max(1);
        for i in 0..entries.len() {
            at.push(((i % cols) as f64 * col, (i / cols) as f64 * LEGEND_ROW));
        }
        return (at, entries.len().div_ceil(cols));
    }
    let (mut x, mut row) = (0.0, 0);
    for w in widths {
        if x + w > width && x > 0.0 {
            x = 0.0;
            row += 1;
        }
        at.push((x, row as f64 * LEGEND_ROW));
        x += w;
    }
    (at, usize::from(!entries.is_empty()) + row)
}

/// The legend as rows of entries below `y`, within `width`; returns the height it took.
pub fn legend(svg: &mut Svg, entries: &[LegendEntry], (x0, y0): (f64, f64), width: f64) -> f64 {
    let (at, rows) = legend_layout(entries, width);
    let columns = entries.len() > FLOW_MAX;
    svg.raw(&format!(
        "<g class=\"legend{}\">",
        if columns { " legend-columns" } else { "" }
    ));
    for (e, (dx, dy)) in entries.iter().zip(at) {
        let (x, y) = (x0 + dx, y0 + 10.0 + dy);
        let dash = match e.dash.is_empty() {
            true => String::new(),
            false => format!(" stroke-dasharray=\"{}\"", e.dash),
        };
        svg.line(
            (x, y - 4.0),
            (x + 20.0, y - 4.0),
            &format!("stroke=\"{}\" stroke-width=\"2.5\"{dash}", e.colour),
        );
        svg.marker(e.marker, (x + 10.0, y - 4.0), 7.0, &e.colour);
        svg.text((x + 25.0, y), "start", "", &e.label);
    }
    svg.raw("</g>");
    LEGEND_ROW * rows.saturating_sub(1) as f64 + 18.0
}

/// How many legend rows `entries` need in `width`.
pub fn legend_rows(entries: &[LegendEntry], width: f64) -> usize {
    legend_layout(entries, width).1
}

/// `points` (pixel) of a series clipped to the plot area vertically.
pub fn clamp_y(frame: &Frame, y: f64) -> f64 {
    y.clamp(frame.top - 2.0, frame.bottom() + 2.0)
}

/// A short attribute text for a stroke of `colour`, `width` and dash.
pub fn stroke(colour: &str, width: f64, dash: &str) -> String {
    let mut s = format!("stroke=\"{colour}\" stroke-width=\"{}\"", n(width));
    if !dash.is_empty() {
        s.push_str(&format!(" stroke-dasharray=\"{dash}\""));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_ticks_are_round_and_cover_the_data() {
        assert_eq!(
            Scale::linear([0.13, 0.87], false),
            Scale::Linear { lo: 0.1, hi: 0.9 }
        );
        let s = Scale::linear([0.03, 0.97], false);
        assert_eq!(s, Scale::Linear { lo: 0.0, hi: 1.0 });
        let t: Vec<String> = s.ticks().into_iter().map(|t| t.1).collect();
        assert_eq!(t, ["0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
        assert_eq!(nice_step(0.03), 0.02);
        assert_eq!(nice_step(700.0), 500.0);
        assert_eq!(nice_step(800.0), 1000.0);
    }

    #[test]
    fn auto_scale_is_log_only_over_a_wide_positive_range() {
        assert!(Scale::auto(&[0.01, 5.0], 20.0).is_log());
        assert!(!Scale::auto(&[1.0, 5.0], 20.0).is_log());
        assert!(!Scale::auto(&[-1.0, 500.0], 20.0).is_log());
        let log = Scale::auto(&[0.02, 3.0], 20.0);
        assert_eq!(log, Scale::Log { lo: 0.01, hi: 10.0 });
        assert!((log.fraction(0.1) - 1.0 / 3.0).abs() < 1e-12);
        let t: Vec<String> = log.ticks().into_iter().map(|t| t.1).collect();
        assert_eq!(
            t,
            ["0.01", "0.1", "1", "10"],
            "one tick a decade over three"
        );
        let log = Scale::auto(&[0.02, 0.8], 20.0);
        let t: Vec<String> = log.ticks().into_iter().map(|t| t.1).collect();
        assert_eq!(t, ["0.01", "0.02", "0.05", "0.1", "0.2", "0.5", "1"]);
    }

    #[test]
    fn short_numbers_keep_four_digits() {
        assert_eq!(short(0.123456), "0.1235");
        assert_eq!(short(12.3456), "12.35");
        assert_eq!(short(1234.0), "1234");
        assert_eq!(short(1.5e-5), "1.500e-5");
    }
}
