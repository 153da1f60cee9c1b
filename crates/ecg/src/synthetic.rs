//! The built-in 12-lead ECG simulator: labelled records from a model of the cardiac dipole, so
//! every experiment can run on a fresh machine with no download.
//!
//! # Model
//! The heart is a single current dipole `d(t)` in body coordinates (x = patient's left,
//! y = inferior, z = anterior). Each beat adds waves to it, each wave a Gaussian bump in time
//! (asymmetric for T) with a fixed 3-D direction and amplitude, in the spirit of ECGSYN's
//! sum-of-Gaussians: P (right then left atrium), QRS (septal, free-wall and basal components,
//! reshaped for bundle branch blocks and ventricular ectopics), an optional ST "injury" plateau,
//! and T. Atrial fibrillation and flutter add a continuous atrial dipole (f- / F-waves).
//!
//! Leads are projections of the dipole on lead vectors: I and II from the Einthoven triangle
//! (I along +x, II at +60 degrees), and III, aVR, aVL, aVF derived from them by Einthoven's and
//! Goldberger's identities, computed in `f32` exactly as written (`III = II - I`,
//! `aVR = -(I + II) / 2`, `aVL = I - II / 2`, `aVF = II - I / 2`), so they hold bit for bit even
//! with noise (noise is added to I and II, i.e. at the electrodes). Precordial leads V1-V6 are
//! projections on horizontal-plane directions with proximity gains.
//!
//! A wave's onset and offset are its components' centre -/+ 2.5 sigma (where a Gaussian has
//! fallen to 4 % of its peak); the true intervals in the labels are computed from those, so
//! labels and waveforms agree by construction.
//!
//! # Parameters
//! Each record has one [`Condition`]. Rate, PR, QRS width, QTc (Bazett: QT = QTc * sqrt(RR)),
//! frontal axis and amplitudes come from the [`PatientTraits`] of its patient, jittered per
//! record, except where the condition dictates them (bradycardia 40-56 bpm, tachycardia
//! 105-150 bpm, first-degree block PR 225-320 ms, LBBB QRS 135-175 ms, RBBB 128-165 ms, LVH
//! Sokolow-Lyon 3.9-5.2 mV; every other record is kept below 3.0 mV). Sinus RR series carry
//! respiratory (0.2-0.35 Hz) and Mayer-wave (0.1 Hz) variability; AF draws independent RRs.
//! [`simulate_patient`] takes explicit traits for callers that want to set them.
//!
//! # Randomness
//! Everything is drawn from a ChaCha8 stream seeded by the caller: the same `(config, condition,
//! seed)` gives the same record bit for bit on every machine.

use std::collections::BTreeMap;
use std::f32::consts::PI;

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::record::{Record, RecordMeta, STANDARD_LEADS, SourceKind, Superclass, Wave, WaveKind};

const SQRT3_2: f32 = 0.866_025_4;

/// Precordial lead directions: angle in the horizontal plane from +x (patient's left) towards
/// +z (anterior), in degrees, and a proximity gain (the chest electrodes sit closer to the heart
/// than the limb electrodes, so the same dipole reads larger).
const PRECORDIAL: [(f32, f32); 6] = [
    (125.0, 1.3),
    (105.0, 2.0),
    (72.0, 2.0),
    (50.0, 2.0),
    (30.0, 1.8),
    (5.0, 1.5),
];

/// Half-width of a wave in units of its Gaussian sigma, used for onsets and offsets.
const WAVE_HALF_WIDTH: f32 = 2.5;
/// Gaussians are evaluated over +-4 sigma only (the rest is below 0.04 % of the peak).
const RENDER_HALF_WIDTH: f32 = 4.0;

// ---------------------------------------------------------------------------------------------
// Public configuration
// ---------------------------------------------------------------------------------------------

/// A simulated diagnosis; each record has exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// Sinus rhythm, 60-100 bpm, normal conduction.
    NormalSinus,
    /// Sinus rhythm below 60 bpm.
    SinusBradycardia,
    /// Sinus rhythm above 100 bpm.
    SinusTachycardia,
    /// Irregularly irregular RR, no P waves, fibrillatory f-waves.
    AtrialFibrillation,
    /// Sawtooth F-waves around 300/min with a fixed 2:1, 3:1 or 4:1 AV block.
    AtrialFlutter,
    /// Sinus rhythm with PR > 200 ms.
    FirstDegreeAvBlock,
    /// Complete left bundle branch block (QRS >= 120 ms, broad notched R in I/V5/V6, QS in V1).
    Lbbb,
    /// Complete right bundle branch block (QRS >= 120 ms, rSR' in V1, wide S in I/V6).
    Rbbb,
    /// Left ventricular hypertrophy by voltage (Sokolow-Lyon S(V1) + R(V5|V6) >= 3.5 mV).
    Lvh,
    /// ST elevation in one territory (anterior, inferior or lateral).
    StElevation,
    /// ST depression in the lateral / inferolateral leads.
    StDepression,
    /// Sinus rhythm with premature wide ventricular beats and compensatory pauses.
    PrematureVentricular,
    /// Sinus rhythm with premature atrial beats with abnormal P waves.
    PrematureAtrial,
}

impl Condition {
    /// Every condition, in declaration order.
    pub const ALL: [Condition; 13] = [
        Condition::NormalSinus,
        Condition::SinusBradycardia,
        Condition::SinusTachycardia,
        Condition::AtrialFibrillation,
        Condition::AtrialFlutter,
        Condition::FirstDegreeAvBlock,
        Condition::Lbbb,
        Condition::Rbbb,
        Condition::Lvh,
        Condition::StElevation,
        Condition::StDepression,
        Condition::PrematureVentricular,
        Condition::PrematureAtrial,
    ];

    /// The condition whose [`Condition::name`] is `name`.
    pub fn from_name(name: &str) -> Option<Condition> {
        Condition::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The snake_case name used in configuration files.
    pub fn name(self) -> &'static str {
        match self {
            Condition::NormalSinus => "normal_sinus",
            Condition::SinusBradycardia => "sinus_bradycardia",
            Condition::SinusTachycardia => "sinus_tachycardia",
            Condition::AtrialFibrillation => "atrial_fibrillation",
            Condition::AtrialFlutter => "atrial_flutter",
            Condition::FirstDegreeAvBlock => "first_degree_av_block",
            Condition::Lbbb => "lbbb",
            Condition::Rbbb => "rbbb",
            Condition::Lvh => "lvh",
            Condition::StElevation => "st_elevation",
            Condition::StDepression => "st_depression",
            Condition::PrematureVentricular => "premature_ventricular",
            Condition::PrematureAtrial => "premature_atrial",
        }
    }

    /// The PTB-XL SCP code of the condition (as in `scp_statements.csv`).
    pub fn scp_code(self) -> &'static str {
        match self {
            Condition::NormalSinus => "NORM",
            Condition::SinusBradycardia => "SBRAD",
            Condition::SinusTachycardia => "STACH",
            Condition::AtrialFibrillation => "AFIB",
            Condition::AtrialFlutter => "AFLT",
            Condition::FirstDegreeAvBlock => "1AVB",
            Condition::Lbbb => "CLBBB",
            Condition::Rbbb => "CRBBB",
            Condition::Lvh => "LVH",
            Condition::StElevation => "STE_",
            Condition::StDepression => "STD_",
            Condition::PrematureVentricular => "PVC",
            Condition::PrematureAtrial => "PAC",
        }
    }

    /// PTB-XL diagnostic superclasses implied by the condition. Rhythm-only conditions with a
    /// normal morphology count as NORM except the arrhythmias proper (AF, flutter, ectopics),
    /// which PTB-XL labels through rhythm statements rather than a diagnostic class.
    pub fn superclasses(self) -> Vec<Superclass> {
        match self {
            Condition::NormalSinus | Condition::SinusBradycardia | Condition::SinusTachycardia => {
                vec![Superclass::NORM]
            }
            Condition::FirstDegreeAvBlock | Condition::Lbbb | Condition::Rbbb => {
                vec![Superclass::CD]
            }
            Condition::Lvh => vec![Superclass::HYP],
            Condition::StElevation => vec![Superclass::MI],
            Condition::StDepression => vec![Superclass::STTC],
            Condition::AtrialFibrillation
            | Condition::AtrialFlutter
            | Condition::PrematureVentricular
            | Condition::PrematureAtrial => Vec::new(),
        }
    }
}

/// Noise added to every record, as amplitudes in millivolts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NoiseConfig {
    /// Baseline wander (respiration and electrode drift, 0.05-0.5 Hz): peak amplitude, mV.
    pub baseline_wander_mv: f32,
    /// Mains interference: amplitude of the sinusoid, mV.
    pub mains_mv: f32,
    /// Mains frequency, Hz (50 or 60).
    pub mains_hz: f32,
    /// Muscle (EMG) noise: standard deviation of white noise, mV.
    pub emg_mv: f32,
    /// When true each record scales every level by its own factor drawn from [0.2, 1.0], so a
    /// data set mixes clean and noisy records; when false the levels apply as given.
    pub random_scale: bool,
}

impl Default for NoiseConfig {
    fn default() -> Self {
        Self {
            baseline_wander_mv: 0.15,
            mains_mv: 0.02,
            mains_hz: 50.0,
            emg_mv: 0.02,
            random_scale: true,
        }
    }
}

impl NoiseConfig {
    /// No noise at all (for tests and for measuring the clean model).
    pub fn none() -> Self {
        Self {
            baseline_wander_mv: 0.0,
            mains_mv: 0.0,
            mains_hz: 50.0,
            emg_mv: 0.0,
            random_scale: false,
        }
    }
}

