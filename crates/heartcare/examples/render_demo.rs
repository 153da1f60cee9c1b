//! Renders a synthetic 12-lead ECG as 6 x 2 and 3 x 4 + rhythm strip printed pages.
//!
//! `cargo run -p beatlab-heartcare --example render_demo -- out.png` writes `out.png` (6 x 2),
//! `out_3x4.png` (3 x 4 + rhythm strip), both at the paper's native resolution, and
//! `out_384.png`, the 6 x 2 page as the vision encoder sees it (384 x 384).

use std::path::PathBuf;

use beatlab_ecg::{Record, RecordMeta, STANDARD_LEADS, SourceKind};
use beatlab_heartcare::render::{RenderConfig, draw_paper, render};

/// One beat as a sum of Gaussians (P, Q, R, S, T): (centre s after the beat start, width s,
/// amplitude mV) scaled per lead, in the spirit of ECGSYN.
fn beat_value(t: f32, lead_gain: [f32; 5]) -> f32 {
    const WAVES: [(f32, f32); 5] = [
        (0.10, 0.025),
        (0.225, 0.008),
        (0.25, 0.011),
        (0.275, 0.009),
        (0.53, 0.045),
    ];
    WAVES
        .iter()
        .zip(lead_gain)
        .map(|(&(centre, width), amp)| amp * (-((t - centre) / width).powi(2) / 2.0).exp())
        .sum()
}

fn synthetic_record() -> Record {
    let fs = 500.0;
    let n = 5000;
    // Per-lead amplitudes of P, Q, R, S, T (mV), roughly a normal adult 12-lead.
    let gains: [[f32; 5]; 12] = [
        [0.10, -0.05, 0.80, -0.10, 0.25],
        [0.15, -0.10, 1.30, -0.20, 0.35],
        [0.05, -0.05, 0.50, -0.15, 0.10],
        [-0.12, 0.05, -1.00, 0.10, -0.30],
        [0.03, -0.05, 0.30, -0.05, 0.08],
        [0.10, -0.08, 0.90, -0.15, 0.22],
        [0.08, 0.00, 0.25, -0.90, -0.10],
        [0.10, 0.00, 0.45, -1.40, 0.40],
        [0.10, -0.05, 0.80, -0.90, 0.45],
        [0.10, -0.08, 1.40, -0.50, 0.45],
        [0.10, -0.10, 1.50, -0.25, 0.35],
        [0.10, -0.10, 1.20, -0.10, 0.30],
    ];
    let rr = 0.8; // 75 bpm
    let signals = gains
        .iter()
        .map(|gain| {
            (0..n)
                .map(|i| {
                    let t = i as f32 / fs as f32;
                    let phase = t % rr;
                    // A little baseline wander and noise-free beats.
                    beat_value(phase, *gain) + 0.03 * (2.0 * std::f32::consts::PI * 0.3 * t).sin()
                })
                .collect()
        })
        .collect();
    Record {
        id: "synthetic/demo".into(),
        source: SourceKind::Synthetic,
        fs,
        leads: STANDARD_LEADS.iter().map(|s| s.to_string()).collect(),
        signals,
        meta: RecordMeta::default(),
        waves: Vec::new(),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "render_demo.png".into()),
    );
    let stem = out.with_extension("");
    let record = synthetic_record();
    let mut six = RenderConfig::six_by_two(384, 384);
    six.px_per_mm = 6.0;
    draw_paper(&record, &six)?.image.write_png(&out)?;
    let mut three = RenderConfig::three_by_four(384, 384);
    three.px_per_mm = 6.0;
    let three_path = PathBuf::from(format!("{}_3x4.png", stem.display()));
    draw_paper(&record, &three)?.image.write_png(&three_path)?;
    let small_path = PathBuf::from(format!("{}_384.png", stem.display()));
    render(&record, &RenderConfig::six_by_two(384, 384))?.write_png(&small_path)?;
    println!(
        "wrote {}, {}, {}",
        out.display(),
        three_path.display(),
        small_path.display()
    );
    Ok(())
}
