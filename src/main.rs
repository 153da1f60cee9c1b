//! The `beatlab` command line. A thin layer over the library: parse arguments, run the command,
//! report an error once with its chain, and exit 0 (done), 1 (a run failed) or 2 (bad input).

mod commands;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    tune_cpu_runtime();
    let cli = commands::args::Cli::parse();
    let result = commands::run(cli).and_then(|exit| {
        // Buffered output that fails only now is reported like any other failed write.
        std::io::stdout().flush().map_err(commands::StdoutError)?;
        Ok(exit)
    });
    commands::exit::exit_code(result)
}

/// Process-wide CPU settings that make candle's training steps faster (docs/benchmarks.md, Beat:
/// measured on 2 cores), applied before any thread or large buffer exists.
fn tune_cpu_runtime() {
    // glibc returns freed blocks above 128 KiB to the kernel at once, so every step of a training
    // loop faults its activation buffers in again (about 10 % of a Beat step in `perf`). Keeping
    // them in the heap costs the process its peak heap, which a training run reaches anyway.
    // 32 MiB is the highest mmap threshold glibc accepts (it ignores larger values).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator thresholds; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
    // candle runs elementwise ops on a pool of CANDLE_NUM_THREADS - 1 spinning workers beside
    // the rayon threads of its matrix products; on two cores the spinning competes with them (a
    // quarter of the samples in `perf`), so the pool is turned off there unless the user set it.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores <= 2 && std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: no other thread exists yet that could read the environment concurrently.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
}
