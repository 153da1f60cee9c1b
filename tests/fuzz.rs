//! Fuzz harness on stable Rust: every reader of outside input (the spec loader, WFDB headers and
//! signal files, MAT v4 records, WFDB annotations, the LUDB and PTB-XL CSV tables, checkpoint
//! files, instruction item files, `tokenizer.json`, a language model's Hugging Face folder) is
//! fed mutated copies of small valid inputs and must answer `Ok` or an error: never a
//! panic, a hang, or an allocation the limits do not bound.
//!
//! Inputs come from [`arbtest`] (a seeded, time-budgeted generator of [`arbitrary`] data); the
//! mutations (`mutate`) flip, insert, delete, duplicate and splice bytes and swap number tokens
//! for hostile ones (`1e300`, `-1`, `NaN`, `4294967296`...). Seeds live in `tests/fuzz/seeds`
//! (remade by `tests/fuzz/make_seeds.py`), plus the spec suite's files, a checkpoint, a trained
//! tokenizer and two tiny model folders made here.
//!
//! Each target runs `BEATLAB_FUZZ_MS` milliseconds (default 1500, so `cargo test` stays short);
//! `scripts/fuzz.sh` runs them for longer. A failing input is saved under
//! `target/fuzz-crashes/<target>/` and arbtest prints the seed that remakes it
//! (`ARBTEST_SEED=0x... cargo test --test fuzz <target>`). An input that runs over 20 s aborts the
//! process after saving itself the same way.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arbtest::arbitrary::{Result as ArbResult, Unstructured};
use beatlab::spec::{self, Overrides};
use beatlab_ecg::wfdb::{self, ReadLimits};
use beatlab_ecg::{annotation, ludb, mat, ptbxl};

/// One input: named files, written into a folder before the target runs.
#[derive(Clone, Debug)]
struct Input {
    files: Vec<(String, Vec<u8>)>,
    /// A seed the target must accept (the bad specs of the spec suite are seeds too).
    valid: bool,
}

impl Input {
    fn get(&self, name: &str) -> &[u8] {
        &self.files.iter().find(|(n, _)| n == name).unwrap().1
    }

    fn text(&self, name: &str) -> String {
        String::from_utf8_lossy(self.get(name)).into_owned()
    }
}

/// The seeds of a target: every folder under `tests/fuzz/seeds/<dir>` holding files (the folder
/// itself included) is one input.
fn seeds_in(dir: &str) -> Vec<Input> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::from("tests/fuzz/seeds").join(dir)];
    while let Some(folder) = stack.pop() {
        let mut files = Vec::new();
        let mut entries: Vec<_> = std::fs::read_dir(&folder)
            .unwrap_or_else(|e| panic!("{}: {e}", folder.display()))
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                stack.push(path);
            } else {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                files.push((name, std::fs::read(&path).unwrap()));
            }
        }
        if !files.is_empty() {
            out.push(Input { files, valid: true });
        }
    }
    assert!(!out.is_empty(), "no seeds under tests/fuzz/seeds/{dir}");
    out
}

/// Number tokens that break naive parsers.
const HOSTILE_NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1e300",
    "1e-300",
    "-1e300",
    "0.001",
    "NaN",
    "inf",
    "-0",
    "4294967296",
    "18446744073709551616",
    "9223372036854775807",
    "-9223372036854775808",
    "2147483648",
    "65536",
    "99999999999999999999999",
];

/// Short texts that break naive tokenisers.
const HOSTILE_TOKENS: &[&str] = &[
    "\n", " ", "/", "../", "\"", "'", ",", "x", "+", ":", "(", ")", "#", "=", "[", "]", "{", "}",
    "\0", "\r\n", "\u{feff}", "é",
];

/// The byte ranges of runs of ASCII digits (with a leading `-` or `.`) in `bytes`.
fn number_spans(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() {
            let start = if i > 0 && matches!(bytes[i - 1], b'-' | b'.') {
                i - 1
            } else {
                i
            };
            while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
                i += 1;
            }
            spans.push((start, i));
        } else {
            i += 1;
        }
    }
    spans
}

