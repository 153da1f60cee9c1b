//! DSP tests: agreement with reference values computed by scipy 1.17.1 (numbers pasted below,
//! produced by the snippet in each test's comment), and properties that hold for any correct
//! implementation (passband gain, stopband attenuation, zero phase, band-limited resampling).

use std::f64::consts::PI;

use beatlab_ecg::dsp::{ButterBand, DspError, butter, notch, rate_ratio, resample, resample_poly};

fn assert_close(got: &[f32], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= tol,
            "{what}[{i}]: got {g}, scipy {w}"
        );
    }
}

/// `x[i] = sin(0.7 i) + 0.1 i`, i = 0..16, as f32.
fn ramp_sine() -> Vec<f32> {
    (0..16)
        .map(|i| ((0.7 * i as f64).sin() + 0.1 * i as f64) as f32)
        .collect()
}

#[test]
fn resample_poly_matches_scipy() {
    // scipy.signal.resample_poly(x, up, down) for the ramp sine.
    let x = ramp_sine();
    let check = |up: usize, down: usize, want: &[f64]| {
        let got = resample_poly(&x, up, down).unwrap();
        assert_close(&got, want, 2e-6, &format!("resample_poly {up}/{down}"));
    };
    check(
        1,
        2,
        &[
            0.13803577802744516,
            1.1635985253035157,
            0.7426845553116228,
            -0.2733324878456206,
            0.1664641630003666,
            1.6646836339147315,
            2.041247393061775,
            1.069257585981457,
        ],
    );
    let up5: [f64; 40] = [
        7.596789967160574e-18,
        0.2393029492927014,
        0.5773627387261765,
        0.8898613350055372,
        1.0913618307298,
        1.1862208741279638,
        1.2131113298217044,
        1.1944190438793822,
        1.1138662199715008,
        0.9545669885729415,
        0.7354662749614778,
        0.4929846594185952,
        0.25873676443803584,
        0.04563599523706801,
        -0.1375241830221987,
        -0.2717524432699387,
        -0.3359941969885119,
        -0.320138113526385,
        -0.226457109808152,
        -0.061132247181683766,
        0.16884312223064837,
        0.4498522290539117,
        0.7594049055760527,
        1.0744377106471117,
        1.3788703805210707,
        1.6580644914548792,
        1.888742887693935,
        2.0442281222543928,
        2.113939195209281,
        2.11247607562228,
        2.055935358881565,
        1.9374585265197923,
        1.7433843748300655,
        1.4867549203162824,
        1.2301483616755007,
        1.0341931401858633,
        0.8911923994280485,
        0.7297357502923693,
        0.4918595879631872,
        0.21297702578560504,
    ];
    check(5, 2, &up5);
    check(
        250,
        257,
        &[
            0.005108332809634476,
            0.7603293955124192,
            1.197753493031344,
            1.1404809306792607,
            0.6717832759861667,
            0.07295002181161254,
            -0.30567078520059254,
            -0.229889198684593,
            0.32314321868081497,
            1.113030770849456,
            1.8283541402719892,
            2.1179633084518636,
            1.9639870651650952,
            1.3753727418958803,
            0.8961461881893309,
            0.3356460211299766,
        ],
    );
}

#[test]
fn butterworth_and_filtfilt_match_scipy() {
    let sos = butter(3, ButterBand::Bandpass(0.5, 40.0), 250.0).unwrap();
    assert_eq!(sos.sections.len(), 3);
    // abs(scipy.signal.sosfreqz(butter(3, [0.5, 40], 'bandpass', output='sos', fs=250),
    //     [0.1, 0.5, 5, 20, 40, 60], fs=250)[1])
    let check_gain = |f: f64, want: f64| {
        let g = sos.gain_at(f, 250.0);
        assert!((g - want).abs() < 1e-9, "gain at {f} Hz: {g}, scipy {want}");
    };
    check_gain(0.1, 0.007738906268831155);
    check_gain(0.5, 0.7071067811856803);
    check_gain(5.0, 0.9999999999948674);
    check_gain(20.0, 0.9959988828376695);
    check_gain(40.0, 0.7071067811865471);
    check_gain(60.0, 0.19247004991221267);

    // scipy.signal.sosfiltfilt(sos, y)[[0, 1, 50, 100, 199]] with
    // y = sin(2 pi 3 i/250) + 0.5 sin(2 pi 0.2 i/250) + 0.2 sin(2 pi 60 i/250), i < 200 (f32).
    let y: Vec<f32> = (0..200)
        .map(|i| {
            let t = i as f64 / 250.0;
            ((2.0 * PI * 3.0 * t).sin()
                + 0.5 * (2.0 * PI * 0.2 * t).sin()
                + 0.2 * (2.0 * PI * 60.0 * t).sin()) as f32
        })
        .collect();
    let out = sos.filtfilt(&y);
    let picked: Vec<f32> = [0, 1, 50, 100, 199].iter().map(|&i| out[i]).collect();
    assert_close(
        &picked,
        &[
            0.37113604506608533,
            0.44949663715409294,
            -0.43868276036800924,
            0.9064194075968963,
            0.3478448246811056,
        ],
        2e-6,
        "sosfiltfilt",
    );
}

