//! Instruction builder and item-file tests: determinism, patient-level splits, grounded
//! answers, the JSONL round trip and located errors.

use std::collections::{BTreeMap, BTreeSet};

use beatlab_ecg::{Record, RecordMeta, STANDARD_LEADS, SourceKind, Superclass, Wave, WaveKind};
use beatlab_heartcare::instruct::{
    BuildConfig, BuildError, Dimension, InputForm, ItemError, Modality, PairForm, Split, Task,
    assign_splits, build_captions, build_items, measure_from_waves, parse_items, read_jsonl,
    write_jsonl,
};
use beatlab_heartcare::metrics::{parse_choice, parse_options};

const DIAGNOSES: [&str; 6] = [
    "left ventricular hypertrophy",
    "inferior myocardial infarction",
    "complete right bundle branch block",
    "non-specific ST changes",
    "first degree AV block",
    "normal ECG",
];
const RHYTHMS: [&str; 3] = ["sinus rhythm", "atrial fibrillation", "sinus bradycardia"];

fn record(id: &str, patient: &str, seconds: f64, meta: RecordMeta) -> Record {
    let fs = 100.0;
    Record {
        id: id.into(),
        source: SourceKind::Synthetic,
        fs,
        leads: STANDARD_LEADS.iter().map(|s| s.to_string()).collect(),
        signals: vec![vec![0.0; (seconds * fs) as usize]; 12],
        meta: RecordMeta {
            patient_id: Some(patient.into()),
            ..meta
        },
        waves: Vec::new(),
    }
}

/// `n` labelled records over `n / per_patient` patients, varied by index.
fn corpus(n: usize, per_patient: usize) -> Vec<Record> {
    (0..n)
        .map(|i| {
            record(
                &format!("sim/{i:03}"),
                &format!("p{}", i / per_patient),
                10.0,
                RecordMeta {
                    age: Some(30.0 + (i * 7 % 55) as f32),
                    sex: Some(if i % 2 == 0 { "M" } else { "F" }.into()),
                    diagnoses: vec![
                        DIAGNOSES[i % DIAGNOSES.len()].into(),
                        DIAGNOSES[(i + 2) % DIAGNOSES.len()].into(),
                    ],
                    superclasses: vec![Superclass::NORM],
                    rhythm: Some(RHYTHMS[i % RHYTHMS.len()].into()),
                    heart_rate_bpm: Some(50.0 + (i * 13 % 70) as f32),
                    pr_ms: Some(110.0 + (i * 17 % 120) as f32),
                    qrs_ms: Some(80.0 + (i * 11 % 70) as f32),
                    qt_ms: Some(340.0 + (i * 19 % 120) as f32),
                    axis_deg: Some(-60.0 + (i * 29 % 200) as f32),
                    ..RecordMeta::default()
                },
            )
        })
        .collect()
}

#[test]
fn builder_is_deterministic_per_seed() {
    let records = corpus(24, 3);
    let config = BuildConfig::default();
    let first = build_items(&records, &config).unwrap();
    let second = build_items(&records, &config).unwrap();
    assert_eq!(first, second);
    assert!(first.len() > 24 * 4, "{} items", first.len());
    let other = build_items(
        &records,
        &BuildConfig {
            seed: 7,
            ..config.clone()
        },
    )
    .unwrap();
    assert_ne!(
        first, other,
        "a different seed changes the phrasing or choices"
    );
    // Every task and dimension is represented.
    let tasks: BTreeSet<Task> = first.iter().filter_map(|i| i.task()).collect();
    assert_eq!(tasks.len(), 5, "{tasks:?}");
    let dims: BTreeSet<Dimension> = first.iter().filter_map(|i| i.dimension()).collect();
    assert_eq!(dims.len(), 4, "{dims:?}");
}