/// Simulator settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// Sampling rate, Hz.
    pub fs: f64,
    /// Record duration, seconds.
    pub duration_s: f64,
    /// Relative weight of each condition in [`generate`]; weights need not sum to 1.
    /// Conditions not listed are never drawn.
    pub mix: BTreeMap<Condition, f64>,
    /// Probability that a record of [`generate`] belongs to a patient already generated (so that
    /// some patients have several records).
    pub repeat_patient_prob: f64,
    pub noise: NoiseConfig,
}

impl Default for SimConfig {
    fn default() -> Self {
        // Normal sinus rhythm dominates as in clinical archives (PTB-XL: ~44 % NORM); every
        // abnormal condition keeps enough weight to appear in small data sets.
        let mix = [
            (Condition::NormalSinus, 0.28),
            (Condition::SinusBradycardia, 0.06),
            (Condition::SinusTachycardia, 0.06),
            (Condition::AtrialFibrillation, 0.07),
            (Condition::AtrialFlutter, 0.04),
            (Condition::FirstDegreeAvBlock, 0.05),
            (Condition::Lbbb, 0.05),
            (Condition::Rbbb, 0.06),
            (Condition::Lvh, 0.07),
            (Condition::StElevation, 0.06),
            (Condition::StDepression, 0.07),
            (Condition::PrematureVentricular, 0.07),
            (Condition::PrematureAtrial, 0.06),
        ]
        .into_iter()
        .collect();
        Self {
            fs: 500.0,
            duration_s: 10.0,
            mix,
            repeat_patient_prob: 0.3,
            noise: NoiseConfig::default(),
        }
    }
}

/// Traits that stay with a patient across records: a repeated patient keeps its body
/// (amplitudes, axis, intervals) while its condition may change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatientTraits {
    pub patient_id: String,
    pub age: f32,
    /// "M" or "F".
    pub sex: String,
    /// Resting sinus rate in bpm (used by conditions that keep a normal rate).
    pub resting_hr_bpm: f32,
    /// PR interval with normal conduction, ms.
    pub pr_ms: f32,
    /// QRS duration with normal conduction, ms.
    pub qrs_ms: f32,
    /// Bazett-corrected QT with normal conduction, ms.
    pub qtc_ms: f32,
    /// Frontal QRS axis with normal conduction, degrees.
    pub axis_deg: f32,
    /// Overall QRS amplitude scale (body habitus), ~1.
    pub amplitude: f32,
    /// P-wave duration, ms.
    pub p_ms: f32,
}

impl PatientTraits {
    /// Draws a random adult.
    pub fn random(patient_id: impl Into<String>, rng: &mut impl Rng) -> Self {
        Self {
            patient_id: patient_id.into(),
            age: rng.random_range(18.0..90.0f32).round(),
            sex: if rng.random_bool(0.5) { "M" } else { "F" }.to_string(),
            resting_hr_bpm: rng.random_range(62.0..92.0),
            pr_ms: rng.random_range(130.0..185.0),
            qrs_ms: rng.random_range(80.0..102.0),
            qtc_ms: rng.random_range(385.0..440.0),
            axis_deg: rng.random_range(-15.0..80.0),
            amplitude: rng.random_range(0.8..1.25),
            p_ms: rng.random_range(85.0..110.0),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Truth
// ---------------------------------------------------------------------------------------------

/// How a beat was initiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BeatKind {
    /// Sinus node, conducted normally (or with the record's conduction defect).
    Sinus,
    /// Conducted from fibrillating or fluttering atria (no P wave of its own).
    AtrialConducted,
    /// Premature atrial beat (early, abnormal P, normal QRS).
    PrematureAtrial,
    /// Premature ventricular beat (early, no P, wide bizarre QRS, discordant T).
    PrematureVentricular,
}

/// A wave's position in samples of the record; may lie partly outside the record for beats at
/// its edges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveSpan {
    pub onset: i64,
    pub peak: i64,
    pub offset: i64,
}

/// One simulated beat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BeatTruth {
    pub kind: BeatKind,
    pub p: Option<WaveSpan>,
    pub qrs: WaveSpan,
    pub t: WaveSpan,
}

/// ST-segment shift of a record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StShiftTruth {
    /// "anterior", "inferior", "lateral" (elevation) or "lateral", "inferolateral" (depression).
    pub territory: String,
    /// Leads whose ST level (J + 60 ms, noise-free) moves by at least 0.1 mV in the direction
    /// of the condition, in standard order.
    pub leads: Vec<String>,
    /// The largest shift among those leads, mV (positive for elevation, negative for
    /// depression).
    pub max_shift_mv: f32,
}

/// Everything the simulator knows about a record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimTruth {
    pub condition: Condition,
    pub patient: PatientTraits,
    /// Beats whose QRS peak lies inside the record, in time order.
    pub beats: Vec<BeatTruth>,
    /// Intervals between consecutive QRS peaks of `beats`, ms.
    pub rr_ms: Vec<f32>,
    /// 60 000 / mean(rr_ms).
    pub heart_rate_bpm: f32,
    /// PR of the dominant (sinus) beats, None without organised atrial activity.
    pub pr_ms: Option<f32>,
    /// QRS duration of the dominant beats.
    pub qrs_ms: f32,
    /// QT of the dominant beats.
    pub qt_ms: f32,
    /// Bazett-corrected QT.
    pub qtc_ms: f32,
    /// Frontal axis of the dominant QRS (direction of its net area vector), degrees.
    pub axis_deg: f32,
    /// Noise-free Sokolow-Lyon index S(V1) + max(R(V5), R(V6)) of the dominant beat, mV.
    pub sokolow_lyon_mv: f32,
    pub st_shift: Option<StShiftTruth>,
    /// Atrial flutter conduction ratio (2 for 2:1 ...).
    pub flutter_conduction: Option<u32>,
    /// Atrial (f/F) wave rate per minute for AF and flutter.
    pub atrial_rate_per_min: Option<f32>,
    /// Noise amplitudes actually applied, mV.
    pub noise: NoiseConfig,
}

/// A simulated record with its full truth.
#[derive(Debug, Clone, PartialEq)]
pub struct SimRecord {
    pub record: Record,
    pub truth: SimTruth,
}

// ---------------------------------------------------------------------------------------------
// Waves
// ---------------------------------------------------------------------------------------------

type Vec3 = [f32; 3];

fn scale3(v: Vec3, s: f32) -> Vec3 {
    [v[0] * s, v[1] * s, v[2] * s]
}

/// One Gaussian bump of the dipole: centre and widths in seconds relative to the wave's
/// reference time, amplitude vector in mV.
#[derive(Debug, Clone, Copy)]
struct Bump {
    centre: f32,
    sigma_before: f32,
    sigma_after: f32,
    amp: Vec3,
    /// Whether the component turns with the electrical axis (false for anatomically fixed
    /// activation such as the late right-ventricular forces of RBBB).
    rotates: bool,
}

impl Bump {
    fn sym(centre: f32, sigma: f32, amp: Vec3) -> Self {
        Self {
            centre,
            sigma_before: sigma,
            sigma_after: sigma,
            amp,
            rotates: true,
        }
    }
    fn fixed(self) -> Self {
        Self {
            rotates: false,
            ..self
        }
    }
    fn start(&self) -> f32 {
        self.centre - WAVE_HALF_WIDTH * self.sigma_before
    }
    fn end(&self) -> f32 {
        self.centre + WAVE_HALF_WIDTH * self.sigma_after
    }
    fn value(&self, t: f32) -> Vec3 {
        let dt = t - self.centre;
        let s = if dt < 0.0 {
            self.sigma_before
        } else {
            self.sigma_after
        };
        scale3(self.amp, (-0.5 * dt * dt / (s * s)).exp())
    }
}

/// The ST "injury current": a level shift that starts within the terminal QRS (so the J point
/// itself is displaced and no extra deflection appears after the QRS), is complete 10 ms after
/// the J point, holds until the T peak, then tapers (cosine) to zero at the end of T.
#[derive(Debug, Clone, Copy)]
struct StPlateau {
    j_point: f32,
    t_peak: f32,
    t_end: f32,
    amp: Vec3,
}

impl StPlateau {
    const LEAD_IN_S: f32 = 0.03;
    const RISE_S: f32 = 0.04;
    fn start(&self) -> f32 {
        self.j_point - Self::LEAD_IN_S
    }
    fn level(&self, t: f32) -> f32 {
        let start = self.start();
        if t <= start || t >= self.t_end {
            0.0
        } else if t < start + Self::RISE_S {
            let u = (t - start) / Self::RISE_S;
            u * u * (3.0 - 2.0 * u)
        } else if t <= self.t_peak {
            1.0
        } else {
            let u = (t - self.t_peak) / (self.t_end - self.t_peak);
            0.5 * (1.0 + (PI * u).cos())
        }
    }
}

/// Template of one beat, times relative to the QRS onset (s).
#[derive(Debug, Clone)]
struct BeatTemplate {
    p: Vec<Bump>,
    qrs: Vec<Bump>,
    t: Bump,
    st: Option<StPlateau>,
}

