//! Several processes (here: threads) preparing the same data at once must all succeed and leave
//! one valid cache entry: the first to finish publishes it, the others keep it.

use std::sync::{Arc, Barrier};

use beatlab_ecg::dataset::{self, SplitConfig};
use beatlab_ecg::preprocess::PreprocessConfig;
use beatlab_ecg::synthetic::{SimConfig, generate};

#[test]
fn concurrent_builders_of_one_key_all_succeed() {
    let cfg = SimConfig {
        duration_s: 4.0,
        ..SimConfig::default()
    };
    let records = generate(&cfg, 6, 1);
    let ds = dataset::build(
        &records,
        &PreprocessConfig::default(),
        &SplitConfig::default(),
        250,
        125,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let barrier = Arc::new(Barrier::new(4));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (dir, ds, barrier) = (dir.path().to_path_buf(), ds.clone(), barrier.clone());
            std::thread::spawn(move || {
                dataset::load_or_build(&dir, "samekey", || {
                    barrier.wait();
                    Ok::<_, std::convert::Infallible>(ds)
                })
            })
        })
        .collect();
    for h in handles {
        let got = h.join().unwrap().expect("every builder succeeds");
        assert_eq!(got, ds);
    }
    assert_eq!(dataset::load(dir.path(), "samekey").unwrap(), Some(ds));
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "samekey")
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary copies left behind: {leftovers:?}"
    );
}