#[test]
fn assigned_splits_override_hashing_for_the_whole_patient() {
    let records = corpus(30, 3);
    // Patient p0 holds sim/000..002: assigning one of its records puts all three in test, and
    // p1 (sim/003..005) goes to train although hashing with test_fraction 1.0 would say test.
    let mut assigned = BTreeMap::new();
    assigned.insert("sim/001".to_string(), Split::Test);
    assigned.insert("sim/004".to_string(), Split::Train);
    let config = BuildConfig {
        split: beatlab_heartcare::instruct::SplitConfig {
            validation_fraction: 0.0,
            test_fraction: 1.0,
            assigned,
            ..Default::default()
        },
        ..BuildConfig::default()
    };
    let splits = beatlab_heartcare::instruct::assign_splits(&records, &config.split);
    assert_eq!(splits["p0"], Split::Test);
    assert_eq!(splits["p1"], Split::Train);
    assert_eq!(
        splits["p2"],
        Split::Test,
        "unassigned patients keep the hashed split"
    );
    for item in build_items(&records, &config).unwrap() {
        if item.patient_ids.iter().any(|p| p == "p1") {
            assert_eq!(item.split, Some(Split::Train), "{item:?}");
        }
    }
}

#[test]
fn splits_are_patient_level() {
    let records = corpus(90, 3);
    let config = BuildConfig {
        split: beatlab_heartcare::instruct::SplitConfig {
            validation_fraction: 0.2,
            test_fraction: 0.2,
            ..Default::default()
        },
        ..BuildConfig::default()
    };
    let items = build_items(&records, &config).unwrap();
    let mut patient_splits: BTreeMap<String, BTreeSet<Split>> = BTreeMap::new();
    for item in &items {
        for patient in &item.patient_ids {
            patient_splits
                .entry(patient.clone())
                .or_default()
                .insert(item.split.unwrap());
        }
    }
    assert_eq!(patient_splits.len(), 30);
    for (patient, splits) in &patient_splits {
        assert_eq!(splits.len(), 1, "patient {patient} in {splits:?}");
    }
    let used: BTreeSet<Split> = patient_splits.values().flatten().copied().collect();
    assert_eq!(used.len(), 3, "30 patients at 60/20/20 reach all splits");
    // Comparison partners come from the same split.
    let by_patient = assign_splits(&records, &config.split);
    for item in items
        .iter()
        .filter(|i| i.task() == Some(Task::ComparisonQa))
    {
        let [a, b] = [&item.patient_ids[0], &item.patient_ids[1]];
        assert_eq!(by_patient[a], by_patient[b], "{:?}", item.id);
    }
}

#[test]
fn ptbxl_folds_decide_the_split() {
    fn check(fold: u8, expected: Split) {
        let mut r = record("ptbxl/1", "p1", 10.0, RecordMeta::default());
        r.meta.fold = Some(fold);
        let splits = assign_splits(&[r], &Default::default());
        assert_eq!(splits["p1"], expected, "fold {fold}");
    }
    check(1, Split::Train);
    check(8, Split::Train);
    check(9, Split::Validation);
    check(10, Split::Test);
}

#[test]
fn closed_questions_have_one_correct_option_and_foreign_distractors() {
    let records = corpus(30, 1);
    let config = BuildConfig {
        closed_qa_per_record: 8,
        open_qa_per_record: 0,
        comparison_per_record: 0,
        reports_per_record: 0,
        predictions_per_record: 0,
        dimensions: vec![Dimension::Diagnosis],
        ..BuildConfig::default()
    };
    let items = build_items(&records, &config).unwrap();
    assert_eq!(items.len(), 30, "one diagnosis question per record");
    for item in &items {
        assert_eq!(item.item_type, "DiagnosisClosedQA");
        let record = records.iter().find(|r| r.id == item.filename[0]).unwrap();
        let options = parse_options(&item.question);
        assert_eq!(options.len(), 4);
        let texts: Vec<String> = options.iter().map(|o| o.text.to_lowercase()).collect();
        assert_eq!(
            texts,
            item.options
                .iter()
                .map(|o| o.to_lowercase())
                .collect::<Vec<_>>()
        );
        let letter = item.correct_option.unwrap();
        let correct = &texts[(letter as u8 - b'A') as usize];
        let own: Vec<String> = record
            .meta
            .diagnoses
            .iter()
            .map(|d| d.to_lowercase())
            .collect();
        assert!(
            own.contains(correct),
            "{correct} is a label of {}",
            record.id
        );
        for (i, text) in texts.iter().enumerate() {
            if i != (letter as u8 - b'A') as usize {
                assert!(
                    !own.contains(text),
                    "distractor {text} is a label of {}",
                    record.id
                );
            }
        }
        assert!(
            item.answer.starts_with(&format!("{letter}: ")),
            "{}",
            item.answer
        );
        assert_eq!(
            parse_choice(&item.answer, &item.choice_options()),
            Some(letter)
        );
        assert_eq!(item.correct_letter(), Some(letter));
    }
}

