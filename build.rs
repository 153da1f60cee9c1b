//! Embeds the git revision the binary is built from (and whether the tree was dirty), so every
//! run in the registry records the code that produced it.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let rev = git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
        .map(|s| !s.is_empty())
        .unwrap_or(false);
    println!("cargo:rustc-env=BEATLAB_GIT_REV={rev}");
    println!("cargo:rustc-env=BEATLAB_GIT_DIRTY={dirty}");
    for path in [
        ".git/HEAD",
        ".git/index",
        "src",
        "crates",
        "migrations",
        "Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={path}");
    }
}
