//! ECG simulator throughput: 10-s 12-lead records at 500 Hz per second from the built-in
//! simulator ([`beatlab_ecg::synthetic::generate`], conditions drawn from the default mix),
//! against NeuroKit2's `ecg_simulate(method="multileads")` (`bench/sim_neurokit.py`), the
//! closest widely used 12-lead simulator in Python.
//!
//! Both sides simulate their list of records once untimed, then time several passes over it
//! (as many per round as make a second). Both report how many records they made and how many
//! leads and samples each has (and the lead names); they must agree, so the two sides produced
//! the same amount of signal. The models differ (see the notes the benchmark prints): ours
//! draws 13 conditions and computes labels and true intervals with every record; NeuroKit2's
//! multilead ECGSYN makes normal sinus rhythm only, signals without labels.

use std::collections::BTreeMap;

use beatlab_ecg::synthetic::{SimConfig, generate, generate_with_truth};
use serde::Deserialize;

use super::{BenchError, Comparison, Peer, PeerRound, Timer, alternate, finish_peer};

/// Knobs of the simulator benchmark.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Records per pass (ours: one `generate` call; NeuroKit2: one call per record).
    pub records: usize,
    /// Timed rounds; the median is reported.
    pub rounds: usize,
    /// Seed of ours; NeuroKit2's record `i` gets `random_state = seed + i`.
    pub seed: u64,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            records: 10,
            rounds: 5,
            seed: 0,
        }
    }
}

/// The simulator settings timed: the defaults (condition mix, noise) at 500 Hz for 10 s.
pub fn sim_config() -> SimConfig {
    SimConfig {
        fs: 500.0,
        duration_s: 10.0,
        ..SimConfig::default()
    }
}

/// What one pass produced: the record count and the shape every record shares (`None` where
/// the records differ).
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    pub records: usize,
    pub leads: Option<usize>,
    pub samples_per_record: Option<usize>,
    pub lead_names: Option<Vec<String>>,
}

/// The single value every item shares, `None` when they differ or there are none.
fn uniform<T: PartialEq + Clone>(mut values: impl Iterator<Item = T>) -> Option<T> {
    let first = values.next()?;
    values.all(|v| v == first).then_some(first)
}

impl Shape {
    /// The shape of `records`.
    pub fn of(records: &[beatlab_ecg::Record]) -> Self {
        Self {
            records: records.len(),
            leads: uniform(records.iter().map(|r| r.signals.len())),
            samples_per_record: uniform(
                records.iter().flat_map(|r| r.signals.iter().map(Vec::len)),
            ),
            lead_names: uniform(records.iter().map(|r| r.leads.clone())),
        }
    }
}

/// The NeuroKit2 peer's hello: what its untimed pass made.
#[derive(Debug, Deserialize)]
struct SimHello {
    neurokit2: String,
    records: usize,
    leads: Option<usize>,
    samples_per_record: Option<usize>,
    lead_names: Option<Vec<String>>,
    passes: usize,
}

/// Checks that the peer made as many records of the same shape as ours did.
fn check_same_work(ours: &Shape, theirs: &SimHello) -> Result<(), BenchError> {
    let mismatch = |what: String| {
        Err(BenchError::Mismatch {
            benchmark: "sim",
            what,
        })
    };
    let show =
        |v: Option<usize>| v.map_or_else(|| "differing per record".into(), |v| v.to_string());
    if theirs.records != ours.records {
        return mismatch(format!(
            "records: ours {}, neurokit2 {}",
            ours.records, theirs.records
        ));
    }
    if ours.leads.is_none() || theirs.leads != ours.leads {
        return mismatch(format!(
            "leads per record: ours {}, neurokit2 {}",
            show(ours.leads),
            show(theirs.leads)
        ));
    }
    if ours.samples_per_record.is_none() || theirs.samples_per_record != ours.samples_per_record {
        return mismatch(format!(
            "samples per lead: ours {}, neurokit2 {}",
            show(ours.samples_per_record),
            show(theirs.samples_per_record)
        ));
    }
    if theirs.lead_names != ours.lead_names {
        return mismatch(format!(
            "lead names: ours {:?}, neurokit2 {:?}",
            ours.lead_names, theirs.lead_names
        ));
    }
    Ok(())
}