#[test]
fn answers_are_grounded_in_measured_intervals() {
    let r = record(
        "sim/avb",
        "p1",
        10.0,
        RecordMeta {
            pr_ms: Some(212.0),
            qrs_ms: Some(132.0),
            ..RecordMeta::default()
        },
    );
    let config = BuildConfig {
        closed_qa_per_record: 10,
        open_qa_per_record: 10,
        dimensions: vec![Dimension::Waveform],
        ..BuildConfig::default()
    };
    let items = build_items(&[r], &config).unwrap();
    let answers: Vec<&str> = items.iter().map(|i| i.answer.as_str()).collect();
    assert!(
        answers.contains(&"The PR interval is 212 ms, which indicates first-degree AV block."),
        "{answers:#?}"
    );
    assert!(
        answers
            .iter()
            .any(|a| a.starts_with("The QRS duration is 132 ms, which is wide"))
    );
    let closed_pr = items
        .iter()
        .find(|i| i.task() == Some(Task::ClosedQa) && i.question.contains("PR"))
        .unwrap();
    assert_eq!(
        closed_pr.options[closed_pr.correct_letter().unwrap() as usize - 'A' as usize],
        "Prolonged (> 200 ms)"
    );
    assert!(closed_pr.answer.contains("212 ms"));
    // The report is generated from the intervals when the record has no report text.
    let report = items
        .iter()
        .find(|i| i.task() == Some(Task::ReportGeneration))
        .unwrap();
    assert!(
        report.answer.contains("PR interval 212 ms"),
        "{}",
        report.answer
    );
    assert!(
        report.answer.contains("first-degree AV block"),
        "{}",
        report.answer
    );
}

#[test]
fn source_reports_are_kept_verbatim() {
    let text = "sinusrhythmus linkstyp qrs(t) abnorm    inferiorer infarkt alter unbest.";
    let r = record(
        "ptbxl/00010",
        "p1",
        10.0,
        RecordMeta {
            report: Some(text.into()),
            ..RecordMeta::default()
        },
    );
    let items = build_items(&[r], &BuildConfig::default()).unwrap();
    let report = items
        .iter()
        .find(|i| i.item_type == "ReportGeneration")
        .unwrap();
    assert_eq!(report.answer, text);
}

#[test]
fn signal_prediction_items_need_enough_signal() {
    let long = record("sim/long", "p1", 10.0, RecordMeta::default());
    let short = record("sim/short", "p2", 5.0, RecordMeta::default());
    let items = build_items(&[long, short], &BuildConfig::default()).unwrap();
    let predictions: Vec<_> = items
        .iter()
        .filter(|i| i.task() == Some(Task::SignalPrediction))
        .collect();
    assert_eq!(predictions.len(), 1, "4 s + 2 s do not fit in 5 s");
    let p = predictions[0];
    assert_eq!(p.filename, ["sim/long"]);
    assert_eq!(p.label, [Modality::Signal]);
    assert_eq!(p.answer, "<prediction>");
    assert!(p.question.contains("next 2 seconds"), "{}", p.question);
    assert_eq!(p.prediction.unwrap().input_s, 4.0);
}

