//! Where a sweep's workers run, and what the registry says about them.
//!
//! `beatlab sweep --launcher local` (the default) runs worker threads in this process;
//! `--launcher slurm` ([`slurm`]) writes one sbatch script of a job array whose tasks are each a
//! `beatlab worker` pulling cells from the shared registry until none is left, and submits it.
//! The registry is the only truth about a sweep (Slurm's accounting is often off): `beatlab
//! status EXP` ([`status`]) reads it.

pub mod slurm;
pub mod status;

use std::path::PathBuf;

/// Where `beatlab sweep` runs its workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Launcher {
    /// Worker threads in this process (`--workers N`).
    #[default]
    Local,
    /// A Slurm job array of `beatlab worker` tasks, submitted with sbatch.
    Slurm,
}

/// Why a sweep could not be launched.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// An option that does not fit the launcher, or a malformed value.
    #[error("{0}")]
    Option(String),
    /// `sbatch` is not on the `PATH` (nothing was written or submitted).
    #[error(
        "--launcher slurm: `sbatch` is not on the PATH ({path}); run this on a Slurm login node, \
         or use --launcher local (--dry-run prints the script without submitting it)"
    )]
    NoSbatch { path: String },
    /// A path that the script must name cannot be written into it.
    #[error("{what} {}: {message}", path.display())]
    Path {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    /// The script or its log folder could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// sbatch ran and refused the job.
    #[error("sbatch refused the job ({status}): {stderr}")]
    Sbatch { status: String, stderr: String },
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
}

impl LaunchError {
    /// Whether the error is the user's input (exit code 2): a bad option, no sbatch, a job
    /// sbatch refused (a partition or limit it does not know), a bad registry address.
    pub fn is_bad_input(&self) -> bool {
        match self {
            LaunchError::Option(_)
            | LaunchError::NoSbatch { .. }
            | LaunchError::Path { .. }
            | LaunchError::Sbatch { .. } => true,
            LaunchError::Write { .. } => false,
            LaunchError::Registry(e) => e.is_bad_input(),
        }
    }
}
