//! The `beatlab` commands: resolve arguments (read specs, open the registry, pick the device),
//! call the library, print results. Errors travel up to `main`, which prints them once.
//!
//! Standard output may be closed by its reader (`beatlab show RUN | head -1`) or full
//! (`> /dev/full`): `print!` and `println!` are redefined here so that a failed write returns a
//! [`StdoutError`] from the command instead of panicking like the standard macros, and
//! `eprintln!` so that progress lines on a closed standard error are dropped, never fatal.

/// `print!` that returns [`StdoutError`] from the enclosing command when standard output fails.
macro_rules! print {
    ($($arg:tt)*) => {
        ::std::io::Write::write_fmt(&mut ::std::io::stdout(), format_args!($($arg)*))
            .map_err($crate::commands::StdoutError)?
    };
}

/// `println!` that returns [`StdoutError`] from the enclosing command when standard output fails.
macro_rules! println {
    () => { print!("\n") };
    ($($arg:tt)*) => { print!("{}\n", format_args!($($arg)*)) };
}

/// `eprintln!` that drops the line when standard error cannot be written.
macro_rules! eprintln {
    ($($arg:tt)*) => {{
        let _ = ::std::io::Write::write_fmt(
            &mut ::std::io::stderr(),
            format_args!("{}\n", format_args!($($arg)*)),
        );
    }};
}

pub mod args;
mod delineation;
pub mod exit;
mod launch;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result};
use beatlab::device::{self, DeviceChoice};
use beatlab::query::Query;
use beatlab::registry::{Registry, RunRow, RunStatus};
use beatlab::runner::{self, CellOutcome, RunnerConfig};
use beatlab::spec::{self, Overrides, PlanCells};
use beatlab::table::{self, Format};
use beatlab::tracking::Console;

use args::{Cli, Command, DataCommand, Global, RegistryCommand, SpecArgs, TrainArgs};

/// An error caused by the user's input (exit code 2), as opposed to a failed run (exit code 1).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct BadInput(#[from] pub anyhow::Error);

fn bad(e: impl Into<anyhow::Error>) -> anyhow::Error {
    BadInput(e.into()).into()
}