#[test]
fn comparison_items_pair_two_ecgs_with_grounded_answers() {
    let narrow = record(
        "sim/a",
        "p1",
        10.0,
        RecordMeta {
            qrs_ms: Some(90.0),
            ..RecordMeta::default()
        },
    );
    let wide = record(
        "sim/b",
        "p2",
        10.0,
        RecordMeta {
            qrs_ms: Some(140.0),
            ..RecordMeta::default()
        },
    );
    let config = BuildConfig {
        closed_qa_per_record: 0,
        open_qa_per_record: 0,
        reports_per_record: 0,
        predictions_per_record: 0,
        comparison_per_record: 1,
        dimensions: vec![Dimension::Waveform],
        pair_inputs: vec![PairForm::SignalImage],
        split: beatlab_heartcare::instruct::SplitConfig {
            validation_fraction: 0.0,
            test_fraction: 0.0,
            ..Default::default()
        },
        ..BuildConfig::default()
    };
    let items = build_items(&[narrow, wide], &config).unwrap();
    assert_eq!(items.len(), 2);
    for item in &items {
        assert_eq!(item.item_type, "WaveformComparisonQA");
        assert_eq!(item.filename.len(), 2);
        let labels: BTreeSet<&str> = item
            .label
            .iter()
            .map(|m| if *m == Modality::Signal { "s" } else { "i" })
            .collect();
        assert_eq!(labels.len(), 2, "one signal and one image");
        assert_eq!(item.options, ["ECG 1", "ECG 2"]);
        let wider_is_second = item.filename[1] == "sim/b";
        let expected = if wider_is_second { 'B' } else { 'A' };
        assert_eq!(item.correct_option, Some(expected), "{}", item.question);
        assert!(item.answer.contains("90 ms") && item.answer.contains("140 ms"));
    }
}

#[test]
fn consecutive_pairs_come_from_the_same_patient() {
    let records = corpus(12, 4);
    let config = BuildConfig {
        consecutive_fraction: 1.0,
        ..BuildConfig::default()
    };
    let items = build_items(&records, &config).unwrap();
    let comparisons: Vec<_> = items
        .iter()
        .filter(|i| i.task() == Some(Task::ComparisonQa))
        .collect();
    assert!(!comparisons.is_empty());
    for item in comparisons {
        assert_eq!(item.patient_ids[0], item.patient_ids[1]);
        assert_ne!(item.filename[0], item.filename[1]);
    }
}

#[test]
fn input_forms_set_labels() {
    let records = corpus(6, 1);
    let config = BuildConfig {
        inputs: vec![InputForm::SignalAndImage],
        ..BuildConfig::default()
    };
    let items = build_items(&records, &config).unwrap();
    for item in items.iter().filter(|i| {
        i.task() != Some(Task::ComparisonQa) && i.task() != Some(Task::SignalPrediction)
    }) {
        assert_eq!(item.label, [Modality::Signal, Modality::Image]);
        assert_eq!(item.filename[0], item.filename[1]);
    }
}

#[test]
fn captions_describe_every_labelled_record() {
    let records = corpus(5, 1);
    let captions = build_captions(&records, &BuildConfig::default()).unwrap();
    assert_eq!(captions.len(), 5);
    for (c, r) in captions.iter().zip(&records) {
        assert_eq!(c.task(), Some(Task::Caption));
        assert!(
            c.answer
                .contains(&format!("{:.0} bpm", r.meta.heart_rate_bpm.unwrap())),
            "{}",
            c.answer
        );
    }
}