impl BeatTemplate {
    fn qrs_span(&self) -> (f32, f32) {
        span(&self.qrs)
    }
    fn p_span(&self) -> Option<(f32, f32)> {
        (!self.p.is_empty()).then(|| span(&self.p))
    }
    fn t_span(&self) -> (f32, f32) {
        (self.t.start(), self.t.end())
    }
    fn dipole_at(&self, t: f32) -> Vec3 {
        let mut d = [0.0f32; 3];
        for b in self
            .p
            .iter()
            .chain(&self.qrs)
            .chain(std::iter::once(&self.t))
        {
            let v = b.value(t);
            for k in 0..3 {
                d[k] += v[k];
            }
        }
        if let Some(st) = &self.st {
            let l = st.level(t);
            for (dk, ak) in d.iter_mut().zip(st.amp) {
                *dk += ak * l;
            }
        }
        d
    }
    fn qrs_dipole_at(&self, t: f32) -> Vec3 {
        let mut d = [0.0f32; 3];
        for b in &self.qrs {
            let v = b.value(t);
            for k in 0..3 {
                d[k] += v[k];
            }
        }
        d
    }
    /// Time of the largest QRS dipole magnitude (the R peak in the spatial sense).
    fn qrs_peak(&self) -> f32 {
        let (a, b) = self.qrs_span();
        let mut best = (a, -1.0f32);
        let mut t = a;
        while t <= b {
            let d = self.qrs_dipole_at(t);
            let m = d[0] * d[0] + d[1] * d[1] + d[2] * d[2];
            if m > best.1 {
                best = (t, m);
            }
            t += 0.0005;
        }
        best.0
    }
    /// Net frontal-plane QRS area vector angle, degrees.
    fn frontal_axis(&self) -> f32 {
        let (sx, sy) = net_area(&self.qrs);
        sy.atan2(sx).to_degrees()
    }
    /// Rotates the QRS (and with `with_repolarisation` the T and ST vectors) in the frontal
    /// plane so that the net QRS axis becomes `axis_deg`.
    ///
    /// Fixed components do not turn, so the rotation is refined until the net axis is within
    /// 0.01 degrees of the target.
    fn set_axis(&mut self, axis_deg: f32, with_repolarisation: bool) {
        for _ in 0..50 {
            let mut error = axis_deg - self.frontal_axis();
            error = (error + 540.0).rem_euclid(360.0) - 180.0;
            if error.abs() < 0.01 {
                break;
            }
            let delta = error.to_radians();
            let rot = |v: &mut Vec3| {
                let (s, c) = delta.sin_cos();
                let (x, y) = (v[0], v[1]);
                v[0] = c * x - s * y;
                v[1] = s * x + c * y;
            };
            for b in self.qrs.iter_mut().filter(|b| b.rotates) {
                rot(&mut b.amp);
            }
            if with_repolarisation {
                rot(&mut self.t.amp);
                if let Some(st) = &mut self.st {
                    rot(&mut st.amp);
                }
            }
        }
    }
    fn scale_qrs(&mut self, factor: f32) {
        for b in &mut self.qrs {
            b.amp = scale3(b.amp, factor);
        }
    }
}

fn span(bumps: &[Bump]) -> (f32, f32) {
    let start = bumps.iter().map(Bump::start).fold(f32::INFINITY, f32::min);
    let end = bumps
        .iter()
        .map(Bump::end)
        .fold(f32::NEG_INFINITY, f32::max);
    (start, end)
}

fn net_area(bumps: &[Bump]) -> (f32, f32) {
    // The area of a Gaussian is proportional to its sigma (sqrt(2 pi) cancels in the angle).
    bumps.iter().fold((0.0, 0.0), |(x, y), b| {
        let w = 0.5 * (b.sigma_before + b.sigma_after);
        (x + b.amp[0] * w, y + b.amp[1] * w)
    })
}

// ---------------------------------------------------------------------------------------------
// Lead projection
// ---------------------------------------------------------------------------------------------

fn precordial_vectors() -> [Vec3; 6] {
    PRECORDIAL.map(|(deg, gain)| {
        let r = deg.to_radians();
        [gain * r.cos(), 0.0, gain * r.sin()]
    })
}

