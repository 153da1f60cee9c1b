//! Instruction items of the peer systems (issue #12.3-4, `paper-facts.md` §2-3), built beside
//! HeartcareGPT's when their counts in [`BuildConfig`] are above 0 (all 0 by default, so the
//! Heartcare items are unchanged):
//!
//! - **GEM's grounded interpretations** (`GroundedInterpretation`, task `grounded`): the
//!   record's findings, then evidence measured per lead ("Evidence: QRS 96 ms in V1. R 1.25 mV
//!   in V5."), cited from a [`Reference`]: the delineator's per-lead medians
//!   ([`GroundingSource::Delineator`], GEM's design), or the record's own intervals, the same in
//!   every lead ([`GroundingSource::Truth`]: the simulator's true values);
//! - **anyECG-chat's abnormal-segment localization** (`Localization`, task `localization`):
//!   for a record whose abnormal segments are known (`meta.abnormal_segments`: the simulator's
//!   truth, or beat annotations), "Duration: 1.9s-3.1s, ..." or "None found.";
//! - **anyECG-chat's multi-ECG questions** (`MultiECGQA`, task `multi_ecg`): `k` ECGs
//!   (2..=`multi_ecg_max`, the record first, the others from its split, the patient's own next
//!   records first) and which of them has the highest heart rate, widest QRS or longest QTc,
//!   asked only when the highest stands out by the comparison margin.
//!
//! Every item of this module draws from its own generator (seeded by the record's id and a
//! constant of its own) and is numbered under its own id prefix, so turning these items on
//! leaves every other item byte-identical. Peer items show their ECGs as signals (anyECG-chat's
//! and GEM's time-series inputs).

use beatlab_ecg::delineate::measure::{Measures, measure};
use beatlab_ecg::delineate::{DelineateConfig, delineate};
use beatlab_ecg::flexible::{Interval, format_localization};
use beatlab_ecg::grounding::{Quantity, Reference, grounded_answer};
use beatlab_ecg::{Record, STANDARD_LEADS};
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::instruct::{
    BuildConfig, CorpusIndex, Dimension, Item, ItemType, Modality, RecordFacts, Split, Task,
    format_choice_question, stable_hash, who,
};

/// Where a grounded answer's measurements come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroundingSource {
    /// The delineator's per-lead medians (GEM).
    #[default]
    Delineator,
    /// The record's intervals (simulator: true values) in every lead; no amplitudes.
    Truth,
}

/// The reference a record's grounded answers cite and are scored against; `None` when it
/// has no measurement (delineation failed or found no beat, or no intervals are known).
pub fn grounding_reference(record: &Record, source: GroundingSource) -> Option<Reference> {
    let reference = match source {
        GroundingSource::Delineator => {
            let d = delineate(record, &DelineateConfig::default()).ok()?;
            Reference::measured(&measure(record, &d))
        }
        GroundingSource::Truth => {
            let meta = &record.meta;
            let qrs = meta.qrs_ms?;
            let qtc = match (meta.qt_ms, meta.heart_rate_bpm) {
                (Some(qt), Some(hr)) if hr > 0.0 => Some(qt / (60.0 / hr).sqrt()),
                _ => None,
            };
            let m = Measures {
                pr_ms: meta.pr_ms,
                qrs_ms: Some(qrs),
                qt_ms: meta.qt_ms,
                qtc_bazett_ms: qtc,
                heart_rate_bpm: meta.heart_rate_bpm,
                ..Measures::default()
            };
            Reference {
                leads: STANDARD_LEADS.iter().map(|l| (l.to_string(), m)).collect(),
            }
        }
    };
    let any = reference
        .leads
        .iter()
        .any(|(_, m)| Quantity::ALL.iter().any(|q| q.of(m).is_some()));
    any.then_some(reference)
}

/// A record's abnormal segments, when known.
pub fn true_segments(record: &Record) -> Option<Vec<Interval>> {
    record.meta.abnormal_segments.as_ref().map(|s| {
        s.iter()
            .map(|&[start_s, end_s]| Interval { start_s, end_s })
            .collect()
    })
}

/// The peer items of one record, appended to `items`.
pub(crate) struct PeerItems<'a> {
    pub record: &'a Record,
    pub f: &'a RecordFacts,
    pub index: usize,
    pub split: Split,
    pub config: &'a BuildConfig,
}

