//! The one place that turns a command's outcome into the process's exit code (and prints its
//! error once, with its chain): 0 done, 1 a run failed (or an error that is not the user's
//! input), 2 bad input (nothing was written then).

use std::io::Write;
use std::process::ExitCode;

use super::{BadInput, Exit, StdoutError};

/// Exit code 2: the user's input was wrong.
pub const BAD_INPUT: u8 = 2;
/// Exit code 1: a run failed, or the command failed for a reason that is not the input.
pub const FAILED: u8 = 1;

/// The exit code of `outcome`; prints the error, if any, to standard error.
pub fn exit_code(outcome: anyhow::Result<Exit>) -> ExitCode {
    match outcome {
        Ok(Exit::Done) => ExitCode::SUCCESS,
        Ok(Exit::RunFailed) => ExitCode::from(FAILED),
        // The reader stopped reading (`| head`): what it wanted was written; stop quietly.
        Err(e)
            if e.downcast_ref::<StdoutError>()
                .is_some_and(|s| s.0.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            // A closed standard error must not turn the failure into a panic.
            let _ = writeln!(std::io::stderr(), "error: {}", chain(&e));
            ExitCode::from(if is_bad_input(&e) { BAD_INPUT } else { FAILED })
        }
    }
}

/// Whether anything in the error's chain says the user's input was at fault.
fn is_bad_input(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<BadInput>().is_some()
            || c.downcast_ref::<beatlab::spec::SpecError>().is_some()
            || super::registry_bad_input(c)
    })
}

/// The error and its causes on one line; a cause whose text the message already holds (many
/// messages embed their source) is not repeated.
pub fn chain(e: &anyhow::Error) -> String {
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
