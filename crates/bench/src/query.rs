//! `--where` speed: runs filtered per second by
//! [`select_runs`](beatlab::query::select_runs) (read the runs and, when the expression needs
//! them, their summaries from the registry, then evaluate the expression over each run's row,
//! spec and summaries), against the same filter written by hand in SQL and run by SQLite itself
//! (`json_extract` over the stored spec JSON, a join on the summary), on the same registry file.
//!
//! The registry holds `runs` runs (default 30,000) of full resolved specs (the cells of a
//! small Beat + multimodal sweep, a few KB of JSON each), each with a dozen summaries; every
//! tenth failed. Building it is not timed. Every round checks that both sides selected the same
//! runs, so a filter that matched nothing cannot look fast.

use std::collections::BTreeSet;
use std::path::PathBuf;

use beatlab::query::{Query, select_runs};
use beatlab::registry::{CellOffer, ClaimPolicy, Registry, RunStatus};
use beatlab::spec::{self, Overrides};

use super::{BenchError, Comparison, Rates, Timer, median};

/// Knobs of the query benchmark. `Default`: 30,000 runs, 5 rounds.
#[derive(Debug, Clone)]
pub struct QueryOptions {
    pub runs: usize,
    /// Timed rounds per side, alternating; the median is reported.
    pub rounds: usize,
    /// Where the scratch registry goes (default: the system's temporary folder).
    pub scratch: Option<PathBuf>,
}

impl Default for QueryOptions {
    fn default() -> Self {
        Self {
            runs: 30_000,
            rounds: 5,
            scratch: None,
        }
    }
}

/// The issue's example expression.
pub const EXPRESSION: &str =
    "beat.codebook_size = 512 and (eval/accuracy > 0.7 or status = failed)";

/// The same filter in SQLite's SQL, newest first as `beatlab runs` lists.
const SQL: &str = "SELECT r.id FROM runs r
     LEFT JOIN summaries s ON s.run_id = r.id AND s.key = 'eval/accuracy'
     WHERE json_extract(r.spec_json, '$.beat.codebook_size') = 512
       AND (s.value > 0.7 OR r.status = 'failed')
     ORDER BY r.created_at DESC, r.rowid DESC";

/// The sweep whose cells give the runs their specs.
const SPEC: &str = r#"
[experiment]
name = "bench-query"

[[stage]]
name = "beat"
kind = "beat"

[[stage]]
name = "joint"
kind = "joint"

[[stage]]
name = "eval"
kind = "eval"

[sweep]
beat.codebook_size = [128, 256, 512, 1024]
beat.dvq_levels = [1, 2]
beat.input_len = [500, 1000, 1500]
"#;

/// The canonical spec JSON and the overrides of each cell of [`SPEC`].
fn cell_specs() -> Result<Vec<(String, serde_json::Value)>, BenchError> {
    let mismatch = |what: String| BenchError::Mismatch {
        benchmark: "query",
        what,
    };
    let plan = spec::load_str("bench-query.toml", SPEC, &Overrides::default())
        .and_then(|l| l.plan())
        .map_err(|e| mismatch(format!("the benchmark's spec does not load: {e}")))?;
    Ok(plan
        .cells
        .into_iter()
        .map(|c| {
            let overrides = c.overrides_json();
            (c.canonical, overrides)
        })
        .collect())
}

/// A dozen summaries of run `i`, `eval/accuracy` spread over 0..1.
fn summaries(i: usize) -> Vec<(String, f64)> {
    let x = ((i * 7919) % 1000) as f64 / 1000.0;
    let mut out = vec![
        ("eval/accuracy".to_string(), x),
        ("eval/closed_qa/acc".to_string(), x * 0.9),
        ("eval/report/rouge_l".to_string(), x * 0.3),
        ("joint/val/loss".to_string(), 2.0 - x),
    ];
    for key in ["loss", "loss_recon", "loss_pred", "loss_vq", "code_pct"] {
        out.push((format!("beat/val/{key}"), 1.0 + x));
        out.push((format!("beat/test/{key}"), 1.1 + x));
    }
    out
}

