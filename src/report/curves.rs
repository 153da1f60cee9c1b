//! Curves over training steps from the registry's metric points: the loss of every stage (train
//! and validation, one colour per cell group, seeds as a mean line with a min-max band) and, for
//! Beat stages, Code% and codebook perplexity per VQ level.
//!
//! Every polyline carries the values it draws in `data-points` (`step,value` pairs) and its
//! metric key in `data-series`, so that a reader (or a test) can check a curve against the
//! registry without inverting the pixel mapping.

use std::collections::BTreeMap;

use super::chart::{Frame, LegendEntry, MARGIN, Scale, legend, legend_rows, short, stroke};
use super::gather::ReportData;
use super::svg::{Svg, colour};
use crate::spec::StageKind;
use crate::table::render::html_escape;

/// Width and plot height (without the legend) of a curve chart.
const SIZE: (f64, f64) = (580.0, 300.0);

/// Dash patterns of the lines of one group (train solid, validation dashed; VQ levels).
const DASHES: [&str; 4] = ["", "6 3", "2 2", "8 3 2 3"];

/// One point of a curve: the mean over seeds and their smallest and largest value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub step: i64,
    pub mean: f64,
    pub lo: f64,
    pub hi: f64,
}

/// One line of a chart.
pub struct Line {
    /// The metric key drawn (`beat/train/loss`).
    pub key: String,
    /// The legend's text.
    pub label: String,
    pub colour: &'static str,
    pub dash: &'static str,
    pub points: Vec<Point>,
}

/// A chart ready to be inlined and written as a file.
pub struct Plot {
    /// File name stem (`loss-beat`), also the element's id in the page.
    pub name: String,
    pub svg: String,
}

/// The mean, min and max over `series` at every step any of them has.
pub fn over_seeds(series: &[&[(i64, f64)]]) -> Vec<Point> {
    let mut by_step: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
    for s in series {
        for &(step, v) in s.iter().filter(|p| p.1.is_finite()) {
            by_step.entry(step).or_default().push(v);
        }
    }
    by_step
        .into_iter()
        .map(|(step, vs)| Point {
            step,
            mean: vs.iter().sum::<f64>() / vs.len() as f64,
            lo: vs.iter().copied().fold(f64::INFINITY, f64::min),
            hi: vs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        })
        .collect()
}

/// The line of `key` over the cells of every group, one colour per group.
fn group_lines(data: &ReportData, key: &str, what: &str, dash: &'static str) -> Vec<Line> {
    let mut lines = Vec::new();
    for (g, group) in data.groups.iter().enumerate() {
        let series: Vec<&[(i64, f64)]> = data
            .group_cells(group)
            .filter_map(|c| c.series(key))
            .collect();
        let points = over_seeds(&series);
        if points.is_empty() {
            continue;
        }
        let label = match data.groups.len() {
            1 => what.to_string(),
            _ => format!("{} {what}", group.title),
        };
        lines.push(Line {
            key: key.to_string(),
            label,
            colour: colour(g),
            dash,
            points,
        });
    }
    lines
}

/// One loss chart per stage that logged a loss.
pub fn loss_plots(data: &ReportData) -> Vec<Plot> {
    let mut plots = Vec::new();
    for (stage, _) in &data.stages {
        let mut lines = group_lines(data, &format!("{stage}/train/loss"), "train", DASHES[0]);
        lines.extend(group_lines(
            data,
            &format!("{stage}/val/loss"),
            "validation",
            DASHES[1],
        ));
        if lines.is_empty() {
            continue;
        }
        let title = format!("Loss — stage {stage}");
        plots.push(Plot {
            name: format!("loss-{stage}"),
            svg: line_chart("plot-loss", &title, "step", "loss", &lines, true),
        });
    }
    plots
}

/// Code% and perplexity per VQ level of every Beat stage (validation, over steps).
pub fn codebook_plots(data: &ReportData) -> Vec<Plot> {
    let mut plots = Vec::new();
    let beat_stages = data.stages.iter().filter(|(_, k)| *k == StageKind::Beat);
    for (stage, _) in beat_stages {
        for (metric, title, y) in [
            ("code_pct", "Code% per VQ level", "codes used (%)"),
            (
                "perplexity",
                "Codebook perplexity per VQ level",
                "perplexity",
            ),
        ] {
            let mut lines = Vec::new();
            for level in 1..=DASHES.len() {
                let key = format!("{stage}/val/{metric}_l{level}");
                let dash = DASHES[level - 1];
                lines.extend(group_lines(data, &key, &format!("L{level}"), dash));
            }
            if lines.is_empty() {
                continue;
            }
            plots.push(Plot {
                name: format!("{metric}-{stage}"),
                svg: line_chart(
                    "plot-codebook",
                    &format!("{title} — stage {stage}"),
                    "step",
                    y,
                    &lines,
                    false,
                ),
            });
        }
    }
    plots
}