/// Applies one random mutation to `bytes`.
fn mutate_once(u: &mut Unstructured, bytes: &mut Vec<u8>) -> ArbResult<()> {
    let len = bytes.len();
    let at = |u: &mut Unstructured| u.int_in_range(0..=len);
    match u.int_in_range(0..=8)? {
        0 if len > 0 => {
            let i = u.choose_index(len)?;
            bytes[i] ^= 1 << u.int_in_range(0..=7)?;
        }
        1 if len > 0 => {
            let i = u.choose_index(len)?;
            bytes[i] = u.arbitrary()?;
        }
        2 => {
            let i = at(u)?;
            let n = u.int_in_range(1..=16)?;
            let new: Vec<u8> = (0..n).map(|_| u.arbitrary()).collect::<ArbResult<_>>()?;
            bytes.splice(i..i, new);
        }
        3 if len > 0 => {
            let i = u.choose_index(len)?;
            let n = u.int_in_range(1..=(len - i).min(64))?;
            bytes.drain(i..i + n);
        }
        4 if len > 0 => {
            let i = u.choose_index(len)?;
            let n = u.int_in_range(1..=(len - i).min(256))?;
            let copy = bytes[i..i + n].to_vec();
            let j = at(u)?;
            bytes.splice(j..j, copy);
        }
        5 => {
            let spans = number_spans(bytes);
            if !spans.is_empty() {
                let (s, e) = spans[u.choose_index(spans.len())?];
                let with = u.choose(HOSTILE_NUMBERS)?;
                bytes.splice(s..e, with.bytes());
            }
        }
        6 => {
            let i = at(u)?;
            bytes.splice(i..i, u.choose(HOSTILE_TOKENS)?.bytes());
        }
        7 => bytes.truncate(at(u)?),
        _ if len >= 4 => {
            // An interesting binary word (lengths, counts, dimensions of binary formats).
            let i = u.choose_index(len - 3)?;
            let word: u32 = *u.choose(&[0, 1, 0x7fff_ffff, 0x8000_0000, u32::MAX, 0xffff])?;
            bytes[i..i + 4].copy_from_slice(&word.to_le_bytes());
        }
        _ => {}
    }
    Ok(())
}

/// A mutated copy of one of `seeds`: one of its files changed (two, one time in eight), with
/// one mutation half the time and up to eight otherwise, so that many inputs stay close
/// enough to valid to reach the code past the first checks.
fn mutated(u: &mut Unstructured, seeds: &[Input]) -> ArbResult<Input> {
    let mut input = seeds[u.choose_index(seeds.len())?].clone();
    let files = if u.ratio(1, 8)? { 2 } else { 1 };
    for _ in 0..files {
        let f = u.choose_index(input.files.len())?;
        let n = if u.arbitrary()? {
            1
        } else {
            u.int_in_range(2..=8)?
        };
        for _ in 0..n {
            mutate_once(u, &mut input.files[f].1)?;
        }
    }
    Ok(input)
}

/// Where a target's failing inputs are saved.
fn crash_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("../fuzz-crashes")
        .join(target)
}

fn save_crash(target: &str, input: &Input) -> PathBuf {
    let dir = crash_dir(target).join(format!("{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in &input.files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    dir
}

/// Aborts the process when one execution runs over its time, saving its input first.
fn watchdog(target: &'static str, current: Arc<Mutex<Option<(Instant, Input)>>>) {
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_millis(250));
            let guard = current.lock().unwrap();
            if let Some((start, input)) = guard.as_ref()
                && start.elapsed() > Duration::from_secs(20)
            {
                let dir = save_crash(target, input);
                eprintln!(
                    "fuzz {target}: one input ran over 20 s (a hang or unbounded work), saved in {}",
                    dir.display()
                );
                std::process::abort();
            }
        }
    });
}

