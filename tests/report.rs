//! `beatlab report` on a small experiment trained by the binary: the page is one well-formed
//! document whose table, curves and cell rows agree with the registry, and bad input is refused
//! with exit code 2.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use beatlab::registry::{Registry, RunStatus};

#[path = "report/browser.rs"]
mod browser;

/// Two cells (single VQ and DVQ) over two seeds, two epochs each, with a paper value.
const SPEC: &str = r#"
[experiment]
name = "rep"
description = "A report's <test> & its cells"

[data]
source = "synthetic"
synthetic_records = 32
synthetic_duration_s = 4.0
val_fraction = 0.25
test_fraction = 0.1

[beat]
patch_size = 25
input_len = 250
predict_len = 125
width = 32
head_dim = 8
heads = 2
depth = 1
decoder_depth = 1
codebook_size = 32

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

[paper]
source = "a paper"

[[paper.cell]]
at = { "beat.dvq_levels" = 2 }
values = { "beat/val/loss" = 0.5 }
"#;

fn beatlab(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_beatlab"))
        .current_dir(dir)
        .env("BEATLAB_REGISTRY", dir.join("reg.db"))
        .env("BEATLAB_RUNS_DIR", dir.join("runs"))
        .args(args)
        .output()
        .unwrap()
}

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
                .contains(&format!("={levels}")),
            "groups in plan order"
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
    let c = &plan.cells[1];
    let offer = beatlab::registry::CellOffer {
        index: c.index as i64,
        label: c.label(),
        overrides: c.overrides_json(),
        spec_json: c.canonical.clone(),
        hash: c.hash.clone(),
        seed: c.spec.experiment.seed as i64,
    };
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