#[test]
fn intervals_are_measured_from_wave_annotations() {
    // fs 500: P 100-150, QRS 180-230 (peak 200), T 300-400; next beat 400 samples later.
    // PR = (180-100)/500 s = 160 ms; QRS = 50/500 = 100 ms; QT = (400-180)/500 = 440 ms;
    // RR = 400/500 = 0.8 s -> 75 bpm.
    let mut r = record("ludb/1", "p", 10.0, RecordMeta::default());
    r.fs = 500.0;
    let wave = |kind, onset, peak, offset| Wave {
        kind,
        onset,
        peak,
        offset,
    };
    let mut waves = Vec::new();
    for beat in 0..3 {
        let o = beat * 400;
        waves.push(wave(WaveKind::P, o + 100, o + 125, o + 150));
        waves.push(wave(WaveKind::QRS, o + 180, o + 200, o + 230));
        waves.push(wave(WaveKind::T, o + 300, o + 350, o + 400));
    }
    r.waves = vec![("II".into(), waves)];
    let m = measure_from_waves(&r);
    assert_eq!(m.pr_ms, Some(160.0));
    assert_eq!(m.qrs_ms, Some(100.0));
    assert_eq!(m.qt_ms, Some(440.0));
    assert_eq!(m.heart_rate_bpm, Some(75.0));
}

#[test]
fn jsonl_round_trip() {
    let items = build_items(&corpus(8, 2), &BuildConfig::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("items.jsonl");
    write_jsonl(&path, &items).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), items.len());
    assert_eq!(read_jsonl(&path).unwrap(), items);
}

#[test]
fn heartcare_lines_with_only_the_base_fields_load() {
    let path = std::path::Path::new("mine.jsonl");
    let text = concat!(
        r#"{"type": "WaveformOpenQA", "question": "What is the finding?", "answer": "Normal ECG", "filename": ["ptbxl_img/14828"], "label": ["signal"]}"#,
        "\n\n",
        r#"{"type": "DiagnosisClosedQA", "question": "Which? A: Yes; B: No", "answer": "B: No", "filename": "x", "label": "image", "extra": {"k": 1}}"#,
        "\n"
    );
    let items = parse_items(text, path).unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0].task(), Some(Task::OpenQa));
    assert_eq!(items[0].dimension(), Some(Dimension::Waveform));
    assert_eq!(items[0].split, None);
    assert_eq!(items[1].filename, ["x"]);
    assert_eq!(items[1].label, [Modality::Image]);
    assert_eq!(items[1].correct_letter(), Some('B'));
    assert_eq!(items[1].choice_options().len(), 2);
}

#[test]
fn heartcare_json_arrays_load_with_their_extra_fields() {
    let text = r#"[
    {
        "type": "DiagnosisClosedQA",
        "question": "Based on the ECG signal of a 68-year-old female patient, Which diagnosis is most likely? A: Ventricular tachycardia; B: No abnormality detected; C: Non-diagnostic T abnormalities; D: Anterior myocardial infarction",
        "answer": "C: Non-diagnostic T abnormalities",
        "filename": ["ptbxl_img/04332"],
        "diagnosis_type": {"non-diagnostic T abnormalities": 100.0},
        "split": "train",
        "label": ["signal"]
    },
    {
        "type": "ReportGeneration",
        "question": "Generate a report.",
        "answer": "Normal ECG.",
        "filename": ["ptbxl_img/09077"],
        "label": ["signal"]
    }
]"#;
    let items = parse_items(text, std::path::Path::new("DiagnosisClosedQA.json")).unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0].task(), Some(Task::ClosedQa));
    assert_eq!(items[0].split, Some(Split::Train));
    assert_eq!(
        items[0].choice_options()[2].text,
        "Non-diagnostic T abnormalities"
    );
    assert_eq!(items[0].correct_letter(), Some('C'));
    assert_eq!(items[1].task(), Some(Task::ReportGeneration));
    // An array element's error names the line where that element starts: "[" is line 1, the
    // first element spans lines 2-10, the second opens on line 11.
    let broken = text.replace(r#""answer": "Normal ECG.","#, "");
    match parse_items(&broken, std::path::Path::new("a.json")) {
        Err(ItemError::MissingField { line, field, .. }) => {
            assert_eq!((line, field), (11, "answer"));
        }
        other => panic!("expected MissingField, got {other:?}"),
    }
}

