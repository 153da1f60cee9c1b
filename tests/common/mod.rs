//! What the binary's multimodal end-to-end tests share: a toy-sized model on simulated records,
//! and running `beatlab` in a test's own folder.

use std::path::Path;
use std::process::{Command, Output};

use beatlab::registry::{Registry, RunRow};

/// The data, model and instruction sections of a toy multimodal spec (40 simulated records of
/// 4 s, Beat width 32, 32-pixel images, a 32-wide backbone); a test adds its `[experiment]`,
/// `[eval]` and stages. `[backbone]` starts with `hidden_size`, which tests may replace to
/// point the backbone at a checkpoint folder.
pub const TOY_MULTIMODAL: &str = r#"
[data]
source = "synthetic"
synthetic_records = 40
synthetic_duration_s = 4.0
val_fraction = 0.2
test_fraction = 0.2

[beat]
input_len = 250
predict_len = 125
width = 32
head_dim = 8
heads = 4
depth = 1
decoder_depth = 1
codebook_size = 32

[vision]
image_size = 32

[backbone]
hidden_size = 32
heads = 4
vocab_size = 400
max_seq_len = 192

[instructions]
closed_qa_per_record = 1
open_qa_per_record = 1
comparison_per_record = 1
reports_per_record = 1
predictions_per_record = 1
"#;

/// The `[beat]` section of a tiny Beat (patches of 25 samples, width 32, one layer each side, 32
/// codes): seconds of CPU per cell on a few simulated records. A macro, so that a test's spec
/// can stay one `concat!`ed constant.
#[macro_export]
macro_rules! tiny_beat {
    () => {
        r#"
[beat]
patch_size = 25
input_len = 250
predict_len = 125
width = 32
head_dim = 8
heads = 2
depth = 1
decoder_depth = 1
codebook_size = 32
"#
    };
}

/// A spec of `cells` cells (seeds `0..cells`) that finish at once: their only stage is
/// disabled. For tests of the registry and the launchers, where what a cell does is beside the
/// point.
#[allow(dead_code)] // the multimodal tests that include this file have no use for it
pub fn nop_spec(cells: usize) -> String {
    let seeds: Vec<String> = (0..cells).map(|i| i.to_string()).collect();
    format!(
        r#"
[experiment]
name = "nop"

[[stage]]
name = "beat"
kind = "beat"
enabled = false

[sweep]
seeds = [{}]
"#,
        seeds.join(", ")
    )
}

/// The registry file [`beatlab`] keeps in `dir`.
fn registry_path(dir: &Path) -> std::path::PathBuf {
    dir.join("reg.db")
}

/// Runs the binary in `dir` with its registry and run folders there.
pub fn beatlab(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_beatlab"))
        .current_dir(dir)
        .env("BEATLAB_REGISTRY", registry_path(dir))
        .env("BEATLAB_RUNS_DIR", dir.join("runs"))
        .args(args)
        .output()
        .unwrap()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The registry a [`beatlab`] call in `dir` wrote, and its first run (tests run one cell).
pub fn only_run(dir: &Path) -> (Registry, RunRow) {
    let reg = Registry::open_existing(&registry_path(dir))
        .unwrap()
        .expect("a registry in the test folder");
    let run = reg.runs(None, None).unwrap().remove(0);
    (reg, run)
}