/// Whether an error in a chain is a registry error caused by the user's input (a wrong address,
/// a foreign or newer registry, an unknown run): exit code 2.
pub fn registry_bad_input(e: &(dyn std::error::Error + 'static)) -> bool {
    use beatlab::registry::RegistryError;
    match (
        e.downcast_ref::<RegistryError>(),
        e.downcast_ref::<runner::RunnerError>(),
    ) {
        (Some(r), _) | (_, Some(runner::RunnerError::Registry(r))) => r.is_bad_input(),
        _ => false,
    }
}

/// Standard output could not be written: its reader closed it, or it is full.
#[derive(Debug, thiserror::Error)]
#[error("writing to standard output: {0}")]
pub struct StdoutError(pub std::io::Error);

/// What the process should exit with.
pub enum Exit {
    Done,
    RunFailed,
}

pub fn run(cli: Cli) -> Result<Exit> {
    let g = &cli.global;
    match cli.command {
        Command::Plan { spec, json, count } => plan(g, &spec, json, count),
        Command::Run { spec, train } => {
            train_cells(g, &spec.file, spec.sets, &train, 1, Some(Format::Md))
        }
        Command::Sweep {
            spec,
            train,
            workers,
            launcher: beatlab::launch::Launcher::Slurm,
            slurm,
        } => launch::slurm(g, &spec, &train, workers, &slurm),
        Command::Status {
            experiment,
            all,
            json,
        } => launch::status(g, &experiment, all, json),
        Command::Sweep {
            spec,
            train,
            workers,
            launcher: beatlab::launch::Launcher::Local,
            slurm,
        } => launch::local_only(&slurm).and_then(|()| {
            train_cells(
                g,
                &spec.file,
                spec.sets,
                &train,
                workers as usize,
                Some(Format::Md),
            )
        }),
        Command::Worker { spec, train } => train_cells(g, &spec.file, spec.sets, &train, 1, None),
        Command::Reproduce {
            name,
            sets,
            train,
            workers,
            format,
        } => {
            let file = experiment_file(&name)?;
            train_cells(g, &file, sets, &train, workers as usize, Some(format))
        }
        Command::Table { spec, format } => {
            let loaded = load_spec(&spec.file, spec.sets)?;
            let plan = loaded.lazy_plan(g.max_cells).map_err(bad)?;
            let registry = Registry::open_existing(&g.registry)?;
            print!("{}", table::build(&plan, registry.as_ref())?.render(format));
            Ok(Exit::Done)
        }
        Command::Report {
            name,
            sets,
            output,
            filter,
            metric,
            open,
        } => report(
            g,
            &name,
            sets,
            output,
            (filter.as_deref(), metric.as_deref()),
            open,
        ),
        Command::Runs {
            status,
            experiment,
            filter,
            json,
        } => runs(
            g,
            status.map(Into::into),
            experiment.as_deref(),
            filter.as_deref(),
            json,
        ),
        Command::Show { run, json } => show(g, &run, json),
        Command::Compare { a, b } => compare(g, &a, &b),
        Command::Resume { run, device, lease } => resume(g, &run, device, lease),
        Command::Data(command) => data_command(g, command),
        Command::Registry(command) => registry_command(g, command),
        Command::Bench { args } => bench(&args),
        Command::Parity(args) => parity(&args),
        Command::Reference => {
            print!("{}", beatlab::spec::reference::markdown());
            Ok(Exit::Done)
        }
    }
}

/// `experiments/NAME.toml`, or NAME itself when it is a path to a file.
fn experiment_file(name: &str) -> Result<PathBuf> {
    let direct = PathBuf::from(name);
    if direct.is_file() {
        return Ok(direct);
    }
    let file = Path::new("experiments").join(format!("{name}.toml"));
    if file.is_file() {
        return Ok(file);
    }
    let known: Vec<String> = std::fs::read_dir("experiments")
        .map(|d| {
            let mut v: Vec<String> = d
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let p = e.path();
                    if p.extension()? != "toml" {
                        return None;
                    }
                    Some(p.file_stem()?.to_string_lossy().into_owned())
                })
                .collect();
            v.sort();
            v
        })
        .unwrap_or_default();
    Err(bad(anyhow::anyhow!(
        "no experiment `{name}`: {} does not exist (known: {})",
        file.display(),
        if known.is_empty() {
            "none".into()
        } else {
            known.join(", ")
        }
    )))
}

fn load_spec(file: &Path, sets: Vec<String>) -> Result<spec::Loaded> {
    spec::load(file, &Overrides::from_process(sets)).map_err(bad)
}

/// `beatlab plan`: the cells with their registry status, made and printed a chunk at a time
/// (a cell costs its 32-byte hash until printed), or with `--count` only their number.
fn plan(g: &Global, args: &SpecArgs, json: bool, count: bool) -> Result<Exit> {
    let loaded =
        spec::load(&args.file, &Overrides::from_process(args.sets.clone())).map_err(bad)?;
    if count {
        match loaded.cell_count() {
            Some(n) => println!("{n}"),
            None => println!("more than 2^128"),
        }
        return Ok(Exit::Done);
    }
    let hashes = loaded.cell_hashes(g.max_cells).map_err(bad)?.hashes;
    let registry = Registry::open_existing(&g.registry)?;
    let n = hashes.len();
    if json {
        print!("[");
    } else {
        let s = &loaded.spec.experiment;
        println!(
            "{}: {n} cell{}{}",
            s.name,
            if n == 1 { "" } else { "s" },
            if s.description.is_empty() {
                String::new()
            } else {
                format!(" — {}", s.description)
            }
        );
        for key in &loaded.sweep.pinned {
            println!("  (sweep key `{key}` pinned by an override)");
        }
    }
    let mut overrides = loaded.sweep.cells();
    for (chunk_no, chunk) in hashes.chunks(PLAN_CHUNK).enumerate() {
        let hex: Vec<String> = chunk.iter().map(hex::encode).collect();
        let statuses = runner::hash_statuses(&hex, registry.as_ref())?;
        for (i, (hash, (status, run))) in hex.iter().zip(statuses).enumerate() {
            let index = chunk_no * PLAN_CHUNK + i;
            let cell: Vec<(String, toml::Value)> = overrides
                .next()
                .context("internal: the sweep made fewer cells the second time")?
                .into_iter()
                .map(|(k, v)| (k, v.to_toml()))
                .collect();
            if json {
                let item = serde_json::json!({
                    "index": index,
                    "hash": hash,
                    "short_hash": &hash[..12],
                    "status": status,
                    "run": run,
                    "overrides": spec::overrides_json(&cell),
                });
                let text = serde_json::to_string_pretty(&item)?.replace('\n', "\n  ");
                print!("{}\n  {text}", if index == 0 { "" } else { "," });
            } else {
                println!(
                    "  {:>3}  {}  {:<8}  {}{}",
                    index,
                    &hash[..12],
                    status,
                    spec::overrides_label(&cell),
                    run.as_ref().map(|r| format!("  [{r}]")).unwrap_or_default()
                );
            }
        }
    }
    if json {
        println!("{}]", if n == 0 { "" } else { "\n" });
    }
    Ok(Exit::Done)
}

