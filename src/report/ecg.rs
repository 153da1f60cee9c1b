//! Validation ECG windows of a Beat cell, drawn printed-ECG style: 12 leads on the pink
//! millimetre grid (25 mm/s: a small square is 40 ms), the input in black, Beat's reconstruction
//! over it in blue and its predicted continuation in vermillion after the dashed line.

use super::curves::Plot;
use super::gather::{CellData, ReportData};
use super::samples::{BeatSamples, BeatWindow};
use super::svg::{Svg, colour};
use crate::table::render::html_escape;

/// Leads per row, rows, and one lead panel's size in pixels.
const COLUMNS: usize = 2;
const PANEL: (f64, f64) = (420.0, 72.0);
/// Gaps: left of every panel (its lead name), between rows, and the title's band.
const LEFT: f64 = 34.0;
const GAP: f64 = 8.0;
const TOP: f64 = 26.0;

/// Figures shown at most: a figure is a screen tall, and 18 of them bury the rest of the page.
pub const MAX_FIGURES: usize = 4;

/// The groups with a window to show: the first window of the group's first cell that has
/// samples, by group index.
fn windows(data: &ReportData) -> Vec<(usize, &CellData, &BeatSamples, &BeatWindow)> {
    data.groups
        .iter()
        .enumerate()
        .filter_map(|(g, group)| {
            let (cell, samples) = data
                .group_cells(group)
                .find_map(|c| c.samples.as_ref().map(|s| (c, s)))?;
            Some((g, cell, samples, samples.windows.first()?))
        })
        .collect()
}

/// How many groups have a window to show (more than [`MAX_FIGURES`]: not all are drawn).
pub fn groups_with_windows(data: &ReportData) -> usize {
    windows(data).len()
}

/// One figure per cell group with a window, at most [`MAX_FIGURES`] of them spread evenly over
/// the plan's groups (the first and the last included).
pub fn ecg_plots(data: &ReportData) -> Vec<Plot> {
    let all = windows(data);
    let shown = spread(all.len(), MAX_FIGURES);
    let mut plots = Vec::new();
    for (g, cell, samples, window) in shown.into_iter().map(|i| all[i]) {
        let group = &data.groups[g];
        let title = format!(
            "{} — validation window {} (cell {})",
            group.title, window.index, cell.index
        );
        plots.push(Plot {
            name: format!("ecg-{g}"),
            svg: window_svg(samples, window, &title),
        });
    }
    plots
}

/// `max` of the indices `0..n`, evenly spaced with the first and the last (all when `n <= max`).
fn spread(n: usize, max: usize) -> Vec<usize> {
    if n <= max || max < 2 {
        return (0..n.min(max)).collect();
    }
    let mut out: Vec<usize> = (0..max)
        .map(|k| (k * (n - 1) + (max - 1) / 2) / (max - 1))
        .collect();
    out.dedup();
    out
}