/// The report's notes: samples per second, what each side simulates, passes per round.
fn notes(
    shape: &Shape,
    records: usize,
    passes: usize,
    conditions: &BTreeMap<&'static str, usize>,
    (ours, theirs): (&super::Rates, &super::Rates),
    theirs_hello: Option<&SimHello>,
) -> Vec<String> {
    let samples_per_record =
        (shape.leads.unwrap_or(0) * shape.samples_per_record.unwrap_or(0)) as f64;
    let drawn: Vec<String> = conditions.iter().map(|(c, n)| format!("{n} {c}")).collect();
    let mut notes = vec![
        format!(
            "{} leads x {} samples per record; samples/s (all leads): ours {:.3e}{}",
            shape.leads.unwrap_or(0),
            shape.samples_per_record.unwrap_or(0),
            ours.median_wall() * samples_per_record,
            if theirs_hello.is_some() {
                format!(
                    ", neurokit2 {:.3e}; both sides made the same records x leads x samples",
                    theirs.median_wall() * samples_per_record
                )
            } else {
                String::new()
            }
        ),
        format!(
            "ours draws conditions from the default mix of 13 (these {records}: {}) with noise \
             (baseline wander, mains, EMG), and returns labels (SCP codes, superclasses, \
             intervals) and per-beat wave positions; the true intervals are computed in the \
             timed work too",
            drawn.join(", ")
        ),
        "neurokit2's multileads is ECGSYN's ODE integrated once per lead (12 solve_ivp calls \
         per record): normal sinus rhythm only (fixed P-Q-R-S-T, 70 +- 1 bpm), each lead \
         rescaled to [-0.4, 1.2] mV, Laplace noise; it returns the signals only, no labels or \
         wave positions. Both sides run on one thread"
            .into(),
    ];
    if let Some(hello) = theirs_hello {
        notes.push(format!(
            "passes per round: ours {passes} x {records} records, neurokit2 {} x {records}",
            hello.passes
        ));
    }
    notes
}

/// Starts `bench/sim_neurokit.py` on as many records of the same length and rate, and checks
/// it makes the same work.
fn start_peer(
    peer: &Peer,
    cfg: &SimConfig,
    records: usize,
    seed: u64,
    shape: &Shape,
) -> Result<(super::PeerSession, SimHello), BenchError> {
    let args: Vec<String> = [
        "--records".to_string(),
        records.to_string(),
        "--seed".into(),
        seed.to_string(),
        "--duration".into(),
        cfg.duration_s.to_string(),
        "--sampling-rate".into(),
        (cfg.fs.round() as u64).to_string(),
        "--min-seconds".into(),
        "1".into(),
    ]
    .into();
    let (session, hello) = peer.start::<SimHello>("sim_neurokit.py", &args)?;
    check_same_work(shape, &hello)?;
    Ok((session, hello))
}