/// Projects one dipole value on the 12 leads (noise-free), derived leads as in the records.
fn project12(d: Vec3) -> [f32; 12] {
    let lead_i = d[0];
    let lead_ii = 0.5 * d[0] + SQRT3_2 * d[1];
    let v = precordial_vectors();
    let mut out = [0.0; 12];
    out[0] = lead_i;
    out[1] = lead_ii;
    out[2] = lead_ii - lead_i;
    out[3] = -(lead_i + lead_ii) / 2.0;
    out[4] = lead_i - lead_ii / 2.0;
    out[5] = lead_ii - lead_i / 2.0;
    for k in 0..6 {
        out[6 + k] = v[k][0] * d[0] + v[k][1] * d[1] + v[k][2] * d[2];
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Beat morphologies
// ---------------------------------------------------------------------------------------------

fn normalise3(v: Vec3) -> Vec3 {
    let n = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
    scale3(v, 1.0 / n)
}

/// Sinus P wave: right atrium (anterior, inferior) then left atrium (leftward, posterior);
/// reference time = P onset.
fn sinus_p(p_s: f32, amp: f32) -> Vec<Bump> {
    let sigma = 0.16 * p_s;
    vec![
        Bump::sym(0.40 * p_s, sigma, scale3([0.03, 0.10, 0.06], amp)),
        Bump::sym(0.60 * p_s, sigma, scale3([0.10, 0.05, -0.05], amp)),
    ]
}

/// Ectopic atrial P wave (low atrial focus): retrograde, negative in the inferior leads.
fn ectopic_p(p_s: f32, amp: f32) -> Vec<Bump> {
    let sigma = 0.17 * p_s;
    vec![
        Bump::sym(0.42 * p_s, sigma, scale3([0.04, -0.12, 0.05], amp)),
        Bump::sym(0.58 * p_s, sigma, scale3([0.03, -0.08, -0.02], amp)),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum QrsMorph {
    Normal,
    Lbbb,
    Rbbb,
}

/// QRS components for a QRS of duration `d` seconds (onset at 0, offset at `d`) and main
/// amplitude `amp` mV. Directions are given for a net axis near +60 degrees and rotated later.
fn qrs_bumps(morph: QrsMorph, d: f32, amp: f32) -> Vec<Bump> {
    // Each component is placed by its fraction of the QRS; the first starts at 0 and the last
    // ends at d (centre -/+ 2.5 sigma).
    let place = |start_frac: f32, sigma_frac: f32, v: Vec3| {
        let sigma = sigma_frac * d;
        Bump::sym(
            start_frac * d + WAVE_HALF_WIDTH * sigma,
            sigma,
            scale3(v, amp),
        )
    };
    let place_end = |end_frac: f32, sigma_frac: f32, v: Vec3| {
        let sigma = sigma_frac * d;
        Bump::sym(
            end_frac * d - WAVE_HALF_WIDTH * sigma,
            sigma,
            scale3(v, amp),
        )
    };
    match morph {
        QrsMorph::Normal => vec![
            // Septum, left to right and anterior: q in I/V5/V6, r in V1.
            place(0.0, 0.075, [-0.14, 0.04, 0.22]),
            // Left ventricular free wall: leftward, inferior, slightly posterior.
            Bump::sym(0.45 * d, 0.11 * d, scale3([0.52, 0.88, -0.14], amp)),
            // Basal segments, late, superior and posterior: s waves.
            place_end(1.0, 0.085, [-0.12, -0.22, -0.22]),
        ],
        QrsMorph::Lbbb => vec![
            // Septum activated from the right: small, leftward, no septal q in I/V6.
            place(0.0, 0.08, [0.20, 0.05, -0.12]),
            // Slow transseptal then left free-wall activation, two broad humps (notched R).
            Bump::sym(0.36 * d, 0.12 * d, scale3([0.72, 0.38, -0.62], amp)),
            place_end(1.0, 0.12, [0.80, 0.22, -0.55]),
        ],
        QrsMorph::Rbbb => vec![
            place(0.0, 0.07, [-0.14, 0.04, 0.24]),
            Bump::sym(0.34 * d, 0.09 * d, scale3([0.55, 0.85, -0.30], amp)),
            // Late, slow right-ventricular activation: rightward and anterior (R' in V1, broad
            // S in I and V6).
            place_end(1.0, 0.10, [-0.42, -0.05, 0.55]).fixed(),
        ],
    }
}

/// Ventricular ectopic: a broad, large, mostly monophasic complex from a random focus.
fn ventricular_qrs(d: f32, amp: f32, direction: Vec3) -> Vec<Bump> {
    let dir = normalise3(direction);
    let sigma1 = 0.13 * d;
    let sigma2 = 0.12 * d;
    vec![
        Bump::sym(WAVE_HALF_WIDTH * sigma1, sigma1, scale3(dir, 0.9 * amp)),
        Bump::sym(d - WAVE_HALF_WIDTH * sigma2, sigma2, scale3(dir, 0.7 * amp)),
    ]
}

/// Asymmetric T wave ending exactly `qt` after the QRS onset.
fn t_bump(qt: f32, amp: Vec3) -> Bump {
    let sigma_after = 0.085 * qt;
    let sigma_before = 0.13 * qt;
    Bump {
        centre: qt - WAVE_HALF_WIDTH * sigma_after,
        sigma_before,
        sigma_after,
        amp,
        rotates: true,
    }
}

// ---------------------------------------------------------------------------------------------
// Record plan
// ---------------------------------------------------------------------------------------------

/// One beat to render: the QRS onset time (s, record time) and which template it uses.
#[derive(Debug, Clone, Copy)]
struct PlacedBeat {
    qrs_onset: f32,
    kind: BeatKind,
    template: usize,
    /// Whether this beat's P wave is drawn (false for AF, flutter and ventricular beats).
    with_p: bool,
}

struct Plan {
    templates: Vec<BeatTemplate>,
    beats: Vec<PlacedBeat>,
    atrial: AtrialActivity,
    dominant: usize,
    pr_s: Option<f32>,
    qt_s: f32,
    /// Mean ventricular cycle the beats were planned with, s (labels the rate of records too
    /// short to hold two beats).
    planned_rr_s: f32,
    st_territory: Option<String>,
    flutter_conduction: Option<u32>,
    atrial_rate_per_min: Option<f32>,
}

#[derive(Debug, Clone)]
enum AtrialActivity {
    None,
    /// f-waves: amplitude, base frequency, frequency wobble, direction, phases.
    Fibrillation {
        amp: f32,
        freq: f32,
        wobble: f32,
        wobble_hz: f32,
        envelope_hz: f32,
        phase: [f32; 3],
        dir: Vec3,
    },
    /// F-waves: sawtooth of `freq` Hz with the given phase (s), peak-to-peak amplitude (mV)
    /// and direction.
    Flutter {
        freq: f32,
        phase_s: f32,
        amp: f32,
        dir: Vec3,
    },
}

fn sinus_rr_series(rng: &mut ChaCha8Rng, mean_rr: f32, start: f32, end: f32) -> Vec<f32> {
    // Heart-rate variability: respiratory sinus arrhythmia (0.2-0.35 Hz) and Mayer waves
    // (~0.1 Hz), a few percent each, plus small beat-to-beat jitter; this keeps sinus rhythms
    // regular (RR coefficient of variation ~3 %) as they are.
    let rsa_amp = rng.random_range(0.01..0.035f32);
    let rsa_hz = rng.random_range(0.2..0.35f32);
    let lf_amp = rng.random_range(0.005..0.02f32);
    let (p1, p2) = (
        rng.random_range(0.0..2.0 * PI),
        rng.random_range(0.0..2.0 * PI),
    );
    let mut times = Vec::new();
    let mut t = start;
    while t < end {
        times.push(t);
        let jitter: f32 = StandardNormal.sample(rng);
        let rr = mean_rr
            * (1.0
                + rsa_amp * (2.0 * PI * rsa_hz * t + p1).sin()
                + lf_amp * (2.0 * PI * 0.1 * t + p2).sin()
                + 0.006 * jitter);
        t += rr;
    }
    times
}

fn coefficient_of_variation(x: &[f32]) -> f32 {
    let mean = x.iter().sum::<f32>() / x.len() as f32;
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / x.len() as f32;
    var.sqrt() / mean
}

/// Bazett QT for a mean RR in seconds.
fn bazett_qt(qtc_ms: f32, rr_s: f32) -> f32 {
    qtc_ms / 1000.0 * rr_s.sqrt()
}

/// Noise-free ST level (J + 60 ms minus the PR-segment baseline) of the template, per lead.
fn st_levels(tpl: &BeatTemplate) -> [f32; 12] {
    let (_, j) = tpl.qrs_span();
    let baseline = project12(tpl.dipole_at(tpl.qrs_span().0 - 0.01));
    let st = project12(tpl.dipole_at(j + 0.06));
    let mut out = [0.0; 12];
    for k in 0..12 {
        out[k] = st[k] - baseline[k];
    }
    out
}

/// Noise-free Sokolow-Lyon index of the template's QRS.
fn sokolow_lyon(tpl: &BeatTemplate) -> f32 {
    let (a, b) = tpl.qrs_span();
    let (mut s_v1, mut r_v5, mut r_v6) = (0.0f32, 0.0f32, 0.0f32);
    let mut t = a;
    while t <= b {
        let l = project12(tpl.qrs_dipole_at(t));
        s_v1 = s_v1.max(-l[6]);
        r_v5 = r_v5.max(l[10]);
        r_v6 = r_v6.max(l[11]);
        t += 0.0005;
    }
    s_v1 + r_v5.max(r_v6)
}

/// The record's intervals, rate, axis and amplitudes, drawn from the patient and condition.
struct Timing {
    amp: f32,
    p_amp: f32,
    p_s: f32,
    mean_rr: f32,
    pr: f32,
    morph: QrsMorph,
    qrs_s: f32,
    qtc_ms: f32,
    qt: f32,
    axis: f32,
}

fn draw_timing(condition: Condition, patient: &PatientTraits, rng: &mut ChaCha8Rng) -> Timing {
    let amp = patient.amplitude * rng.random_range(0.92..1.08f32) * 1.15;
    let p_amp = rng.random_range(0.85..1.3f32);
    let p_s = patient.p_ms / 1000.0 * rng.random_range(0.95..1.05f32);

    // Rate: conditions with a normal sinus rate keep near the patient's own.
    let near_rest = |rng: &mut ChaCha8Rng| {
        (patient.resting_hr_bpm * rng.random_range(0.93..1.07f32)).clamp(60.0, 98.0)
    };
    let hr = match condition {
        Condition::SinusBradycardia => rng.random_range(40.0..56.0),
        Condition::SinusTachycardia => rng.random_range(105.0..150.0),
        Condition::AtrialFibrillation => rng.random_range(70.0..130.0),
        _ => near_rest(rng),
    };
    let mean_rr = 60.0 / hr;

    let mut pr = patient.pr_ms / 1000.0 * rng.random_range(0.95..1.05f32);
    if condition == Condition::FirstDegreeAvBlock {
        pr = rng.random_range(0.225..0.32);
    }
    if condition == Condition::SinusTachycardia {
        // PR shortens with rate.
        pr = (pr * 0.9).max(0.12);
    }
    let (morph, qrs_s) = match condition {
        Condition::Lbbb => (QrsMorph::Lbbb, rng.random_range(0.135..0.175f32)),
        Condition::Rbbb => (QrsMorph::Rbbb, rng.random_range(0.128..0.165f32)),
        Condition::Lvh => (
            QrsMorph::Normal,
            (patient.qrs_ms / 1000.0 + 0.008).min(0.11),
        ),
        _ => (QrsMorph::Normal, patient.qrs_ms / 1000.0),
    };
    // Wide QRS prolongs QT by about the extra depolarisation time.
    let qtc_ms = patient.qtc_ms * rng.random_range(0.97..1.03f32)
        + 1000.0 * (qrs_s - patient.qrs_ms / 1000.0).max(0.0);
    let qt = bazett_qt(qtc_ms, mean_rr);

    let axis = match condition {
        Condition::Lbbb => rng.random_range(-35.0..50.0f32),
        Condition::Lvh => rng.random_range(-30.0..40.0f32),
        // Isolated RBBB keeps a normal axis (a deviated one means an added fascicular block).
        Condition::Rbbb => rng.random_range(-10.0..75.0f32),
        _ => patient.axis_deg + rng.random_range(-8.0..8.0f32),
    };
    Timing {
        amp,
        p_amp,
        p_s,
        mean_rr,
        pr,
        morph,
        qrs_s,
        qtc_ms,
        qt,
        axis,
    }
}

/// The ST plateau of the condition (LBBB's discordant ST, an injury current, or a depression)
/// with its territory; an elevation adds hyperacute T waves and a depression flattens T.
fn st_changes(
    condition: Condition,
    j_point: f32,
    t: &mut Bump,
    rng: &mut ChaCha8Rng,
) -> (Option<StPlateau>, Option<String>) {
    let plateau = |t: &Bump, amp: Vec3| StPlateau {
        j_point,
        t_peak: t.centre,
        t_end: t.end(),
        amp,
    };
    match condition {
        Condition::Lbbb => {
            // Discordant ST: elevated in V1-V3, depressed in I/V6.
            let amp = scale3([-0.45, -0.05, 0.55], rng.random_range(0.08..0.14));
            (Some(plateau(t, amp)), None)
        }
        Condition::StElevation => {
            let (name, dir): (&str, Vec3) = match rng.random_range(0..3) {
                0 => ("anterior", [-0.05, 0.1, 1.0]),
                1 => ("inferior", [0.0, 1.0, 0.1]),
                _ => ("lateral", [1.0, -0.4, -0.15]),
            };
            let level = rng.random_range(0.15..0.32f32);
            let st = plateau(t, scale3(normalise3(dir), level));
            // Hyperacute T waves in the same territory.
            t.amp = [
                t.amp[0] + 0.3 * level * dir[0],
                t.amp[1] + 0.3 * level * dir[1],
                t.amp[2] + 0.3 * level * dir[2],
            ];
            (Some(st), Some(name.to_string()))
        }
        Condition::StDepression => {
            let (name, dir): (&str, Vec3) = if rng.random_bool(0.5) {
                ("lateral", [-0.85, -0.25, -0.45])
            } else {
                ("inferolateral", [-0.6, -0.75, -0.3])
            };
            let level = rng.random_range(0.15..0.3f32);
            let st = plateau(t, scale3(normalise3(dir), level));
            t.amp = scale3(t.amp, 0.5);
            (Some(st), Some(name.to_string()))
        }
        _ => (None, None),
    }
}

/// Voltage: LVH must meet Sokolow-Lyon, everyone else must stay clearly below it.
fn fit_voltage(condition: Condition, dominant: &mut BeatTemplate, rng: &mut ChaCha8Rng) {
    let sl = sokolow_lyon(dominant);
    if condition == Condition::Lvh {
        let target = rng.random_range(3.9..5.2f32);
        dominant.scale_qrs(target / sl);
        dominant.t.amp = scale3(dominant.t.amp, 1.3);
    } else {
        let cap = rng.random_range(2.2..3.0f32);
        if sl > cap {
            // Body habitus scales repolarisation with depolarisation; the ST shift is a
            // diagnosis of its own and keeps its level.
            dominant.scale_qrs(cap / sl);
            dominant.t.amp = scale3(dominant.t.amp, cap / sl);
        }
    }
}

/// The dominant beat's template (P, QRS, T, ST) at the record's axis and voltage; also returns
/// its J point and the ST territory.
fn dominant_template(
    condition: Condition,
    patient: &PatientTraits,
    tm: &Timing,
    rng: &mut ChaCha8Rng,
) -> (BeatTemplate, f32, Option<String>) {
    let mut qrs = qrs_bumps(tm.morph, tm.qrs_s, tm.amp);
    let t_amp = rng.random_range(0.22..0.36f32) * patient.amplitude;
    let t_vec = match tm.morph {
        // Repolarisation opposite to the (abnormal) depolarisation: secondary T changes.
        QrsMorph::Lbbb => scale3([-0.55, -0.15, 0.75], t_amp),
        QrsMorph::Rbbb => scale3([0.55, 0.65, -0.45], t_amp),
        QrsMorph::Normal => scale3([0.62, 0.62, 0.45], t_amp),
    };
    let mut t = t_bump(tm.qt, t_vec);
    let (_, j_point) = span(&qrs);
    // Keep an ST segment of at least 20 ms at high rates and wide QRS.
    let min_t_start = j_point + 0.02;
    if t.start() < min_t_start {
        t.sigma_before = ((t.centre - min_t_start) / WAVE_HALF_WIDTH).max(0.01);
    }
    let (st, st_territory) = st_changes(condition, j_point, &mut t, rng);
    let p = if has_sinus_p(condition) {
        sinus_p(tm.p_s, tm.p_amp)
            .into_iter()
            .map(|mut b| {
                b.centre -= tm.pr;
                b
            })
            .collect()
    } else {
        Vec::new()
    };
    qrs.sort_by(|a, b| a.centre.total_cmp(&b.centre));
    let mut dominant = BeatTemplate { p, qrs, t, st };
    // ST vectors stay with their territory; only the T of conduction defects turns with the
    // QRS.
    dominant.set_axis(tm.axis, matches!(tm.morph, QrsMorph::Lbbb | QrsMorph::Rbbb));
    fit_voltage(condition, &mut dominant, rng);
    (dominant, j_point, st_territory)
}

/// Whether the condition has organised atrial activity (P waves).
fn has_sinus_p(condition: Condition) -> bool {
    !matches!(
        condition,
        Condition::AtrialFibrillation | Condition::AtrialFlutter
    )
}

/// The ventricular rhythm of a record: its beats, atrial activity and rhythm labels.
struct Rhythm {
    beats: Vec<PlacedBeat>,
    atrial: AtrialActivity,
    planned_rr_s: f32,
    flutter_conduction: Option<u32>,
    atrial_rate_per_min: Option<f32>,
}

impl Rhythm {
    fn beats(beats: Vec<PlacedBeat>, planned_rr_s: f32) -> Self {
        Rhythm {
            beats,
            atrial: AtrialActivity::None,
            planned_rr_s,
            flutter_conduction: None,
            atrial_rate_per_min: None,
        }
    }
}

fn sinus_beat(qrs_onset: f32) -> PlacedBeat {
    PlacedBeat {
        qrs_onset,
        kind: BeatKind::Sinus,
        template: 0,
        with_p: true,
    }
}

/// Where the beats of a record lie: from `first` (before the record, so it opens mid-cycle)
/// to `end`.
#[derive(Clone, Copy)]
struct Span {
    first: f32,
    end: f32,
    duration: f32,
}

fn fibrillation(tm: &Timing, span: Span, rng: &mut ChaCha8Rng) -> Rhythm {
    // Irregularly irregular: independent RRs (coefficient of variation ~22 %) with a
    // refractory floor. A 10 s strip only earns its label when the irregularity shows,
    // so series whose in-record RRs happen to vary less than 12 % are drawn again.
    let mut times = Vec::new();
    for _attempt in 0..20 {
        times.clear();
        let mut t = span.first;
        while t < span.end {
            times.push(t);
            let z: f32 = StandardNormal.sample(rng);
            t += (tm.mean_rr * (0.22 * z).exp() * 0.976).max(0.33);
        }
        let inside: Vec<f32> = times
            .iter()
            .copied()
            .filter(|&t| (0.0..span.duration).contains(&t))
            .collect();
        let rr: Vec<f32> = inside.windows(2).map(|w| w[1] - w[0]).collect();
        if rr.len() < 2 || coefficient_of_variation(&rr) >= 0.12 {
            break;
        }
    }
    let beats = times
        .iter()
        .map(|&t| PlacedBeat {
            qrs_onset: t,
            kind: BeatKind::AtrialConducted,
            template: 0,
            with_p: false,
        })
        .collect();
    let mut rhythm = Rhythm::beats(beats, tm.mean_rr);
    let freq = rng.random_range(5.0..8.0f32);
    rhythm.atrial_rate_per_min = Some(freq * 60.0);
    rhythm.atrial = AtrialActivity::Fibrillation {
        amp: rng.random_range(0.04..0.1),
        freq,
        wobble: rng.random_range(0.5..1.5),
        wobble_hz: rng.random_range(0.2..0.6),
        envelope_hz: rng.random_range(0.3..0.9),
        phase: [
            rng.random_range(0.0..2.0 * PI),
            rng.random_range(0.0..2.0 * PI),
            rng.random_range(0.0..2.0 * PI),
        ],
        dir: normalise3([-0.3, 0.45, 0.85]),
    };
    rhythm
}

/// Flutter with a fixed conduction ratio; refits the dominant T wave to the ventricular rate.
fn flutter(
    tm: &Timing,
    span: Span,
    templates: &mut [BeatTemplate],
    j_point: f32,
    rng: &mut ChaCha8Rng,
) -> Rhythm {
    let atrial_per_min = rng.random_range(250.0..330.0f32);
    let freq = atrial_per_min / 60.0;
    let ratio = match rng.random_range(0..10) {
        0..=4 => 2,
        5..=6 => 3,
        _ => 4,
    };
    let rr = ratio as f32 / freq;
    // Typical (counter-clockwise) flutter: negative sawtooth in II, III, aVF, positive
    // in V1.
    let phase_s = rng.random_range(0.0..1.0 / freq);
    let av_delay = rng.random_range(0.18..0.26f32);
    // The QRS follows every `ratio`-th F wave by a fixed conduction delay.
    let mut beats = Vec::new();
    let mut t = phase_s + av_delay - rr;
    while t < span.end {
        beats.push(PlacedBeat {
            qrs_onset: t,
            kind: BeatKind::AtrialConducted,
            template: 0,
            with_p: false,
        });
        t += rr;
    }
    // The mean RR decides QT; refit the T wave to the actual ventricular rate.
    let qt_flutter = bazett_qt(tm.qtc_ms, rr);
    templates[0].t = retime_t(&templates[0].t, qt_flutter, j_point);
    let mut rhythm = Rhythm::beats(beats, rr);
    rhythm.flutter_conduction = Some(ratio);
    rhythm.atrial_rate_per_min = Some(atrial_per_min);
    rhythm.atrial = AtrialActivity::Flutter {
        freq,
        phase_s,
        amp: rng.random_range(0.3..0.5),
        dir: normalise3([0.15, -0.8, 0.45]),
    };
    rhythm
}

/// Sinus rhythm with 1-3 premature ventricular beats (their template is added as template 1)
/// and full compensatory pauses.
fn premature_ventricular(
    tm: &Timing,
    span: Span,
    templates: &mut Vec<BeatTemplate>,
    rng: &mut ChaCha8Rng,
) -> Vec<PlacedBeat> {
    let sinus_times = sinus_rr_series(rng, tm.mean_rr, span.first, span.end);
    let pvc_qrs = rng.random_range(0.14..0.18f32);
    let focus = if rng.random_bool(0.5) {
        // Right-ventricular outflow: LBBB-like, inferior axis.
        [0.2, 0.95, -0.45]
    } else {
        // Left-ventricular free wall: RBBB-like, superior axis.
        [-0.45, -0.6, 0.65]
    };
    let v_amp = tm.amp * rng.random_range(1.6..2.2f32);
    let qrs_v = ventricular_qrs(pvc_qrs, v_amp, focus);
    let dir = normalise3(focus);
    let qt_v = tm.qt + (pvc_qrs - tm.qrs_s) * 0.8;
    let t_v = t_bump(qt_v, scale3(dir, -0.55 * v_amp * 0.45));
    templates.push(BeatTemplate {
        p: Vec::new(),
        qrs: qrs_v,
        t: t_v,
        st: None,
    });
    let n_ectopic = rng.random_range(1..=3usize);
    let candidates = eligible_ectopic_slots(&sinus_times, span.duration);
    let chosen = pick_spread(&candidates, n_ectopic, rng);
    let coupling = rng.random_range(0.58..0.72f32);
    let mut beats = Vec::new();
    for (i, &t) in sinus_times.iter().enumerate() {
        if chosen.contains(&i) {
            // The ventricular beat comes early after the previous sinus beat; the
            // sinus beat it replaces is blocked, so the next sinus beat keeps its time:
            // a full compensatory pause.
            let prev = sinus_times[i - 1];
            beats.push(PlacedBeat {
                qrs_onset: prev + coupling * (t - prev),
                kind: BeatKind::PrematureVentricular,
                template: 1,
                with_p: false,
            });
        } else {
            beats.push(sinus_beat(t));
        }
    }
    beats
}

/// Sinus rhythm with 1-3 premature atrial beats (template 1: an abnormal P), each resetting
/// the sinus node.
fn premature_atrial(
    tm: &Timing,
    span: Span,
    templates: &mut Vec<BeatTemplate>,
    rng: &mut ChaCha8Rng,
) -> Vec<PlacedBeat> {
    let ectopic_template = BeatTemplate {
        p: ectopic_p(tm.p_s * 0.9, tm.p_amp)
            .into_iter()
            .map(|mut b| {
                b.centre -= tm.pr * 0.9;
                b
            })
            .collect(),
        ..templates[0].clone()
    };
    templates.push(ectopic_template);
    let n_ectopic = rng.random_range(1..=3usize);
    let coupling = rng.random_range(0.6..0.75f32);
    // Beats are laid out in one pass: a premature atrial beat resets the sinus node,
    // so the next sinus beat follows it by one ordinary cycle (non-compensatory).
    let base = sinus_rr_series(rng, tm.mean_rr, span.first, span.end);
    let candidates = eligible_ectopic_slots(&base, span.duration);
    let chosen = pick_spread(&candidates, n_ectopic, rng);
    let mut shift = 0.0f32;
    let mut beats = Vec::new();
    for (i, &t0) in base.iter().enumerate() {
        let t = t0 + shift;
        if chosen.contains(&i) {
            let prev = base[i - 1] + shift;
            let early = prev + coupling * (t - prev);
            beats.push(PlacedBeat {
                qrs_onset: early,
                kind: BeatKind::PrematureAtrial,
                template: 1,
                with_p: true,
            });
            shift += early - t;
        } else {
            beats.push(sinus_beat(t));
        }
    }
    beats
}

fn build_plan(
    condition: Condition,
    patient: &PatientTraits,
    duration: f32,
    rng: &mut ChaCha8Rng,
) -> Plan {
    let tm = draw_timing(condition, patient, rng);
    let (dominant, j_point, st_territory) = dominant_template(condition, patient, &tm, rng);
    let mut templates = vec![dominant];
    // Beats start before the record so it opens mid-cycle.
    let span = Span {
        first: -rng.random_range(0.3..1.0f32) * tm.mean_rr,
        end: duration + 0.5,
        duration,
    };
    let rhythm = match condition {
        Condition::AtrialFibrillation => fibrillation(&tm, span, rng),
        Condition::AtrialFlutter => flutter(&tm, span, &mut templates, j_point, rng),
        Condition::PrematureVentricular => Rhythm::beats(
            premature_ventricular(&tm, span, &mut templates, rng),
            tm.mean_rr,
        ),
        Condition::PrematureAtrial => {
            Rhythm::beats(premature_atrial(&tm, span, &mut templates, rng), tm.mean_rr)
        }
        _ => Rhythm::beats(
            sinus_rr_series(rng, tm.mean_rr, span.first, span.end)
                .into_iter()
                .map(sinus_beat)
                .collect(),
            tm.mean_rr,
        ),
    };
    let qt_s = templates[0].t.end();
    Plan {
        templates,
        beats: rhythm.beats,
        atrial: rhythm.atrial,
        dominant: 0,
        pr_s: has_sinus_p(condition).then_some(tm.pr),
        qt_s,
        planned_rr_s: rhythm.planned_rr_s,
        st_territory,
        flutter_conduction: rhythm.flutter_conduction,
        atrial_rate_per_min: rhythm.atrial_rate_per_min,
    }
}

fn retime_t(t: &Bump, qt: f32, j_point: f32) -> Bump {
    let mut new = t_bump(qt, t.amp);
    let min_start = j_point + 0.02;
    if new.start() < min_start {
        new.sigma_before = ((new.centre - min_start) / WAVE_HALF_WIDTH).max(0.01);
    }
    new
}

/// Indices of sinus beats that may be replaced by an ectopic beat: inside the record with a
/// whole cycle on each side, so the prematurity and the pause are both visible.
fn eligible_ectopic_slots(times: &[f32], duration: f32) -> Vec<usize> {
    (2..times.len().saturating_sub(2))
        .filter(|&i| times[i - 1] > 0.3 && times[i + 1] < duration - 0.8)
        .collect()
}

/// Picks up to `n` slots, no two adjacent.
fn pick_spread(candidates: &[usize], n: usize, rng: &mut ChaCha8Rng) -> Vec<usize> {
    let mut pool = candidates.to_vec();
    let mut chosen: Vec<usize> = Vec::new();
    while chosen.len() < n && !pool.is_empty() {
        let k = rng.random_range(0..pool.len());
        let pick = pool.swap_remove(k);
        chosen.push(pick);
        pool.retain(|&c| c.abs_diff(pick) > 1);
    }
    chosen.sort_unstable();
    chosen
}

// ---------------------------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------------------------

/// Dipole time series, one buffer per axis.
struct Dipole {
    x: Vec<f32>,
    y: Vec<f32>,
    z: Vec<f32>,
}

impl Dipole {
    fn add_bump(&mut self, bump: &Bump, offset_s: f32, fs: f32) {
        let n = self.x.len() as i64;
        let centre = (offset_s + bump.centre) * fs;
        let lo = ((centre - RENDER_HALF_WIDTH * bump.sigma_before * fs).floor() as i64).max(0);
        let hi = ((centre + RENDER_HALF_WIDTH * bump.sigma_after * fs).ceil() as i64).min(n - 1);
        if lo > hi {
            return;
        }
        let inv_before = -0.5 / (bump.sigma_before * fs).powi(2);
        let inv_after = -0.5 / (bump.sigma_after * fs).powi(2);
        for i in lo..=hi {
            let dt = i as f32 - centre;
            let g = (dt * dt * if dt < 0.0 { inv_before } else { inv_after }).exp();
            let k = i as usize;
            self.x[k] += bump.amp[0] * g;
            self.y[k] += bump.amp[1] * g;
            self.z[k] += bump.amp[2] * g;
        }
    }

    fn add_plateau(&mut self, st: &StPlateau, offset_s: f32, fs: f32) {
        let n = self.x.len() as i64;
        let lo = (((offset_s + st.start()) * fs).floor() as i64).max(0);
        let hi = (((offset_s + st.t_end) * fs).ceil() as i64).min(n - 1);
        for i in lo..=hi {
            let l = st.level(i as f32 / fs - offset_s);
            let k = i as usize;
            self.x[k] += st.amp[0] * l;
            self.y[k] += st.amp[1] * l;
            self.z[k] += st.amp[2] * l;
        }
    }
}

fn render_atrial(dipole: &mut Dipole, atrial: &AtrialActivity, fs: f32) {
    match *atrial {
        AtrialActivity::None => {}
        AtrialActivity::Fibrillation {
            amp,
            freq,
            wobble,
            wobble_hz,
            envelope_hz,
            phase,
            dir,
        } => {
            // Frequency-modulated oscillation with a slowly varying envelope and a second
            // harmonic: chaotic-looking f-waves at 300-480/min.
            let mut theta = phase[0];
            for i in 0..dipole.x.len() {
                let t = i as f32 / fs;
                let f = freq + wobble * (2.0 * PI * wobble_hz * t + phase[1]).sin();
                theta += 2.0 * PI * f / fs;
                let env = 0.75 + 0.25 * (2.0 * PI * envelope_hz * t + phase[2]).sin();
                let v = amp * env * (theta.sin() + 0.35 * (2.0 * theta + phase[1]).sin());
                dipole.x[i] += dir[0] * v;
                dipole.y[i] += dir[1] * v;
                dipole.z[i] += dir[2] * v;
            }
        }
        AtrialActivity::Flutter {
            freq,
            phase_s,
            amp,
            dir,
        } => {
            // Asymmetric triangle: a slow 70 % ramp and a quicker 30 % return, the sawtooth of
            // typical flutter without the unphysiological jump of a true sawtooth.
            const RAMP: f32 = 0.7;
            for i in 0..dipole.x.len() {
                let t = i as f32 / fs;
                let u = ((t - phase_s) * freq).rem_euclid(1.0);
                let tri = if u < RAMP {
                    u / RAMP
                } else {
                    1.0 - (u - RAMP) / (1.0 - RAMP)
                };
                let v = amp * (tri - 0.5);
                dipole.x[i] += dir[0] * v;
                dipole.y[i] += dir[1] * v;
                dipole.z[i] += dir[2] * v;
            }
        }
    }
}

/// Additive noise for one independent lead.
struct NoiseSource {
    wander: [(f32, f32, f32); 3],
    mains_amp: f32,
    mains_phase: f32,
    emg: f32,
}

fn noise_source(rng: &mut ChaCha8Rng, noise: &NoiseConfig, mains_phase: f32) -> NoiseSource {
    // Respiration (0.15-0.4 Hz) plus slower electrode drift.
    let bands = [
        (0.15f32, 0.4f32, 0.6f32),
        (0.05, 0.15, 0.3),
        (0.4, 0.6, 0.1),
    ];
    let wander = bands.map(|(lo, hi, share)| {
        (
            rng.random_range(lo..hi),
            noise.baseline_wander_mv * share * rng.random_range(0.5..1.0f32),
            rng.random_range(0.0..2.0 * PI),
        )
    });
    NoiseSource {
        wander,
        mains_amp: noise.mains_mv * rng.random_range(0.6..1.0f32),
        mains_phase,
        emg: noise.emg_mv,
    }
}

/// Adds `amp * sin(2 pi f t + phase)` to `signal` by rotating phasors instead of calling `sin`
/// per sample: four interleaved phasors (samples 4k, 4k+1, ...) each advance by four samples,
/// so the four rotation chains run in parallel (f64 keeps the phase error far below f32
/// resolution over any record length).
fn add_sinusoid(signal: &mut [f32], amp: f32, freq_hz: f32, phase: f32, fs: f32) {
    const LANES: usize = 4;
    let w = 2.0 * std::f64::consts::PI * freq_hz as f64 / fs as f64;
    let (step_sin, step_cos) = (LANES as f64 * w).sin_cos();
    let mut re = [0.0f64; LANES];
    let mut im = [0.0f64; LANES];
    for k in 0..LANES {
        let ph = phase as f64 + k as f64 * w;
        re[k] = amp as f64 * ph.cos();
        im[k] = amp as f64 * ph.sin();
    }
    let mut chunks = signal.chunks_exact_mut(LANES);
    for chunk in chunks.by_ref() {
        for k in 0..LANES {
            chunk[k] += im[k] as f32;
            let r = re[k] * step_cos - im[k] * step_sin;
            im[k] = re[k] * step_sin + im[k] * step_cos;
            re[k] = r;
        }
    }
    for (k, v) in chunks.into_remainder().iter_mut().enumerate() {
        *v += im[k] as f32;
    }
}

fn add_noise(signal: &mut [f32], src: &NoiseSource, mains_hz: f32, fs: f32, rng: &mut ChaCha8Rng) {
    for &(f, a, ph) in src.wander.iter().filter(|w| w.1 != 0.0) {
        add_sinusoid(signal, a, f, ph, fs);
    }
    if src.mains_amp != 0.0 {
        add_sinusoid(signal, src.mains_amp, mains_hz, src.mains_phase, fs);
    }
    if src.emg != 0.0 {
        for v in signal.iter_mut() {
            let z: f32 = StandardNormal.sample(rng);
            *v += src.emg * z;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Public entry points
// ---------------------------------------------------------------------------------------------

/// Simulates one record of `condition` for a new random patient derived from `seed`.
pub fn simulate(cfg: &SimConfig, condition: Condition, seed: u64) -> SimRecord {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let patient = PatientTraits::random(format!("sim-p{seed}"), &mut rng);
    simulate_patient(
        cfg,
        &patient,
        condition,
        rng.next_u64(),
        format!("sim/{seed}"),
    )
}

/// Simulates one record of `condition` for a given patient; `id` becomes the record id.
pub fn simulate_patient(
    cfg: &SimConfig,
    patient: &PatientTraits,
    condition: Condition,
    seed: u64,
    id: String,
) -> SimRecord {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let fs = cfg.fs as f32;
    let n = (cfg.duration_s * cfg.fs).round().max(0.0) as usize;
    let duration = n as f32 / fs;
    let plan = build_plan(condition, patient, duration, &mut rng);

    let mut dipole = Dipole {
        x: vec![0.0; n],
        y: vec![0.0; n],
        z: vec![0.0; n],
    };
    for beat in &plan.beats {
        let tpl = &plan.templates[beat.template];
        if beat.with_p {
            for b in &tpl.p {
                dipole.add_bump(b, beat.qrs_onset, fs);
            }
        }
        for b in &tpl.qrs {
            dipole.add_bump(b, beat.qrs_onset, fs);
        }
        dipole.add_bump(&tpl.t, beat.qrs_onset, fs);
        if let Some(st) = &tpl.st {
            dipole.add_plateau(st, beat.qrs_onset, fs);
        }
    }
    render_atrial(&mut dipole, &plan.atrial, fs);

    // Independent leads: I, II, V1..V6.
    let mut lead_i = dipole.x.clone();
    let mut lead_ii: Vec<f32> = dipole
        .x
        .iter()
        .zip(&dipole.y)
        .map(|(&x, &y)| 0.5 * x + SQRT3_2 * y)
        .collect();
    let pv = precordial_vectors();
    let mut precordial: Vec<Vec<f32>> = pv
        .iter()
        .map(|v| {
            (0..n)
                .map(|i| v[0] * dipole.x[i] + v[1] * dipole.y[i] + v[2] * dipole.z[i])
                .collect()
        })
        .collect();

    let noise_scale = if cfg.noise.random_scale {
        rng.random_range(0.2..1.0f32)
    } else {
        1.0
    };
    let applied_noise = NoiseConfig {
        baseline_wander_mv: cfg.noise.baseline_wander_mv * noise_scale,
        mains_mv: cfg.noise.mains_mv * noise_scale,
        mains_hz: cfg.noise.mains_hz,
        emg_mv: cfg.noise.emg_mv * noise_scale,
        random_scale: false,
    };
    let mains_phase = rng.random_range(0.0..2.0 * PI);
    for signal in std::iter::once(&mut lead_i)
        .chain(std::iter::once(&mut lead_ii))
        .chain(precordial.iter_mut())
    {
        let src = noise_source(&mut rng, &applied_noise, mains_phase);
        add_noise(signal, &src, applied_noise.mains_hz, fs, &mut rng);
    }

    let lead_iii: Vec<f32> = lead_ii.iter().zip(&lead_i).map(|(&b, &a)| b - a).collect();
    let avr: Vec<f32> = lead_i
        .iter()
        .zip(&lead_ii)
        .map(|(&a, &b)| -(a + b) / 2.0)
        .collect();
    let avl: Vec<f32> = lead_i
        .iter()
        .zip(&lead_ii)
        .map(|(&a, &b)| a - b / 2.0)
        .collect();
    let avf: Vec<f32> = lead_i
        .iter()
        .zip(&lead_ii)
        .map(|(&a, &b)| b - a / 2.0)
        .collect();
    let mut signals = vec![lead_i, lead_ii, lead_iii, avr, avl, avf];
    signals.extend(precordial);

    let truth = build_truth(condition, patient, &plan, n, fs, applied_noise);
    let record = build_record(id, cfg.fs, signals, &truth, n);
    SimRecord { record, truth }
}

fn to_sample(t: f32, fs: f32) -> i64 {
    (t * fs).round() as i64
}

fn build_truth(
    condition: Condition,
    patient: &PatientTraits,
    plan: &Plan,
    n: usize,
    fs: f32,
    noise: NoiseConfig,
) -> SimTruth {
    let mut beats = Vec::new();
    let mut peaks = Vec::new();
    for beat in &plan.beats {
        let tpl = &plan.templates[beat.template];
        let peak_t = beat.qrs_onset + tpl.qrs_peak();
        let peak = to_sample(peak_t, fs);
        if peak < 0 || peak >= n as i64 {
            continue;
        }
        peaks.push(peak_t);
        let (qa, qb) = tpl.qrs_span();
        let (ta, tb) = tpl.t_span();
        let p = if beat.with_p {
            tpl.p_span().map(|(pa, pb)| {
                let p_peak = peak_of(&tpl.p, pa, pb);
                WaveSpan {
                    onset: to_sample(beat.qrs_onset + pa, fs),
                    peak: to_sample(beat.qrs_onset + p_peak, fs),
                    offset: to_sample(beat.qrs_onset + pb, fs),
                }
            })
        } else {
            None
        };
        beats.push(BeatTruth {
            kind: beat.kind,
            p,
            qrs: WaveSpan {
                onset: to_sample(beat.qrs_onset + qa, fs),
                peak,
                offset: to_sample(beat.qrs_onset + qb, fs),
            },
            t: WaveSpan {
                onset: to_sample(beat.qrs_onset + ta, fs),
                peak: to_sample(beat.qrs_onset + tpl.t.centre, fs),
                offset: to_sample(beat.qrs_onset + tb, fs),
            },
        });
    }
    let rr_ms: Vec<f32> = peaks.windows(2).map(|w| (w[1] - w[0]) * 1000.0).collect();
    let mean_rr_s = if rr_ms.is_empty() {
        plan.planned_rr_s
    } else {
        rr_ms.iter().sum::<f32>() / rr_ms.len() as f32 / 1000.0
    };
    let heart_rate_bpm = 60.0 / mean_rr_s;
    let dom = &plan.templates[plan.dominant];
    let (qa, qb) = dom.qrs_span();
    let qt_ms = (plan.qt_s - qa) * 1000.0;
    let st_shift = plan.st_territory.as_ref().map(|territory| {
        let levels = st_levels(dom);
        let elevation = condition == Condition::StElevation;
        let mut leads = Vec::new();
        let mut max_shift = 0.0f32;
        for (k, &l) in levels.iter().enumerate() {
            let shift = if elevation { l } else { -l };
            if shift >= 0.1 {
                leads.push(STANDARD_LEADS[k].to_string());
                if shift > max_shift.abs() {
                    max_shift = l;
                }
            }
        }
        StShiftTruth {
            territory: territory.clone(),
            leads,
            max_shift_mv: max_shift,
        }
    });
    SimTruth {
        condition,
        patient: patient.clone(),
        beats,
        heart_rate_bpm,
        pr_ms: plan.pr_s.map(|pr| {
            // PR runs from P onset to QRS onset.
            let (pa, _) = dom.p_span().unwrap_or((-pr, 0.0));
            (qa - pa) * 1000.0
        }),
        qrs_ms: (qb - qa) * 1000.0,
        qt_ms,
        qtc_ms: qt_ms / mean_rr_s.sqrt(),
        axis_deg: dom.frontal_axis(),
        sokolow_lyon_mv: sokolow_lyon(dom),
        st_shift,
        flutter_conduction: plan.flutter_conduction,
        atrial_rate_per_min: plan.atrial_rate_per_min,
        noise,
        rr_ms,
    }
}

fn peak_of(bumps: &[Bump], a: f32, b: f32) -> f32 {
    let mut best = (a, -1.0f32);
    let mut t = a;
    while t <= b {
        let m = bumps.iter().fold([0.0f32; 3], |mut acc, bump| {
            let v = bump.value(t);
            for k in 0..3 {
                acc[k] += v[k];
            }
            acc
        });
        let mag = m[0] * m[0] + m[1] * m[1] + m[2] * m[2];
        if mag > best.1 {
            best = (t, mag);
        }
        t += 0.001;
    }
    best.0
}

fn axis_statement(axis: f32) -> &'static str {
    if axis < -30.0 {
        "left axis deviation"
    } else if axis > 90.0 {
        "right axis deviation"
    } else {
        "normal"
    }
}

fn rhythm_name(truth: &SimTruth) -> String {
    match truth.condition {
        Condition::AtrialFibrillation => "atrial fibrillation".into(),
        Condition::AtrialFlutter => "atrial flutter".into(),
        Condition::SinusBradycardia => "sinus bradycardia".into(),
        Condition::SinusTachycardia => "sinus tachycardia".into(),
        _ => "sinus rhythm".into(),
    }
}

fn diagnoses(truth: &SimTruth) -> Vec<String> {
    let mut d = Vec::new();
    let rhythm = match truth.condition {
        Condition::AtrialFlutter => format!(
            "Rhythm: Atrial flutter with {}:1 AV conduction.",
            truth.flutter_conduction.unwrap_or(2)
        ),
        _ => format!("Rhythm: {}.", capitalise(&rhythm_name(truth))),
    };
    d.push(rhythm);
    d.push(format!(
        "Electric axis of the heart: {}.",
        axis_statement(truth.axis_deg)
    ));
    match truth.condition {
        Condition::FirstDegreeAvBlock => d.push("I degree AV block.".into()),
        Condition::Lbbb => d.push("Complete left bundle branch block.".into()),
        Condition::Rbbb => d.push("Complete right bundle branch block.".into()),
        Condition::Lvh => d.push("Left ventricular hypertrophy.".into()),
        Condition::PrematureVentricular => d.push("Premature ventricular contractions.".into()),
        Condition::PrematureAtrial => d.push("Premature atrial contractions.".into()),
        Condition::StElevation | Condition::StDepression => {
            if let Some(st) = &truth.st_shift {
                // Elevation follows a coronary territory; diffuse subendocardial depression
                // does not, so it is reported by lead only.
                d.push(if truth.condition == Condition::StElevation {
                    format!(
                        "ST elevation in the {} leads ({}).",
                        st.territory,
                        st.leads.join(", ")
                    )
                } else {
                    format!("ST depression in leads {}.", st.leads.join(", "))
                });
            }
        }
        _ => {}
    }
    d
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

fn report(truth: &SimTruth, diagnoses: &[String]) -> String {
    let rhythm = match truth.condition {
        Condition::AtrialFlutter => format!(
            "Atrial flutter with {}:1 conduction",
            truth.flutter_conduction.unwrap_or(2)
        ),
        _ => capitalise(&rhythm_name(truth)),
    };
    let findings: Vec<String> = diagnoses
        .iter()
        .skip(2)
        .map(|s| {
            let s = s.trim_end_matches('.');
            let mut c = s.chars();
            match c.next() {
                // Lower-case the first letter unless it starts an abbreviation ("ST", "I").
                Some(f) if !s.starts_with("ST") && !s.starts_with("I ") => {
                    f.to_lowercase().collect::<String>() + c.as_str()
                }
                _ => s.to_string(),
            }
        })
        .collect();
    let with = if findings.is_empty() {
        String::new()
    } else {
        format!(" with {}", findings.join(" and "))
    };
    let pr = truth
        .pr_ms
        .map(|p| format!("PR {:.0} ms, ", p))
        .unwrap_or_default();
    format!(
        "{rhythm} at {:.0} bpm{with}; {pr}QRS {:.0} ms, QT/QTc {:.0}/{:.0} ms, {} axis ({:+.0} degrees).",
        truth.heart_rate_bpm,
        truth.qrs_ms,
        truth.qt_ms,
        truth.qtc_ms,
        match axis_statement(truth.axis_deg) {
            "normal" => "normal",
            "left axis deviation" => "left-deviated",
            _ => "right-deviated",
        },
        truth.axis_deg
    )
}

/// The record's abnormal segments from its beats' kinds (see
/// [`crate::flexible::abnormal_segments`]), merged.
fn true_segments(truth: &SimTruth, fs: f64, n: usize) -> Vec<[f64; 2]> {
    let flags: Vec<(f64, bool)> = truth
        .beats
        .iter()
        .map(|b| (b.qrs.peak as f64 / fs, b.kind != BeatKind::Sinus))
        .collect();
    let segments = crate::flexible::abnormal_segments(&flags, n as f64 / fs);
    crate::flexible::merged(segments)
        .into_iter()
        .map(|s| [s.start_s, s.end_s])
        .collect()
}

fn build_record(id: String, fs: f64, signals: Vec<Vec<f32>>, truth: &SimTruth, n: usize) -> Record {
    let diagnoses = diagnoses(truth);
    let meta = RecordMeta {
        patient_id: Some(truth.patient.patient_id.clone()),
        age: Some(truth.patient.age),
        sex: Some(truth.patient.sex.clone()),
        report: Some(report(truth, &diagnoses)),
        diagnoses,
        scp_codes: vec![(truth.condition.scp_code().to_string(), 100.0)],
        superclasses: truth.condition.superclasses(),
        snomed: Vec::new(),
        fold: None,
        rhythm: Some(rhythm_name(truth)),
        heart_rate_bpm: Some(truth.heart_rate_bpm),
        pr_ms: truth.pr_ms,
        qrs_ms: Some(truth.qrs_ms),
        qt_ms: Some(truth.qt_ms),
        axis_deg: Some(truth.axis_deg),
        abnormal_segments: Some(true_segments(truth, fs, n)),
    };
    let inside = |s: &WaveSpan| s.onset >= 0 && s.offset < n as i64;
    let as_wave = |kind: WaveKind, s: &WaveSpan| Wave {
        kind,
        onset: s.onset as usize,
        peak: s.peak as usize,
        offset: s.offset as usize,
    };
    let mut waves = Vec::new();
    for beat in &truth.beats {
        if let Some(p) = beat.p.as_ref().filter(|p| inside(p)) {
            waves.push(as_wave(WaveKind::P, p));
        }
        if inside(&beat.qrs) {
            waves.push(as_wave(WaveKind::QRS, &beat.qrs));
        }
        if inside(&beat.t) {
            waves.push(as_wave(WaveKind::T, &beat.t));
        }
    }
    waves.sort_by_key(|w| (w.onset, w.kind as u8));
    Record {
        id,
        source: SourceKind::Synthetic,
        fs,
        leads: STANDARD_LEADS.iter().map(|s| s.to_string()).collect(),
        signals,
        meta,
        // The dipole model delineates all leads at once, so every lead carries the same waves.
        waves: STANDARD_LEADS
            .iter()
            .map(|l| (l.to_string(), waves.clone()))
            .collect(),
    }
}

/// Generates `n` records with conditions drawn from `cfg.mix`; with probability
/// `cfg.repeat_patient_prob` a record reuses an earlier patient (same body, new condition), so
/// some patients have several records. Records are named `sim/000000`, `sim/000001`, ...;
/// patients `sim-p00000`, ... The result depends only on `(cfg, n, seed)`.
pub fn generate(cfg: &SimConfig, n: usize, seed: u64) -> Vec<Record> {
    generate_with_truth(cfg, n, seed)
        .into_iter()
        .map(|s| s.record)
        .collect()
}

/// [`generate`] that also returns each record's [`SimTruth`].
pub fn generate_with_truth(cfg: &SimConfig, n: usize, seed: u64) -> Vec<SimRecord> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mix: Vec<(Condition, f64)> = cfg
        .mix
        .iter()
        .filter(|(_, w)| w.is_finite() && **w > 0.0)
        .map(|(c, w)| (*c, *w))
        .collect();
    let total: f64 = mix.iter().map(|(_, w)| w).sum();
    let mut patients: Vec<PatientTraits> = Vec::new();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let condition = if mix.is_empty() {
            Condition::NormalSinus
        } else {
            let mut u = rng.random_range(0.0..total);
            let mut pick = mix[mix.len() - 1].0;
            for (c, w) in &mix {
                if u < *w {
                    pick = *c;
                    break;
                }
                u -= w;
            }
            pick
        };
        let reuse =
            !patients.is_empty() && rng.random_bool(cfg.repeat_patient_prob.clamp(0.0, 1.0));
        let patient = if reuse {
            patients[rng.random_range(0..patients.len())].clone()
        } else {
            let p = PatientTraits::random(format!("sim-p{:05}", patients.len()), &mut rng);
            patients.push(p.clone());
            p
        };
        let record_seed = rng.next_u64();
        out.push(simulate_patient(
            cfg,
            &patient,
            condition,
            record_seed,
            format!("sim/{i:06}"),
        ));
    }
    out
}