/// Fills a fresh registry at `path` with `runs` runs: enqueued, claimed, summarised, ended.
fn fill(path: &std::path::Path, runs: usize) -> Result<Registry, BenchError> {
    let registry = Registry::open(path)?;
    registry.upsert_experiment("bench-query", "bench-query.toml", "query benchmark")?;
    let policy = ClaimPolicy {
        experiment: "bench-query".into(),
        worker: "bench".into(),
        host: "bench".into(),
        device: "cpu".into(),
        code_rev: "bench".into(),
        code_dirty: false,
        lease_s: 60.0,
        force_before: None,
        rerun_failed_before: None,
        experiment_dir: path.with_extension("runs"),
        max_failures: 3,
        job: None,
    };
    let specs = cell_specs()?;
    let cells: Vec<CellOffer> = (0..runs)
        .map(|i| CellOffer {
            index: i as i64,
            label: format!("cell {i}"),
            overrides: specs[i % specs.len()].1.clone(),
            spec_json: specs[i % specs.len()].0.clone(),
            hash: format!("{i:010}-query-bench"),
            seed: 0,
        })
        .collect();
    registry.enqueue(&policy, &cells)?;
    for (i, run) in registry.runs(None, None)?.iter().enumerate() {
        registry.claim_run(&run.id, &policy)?.ok();
        registry.set_summaries(&run.id, &summaries(i))?;
        let (status, error) = match i % 10 {
            0 => (RunStatus::Failed, Some("diverged")),
            _ => (RunStatus::Finished, None),
        };
        registry.end_run(&run.id, "bench", status, error)?;
    }
    Ok(registry)
}

/// The hand-written SQL's selection, through SQLite's own JSON functions.
fn sql_select(path: &std::path::Path) -> Result<Vec<String>, BenchError> {
    let failed = |e: sqlx::Error| BenchError::Mismatch {
        benchmark: "query",
        what: format!("the SQL peer failed: {e}"),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|source| BenchError::Io {
            action: "start a runtime for",
            path: path.to_path_buf(),
            source,
        })?;
    rt.block_on(async {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(path)
            .read_only(true);
        let pool = sqlx::SqlitePool::connect_with(options)
            .await
            .map_err(failed)?;
        let ids: Vec<String> = sqlx::query_scalar(SQL)
            .fetch_all(&pool)
            .await
            .map_err(failed)?;
        pool.close().await;
        Ok(ids)
    })
}

/// The same runs selected by both sides.
fn check_same(ours: &[String], theirs: &[String]) -> Result<(), BenchError> {
    let a: BTreeSet<&String> = ours.iter().collect();
    let b: BTreeSet<&String> = theirs.iter().collect();
    if a == b && !a.is_empty() {
        return Ok(());
    }
    Err(BenchError::Mismatch {
        benchmark: "query",
        what: format!(
            "ours selected {} runs, SQL {} ({} in common)",
            a.len(),
            b.len(),
            a.intersection(&b).count()
        ),
    })
}