/// Cells `plan` looks up in the registry and prints at a time.
const PLAN_CHUNK: usize = 500;

/// Ctrl-C, SIGTERM and SIGUSR2 (Slurm's warning before a time limit or preemption, asked for
/// by `--signal=USR2@120`) set this flag; stages checkpoint at their next safe point and the run
/// is given back (pending) for the next worker. A second Ctrl-C exits at once.
fn interrupt_flag() -> Arc<AtomicBool> {
    use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR2};
    let flag = Arc::new(AtomicBool::new(false));
    let _ = signal_hook::flag::register_conditional_shutdown(SIGINT, 130, flag.clone());
    for sig in [SIGINT, SIGTERM, SIGUSR2] {
        let _ = signal_hook::flag::register(sig, flag.clone());
    }
    flag
}

/// What a command that trains asks of the runner beyond the device.
struct RunChoices {
    lease: f64,
    force: bool,
    rerun_failed: bool,
    max_failures: u32,
    wait: bool,
}

impl RunChoices {
    fn of(train: &TrainArgs) -> Self {
        Self {
            lease: train.lease,
            force: train.force,
            rerun_failed: train.rerun_failed,
            max_failures: train.max_failures,
            wait: !train.no_wait,
        }
    }
}

/// `beatlab data ...`: the commands over records and corpora that need no run.
fn data_command(g: &Global, command: DataCommand) -> Result<Exit> {
    match command {
        DataCommand::Check { root, json } => data_check(&root, json),
        DataCommand::Render {
            record,
            output,
            layout,
            px_per_mm,
        } => data_render(&record, &output, layout, px_per_mm),
        DataCommand::Delineate { record, json } => delineation::data_delineate(&record, json),
        DataCommand::Measure { root, json } => delineation::data_measure(&root, json),
        DataCommand::ScoreDelineation { root, json } => {
            delineation::data_score_delineation(&root, json)
        }
        DataCommand::Localize {
            record,
            annotator,
            chunk_s,
            json,
        } => delineation::data_localize(&record, &annotator, chunk_s, json),
        DataCommand::BuildInstructions {
            spec,
            output,
            captions,
        } => build_instructions(g, &spec, &output, captions),
    }
}

fn runner_config(g: &Global, choice: DeviceChoice, run: RunChoices) -> Result<RunnerConfig> {
    let console = Console::new(g.quiet);
    let resolved = device::resolve(choice).map_err(bad)?;
    if let Some(why) = &resolved.fallback {
        console.line(&format!("device auto: using the CPU ({why})"));
    }
    let registry = Registry::open(&g.registry)?;
    Ok(RunnerConfig {
        registry,
        runs_dir: g.runs_dir.clone(),
        device: resolved.device,
        device_name: resolved.name,
        lease_s: run.lease,
        force: run.force,
        rerun_failed: run.rerun_failed,
        max_failures: run.max_failures,
        wait: run.wait,
        console,
        stages: beatlab::stages::builtin(),
        interrupted: interrupt_flag(),
    })
}

