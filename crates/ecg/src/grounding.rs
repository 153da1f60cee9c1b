//! GEM-style grounding (issue #12.3, `../shared/docs/paper-facts.md` §2): answers that cite
//! measured evidence per lead ("QRS 128 ms in V1"), written from a reference (the delineator's
//! per-lead medians on a real record, or the simulator's true intervals), read back out of any
//! answer, and scored without an LLM judge:
//!
//! * **lead coverage**: distinct standard leads cited / 12 (GEM's definition);
//! * **lead accuracy**: cited (quantity, lead) pairs that the reference confirms, within a
//!   tolerance, over all cited pairs; a lead or quantity the reference lacks counts as wrong.
//!   GEM scores lead accuracy with a judge; this is the part of it that needs none;
//! * **measurement error**: mean absolute error of the cited values against the reference's,
//!   per quantity, over the cited pairs the reference has.
//!
//! A citation is `NAME [duration|amplitude|level|interval] [of] VALUE UNIT in LEAD[, LEAD ...
//! and LEAD]`, NAME one of P, PR, QRS, QT, QTc, R, S, T, ST; UNIT `ms` for the intervals and
//! `mV` for the amplitudes and the ST level.

use serde::{Deserialize, Serialize};

use crate::delineate::measure::{Measures, RecordMeasures};
use crate::record::STANDARD_LEADS;
use crate::synthetic::SimTruth;

/// A quantity an answer may cite for a lead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Quantity {
    Pr,
    Qrs,
    Qt,
    QtcBazett,
    PAmp,
    RAmp,
    SAmp,
    TAmp,
    St,
}

impl Quantity {
    pub const ALL: [Quantity; 9] = [
        Quantity::Pr,
        Quantity::Qrs,
        Quantity::Qt,
        Quantity::QtcBazett,
        Quantity::PAmp,
        Quantity::RAmp,
        Quantity::SAmp,
        Quantity::TAmp,
        Quantity::St,
    ];

    /// The name an answer uses.
    pub fn name(self) -> &'static str {
        match self {
            Quantity::Pr => "PR",
            Quantity::Qrs => "QRS",
            Quantity::Qt => "QT",
            Quantity::QtcBazett => "QTc",
            Quantity::PAmp => "P",
            Quantity::RAmp => "R",
            Quantity::SAmp => "S",
            Quantity::TAmp => "T",
            Quantity::St => "ST",
        }
    }

    /// Whether the quantity is an interval (ms) rather than a voltage (mV).
    pub fn is_interval(self) -> bool {
        matches!(
            self,
            Quantity::Pr | Quantity::Qrs | Quantity::Qt | Quantity::QtcBazett
        )
    }

    fn unit(self) -> &'static str {
        if self.is_interval() { "ms" } else { "mV" }
    }

    /// The quantity's value in a set of measurements.
    pub fn of(self, m: &Measures) -> Option<f32> {
        match self {
            Quantity::Pr => m.pr_ms,
            Quantity::Qrs => m.qrs_ms,
            Quantity::Qt => m.qt_ms,
            Quantity::QtcBazett => m.qtc_bazett_ms,
            Quantity::PAmp => m.p_mv,
            Quantity::RAmp => m.r_mv,
            Quantity::SAmp => m.s_mv,
            Quantity::TAmp => m.t_mv,
            Quantity::St => m.st_mv,
        }
    }

    fn from_name(word: &str) -> Option<Quantity> {
        Quantity::ALL.into_iter().find(|q| q.name() == word)
    }
}

/// Per-lead reference values, in standard lead spelling.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reference {
    pub leads: Vec<(String, Measures)>,
}

impl Reference {
    /// The delineator's per-lead medians.
    pub fn measured(m: &RecordMeasures) -> Self {
        Reference {
            leads: m.leads.iter().map(|l| (l.lead.clone(), l.median)).collect(),
        }
    }

    /// The simulator's true intervals, the same in every lead (the simulator's intervals are
    /// global); it knows no per-lead amplitudes, so those stay unknown.
    pub fn simulated(truth: &SimTruth) -> Self {
        let m = Measures {
            pr_ms: truth.pr_ms,
            qrs_ms: Some(truth.qrs_ms),
            qt_ms: Some(truth.qt_ms),
            qtc_bazett_ms: Some(truth.qtc_ms),
            heart_rate_bpm: Some(truth.heart_rate_bpm),
            ..Measures::default()
        };
        Reference {
            leads: STANDARD_LEADS.iter().map(|l| (l.to_string(), m)).collect(),
        }
    }

    fn value(&self, q: Quantity, lead: &str) -> Option<f32> {
        self.leads
            .iter()
            .find(|(l, _)| l == lead)
            .and_then(|(_, m)| q.of(m))
    }
}

/// One piece of cited evidence.
#[derive(Debug, Clone, PartialEq)]
pub struct Citation {
    pub quantity: Quantity,
    pub value: f32,
    pub lead: String,
}

