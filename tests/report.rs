//! `beatlab report` on small experiments trained by the binary: the page is one well-formed
//! document whose table, bar charts, parallel coordinates, curves, ECG windows, closed-QA
//! matrix, generations and cell rows agree with the registry and the run folders; it loads in
//! headless Chromium with no console message and no request; bad input is refused with exit
//! code 2.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use beatlab::registry::{CellOffer, Registry, RunRow, RunStatus};

#[path = "report/browser.rs"]
mod browser;
#[allow(dead_code)]
mod common;
use common::{TOY_MULTIMODAL, beatlab};

/// Two cells (single VQ and DVQ) over two seeds, two epochs each, with a paper value and
/// display labels.
const SPEC: &str = concat!(
    r#"
[experiment]
name = "rep"
description = "A report's <test> & its cells"

[data]
source = "synthetic"
synthetic_records = 32
synthetic_duration_s = 4.0
val_fraction = 0.25
test_fraction = 0.1
"#,
    tiny_beat!(),
    r#"
[[stage]]
name = "beat"
kind = "beat"
epochs = 2
batch = 8
lr = 0.001
t_max = 2
checkpoint_every = 0

[sweep]
beat.dvq_levels = [1, 2]
seeds = [0, 1]

[table]
title = "Report test"
rows = ["beat.dvq_levels"]
metrics = ["beat/val/loss", "beat/val/code_pct"]

[table.labels]
"beat.dvq_levels" = "VQ levels"
"beat/val/loss" = "val loss"

[paper]
source = "a paper"

[[paper.cell]]
at = { "beat.dvq_levels" = 2 }
values = { "beat/val/loss" = 0.5 }
"#
);

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Parses `data-points="step,value ..."`.
fn points(attr: &str) -> Vec<(i64, f64)> {
    attr.split_whitespace()
        .map(|p| {
            let (s, v) = p.split_once(',').unwrap();
            (s.parse().unwrap(), v.parse().unwrap())
        })
        .collect()
}

fn by_id<'a>(doc: &'a roxmltree::Document, id: &str) -> roxmltree::Node<'a, 'a> {
    doc.descendants()
        .find(|n| n.attribute("id") == Some(id))
        .unwrap_or_else(|| panic!("no element #{id}"))
}

/// Trains [`SPEC`]'s four cells in `d`.
fn train(d: &Path) {
    std::fs::write(d.join("rep.toml"), SPEC).unwrap();
    ok(&beatlab(d, &["sweep", "rep.toml", "--quiet"]));
}

