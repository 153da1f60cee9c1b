//! The registry's claim rules, checkpoint verification, and tables rendered from a real
//! registry file.

use std::collections::BTreeMap;
use std::path::Path;

use beatlab::registry::{CellOffer, ClaimPolicy, Registry, RunStatus};
use beatlab::runner::checkpoint::{self, CheckpointError, CheckpointStore};
use beatlab::spec::{self, Overrides, Plan};
use beatlab::table::{self, Format};
use candle_core::{Device, Tensor};
use expect_test::expect;

fn offers(n: usize) -> Vec<CellOffer> {
    (0..n)
        .map(|i| CellOffer {
            index: i as i64,
            label: format!("cell {i}"),
            overrides: serde_json::json!({ "i": i }),
            spec_json: format!("{{\"i\":{i}}}"),
            hash: format!("{i:0>64}"),
            seed: 0,
        })
        .collect()
}

fn policy(worker: &str, dir: &Path) -> ClaimPolicy {
    ClaimPolicy {
        experiment: "x".into(),
        worker: worker.into(),
        host: "h".into(),
        device: "cpu".into(),
        code_rev: "r".into(),
        code_dirty: false,
        lease_s: 60.0,
        force_before: None,
        rerun_failed_before: None,
        experiment_dir: dir.join("x"),
        max_failures: 3,
        job: None,
    }
}

fn open(dir: &Path) -> Registry {
    let reg = Registry::open(&dir.join("reg.db")).unwrap();
    reg.upsert_experiment("x", "x.toml", "").unwrap();
    reg
}

#[test]
fn openers_of_a_fresh_registry_at_the_same_moment_all_succeed() {
    // The workers of a sweep open one fresh registry together and race to apply its migrations;
    // without the retry, 9 of 30 races of two processes failed with "table already exists".
    for round in 0..10 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fresh.db");
        let barrier = std::sync::Barrier::new(4);
        std::thread::scope(|s| {
            let openers: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        Registry::open(&path).map(|_| ())
                    })
                })
                .collect();
            for opener in openers {
                let result = opener.join().unwrap();
                assert!(result.is_ok(), "round {round}: {:?}", result.err());
            }
        });
        assert!(
            Registry::open(&path)
                .unwrap()
                .runs(None, None)
                .unwrap()
                .is_empty()
        );
    }
}

#[test]
fn a_registry_written_before_the_metrics_were_rekeyed_keeps_its_points() {
    // Schema 1 keyed metric points (run, key, step); migration 2 re-keys them (run, step, key).
    // Build a schema-1 file with sqlx's migrator over a folder holding only the first migration,
    // fill it as beatlab 0.1's first schema did, then open it with today's registry.
    let dir = tempfile::tempdir().unwrap();
    let first_only = dir.path().join("migrations");
    std::fs::create_dir(&first_only).unwrap();
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(
        manifest.join("migrations/sqlite/0001_registry.sql"),
        first_only.join("0001_registry.sql"),
    )
    .unwrap();
    let path = dir.path().join("reg.db");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true);
        let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
        let migrator = sqlx::migrate::Migrator::new(first_only.as_path())
            .await
            .unwrap();
        migrator.run(&pool).await.unwrap();
        for statement in [
            "INSERT INTO experiments VALUES ('x', 'x.toml', '', 1, 1)",
            "INSERT INTO runs (num, id, experiment, cell_index, cell_label, overrides, spec_json,
                 spec_hash, seed, status, code_rev, code_dirty, host, device, worker, run_dir,
                 created_at)
             VALUES (7, 'abc-1', 'x', 0, 'cell 0', '{}', '{}', 'abc', 0, 'finished', 'r', 0,
                 'h', 'cpu', 'w', 'runs/abc-1', 1)",
            "INSERT INTO metric_keys VALUES (1, 'train/loss'), (2, 'lr')",
            "INSERT INTO metrics VALUES (7, 1, 0, 2.5, 10), (7, 2, 0, 0.1, 10),
                 (7, 1, 1, 2.0, 11), (7, 2, 1, 0.2, 11)",
        ] {
            sqlx::query(statement).execute(&pool).await.unwrap();
        }
        pool.close().await;
    });

    let reg = Registry::open(&path).unwrap();
    let points: Vec<_> = reg
        .metrics("abc-1")
        .unwrap()
        .into_iter()
        .map(|p| (p.key, p.step, p.value, p.time))
        .collect();
    assert_eq!(
        points,
        [
            ("lr".to_string(), 0, 0.1, 10.0),
            ("lr".to_string(), 1, 0.2, 11.0),
            ("train/loss".to_string(), 0, 2.5, 10.0),
            ("train/loss".to_string(), 1, 2.0, 11.0),
        ]
    );
    // New points go into the re-keyed table and replace a re-written step.
    reg.log_metrics(
        "abc-1",
        &[beatlab::registry::MetricPoint {
            key: "lr".into(),
            step: 1,
            value: 0.3,
            time: 12.0,
        }],
    )
    .unwrap();
    let lr: Vec<_> = reg
        .metrics("abc-1")
        .unwrap()
        .into_iter()
        .filter(|p| p.key == "lr")
        .map(|p| (p.step, p.value))
        .collect();
    assert_eq!(lr, [(0, 0.1), (1, 0.3)]);
}

