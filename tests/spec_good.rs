//! Good specs: their resolved form and plans are snapshots (`tests/specs/good/*.resolved`,
//! regenerate with `UPDATE_EXPECT=1`), and cell hashes depend only on the resolved values.

use std::path::Path;

use beatlab::spec::{self, Overrides, Plan};
use expect_test::expect_file;

fn plan_of(path: &str, overrides: &Overrides) -> Plan {
    spec::load(Path::new(path), overrides)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .plan()
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn describe(plan: &Plan) -> String {
    let mut out = format!(
        "experiment {} ({} cells)\n",
        plan.experiment,
        plan.cells.len()
    );
    for c in &plan.cells {
        out.push_str(&format!(
            "{:>3} {} {}\n",
            c.index,
            c.short_hash(),
            c.label()
        ));
    }
    out.push_str("\n# resolved spec of the first cell\n");
    out.push_str(&spec::to_toml_string(&plan.cells[0].spec));
    out
}

#[test]
fn good_specs_resolve_to_their_snapshots() {
    let cwd = std::env::current_dir().unwrap();
    for name in ["minimal", "extends_child", "grid"] {
        let path = format!("tests/specs/good/{name}.toml");
        let plan = plan_of(&path, &Overrides::default());
        expect_file![cwd.join(format!("tests/specs/good/{name}.resolved"))]
            .assert_eq(&describe(&plan));
    }
}

#[test]
fn table18_plans_eighteen_cells() {
    let plan = plan_of("experiments/table18_beat.toml", &Overrides::default());
    assert_eq!(plan.cells.len(), 18);
    let mut hashes: Vec<&str> = plan.cells.iter().map(|c| c.hash.as_str()).collect();
    hashes.sort();
    hashes.dedup();
    assert_eq!(hashes.len(), 18, "every cell has its own hash");
}

#[test]
fn hashes_ignore_layout_comments_and_number_spelling() {
    let a = plan_of("tests/specs/good/layout_a.toml", &Overrides::default());
    let b = plan_of("tests/specs/good/layout_b.toml", &Overrides::default());
    assert_eq!(a.cells[0].hash, b.cells[0].hash);
    assert_eq!(a.cells[0].canonical, b.cells[0].canonical);
}

#[test]
fn hashes_change_with_values_and_agree_across_override_layers() {
    let file = plan_of("tests/specs/good/layout_a.toml", &Overrides::default());
    let set = plan_of(
        "tests/specs/good/layout_a.toml",
        &Overrides {
            sets: vec!["beat.codebook_size=1024".into()],
            env: vec![],
        },
    );
    let env = plan_of(
        "tests/specs/good/layout_a.toml",
        &Overrides {
            sets: vec![],
            env: vec![("BEATLAB_BEAT__CODEBOOK_SIZE".into(), "1024".into())],
        },
    );
    assert_ne!(file.cells[0].hash, set.cells[0].hash);
    assert_eq!(set.cells[0].hash, env.cells[0].hash);
    assert_eq!(set.cells[0].spec.beat.codebook_size, 1024);
}

#[test]
fn set_beats_env_beats_file_and_pins_sweep_axes() {
    let plan = plan_of(
        "tests/specs/good/grid.toml",
        &Overrides {
            sets: vec!["beat.width=96".into()],
            env: vec![
                ("BEATLAB_BEAT__WIDTH".into(), "48".into()),
                ("BEATLAB_STAGE__BEAT__LR".into(), "0.5".into()),
                // Not a spec variable (no `__`): ignored.
                ("BEATLAB_REGISTRY".into(), "/tmp/x.db".into()),
            ],
        },
    );
    assert_eq!(plan.pinned, vec!["beat.width".to_string()]);
    assert!(plan.cells.iter().all(|c| c.spec.beat.width == 96));
    assert!(plan.cells.iter().all(|c| c.spec.stage[0].lr == 0.5));
    // 2 codebooks x 1 width x 3 zipped (epochs, depth) x 2 seeds; the exclusion named width 64,
    // which no longer occurs.
    assert_eq!(plan.cells.len(), 2 * 3 * 2);
}

#[test]
fn readme_spec_reference_matches_the_schema() {
    let readme = std::fs::read_to_string("README.md").expect("README.md");
    let start = "<!-- spec-reference:start -->\n";
    let end = "<!-- spec-reference:end -->";
    let from = readme
        .find(start)
        .expect("README has the spec-reference start marker")
        + start.len();
    let to = readme
        .find(end)
        .expect("README has the spec-reference end marker");
    let generated = beatlab::spec::reference::markdown();
    if readme[from..to] != generated {
        if std::env::var("UPDATE_EXPECT").is_ok() {
            let updated = format!("{}{}{}", &readme[..from], generated, &readme[to..]);
            std::fs::write("README.md", updated).unwrap();
            return;
        }
        panic!(
            "README.md's spec reference is out of date: run `UPDATE_EXPECT=1 cargo test --test spec_good`"
        );
    }
}

#[test]
fn the_window_cache_setting_does_not_change_the_hash() {
    // Issue #14.16: `data.cache` is where windows come from, not what they are.
    let plan = |cache: &str| {
        plan_of(
            "tests/specs/good/layout_a.toml",
            &Overrides {
                sets: vec![format!("data.cache={cache}")],
                env: vec![],
            },
        )
    };
    let (on, off) = (plan("true"), plan("false"));
    assert!(!off.cells[0].spec.data.cache);
    assert_eq!(on.cells[0].hash, off.cells[0].hash);
}