#[test]
fn the_report_of_a_trained_sweep_agrees_with_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    train(d);
    let reg = Registry::open_existing(&d.join("reg.db")).unwrap().unwrap();
    let runs = reg.runs(Some("rep"), None).unwrap();
    assert_eq!(runs.len(), 4);
    let out = beatlab(d, &["report", "rep.toml", "-o", "out"]);
    ok(&out);
    let index = d.join("out/index.html");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        Path::new("out/index.html").display().to_string()
    );
    let html = std::fs::read_to_string(&index).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    let doc = roxmltree::Document::parse_with_options(
        &html,
        roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        },
    )
    .expect("the page is well-formed");
    for n in doc.descendants() {
        let links = ["src", "href", "xlink:href"].map(|a| n.attribute(a));
        assert_eq!(links, [None; 3], "nothing to fetch: {:?}", n.tag_name());
    }

    // Header: the description escaped once, and the counts.
    let header = by_id(&doc, "summary");
    let text: String = header.descendants().filter_map(|n| n.text()).collect();
    assert!(text.contains("A report's <test> & its cells"), "{text}");
    let count = |status: &str| -> usize {
        header
            .descendants()
            .find(|n| n.attribute("data-status") == Some(status))
            .and_then(|n| n.attribute("data-count"))
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(
        (count("finished"), count("failed"), count("missing")),
        (4, 0, 0)
    );
    for r in &runs {
        assert!(
            text.contains(&r.code_rev),
            "code revision {} shown",
            r.code_rev
        );
    }

    // The table: both rows, the paper's value and a delta on the DVQ row.
    let table = by_id(&doc, "table");
    let rows: Vec<roxmltree::Node> = table
        .descendants()
        .filter(|n| n.has_tag_name("tr"))
        .collect();
    assert_eq!(rows.len(), 1 + 2 + 1, "header, two rows, footer");
    let paper: Vec<&str> = table
        .descendants()
        .filter(|n| n.attribute("class") == Some("num paper"))
        .filter_map(|n| n.attribute("data-value"))
        .collect();
    assert_eq!(paper, ["0.5"]);
    let mean_of = |levels: i64| -> f64 {
        let v: Vec<f64> = runs
            .iter()
            .filter(|r| r.cell_label.contains(&format!("beat.dvq_levels={levels}")))
            .map(|r| reg.summaries(&r.id).unwrap()["beat/val/loss"])
            .collect();
        assert_eq!(v.len(), 2, "two seeds of dvq_levels={levels}");
        v.iter().sum::<f64>() / 2.0
    };
    let delta: f64 = table
        .descendants()
        .find(|n| {
            n.attribute("class")
                .is_some_and(|c| c.starts_with("num delta"))
        })
        .and_then(|n| n.attribute("data-value"))
        .unwrap()
        .parse()
        .unwrap();
    assert!((delta - (mean_of(2) - 0.5)).abs() < 1e-9, "delta {delta}");

    // Curves: one loss chart for the stage; each group's train line is the mean over its seeds
    // of the registry's points, at every step.
    let chart = by_id(&doc, "plot-loss-beat");
    let curves: Vec<roxmltree::Node> = chart
        .descendants()
        .filter(|n| n.attribute("class") == Some("curve"))
        .collect();
    assert_eq!(curves.len(), 4, "train and validation of two groups");
    let mut checked = 0;
    for (levels, curve) in [1, 2].iter().zip(
        curves
            .iter()
            .filter(|c| c.attribute("data-series") == Some("beat/train/loss")),
    ) {
        assert!(
            curve
                .attribute("data-label")
                .unwrap()
                .contains(&format!("VQ levels={levels} ")),
            "groups in plan order, named by [table.labels]"
        );
        let mut expected: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
        for r in runs
            .iter()
            .filter(|r| r.cell_label.contains(&format!("beat.dvq_levels={levels}")))
        {
            for p in reg.metrics(&r.id).unwrap() {
                if p.key == "beat/train/loss" {
                    expected.entry(p.step).or_default().push(p.value);
                }
            }
        }
        let drawn = points(curve.attribute("data-points").unwrap());
        assert!(drawn.len() >= 4, "{drawn:?}");
        assert_eq!(drawn.len(), expected.len());
        for ((step, v), (es, ev)) in drawn.iter().zip(&expected) {
            assert_eq!(step, es);
            assert_eq!(ev.len(), 2, "both seeds at step {step}");
            assert!((v - ev.iter().sum::<f64>() / 2.0).abs() < 1e-12);
        }
        let pixels = curve.attribute("points").unwrap().split(' ').count();
        assert_eq!(pixels, drawn.len(), "one vertex per point");
        checked += 1;
    }
    assert_eq!(checked, 2);
    assert!(
        chart
            .descendants()
            .any(|n| n.attribute("class") == Some("band")),
        "seeds differ: a min-max band"
    );
    let file = std::fs::read_to_string(d.join("out/plots/loss-beat.svg")).unwrap();
    assert!(html.contains(&file), "the plot file is the inlined chart");
    by_id(&doc, "plot-code_pct-beat");
    by_id(&doc, "plot-perplexity-beat");

    // ECG windows: per group, the first window of its first cell, 12 leads, each with the input,
    // the reconstruction over its first part and the prediction after it, as saved by the stage.
    let first = &runs.iter().rev().find(|r| r.cell_index == 0).unwrap();
    let saved: beatlab::report::samples::BeatSamples = serde_json::from_str(
        &std::fs::read_to_string(Path::new(&first.run_dir).join("samples-beat.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(saved.leads.len(), 12);
    assert_eq!(saved.windows.len(), 2);
    let figure = by_id(&doc, "plot-ecg-0");
    let leads: Vec<roxmltree::Node> = figure
        .descendants()
        .filter(|n| n.has_tag_name("g") && n.attribute("class") == Some("lead"))
        .collect();
    assert_eq!(leads.len(), 12);
    let w = &saved.windows[0];
    for (i, g) in leads.iter().enumerate() {
        assert_eq!(g.attribute("data-lead"), Some(saved.leads[i].as_str()));
        let count = |class: &str| -> Vec<f64> {
            let line = g
                .children()
                .find(|n| n.attribute("class") == Some(class))
                .unwrap_or_else(|| panic!("{class} of lead {i}"));
            line.attribute("points")
                .unwrap()
                .split(' ')
                .map(|p| p.split_once(',').unwrap().0.parse().unwrap())
                .collect()
        };
        let (signal, recon, pred) = (
            count("ecg-signal"),
            count("ecg-reconstruction"),
            count("ecg-prediction"),
        );
        assert_eq!(signal.len(), w.signal[i].len());
        assert_eq!(recon.len(), saved.input_len);
        assert_eq!(pred.len(), saved.predict_len);
        assert_eq!(signal.len(), saved.input_len + saved.predict_len);
        // The reconstruction starts with the input; the prediction starts where it ends.
        assert_eq!(recon[0], signal[0]);
        assert_eq!(pred[0], signal[saved.input_len]);
    }
    by_id(&doc, "plot-ecg-1");

    bars_agree_with_the_registry(&doc, &reg, &runs);
    parallel_coordinates_agree_with_the_registry(&doc, &reg, &runs);

    // Cells: one row per cell with its run and status; the embedded data holds every point.
    let cells = by_id(&doc, "cells");
    let ids: Vec<String> = cells
        .descendants()
        .filter(|n| n.attribute("data-status") == Some("finished"))
        .map(|n| n.descendants().filter_map(|t| t.text()).collect())
        .collect();
    assert_eq!(ids.len(), 4);
    for r in &runs {
        assert!(ids.iter().any(|row| row.contains(&r.id)), "{} listed", r.id);
    }
    let data: serde_json::Value =
        serde_json::from_str(by_id(&doc, "beatlab-data").text().unwrap()).unwrap();
    for c in data["cells"].as_array().unwrap() {
        let id = c["run"]["id"].as_str().unwrap();
        let n: usize = c["metrics"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_array().unwrap().len())
            .sum();
        assert_eq!(n, reg.metrics(id).unwrap().len(), "every point of {id}");
    }
    assert!(
        doc.descendants()
            .all(|n| n.attribute("id") != Some("failures"))
    );
}

/// The elements under `node` of class `class`.
fn of_class<'a, 'i>(node: roxmltree::Node<'a, 'i>, class: &str) -> Vec<roxmltree::Node<'a, 'i>> {
    node.descendants()
        .filter(|n| n.attribute("class") == Some(class))
        .collect()
}

fn num(node: &roxmltree::Node, attr: &str) -> f64 {
    node.attribute(attr)
        .unwrap_or_else(|| panic!("no {attr}"))
        .parse()
        .unwrap_or_else(|e| panic!("{attr}: {e}"))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

/// The summaries of `key` of the runs of `dvq_levels`, one per seed.
fn seed_values(reg: &Registry, runs: &[RunRow], levels: i64, key: &str) -> Vec<f64> {
    runs.iter()
        .filter(|r| r.cell_label.contains(&format!("beat.dvq_levels={levels}")))
        .map(|r| reg.summaries(&r.id).unwrap()[key])
        .collect()
}

/// One bar chart per table metric; each bar is the mean of its row's seeds with a whisker of
/// their sample std, its height in proportion; the paper's value marks only the DVQ loss bar.
fn bars_agree_with_the_registry(doc: &roxmltree::Document, reg: &Registry, runs: &[RunRow]) {
    for (metric, id, title) in [
        ("beat/val/loss", "plot-bars-beat-val-loss", "val loss"),
        (
            "beat/val/code_pct",
            "plot-bars-beat-val-code_pct",
            "beat/val/code_pct",
        ),
    ] {
        let chart = by_id(doc, id);
        let text: String = chart.descendants().filter_map(|n| n.text()).collect();
        assert!(text.contains(title), "{id}: {text}");
        assert!(text.contains("VQ levels"), "x axis named by [table.labels]");
        let bars = of_class(chart, "bar");
        assert_eq!(bars.len(), 2, "{id}: one bar per row");
        let mut heights = Vec::new();
        for (bar, levels) in bars.iter().zip([1, 2]) {
            assert_eq!(bar.attribute("data-metric"), Some(metric));
            assert_eq!(bar.attribute("data-row"), Some(levels.to_string().as_str()));
            let v = seed_values(reg, runs, levels, metric);
            assert_eq!(v.len(), 2);
            let mean = (v[0] + v[1]) / 2.0;
            let std = ((v[0] - mean).powi(2) + (v[1] - mean).powi(2)).sqrt();
            assert!(close(num(bar, "data-mean"), mean), "{id} {levels}");
            assert!(close(num(bar, "data-std"), std), "{id} {levels}");
            assert_eq!(bar.attribute("data-n"), Some("2"));
            let whisker = of_class(chart, "error-bar")
                .into_iter()
                .find(|w| w.attribute("data-row") == bar.attribute("data-row"))
                .expect("a whisker on every bar of two seeds");
            assert!(close(num(&whisker, "data-lo"), mean - std));
            assert!(close(num(&whisker, "data-hi"), mean + std));
            heights.push((num(bar, "height"), mean));
        }
        // Bars start at 0, so their heights are in the ratio of their means (to the pixel
        // rounding).
        let (h1, m1) = heights[0];
        let (h2, m2) = heights[1];
        assert!(
            (h1 * m2 - h2 * m1).abs() <= 0.02 * (m1 + m2),
            "{id}: heights {h1}, {h2} for means {m1}, {m2}"
        );
        let markers = of_class(chart, "paper-marker");
        let marked: Vec<(&str, f64)> = markers
            .iter()
            .map(|m| (m.attribute("data-row").unwrap(), num(m, "data-value")))
            .collect();
        match metric {
            "beat/val/loss" => assert_eq!(marked, [("2", 0.5)]),
            _ => assert!(marked.is_empty(), "{id}: no paper value: {marked:?}"),
        }
    }
}

/// The sweep's parallel coordinates: the dvq_levels axis and the first table metric's, one
/// line per finished run through its cell's value and its summary, higher values drawn higher.
fn parallel_coordinates_agree_with_the_registry(
    doc: &roxmltree::Document,
    reg: &Registry,
    runs: &[RunRow],
) {
    let plot = by_id(doc, "plot-parallel");
    let axes: Vec<&str> = of_class(plot, "pc-axis")
        .iter()
        .filter_map(|a| a.attribute("data-key"))
        .collect();
    assert_eq!(axes, ["beat.dvq_levels", "beat/val/loss"]);
    let text: String = plot.descendants().filter_map(|n| n.text()).collect();
    assert!(
        text.contains("VQ levels") && text.contains("val loss"),
        "{text}"
    );
    let lines = of_class(plot, "pc-line");
    assert_eq!(lines.len(), runs.len(), "one line per finished run");
    let mut by_value: Vec<(f64, f64)> = Vec::new();
    for line in &lines {
        let cell: i64 = line.attribute("data-cell").unwrap().parse().unwrap();
        let run = runs.iter().find(|r| r.cell_index == cell).unwrap();
        let loss = reg.summaries(&run.id).unwrap()["beat/val/loss"];
        assert!(close(num(line, "data-metric"), loss), "cell {cell}");
        let levels = line.attribute("data-values").unwrap();
        let pair = format!("beat.dvq_levels={levels}");
        assert!(
            run.cell_label.split(", ").any(|p| p == pair),
            "{levels} for {}",
            run.cell_label
        );
        let points: Vec<&str> = line.attribute("points").unwrap().split(' ').collect();
        assert_eq!(points.len(), 2, "one vertex per axis");
        let y: f64 = points[1].split_once(',').unwrap().1.parse().unwrap();
        by_value.push((loss, y));
    }
    by_value.sort_by(|a, b| a.0.total_cmp(&b.0));
    for w in by_value.windows(2) {
        assert!(
            w[0].1 >= w[1].1,
            "a larger loss is drawn higher: {by_value:?}"
        );
    }
}

#[test]
fn failed_and_missing_cells_and_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("rep.toml"), SPEC).unwrap();
    // No registry yet: every cell missing, and still a page.
    ok(&beatlab(d, &["report", "rep.toml", "-o", "empty"]));
    let html = std::fs::read_to_string(d.join("empty/index.html")).unwrap();
    assert!(
        html.contains("data-status=\"missing\" data-count=\"4\""),
        "{html}"
    );

    // A failed run, recorded as a worker records one.
    let plan = beatlab::spec::load(d.join("rep.toml").as_path(), &Default::default())
        .unwrap()
        .plan()
        .unwrap();
    let reg = Registry::open(&d.join("reg.db")).unwrap();
    reg.upsert_experiment("rep", "rep.toml", "").unwrap();
    let offer = CellOffer::of(&plan.cells[1]);
    let policy = beatlab::registry::ClaimPolicy {
        experiment: "rep".into(),
        worker: "w".into(),
        host: "h".into(),
        device: "cpu".into(),
        code_rev: "r".into(),
        code_dirty: true,
        lease_s: 60.0,
        force_before: None,
        rerun_failed_before: None,
        experiment_dir: d.join("runs/rep"),
        max_failures: 3,
        job: None,
    };
    let claim = reg.claim(&policy, &[offer]).unwrap().unwrap();
    reg.end_run(
        &claim.run_id,
        "w",
        RunStatus::Failed,
        Some("loss <NaN> & diverged"),
    )
    .unwrap();
    ok(&beatlab(d, &["report", "rep.toml", "-o", "out"]));
    let html = std::fs::read_to_string(d.join("out/index.html")).unwrap();
    assert!(html.contains("loss &lt;NaN&gt; &amp; diverged"), "{html}");
    assert!(html.contains("data-status=\"failed\" data-count=\"1\""));
    assert!(html.contains("data-status=\"missing\" data-count=\"3\""));
    assert!(html.contains("r+dirty"));

    // --where keeps only the matching cells.
    ok(&beatlab(
        d,
        &[
            "report",
            "rep.toml",
            "-o",
            "w",
            "--where",
            "status = failed",
        ],
    ));
    let html = std::fs::read_to_string(d.join("w/index.html")).unwrap();
    assert!(html.contains("<dt>runs where</dt><dd>status = failed</dd>"));
    assert!(html.contains("<dd>1 shown</dd>"), "{html}");

    // Bad input: exit 2 with the reason, nothing written.
    for (args, says) in [
        (
            vec!["report", "rep.toml", "--where", "status = "],
            "--where",
        ),
        (vec!["report", "nope.toml"], "no experiment `nope.toml`"),
        (
            vec!["report", "rep.toml", "--metric", "beat/val/los"],
            "did you mean `beat/val/loss`?",
        ),
        (vec!["report", "rep.toml", "-o", "rep.toml"], "not a folder"),
    ] {
        let out = beatlab(d, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    assert!(!d.join("reports").exists(), "no report for bad input");
}

#[test]
fn the_page_loads_in_headless_chromium() {
    let Some(chromium) = browser::chromium() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The checks see what they must reject: a console error and a request of a control page.
    let control = d.join("control.html");
    std::fs::write(
        &control,
        "<!DOCTYPE html><html><body><img src=\"http://127.0.0.1:9/x.png\">\
         <script>console.error('control error')</script></body></html>",
    )
    .unwrap();
    let seen = browser::load(&chromium, d, &control);
    assert!(
        seen.console.iter().any(|l| l.contains("control error")),
        "console: {:?}",
        seen.console
    );
    assert_eq!(seen.requests, ["http://127.0.0.1:9/x.png"]);

    train(d);
    ok(&beatlab(d, &["report", "rep.toml", "-o", "out"]));
    let index = d.join("out/index.html");
    let html = std::fs::read_to_string(&index).unwrap();
    let page = browser::load(&chromium, d, &index);
    assert_eq!(page.console, Vec::<String>::new(), "no console message");
    assert_eq!(page.requests, Vec::<String>::new(), "no network request");
    // The DOM the browser built holds the table and every plot kind, each curve included.
    for part in [
        "id=\"summary\"",
        "<table class=\"beatlab-table\">",
        "id=\"plot-loss-beat\"",
        "class=\"plot plot-loss\"",
        "id=\"plot-code_pct-beat\"",
        "class=\"plot plot-codebook\"",
        "class=\"plot plot-ecg\"",
        "<table class=\"cells\">",
        "id=\"beatlab-data\"",
        "class=\"plot plot-bars\"",
        "id=\"plot-bars-beat-val-loss\"",
        "class=\"paper-marker\"",
        "class=\"plot plot-parallel\"",
    ] {
        assert!(page.dom.contains(part), "{part} in the DOM");
    }
    let curves = |s: &str| s.matches("class=\"curve\"").count();
    assert_eq!(curves(&page.dom), curves(&html));
    assert!(
        curves(&html) >= 4 + 2 * 3,
        "loss, Code% and perplexity curves"
    );

    let shot = browser::screenshot(&chromium, d, &index, (1280, 1600));
    assert_eq!((shot.width, shot.height), (1280, 1600));
    let inked = shot.inked();
    assert!(
        inked > 0.03,
        "{}: only {inked:.4} of pixels inked",
        shot.file.display()
    );
    // The first two series colours (Okabe-Ito blue and vermillion) are drawn.
    for rgb in [[0x00, 0x72, 0xB2], [0xD5, 0x5E, 0x00]] {
        let n = shot.near(rgb, 24);
        assert!(n > 100, "{rgb:?}: {n} pixels in {}", shot.file.display());
    }
}

/// Beat, warm-up, joint training and evaluation of a toy multimodal model (one cell).
fn multimodal_spec() -> String {
    format!(
        r#"
[experiment]
name = "mm"

{TOY_MULTIMODAL}
[backbone.lora]
rank = 4
alpha = 8

[eval]
max_items = 6
max_new_tokens = 6

[[stage]]
name = "beat"
kind = "beat"
epochs = 1
batch = 8

[[stage]]
name = "warmup"
kind = "warmup"
epochs = 1
batch = 8

[[stage]]
name = "joint"
kind = "joint"
epochs = 1
batch = 8
steps = 6

[[stage]]
name = "eval"
kind = "eval"
batch = 8

[table]
metrics = ["eval/accuracy", "eval/closed_qa/acc"]
"#
    )
}

/// An item type as the generations file spells it, reduced to letters (`diagnosisclosedqa`).
fn compact(item_type: &str) -> String {
    item_type
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect::<String>()
        .to_ascii_lowercase()
}

#[test]
fn a_multimodal_run_shows_its_closed_qa_answers_and_generations() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("mm.toml"), multimodal_spec()).unwrap();
    ok(&beatlab(d, &["run", "mm.toml", "--quiet"]));
    ok(&beatlab(d, &["report", "mm.toml", "-o", "out"]));
    let reg = Registry::open_existing(&d.join("reg.db")).unwrap().unwrap();
    let run = reg.runs(Some("mm"), None).unwrap().remove(0);
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(Path::new(&run.run_dir).join("generations-eval.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    let html = std::fs::read_to_string(d.join("out/index.html")).unwrap();
    let doc = roxmltree::Document::parse_with_options(
        &html,
        roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        },
    )
    .expect("the page is well-formed");

    // The matrix counts every closed-QA line of the file by (correct, chosen) option.
    let mut expected: BTreeMap<(String, String), usize> = BTreeMap::new();
    for l in &lines {
        let closed = compact(l["type"].as_str().unwrap()).ends_with("closedqa");
        let Some(correct) = l["correct"].as_str().filter(|_| closed) else {
            continue;
        };
        let chosen = l["chosen_by_likelihood"]
            .as_str()
            .or(l["chosen_by_generation"].as_str())
            .unwrap_or("none");
        *expected
            .entry((correct.to_string(), chosen.to_string()))
            .or_default() += 1;
    }
    let items: usize = expected.values().sum();
    assert!(items > 0, "the toy eval answers closed questions");
    let matrix = by_id(&doc, "plot-confusion-0");
    let squares = of_class(matrix, "cm-cell");
    let mut drawn = 0;
    for sq in &squares {
        let key = (
            sq.attribute("data-correct").unwrap().to_string(),
            sq.attribute("data-chosen").unwrap().to_string(),
        );
        let count: usize = sq.attribute("data-count").unwrap().parse().unwrap();
        assert_eq!(count, expected.get(&key).copied().unwrap_or(0), "{key:?}");
        drawn += count;
    }
    assert_eq!(drawn, items, "every answer in one square");
    let accuracy = reg.summaries(&run.id).unwrap()["eval/closed_qa/acc"];
    let text: String = matrix.descendants().filter_map(|n| n.text()).collect();
    assert!(
        text.contains(&format!("{:.1} % correct", 100.0 * accuracy)),
        "the matrix's accuracy is the summary's ({accuracy}): {text}"
    );

    // Generations: the first three open answers and reports of the file, with their
    // references, as written.
    let mut per_task: BTreeMap<&str, usize> = BTreeMap::new();
    let mut wanted: Vec<(&str, &str)> = Vec::new();
    for l in &lines {
        let t = compact(l["type"].as_str().unwrap());
        let task = if t.ends_with("openqa") {
            "open"
        } else if t.ends_with("reportgeneration") {
            "report"
        } else {
            continue;
        };
        let Some(generation) = l["generation"].as_str() else {
            continue;
        };
        let n = per_task.entry(task).or_default();
        if *n < 3 {
            *n += 1;
            wanted.push((l["reference"].as_str().unwrap(), generation));
        }
    }
    assert_eq!(per_task.len(), 2, "open answers and reports: {per_task:?}");
    let table = by_id(&doc, "generations");
    let shown: Vec<(String, String)> = table
        .descendants()
        .filter(|n| n.has_tag_name("tr") && n.attribute("data-type").is_some())
        .map(|tr| {
            let cell = |class: &str| -> String {
                tr.children()
                    .find(|c| c.attribute("class") == Some(class))
                    .map(|c| {
                        c.descendants()
                            .filter(|t| t.is_text())
                            .filter_map(|t| t.text())
                            .collect()
                    })
                    .unwrap_or_default()
            };
            (cell("reference"), cell("generation"))
        })
        .collect();
    // Characters text cannot hold (a toy model generates control characters) show as U+FFFD.
    let text = |s: &str| -> String {
        s.chars()
            .map(|c| match beatlab::table::render::not_text(c) {
                true => char::REPLACEMENT_CHARACTER,
                false => c,
            })
            .collect()
    };
    let wanted: Vec<(String, String)> = wanted.iter().map(|(r, g)| (text(r), text(g))).collect();
    assert_eq!(shown, wanted);

    // In a real browser the page loads cleanly with the matrix and the generations.
    let Some(chromium) = browser::chromium() else {
        return;
    };
    let index = d.join("out/index.html");
    let page = browser::load(&chromium, d, &index);
    assert_eq!(page.console, Vec::<String>::new(), "no console message");
    assert_eq!(page.requests, Vec::<String>::new(), "no network request");
    for part in [
        "class=\"plot plot-confusion\"",
        "class=\"cm-cell\"",
        "<table class=\"generations\"",
        "class=\"plot plot-bars\"",
    ] {
        assert!(page.dom.contains(part), "{part} in the DOM");
    }
}

/// A sweep of 600 cells (more than two chunks of the plan walk) with one failed run past the
/// first chunk: the page renders, counts every cell, lists the run and the first missing cells
/// and counts the rest; the table covers the whole grid.
#[test]
fn a_sweep_larger_than_a_chunk_reports_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let spec = SPEC.replace("seeds = [0, 1]", "seeds = 300");
    std::fs::write(d.join("rep.toml"), &spec).unwrap();
    let listed = beatlab::report::gather::MISSING_LISTED;
    let cells_of = |html: &str| -> Vec<String> {
        html.match_indices("<tr data-cell=\"")
            .map(|(i, _)| html[i + 15..].split('"').next().unwrap().to_string())
            .collect()
    };

    // No registry: every cell missing, the first ones listed.
    ok(&beatlab(d, &["report", "rep.toml", "-o", "empty"]));
    let html = std::fs::read_to_string(d.join("empty/index.html")).unwrap();
    assert!(html.contains("<dd>600 shown</dd>"), "{html}");
    assert!(html.contains("data-status=\"missing\" data-count=\"600\""));
    let want: Vec<String> = (0..listed).map(|i| i.to_string()).collect();
    assert_eq!(cells_of(&html), want);
    assert!(
        html.contains(&format!("data-unlisted=\"{}\"", 600 - listed)),
        "the rest counted"
    );
    assert!(
        html.contains("600 of 600 cells"),
        "the table's footer: {html}"
    );

    // A failed run of cell 401 (the second level of seed 200), found by the walk's third chunk.
    let plan = beatlab::spec::load(d.join("rep.toml").as_path(), &Default::default())
        .unwrap()
        .plan()
        .unwrap();
    let reg = Registry::open(&d.join("reg.db")).unwrap();
    reg.upsert_experiment("rep", "rep.toml", "").unwrap();
    let policy = beatlab::registry::ClaimPolicy {
        experiment: "rep".into(),
        worker: "w".into(),
        host: "h".into(),
        device: "cpu".into(),
        code_rev: "r".into(),
        code_dirty: false,
        lease_s: 60.0,
        force_before: None,
        rerun_failed_before: None,
        experiment_dir: d.join("runs/rep"),
        max_failures: 3,
        job: None,
    };
    let claim = reg
        .claim(&policy, &[CellOffer::of(&plan.cells[401])])
        .unwrap()
        .unwrap();
    reg.end_run(&claim.run_id, "w", RunStatus::Failed, Some("far away"))
        .unwrap();
    ok(&beatlab(d, &["report", "rep.toml", "-o", "out"]));
    let html = std::fs::read_to_string(d.join("out/index.html")).unwrap();
    assert!(html.contains("data-status=\"failed\" data-count=\"1\""));
    assert!(html.contains("data-status=\"missing\" data-count=\"599\""));
    let mut want: Vec<String> = (0..listed).map(|i| i.to_string()).collect();
    want.push("401".into());
    assert_eq!(
        cells_of(&html),
        want,
        "listed: the first missing and the run"
    );
    assert!(html.contains(&format!("data-unlisted=\"{}\"", 599 - listed)));
    assert!(html.contains("far away"), "the failure's text");

    // Under --where only the matching run is shown, and the table covers just it.
    ok(&beatlab(
        d,
        &[
            "report",
            "rep.toml",
            "-o",
            "w",
            "--where",
            "status = failed",
        ],
    ));
    let html = std::fs::read_to_string(d.join("w/index.html")).unwrap();
    assert!(html.contains("<dd>1 shown</dd>"), "{html}");
    assert_eq!(cells_of(&html), ["401"]);
    assert!(!html.contains("data-unlisted"));
    assert!(html.contains("1 of 1 cells"), "the table of the shown cell");
}