/// The 12 leads of `window`.
pub fn window_svg(samples: &BeatSamples, window: &BeatWindow, title: &str) -> String {
    let rows = samples.leads.len().div_ceil(COLUMNS);
    let (pw, ph) = PANEL;
    let width = COLUMNS as f64 * (LEFT + pw) + GAP;
    let height = TOP + rows as f64 * (ph + GAP) + 24.0;
    let mut svg = Svg::new(width, height, "plot-ecg", title);
    svg.text((LEFT, 17.0), "start", "class=\"title\"", title);
    let total = samples.input_len + samples.predict_len;
    for (i, lead) in samples.leads.iter().enumerate() {
        let x0 = (i % COLUMNS) as f64 * (LEFT + pw) + LEFT;
        let y0 = TOP + (i / COLUMNS) as f64 * (ph + GAP);
        let panel = Panel {
            x0,
            y0,
            px_per_sample: pw / total.max(1) as f64,
            range: range(window, i),
        };
        grid(&mut svg, &panel, samples.fs, total);
        svg.text(
            (x0 - 6.0, y0 + ph / 2.0 + 4.0),
            "end",
            "class=\"lead\"",
            lead,
        );
        svg.raw(&format!(
            "<g class=\"lead\" data-lead=\"{}\">",
            html_escape(lead)
        ));
        let split = panel.x(samples.input_len as f64);
        svg.line(
            (split, y0),
            (split, y0 + ph),
            "stroke=\"#555\" stroke-width=\"1\" stroke-dasharray=\"3 3\"",
        );
        let series = [
            ("ecg-signal", "#111111", 0, window.signal.get(i)),
            (
                "ecg-reconstruction",
                colour(0),
                0,
                window.reconstruction.get(i),
            ),
            (
                "ecg-prediction",
                colour(1),
                samples.input_len,
                window.prediction.get(i),
            ),
        ];
        for (class, stroke, start, values) in series {
            let Some(values) = values else { continue };
            let points: Vec<(f64, f64)> = values
                .iter()
                .enumerate()
                .map(|(k, &v)| (panel.x((start + k) as f64), panel.y(f64::from(v))))
                .collect();
            let attrs = format!(
                "class=\"{class}\" stroke=\"{stroke}\" stroke-width=\"{}\"",
                if class == "ecg-signal" { 1.1 } else { 1.4 }
            );
            svg.polyline(&points, &attrs, "");
        }
        svg.raw("</g>");
    }
    let legend_y = height - 8.0;
    for (k, (label, stroke)) in [
        ("input", "#111111"),
        ("reconstruction", colour(0)),
        ("predicted continuation", colour(1)),
    ]
    .iter()
    .enumerate()
    {
        let x = LEFT + k as f64 * 170.0;
        svg.line(
            (x, legend_y - 4.0),
            (x + 20.0, legend_y - 4.0),
            &format!("stroke=\"{stroke}\" stroke-width=\"2\""),
        );
        svg.text((x + 25.0, legend_y), "start", "", label);
    }
    svg.finish()
}

/// Where one lead is drawn.
struct Panel {
    x0: f64,
    y0: f64,
    px_per_sample: f64,
    /// The values at the panel's bottom and top.
    range: (f64, f64),
}

impl Panel {
    fn x(&self, sample: f64) -> f64 {
        self.x0 + sample * self.px_per_sample
    }

    fn y(&self, v: f64) -> f64 {
        let (lo, hi) = self.range;
        self.y0 + PANEL.1 * (1.0 - (v - lo) / (hi - lo))
    }
}

/// The smallest and largest value of lead `i` over the three series, padded by 10 %.
fn range(window: &BeatWindow, i: usize) -> (f64, f64) {
    let values = [&window.signal, &window.reconstruction, &window.prediction]
        .into_iter()
        .filter_map(|s| s.get(i))
        .flatten()
        .map(|&v| f64::from(v))
        .filter(|v| v.is_finite());
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    if lo > hi {
        return (-1.0, 1.0);
    }
    let pad = ((hi - lo) * 0.1).max(1e-3);
    (lo - pad, hi + pad)
}

/// The pink grid of one panel: a thin line every 40 ms and a thicker one every 200 ms, and
/// horizontal lines at the same pixel spacing.
fn grid(svg: &mut Svg, p: &Panel, fs: f64, total: usize) {
    let (pw, ph) = PANEL;
    svg.rect(
        (p.x0, p.y0),
        (pw, ph),
        "fill=\"#fff7f7\" stroke=\"#f2b8b8\"",
        "",
    );
    let small = 0.04 * fs * p.px_per_sample;
    if small <= 1.0 || !small.is_finite() {
        return;
    }
    let mut k = 0;
    loop {
        let x = p.x0 + k as f64 * small;
        if x > p.x0 + pw + 0.01 || k as f64 * 0.04 * fs > total as f64 + 0.5 {
            break;
        }
        let w = if k % 5 == 0 { "0.8" } else { "0.3" };
        svg.line(
            (x, p.y0),
            (x, p.y0 + ph),
            &format!("stroke=\"#f2a0a0\" stroke-width=\"{w}\""),
        );
        k += 1;
    }
    let mut k = 0;
    while k as f64 * small <= ph + 0.01 {
        let y = p.y0 + ph - k as f64 * small;
        let w = if k % 5 == 0 { "0.8" } else { "0.3" };
        svg.line(
            (p.x0, y),
            (p.x0 + pw, y),
            &format!("stroke=\"#f2a0a0\" stroke-width=\"{w}\""),
        );
        k += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_windows_spread_over_the_groups() {
        assert_eq!(spread(3, 4), [0, 1, 2]);
        assert_eq!(spread(18, 4), [0, 6, 11, 17]);
        assert_eq!(spread(5, 4), [0, 1, 3, 4]);
        assert_eq!(spread(5, 1), [0]);
    }
}
