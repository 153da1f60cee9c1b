//! Memory of the commands over a grid (issue #14.4): `run`/`sweep` (the runner: enqueue, claims,
//! the held-cells look-up), `table` and the plan's own check hold the cells in flight, not the
//! grid. Measured by a counting allocator (peak bytes live during a call, over every thread of
//! the process), for a grid of [`LARGE`] cells against one of [`SMALL`]; the same measure of a
//! made [`beatlab::spec::Plan`] of the large grid shows what holding the grid costs.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use beatlab::registry::{CellOffer, ClaimPolicy, Registry};
use beatlab::runner::{self, RunnerConfig};
use beatlab::spec::{self, Overrides, PlanCells};
use beatlab::tracking::Console;

/// Counts live heap bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

fn grew(size: usize) {
    let now = LIVE.fetch_add(size, Ordering::Relaxed) + size;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// One measurement at a time (the test harness runs tests on several threads).
static MEASURING: Mutex<()> = Mutex::new(());

/// `f`'s result and the most bytes it had live at once beyond what was live when it started.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

const SMALL: usize = 40;
const LARGE: usize = 10_000;

/// What the large grid may cost beyond the small one's peak: a few chunks of cells in
/// flight, the per-cell hashes of a chunk's look-up, allocator slack.
const ALLOWED: usize = 8 << 20;

fn grid(cells: usize) -> spec::Loaded {
    let text = format!(
        "[experiment]\nname = \"mem\"\n\n[[stage]]\nname = \"beat\"\nkind = \"beat\"\n\n\
         [sweep]\nseeds = {cells}\n"
    );
    spec::load_str("mem.toml", &text, &Overrides::default()).unwrap()
}

fn policy(dir: &Path) -> ClaimPolicy {
    ClaimPolicy {
        experiment: "mem".into(),
        worker: "test:1:0".into(),
        host: "test".into(),
        device: "cpu".into(),
        code_rev: "test".into(),
        code_dirty: false,
        lease_s: 30.0,
        force_before: None,
        rerun_failed_before: None,
        experiment_dir: dir.join("runs/mem"),
        max_failures: 3,
        job: None,
    }
}

/// A registry in `dir` where every cell of `plan` has a finished run with a summary (queued,
/// then marked finished by hand: running thousands of cells would measure training, not the plan).
fn finished_registry(dir: &Path, plan: &dyn PlanCells) -> Registry {
    let path = dir.join("reg.db");
    let reg = Registry::open(&path).unwrap();
    reg.upsert_experiment("mem", "mem.toml", "").unwrap();
    for chunk in plan.chunks(500) {
        let offers: Vec<CellOffer> = chunk.iter().map(CellOffer::of).collect();
        reg.enqueue(&policy(dir), &offers).unwrap();
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let options = sqlx::sqlite::SqliteConnectOptions::new().filename(&path);
        let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
        for sql in [
            "UPDATE runs SET status = 'finished', started_at = 1, finished_at = 2",
            "INSERT INTO summaries (run_id, key, value) SELECT id, 'beat/test/loss', cell_index FROM runs",
        ] {
            sqlx::query(sql).execute(&pool).await.unwrap();
        }
        pool.close().await;
    });
    reg
}

fn config(registry: Registry, dir: &Path) -> RunnerConfig {
    RunnerConfig {
        registry,
        runs_dir: dir.join("runs"),
        device: candle_core::Device::Cpu,
        device_name: "cpu".into(),
        lease_s: 30.0,
        force: false,
        rerun_failed: false,
        max_failures: 3,
        wait: true,
        console: Console::new(true),
        stages: beatlab::stages::builtin(),
        interrupted: Arc::new(AtomicBool::new(false)),
    }
}

/// The peak of `measure` over the large grid and over the small one.
fn both(measure: impl Fn(&spec::Loaded, &Path) -> usize) -> (usize, usize) {
    let (large, small) = (grid(LARGE), grid(SMALL));
    let (dl, ds) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    (measure(&large, dl.path()), measure(&small, ds.path()))
}

fn assert_bounded(what: &str, (large, small): (usize, usize)) {
    eprintln!(
        "{what}: peak {:.1} MB for {LARGE} cells, {:.1} MB for {SMALL}",
        large as f64 / 1e6,
        small as f64 / 1e6
    );
    assert!(
        large < small + ALLOWED,
        "{what}: {large} bytes at once for {LARGE} cells against {small} for {SMALL}"
    );
}

/// The measure is fit for purpose: the made plan of the large grid costs several times what
/// the bound allows, so a command that made it would fail the tests below.
#[test]
fn holding_the_large_grid_costs_more_than_the_bound() {
    let _one = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    let (whole, small) = both(|loaded, _| {
        let (plan, peak) = peak_during(|| loaded.plan_within(LARGE as u64).unwrap());
        drop(plan);
        peak
    });
    eprintln!("a made plan: {whole} bytes for {LARGE} cells, {small} for {SMALL}");
    assert!(whole > small + 3 * ALLOWED, "{whole} vs {small}");
}

#[test]
fn checking_and_tabulating_a_grid_hold_the_cells_in_flight() {
    let _one = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    assert_bounded(
        "lazy plan",
        both(|loaded, _| {
            let (plan, peak) = peak_during(|| loaded.lazy_plan(LARGE as u64).unwrap());
            assert!(plan.count() == LARGE || plan.count() == SMALL);
            peak
        }),
    );
    assert_bounded(
        "check_runtime",
        both(|loaded, _| {
            let plan = loaded.lazy_plan(LARGE as u64).unwrap();
            peak_during(|| loaded.check_runtime(&plan).unwrap()).1
        }),
    );
    assert_bounded(
        "table",
        both(|loaded, dir| {
            let plan = loaded.lazy_plan(LARGE as u64).unwrap();
            let reg = finished_registry(dir, &plan);
            let (table, peak) = peak_during(|| beatlab::table::build(&plan, Some(&reg)).unwrap());
            assert_eq!((table.cells, table.missing), (plan.count(), 0));
            peak
        }),
    );
}

#[test]
fn running_a_grid_holds_the_cells_in_flight() {
    let _one = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    assert_bounded(
        "run_plan",
        both(|loaded, dir| {
            let plan = loaded.lazy_plan(LARGE as u64).unwrap();
            let cfg = config(finished_registry(dir, &plan), dir);
            let (reports, peak) = peak_during(|| runner::run_plan(&plan, &cfg, 2).unwrap());
            // Every cell was walked (enqueue, claims, the held look-up) and none needed work.
            assert!(reports.is_empty(), "{}", reports.len());
            peak
        }),
    );
}
