//! The peer systems' options in the multimodal stages (issue #12.3-4): the ECG ViT built from
//! `[vit]`, anyECG-chat's chunked and reduced-lead signal inputs from `[signal]`, and the
//! metrics of the peer tasks in `eval`:
//!
//! - `grounded/*` (GEM): `lead_coverage` (distinct leads cited / 12), `lead_accuracy`
//!   (citations the reference confirms within 20 ms / 0.1 mV, over citations; items without
//!   citations count 0), `citations`, `err_<quantity>` (mean absolute error of the cited values
//!   the reference has: `err_qrs_ms`, `err_r_mv`, ...) and `rouge_l`, each answer scored against
//!   the reference its item was written from (beatlab-heartcare's `grounding_reference`);
//! - `localization/*` (anyECG-chat): `iou` (per-item interval IoU in seconds; the macro mean),
//!   `unparsable`, and the summary `localization/iou_micro` (summed intersections over summed
//!   unions), against the record's true segments;
//! - `multi_ecg/acc` and `acc_generated`, as the other multiple-choice tasks.

use std::collections::HashMap;

use beatlab_ecg::Record;
use beatlab_ecg::flexible::{
    Interval, localization_iou, model_chunks, parse_localization, reduced_leads,
};
use beatlab_ecg::grounding::{Quantity, Reference, Tolerance, score_grounding};
use beatlab_heartcare::instruct::{Item, Task};
use beatlab_heartcare::metrics;
use beatlab_heartcare::peers::{GroundingSource, grounding_reference, true_segments};
use beatlab_mm::{EcgInput, EcgVitConfig, PatchLayout};
use candle_core::{Device, Tensor};

use crate::runner::StageError;
use crate::spec::{self, SignalEncoder, Spec, VitPatches};

/// The ViT of `signal.encoder = "vit"`, reading Beat's `input_len` samples.
pub fn vit_config(spec: &Spec) -> Option<EcgVitConfig> {
    if spec.signal.encoder != SignalEncoder::Vit {
        return None;
    }
    let v = &spec.vit;
    Some(EcgVitConfig {
        leads: beatlab_ecg::STANDARD_LEADS.len(),
        input_len: spec.beat.input_len as usize,
        patch_size: v.patch_size as usize,
        layout: match v.patches {
            VitPatches::AllLeads => PatchLayout::AllLeads,
            VitPatches::PerLead => PatchLayout::PerLead,
        },
        width: v.width as usize,
        depth: v.depth as usize,
        heads: v.heads as usize,
        head_dim: v.head_dim as usize,
        mlp_ratio: v.mlp_ratio,
        cls_token: v.cls_token,
        norm_eps: 1e-6,
    })
}

/// Whether signal inputs are anyECG-chat's chunked, reduced-lead recordings rather than the
/// dataset's one window per record.
pub fn flexible(spec: &Spec) -> bool {
    let s = &spec.signal;
    s.chunks > 0 || s.lead_mask || s.leads != 12
}

/// A record as chunks of `beat.input_len` samples (at most `signal.chunks`, at least one),
/// its leads reduced to `signal.leads`, preprocessed as the spec's windows are.
pub fn chunked_input(
    spec: &Spec,
    record: &Record,
    device: &Device,
) -> Result<EcgInput, StageError> {
    let keep = reduced_leads(spec.signal.leads as usize).ok_or_else(|| {
        StageError::Data(format!(
            "signal.leads = {} is not a lead set",
            spec.signal.leads
        ))
    })?;
    let chunks = model_chunks(
        record,
        &crate::data::preprocess_config(spec),
        spec.beat.input_len as usize,
        spec.signal.chunks as usize,
        keep,
    )
    .map_err(|e| StageError::Data(format!("record `{}`: {e}", record.id)))?;
    let windows = Tensor::from_vec(
        chunks.data,
        (
            chunks.chunks,
            beatlab_ecg::STANDARD_LEADS.len(),
            chunks.chunk_len,
        ),
        device,
    )?;
    Ok(EcgInput::Chunks {
        windows,
        lead_mask: Some(chunks.lead_mask.to_vec()),
    })
}

/// The spec's grounding source, as the item builder spells it.
pub fn grounding_source(spec: &Spec) -> GroundingSource {
    match spec.instructions.grounding {
        spec::GroundingSource::Delineator => GroundingSource::Delineator,
        spec::GroundingSource::Truth => GroundingSource::Truth,
    }
}