/// Runs the benchmark: ours and the SQL filter alternating on one registry file.
pub fn run(
    options: &QueryOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<Comparison, BenchError> {
    let dir = options.scratch.clone().unwrap_or_else(std::env::temp_dir);
    let path = dir.join(format!("beatlab-bench-query-{}.db", std::process::id()));
    progress(&format!(
        "query: building a registry of {} runs",
        options.runs
    ));
    let build = Timer::start();
    let registry = fill(&path, options.runs);
    let built_s = build.stop().0;
    let result = registry.and_then(|r| measure(&r, &path, options, built_s, progress));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    result
}

fn measure(
    registry: &Registry,
    path: &std::path::Path,
    options: &QueryOptions,
    built_s: f64,
    progress: &mut dyn FnMut(&str),
) -> Result<Comparison, BenchError> {
    let query: Query = EXPRESSION.parse().map_err(|e| BenchError::Mismatch {
        benchmark: "query",
        what: format!("{e}"),
    })?;
    progress(&format!(
        "query: {} rounds of `{EXPRESSION}` over {} runs, ours and SQL alternating",
        options.rounds, options.runs
    ));
    let (mut ours, mut theirs) = (Rates::default(), Rates::default());
    let (mut split, mut selected) = (Vec::<Phases>::new(), 0);
    let work = options.runs as f64;
    for _ in 0..options.rounds.max(1) {
        let timer = Timer::start();
        let picked = select_runs(registry, None, None, Some(&query))?;
        ours.push(work, timer.stop());
        let timer = Timer::start();
        let by_sql = sql_select(path)?;
        theirs.push(work, timer.stop());
        let ids: Vec<String> = picked.into_iter().map(|r| r.id).collect();
        check_same(&ids, &by_sql)?;
        selected = ids.len();
        split.push(phases(registry, &query)?);
    }
    let part = |f: fn(&Phases) -> f64| median(&split.iter().map(f).collect::<Vec<_>>());
    let (runs_s, summaries_s, eval_s) = (
        part(|p| p.runs_s),
        part(|p| p.summaries_s),
        part(|p| p.evaluation_s),
    );
    Ok(Comparison {
        benchmark: "query".into(),
        workload: format!(
            "`beatlab runs --where '{EXPRESSION}'` over {} runs (registry read + filter)",
            options.runs
        ),
        unit: "runs/s".into(),
        goal: None,
        notes: vec![
            format!(
                "whole selection {:.3} s per round (median), {selected} runs selected by both sides",
                work / ours.median_wall()
            ),
            format!(
                "phases (medians): reading the runs {runs_s:.3} s, their summaries {summaries_s:.3} s, the expression over them {eval_s:.3} s"
            ),
            format!(
                "peer: the same filter in SQL (json_extract, a summary join) run by SQLite; building the registry took {built_s:.0} s, untimed"
            ),
        ],
        details: serde_json::json!({
            "runs": options.runs,
            "selected": selected,
            "expression": EXPRESSION,
            "sql": SQL,
            "phases": split,
            "rounds_runs_per_s": { "ours": &ours.wall, "sql": &theirs.wall },
        }),
        ..Comparison::from_rates(&ours, Some(("sqlite json_extract".into(), &theirs)))
    })
}

/// The phases of our selection, in seconds: reading the runs, reading the summaries, and
/// evaluating the expression over what was read.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
struct Phases {
    runs_s: f64,
    summaries_s: f64,
    evaluation_s: f64,
}

fn phases(registry: &Registry, query: &Query) -> Result<Phases, BenchError> {
    let timer = Timer::start();
    let rows = registry.runs(None, None)?;
    let runs_s = timer.stop().0;
    let timer = Timer::start();
    let summaries = registry.summaries_by_run(None, &query.summary_keys())?;
    let summaries_s = timer.stop().0;
    let timer = Timer::start();
    let kept = query.filter(rows, &summaries);
    let evaluation_s = timer.stop().0;
    std::hint::black_box(kept);
    Ok(Phases {
        runs_s,
        summaries_s,
        evaluation_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a small registry, ours and the SQL peer select the same non-empty set of runs.
    #[test]
    fn ours_and_the_sql_filter_agree() {
        let dir = tempfile::tempdir().unwrap();
        let options = QueryOptions {
            runs: 200,
            rounds: 1,
            scratch: Some(dir.path().to_path_buf()),
        };
        let c = run(&options, &mut |_| {}).unwrap();
        let selected = c.details["selected"].as_u64().unwrap();
        // codebook 512 is a quarter of the cells; of those, accuracy > 0.7 or failed.
        assert!((10..100).contains(&selected), "{selected}");
        assert!(c.ratio.is_some());
    }
}