fn train_cells(
    g: &Global,
    file: &Path,
    sets: Vec<String>,
    train: &TrainArgs,
    workers: usize,
    table_format: Option<Format>,
) -> Result<Exit> {
    // Everything that can be wrong with the input is checked before the registry is touched.
    // The cells are made a chunk at a time whenever they are needed, never all at once.
    let loaded = load_spec(file, sets)?;
    let plan = loaded.lazy_plan(g.max_cells).map_err(bad)?;
    loaded.check_runtime(&plan).map_err(bad)?;
    check_weights(&loaded, &plan)?;
    share_cores(workers);
    let cfg = runner_config(g, train.device, RunChoices::of(train))?;
    cfg.console.line(&format!(
        "{}: {} cells, {} worker{}, device {}",
        plan.experiment(),
        plan.count(),
        workers,
        if workers == 1 { "" } else { "s" },
        cfg.device_name
    ));
    let reports = runner::run_plan(&plan, &cfg, workers).map_err(|e| {
        let registry = matches!(
            e,
            runner::RunnerError::Registry(_) | runner::RunnerError::Unrecorded { .. }
        );
        let e = anyhow::Error::new(e);
        match registry {
            true => e.context(format!("registry {}", cfg.registry.address())),
            false => e,
        }
    })?;
    let failed: Vec<_> = reports
        .iter()
        .filter(|r| matches!(r.outcome, CellOutcome::Failed(_)))
        .collect();
    let stopped = reports
        .iter()
        .any(|r| matches!(r.outcome, CellOutcome::Stopped(_)));
    let left: Vec<_> = reports
        .iter()
        .filter_map(|r| match &r.outcome {
            CellOutcome::HeldElsewhere(holder) => Some((r, holder)),
            _ => None,
        })
        .collect();
    let finished = reports
        .iter()
        .filter(|r| r.outcome == CellOutcome::Finished)
        .count();
    eprintln!(
        "{}: {finished} cell(s) finished, {} failed{} in this process",
        plan.experiment(),
        failed.len(),
        if stopped { ", some interrupted" } else { "" }
    );
    for r in &failed {
        if let CellOutcome::Failed(e) = &r.outcome {
            eprintln!("  failed {} ({}): {e}", r.run_id, r.label);
        }
    }
    if !left.is_empty() {
        eprintln!(
            "{}: left {} cell(s) held by other live workers (--no-wait); they finish there, or \
             are taken over once their lease expires:",
            plan.experiment(),
            left.len()
        );
        for (r, holder) in &left {
            eprintln!("  {} ({}): {holder}", r.run_id, r.label);
        }
    }
    if let Some(format) = table_format {
        println!();
        print!(
            "{}",
            table::build(&plan, Some(&cfg.registry))?.render(format)
        );
    }
    Ok(if failed.is_empty() && !stopped && left.is_empty() {
        Exit::Done
    } else {
        Exit::RunFailed
    })
}

/// Real checkpoints a spec names must exist before anything runs.
fn check_weights(loaded: &spec::Loaded, plan: &dyn PlanCells) -> Result<()> {
    let mut diagnostics: Vec<spec::Diagnostic> = Vec::new();
    for cell in plan.cells() {
        for (field, problem) in beatlab::stages::multimodal::missing_weights(&cell.spec) {
            let d = loaded.diagnostic_at(field, format!("weights not found: {problem}"));
            if !diagnostics.contains(&d) {
                diagnostics.push(d);
            }
        }
    }
    if diagnostics.is_empty() {
        Ok(())
    } else {
        Err(bad(spec::SpecError::Invalid { diagnostics }))
    }
}

/// Splits the CPU cores between worker threads (unless RAYON_NUM_THREADS is set): candle's CPU
/// thread pool spin-waits, so workers that each use every core slow each other down.
fn share_cores(workers: usize) {
    if workers > 1 && std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        // Set before any tensor operation starts the pool.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", (cores / workers).max(1).to_string()) };
    }
}

