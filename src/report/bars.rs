//! Grouped bar charts of the table's metrics: one chart per metric, one cluster of bars per
//! table row (its row-key values), one bar per column group. A bar stands at the mean over the
//! finished runs of its table cell, its whisker spans ± one sample standard deviation (the seeds'
//! spread, and that of any axis the table averages over), and the paper's value is a diamond on
//! the bar it belongs to.
//!
//! The charts are read from the [`Table`] itself, so a bar cannot disagree with the table beside
//! it. Every bar carries its numbers (`data-metric`, `data-row`, `data-group`, `data-mean`,
//! `data-std`, `data-n`) and every paper marker its value (`data-value`).

use super::chart::{Frame, LegendEntry, MARGIN, Scale, legend, legend_rows, short};
use super::curves::Plot;
use super::gather::ReportData;
use super::svg::{Marker, Svg, style, text_width};
use crate::table::render::html_escape;
use crate::table::{ColumnKind, Entry, Stat, Table};

/// Width of one bar (with its gap) and height of the plot area.
const BAR_W: f64 = 22.0;
const PLOT_H: f64 = 230.0;

/// One bar: its cluster and group, our value and the paper's.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    /// Index into [`Bars::rows`].
    pub row: usize,
    /// Index into [`Bars::groups`].
    pub group: usize,
    /// `None`: no finished run has the metric.
    pub stat: Option<Stat>,
    pub paper: Option<f64>,
}

/// The bars of one metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Bars {
    pub metric: String,
    /// What the clusters are (the table's row-key headers), for the x axis.
    pub x_label: String,
    /// Cluster labels: the table's row keys.
    pub rows: Vec<String>,
    /// Bar labels within a cluster: the table's column groups (one empty label without).
    pub groups: Vec<String>,
    pub bars: Vec<Bar>,
}

impl Bars {
    fn has_values(&self) -> bool {
        self.bars
            .iter()
            .any(|b| b.stat.is_some() || b.paper.is_some())
    }
}

