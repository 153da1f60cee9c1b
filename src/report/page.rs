//! The report's HTML page: one self-contained document (inline CSS and SVG, the data embedded
//! as JSON, no script, nothing fetched). It is also well-formed XML (void elements closed, only
//! XML's five entities), so tools without an HTML parser can read it.

use std::fmt::Write;

use super::Figures;
use super::curves::Plot;
use super::gather::{CellData, MISSING_LISTED, ReportData};
use crate::registry::RunStatus;
use crate::table::render::{html, html_escape};

/// The id of the `<script type="application/json">` element holding [`page_data`].
pub const DATA_ID: &str = "beatlab-data";

const STYLE: &str = "
:root{--fg:#1d1d1f;--muted:#666;--line:#ddd;--bg:#fff;--soft:#f6f7f9}
*{box-sizing:border-box}
body{margin:0 auto;max-width:1280px;padding:24px 32px 64px;font:14px/1.45 system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;color:var(--fg);background:var(--bg)}
h1{font-size:26px;margin:0 0 4px}h2{font-size:19px;margin:36px 0 10px;padding-bottom:4px;border-bottom:1px solid var(--line)}
h3{font-size:15px;margin:16px 0 6px}
.description{color:var(--muted);margin:0 0 12px;max-width:900px}
dl.provenance{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:8px 0 12px}
dl.provenance dt{color:var(--muted)}dl.provenance dd{margin:0;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px}
ul.counts{list-style:none;padding:0;margin:8px 0;display:flex;flex-wrap:wrap;gap:8px}
ul.counts li{padding:3px 10px;border-radius:12px;background:var(--soft);border:1px solid var(--line)}
.status-finished{color:#05603a}.status-failed{color:#b42318}.status-stale{color:#b54708}.status-running,.status-pending{color:#175cd3}.status-missing{color:var(--muted)}
table{border-collapse:collapse;margin:8px 0}
th,td{border:1px solid var(--line);padding:4px 8px;text-align:left;vertical-align:top}
thead th{background:var(--soft)}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.missing{color:var(--muted)}td.paper{color:#444;background:#fafafa}
caption{text-align:left;font-weight:600;padding:4px 0}
tfoot td{color:var(--muted);font-size:12px;border:none;padding-top:8px}
.plots{display:flex;flex-wrap:wrap;gap:16px}
figure{margin:0;border:1px solid var(--line);border-radius:6px;padding:6px;background:#fff}
figure svg{display:block;max-width:100%;height:auto}
pre.error{white-space:pre-wrap;background:#fff5f5;border:1px solid #f4c7c3;padding:8px;border-radius:4px;font-size:12px;max-height:320px;overflow:auto}
.none{color:var(--muted)}
table.cells td.nowrap{white-space:nowrap}
table.generations{font-size:12.5px;max-width:100%}table.generations td{max-width:420px}
table.generations td.reference{background:#fafafa}
p.note{color:var(--muted);font-size:12.5px;margin:4px 0 8px}
code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px}
";

/// The whole document.
pub fn render(data: &ReportData, figures: &Figures) -> String {
    let mut s = String::with_capacity(64 * 1024);
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/>\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"/>\
         <title>{} — beatlab report</title><style>{STYLE}</style></head>\n<body>\n",
        html_escape(&data.experiment)
    );
    header(&mut s, data);
    s.push_str("<section id=\"table\"><h2>Table</h2>\n");
    s.push_str(&html(&data.table));
    s.push_str("</section>\n");
    plots(
        &mut s,
        "bars",
        "Table metrics",
        &figures.bars,
        "No finished run has a table metric yet.",
    );
    if let Some(p) = &figures.parallel {
        plots(&mut s, "sweep", "Sweep", std::slice::from_ref(p), "");
    }
    plots(
        &mut s,
        "curves",
        "Training curves",
        &figures.curves,
        "No metric points recorded yet.",
    );
    if !figures.codebook.is_empty() {
        plots(&mut s, "codebook", "Codebook use", &figures.codebook, "");
    }
    if !figures.ecg.is_empty() {
        let with = super::ecg::groups_with_windows(data);
        let note = match with > figures.ecg.len() {
            true => format!(
                "<p class=\"note\">The first validation window of {} of the {with} cell groups, \
                 spread over the plan; every run folder holds its own \
                 (<code>samples-&lt;stage&gt;.json</code>).</p>",
                figures.ecg.len()
            ),
            false => String::new(),
        };
        section(
            &mut s,
            ("ecg", "Validation ECG windows"),
            &note,
            &figures.ecg,
            "",
        );
    }
    if !figures.confusion.is_empty() {
        plots(
            &mut s,
            "closed-qa",
            "Closed-QA answers",
            &figures.confusion,
            "",
        );
    }
    let generations = super::qa::generations_html(data);
    if !generations.is_empty() {
        s.push_str("<section id=\"generations\"><h2>Generations beside their references</h2>\n");
        s.push_str(&generations);
        s.push_str("</section>\n");
    }
    cells(&mut s, data);
    failures(&mut s, data);
    let _ = write!(
        s,
        "<script type=\"application/json\" id=\"{DATA_ID}\">{}</script>\n</body></html>\n",
        json_for_html(&page_data(data))
    );
    s
}

/// Experiment, description, provenance and the count of cells by status.
fn header(s: &mut String, data: &ReportData) {
    let _ = write!(
        s,
        "<header id=\"summary\"><h1>{}</h1>",
        html_escape(&data.experiment)
    );
    if !data.description.is_empty() {
        let _ = write!(
            s,
            "<p class=\"description\">{}</p>",
            html_escape(&data.description)
        );
    }
    let revisions = data.revisions();
    let mut rows = vec![
        ("spec", data.spec_path.clone()),
        (
            "code revision",
            match revisions.is_empty() {
                true => "(no runs)".to_string(),
                false => revisions.join(", "),
            },
        ),
        ("cells", format!("{} shown", data.cell_count)),
    ];
    if let Some(f) = &data.filter {
        rows.push(("runs where", f.clone()));
    }
    s.push_str("<dl class=\"provenance\">");
    for (k, v) in rows {
        let _ = write!(s, "<dt>{k}</dt><dd>{}</dd>", html_escape(&v));
    }
    s.push_str("</dl><ul class=\"counts\">");
    for (status, count) in data.counts() {
        let _ = write!(
            s,
            "<li class=\"status-{status}\" data-status=\"{status}\" data-count=\"{count}\">{status} {count}</li>"
        );
    }
    s.push_str("</ul></header>\n");
}

/// A section of figures.
fn plots(s: &mut String, id: &str, title: &str, plots: &[Plot], empty: &str) {
    section(s, (id, title), "", plots, empty);
}

/// A section of figures with `note` (markup) under its heading.
fn section(s: &mut String, (id, title): (&str, &str), note: &str, plots: &[Plot], empty: &str) {
    let _ = write!(
        s,
        "<section id=\"{id}\"><h2>{title}</h2>\n{note}<div class=\"plots\">"
    );
    if plots.is_empty() {
        let _ = write!(s, "<p class=\"none\">{empty}</p>");
    }
    for p in plots {
        let _ = writeln!(
            s,
            "<figure id=\"plot-{name}\">{svg}</figure>",
            name = html_escape(&p.name),
            svg = p.svg
        );
    }
    s.push_str("</div></section>\n");
}

/// One row per cell: its run, status, attempt, wall time and provenance.
fn cells(s: &mut String, data: &ReportData) {
    s.push_str(
        "<section id=\"cells\"><h2>Cells</h2>\n<table class=\"cells\"><thead><tr>\
         <th>#</th><th>cell</th><th>status</th><th>run</th><th>attempt</th><th>stage</th>\
         <th>wall time</th><th>host</th><th>device</th><th>code</th></tr></thead><tbody>\n",
    );
    for c in &data.cells {
        let status = c.status().map_or("missing", RunStatus::as_str);
        let r = c.run.as_ref();
        let text = |f: &dyn Fn(&crate::registry::RunRow) -> String| {
            html_escape(&r.map(f).unwrap_or_default())
        };
        let _ = writeln!(
            s,
            "<tr data-cell=\"{idx}\" data-status=\"{status}\"><td>{idx}</td><td>{label}</td>\
             <td class=\"status-{status}\">{status}</td><td class=\"nowrap\"><code>{run}</code></td>\
             <td>{attempt}</td><td>{stage}</td><td class=\"num nowrap\">{wall}</td><td>{host}</td>\
             <td>{device}</td><td class=\"nowrap\" title=\"{code}\"><code>{short}</code></td></tr>",
            idx = c.index,
            label = html_escape(&c.label),
            run = text(&|r| r.id.clone()),
            attempt = text(&|r| r.attempt.to_string()),
            stage = text(&|r| r.stage.clone().unwrap_or_default()),
            wall = c.wall_s().map_or(String::new(), duration),
            host = text(&|r| r.host.clone()),
            device = text(&|r| r.device.clone()),
            code = text(&|r| revision(r, usize::MAX)),
            // The header names every revision in full; a row's 12 characters tell them apart.
            short = text(&|r| revision(r, 12)),
        );
    }
    if data.unlisted_missing > 0 {
        let _ = writeln!(
            s,
            "<tr class=\"unlisted\" data-unlisted=\"{n}\"><td colspan=\"10\">\
             … and {n} more cells without a run (the first {MISSING_LISTED} are listed)</td></tr>",
            n = data.unlisted_missing
        );
    }
    s.push_str("</tbody></table></section>\n");
}

/// The run's code revision, its first `len` characters, `+dirty` when it had changes.
fn revision(r: &crate::registry::RunRow, len: usize) -> String {
    let rev: String = r.code_rev.chars().take(len).collect();
    match r.code_dirty {
        true => format!("{rev}+dirty"),
        false => rev,
    }
}

/// Failed runs with their error text.
fn failures(s: &mut String, data: &ReportData) {
    let failed: Vec<&CellData> = data
        .cells
        .iter()
        .filter(|c| c.status() == Some(RunStatus::Failed))
        .collect();
    if failed.is_empty() {
        return;
    }
    s.push_str("<section id=\"failures\"><h2>Failed runs</h2>\n");
    for c in failed {
        let Some(r) = &c.run else { continue };
        let _ = writeln!(
            s,
            "<article class=\"failure\" data-run=\"{id}\"><h3>{label} — <code>{id}</code>{stage}</h3>\
             <pre class=\"error\">{error}</pre></article>",
            id = html_escape(&r.id),
            label = html_escape(&c.label),
            stage = r
                .stage
                .as_ref()
                .map_or(String::new(), |st| format!(" (stage {})", html_escape(st))),
            error = html_escape(r.error.as_deref().unwrap_or("(no error text recorded)")),
        );
    }
    s.push_str("</section>\n");
}

/// `12.3 s`, `4 min 03 s`, `2 h 05 min`.
pub fn duration(secs: f64) -> String {
    if secs < 60.0 {
        return format!("{secs:.1} s");
    }
    let total = secs.round() as u64;
    if total < 3600 {
        return format!("{} min {:02} s", total / 60, total % 60);
    }
    format!("{} h {:02} min", total / 3600, total % 3600 / 60)
}

/// What the page embeds: every shown cell's run, summaries and metric points.
pub fn page_data(data: &ReportData) -> serde_json::Value {
    let cells: Vec<serde_json::Value> = data
        .cells
        .iter()
        .map(|c| {
            serde_json::json!({
                "index": c.index,
                "label": c.label,
                "group": data.groups[c.group].label,
                "status": c.status().map_or("missing", RunStatus::as_str),
                "run": c.run,
                "summaries": c.summaries,
                "metrics": c.metrics,
            })
        })
        .collect();
    serde_json::json!({
        "experiment": data.experiment,
        "spec": data.spec_path,
        "filter": data.filter,
        "cells": cells,
        "unlisted_missing": data.unlisted_missing,
    })
}

/// JSON that can sit inside `<script>`: `<`, `>` and `&` as `\u` escapes (valid JSON, and
/// never `</script>`).
pub fn json_for_html(v: &serde_json::Value) -> String {
    v.to_string()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_json_cannot_close_its_script_and_reads_back() {
        let v = serde_json::json!({"e": "</script><b>&"});
        let text = json_for_html(&v);
        assert!(!text.contains('<') && !text.contains('&'), "{text}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&text).unwrap(), v);
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(3.21), "3.2 s");
        assert_eq!(duration(243.0), "4 min 03 s");
        assert_eq!(duration(7500.0), "2 h 05 min");
    }
}