/// A chart of `lines` over steps (log y when `log_ok` and the values span more than 20x), with
/// min-max bands where seeds disagree and the legend below.
pub fn line_chart(
    kind: &'static str,
    title: &str,
    x_label: &str,
    y_label: &str,
    lines: &[Line],
    log_ok: bool,
) -> String {
    let entries: Vec<LegendEntry> = lines
        .iter()
        .map(|l| LegendEntry {
            colour: l.colour.to_string(),
            dash: l.dash,
            label: l.label.clone(),
        })
        .collect();
    let (w, h) = SIZE;
    let (ml, mt, mr, mb) = MARGIN;
    let legend_h = 16.0 * legend_rows(&entries, w - ml - mr) as f64 + 8.0;
    let mut svg = Svg::new(w, h + legend_h, kind, title);
    let points = || lines.iter().flat_map(|l| l.points.iter());
    let values: Vec<f64> = points().flat_map(|p| [p.lo, p.hi, p.mean]).collect();
    let y = match log_ok {
        true => Scale::auto(&values, 20.0),
        false => Scale::linear(values.iter().copied(), false),
    };
    let x = Scale::linear(points().map(|p| p.step as f64), false);
    let frame = Frame {
        left: ml,
        top: mt,
        width: w - ml - mr,
        height: h - mt - mb,
        x,
        y,
    };
    frame.draw(&mut svg, title, x_label, y_label);
    for l in lines {
        draw_line(&mut svg, &frame, l);
    }
    legend(&mut svg, &entries, (ml, h - 4.0), w - ml - mr);
    svg.finish()
}

/// The band (where seeds differ) and the mean line of `l`.
fn draw_line(svg: &mut Svg, frame: &Frame, l: &Line) {
    let tip = format!("{} ({})", l.label, l.key);
    if l.points.iter().any(|p| p.lo != p.hi) {
        let mut band: Vec<(f64, f64)> = l
            .points
            .iter()
            .map(|p| (frame.px(p.step as f64), frame.py(p.hi)))
            .collect();
        band.extend(
            l.points
                .iter()
                .rev()
                .map(|p| (frame.px(p.step as f64), frame.py(p.lo))),
        );
        let attrs = format!("class=\"band\" fill=\"{}\" fill-opacity=\"0.15\"", l.colour);
        svg.polygon(&band, &attrs, &format!("{tip}: min-max over seeds"));
    }
    let pixels: Vec<(f64, f64)> = l
        .points
        .iter()
        .map(|p| (frame.px(p.step as f64), frame.py(p.mean)))
        .collect();
    let data: Vec<String> = l
        .points
        .iter()
        .map(|p| format!("{},{}", p.step, p.mean))
        .collect();
    let attrs = format!(
        "class=\"curve\" data-series=\"{}\" data-label=\"{}\" data-points=\"{}\" {}",
        html_escape(&l.key),
        html_escape(&l.label),
        data.join(" "),
        stroke(l.colour, 1.8, l.dash)
    );
    if pixels.len() == 1 {
        let attrs = format!("{attrs} fill=\"{}\"", l.colour);
        let p = l.points[0];
        svg.circle(pixels[0], 3.0, &attrs, &format!("{tip}: {}", short(p.mean)));
    } else {
        let last = l.points.last().map_or(0.0, |p| p.mean);
        svg.polyline(&pixels, &attrs, &format!("{tip}, last {}", short(last)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_become_a_mean_with_a_min_max_band() {
        let a = [(0, 1.0), (10, 3.0)];
        let b = [(0, 3.0), (20, 5.0)];
        let p = over_seeds(&[&a, &b]);
        assert_eq!(
            p,
            [
                Point {
                    step: 0,
                    mean: 2.0,
                    lo: 1.0,
                    hi: 3.0
                },
                Point {
                    step: 10,
                    mean: 3.0,
                    lo: 3.0,
                    hi: 3.0
                },
                Point {
                    step: 20,
                    mean: 5.0,
                    lo: 5.0,
                    hi: 5.0
                },
            ]
        );
    }

    #[test]
    fn a_chart_carries_the_values_it_draws() {
        let line = Line {
            key: "beat/train/loss".into(),
            label: "a<b".into(),
            colour: colour(0),
            dash: "",
            points: over_seeds(&[&[(1, 0.5), (2, 0.25)]]),
        };
        let svg = line_chart("plot-loss", "t", "step", "loss", &[line], true);
        assert!(svg.contains("data-series=\"beat/train/loss\""), "{svg}");
        assert!(svg.contains("data-points=\"1,0.5 2,0.25\""), "{svg}");
        assert!(svg.contains("data-label=\"a&lt;b\""), "{svg}");
        assert!(
            !svg.contains("class=\"band\""),
            "one seed has no band: {svg}"
        );
    }
}