/// An answer citing `quantities` in `leads` from the reference, one sentence per quantity:
/// `QRS 96 ms in V1. R 1.25 mV in V5.`; intervals in whole ms, voltages to 0.01 mV; pairs the
/// reference lacks are left out.
pub fn grounded_answer(reference: &Reference, quantities: &[Quantity], leads: &[&str]) -> String {
    let mut sentences = Vec::new();
    for &q in quantities {
        for &lead in leads {
            if let Some(v) = reference.value(q, lead) {
                // `+ 0.0` turns a negative zero into zero, so nothing prints as "-0.00".
                let value = if q.is_interval() {
                    format!("{:.0}", v.round() + 0.0)
                } else {
                    format!("{:.2}", (v * 100.0).round() / 100.0 + 0.0)
                };
                sentences.push(format!("{} {value} {} in {lead}.", q.name(), q.unit()));
            }
        }
    }
    sentences.join(" ")
}

/// Words of an answer: runs of letters, digits, `.` and `-`, and single commas.
fn words(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices() {
        let part = c.is_alphanumeric() || c == '.' || c == '-';
        match (part, start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                out.push(&text[s..i]);
                start = None;
            }
            _ => {}
        }
        if c == ',' {
            out.push(",");
        }
    }
    if let Some(s) = start {
        out.push(&text[s..]);
    }
    out.into_iter()
        .map(|w| {
            if w.len() > 1 {
                w.trim_end_matches('.')
            } else {
                w
            }
        })
        .collect()
}

/// A number with its unit glued on or in the next word; the words used.
fn value_with_unit(words: &[&str], unit: &str) -> Option<(f32, usize)> {
    let first = *words.first()?;
    let (number, used) = match first.strip_suffix(unit) {
        Some(n) if !n.is_empty() => (n, 1),
        _ if words.get(1).is_some_and(|w| w.eq_ignore_ascii_case(unit)) => (first, 2),
        _ => return None,
    };
    let v: f32 = number.parse().ok().filter(|v: &f32| v.is_finite())?;
    Some((v, used))
}

/// Every citation in `answer`, in order; text that does not follow the citation form is
/// skipped.
pub fn parse_citations(answer: &str) -> Vec<Citation> {
    const FILLER: [&str; 9] = [
        "duration",
        "amplitude",
        "level",
        "interval",
        "elevation",
        "depression",
        "of",
        "is",
        "wave",
    ];
    let w = words(answer);
    let mut out = Vec::new();
    let mut i = 0;
    while i < w.len() {
        let Some(q) = Quantity::from_name(w[i]) else {
            i += 1;
            continue;
        };
        let mut j = i + 1;
        while j < w.len() && FILLER.contains(&w[j].to_ascii_lowercase().as_str()) {
            j += 1;
        }
        let Some((value, used)) = value_with_unit(&w[j..], q.unit()) else {
            i += 1;
            continue;
        };
        j += used;
        if w.get(j).is_none_or(|x| !x.eq_ignore_ascii_case("in")) {
            i += 1;
            continue;
        }
        j += 1;
        let mut cited = false;
        while let Some(&lead) = w.get(j).filter(|x| STANDARD_LEADS.contains(x)) {
            out.push(Citation {
                quantity: q,
                value,
                lead: lead.to_string(),
            });
            cited = true;
            j += 1;
            if w.get(j).is_some_and(|x| *x == "," || *x == "and") {
                j += 1;
            }
        }
        i = if cited { j } else { i + 1 };
    }
    out
}

/// How close a cited value must be to the reference's to count as confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tolerance {
    /// For intervals, ms.
    pub ms: f32,
    /// For voltages, mV.
    pub mv: f32,
}

impl Default for Tolerance {
    fn default() -> Self {
        Tolerance { ms: 20.0, mv: 0.1 }
    }
}

/// The grounding scores of one answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Grounding {
    /// Citations found in the answer.
    pub citations: usize,
    /// Distinct standard leads cited / 12.
    pub lead_coverage: f64,
    /// Confirmed citations / citations; `None` without citations.
    pub lead_accuracy: Option<f64>,
    /// Mean absolute error of the cited values the reference has, per quantity (ms or mV).
    pub abs_error: Vec<(Quantity, f64)>,
}

