//! The Beat stage on real 12-lead recordings (the shared LUDB records), end to end through the
//! `beatlab` binary: a short training lowers the validation loss, Code% is reported per
//! quantizer level over the whole validation split, and a second residual level (DVQ) lowers
//! the reconstruction error against one level at the same codebook size.
//!
//! The records are read from `BEATLAB_ECG_DATA` (default `../shared/data/ecg`); a missing folder
//! fails the test rather than skipping it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use beatlab::registry::{Registry, RunStatus};

fn ecg_data_root() -> PathBuf {
    let root = std::env::var_os("BEATLAB_ECG_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/ecg"));
    assert!(
        root.join("ludb").is_dir(),
        "the shared ECG records are not at {} (set BEATLAB_ECG_DATA)",
        root.display()
    );
    root
}

/// A small Beat on LUDB (200 records, 10 s at 500 Hz): 2-s input windows every second, one
/// block each side, VQ against DVQ at codebook 32.
fn spec(ludb: &str) -> String {
    format!(
        r#"
[experiment]
name = "beat_ludb"

[data]
source = "ludb"
root = "{ludb}"
window = "sliding"
window_stride = 250
val_fraction = 0.15
test_fraction = 0.15

[beat]
input_len = 500
predict_len = 250
width = 32
head_dim = 8
heads = 4
depth = 1
decoder_depth = 1
mlp_ratio = 2.0
codebook_size = 32
vq_warmup_steps = 100

[[stage]]
name = "beat"
kind = "beat"
epochs = 12
t_max = 12
lr = 1e-3
batch = 16
checkpoint_every = 0

[sweep]
beat.dvq_levels = [1, 2]
"#
    )
}

/// The validation metrics of one finished run: key -> values by epoch.
type Curves = BTreeMap<String, Vec<f64>>;

#[test]
fn beat_on_real_records_learns_reports_code_use_and_dvq_beats_single_vq() {
    let ludb = ecg_data_root().join("ludb");
    let dir = tempfile::tempdir().unwrap();
    let spec_path = dir.path().join("beat_ludb.toml");
    std::fs::write(&spec_path, spec(&ludb.display().to_string())).unwrap();
    let registry = dir.path().join("registry.db");
    let out = Command::new(env!("CARGO_BIN_EXE_beatlab"))
        .current_dir(dir.path())
        .args(["--quiet", "--registry"])
        .arg(&registry)
        .arg("--runs-dir")
        .arg(dir.path().join("runs"))
        .arg("run")
        .arg(&spec_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "beatlab run failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let reg = Registry::open_existing(&registry).unwrap().unwrap();
    let mut by_levels: BTreeMap<u64, Curves> = BTreeMap::new();
    for run in reg.runs(None, None).unwrap() {
        assert_eq!(run.status, RunStatus::Finished, "{run:?}");
        let levels = run.overrides["beat.dvq_levels"].as_u64().unwrap();
        let mut curves = Curves::new();
        for point in reg.metrics(&run.id).unwrap() {
            if let Some(key) = point.key.strip_prefix("beat/val/") {
                curves.entry(key.to_owned()).or_default().push(point.value);
            }
        }
        by_levels.insert(levels, curves);
    }
    assert_eq!(by_levels.keys().copied().collect::<Vec<_>>(), [1, 2]);

    for (levels, curves) in &by_levels {
        let loss = &curves["loss"];
        assert_eq!(
            loss.len(),
            12,
            "{levels} level(s): one validation per epoch"
        );
        // 1.50 -> 1.25 (1 level) and 1.19 (2 levels) in trial runs.
        assert!(
            loss[11] < 0.9 * loss[0],
            "{levels} level(s): validation loss {loss:?} did not fall"
        );
        // Code% per level, over the split: a share of the codebook, and more than one code.
        for l in 1..=*levels {
            let pct = *curves[&format!("code_pct_l{l}")].last().unwrap();
            assert!(
                pct > 100.0 / 32.0 && pct <= 100.0,
                "{levels} level(s): Code% of level {l} = {pct}"
            );
        }
        assert!(!curves.contains_key(&format!("code_pct_l{}", levels + 1)));
    }
    let recon = |levels: u64| *by_levels[&levels]["loss_recon"].last().unwrap();
    let (one, two) = (recon(1), recon(2));
    eprintln!("LUDB validation recon MSE, codebook 32: 1 level {one:.4}, 2 levels {two:.4}");
    assert!(one < 1.0, "single VQ did not learn to reconstruct: {one}");
    // 0.663 and 0.616 in trial runs.
    assert!(two < 0.97 * one, "2 levels {two} vs 1 level {one}");
}