const GROUNDED: [&str; 13] = [
    "lead_coverage",
    "lead_accuracy",
    "citations",
    "err_pr_ms",
    "err_qrs_ms",
    "err_qt_ms",
    "err_qtc_ms",
    "err_p_mv",
    "err_r_mv",
    "err_s_mv",
    "err_t_mv",
    "err_st_mv",
    "rouge_l",
];

/// The per-item metrics of a peer task (`None` for the others).
pub fn item_metrics(task: Task) -> Option<&'static [&'static str]> {
    match task {
        Task::Grounded => Some(&GROUNDED),
        Task::Localization => Some(&["iou", "unparsable"]),
        Task::MultiEcg => Some(&["acc", "acc_generated"]),
        _ => None,
    }
}

/// The error metric of a quantity, in [`GROUNDED`].
fn error_key(q: Quantity) -> &'static str {
    match q {
        Quantity::Pr => "err_pr_ms",
        Quantity::Qrs => "err_qrs_ms",
        Quantity::Qt => "err_qt_ms",
        Quantity::QtcBazett => "err_qtc_ms",
        Quantity::PAmp => "err_p_mv",
        Quantity::RAmp => "err_r_mv",
        Quantity::SAmp => "err_s_mv",
        Quantity::TAmp => "err_t_mv",
        Quantity::St => "err_st_mv",
    }
}

/// What peer items are scored against, and the sums of the micro localization IoU.
#[derive(Default)]
pub struct PeerTruth {
    references: HashMap<String, Option<Reference>>,
    segments: HashMap<String, Vec<Interval>>,
    intersection_s: f64,
    union_s: f64,
    localized: usize,
}

impl PeerTruth {
    /// The grounding references and true segments of the records `items` ask about.
    pub fn new(spec: &Spec, records: &[Record], items: &[Item]) -> Self {
        let by_id: HashMap<&str, &Record> = records.iter().map(|r| (r.id.as_str(), r)).collect();
        let mut truth = PeerTruth::default();
        let source = grounding_source(spec);
        for item in items {
            let Some(record) = item.filename.first().and_then(|f| by_id.get(f.as_str())) else {
                continue;
            };
            match item.task() {
                Some(Task::Grounded) => {
                    truth
                        .references
                        .entry(record.id.clone())
                        .or_insert_with(|| grounding_reference(record, source));
                }
                Some(Task::Localization) => {
                    if let Some(s) = true_segments(record) {
                        truth.segments.insert(record.id.clone(), s);
                    }
                }
                _ => {}
            }
        }
        truth
    }

    /// The metrics of a grounded or localization item's generation, `(metric, value)`.
    pub fn score(&mut self, item: &Item, generation: &str) -> Vec<(&'static str, f64)> {
        let record = item
            .filename
            .first()
            .map(String::as_str)
            .unwrap_or_default();
        match item.task() {
            Some(Task::Grounded) => {
                let Some(Some(reference)) = self.references.get(record) else {
                    return Vec::new();
                };
                let g = score_grounding(generation, reference, Tolerance::default());
                let mut out = vec![
                    ("lead_coverage", g.lead_coverage),
                    ("lead_accuracy", g.lead_accuracy.unwrap_or(0.0)),
                    ("citations", g.citations as f64),
                    ("rouge_l", metrics::rouge_l(generation, &item.answer).f1),
                ];
                out.extend(g.abs_error.iter().map(|&(q, e)| (error_key(q), e)));
                out
            }
            Some(Task::Localization) => {
                let Some(truth) = self.segments.get(record) else {
                    return Vec::new();
                };
                let parsed = parse_localization(generation);
                let s = localization_iou(parsed.as_deref(), truth);
                self.intersection_s += s.intersection_s;
                self.union_s += s.union_s;
                self.localized += 1;
                vec![
                    ("iou", s.iou),
                    ("unparsable", f64::from(u8::from(parsed.is_none()))),
                ]
            }
            _ => Vec::new(),
        }
    }

    /// `localization/iou_micro`, when some localization item had any segment.
    pub fn summary(&self) -> Vec<(String, f64)> {
        if self.localized > 0 && self.union_s > 0.0 {
            vec![(
                "localization/iou_micro".into(),
                self.intersection_s / self.union_s,
            )]
        } else {
            Vec::new()
        }
    }
}