impl PeerItems<'_> {
    pub fn build(&self, corpus: &CorpusIndex, items: &mut Vec<Item>) {
        let mut rng = ChaCha8Rng::seed_from_u64(stable_hash(
            self.config.seed ^ 0x6E0_5EED,
            &self.f.record_id,
        ));
        let mut counter = 0;
        let mut next_id = |kind: &str| {
            counter += 1;
            format!("{}#{kind}{counter}", self.f.record_id)
        };
        if self.config.grounded_per_record > 0
            && let Some(reference) = grounding_reference(self.record, self.config.grounding)
        {
            for _ in 0..self.config.grounded_per_record {
                if let Some(mut item) = self.grounded(&mut rng, &reference) {
                    item.id = Some(next_id("Grounded"));
                    items.push(item);
                }
            }
        }
        if let Some(segments) = true_segments(self.record) {
            let first = rng.random_range(0..LOCALIZATION.len());
            for k in 0..self.config.localization_per_record {
                let template = LOCALIZATION[(first + k) % LOCALIZATION.len()];
                let mut item = self.localization(template, &segments);
                item.id = Some(next_id("Localization"));
                items.push(item);
            }
        }
        for _ in 0..self.config.multi_ecg_per_record {
            if let Some(mut item) = self.multi_ecg(&mut rng, corpus) {
                item.id = Some(next_id("MultiECG"));
                items.push(item);
            }
        }
    }

    fn single(&self, task: Task, question: String, answer: String) -> Item {
        let f = self.f;
        Item {
            item_type: ItemType::of(None, task),
            question,
            answer,
            filename: vec![f.record_id.clone()],
            label: vec![Modality::Signal],
            id: None,
            dimension: None,
            options: Vec::new(),
            correct_option: None,
            record_ids: vec![f.record_id.clone()],
            patient_ids: vec![f.patient_id.clone()],
            split: Some(self.split),
            prediction: None,
        }
    }

    /// The findings, then 2 quantities (QRS and one more) in 3 leads (II and two others).
    fn grounded(&self, rng: &mut ChaCha8Rng, reference: &Reference) -> Option<Item> {
        let has = |q: Quantity, lead: &str| {
            reference
                .leads
                .iter()
                .any(|(l, m)| l == lead && q.of(m).is_some())
        };
        let mut others: Vec<&str> = STANDARD_LEADS
            .iter()
            .copied()
            .filter(|&l| l != "II" && has(Quantity::Qrs, l))
            .collect();
        others.shuffle(rng);
        let mut leads: Vec<&str> = std::iter::once("II")
            .filter(|l| has(Quantity::Qrs, l))
            .chain(others.into_iter().take(2))
            .collect();
        leads.sort_by_key(|l| STANDARD_LEADS.iter().position(|s| s == l));
        let extra: Vec<Quantity> = [
            Quantity::Pr,
            Quantity::Qt,
            Quantity::QtcBazett,
            Quantity::RAmp,
            Quantity::TAmp,
            Quantity::St,
        ]
        .into_iter()
        .filter(|&q| leads.iter().any(|l| has(q, l)))
        .collect();
        let mut quantities = vec![Quantity::Qrs];
        quantities.extend(extra.choose(rng));
        let evidence = grounded_answer(reference, &quantities, &leads);
        if evidence.is_empty() {
            return None;
        }
        let findings = match (self.f.diagnoses.is_empty(), &self.f.rhythm) {
            (false, _) => self
                .f
                .diagnoses
                .iter()
                .map(|d| d.trim_end_matches('.'))
                .collect::<Vec<_>>()
                .join("; "),
            (true, Some(r)) => r.clone(),
            (true, None) => "No labelled findings".into(),
        };
        let lead_list = match leads.as_slice() {
            [one] => one.to_string(),
            [init @ .., last] => format!("{} and {last}", init.join(", ")),
            [] => return None,
        };
        let template = [
            "Interpret the ECG signal of {who} and cite the measurements in leads {leads} that support it.",
            "What does this ECG signal of {who} show? Ground the answer in measurements from leads {leads}.",
            "Give a grounded interpretation of the ECG signal of {who}, with evidence from leads {leads}.",
        ]
        .choose(rng)
        .expect("non-empty");
        let question = template
            .replace("{who}", &who(self.f))
            .replace("{leads}", &lead_list);
        Some(self.single(
            Task::Grounded,
            question,
            format!("{findings}. Evidence: {evidence}"),
        ))
    }

    fn localization(&self, template: &str, segments: &[Interval]) -> Item {
        let question = template
            .replace("{d}", &format!("{:.0}", self.f.duration_s))
            .replace("{who}", &who(self.f));
        self.single(Task::Localization, question, format_localization(segments))
    }

    /// `k` ECGs of the record's split and which one has the largest value of one measurement.
    fn multi_ecg(&self, rng: &mut ChaCha8Rng, corpus: &CorpusIndex) -> Option<Item> {
        let max = self.config.multi_ecg_max;
        let k = rng.random_range(2..=max.max(2));
        let mut chosen = vec![self.index];
        // The patient's other records first (comparison over time), then others of the split.
        let own: Vec<usize> = corpus.by_patient[self.f.patient_id.as_str()]
            .iter()
            .copied()
            .filter(|&i| i != self.index)
            .collect();
        let mut pool: Vec<usize> = corpus
            .by_split
            .get(&self.split)
            .map(|v| {
                v.iter()
                    .copied()
                    .filter(|&i| i != self.index && !own.contains(&i))
                    .collect()
            })
            .unwrap_or_default();
        pool.shuffle(rng);
        chosen.extend(own.iter().chain(&pool).take(k - 1));
        if chosen.len() < 2 {
            return None;
        }
        chosen[1..].shuffle(rng);
        // Put the record at a random place so the answer is not always ECG 1.
        let at = rng.random_range(0..chosen.len());
        chosen.swap(0, at);
        let facts: Vec<&RecordFacts> = chosen.iter().map(|&i| &corpus.facts[i]).collect();
        let mut asks = MULTI.to_vec();
        asks.shuffle(rng);
        let (ask, winner) = asks.iter().find_map(|ask| {
            let values: Vec<f32> = facts
                .iter()
                .map(|f| (ask.value)(f))
                .collect::<Option<_>>()?;
            let (best, top) = values
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))?;
            let runner_up = values
                .iter()
                .enumerate()
                .filter(|&(i, _)| i != best)
                .map(|(_, v)| *v)
                .fold(f32::NEG_INFINITY, f32::max);
            (top - runner_up >= ask.margin).then_some((ask, best))
        })?;
        let options: Vec<String> = (1..=facts.len()).map(|n| format!("ECG {n}")).collect();
        let letter = (b'A' + winner as u8) as char;
        let values: Vec<String> = facts
            .iter()
            .enumerate()
            .map(|(n, f)| {
                format!(
                    "ECG {} {:.0} {}",
                    n + 1,
                    (ask.value)(f).unwrap_or(0.0),
                    ask.unit
                )
            })
            .collect();
        let question = format_choice_question(
            &format!(
                "Given {} ECG signals (ECG 1 to ECG {}), {}",
                facts.len(),
                facts.len(),
                ask.stem
            ),
            &options,
        );
        Some(Item {
            item_type: ItemType::of(Some(ask.dimension), Task::MultiEcg),
            question,
            answer: format!(
                "{letter}: {}. {}: {}.",
                options[winner],
                ask.name,
                values.join(", ")
            ),
            filename: facts.iter().map(|f| f.record_id.clone()).collect(),
            label: vec![Modality::Signal; facts.len()],
            id: None,
            dimension: Some(ask.dimension),
            options,
            correct_option: Some(letter),
            record_ids: facts.iter().map(|f| f.record_id.clone()).collect(),
            patient_ids: facts.iter().map(|f| f.patient_id.clone()).collect(),
            split: Some(self.split),
            prediction: None,
        })
    }
}

