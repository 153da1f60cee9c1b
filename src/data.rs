//! From `[data]` and `[beat]` to model-ready windows: load the records of the chosen source,
//! preprocess and split them, and cache the result on disk.
//!
//! The cache key is a hash of everything the windows depend on — the source and its files'
//! fingerprint (paths, sizes, modification times), the preprocessing settings, the split and
//! the window lengths — so the cells of a grid that share these settings prepare their data once,
//! and changed records or settings are never served stale.

use std::path::{Path, PathBuf};

use beatlab_ecg::dataset::{self, Dataset, SplitConfig};
use beatlab_ecg::preprocess::{
    BandpassConfig, Normalise, PreprocessConfig, WindowMode as EcgWindow,
};
use beatlab_ecg::synthetic::{Condition, NoiseConfig, SimConfig};
use beatlab_ecg::{Record, ptbxl};
use sha2::{Digest, Sha256};

use crate::spec::{self, DataSource, Normalize, Spec, WindowMode};

/// Why data could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// `data.root` names a variable that is not set.
    #[error("data.root: {0}")]
    Root(String),
    /// Records could not be read.
    #[error(transparent)]
    Read(#[from] beatlab_ecg::DataError),
    /// Records could not be preprocessed.
    #[error(transparent)]
    Build(#[from] dataset::DatasetError),
    /// The cache could not be read or written.
    #[error("data cache: {0}")]
    Cache(String),
    /// The source produced no usable record.
    #[error("no records in {0}")]
    Empty(String),
}

/// The preprocessing settings of a spec.
pub fn preprocess_config(spec: &Spec) -> PreprocessConfig {
    let d = &spec.data;
    PreprocessConfig {
        target_fs: d.target_fs,
        bandpass: Some(BandpassConfig {
            low_hz: d.bandpass_low_hz,
            high_hz: d.bandpass_high_hz,
            order: d.bandpass_order as usize,
        }),
        window: match d.window {
            WindowMode::Quality => EcgWindow::Best,
            WindowMode::Center => EcgWindow::Center,
            WindowMode::Sliding => EcgWindow::Sliding,
        },
        stride: d.window_stride as usize,
        min_quality: d.min_quality as f32,
        normalise: match d.normalize {
            Normalize::LeadMeanGlobalStd => Normalise::LeadMeanGlobalStd,
            Normalize::Minmax => Normalise::Minmax,
            Normalize::None => Normalise::None,
        },
        ..PreprocessConfig::default()
    }
}

/// The split settings of a spec.
pub fn split_config(spec: &Spec) -> SplitConfig {
    SplitConfig {
        val_fraction: spec.data.val_fraction,
        test_fraction: spec.data.test_fraction,
        salt: format!("beatlab-{}", spec.data.seed),
        ..SplitConfig::default()
    }
}

/// The simulator settings of a spec.
pub fn sim_config(spec: &Spec) -> SimConfig {
    let d = &spec.data;
    let base = NoiseConfig::default();
    let scale = d.synthetic_noise as f32;
    SimConfig {
        fs: d.synthetic_fs,
        duration_s: d.synthetic_duration_s,
        noise: if scale == 0.0 {
            NoiseConfig::none()
        } else {
            NoiseConfig {
                baseline_wander_mv: base.baseline_wander_mv * scale,
                mains_mv: base.mains_mv * scale,
                emg_mv: base.emg_mv * scale,
                ..base
            }
        },
        mix: match d.synthetic_mix.is_empty() {
            true => SimConfig::default().mix,
            // Validated: every name is a condition (spec::validate).
            false => d
                .synthetic_mix
                .iter()
                .filter_map(|(name, w)| Some((Condition::from_name(name)?, *w)))
                .collect(),
        },
        ..SimConfig::default()
    }
}

/// The records of a spec's source, sorted by id and limited to `max_records`.
pub fn load_records(spec: &Spec) -> Result<Vec<Record>, DataError> {
    let d = &spec.data;
    let mut records = match d.source {
        DataSource::Synthetic => beatlab_ecg::synthetic::generate(
            &sim_config(spec),
            d.synthetic_records as usize,
            d.seed,
        ),
        source => {
            let root = root(spec)?;
            match source {
                DataSource::Ptbxl => ptbxl::load(
                    &root,
                    if d.ptbxl_rate == 100 {
                        ptbxl::PtbxlRate::Hz100
                    } else {
                        ptbxl::PtbxlRate::Hz500
                    },
                )?,
                DataSource::Ludb => beatlab_ecg::ludb::load(&root)?,
                _ => beatlab_ecg::sources::load_any(&root, &d.exclude)?,
            }
        }
    };
    records.sort_by(|a, b| a.id.cmp(&b.id));
    if d.max_records > 0 {
        records.truncate(d.max_records as usize);
    }
    if d.source != DataSource::Synthetic && d.mix_synthetic > 0 {
        // Simulated ids (`sim/...`) never collide with real ones.
        records.extend(beatlab_ecg::synthetic::generate(
            &sim_config(spec),
            d.mix_synthetic as usize,
            d.seed,
        ));
    }
    if records.is_empty() {
        return Err(DataError::Empty(format!("data source `{}`", d.source)));
    }
    Ok(records)
}

fn root(spec: &Spec) -> Result<PathBuf, DataError> {
    match spec::data_root(spec) {
        Some(Ok(root)) => Ok(root),
        Some(Err(e)) => Err(DataError::Root(e)),
        None => Err(DataError::Root("the simulator has no root".into())),
    }
}

/// The cache key of a spec's windows.
pub fn cache_key(spec: &Spec) -> Result<String, DataError> {
    let d = &spec.data;
    let source = match d.source {
        DataSource::Synthetic => serde_json::json!({
            "kind": "synthetic",
            "records": d.synthetic_records,
            "seed": d.seed,
            "sim": sim_config(spec),
        }),
        _ => {
            let root = root(spec)?;
            serde_json::json!({
                "kind": d.source.as_str(),
                "root": root.to_string_lossy(),
                "exclude": d.exclude,
                "ptbxl_rate": d.ptbxl_rate,
                "files": beatlab_ecg::sources::fingerprint(&root, &d.exclude)?,
            })
        }
    };
    let material = serde_json::json!({
        // Bump when the preprocessing code changes what it produces for the same settings.
        "version": 1,
        "source": source,
        "max_records": d.max_records,
        "mix_synthetic": (d.source != DataSource::Synthetic && d.mix_synthetic > 0).then(|| serde_json::json!({
            "records": d.mix_synthetic,
            "seed": d.seed,
            "sim": sim_config(spec),
        })),
        "preprocess": preprocess_config(spec),
        "split": split_config(spec),
        "input_len": spec.beat.input_len,
        "predict_len": spec.beat.predict_len,
    });
    Ok(hex::encode(Sha256::digest(material.to_string().as_bytes())))
}

/// The windows of a spec, from the cache under `cache_dir` or freshly prepared.
pub fn windows(spec: &Spec, cache_dir: &Path) -> Result<Dataset, DataError> {
    let key = cache_key(spec)?;
    let build = || -> Result<Dataset, DataError> {
        let records = load_records(spec)?;
        Ok(dataset::build(
            &records,
            &preprocess_config(spec),
            &split_config(spec),
            spec.beat.input_len as usize,
            spec.beat.predict_len as usize,
        )?)
    };
    if !spec.data.cache {
        return build();
    }
    dataset::load_or_build(&cache_dir.join("data"), &key, build).map_err(|e| match e {
        dataset::CacheError::Build(inner) => inner,
        other => DataError::Cache(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use beatlab_ecg::synthetic::{Condition, generate_with_truth};

    use crate::spec::{self, Overrides};

    fn conditions_of(data: &str) -> Vec<Condition> {
        let text =
            format!("[experiment]\nname = \"mix\"\n\n[data]\nsynthetic_duration_s = 2\n{data}");
        let loaded = spec::load_str("mix.toml", &text, &Overrides::default()).unwrap();
        let cfg = super::sim_config(&loaded.spec);
        generate_with_truth(&cfg, 60, 7)
            .into_iter()
            .map(|r| r.truth.condition)
            .collect()
    }

    #[test]
    fn the_spec_s_condition_mix_is_what_the_simulator_draws() {
        let mixed = conditions_of(
            "synthetic_mix = { atrial_fibrillation = 3, premature_ventricular = 1 }\n",
        );
        let af = mixed
            .iter()
            .filter(|c| **c == Condition::AtrialFibrillation)
            .count();
        let pvc = mixed
            .iter()
            .filter(|c| **c == Condition::PrematureVentricular)
            .count();
        assert_eq!(af + pvc, mixed.len(), "{mixed:?}");
        assert!(
            af > pvc && pvc > 0,
            "3:1 weights gave {af} AF and {pvc} PVC"
        );
        // Without the field: the built-in mix, which draws many conditions.
        let default = conditions_of("");
        let distinct: std::collections::BTreeSet<_> = default.iter().collect();
        assert!(distinct.len() >= 8, "{distinct:?}");
    }
}