/// The bars of every metric of `t`, in the table's column order. A table without `[table]`
/// (one row per summary, one column per cell) gives one chart per row with a bar per cell.
pub fn of_table(t: &Table) -> Vec<Bars> {
    let keys: Vec<usize> = (0..t.columns.len())
        .filter(|&i| t.columns[i].kind == ColumnKind::Key)
        .collect();
    let key_labels: Vec<&str> = keys.iter().map(|&i| t.columns[i].label.as_str()).collect();
    let mut out: Vec<Bars> = Vec::new();
    for row in &t.rows {
        let row_label = keys
            .iter()
            .filter_map(|&k| match row.get(k) {
                Some(Entry::Text(s)) => Some(s.as_str()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join(", ");
        for (j, col) in t.columns.iter().enumerate() {
            let ColumnKind::Metric { metric } = &col.kind else {
                continue;
            };
            let (metric, x_label, cluster, group) = match metric.is_empty() {
                true => (row_label.clone(), "cell".to_string(), col.label.clone(), ""),
                false => (
                    metric.clone(),
                    key_labels.join(", "),
                    row_label.clone(),
                    col.group.as_str(),
                ),
            };
            let stat = match row.get(j) {
                Some(Entry::Stat(s)) => Some(*s),
                _ => None,
            };
            let paper = match (t.columns.get(j + 1).map(|c| &c.kind), row.get(j + 1)) {
                (Some(ColumnKind::Paper { metric: m }), Some(Entry::Paper(p))) if *m == metric => {
                    Some(*p)
                }
                _ => None,
            };
            let chart = match out.iter().position(|b| b.metric == metric) {
                Some(i) => &mut out[i],
                None => {
                    out.push(Bars {
                        metric,
                        x_label,
                        rows: Vec::new(),
                        groups: Vec::new(),
                        bars: Vec::new(),
                    });
                    out.last_mut().expect("just pushed")
                }
            };
            let (r, g) = (
                index_of(&mut chart.rows, &cluster),
                index_of(&mut chart.groups, group),
            );
            chart.bars.push(Bar {
                row: r,
                group: g,
                stat,
                paper,
            });
        }
    }
    out
}

/// The position of `label` in `labels`, added at the end when new.
fn index_of(labels: &mut Vec<String>, label: &str) -> usize {
    match labels.iter().position(|l| l == label) {
        Some(i) => i,
        None => {
            labels.push(label.to_string());
            labels.len() - 1
        }
    }
}

/// One chart per table metric that has a value or a paper value.
pub fn bar_plots(data: &ReportData) -> Vec<Plot> {
    let mut plots: Vec<Plot> = Vec::new();
    for b in of_table(&data.table).iter().filter(|b| b.has_values()) {
        let mut name = format!("bars-{}", slug(&b.metric));
        if plots.iter().any(|p| p.name == name) {
            name = format!("{name}-{}", plots.len());
        }
        plots.push(Plot {
            name,
            svg: bar_chart(data, b),
        });
    }
    plots
}

/// A metric key as a file name (`beat/val/loss` -> `beat-val-loss`).
pub fn slug(key: &str) -> String {
    key.chars()
        .map(|c| match c.is_ascii_alphanumeric() || c == '_' {
            true => c,
            false => '-',
        })
        .collect()
}

/// The chart of one metric's bars, the legend of the column groups below.
fn bar_chart(data: &ReportData, b: &Bars) -> String {
    let title = data.label(&b.metric);
    let groups = b.groups.len().max(1);
    let widths: Vec<f64> = b
        .rows
        .iter()
        .map(|r| (groups as f64 * BAR_W + 18.0).max(text_width(r, 10.0) + 12.0))
        .collect();
    let (ml, mt, mr, mb) = MARGIN;
    // Wide enough for the bars, 150 px, and the title.
    let plot_w = widths
        .iter()
        .sum::<f64>()
        .max(150.0)
        .max(text_width(&title, 13.0) + 8.0 - mr);
    let width = ml + plot_w + mr;
    let entries = legend_entries(b);
    let caption = legend_caption(data);
    let legend_w = width - ml - mr - text_width(&caption, 11.0);
    let legend_h = 16.0 * legend_rows(&entries, legend_w) as f64;
    let notes = wrap(&explanation(b), width - ml - 8.0);
    let height = mt + PLOT_H + mb + legend_h + 14.0 * notes.len() as f64 + 8.0;
    let mut svg = Svg::new(width, height, "plot-bars", &title);
    let values = b.bars.iter().flat_map(|bar| {
        let (mean, std) = bar
            .stat
            .map_or((f64::NAN, 0.0), |s| (s.mean, s.std.unwrap_or(0.0)));
        [mean - std, mean + std, bar.paper.unwrap_or(f64::NAN)]
    });
    let frame = Frame {
        left: ml,
        top: mt,
        width: plot_w,
        height: PLOT_H,
        x: Scale::Linear { lo: 0.0, hi: 1.0 },
        y: Scale::linear(values, true),
    };
    frame.draw_y(&mut svg, &title);
    svg.text((ml, 18.0), "start", "class=\"title\"", &title);
    let mut x0 = ml + (plot_w - widths.iter().sum::<f64>()) / 2.0;
    for (r, label) in b.rows.iter().enumerate() {
        let start = x0 + (widths[r] - groups as f64 * BAR_W) / 2.0;
        for bar in b.bars.iter().filter(|bar| bar.row == r) {
            let left = start + bar.group as f64 * BAR_W;
            draw_bar(&mut svg, &frame, b, bar, (left + 1.5, BAR_W - 3.0));
        }
        svg.raw("<g class=\"tick\">");
        svg.text(
            (x0 + widths[r] / 2.0, frame.bottom() + 14.0),
            "middle",
            "",
            label,
        );
        svg.raw("</g>");
        x0 += widths[r];
    }
    frame.draw_box(&mut svg);
    svg.text(
        (ml + plot_w / 2.0, frame.bottom() + 32.0),
        "middle",
        "class=\"axis-label\"",
        &b.x_label,
    );
    let legend_top = frame.bottom() + mb - 6.0;
    if !entries.is_empty() {
        svg.text((ml, legend_top + 10.0), "start", "class=\"note\"", &caption);
        let x = ml + text_width(&caption, 11.0);
        legend(&mut svg, &entries, (x, legend_top), legend_w);
    }
    for (i, line) in notes.iter().enumerate() {
        let y = height - 8.0 - 14.0 * (notes.len() - 1 - i) as f64;
        svg.text((ml, y), "start", "class=\"note\"", line);
    }
    svg.finish()
}

/// One bar with its whisker and paper marker (or a dash where the value is missing).
fn draw_bar(svg: &mut Svg, frame: &Frame, b: &Bars, bar: &Bar, (left, w): (f64, f64)) {
    let cx = left + w / 2.0;
    let (row, group) = (&b.rows[bar.row], &b.groups[bar.group]);
    let place = format!(
        "data-metric=\"{}\" data-row=\"{}\" data-group=\"{}\"",
        html_escape(&b.metric),
        html_escape(row),
        html_escape(group)
    );
    let look = style(bar.group);
    let fill = look.colour;
    let name = match group.is_empty() {
        true => row.clone(),
        false => format!("{row}, {group}"),
    };
    match bar.stat {
        Some(s) => {
            let (top, base) = (frame.py(s.mean.max(0.0)), frame.py(s.mean.min(0.0)));
            let std = s.std.map_or(String::new(), |v| v.to_string());
            let attrs = format!(
                "class=\"bar\" {place} data-mean=\"{}\" data-std=\"{std}\" data-n=\"{}\" fill=\"{fill}\" fill-opacity=\"0.85\"",
                s.mean, s.n
            );
            let spread = s.std.map_or(String::new(), |v| format!(" ± {}", short(v)));
            let tip = format!("{name}: {}{spread} (n = {})", short(s.mean), s.n);
            svg.rect((left, top), (w, base - top), &attrs, &tip);
            if look.marker != Marker::None {
                // Past the palette's ten colours a bar's marker tells it apart, inside the bar.
                let y = (top + 7.0).min(base - 5.0);
                svg.marker(look.marker, (cx, y), 8.0, "#fff");
            }
            if let Some(std) = s.std {
                let (lo, hi) = (s.mean - std, s.mean + std);
                let attrs = format!(
                    "class=\"error-bar\" {place} data-lo=\"{lo}\" data-hi=\"{hi}\" stroke=\"#222\" stroke-width=\"1.2\"",
                );
                let (ylo, yhi) = (frame.py(lo), frame.py(hi));
                svg.raw(&format!("<g {attrs}>"));
                svg.line((cx, ylo), (cx, yhi), "");
                svg.line((cx - 4.0, ylo), (cx + 4.0, ylo), "");
                svg.line((cx - 4.0, yhi), (cx + 4.0, yhi), "");
                svg.raw("</g>");
            }
        }
        None => {
            let attrs = format!("class=\"bar-missing note\" {place}");
            svg.text((cx, frame.py(0.0) - 4.0), "middle", &attrs, "—");
        }
    }
    if let Some(p) = bar.paper {
        let y = frame.py(p);
        let diamond = [(cx, y - 5.0), (cx + 5.0, y), (cx, y + 5.0), (cx - 5.0, y)];
        let attrs = format!(
            "class=\"paper-marker\" {place} data-value=\"{p}\" fill=\"#111\" stroke=\"#fff\" stroke-width=\"1\""
        );
        svg.polygon(&diamond, &attrs, &format!("{name}: paper {}", short(p)));
    }
}

/// The column groups' colours (none for a table without column groups).
fn legend_entries(b: &Bars) -> Vec<LegendEntry> {
    if b.groups.len() < 2 && b.groups.iter().all(String::is_empty) {
        return Vec::new();
    }
    b.groups
        .iter()
        .enumerate()
        .map(|(g, label)| LegendEntry {
            colour: style(g).colour.to_string(),
            marker: style(g).marker,
            dash: "",
            label: label.clone(),
        })
        .collect()
}

/// What the legend's colours are: the table's column fields, with their labels.
fn legend_caption(data: &ReportData) -> String {
    let fields: Vec<String> = data.table_columns.iter().map(|f| data.label(f)).collect();
    match fields.is_empty() {
        true => String::new(),
        false => format!("{}: ", fields.join(", ")),
    }
}

/// `parts` joined by ` · ` into lines of at most `width` pixels (10 px text).
fn wrap(parts: &[String], width: f64) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for p in parts {
        match lines.last_mut() {
            Some(l) if text_width(&format!("{l} · {p}"), 10.0) <= width => {
                l.push_str(" · ");
                l.push_str(p);
            }
            _ => lines.push(p.clone()),
        }
    }
    lines
}

/// The notes under a chart: what a bar, a whisker and a diamond mean.
fn explanation(b: &Bars) -> Vec<String> {
    let mut parts = vec!["bar: mean over finished runs".to_string()];
    if b.bars
        .iter()
        .any(|bar| bar.stat.is_some_and(|s| s.std.is_some()))
    {
        parts.push("whisker: ± sample std".into());
    }
    if b.bars.iter().any(|bar| bar.paper.is_some()) {
        parts.push("◆ paper".into());
    }
    if b.bars.iter().any(|bar| bar.stat.is_none()) {
        parts.push("— no finished run".into());
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{Column, Delta};

    fn col(label: &str, kind: ColumnKind, group: &str) -> Column {
        Column {
            label: label.into(),
            kind,
            group: group.into(),
        }
    }

    #[test]
    fn bars_come_from_the_table_cells_and_their_paper_columns() {
        let m = |k: &str| ColumnKind::Metric { metric: k.into() };
        let stat = |mean: f64, std: Option<f64>| Stat { mean, std, n: 2 };
        let t = Table {
            title: "t".into(),
            columns: vec![
                col("levels", ColumnKind::Key, ""),
                col("a loss", m("loss"), "a"),
                col(
                    "paper",
                    ColumnKind::Paper {
                        metric: "loss".into(),
                    },
                    "a",
                ),
                col(
                    "Δ",
                    ColumnKind::Delta {
                        metric: "loss".into(),
                    },
                    "a",
                ),
                col("b loss", m("loss"), "b"),
                col("b acc", m("acc"), "b"),
            ],
            rows: vec![
                vec![
                    Entry::Text("1".into()),
                    Entry::Stat(stat(0.4, Some(0.1))),
                    Entry::Paper(0.5),
                    Entry::Delta(Delta {
                        value: -0.1,
                        paper: 0.5,
                    }),
                    Entry::Missing,
                    Entry::Stat(stat(0.9, None)),
                ],
                vec![
                    Entry::Text("2".into()),
                    Entry::Stat(stat(0.3, None)),
                    Entry::Empty,
                    Entry::Empty,
                    Entry::Stat(stat(0.2, None)),
                    Entry::Missing,
                ],
            ],
            digits: 2,
            missing: 0,
            cells: 4,
            averaged: vec![],
            source: String::new(),
            claims: vec![],
        };
        let bars = of_table(&t);
        assert_eq!(bars.len(), 2);
        let loss = &bars[0];
        assert_eq!(
            (loss.metric.as_str(), loss.x_label.as_str()),
            ("loss", "levels")
        );
        assert_eq!(loss.rows, ["1", "2"]);
        assert_eq!(loss.groups, ["a", "b"]);
        let got: Vec<(usize, usize, Option<f64>, Option<f64>)> = loss
            .bars
            .iter()
            .map(|b| (b.row, b.group, b.stat.map(|s| s.mean), b.paper))
            .collect();
        assert_eq!(
            got,
            [
                (0, 0, Some(0.4), Some(0.5)),
                (0, 1, None, None),
                (1, 0, Some(0.3), None),
                (1, 1, Some(0.2), None),
            ]
        );
        assert_eq!(bars[1].metric, "acc");
        assert_eq!(bars[1].groups, ["b"]);
        assert_eq!(bars[1].bars[1].stat, None);
        assert_eq!(slug("beat/val/loss"), "beat-val-loss");
    }

    #[test]
    fn twelve_column_groups_get_twelve_looks() {
        let b = Bars {
            metric: "loss".into(),
            x_label: "x".into(),
            rows: vec!["r".into()],
            groups: (0..12).map(|g| format!("g{g}")).collect(),
            bars: vec![],
        };
        let looks: std::collections::HashSet<(String, Marker)> = legend_entries(&b)
            .into_iter()
            .map(|e| (e.colour, e.marker))
            .collect();
        assert_eq!(looks.len(), 12);
    }
}