#[test]
fn notch_matches_scipy_iirnotch() {
    // scipy.signal.iirnotch(50, 30, fs=500)
    let n = notch(50.0, 30.0, 500.0).unwrap();
    let s = n.sections[0];
    let want_b = [0.9896361753628921, -1.6012649682336106, 0.9896361753628921];
    let want_a = [1.0, -1.6012649682336106, 0.9792723507257841];
    for k in 0..3 {
        assert!((s.b[k] - want_b[k]).abs() < 1e-12 && (s.a[k] - want_a[k]).abs() < 1e-12);
    }
    assert!(n.gain_at(50.0, 500.0) < 1e-9);
    assert!((n.gain_at(10.0, 500.0) - 1.0).abs() < 1e-2);
}

fn sine(freq: f64, fs: f64, n: usize, phase: f64) -> Vec<f32> {
    (0..n)
        .map(|i| (2.0 * PI * freq * i as f64 / fs + phase).sin() as f32)
        .collect()
}

/// Peak amplitude over the middle half (away from edge transients).
fn mid_amplitude(x: &[f32]) -> f32 {
    let n = x.len();
    x[n / 4..3 * n / 4].iter().fold(0.0, |a, &v| a.max(v.abs()))
}

#[test]
fn bandpass_passes_the_centre_and_stops_drift_and_mains() {
    let fs = 250.0;
    let sos = butter(3, ButterBand::Bandpass(0.5, 40.0), fs).unwrap();
    // Geometric centre of the band: the analogue prototype maps it to unit gain exactly.
    let centre = (0.5f64 * 40.0).sqrt();
    assert!((sos.gain_at(centre, fs) - 1.0).abs() < 1e-9);
    // Forward-backward filtering applies |H|^2: still ~1 across the passband.
    for f in [centre, 10.0, 20.0] {
        let y = sos.filtfilt(&sine(f, fs, 5000, 0.3));
        let a = mid_amplitude(&y);
        assert!((a - 1.0).abs() < 0.02, "{f} Hz amplitude {a}");
    }
    // 0.05 Hz drift (200 s so the record holds 10 cycles) and 100 Hz interference vanish.
    let drift = sos.filtfilt(&sine(0.05, fs, 50_000, 0.0));
    assert!(
        mid_amplitude(&drift) < 1e-3,
        "drift {}",
        mid_amplitude(&drift)
    );
    let hum = sos.filtfilt(&sine(100.0, fs, 5000, 0.0));
    assert!(mid_amplitude(&hum) < 1e-3, "100 Hz {}", mid_amplitude(&hum));
}

