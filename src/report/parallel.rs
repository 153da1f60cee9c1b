//! A parallel-coordinates plot over the sweep: one vertical axis per swept field (the seed
//! aside) and a last one for the chosen metric, and one line per finished cell through its
//! values, coloured by the metric. Axis values are placed evenly in their order (numbers sorted,
//! other values as the plan has them), so a log-spaced sweep reads as well as a linear one.
//!
//! Every line carries the cell it draws (`data-cell`), its axis values (`data-values`, `|`
//! between axes) and its metric value (`data-metric`); every axis its field (`data-key`).

use std::collections::BTreeSet;

use super::chart::{Scale, short};
use super::curves::Plot;
use super::gather::ReportData;
use super::svg::{Svg, text_width};
use crate::registry::RunStatus;
use crate::spec::PlanCells;
use crate::spec::diag::did_you_mean;
use crate::stages::catalog;
use crate::table::render::html_escape;

/// Height of the axes and horizontal room per axis.
const AXIS_H: f64 = 230.0;
const AXIS_GAP: f64 = 170.0;
/// The colours of the lowest and highest metric value.
const LOW: (u8, u8, u8) = (0x00, 0x72, 0xB2);
const HIGH: (u8, u8, u8) = (0xE6, 0x9F, 0x00);

/// The metric the plot shows: the first table metric some cell has, else the first summary
/// of any cell.
pub fn chosen_metric(data: &ReportData) -> Option<String> {
    let has = |m: &String| data.cells.iter().any(|c| c.summaries.contains_key(m));
    data.metrics.iter().find(|m| has(m)).cloned().or_else(|| {
        data.cells
            .iter()
            .find_map(|c| c.summaries.keys().next().cloned())
    })
}

/// Whether some stage of `plan` records `metric` (what `--metric` may name); the error says
/// why not and suggests the nearest key.
pub fn check_metric(plan: &dyn PlanCells, metric: &str) -> Result<(), String> {
    let mut known: BTreeSet<String> = catalog::table_metrics(plan.base()).into_iter().collect();
    for c in plan.cells() {
        known.extend(catalog::table_metrics(&c.spec));
    }
    if known.contains(metric) {
        return Ok(());
    }
    let help = did_you_mean(metric, known.iter().map(String::as_str))
        .map_or(String::new(), |h| format!("; {h}"));
    Err(format!(
        "`{metric}`: no stage of this spec records this metric{help}"
    ))
}

/// One axis: its field and its values in drawing order (bottom to top).
struct Axis {
    key: String,
    values: Vec<String>,
}

/// The plot, when the sweep has an axis other than the seed and a finished cell has `metric`.
pub fn parallel_plot(data: &ReportData, metric: &str) -> Option<Plot> {
    let lines: Vec<(usize, f64)> = data
        .cells
        .iter()
        .enumerate()
        .filter(|(_, c)| c.status() == Some(RunStatus::Finished))
        .filter_map(|(i, c)| c.summaries.get(metric).map(|v| (i, *v)))
        .filter(|(_, v)| v.is_finite())
        .collect();
    if data.axes.is_empty() || lines.is_empty() {
        return None;
    }
    let axes: Vec<Axis> = data
        .axes
        .iter()
        .enumerate()
        .map(|(k, key)| Axis {
            key: key.clone(),
            values: ordered(data.axis_values[k].iter().map(String::as_str)),
        })
        .collect();
    let scale = Scale::linear(lines.iter().map(|l| l.1), false);
    let (left, top) = (120.0, 46.0);
    let width = left + AXIS_GAP * axes.len() as f64 + 90.0;
    let height = top + AXIS_H + 54.0;
    let title = format!("Sweep — {}", data.label(metric));
    let mut svg = Svg::new(width, height, "plot-parallel", &title);
    svg.text((16.0, 18.0), "start", "class=\"title\"", &title);
    let x_of = |k: usize| left + AXIS_GAP * k as f64;
    let y_of = |f: f64| top + AXIS_H * (1.0 - f);
    let (lo, hi) = lines
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), l| {
            (a.min(l.1), b.max(l.1))
        });
    for &(i, v) in &lines {
        let c = &data.cells[i];
        let mut points: Vec<(f64, f64)> = axes
            .iter()
            .enumerate()
            .map(|(k, a)| (x_of(k), y_of(position(a, &c.axis_values[k]))))
            .collect();
        points.push((x_of(axes.len()), y_of(scale.fraction(v))));
        let t = if hi > lo { (v - lo) / (hi - lo) } else { 0.5 };
        let attrs = format!(
            "class=\"pc-line\" data-cell=\"{}\" data-values=\"{}\" data-metric=\"{v}\" stroke=\"{}\" stroke-width=\"1.8\" stroke-opacity=\"0.8\"",
            c.index,
            html_escape(&c.axis_values.join("|")),
            ramp(t)
        );
        let tip = format!("{}: {}", c.label, short(v));
        svg.polyline(&points, &attrs, &tip);
    }
    for (k, a) in axes.iter().enumerate() {
        let ticks: Vec<(f64, String)> = a
            .values
            .iter()
            .map(|v| {
                let label = data.labels.get(&format!("{}={v}", a.key));
                (position(a, v), label.cloned().unwrap_or_else(|| v.clone()))
            })
            .collect();
        draw_axis(
            &mut svg,
            (x_of(k), top),
            &a.key,
            &data.label(&a.key),
            &ticks,
        );
    }
    let ticks: Vec<(f64, String)> = scale
        .ticks()
        .into_iter()
        .map(|(v, l)| (scale.fraction(v), l))
        .collect();
    draw_axis(
        &mut svg,
        (x_of(axes.len()), top),
        metric,
        &data.label(metric),
        &ticks,
    );
    colour_key(&mut svg, (16.0, height - 14.0), (lo, hi));
    Some(Plot {
        name: "parallel".into(),
        svg: svg.finish(),
    })
}

