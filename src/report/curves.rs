//! Curves over training steps from the registry's metric points: the loss of every stage (train
//! and validation, one colour per cell group, seeds as a mean line with a min-max band) and, for
//! Beat stages, Code% and codebook perplexity per VQ level.
//!
//! Every polyline carries the values it draws in `data-points` (`step,value` pairs) and its
//! metric key in `data-series`, so that a reader (or a test) can check a curve against the
//! registry without inverting the pixel mapping.

use std::collections::BTreeMap;

use super::chart::{
    Frame, LEGEND_ROW, LegendEntry, MARGIN, Scale, legend, legend_rows, short, stroke,
};
use super::gather::ReportData;
use super::svg::{Marker, Style, Svg, style};
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
    /// The cell group it draws (its title; empty in a plan of one group).
    pub group: String,
    /// What of the group it draws (`train`, `L2`): the dash pattern's meaning.
    pub what: String,
    /// The group's colour and marker.
    pub style: Style,
    pub dash: &'static str,
    pub points: Vec<Point>,
}

impl Line {
    /// The legend's and tooltip's text: the group and what is drawn of it.
    pub fn label(&self) -> String {
        match self.group.is_empty() {
            true => self.what.clone(),
            false => format!("{} {}", self.group, self.what),
        }
    }
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
        lines.push(Line {
            key: key.to_string(),
            group: match data.groups.len() {
                1 => String::new(),
                _ => group.title.clone(),
            },
            what: what.to_string(),
            style: style(g),
            dash,
            points,
        });
    }
    lines
}

/// One loss chart per stage that logged a loss ([`loss_charts`]).
pub fn loss_plots(data: &ReportData) -> Vec<Plot> {
    let mut plots = Vec::new();
    for (stage, _) in &data.stages {
        let train = group_lines(data, &format!("{stage}/train/loss"), "train", DASHES[0]);
        let val = group_lines(data, &format!("{stage}/val/loss"), "validation", DASHES[1]);
        for (name, title, lines) in loss_charts(stage, train, val) {
            plots.push(Plot {
                name,
                svg: line_chart("plot-loss", &title, "step", "loss", &lines, true),
            });
        }
    }
    plots
}

/// The loss charts of a stage (name, title, lines): train and validation together, or a
/// chart each when together they would be more than [`LINES_MAX`] lines; none without lines.
fn loss_charts(stage: &str, train: Vec<Line>, val: Vec<Line>) -> Vec<(String, String, Vec<Line>)> {
    let name = format!("loss-{stage}");
    let charts = match train.len() + val.len() > LINES_MAX && !train.is_empty() {
        true => vec![
            (
                name.clone(),
                format!("Training loss — stage {stage}"),
                train,
            ),
            (
                format!("{name}-validation"),
                format!("Validation loss — stage {stage}"),
                val,
            ),
        ],
        false => vec![(
            name,
            format!("Loss — stage {stage}"),
            train.into_iter().chain(val).collect(),
        )],
    };
    charts.into_iter().filter(|c| !c.2.is_empty()).collect()
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
    let (w, h) = SIZE;
    let (ml, mt, mr, mb) = MARGIN;
    let legend_w = w - ml - mr;
    let (key, entries) = legend_of(lines);
    let key_h = match key.is_empty() {
        true => 0.0,
        false => LEGEND_ROW * legend_rows(&key, legend_w) as f64,
    };
    let legend_h = key_h + LEGEND_ROW * legend_rows(&entries, legend_w) as f64 + 8.0;
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
    if !key.is_empty() {
        legend(&mut svg, &key, (ml, h - 4.0), legend_w);
    }
    legend(&mut svg, &entries, (ml, h - 4.0 + key_h), legend_w);
    svg.finish()
}

/// More lines than this get the compact legend of [`legend_of`].
const LINES_MAX: usize = 8;