/// Localization questions; a record's items take them in turn.
const LOCALIZATION: [&str; 3] = [
    "Locate the abnormal waveform segments in this {d}-second ECG signal of {who}.",
    "Which parts of this {d}-second ECG signal of {who} are abnormal? Give their times.",
    "Find every abnormal segment of the {d}-second ECG signal of {who}.",
];

/// A measurement a multi-ECG question asks about.
#[derive(Clone, Copy)]
struct Ask {
    dimension: Dimension,
    stem: &'static str,
    name: &'static str,
    value: fn(&RecordFacts) -> Option<f32>,
    unit: &'static str,
    margin: f32,
}

const MULTI: [Ask; 3] = [
    Ask {
        dimension: Dimension::Rhythm,
        stem: "which one has the fastest heart rate?",
        name: "Heart rate",
        value: |f| f.heart_rate_bpm,
        unit: "bpm",
        margin: 5.0,
    },
    Ask {
        dimension: Dimension::Waveform,
        stem: "which one has the widest QRS complex?",
        name: "QRS duration",
        value: |f| f.qrs_ms,
        unit: "ms",
        margin: 10.0,
    },
    Ask {
        dimension: Dimension::Waveform,
        stem: "which one has the longest corrected QT interval?",
        name: "QTc",
        value: RecordFacts::qtc_ms,
        unit: "ms",
        margin: 20.0,
    },
];
