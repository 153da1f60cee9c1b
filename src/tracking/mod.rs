//! What a run reports while it works: metrics (batched into the registry and written to
//! TensorBoard), its log file, and progress on the console.
//!
//! The console shows indicatif progress bars when stderr is a terminal and plain log lines
//! otherwise (CI logs, `nohup`, cluster jobs), so output stays readable either way.

pub mod tensorboard;

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::registry::{MetricPoint, Registry, RegistryError};
pub use tensorboard::EventWriter;

/// Progress bars and log lines for the whole process (shared by worker threads).
#[derive(Clone)]
pub struct Console {
    multi: MultiProgress,
    interactive: bool,
    quiet: bool,
}

impl Console {
    /// Bars when stderr is a terminal, log lines otherwise.
    pub fn new(quiet: bool) -> Self {
        use std::io::IsTerminal;
        let interactive = std::io::stderr().is_terminal() && !quiet;
        let multi = if interactive {
            MultiProgress::new()
        } else {
            MultiProgress::with_draw_target(ProgressDrawTarget::hidden())
        };
        Self {
            multi,
            interactive,
            quiet,
        }
    }

    /// Prints a line (above the bars when they are shown).
    pub fn line(&self, text: &str) {
        if self.quiet {
            return;
        }
        if self.interactive {
            let _ = self.multi.println(text);
        } else {
            // A closed standard error must not stop a run.
            let _ = writeln!(std::io::stderr(), "{text}");
        }
    }

    /// A progress bar of `len` steps (hidden when not interactive).
    pub fn bar(&self, len: u64, prefix: &str) -> ProgressBar {
        let bar = if self.interactive {
            self.multi.add(ProgressBar::new(len))
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>24} [{bar:30}] {pos}/{len} {msg} ({elapsed}<{eta})",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(prefix.to_string());
        bar
    }

    pub fn is_interactive(&self) -> bool {
        self.interactive
    }
}

/// Why tracking failed.
#[derive(Debug, thiserror::Error)]
pub enum TrackError {
    /// The registry rejected metric points.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The log or TensorBoard file could not be written.
    #[error("cannot write {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// Metrics and log of one run.
pub struct Tracker {
    registry: Registry,
    run_id: String,
    pending: Vec<MetricPoint>,
    last_flush: Instant,
    tb: EventWriter,
    log: File,
    console: Console,
    prefix: String,
}

/// Flush metric points at least this often, so `beatlab runs`/`show` see recent values.
const FLUSH_EVERY: Duration = Duration::from_secs(5);
/// ... or when this many are buffered (one transaction per batch keeps SQLite fast).
const FLUSH_POINTS: usize = 512;

impl Tracker {
    pub fn new(
        registry: Registry,
        run_id: &str,
        run_dir: &Path,
        console: Console,
    ) -> Result<Self, TrackError> {
        let io = |what: &str| {
            let what = what.to_string();
            move |source| TrackError::Io { what, source }
        };
        let log_path = run_dir.join("log.txt");
        let log =
            beatlab_fsio::open_append(&log_path).map_err(io(&log_path.display().to_string()))?;
        let tb = EventWriter::create(&run_dir.join("tb")).map_err(io("TensorBoard events"))?;
        Ok(Self {
            registry,
            run_id: run_id.to_string(),
            pending: Vec::new(),
            last_flush: Instant::now(),
            tb,
            log,
            console,
            prefix: run_id.to_string(),
        })
    }

    pub fn console(&self) -> &Console {
        &self.console
    }

    /// Records a metric point (registry, batched; TensorBoard).
    pub fn metric(&mut self, key: &str, step: i64, value: f64) -> Result<(), TrackError> {
        self.pending.push(MetricPoint {
            key: key.to_string(),
            step,
            value,
            time: crate::registry::now(),
        });
        self.tb
            .scalar(key, step, value)
            .map_err(|source| TrackError::Io {
                what: "TensorBoard events".into(),
                source,
            })?;
        if self.pending.len() >= FLUSH_POINTS || self.last_flush.elapsed() >= FLUSH_EVERY {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes buffered metric points to the registry and flushes the event file.
    pub fn flush(&mut self) -> Result<(), TrackError> {
        self.registry.log_metrics(&self.run_id, &self.pending)?;
        self.pending.clear();
        self.last_flush = Instant::now();
        self.tb.flush().map_err(|source| TrackError::Io {
            what: "TensorBoard events".into(),
            source,
        })
    }

    /// A text entry in TensorBoard (e.g. the resolved spec).
    pub fn text(&mut self, tag: &str, step: i64, text: &str) -> Result<(), TrackError> {
        self.tb
            .text(tag, step, text)
            .map_err(|source| TrackError::Io {
                what: "TensorBoard events".into(),
                source,
            })
    }

    /// Marks a resume at `step` in TensorBoard.
    pub fn resumed_at(&mut self, step: i64) -> Result<(), TrackError> {
        self.tb
            .session_start(step)
            .map_err(|source| TrackError::Io {
                what: "TensorBoard events".into(),
                source,
            })
    }

    /// A line in the run's log file and on the console.
    pub fn log(&mut self, text: &str) {
        let stamp = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let _ = writeln!(self.log, "{stamp} {text}");
        self.console.line(&format!("[{}] {text}", self.prefix));
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}