fn resume(g: &Global, run: &str, choice: DeviceChoice, lease: f64) -> Result<Exit> {
    let choices = RunChoices {
        lease,
        force: false,
        rerun_failed: false,
        max_failures: 1,
        wait: true,
    };
    let cfg = runner_config(g, choice, choices)?;
    let report = match runner::resume_run(run, &cfg) {
        Err(runner::RunnerError::Registry(e @ beatlab::registry::RegistryError::NoSuchRun(_)))
        | Err(runner::RunnerError::Registry(
            e @ beatlab::registry::RegistryError::Ambiguous { .. },
        )) => {
            return Err(bad(e));
        }
        Err(e @ runner::RunnerError::NotResumable { .. }) => return Err(bad(e)),
        other => other?,
    };
    Ok(match report.outcome {
        CellOutcome::Finished => {
            eprintln!("{}: finished", report.run_id);
            Exit::Done
        }
        CellOutcome::Failed(e) => {
            eprintln!("{}: failed: {e}", report.run_id);
            Exit::RunFailed
        }
        CellOutcome::Stopped(_) | CellOutcome::HeldElsewhere(_) => Exit::RunFailed,
    })
}

fn open_for_reading(g: &Global) -> Result<Option<Registry>> {
    Ok(Registry::open_existing(&g.registry)?)
}

/// `--where EXPR`, parsed: a parse error is bad input, printed with a caret under its column.
fn parse_where(filter: Option<&str>) -> Result<Option<Query>> {
    filter
        .map(|f| f.parse::<Query>())
        .transpose()
        .map_err(|e| bad(anyhow::anyhow!("--where: {e}")))
}

fn runs(
    g: &Global,
    status: Option<RunStatus>,
    experiment: Option<&str>,
    filter: Option<&str>,
    json: bool,
) -> Result<Exit> {
    let filter = parse_where(filter)?;
    let rows = match open_for_reading(g)? {
        Some(r) => beatlab::query::select_runs(&r, experiment, status, filter.as_ref())?,
        None => Vec::new(),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(Exit::Done);
    }
    if rows.is_empty() {
        println!("no runs in {}", g.registry.display());
        return Ok(Exit::Done);
    }
    println!(
        "{:<14} {:<20} {:<9} {:>3}  {:<19}  cell",
        "run", "experiment", "status", "try", "started"
    );
    for r in rows {
        println!(
            "{:<14} {:<20} {:<9} {:>3}  {:<19}  {}",
            r.id,
            r.experiment,
            r.status.as_str(),
            r.attempt,
            r.started_at.map(format_time).unwrap_or_default(),
            r.cell_label
        );
    }
    Ok(Exit::Done)
}

/// `beatlab report`: gathers the experiment's runs and writes its page.
fn report(
    g: &Global,
    name: &str,
    sets: Vec<String>,
    output: Option<PathBuf>,
    (filter, metric): (Option<&str>, Option<&str>),
    open: bool,
) -> Result<Exit> {
    // A chunk of cells at a time: a report of a huge grid does not hold the grid.
    let loaded = load_spec(&experiment_file(name)?, sets)?;
    let plan = loaded.lazy_plan(g.max_cells).map_err(bad)?;
    let query = parse_where(filter)?;
    if let Some(m) = metric {
        beatlab::report::parallel::check_metric(&plan, m)
            .map_err(|e| bad(anyhow::anyhow!("--metric {e}")))?;
    }
    let out = output.unwrap_or_else(|| Path::new("reports").join(plan.experiment()));
    if out.exists() && !out.is_dir() {
        return Err(bad(anyhow::anyhow!(
            "--output {}: not a folder (the report is a folder holding index.html and plots/)",
            out.display()
        )));
    }
    let registry = open_for_reading(g)?;
    let data = beatlab::report::gather(
        &plan,
        registry.as_ref(),
        &g.runs_dir,
        filter.zip(query.as_ref()),
    )?;
    let index = beatlab::report::write(&data, &out, metric)?;
    println!("{}", index.display());
    if open {
        let status = std::process::Command::new("xdg-open").arg(&index).status();
        if !matches!(&status, Ok(s) if s.success()) {
            eprintln!(
                "could not open {} (xdg-open: {status:?}); open it in a browser",
                index.display()
            );
        }
    }
    Ok(Exit::Done)
}

fn format_time(t: f64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t as i64)
        .ok()
        .and_then(|d| {
            d.format(&time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second]"
            ))
            .ok()
        })
        .unwrap_or_default()
}

