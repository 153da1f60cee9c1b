//! The `beatlab` command line. A thin layer over the library: parse arguments, run the command,
//! report an error once with its chain, and exit 0 (done), 1 (a run failed) or 2 (bad input).

mod commands;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    beatlab::device::tune_cpu_runtime();
    let cli = commands::args::Cli::parse();
    let result = commands::run(cli).and_then(|exit| {
        // Buffered output that fails only now is reported like any other failed write.
        std::io::stdout().flush().map_err(commands::StdoutError)?;
        Ok(exit)
    });
    commands::exit::exit_code(result)
}