/// The legend of `lines`: a key of what each dash pattern draws (empty when there is one
/// pattern or few lines) and the entries. Up to [`LINES_MAX`] lines, one entry per line; more,
/// one entry per group (its colour and marker), since every group has a line of each pattern.
fn legend_of(lines: &[Line]) -> (Vec<LegendEntry>, Vec<LegendEntry>) {
    let entry = |l: &Line, label: String| LegendEntry {
        colour: l.style.colour.to_string(),
        marker: l.style.marker,
        dash: l.dash,
        label,
    };
    if lines.len() <= LINES_MAX {
        return (
            Vec::new(),
            lines.iter().map(|l| entry(l, l.label())).collect(),
        );
    }
    let mut key: Vec<LegendEntry> = Vec::new();
    let mut groups: Vec<LegendEntry> = Vec::new();
    for l in lines {
        if !key.iter().any(|k| k.dash == l.dash) {
            key.push(LegendEntry {
                colour: "#555".into(),
                marker: Marker::None,
                dash: l.dash,
                label: l.what.clone(),
            });
        }
        if !groups.iter().any(|g| g.label == l.group) {
            groups.push(LegendEntry {
                dash: "",
                ..entry(l, l.group.clone())
            });
        }
    }
    if key.len() < 2 {
        key.clear();
    }
    (key, groups)
}

/// The band (where seeds differ) and the mean line of `l`.
fn draw_line(svg: &mut Svg, frame: &Frame, l: &Line) {
    let tip = format!("{} ({})", l.label(), l.key);
    let colour = l.style.colour;
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
        let attrs = format!("class=\"band\" fill=\"{colour}\" fill-opacity=\"0.15\"");
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
        html_escape(&l.label()),
        data.join(" "),
        // Hundreds of noisy steps in a thick line hide the lines under them.
        stroke(colour, if l.points.len() > 200 { 1.1 } else { 1.8 }, l.dash)
    );
    if pixels.len() == 1 {
        let attrs = format!("{attrs} fill=\"{colour}\"");
        let p = l.points[0];
        svg.circle(pixels[0], 3.0, &attrs, &format!("{tip}: {}", short(p.mean)));
    } else {
        let last = l.points.last().map_or(0.0, |p| p.mean);
        svg.polyline(&pixels, &attrs, &format!("{tip}, last {}", short(last)));
    }
    draw_markers(svg, &pixels, l.style);
}