/// The distinct `values`: sorted by number when all are numbers, else in first-seen order.
fn ordered<'a>(values: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for v in values {
        if !out.iter().any(|seen| seen == v) {
            out.push(v.to_string());
        }
    }
    let numbers: Option<Vec<f64>> = out.iter().map(|v| v.parse::<f64>().ok()).collect();
    if let Some(numbers) = numbers {
        let mut pairs: Vec<(f64, String)> = numbers.into_iter().zip(out).collect();
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
        out = pairs.into_iter().map(|p| p.1).collect();
    }
    out
}

/// Where `value` sits on `axis`, 0 (bottom) to 1 (top); one value sits in the middle.
fn position(axis: &Axis, value: &str) -> f64 {
    let i = axis.values.iter().position(|v| v == value).unwrap_or(0);
    match axis.values.len() {
        0 | 1 => 0.5,
        n => i as f64 / (n - 1) as f64,
    }
}

/// A vertical axis at `(x, top)` with its name above and `ticks` (fraction, label) left of it,
/// drawn after the lines so that it lies on top of them.
fn draw_axis(svg: &mut Svg, (x, top): (f64, f64), key: &str, name: &str, ticks: &[(f64, String)]) {
    svg.raw(&format!(
        "<g class=\"pc-axis\" data-key=\"{}\">",
        html_escape(key)
    ));
    svg.line((x, top), (x, top + AXIS_H), "class=\"axis\"");
    svg.text((x, top - 12.0), "middle", "class=\"axis-label\"", name);
    svg.raw("<g class=\"tick\">");
    for (f, label) in ticks {
        let y = top + AXIS_H * (1.0 - f);
        svg.line((x - 4.0, y), (x, y), "class=\"axis\"");
        let shown = match text_width(label, 10.0) > AXIS_GAP - 30.0 {
            true => format!("{}…", label.chars().take(22).collect::<String>()),
            false => label.clone(),
        };
        // Drawn over the lines with a white halo, so that a label stays readable where lines
        // cross it.
        svg.text((x - 7.0, y + 3.5), "end", "class=\"halo\"", &shown);
    }
    svg.raw("</g></g>");
}

/// The colour of a line at `t` (0: lowest metric value, 1: highest).
fn ramp(t: f64) -> String {
    let t = t.clamp(0.0, 1.0);
    let mix = |a: u8, b: u8| (f64::from(a) + (f64::from(b) - f64::from(a)) * t).round() as u8;
    format!(
        "#{:02x}{:02x}{:02x}",
        mix(LOW.0, HIGH.0),
        mix(LOW.1, HIGH.1),
        mix(LOW.2, HIGH.2)
    )
}

/// A small gradient legend: the lowest value's colour to the highest's.
fn colour_key(svg: &mut Svg, (x, y): (f64, f64), (lo, hi): (f64, f64)) {
    svg.text((x, y), "start", "class=\"note\"", &short(lo));
    let x0 = x + text_width(&short(lo), 10.0) + 6.0;
    for k in 0..10 {
        let attrs = format!("fill=\"{}\"", ramp(k as f64 / 9.0));
        svg.rect((x0 + k as f64 * 8.0, y - 8.0), (8.0, 8.0), &attrs, "");
    }
    svg.text(
        (x0 + 86.0, y),
        "start",
        "class=\"note\"",
        &format!("{} — line colour by metric value", short(hi)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_axis_values_are_sorted_and_others_keep_their_order() {
        let v = ordered(["1e-3", "1e-4", "1e-3", "5e-4"].into_iter());
        assert_eq!(v, ["1e-4", "5e-4", "1e-3"]);
        let v = ordered(["qwen", "llama", "qwen"].into_iter());
        assert_eq!(v, ["qwen", "llama"]);
        let axis = Axis {
            key: "k".into(),
            values: v,
        };
        assert_eq!(position(&axis, "qwen"), 0.0);
        assert_eq!(position(&axis, "llama"), 1.0);
        assert_eq!(ramp(0.0), "#0072b2");
        assert_eq!(ramp(1.0), "#e69f00");
    }

    #[test]
    fn tick_labels_have_a_halo_over_the_lines() {
        let mut svg = Svg::new(300.0, 300.0, "plot-parallel", "t");
        svg.polyline(&[(0.0, 100.0), (200.0, 100.0)], "class=\"pc-line\"", "");
        draw_axis(&mut svg, (100.0, 40.0), "k", "k", &[(0.5, "512".into())]);
        let out = svg.finish();
        let doc = roxmltree::Document::parse(&out).unwrap();
        let label = doc
            .descendants()
            .find(|n| n.text() == Some("512"))
            .expect("the tick label");
        assert_eq!(label.attribute("class"), Some("halo"));
        assert!(
            out.contains(".halo{paint-order:stroke;stroke:#fff"),
            "{out}"
        );
        let line = doc
            .descendants()
            .position(|n| n.attribute("class") == Some("pc-line"));
        let text = doc.descendants().position(|n| n.text() == Some("512"));
        assert!(line < text, "the label is drawn after (over) the line");
    }
}