#[test]
fn filtfilt_is_zero_phase() {
    // A symmetric pulse stays symmetric about the same centre; one-way filtering shifts it.
    let fs = 250.0;
    let sos = butter(3, ButterBand::Bandpass(0.5, 40.0), fs).unwrap();
    // Long enough that the slow 0.5 Hz edge transients have died out at the centre.
    let n = 5001;
    let c = 2500usize;
    let pulse: Vec<f32> = (0..n)
        .map(|i| {
            let d = (i as f64 - c as f64) / 6.0;
            (-0.5 * d * d).exp() as f32
        })
        .collect();
    let y = sos.filtfilt(&pulse);
    for k in 1..200 {
        let d = (y[c + k] - y[c - k]).abs();
        assert!(d < 1e-5, "asymmetric at {k}: {d}");
    }
    let argmax = |v: &[f32]| (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap();
    assert_eq!(argmax(&y), c);
    assert!(
        argmax(&sos.filter(&pulse)) > c,
        "causal filter should delay the peak"
    );
}

#[test]
fn filtfilt_handles_short_and_offset_inputs() {
    let sos = butter(3, ButterBand::Bandpass(0.5, 40.0), 250.0).unwrap();
    assert!(sos.filtfilt(&[]).is_empty());
    assert_eq!(sos.filtfilt(&[1.0]).len(), 1);
    let y = sos.filtfilt(&[0.5, 1.0, 0.2, -0.3, 0.0]);
    assert!(y.iter().all(|v| v.is_finite()));
    // A constant offset is removed without an edge transient (odd extension + steady state).
    let y = sos.filtfilt(&vec![3.0f32; 2000]);
    assert!(
        y.iter().all(|v| v.abs() < 1e-4),
        "max {}",
        mid_amplitude(&y)
    );
}

#[test]
fn resampling_reproduces_band_limited_sines() {
    // check(from, to, freq): the resampled sine equals the sine sampled at the new rate.
    let check = |from: f64, to: f64, freq: f64| {
        let n = (10.0 * from) as usize;
        let x = sine(freq, from, n, 0.4);
        let y = resample(&x, from, to).unwrap();
        let (up, down) = rate_ratio(from, to).unwrap();
        assert_eq!(y.len(), (n * up).div_ceil(down), "{from}->{to} length");
        let expect = sine(freq, to, y.len(), 0.4);
        let margin = y.len() / 10; // the zero-padded edges are allowed to differ
        for i in margin..y.len() - margin {
            assert!(
                (y[i] - expect[i]).abs() < 2e-3,
                "{from}->{to} Hz, {freq} Hz sine, sample {i}: {} vs {}",
                y[i],
                expect[i]
            );
        }
    };
    check(500.0, 250.0, 7.0);
    check(500.0, 250.0, 40.0);
    check(100.0, 250.0, 12.0);
    check(257.0, 250.0, 9.0);
    check(360.0, 250.0, 25.0);
    check(250.0, 500.0, 60.0);
    // Content above the new Nyquist is removed, not aliased: 200 Hz at 500 -> 250 Hz.
    let y = resample(&sine(200.0, 500.0, 5000, 0.0), 500.0, 250.0).unwrap();
    assert!(mid_amplitude(&y) < 0.01, "aliased {}", mid_amplitude(&y));
}

#[test]
fn output_length_is_ceil_n_up_over_down() {
    for n in [1usize, 2, 7, 100, 999, 1000, 5000] {
        for (up, down) in [(1usize, 2usize), (5, 2), (250, 257), (3, 7), (2, 1)] {
            let y = resample_poly(&vec![1.0; n], up, down).unwrap();
            assert_eq!(y.len(), (n * up).div_ceil(down), "n {n}, {up}/{down}");
        }
    }
    assert_eq!(resample_poly(&[1.0, 2.0], 3, 3).unwrap(), vec![1.0, 2.0]);
}

#[test]
fn rate_ratios() {
    let check = |from: f64, to: f64, want: (usize, usize)| {
        assert_eq!(rate_ratio(from, to).unwrap(), want, "{from} -> {to}");
    };
    check(500.0, 250.0, (1, 2));
    check(100.0, 250.0, (5, 2));
    check(257.0, 250.0, (250, 257));
    check(360.0, 250.0, (25, 36));
    check(250.0, 250.0, (1, 1));
    check(128.5, 250.0, (500, 257));
    assert!(matches!(rate_ratio(0.0, 250.0), Err(DspError::BadRate(_))));
    assert!(matches!(
        rate_ratio(f64::NAN, 250.0),
        Err(DspError::BadRate(_))
    ));
    assert!(matches!(
        rate_ratio(250.0, std::f64::consts::PI),
        Err(DspError::IrrationalRatio { .. })
    ));
}

#[test]
fn bad_designs_are_errors() {
    let fs = 250.0;
    assert!(matches!(
        butter(0, ButterBand::Lowpass(10.0), fs),
        Err(DspError::BadOrder(0))
    ));
    assert!(matches!(
        butter(3, ButterBand::Lowpass(125.0), fs),
        Err(DspError::BadCorner { .. })
    ));
    assert!(matches!(
        butter(3, ButterBand::Bandpass(40.0, 0.5), fs),
        Err(DspError::BadBand { .. })
    ));
    assert!(matches!(
        butter(3, ButterBand::Highpass(-1.0), fs),
        Err(DspError::BadCorner { .. })
    ));
    assert!(matches!(notch(50.0, 0.0, fs), Err(DspError::BadQuality(_))));
    assert!(matches!(
        resample_poly(&[1.0], 0, 2),
        Err(DspError::ZeroFactor { .. })
    ));
}

#[test]
fn low_and_high_pass_shapes() {
    let fs = 500.0;
    let lp = butter(4, ButterBand::Lowpass(40.0), fs).unwrap();
    let hp = butter(2, ButterBand::Highpass(0.5), fs).unwrap();
    assert!((lp.gain_at(0.001, fs) - 1.0).abs() < 1e-9);
    assert!((lp.gain_at(40.0, fs) - 0.5f64.sqrt()).abs() < 1e-9);
    assert!(lp.gain_at(200.0, fs) < 1e-3);
    assert!((hp.gain_at(0.5, fs) - 0.5f64.sqrt()).abs() < 1e-9);
    assert!((hp.gain_at(100.0, fs) - 1.0).abs() < 1e-6);
    assert!(hp.gain_at(0.01, fs) < 1e-3);
}