/// The line's marker (if its style has one) on at most eight of its points, evenly spread.
fn draw_markers(svg: &mut Svg, pixels: &[(f64, f64)], style: Style) {
    if style.marker == Marker::None || pixels.is_empty() {
        return;
    }
    let every = pixels.len().div_ceil(8);
    for p in pixels.iter().step_by(every) {
        svg.marker(style.marker, *p, 7.0, style.colour);
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
            group: "a<b".into(),
            what: "train".into(),
            style: style(0),
            dash: "",
            points: over_seeds(&[&[(1, 0.5), (2, 0.25)]]),
        };
        let svg = line_chart("plot-loss", "t", "step", "loss", &[line], true);
        assert!(svg.contains("data-series=\"beat/train/loss\""), "{svg}");
        assert!(svg.contains("data-points=\"1,0.5 2,0.25\""), "{svg}");
        assert!(svg.contains("data-label=\"a&lt;b train\""), "{svg}");
        assert!(
            !svg.contains("class=\"band\""),
            "one seed has no band: {svg}"
        );
    }

    /// `groups` groups of a train and a validation line each.
    fn lines(groups: usize) -> Vec<Line> {
        let mut out = Vec::new();
        for (what, dash) in [("train", DASHES[0]), ("validation", DASHES[1])] {
            for g in 0..groups {
                out.push(Line {
                    key: format!("beat/{what}/loss"),
                    group: format!("codebook={g}"),
                    what: what.into(),
                    style: style(g),
                    dash,
                    points: over_seeds(&[&[(1, 1.0 + g as f64), (2, 0.5 + g as f64)]]),
                });
            }
        }
        out
    }

    /// The `(stroke, dash, marker, text)` of each legend entry of a chart.
    fn legend_entries(svg: &str) -> Vec<(String, String, bool, String)> {
        let doc = roxmltree::Document::parse(svg).unwrap();
        let mut out = Vec::new();
        for g in doc.descendants().filter(|n| {
            n.attribute("class")
                .is_some_and(|c| c.starts_with("legend"))
        }) {
            let kids: Vec<roxmltree::Node> = g.children().filter(|n| n.is_element()).collect();
            let mut i = 0;
            while i < kids.len() {
                let line = kids[i];
                let marker = kids
                    .get(i + 1)
                    .is_some_and(|n| n.attribute("class") == Some("marker"));
                let text = kids[i + 1 + usize::from(marker)];
                out.push((
                    line.attribute("stroke").unwrap().to_string(),
                    line.attribute("stroke-dasharray").unwrap_or("").to_string(),
                    marker,
                    text.text().unwrap().to_string(),
                ));
                i += 2 + usize::from(marker);
            }
        }
        out
    }

    #[test]
    fn few_lines_get_an_entry_each() {
        let svg = line_chart("plot-loss", "t", "step", "loss", &lines(4), true);
        let entries = legend_entries(&svg);
        assert_eq!(entries.len(), 8);
        assert_eq!(entries[0].3, "codebook=0 train");
        assert_eq!(entries[7].3, "codebook=3 validation");
        assert!(!svg.contains("legend-columns"), "{svg}");
    }

    #[test]
    fn many_lines_get_a_key_of_dashes_and_an_entry_per_group_in_columns() {
        let svg = line_chart("plot-loss", "t", "step", "loss", &lines(12), true);
        let entries = legend_entries(&svg);
        assert_eq!(entries.len(), 2 + 12, "{entries:?}");
        assert_eq!(
            entries[0],
            ("#555".into(), "".into(), false, "train".into())
        );
        assert_eq!(
            entries[1],
            ("#555".into(), "6 3".into(), false, "validation".into())
        );
        let groups: Vec<&str> = entries[2..].iter().map(|e| e.3.as_str()).collect();
        let want: Vec<String> = (0..12).map(|g| format!("codebook={g}")).collect();
        assert_eq!(groups, want);
        // 12 groups, 12 different looks: colours repeat after ten, with a marker.
        let looks: std::collections::HashSet<(&str, bool)> =
            entries[2..].iter().map(|e| (e.0.as_str(), e.2)).collect();
        assert_eq!(looks.len(), 12, "{entries:?}");
        assert!(svg.contains("legend-columns"), "{svg}");
        // Columns: every entry of the group legend starts at one of a few x positions.
        let doc = roxmltree::Document::parse(&svg).unwrap();
        let xs: std::collections::BTreeSet<String> = doc
            .descendants()
            .filter(|n| n.attribute("class") == Some("legend legend-columns"))
            .flat_map(|g| g.children().filter(|n| n.has_tag_name("line")))
            .map(|l| l.attribute("x1").unwrap().to_string())
            .collect();
        assert!(xs.len() < 12 && xs.len() > 1, "{xs:?}");
        // The lines of groups 10 and 11 carry their markers on the plot too.
        let markers = svg.matches("class=\"marker\"").count();
        assert_eq!(
            markers,
            2 * 2 * 2 + 2,
            "two points x train/val x 2 groups, + 2 legend"
        );
        // Nothing of the legend falls below the chart.
        let height: f64 = doc
            .root_element()
            .attribute("height")
            .unwrap()
            .parse()
            .unwrap();
        let lowest = doc
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .map(|t| t.attribute("y").unwrap().parse::<f64>().unwrap())
            .fold(0.0, f64::max);
        assert!(lowest < height - 2.0, "{lowest} in {height}");
    }

    #[test]
    fn train_and_validation_part_when_together_they_are_too_many() {
        let split = |groups: usize| -> Vec<(String, usize)> {
            let (train, val): (Vec<Line>, Vec<Line>) =
                lines(groups).into_iter().partition(|l| l.what == "train");
            loss_charts("beat", train, val)
                .into_iter()
                .map(|(name, _, lines)| (name, lines.len()))
                .collect()
        };
        assert_eq!(split(4), [("loss-beat".to_string(), 8)]);
        assert_eq!(
            split(5),
            [
                ("loss-beat".to_string(), 5),
                ("loss-beat-validation".to_string(), 5)
            ]
        );
        let only_val = loss_charts("beat", Vec::new(), lines(1));
        assert_eq!(only_val.len(), 1);
        assert_eq!(only_val[0].0, "loss-beat");
    }
}