/// Runs `target` on mutated seeds for the time budget; the target gets the input and a folder
/// holding its files, and answers whether the input was accepted.
fn fuzz(name: &'static str, seeds: Vec<Input>, target: impl Fn(&Input, &Path) -> bool) {
    let budget: u64 = std::env::var("BEATLAB_FUZZ_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500);
    fuzz_for(name, seeds, budget, target);
}

/// [`fuzz`] for `budget` milliseconds.
fn fuzz_for(
    name: &'static str,
    seeds: Vec<Input>,
    budget: u64,
    target: impl Fn(&Input, &Path) -> bool,
) {
    let dir = tempfile::tempdir().unwrap();
    // Every seed must be a valid input, or the mutations would start nowhere near the code.
    for seed in &seeds {
        write_files(dir.path(), seed);
        let accepted = target(seed, dir.path());
        assert_eq!(accepted, seed.valid, "{name}: seed {:?}", seed.files[0].0);
    }
    let current = Arc::new(Mutex::new(None));
    watchdog(name, current.clone());
    let (mut runs, mut accepted) = (0u64, 0u64);
    let start = Instant::now();
    arbtest::arbtest(|u| {
        let input = mutated(u, &seeds)?;
        write_files(dir.path(), &input);
        *current.lock().unwrap() = Some((Instant::now(), input.clone()));
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target(&input, dir.path())));
        *current.lock().unwrap() = None;
        runs += 1;
        accepted += u64::from(matches!(result, Ok(true)));
        if let Err(panic) = result {
            let saved = save_crash(name, &input);
            eprintln!("fuzz {name}: the input saved in {} panics", saved.display());
            std::panic::resume_unwind(panic);
        }
        Ok(())
    })
    .budget_ms(budget)
    .size_min(64)
    .size_max(4096)
    .run();
    eprintln!(
        "fuzz {name}: {runs} executions ({accepted} accepted) in {:.1} s, no crash",
        start.elapsed().as_secs_f64()
    );
    assert!(runs > 0);
}