/// Scores `answer`'s citations against `reference`.
pub fn score_grounding(answer: &str, reference: &Reference, tol: Tolerance) -> Grounding {
    let cited = parse_citations(answer);
    let mut leads: Vec<&str> = cited.iter().map(|c| c.lead.as_str()).collect();
    leads.sort_unstable();
    leads.dedup();
    let mut confirmed = 0;
    let mut errors: std::collections::BTreeMap<Quantity, (f64, usize)> = Default::default();
    for c in &cited {
        let Some(truth) = reference.value(c.quantity, &c.lead) else {
            continue;
        };
        let err = (c.value - truth).abs();
        let limit = if c.quantity.is_interval() {
            tol.ms
        } else {
            tol.mv
        };
        confirmed += usize::from(err <= limit);
        let e = errors.entry(c.quantity).or_default();
        e.0 += f64::from(err);
        e.1 += 1;
    }
    Grounding {
        citations: cited.len(),
        lead_coverage: leads.len() as f64 / STANDARD_LEADS.len() as f64,
        lead_accuracy: (!cited.is_empty()).then(|| confirmed as f64 / cited.len() as f64),
        abs_error: errors
            .into_iter()
            .map(|(q, (sum, n))| (q, sum / n as f64))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference() -> Reference {
        let v1 = Measures {
            qrs_ms: Some(128.0),
            r_mv: Some(0.45),
            st_mv: Some(0.12),
            ..Measures::default()
        };
        let ii = Measures {
            pr_ms: Some(162.0),
            qrs_ms: Some(96.0),
            ..Measures::default()
        };
        Reference {
            leads: vec![("V1".into(), v1), ("II".into(), ii)],
        }
    }

    #[test]
    fn citations_are_read_in_the_forms_answers_use() {
        let c = parse_citations(
            "Wide QRS: QRS duration 128 ms in V1, RSR' pattern. PR interval of 180ms in II and \
             V1. ST elevation 0.2 mV in V2, V3 and V4. T is normal. QT 400 ms in V9.",
        );
        let got: Vec<(Quantity, f32, &str)> = c
            .iter()
            .map(|c| (c.quantity, c.value, c.lead.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (Quantity::Qrs, 128.0, "V1"),
                (Quantity::Pr, 180.0, "II"),
                (Quantity::Pr, 180.0, "V1"),
                (Quantity::St, 0.2, "V2"),
                (Quantity::St, 0.2, "V3"),
                (Quantity::St, 0.2, "V4"),
            ]
        );
        // A negative ST level, a wrong unit (not a citation), no lead (not a citation).
        let c = parse_citations("ST -0.15 mV in aVL. QRS 0.1 mV in V1. QRS 100 ms overall.");
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].quantity, c[0].value), (Quantity::St, -0.15));
    }

    #[test]
    fn scores_by_hand() {
        // V1 QRS 128 exact, II QRS 130 (ref 96: 34 ms off, wrong), V1 R 0.50 (ref 0.45, right),
        // V5 T 0.3 (no reference: wrong, no error counted).
        let answer = "QRS 128 ms in V1. QRS 130 ms in II. R 0.50 mV in V1. T 0.3 mV in V5.";
        let g = score_grounding(answer, &reference(), Tolerance::default());
        assert_eq!(g.citations, 4);
        assert!((g.lead_coverage - 3.0 / 12.0).abs() < 1e-12);
        assert_eq!(g.lead_accuracy, Some(0.5));
        assert_eq!(g.abs_error.len(), 2);
        assert_eq!(g.abs_error[0].0, Quantity::Qrs);
        assert!((g.abs_error[0].1 - 17.0).abs() < 1e-6, "{:?}", g.abs_error);
        assert_eq!(g.abs_error[1].0, Quantity::RAmp);
        assert!((g.abs_error[1].1 - 0.05).abs() < 1e-6, "{:?}", g.abs_error);
        let none = score_grounding("Sinus rhythm.", &reference(), Tolerance::default());
        assert_eq!(
            (none.citations, none.lead_coverage, none.lead_accuracy),
            (0, 0.0, None)
        );
    }

    #[test]
    fn a_grounded_answer_scores_full_accuracy_against_its_reference() {
        let r = reference();
        let text = grounded_answer(&r, &Quantity::ALL, &["II", "V1", "V5"]);
        assert_eq!(
            text,
            "PR 162 ms in II. QRS 96 ms in II. QRS 128 ms in V1. R 0.45 mV in V1. ST 0.12 mV in V1."
        );
        let g = score_grounding(&text, &r, Tolerance { ms: 0.5, mv: 0.005 });
        assert_eq!((g.citations, g.lead_accuracy), (5, Some(1.0)));
        assert!((g.lead_coverage - 2.0 / 12.0).abs() < 1e-12);
    }

    #[test]
    fn simulated_and_measured_references_agree_on_a_simulated_record() {
        use crate::delineate::{DelineateConfig, delineate, measure::measure};
        use crate::synthetic::{Condition, SimConfig, simulate};
        let sim = simulate(&SimConfig::default(), Condition::NormalSinus, 5);
        let truth = Reference::simulated(&sim.truth);
        let d = delineate(&sim.record, &DelineateConfig::default()).unwrap();
        let measured = Reference::measured(&measure(&sim.record, &d));
        // An answer grounded in the delineator's QT and PR, scored against the simulator's
        // truth (seed 5: 23 citations, per-lead mean |error| PR 14.7 ms, QT 10.3 ms, all within
        // 40 ms).
        let text = grounded_answer(&measured, &[Quantity::Pr, Quantity::Qt], &STANDARD_LEADS);
        let g = score_grounding(&text, &truth, Tolerance { ms: 40.0, mv: 0.1 });
        assert!(g.citations >= 20, "{text}");
        assert!(g.lead_accuracy.unwrap() >= 0.75, "{g:?}\n{text}");
        assert!(g.abs_error.iter().all(|(_, e)| *e < 25.0), "{g:?}");
    }
}
