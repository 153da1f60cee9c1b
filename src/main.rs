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
            eprintln!("error: {}", chain(&e));
            let bad_input = e.chain().any(|c| {
                c.downcast_ref::<commands::BadInput>().is_some()
                    || c.downcast_ref::<beatlab::spec::SpecError>().is_some()
            });
            ExitCode::from(if bad_input { 2 } else { 1 })
        }
    }
}

/// The error and its causes on one line; a cause whose text the message already holds (many
/// messages embed their source) is not repeated.
fn chain(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}
