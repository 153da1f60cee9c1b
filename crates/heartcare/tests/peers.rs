//! The peer systems' items on simulated records: turning them on leaves every Heartcare item
//! byte-identical; grounded answers cite exactly their reference (checked by the independent
//! grounding scorer) and, from the truth, the simulator's intervals; localization answers are
//! the simulator's true segments; multi-ECG questions name the ECG whose measurement, recomputed
//! from the records, is the highest by the margin.

use std::collections::HashMap;

use beatlab_ecg::flexible::{localization_iou, parse_localization};
use beatlab_ecg::grounding::{Quantity, Tolerance, parse_citations, score_grounding};
use beatlab_ecg::synthetic::{SimConfig, generate};
use beatlab_ecg::{Record, STANDARD_LEADS};
use beatlab_heartcare::instruct::{BuildConfig, Item, Modality, RecordFacts, Task, build_items};
use beatlab_heartcare::peers::{GroundingSource, grounding_reference, true_segments};

fn records() -> Vec<Record> {
    let cfg = SimConfig {
        duration_s: 12.0,
        ..SimConfig::default()
    };
    generate(&cfg, 24, 5)
}

fn peers_config(grounding: GroundingSource) -> BuildConfig {
    BuildConfig {
        grounded_per_record: 1,
        grounding,
        localization_per_record: 1,
        multi_ecg_per_record: 2,
        multi_ecg_max: 4,
        ..BuildConfig::default()
    }
}

fn of_task(items: &[Item], task: Task) -> Vec<&Item> {
    items.iter().filter(|i| i.task() == Some(task)).collect()
}

#[test]
fn peer_items_leave_the_heartcare_items_byte_identical() {
    let records = records();
    let plain = build_items(&records, &BuildConfig::default()).unwrap();
    let with = build_items(&records, &peers_config(GroundingSource::Delineator)).unwrap();
    let peer = [Task::Grounded, Task::Localization, Task::MultiEcg];
    let kept: Vec<&Item> = with
        .iter()
        .filter(|i| !i.task().is_some_and(|t| peer.contains(&t)))
        .collect();
    assert_eq!(kept.len(), plain.len());
    for (a, b) in kept.iter().zip(&plain) {
        assert_eq!(
            serde_json::to_string(a).unwrap(),
            serde_json::to_string(b).unwrap()
        );
    }
    assert!(
        plain
            .iter()
            .all(|i| !i.task().is_some_and(|t| peer.contains(&t)))
    );
    for task in peer {
        assert!(!of_task(&with, task).is_empty(), "no {task} items");
    }
    // Ids stay unique.
    let mut ids: Vec<&str> = with.iter().filter_map(|i| i.id.as_deref()).collect();
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n);
}

#[test]
fn grounded_answers_cite_their_reference_exactly() {
    let records = records();
    let by_id: HashMap<&str, &Record> = records.iter().map(|r| (r.id.as_str(), r)).collect();
    for source in [GroundingSource::Delineator, GroundingSource::Truth] {
        let items = build_items(&records, &peers_config(source)).unwrap();
        let grounded = of_task(&items, Task::Grounded);
        assert!(
            grounded.len() >= records.len() / 2,
            "{source:?}: {}",
            grounded.len()
        );
        for item in grounded {
            assert_eq!(item.label, [Modality::Signal]);
            let record = by_id[item.filename[0].as_str()];
            let reference = grounding_reference(record, source).unwrap();
            let evidence = item.answer.split("Evidence:").nth(1).expect("evidence");
            let cited = parse_citations(evidence);
            assert!(!cited.is_empty(), "{}", item.answer);
            // Every lead named in the question is cited, and only those.
            for c in &cited {
                assert!(
                    item.question.contains(&c.lead),
                    "{} / {}",
                    item.question,
                    c.lead
                );
            }
            let g = score_grounding(
                &item.answer,
                &reference,
                Tolerance {
                    ms: 0.501,
                    mv: 0.0051,
                },
            );
            assert_eq!(g.lead_accuracy, Some(1.0), "{}", item.answer);
            assert!(g.lead_coverage >= 1.0 / 12.0 && g.lead_coverage <= 3.0 / 12.0);
            if source == GroundingSource::Truth {
                // The simulator's own intervals, rounded to whole ms.
                for c in cited.iter().filter(|c| c.quantity == Quantity::Qrs) {
                    let truth = record.meta.qrs_ms.unwrap();
                    assert_eq!(c.value, truth.round(), "{}", item.answer);
                }
            }
        }
    }
    // A record without any measurement has no reference.
    let mut flat = records[0].clone();
    flat.signals = vec![vec![0.0; flat.len()]; 12];
    flat.meta.qrs_ms = None;
    assert!(grounding_reference(&flat, GroundingSource::Truth).is_none());
    assert_eq!(flat.leads.len(), STANDARD_LEADS.len());
}