fn write_files(dir: &Path, input: &Input) {
    for (name, bytes) in &input.files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

/// A bound small enough that a lying header cannot make a run slow.
const LIMITS: ReadLimits = ReadLimits {
    max_samples: 1 << 20,
};

/// The spec seeds: every file of the spec test suite, in memory (the bad ones must be refused).
fn spec_seeds() -> Vec<Input> {
    let mut out = Vec::new();
    for (dir, valid) in [("tests/specs/good", true), ("tests/specs/bad", false)] {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        paths.sort();
        for path in paths {
            let text = std::fs::read(&path).unwrap();
            // Cases configured by comment lines (`# set:`, `# env:`, `# runtime`) may need them
            // to fail; they are seeds all the same, with no claim about their outcome.
            let configured = text.starts_with(b"# set:") || text.starts_with(b"# env:");
            let runtime = String::from_utf8_lossy(&text).contains("# runtime");
            out.push(Input {
                files: vec![
                    ("spec.toml".into(), text),
                    ("set".into(), b"experiment.seed=3".to_vec()),
                    (
                        "name".into(),
                        path.to_string_lossy().into_owned().into_bytes(),
                    ),
                ],
                valid: valid || configured || runtime,
            });
        }
    }
    out
}

/// Loads and plans a spec as `beatlab plan` would; whether it is accepted.
fn load_spec(input: &Input) -> bool {
    // `name` places `extends` next to the seed's file; the mutated name may point anywhere.
    let overrides = Overrides {
        sets: vec![input.text("set")],
        env: Vec::new(),
    };
    let Ok(loaded) = spec::load_str(&input.text("name"), &input.text("spec.toml"), &overrides)
    else {
        return false;
    };
    let _ = loaded.cell_count();
    let Ok(plan) = loaded.plan_within(200) else {
        return false;
    };
    let _ = loaded.check_runtime(&plan);
    true
}

#[test]
fn spec_loader() {
    let seeds: Vec<Input> = spec_seeds()
        .into_iter()
        .map(|mut s| {
            // The outcome of configured cases depends on their directives, not checked here.
            s.valid = load_spec(&s);
            s
        })
        .collect();
    assert!(
        seeds.iter().filter(|s| s.valid).count() >= 4,
        "the good specs load"
    );
    fuzz("spec_loader", seeds, |input, _| load_spec(input));
}

#[test]
fn wfdb_header() {
    let mut seeds = seeds_in("wfdb");
    seeds.extend(seeds_in("mat"));
    for s in &mut seeds {
        s.files.retain(|(n, _)| n.ends_with(".hea"));
    }
    fuzz("wfdb_header", seeds, |input, dir| {
        wfdb::parse_header(&input.text("rec.hea"), &dir.join("rec.hea"))
            .map(|h| (h.leads(), h.signal_files()))
            .is_ok()
    });
}

/// Reads a record every way the readers offer; whether all of them accepted it.
fn read_record_all_ways(dir: &Path) -> bool {
    let rec = dir.join("rec");
    let digital = wfdb::read_record_digital_within(&rec, LIMITS)
        .map(|d| (d.physical(), d.physical_expanded(), d.to_record()))
        .is_ok();
    let physical = wfdb::read_record_with_header_within(&rec, LIMITS).is_ok();
    digital && physical
}

#[test]
fn wfdb_record() {
    fuzz("wfdb_record", seeds_in("wfdb"), |_, dir| {
        read_record_all_ways(dir)
    });
}

#[test]
fn mat_record() {
    fuzz("mat_record", seeds_in("mat"), |input, dir| {
        let header = mat::parse_header(input.get("rec.mat"), "rec", &dir.join("rec.mat")).is_ok();
        read_record_all_ways(dir) && header
    });
}

#[test]
fn annotation_reader() {
    let seeds: Vec<Input> = seeds_in("annotation")
        .into_iter()
        .flat_map(|s| s.files)
        .map(|(_, bytes)| Input {
            files: vec![("rec.atr".into(), bytes)],
            valid: true,
        })
        .collect();
    fuzz("annotation_reader", seeds, |input, dir| {
        annotation::parse_annotations(input.get("rec.atr"), &dir.join("rec.atr"))
            .map(|a| {
                let waves = annotation::waves_from_annotations(&a);
                let beats = annotation::beats(&a, 500.0);
                (waves, beats)
            })
            .is_ok()
    });
}

#[test]
fn ludb_csv() {
    fuzz("ludb_csv", seeds_in("ludb"), |_, dir| {
        ludb::read_csv(dir).is_ok()
    });
}

#[test]
fn ptbxl_csv() {
    let mut seeds = seeds_in("ptbxl");
    for s in &mut seeds {
        let dict = b"{'NST_': 100.0, 'LVH': 35.0, 'PVC': 100.0, 'SR': 0.0}".to_vec();
        s.files.push(("scp_codes.txt".into(), dict));
    }
    fuzz("ptbxl_csv", seeds, |input, dir| {
        let database = ptbxl::read_database(dir).is_ok();
        let statements = ptbxl::read_statements(dir).is_ok();
        let dict = ptbxl::parse_python_dict(&input.text("scp_codes.txt")).is_ok();
        database && statements && dict
    });
}

/// A checkpoint as the runner writes one: tensors of three dtypes and loop state.
fn checkpoint_seed() -> Input {
    use candle_core::{DType, Device, Tensor};
    let dev = Device::Cpu;
    let a = Tensor::arange(0f32, 12., &dev)
        .unwrap()
        .reshape((3, 4))
        .unwrap();
    let b = Tensor::new(&[1i64, -2, 3], &dev).unwrap();
    let c = a.to_dtype(DType::BF16).unwrap();
    let meta = serde_json::json!({"epoch": 1, "step": 7, "rng": [1, 2, 3]}).to_string();
    let info = std::collections::HashMap::from([("beatlab".to_string(), meta)]);
    let bytes = safetensors::serialize(
        [("model.w", &a), ("opt.step", &b), ("model.h", &c)],
        Some(info),
    )
    .unwrap();
    Input {
        files: vec![("ckpt.safetensors".into(), bytes)],
        valid: true,
    }
}

#[test]
fn checkpoint_loader() {
    let seed = checkpoint_seed();
    let path = Path::new("ckpt.safetensors");
    let cpu = candle_core::Device::Cpu;
    let (tensors, meta) =
        beatlab::runner::checkpoint::decode(seed.get("ckpt.safetensors"), path, &cpu).unwrap();
    assert_eq!((tensors.len(), &meta["step"]), (3, &serde_json::json!(7)));
    fuzz("checkpoint_loader", vec![seed], |input, _| {
        beatlab::runner::checkpoint::decode(input.get("ckpt.safetensors"), path, &cpu).is_ok()
    });
}

#[test]
fn instruct_items() {
    use beatlab_heartcare::{instruct, metrics};
    fuzz("instruct_items", seeds_in("instruct"), |_, dir| {
        // As the multimodal stages read a user's item file, then score answers against it.
        let Ok(items) = instruct::read_jsonl(dir.join("items.jsonl")) else {
            return false;
        };
        for item in &items {
            let _ = (item.task(), item.dimension());
            let options = metrics::parse_options(&item.question);
            let _ = metrics::parse_choice(&item.answer, &options);
            let _ = metrics::format_options(&options);
        }
        true
    });
}

/// Text the tokenizer targets encode: words of the seeds, a special token, bytes beyond ASCII.
const TOKENIZER_TEXT: &str = "<|user|> Sinus rhythm, QRS 96 ms. ÄÖü\u{1F493}<|end|>";

/// A byte-level BPE `tokenizer.json` as beatlab trains one for the tiny presets.
fn trained_tokenizer_seed() -> Input {
    let corpus = [
        "Sinus rhythm. Normal ECG.",
        "Atrial fibrillation with rapid ventricular response.",
        "QRS duration 96 ms, QT interval 400 ms.",
        "Sinusrhythmus. Linkstyp. Normales EKG.",
    ];
    let tok = beatlab_lm::LmTokenizer::train(corpus.iter().cycle().take(40), 300).unwrap();
    Input {
        files: vec![("tokenizer.json".into(), tok.to_json().unwrap().into_bytes())],
        valid: true,
    }
}

#[test]
fn tokenizer_json() {
    let mut seeds = seeds_in("tokenizer");
    seeds.push(trained_tokenizer_seed());
    fuzz("tokenizer_json", seeds, |_, dir| {
        // As a checkpoint's tokenizer is loaded, then used on a prompt and its ids.
        let Ok(tok) = beatlab_lm::LmTokenizer::from_file(&dir.join("tokenizer.json")) else {
            return false;
        };
        let Ok(ids) = tok.encode(TOKENIZER_TEXT) else {
            return false;
        };
        let _ = (tok.vocab_size(), tok.pad_id());
        tok.decode(&ids, true).is_ok() && tok.decode(&[0, 1, u32::MAX], false).is_ok()
    });
}

/// A Hugging Face folder of a micro backbone: `config.json` and its weights, in one file
/// (Qwen2) or in two shards with `model.safetensors.index.json` (Phi-3).
fn model_seed(sharded: bool) -> Input {
    use beatlab_lm::presets::{tiny_phi3, tiny_qwen2};
    use beatlab_lm::{Backbone, BackboneConfig, BuildOptions};
    let config = if sharded {
        let mut c = tiny_phi3(16);
        (c.hidden_size, c.intermediate_size) = (8, 16);
        (c.num_hidden_layers, c.num_attention_heads) = (1, 2);
        c.num_key_value_heads = Some(2);
        BackboneConfig::Phi3(c)
    } else {
        let mut c = tiny_qwen2(16);
        (c.hidden_size, c.intermediate_size) = (8, 16);
        (c.num_hidden_layers, c.num_attention_heads) = (1, 2);
        c.num_key_value_heads = Some(1);
        BackboneConfig::Qwen2(c)
    };
    let store = beatlab_nn::ParamStore::new(3);
    let cpu = candle_core::Device::Cpu;
    let options = BuildOptions::default();
    Backbone::random(&config, &store, candle_core::DType::F32, &cpu, &options).unwrap();
    let dir = tempfile::tempdir().unwrap();
    beatlab_lm::checkpoint::save_pretrained(dir.path(), &config, &store.tensors(), None).unwrap();
    let mut files = vec![(
        "config.json".to_string(),
        std::fs::read(dir.path().join("config.json")).unwrap(),
    )];
    if !sharded {
        let weights = std::fs::read(dir.path().join("model.safetensors")).unwrap();
        files.push(("model.safetensors".into(), weights));
        return Input { files, valid: true };
    }
    let tensors = store.tensors();
    let (first, second): (Vec<_>, Vec<_>) =
        tensors.iter().enumerate().partition(|(i, _)| i % 2 == 0);
    let mut weight_map = serde_json::Map::new();
    for (shard, part) in [(1, first), (2, second)] {
        let name = format!("model-0000{shard}-of-00002.safetensors");
        let part: Vec<(&String, &candle_core::Tensor)> = part.into_iter().map(|(_, t)| t).collect();
        for (tensor, _) in &part {
            weight_map.insert((*tensor).clone(), name.clone().into());
        }
        files.push((name, safetensors::serialize(part, None).unwrap()));
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    files.push((
        beatlab_lm::hub::INDEX_FILE.into(),
        serde_json::to_vec_pretty(&index).unwrap(),
    ));
    Input { files, valid: true }
}

#[test]
fn lm_weights() {
    use beatlab_lm::{BuildOptions, ModelSource, load_backbone};
    let cpu = candle_core::Device::Cpu;
    fuzz(
        "lm_weights",
        vec![model_seed(false), model_seed(true)],
        |input, dir| {
            // The folder holds one seed's files only: another seed's stale files would be read.
            let names: Vec<&str> = input.files.iter().map(|(n, _)| n.as_str()).collect();
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                if !names.contains(&name.as_str()) {
                    std::fs::remove_file(&path).unwrap();
                }
            }
            // As a spec's `backbone = "path/to/folder"` is loaded, then run on a few ids.
            let source = ModelSource::Dir(dir.to_path_buf());
            let Ok(loaded) = load_backbone(
                &source,
                candle_core::DType::F32,
                &cpu,
                &BuildOptions::default(),
            ) else {
                return false;
            };
            let ids = candle_core::Tensor::new(&[[1u32, 2, 3]], &cpu).unwrap();
            loaded.backbone.forward(&ids, None).is_ok()
        },
    );
}

/// The harness finds what it looks for: a target that panics on a hostile number in a header
/// is caught (within 60 s; it takes a few hundred executions), and its input saved.
#[test]
fn the_harness_finds_a_planted_panic() {
    let seeds = seeds_in("wfdb");
    let planted = |text: &str| text.split([' ', '\n']).any(|t| t == "1e300");
    let found = std::panic::catch_unwind(|| {
        fuzz_for("planted", seeds, 60_000, |input, _| {
            assert!(!planted(&input.text("rec.hea")), "planted panic");
            true
        })
    });
    assert!(found.is_err(), "the planted panic was not found");
    let saved = crash_dir("planted").join(std::process::id().to_string());
    // The saved header is the mutated bytes, which need not be UTF-8.
    let header = std::fs::read(saved.join("rec.hea")).unwrap();
    assert!(planted(&String::from_utf8_lossy(&header)));
    std::fs::remove_dir_all(saved).unwrap();
}
