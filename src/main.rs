//! The `beatlab` command line. A thin layer over the library: parse arguments, run the command,
//! report an error once with its chain, and exit 0 (done), 1 (a run failed) or 2 (bad input).

mod commands;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = commands::args::Cli::parse();
    match commands::run(cli) {
        Ok(commands::Exit::Done) => ExitCode::SUCCESS,
        Ok(commands::Exit::RunFailed) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            let bad_input = e.chain().any(|c| {
                c.downcast_ref::<commands::BadInput>().is_some()
                    || c.downcast_ref::<beatlab::spec::SpecError>().is_some()
            });
            ExitCode::from(if bad_input { 2 } else { 1 })
        }
    }
}