#[test]
fn localization_answers_are_the_true_segments() {
    let records = records();
    let by_id: HashMap<&str, &Record> = records.iter().map(|r| (r.id.as_str(), r)).collect();
    let items = build_items(&records, &peers_config(GroundingSource::Delineator)).unwrap();
    let loc = of_task(&items, Task::Localization);
    assert_eq!(loc.len(), records.len());
    let mut with_segments = 0;
    for item in loc {
        let truth = true_segments(by_id[item.filename[0].as_str()]).unwrap();
        with_segments += usize::from(!truth.is_empty());
        let parsed = parse_localization(&item.answer).expect("parsable");
        // Written to 0.1 s, so within 0.05 s of the truth at each edge.
        assert_eq!(parsed.len(), truth.len(), "{}", item.answer);
        for (p, t) in parsed.iter().zip(&truth) {
            assert!(
                (p.start_s - t.start_s).abs() <= 0.05 + 1e-9,
                "{}",
                item.answer
            );
            assert!((p.end_s - t.end_s).abs() <= 0.05 + 1e-9, "{}", item.answer);
        }
        assert!(localization_iou(Some(&parsed), &truth).iou > 0.8);
        assert!(item.question.contains("12-second"), "{}", item.question);
    }
    assert!(
        with_segments > 0,
        "some simulated record has an abnormal segment"
    );
}

#[test]
fn multi_ecg_questions_name_the_highest_by_the_margin() {
    let records = records();
    let facts: HashMap<String, RecordFacts> = records
        .iter()
        .map(|r| (r.id.clone(), RecordFacts::from_record(r)))
        .collect();
    let items = build_items(&records, &peers_config(GroundingSource::Delineator)).unwrap();
    let multi = of_task(&items, Task::MultiEcg);
    assert!(!multi.is_empty());
    let mut sizes = std::collections::BTreeSet::new();
    for item in multi {
        let k = item.filename.len();
        sizes.insert(k);
        assert!((2..=4).contains(&k), "{k}");
        assert_eq!(item.label, vec![Modality::Signal; k]);
        assert_eq!(item.options.len(), k);
        let value = |f: &RecordFacts| -> f32 {
            if item.question.contains("heart rate") {
                f.heart_rate_bpm.unwrap()
            } else if item.question.contains("QRS") {
                f.qrs_ms.unwrap()
            } else {
                f.qtc_ms().unwrap()
            }
        };
        let values: Vec<f32> = item.filename.iter().map(|id| value(&facts[id])).collect();
        let letter = item.correct_option.unwrap();
        let winner = (letter as u8 - b'A') as usize;
        for (i, v) in values.iter().enumerate() {
            if i != winner {
                assert!(values[winner] - v >= 5.0, "{:?} {}", values, item.answer);
            }
        }
        assert!(
            item.answer
                .starts_with(&format!("{letter}: ECG {}", winner + 1))
        );
        // Every ECG of the question is named once.
        let mut names = item.filename.clone();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), k);
    }
    assert!(sizes.len() >= 2, "k varies: {sizes:?}");
}