#[test]
fn bad_lines_name_the_file_line_and_field() {
    fn check(text: &str, expected: &str) {
        let err = parse_items(text, std::path::Path::new("bad.jsonl")).unwrap_err();
        assert_eq!(err.to_string(), expected);
    }
    let good =
        r#"{"type": "T", "question": "q", "answer": "a", "filename": ["f"], "label": ["signal"]}"#;
    check(
        &format!(
            "{good}\n{good}\n{{\"type\": \"T\", \"question\": \"q\", \"filename\": [\"f\"], \"label\": [\"signal\"]}}\n"
        ),
        "bad.jsonl:3: missing field `answer`",
    );
    check(
        &format!(
            "{good}\n{{\"type\": \"T\", \"question\": \"q\", \"answer\": \"a\", \"filename\": [\"f\"], \"label\": [\"ecg\"]}}"
        ),
        "bad.jsonl:2: field `label`: expected \"signal\" or \"img\", found \"ecg\"",
    );
    check(
        r#"{"type": "T", "question": 3, "answer": "a", "filename": ["f"], "label": ["signal"]}"#,
        "bad.jsonl:1: field `question`: expected a string, found a number",
    );
    check(
        r#"{"type": "T", "question": "q", "answer": "a", "filename": ["f", "g"], "label": ["signal"]}"#,
        "bad.jsonl:1: `filename` has 2 entries but `label` has 1",
    );
    check(
        r#"{"type": "T", "question": "q", "answer": "a", "filename": ["f"], "label": ["signal"], "split": "holdout"}"#,
        "bad.jsonl:1: field `split`: expected one of \"train\", \"validation\", \"test\", found \"holdout\"",
    );
    check(
        &format!("{good}\n[1, 2]"),
        "bad.jsonl:2: expected an item object, found an array",
    );
    let err = parse_items(
        &format!("{good}\n{{\"type\": "),
        std::path::Path::new("bad.jsonl"),
    )
    .unwrap_err();
    assert!(matches!(err, ItemError::Json { line: 2, .. }), "{err}");
    let missing = read_jsonl("/nonexistent/items.jsonl").unwrap_err();
    assert!(
        missing
            .to_string()
            .starts_with("/nonexistent/items.jsonl: "),
        "{missing}"
    );
}

#[test]
fn bad_configs_and_duplicate_records_are_errors() {
    let records = corpus(3, 1);
    let err = build_items(
        &records,
        &BuildConfig {
            num_options: 1,
            ..BuildConfig::default()
        },
    )
    .unwrap_err();
    assert!(matches!(
        err,
        BuildError::BadConfig {
            field: "num_options",
            ..
        }
    ));
    let mut twice = records.clone();
    twice.push(records[0].clone());
    assert!(matches!(
        build_items(&twice, &BuildConfig::default()),
        Err(BuildError::DuplicateRecord(id)) if id == "sim/000"
    ));
}

/// One spelling per task: names parse back, serialise as themselves, and the Heartcare type
/// string of a built item reads back as its task.
#[test]
fn task_names_round_trip_through_parsing_and_serde() {
    use beatlab_heartcare::instruct::{ItemType, Task};
    for task in Task::ALL {
        assert_eq!(task.name().parse::<Task>().unwrap(), task);
        assert_eq!(
            serde_json::to_string(&task).unwrap(),
            format!("\"{}\"", task.name())
        );
        assert_eq!(ItemType::of(None, task).as_str(), task.type_suffix());
        assert_eq!(
            ItemType::parse(task.type_suffix()).as_str(),
            task.type_suffix()
        );
    }
    assert!(
        "vqa"
            .parse::<Task>()
            .unwrap_err()
            .to_string()
            .contains("closed_qa")
    );
}