/// Runs the benchmark: ours, then the peer on as many records of the same length and rate.
pub fn run(
    options: &SimOptions,
    peer: Option<&Peer>,
    progress: &mut dyn FnMut(&str),
) -> Result<Comparison, BenchError> {
    let cfg = sim_config();
    let records = options.records.max(1);
    progress(&format!(
        "sim: simulating {records} records of {} s at {} Hz ({} timed rounds)",
        cfg.duration_s, cfg.fs, options.rounds
    ));
    let warm = std::time::Instant::now();
    let made = generate(&cfg, records, options.seed);
    // Enough passes per round for a second of work: the CPU clock ticks in 10 ms.
    let passes = (1.0 / warm.elapsed().as_secs_f64().max(1e-3))
        .ceil()
        .max(1.0) as usize;
    let shape = Shape::of(&made);
    drop(made);
    let mut conditions: BTreeMap<&'static str, usize> = BTreeMap::new();
    for record in generate_with_truth(&cfg, records, options.seed) {
        *conditions.entry(record.truth.condition.name()).or_default() += 1;
    }
    let mut session = match peer {
        Some(peer) => {
            progress(&format!(
                "sim: starting the NeuroKit2 peer (bench/sim_neurokit.py): one untimed pass of {records} records"
            ));
            Some(start_peer(peer, &cfg, records, options.seed, &shape)?)
        }
        None => None,
    };
    progress(&format!(
        "sim: {} timed rounds{}",
        options.rounds,
        if session.is_some() {
            ", ours and neurokit2's alternating"
        } else {
            ""
        }
    ));
    let (ours, theirs) = alternate(
        options.rounds,
        session.as_mut().map(|(session, _)| session),
        || {
            let timer = Timer::start();
            for _ in 0..passes {
                std::hint::black_box(generate(&cfg, records, options.seed));
            }
            Ok(((records * passes) as f64, timer.stop()))
        },
        |_: &PeerRound<serde_json::Value>| Ok(()),
    )?;
    let theirs_hello = finish_peer(session)?;
    let samples_per_record =
        (shape.leads.unwrap_or(0) * shape.samples_per_record.unwrap_or(0)) as f64;
    let notes = notes(
        &shape,
        records,
        passes,
        &conditions,
        (&ours, &theirs),
        theirs_hello.as_ref(),
    );
    Ok(Comparison {
        benchmark: "sim".into(),
        workload: format!(
            "simulate {records} 12-lead records of {} s at {} Hz (seed {}; {passes} passes per round)",
            cfg.duration_s, cfg.fs, options.seed
        ),
        unit: "records/s".into(),
        goal: None,
        notes,
        details: serde_json::json!({
            "records": records,
            "leads": shape.leads,
            "samples_per_lead": shape.samples_per_record,
            "conditions": conditions,
            "samples_per_s": {
                "ours": ours.median_wall() * samples_per_record,
                "neurokit2": theirs_hello.as_ref().map(|_| theirs.median_wall() * samples_per_record),
            },
            "rounds_records_per_s": { "ours": &ours.wall, "neurokit2": &theirs.wall },
        }),
        ..Comparison::from_rates(
            &ours,
            theirs_hello.map(|t| (format!("neurokit2 {}", t.neurokit2), &theirs)),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standard_leads() -> Vec<String> {
        beatlab_ecg::STANDARD_LEADS
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    #[test]
    fn ours_makes_ten_second_twelve_lead_records_at_500_hz() {
        let shape = Shape::of(&generate(&sim_config(), 3, 7));
        assert_eq!(
            shape,
            Shape {
                records: 3,
                leads: Some(12),
                samples_per_record: Some(5000),
                lead_names: Some(standard_leads()),
            }
        );
    }

    #[test]
    fn a_shape_that_varies_between_records_is_none() {
        let mut records = generate(&sim_config(), 2, 1);
        records[1].signals[3].pop();
        let shape = Shape::of(&records);
        assert_eq!(shape.leads, Some(12));
        assert_eq!(shape.samples_per_record, None);
        assert_eq!(Shape::of(&[]).leads, None);
    }

    #[test]
    fn the_peer_hello_parses_and_must_match_our_shape() {
        let ours = Shape {
            records: 10,
            leads: Some(12),
            samples_per_record: Some(5000),
            lead_names: Some(standard_leads()),
        };
        let hello = |json: serde_json::Value| -> SimHello { serde_json::from_value(json).unwrap() };
        let good = serde_json::json!({
            "peer": "neurokit2", "neurokit2": "0.2.13", "records": 10, "leads": 12,
            "samples_per_record": 5000, "lead_names": standard_leads(), "passes": 1,
        });
        let with = |key: &str, value: serde_json::Value| {
            let mut json = good.clone();
            json[key] = value;
            hello(json)
        };
        let check = |t: SimHello, expected_error: Option<&str>| match (
            check_same_work(&ours, &t),
            expected_error,
        ) {
            (Ok(()), None) => {}
            (Err(e), Some(part)) => assert!(e.to_string().contains(part), "{e}"),
            (got, want) => panic!("{t:?}: got {got:?}, expected error {want:?}"),
        };
        check(hello(good.clone()), None);
        check(
            with("records", 9.into()),
            Some("records: ours 10, neurokit2 9"),
        );
        check(
            with("leads", 1.into()),
            Some("leads per record: ours 12, neurokit2 1"),
        );
        check(
            with("samples_per_record", serde_json::Value::Null),
            Some("samples per lead: ours 5000, neurokit2 differing per record"),
        );
        check(
            with("lead_names", serde_json::json!(vec!["I"; 12])),
            Some("lead names"),
        );
    }
}