fn find_run(g: &Global, id: &str) -> Result<(Registry, RunRow)> {
    let registry = open_for_reading(g)?
        .ok_or_else(|| bad(anyhow::anyhow!("no registry at {}", g.registry.display())))?;
    let run = registry.run(id).map_err(bad)?;
    Ok((registry, run))
}

fn show(g: &Global, id: &str, json: bool) -> Result<Exit> {
    let (registry, mut run) = find_run(g, id)?;
    run.status = run.effective_status(beatlab::registry::now());
    let summaries = registry.summaries(&run.id)?;
    let checkpoints = registry.checkpoints(&run.id)?;
    let metrics = registry.metrics(&run.id)?;
    let mut last: std::collections::BTreeMap<&str, (i64, f64)> = Default::default();
    for m in &metrics {
        last.insert(&m.key, (m.step, m.value));
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "run": run,
                "summaries": summaries,
                "last_metrics": last.iter().map(|(k, (s, v))| (k.to_string(), serde_json::json!({"step": s, "value": v}))).collect::<serde_json::Map<_, _>>(),
                "checkpoints": checkpoints,
            }))?
        );
        return Ok(Exit::Done);
    }
    println!("run        {}", run.id);
    println!("experiment {}", run.experiment);
    println!("cell       #{} {}", run.cell_index, run.cell_label);
    println!("hash       {}", run.hash);
    println!(
        "status     {} (attempt {}){}",
        run.status.as_str(),
        run.attempt,
        run.stage
            .as_ref()
            .map(|s| format!(", stage {s}"))
            .unwrap_or_default()
    );
    println!("seed       {}", run.seed);
    println!(
        "code       {}{}",
        run.code_rev,
        if run.code_dirty { " (dirty)" } else { "" }
    );
    println!("where      {} on {} ({})", run.worker, run.host, run.device);
    println!("folder     {}", run.run_dir);
    if let Some(e) = &run.error {
        println!("error      {e}");
    }
    if !summaries.is_empty() {
        println!("\nsummaries:");
        for (k, v) in &summaries {
            println!("  {k:<32} {v:.6}");
        }
    }
    if !last.is_empty() {
        println!("\nlast metrics:");
        for (k, (s, v)) in &last {
            println!("  {k:<32} {v:.6}  (step {s})");
        }
    }
    if !checkpoints.is_empty() {
        println!("\ncheckpoints:");
        for c in &checkpoints {
            println!(
                "  {:<10} step {:>7}  {}{}  {} bytes  sha256 {}",
                c.stage,
                c.step,
                c.path,
                if c.is_final { " (final)" } else { "" },
                c.bytes,
                &c.sha256[..16]
            );
        }
    }
    Ok(Exit::Done)
}