#[test]
fn a_corrupted_checkpoint_is_refused_on_load() {
    let dir = tempfile::tempdir().unwrap();
    let reg = open(dir.path());
    let claim = reg
        .claim(&policy("w", dir.path()), &offers(1))
        .unwrap()
        .unwrap();
    let store = CheckpointStore::new(reg.clone(), &claim.run_id, &claim.run_dir);
    let mut tensors = BTreeMap::new();
    tensors.insert(
        "w".to_string(),
        Tensor::arange(0f32, 16.0, &Device::Cpu).unwrap(),
    );
    let path = store
        .save(
            "beat",
            10,
            1,
            false,
            &tensors,
            &serde_json::json!({ "progress": 1 }),
        )
        .unwrap();
    let (loaded, set_aside) = store.latest("beat", &Device::Cpu).unwrap();
    let loaded = loaded.unwrap();
    assert!(set_aside.is_empty());
    assert_eq!(loaded.step, 10);
    assert_eq!(loaded.meta["progress"], 1);
    assert_eq!(
        loaded.tensors["w"].to_vec1::<f32>().unwrap(),
        tensors["w"].to_vec1::<f32>().unwrap()
    );
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let row = reg.checkpoints(&claim.run_id).unwrap().remove(0);
    assert!(matches!(
        checkpoint::load(&row, &Device::Cpu),
        Err(CheckpointError::Corrupt { .. })
    ));
}

/// Issue #14.14: a corrupt or deleted newest checkpoint is set aside and the next older one
/// used, instead of failing the run.
#[test]
fn unusable_checkpoints_fall_back_to_older_ones() {
    let dir = tempfile::tempdir().unwrap();
    let reg = open(dir.path());
    let claim = reg
        .claim(&policy("w", dir.path()), &offers(1))
        .unwrap()
        .unwrap();
    let store = CheckpointStore::new(reg.clone(), &claim.run_id, &claim.run_dir);
    let save = |step: i64, is_final: bool| {
        let mut tensors = BTreeMap::new();
        tensors.insert(
            "w".to_string(),
            Tensor::new(&[step as f32], &Device::Cpu).unwrap(),
        );
        store
            .save("beat", step, 0, is_final, &tensors, &serde_json::json!({}))
            .unwrap()
    };
    save(10, false);
    let p20 = save(20, false);
    let fin = save(30, true);
    assert!(store.verified_complete("beat").unwrap().0);

    // A corrupt final checkpoint: the stage is no longer complete and goes on from step 20.
    let mut bytes = std::fs::read(&fin).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&fin, &bytes).unwrap();
    let (complete, bad) = store.verified_complete("beat").unwrap();
    assert!(!complete);
    let bad = bad.unwrap();
    assert!((bad.step, bad.is_final) == (30, true), "{bad}");
    assert!(bad.to_string().contains("is corrupt"), "{bad}");
    assert!(bad.moved_to.as_ref().unwrap().is_file());
    assert!(!fin.exists());
    let (latest, set_aside) = store.latest("beat", &Device::Cpu).unwrap();
    assert_eq!(latest.unwrap().step, 20);
    assert!(set_aside.is_empty());

    // The step-20 file deleted: back to step 10, and its row is gone.
    std::fs::remove_file(&p20).unwrap();
    let (latest, set_aside) = store.latest("beat", &Device::Cpu).unwrap();
    assert_eq!(latest.unwrap().step, 10);
    assert_eq!(set_aside.len(), 1);
    assert_eq!(set_aside[0].step, 20);
    assert!(set_aside[0].moved_to.is_none());
    let steps: Vec<i64> = reg
        .checkpoints(&claim.run_id)
        .unwrap()
        .iter()
        .map(|c| c.step)
        .collect();
    assert_eq!(steps, [10]);
}