fn flatten_json(
    prefix: &str,
    v: &serde_json::Value,
    out: &mut std::collections::BTreeMap<String, String>,
) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten_json(&p, v, out);
            }
        }
        serde_json::Value::Array(items)
            if items
                .iter()
                .all(|i| i.is_object() && i.get("name").is_some())
                && !items.is_empty() =>
        {
            // Stages, addressed by name as in overrides.
            for item in items {
                let name = item["name"].as_str().unwrap_or("?");
                flatten_json(&format!("{prefix}.{name}"), item, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

fn compare(g: &Global, a: &str, b: &str) -> Result<Exit> {
    let (registry, ra) = find_run(g, a)?;
    let rb = registry.run(b).map_err(bad)?;
    let parse = |r: &RunRow| -> Result<std::collections::BTreeMap<String, String>> {
        let v: serde_json::Value =
            serde_json::from_str(&r.spec_json).with_context(|| format!("spec of run {}", r.id))?;
        let mut out = Default::default();
        flatten_json("", &v, &mut out);
        Ok(out)
    };
    let (sa, sb) = (parse(&ra)?, parse(&rb)?);
    println!("spec differences ({} vs {}):", ra.id, rb.id);
    let keys: std::collections::BTreeSet<&String> = sa.keys().chain(sb.keys()).collect();
    let mut any = false;
    for k in keys {
        let (x, y) = (sa.get(k), sb.get(k));
        if x != y {
            any = true;
            println!(
                "  {k:<36} {:<16} {}",
                x.map_or("—", |s| s),
                y.map_or("—", |s| s)
            );
        }
    }
    if !any {
        println!("  (identical)");
    }
    let (ma, mb) = (registry.summaries(&ra.id)?, registry.summaries(&rb.id)?);
    println!("\nsummaries:");
    let keys: std::collections::BTreeSet<&String> = ma.keys().chain(mb.keys()).collect();
    for k in keys {
        let (x, y) = (ma.get(k), mb.get(k));
        let delta = match (x, y) {
            (Some(x), Some(y)) => format!("{:+.6}", y - x),
            _ => String::new(),
        };
        let show = |v: Option<&f64>| v.map_or("—".to_string(), |v| format!("{v:.6}"));
        println!("  {k:<36} {:>12} {:>12} {delta:>12}", show(x), show(y));
    }
    Ok(Exit::Done)
}

fn data_check(root: &Path, json: bool) -> Result<Exit> {
    if !root.is_dir() {
        return Err(bad(anyhow::anyhow!("{} is not a folder", root.display())));
    }
    let report = beatlab_ecg::check::check_root(root);
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(
        if report.records_failed == 0 && report.failures.is_empty() {
            Exit::Done
        } else {
            Exit::RunFailed
        },
    )
}

fn data_render(
    record: &Path,
    output: &Path,
    layout: args::LayoutArg,
    px_per_mm: f32,
) -> Result<Exit> {
    use beatlab_heartcare::render::{RenderConfig, draw_paper};
    check_output(output)?;
    let rec = beatlab_ecg::wfdb::read_record(record).map_err(bad)?;
    // The page is written at its drawn size (`px_per_mm`); the output size only matters when
    // resizing for a vision encoder.
    let mut config = match layout {
        args::LayoutArg::SixByTwo => RenderConfig::six_by_two(1, 1),
        args::LayoutArg::ThreeByFour => RenderConfig::three_by_four(1, 1),
    };
    config.px_per_mm = px_per_mm;
    config.duration_s = config.duration_s.min(rec.duration_s() as f32);
    let paper = draw_paper(&rec, &config).map_err(bad)?;
    let png = paper.image.encode_png()?;
    write_output(output, &png)?;
    eprintln!(
        "{}: {} leads, {:.1} s at {} Hz -> {} ({} x {} px)",
        rec.id,
        rec.leads.len(),
        rec.duration_s(),
        rec.fs,
        output.display(),
        paper.image.width,
        paper.image.height
    );
    Ok(Exit::Done)
}

fn build_instructions(g: &Global, args: &SpecArgs, output: &Path, captions: bool) -> Result<Exit> {
    let loaded = load_spec(&args.file, args.sets.clone())?;
    let plan = loaded.lazy_plan(g.max_cells).map_err(bad)?;
    loaded.check_runtime(&plan).map_err(bad)?;
    check_output(output)?;
    // The corpus is the first cell's: the sweep does not change the data.
    let spec = match plan.cells().next() {
        Some(cell) => cell.into_owned().spec,
        None => loaded.spec.clone(),
    };
    let corpus = beatlab::stages::multimodal::Corpus::load(&spec, &g.runs_dir.join(".cache"))?;
    let mut items = corpus.items.clone();
    if captions {
        items.extend(corpus.captions.iter().cloned());
    }
    let mut text = String::new();
    let mut counts: std::collections::BTreeMap<(String, String), usize> = Default::default();
    for item in &items {
        text.push_str(&serde_json::to_string(item)?);
        text.push('\n');
        let split = item
            .split
            .map_or("—".to_string(), |s| format!("{s:?}").to_lowercase());
        *counts
            .entry((item.item_type.to_string(), split))
            .or_default() += 1;
    }
    write_output(output, text.as_bytes())?;
    println!(
        "{} items from {} records -> {}",
        items.len(),
        corpus.records.len(),
        output.display()
    );
    for ((kind, split), n) in counts {
        println!("  {kind:<28} {split:<10} {n}");
    }
    Ok(Exit::Done)
}

/// An output path the user named must be one beatlab may write (checked before any work).
fn check_output(output: &Path) -> Result<()> {
    beatlab_fsio::check_output(output)
        .map_err(|e| bad(anyhow::Error::new(e).context(format!("output {}", output.display()))))
}

/// Writes an output the user named as a shell redirection would (see [`beatlab_fsio::write_output`]);
/// a target it refuses is bad input.
fn write_output(output: &Path, bytes: &[u8]) -> Result<()> {
    beatlab_fsio::write_output(output, bytes).map_err(|e| {
        let refused = beatlab_fsio::not_regular(&e).is_some();
        let e = anyhow::Error::new(e).context(format!("writing {}", output.display()));
        if refused { bad(e) } else { e }
    })
}

/// `beatlab registry ...`: backup and check open the registry read-only; migrate opens it as a
/// writer does.
fn registry_command(g: &Global, command: RegistryCommand) -> Result<Exit> {
    let existing = || {
        Registry::open_existing(&g.registry)?
            .ok_or_else(|| bad(anyhow::anyhow!("no registry at {}", g.registry.display())))
    };
    match command {
        RegistryCommand::Backup { file } => {
            let registry = existing()?;
            registry.backup(&file)?;
            eprintln!("{} -> {}", registry.address(), file.display());
            Ok(Exit::Done)
        }
        RegistryCommand::Check { json } => {
            let registry = existing()?;
            let report = registry.check()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "{}: schema version {}",
                    registry.address(),
                    report.schema_version
                );
                let counts: Vec<String> = report
                    .counts
                    .iter()
                    .map(|(t, n)| format!("{t} {n}"))
                    .collect();
                println!("  {}", counts.join(", "));
                for note in &report.notes {
                    println!("  note: {note}");
                }
                for problem in &report.problems {
                    println!("  problem: {problem}");
                }
                if report.problems.is_empty() {
                    println!("  ok");
                }
            }
            Ok(if report.problems.is_empty() {
                Exit::Done
            } else {
                Exit::RunFailed
            })
        }
        RegistryCommand::Migrate => {
            let registry = Registry::open(&g.registry)?;
            eprintln!("{}: schema up to date", registry.address());
            Ok(Exit::Done)
        }
    }
}

fn parity(args: &args::ParityArgs) -> Result<Exit> {
    use beatlab::parity::{self, ParityOptions};
    if args.steps == 0 || args.batch == 0 {
        return Err(bad(anyhow::anyhow!(
            "--steps and --batch must be at least 1 (got {} and {})",
            args.steps,
            args.batch
        )));
    }
    if !(args.tolerance.is_finite() && args.tolerance > 0.0) {
        return Err(bad(anyhow::anyhow!(
            "--tolerance must be a positive number (got {})",
            args.tolerance
        )));
    }
    let options = ParityOptions {
        device: device::resolve(args.device).map_err(bad)?.device,
        steps: args.steps,
        batch: args.batch,
        seed: args.seed,
        tolerance: args.tolerance,
        ..ParityOptions::default()
    };
    let report = parity::run(&options, &mut |line| eprintln!("{line}"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(if report.agrees {
        Exit::Done
    } else {
        Exit::RunFailed
    })
}

/// Runs the `beatlab-bench` binary found beside this one (or on the `PATH`) with `args`, and
/// exits as it does.
fn bench(args: &[std::ffi::OsString]) -> Result<Exit> {
    const BENCH: &str = "beatlab-bench";
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join(BENCH)))
        .filter(|path| path.is_file());
    let program = beside.unwrap_or_else(|| PathBuf::from(BENCH));
    let status = std::process::Command::new(&program)
        .args(args)
        .status()
        .map_err(|e| {
            bad(anyhow::anyhow!(
                "cannot run {}: {e}; the benchmarks are their own binary: build it with \
                 `cargo build --release -p beatlab-bench` (scripts/bench.sh does)",
                program.display()
            ))
        })?;
    match status.code() {
        Some(0) => Ok(Exit::Done),
        Some(2) => Err(bad(anyhow::anyhow!("{BENCH}: bad arguments (see above)"))),
        _ => Err(anyhow::anyhow!("{BENCH} failed ({status})")),
    }
}