const TABLE_SPEC: &str = r#"
[experiment]
name = "tab"

[[stage]]
name = "beat"
kind = "beat"

[sweep]
beat.codebook_size = [256, 512]
beat.dvq_levels = [1, 2]
seeds = [0, 1]

[table]
title = "Demo"
rows = ["beat.codebook_size"]
columns = ["beat.dvq_levels"]
metrics = ["beat/val/loss"]
digits = 2

[table.labels]
"beat.codebook_size" = "codebook"
"beat.dvq_levels=1" = "VQ"
"beat.dvq_levels=2" = "DVQ"
"beat/val/loss" = "loss"

[paper]
source = "a paper"
claims = ["DVQ is better."]

[[paper.cell]]
at = { "beat.codebook_size" = 512, "beat.dvq_levels" = 2 }
values = { "beat/val/loss" = 0.76 }
"#;

/// Finishes the cells of `plan` for which `loss` gives a value, with that value as summary.
fn finish_cells(
    reg: &Registry,
    plan: &Plan,
    dir: &Path,
    loss: impl Fn(u32, u32, u64) -> Option<f64>,
) {
    reg.upsert_experiment(&plan.experiment, "tab.toml", "")
        .unwrap();
    for c in &plan.cells {
        let Some(v) = loss(
            c.spec.beat.codebook_size,
            c.spec.beat.dvq_levels,
            c.spec.experiment.seed,
        ) else {
            continue;
        };
        let offer = CellOffer {
            index: c.index as i64,
            label: c.label(),
            overrides: c.overrides_json(),
            spec_json: c.canonical.clone(),
            hash: c.hash.clone(),
            seed: c.spec.experiment.seed as i64,
        };
        let p = ClaimPolicy {
            experiment: plan.experiment.clone(),
            ..policy("w", dir)
        };
        let claim = reg.claim(&p, &[offer]).unwrap().unwrap();
        reg.set_summaries(&claim.run_id, &[("beat/val/loss".into(), v)])
            .unwrap();
        reg.end_run(&claim.run_id, "w", RunStatus::Finished, None)
            .unwrap();
    }
}

#[test]
fn tables_show_seed_statistics_missing_cells_and_paper_deltas() {
    let dir = tempfile::tempdir().unwrap();
    let plan = spec::load_str("tab.toml", TABLE_SPEC, &Overrides::default())
        .unwrap()
        .plan()
        .unwrap();
    assert_eq!(plan.cells.len(), 8);
    let reg = Registry::open(&dir.path().join("reg.db")).unwrap();
    // Codebook 256 with VQ has no finished run; seed 1 of (512, DVQ) adds 0.2 to seed 0.
    finish_cells(&reg, &plan, dir.path(), |cb, levels, seed| {
        match (cb, levels) {
            (256, 1) => None,
            (512, 2) => Some(0.8 + 0.2 * seed as f64),
            _ => Some(f64::from(cb) / 1000.0 + f64::from(levels)),
        }
    });
    let t = table::build(&plan, Some(&reg)).unwrap();
    expect![[r#"
        **Demo**

        | codebook | VQ loss     | DVQ loss    | paper | Δ     |
        |----------|-------------|-------------|-------|-------|
        | 256      | —           | 2.26 ± 0.00 |       |       |
        | 512      | 1.51 ± 0.00 | 0.90 ± 0.14 | 0.76  | +0.14 |

        2 of 8 cells have no finished run (—).
        Paper: a paper
        Paper claim: DVQ is better.
    "#]]
    .assert_eq(&t.render(Format::Md));
    expect![[r#"
        # Demo
        codebook,VQ loss,DVQ loss,paper,Δ
        256,—,2.26 ± 0.00,,
        512,1.51 ± 0.00,0.90 ± 0.14,0.76,+0.14
        # 2 of 8 cells have no finished run (—).
        # Paper: a paper
        # Paper claim: DVQ is better.
    "#]]
    .assert_eq(&t.render(Format::Csv));
    expect![[r#"
        \begin{table}[t]
        \centering
        \caption{Demo}
        \begin{tabular}{lrrrr}
        \toprule
        codebook & VQ loss & DVQ loss & paper & $\Delta$ \\
        \midrule
        256 & -- & 2.26 $\pm$ 0.00 &  &  \\
        512 & 1.51 $\pm$ 0.00 & 0.90 $\pm$ 0.14 & 0.76 & +0.14 \\
        \bottomrule
        \end{tabular}
        \par\smallskip
        {\footnotesize
        2 of 8 cells have no finished run (--).\par
        Paper: a paper\par
        Paper claim: DVQ is better.\par
        }
        \end{table}
    "#]]
    .assert_eq(&t.render(Format::Latex));
    expect![[r#"
        <table class="beatlab-table">
        <caption>Demo</caption>
        <thead><tr><th scope="col">codebook</th><th scope="col">VQ loss</th><th scope="col">DVQ loss</th><th scope="col">paper</th><th scope="col">Δ</th></tr></thead>
        <tbody>
        <tr><th scope="row">256</th><td class="missing">—</td><td class="num" data-mean="2.2560000000000002" data-std="0" data-n="2" title="n = 2">2.26 ± 0.00</td><td></td><td></td></tr>
        <tr><th scope="row">512</th><td class="num" data-mean="1.512" data-std="0" data-n="2" title="n = 2">1.51 ± 0.00</td><td class="num" data-mean="0.9" data-std="0.14142135623730948" data-n="2" title="n = 2">0.90 ± 0.14</td><td class="num paper" data-value="0.76">0.76</td><td class="num delta pos" data-value="0.14" style="background:rgba(33,102,172,0.47)">+0.14</td></tr>
        </tbody>
        <tfoot><tr><td colspan="5">2 of 8 cells have no finished run (—).<br/>Paper: a paper<br/>Paper claim: DVQ is better.</td></tr></tfoot>
        </table>
    "#]].assert_eq(&t.render(Format::Html));
}

/// Labels and claims holding every character that means something in Markdown, LaTeX, CSV or
/// HTML, and a swept axis (`beat.patch_size`) that is neither a row nor a column.
const AWKWARD_SPEC: &str = r#"
[experiment]
name = "awkward"

[[stage]]
name = "beat"
kind = "beat"

[beat]
input_len = 1000
predict_len = 500

[sweep]
beat.codebook_size = [256, 512]
beat.dvq_levels = [1, 2]
beat.patch_size = [25, 50]

[table]
title = "50% of {codes} & more_"
rows = ["beat.codebook_size"]
columns = ["beat.dvq_levels"]
metrics = ["beat/val/loss"]

[table.labels]
"beat.codebook_size" = "codebook | size_*"
"beat.dvq_levels=1" = "<VQ>"
"beat/val/loss" = "loss $x^2$ #1 ~ \\ `a` \"q\""

[paper]
claims = ["DVQ | 2 levels is *better*, 100% & [sure]."]
"#;

#[test]
fn every_format_escapes_its_special_characters_and_names_averaged_axes() {
    let dir = tempfile::tempdir().unwrap();
    let plan = spec::load_str("awkward.toml", AWKWARD_SPEC, &Overrides::default())
        .unwrap()
        .plan()
        .unwrap();
    let reg = Registry::open(&dir.path().join("reg.db")).unwrap();
    finish_cells(&reg, &plan, dir.path(), |cb, levels, _| {
        Some(f64::from(cb) / 1000.0 + f64::from(levels))
    });
    let t = table::build(&plan, Some(&reg)).unwrap();
    let averaged = "Averaged over beat.patch_size (25, 50)";
    for format in [Format::Md, Format::Csv, Format::Latex, Format::Html] {
        // Markdown and LaTeX escape the `_` of the key.
        let text = t.render(format).replace('\\', "");
        assert!(text.contains(averaged), "{format:?}: {text}");
    }
    let md = t.render(Format::Md);
    // Every table line has exactly the pipes of its 3 columns (4), none from a label.
    for line in md.lines().filter(|l| l.starts_with('|')) {
        let unescaped = line
            .match_indices('|')
            .filter(|(i, _)| !line[..*i].ends_with('\\'));
        assert_eq!(unescaped.count(), 4, "{line}");
    }
    assert!(md.contains("codebook \\| size\\_\\*"), "{md}");
    assert!(
        md.contains("DVQ \\| 2 levels is \\*better\\*, 100% \\& \\[sure\\]."),
        "{md}"
    );
    let latex = t.render(Format::Latex);
    assert!(
        latex.contains("\\caption{50\\% of \\{codes\\} \\& more\\_}"),
        "{latex}"
    );
    assert!(latex.contains("codebook \\textbar{} size\\_*"), "{latex}");
    assert!(
        latex
            .contains("loss \\$x\\textasciicircum{}2\\$ \\#1 \\textasciitilde{} \\textbackslash{}"),
        "{latex}"
    );
    assert!(latex.contains("100\\% \\& [sure]"), "{latex}");
    let html = t.render(Format::Html);
    assert!(html.contains("&lt;VQ&gt; loss"), "{html}");
    assert!(html.contains("&quot;q&quot;"), "{html}");
    let csv = t.render(Format::Csv);
    assert!(
        csv.contains(",\"<VQ> loss $x^2$ #1 ~ \\ `a` \"\"q\"\"\","),
        "{csv}"
    );
}

/// A registry row edited by hand or by another tool (text in a number column, a status no
/// version wrote, overrides that are not JSON) is an error naming the column and the run,
/// never a panic nor a silent null (issue #14.10): through the library and through
/// `beatlab runs`, `show` and `plan`.
#[test]
fn a_malformed_registry_row_is_an_error_naming_its_column() {
    let cases = [
        ("overrides", "overrides = '{\"beat.codebook_size\": 512'"),
        ("seed", "seed = 'x'"),
        ("created_at", "created_at = 'yesterday'"),
        ("cell_index", "cell_index = x'00ff'"),
        ("status", "status = 'exploded'"),
    ];
    // The row is the cell of this spec, so that `plan` reads it.
    let text = "[experiment]\nname = \"x\"\n";
    let plan = spec::load_str("x.toml", text, &Overrides::default())
        .unwrap()
        .plan()
        .unwrap();
    let hash = &plan.cells[0].hash;
    for (column, set) in cases {
        let dir = tempfile::tempdir().unwrap();
        let reg = open(dir.path());
        let claim = reg
            .claim(&policy("w1", dir.path()), &offers(1))
            .unwrap()
            .unwrap();
        drop(reg);
        let path = dir.path().join("reg.db");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let options = sqlx::sqlite::SqliteConnectOptions::new().filename(&path);
            let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
            let mut conn = pool.acquire().await.unwrap();
            // The status column has a CHECK constraint; another tool may not have honoured it.
            sqlx::query("PRAGMA ignore_check_constraints = ON")
                .execute(&mut *conn)
                .await
                .unwrap();
            // The statement is made of this test's constants.
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE runs SET spec_hash = '{hash}', {set}"
            )))
            .execute(&mut *conn)
            .await
            .unwrap();
            drop(conn);
            pool.close().await;
        });
        let reg = Registry::open_existing(&path).unwrap().unwrap();
        let err = reg.runs(None, None).unwrap_err().to_string();
        assert!(
            err.contains(&format!("column `{column}` of run {}", claim.run_id)),
            "{column}: {err}"
        );
        drop(reg);

        std::fs::write(dir.path().join("x.toml"), text).unwrap();
        for args in [
            vec!["runs"],
            vec!["show", claim.run_id.as_str()],
            vec!["plan", "x.toml"],
        ] {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_beatlab"))
                .current_dir(dir.path())
                .env("BEATLAB_REGISTRY", &path)
                .args(&args)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success() && out.status.code() != Some(101),
                "{column} {args:?}: {out:?}"
            );
            assert!(
                stderr.contains(&format!(
                    "malformed registry row: column `{column}` of run {}",
                    claim.run_id
                )),
                "{column} {args:?}: {stderr}"
            );
        }
    }
}
