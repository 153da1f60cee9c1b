//! Signal processing primitives the preprocessing is built from: polyphase FIR resampling
//! (the algorithm of `scipy.signal.resample_poly`), Butterworth IIR design as second-order
//! sections (analogue prototype -> frequency transform -> bilinear transform, as
//! `scipy.signal.butter(..., output="sos")`), causal and zero-phase (`sosfiltfilt`) filtering, and
//! a mains notch (`scipy.signal.iirnotch`).
//!
//! Everything works on `f32` signals but computes in `f64`, so long cascades stay accurate.

use std::f64::consts::PI;

use thiserror::Error;

/// Errors of filter design and resampling; every variant names the offending value.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum DspError {
    /// A resampling factor of zero was requested.
    #[error("resampling factors must be positive, got up = {up}, down = {down}")]
    ZeroFactor { up: usize, down: usize },
    /// A sampling rate that is not finite and positive.
    #[error("sampling rate must be finite and positive, got {0} Hz")]
    BadRate(f64),
    /// Two sampling rates whose ratio has no small rational form (denominator <= 10^6).
    #[error("cannot express the rate change {from} Hz -> {to} Hz as a ratio of integers")]
    IrrationalRatio { from: f64, to: f64 },
    /// A filter order outside 1..=20.
    #[error("filter order must be between 1 and 20, got {0}")]
    BadOrder(usize),
    /// A corner frequency that is not strictly between 0 and the Nyquist frequency.
    #[error("corner frequency {hz} Hz must lie strictly between 0 and Nyquist ({nyquist} Hz)")]
    BadCorner { hz: f64, nyquist: f64 },
    /// A band-pass whose low corner is not below its high corner.
    #[error("band-pass low corner {low} Hz must be below its high corner {high} Hz")]
    BadBand { low: f64, high: f64 },
    /// A notch quality factor that is not finite and positive.
    #[error("notch quality factor must be finite and positive, got {0}")]
    BadQuality(f64),
}

// ---------------------------------------------------------------------------------------------
// Resampling
// ---------------------------------------------------------------------------------------------

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The reduced integer ratio `(up, down)` with `to / from = up / down`.
///
/// Integer rates give the exact ratio (500 -> 250 is 1/2, 257 -> 250 is 250/257); fractional
/// rates are scaled by powers of ten until both are integral (at most 10^6).
pub fn rate_ratio(from: f64, to: f64) -> Result<(usize, usize), DspError> {
    for rate in [from, to] {
        if !rate.is_finite() || rate <= 0.0 {
            return Err(DspError::BadRate(rate));
        }
    }
    let mut scale = 1.0;
    while scale <= 1e6 {
        let (a, b) = (from * scale, to * scale);
        if (a - a.round()).abs() < 1e-9 * scale && (b - b.round()).abs() < 1e-9 * scale {
            let (down, up) = (a.round() as usize, b.round() as usize);
            let g = gcd(up, down);
            return Ok((up / g, down / g));
        }
        scale *= 10.0;
    }
    Err(DspError::IrrationalRatio { from, to })
}

/// Zeroth-order modified Bessel function of the first kind (power series; converges fast for
/// the Kaiser window's arguments, which stay below ~20).
fn bessel_i0(x: f64) -> f64 {
    let quarter_x2 = x * x / 4.0;
    let mut term = 1.0;
    let mut sum = 1.0;
    for k in 1..200 {
        term *= quarter_x2 / (k as f64 * k as f64);
        sum += term;
        if term < sum * 1e-17 {
            break;
        }
    }
    sum
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        (PI * x).sin() / (PI * x)
    }
}

/// Windowed-sinc low-pass FIR as `scipy.signal.firwin(numtaps, cutoff, window=("kaiser", beta))`:
/// `cutoff` is relative to Nyquist, the window is the symmetric Kaiser window, and the taps are
/// scaled to unit gain at DC.
pub fn firwin_kaiser_lowpass(numtaps: usize, cutoff: f64, beta: f64) -> Vec<f64> {
    let alpha = 0.5 * (numtaps as f64 - 1.0);
    let i0_beta = bessel_i0(beta);
    let mut taps: Vec<f64> = (0..numtaps)
        .map(|n| {
            let m = n as f64 - alpha;
            let ideal = cutoff * sinc(cutoff * m);
            let window = if numtaps == 1 {
                1.0
            } else {
                let r = 2.0 * n as f64 / (numtaps as f64 - 1.0) - 1.0;
                bessel_i0(beta * (1.0 - r * r).max(0.0).sqrt()) / i0_beta
            };
            ideal * window
        })
        .collect();
    let sum: f64 = taps.iter().sum();
    for t in &mut taps {
        *t /= sum;
    }
    taps
}

/// Polyphase resampling by the rational factor `up / down`, equivalent to
/// `scipy.signal.resample_poly(x, up, down)` with its defaults: a Kaiser-windowed (beta 5.0)
/// sinc low-pass of half-length `10 * max(up, down)` at cutoff `1 / max(up, down)` of Nyquist,
/// zero padding at the edges, and output length `ceil(len * up / down)`.
pub fn resample_poly(x: &[f32], up: usize, down: usize) -> Result<Vec<f32>, DspError> {
    if up == 0 || down == 0 {
        return Err(DspError::ZeroFactor { up, down });
    }
    let g = gcd(up, down);
    let (up, down) = (up / g, down / g);
    if up == 1 && down == 1 {
        return Ok(x.to_vec());
    }
    let n_in = x.len();
    if n_in == 0 {
        return Ok(Vec::new());
    }
    let n_out = (n_in * up).div_ceil(down);
    let max_rate = up.max(down);
    let half_len = 10 * max_rate;
    let mut h = firwin_kaiser_lowpass(2 * half_len + 1, 1.0 / max_rate as f64, 5.0);
    for t in &mut h {
        *t *= up as f64;
    }
    // scipy pads the filter in front so that output sample 0 lands on input sample 0; the
    // full upfirdn output is then trimmed by `pre_remove` samples.
    let pre_pad = down - half_len % down;
    let pre_remove = (half_len + pre_pad) / down;

    // Output sample m of the trimmed signal is sample k = (m + pre_remove) * down of the
    // zero-stuffed, filtered signal; with the pre-padding, tap index j of `h` sits at
    // k - pre_pad - i * up for input sample i.
    let mut y = Vec::with_capacity(n_out);
    let h_len = h.len() as isize;
    for m in 0..n_out {
        let k = ((m + pre_remove) * down) as isize - pre_pad as isize;
        // Input samples i with 0 <= k - i*up < h_len.
        let i_max = if k < 0 { -1 } else { k / up as isize };
        let i_min_num = k - h_len + 1;
        let i_min = if i_min_num <= 0 {
            0
        } else {
            (i_min_num + up as isize - 1) / up as isize
        };
        let i_max = i_max.min(n_in as isize - 1);
        let mut acc = 0.0f64;
        let mut i = i_min;
        while i <= i_max {
            acc += h[(k - i * up as isize) as usize] * x[i as usize] as f64;
            i += 1;
        }
        y.push(acc as f32);
    }
    Ok(y)
}

/// Resamples from `from_hz` to `to_hz` with [`resample_poly`] at the reduced rational factor.
pub fn resample(x: &[f32], from_hz: f64, to_hz: f64) -> Result<Vec<f32>, DspError> {
    let (up, down) = rate_ratio(from_hz, to_hz)?;
    resample_poly(x, up, down)
}

// ---------------------------------------------------------------------------------------------
// IIR design
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
struct Complex {
    re: f64,
    im: f64,
}

impl Complex {
    const fn new(re: f64, im: f64) -> Self {
        Self { re, im }
    }
    fn add(self, o: Self) -> Self {
        Self::new(self.re + o.re, self.im + o.im)
    }
    fn sub(self, o: Self) -> Self {
        Self::new(self.re - o.re, self.im - o.im)
    }
    fn mul(self, o: Self) -> Self {
        Self::new(
            self.re * o.re - self.im * o.im,
            self.re * o.im + self.im * o.re,
        )
    }
    fn scale(self, s: f64) -> Self {
        Self::new(self.re * s, self.im * s)
    }
    fn div(self, o: Self) -> Self {
        let d = o.re * o.re + o.im * o.im;
        Self::new(
            (self.re * o.re + self.im * o.im) / d,
            (self.im * o.re - self.re * o.im) / d,
        )
    }
    fn abs(self) -> f64 {
        self.re.hypot(self.im)
    }
    /// Principal square root.
    fn sqrt(self) -> Self {
        let r = self.abs();
        let re = ((r + self.re) / 2.0).max(0.0).sqrt();
        let im = ((r - self.re) / 2.0).max(0.0).sqrt();
        Self::new(re, if self.im < 0.0 { -im } else { im })
    }
}

/// One biquad `b0 + b1 z^-1 + b2 z^-2` over `1 + a1 z^-1 + a2 z^-2` (a0 normalised to 1),
/// in the row layout of scipy's `sos` arrays.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Biquad {
    pub b: [f64; 3],
    pub a: [f64; 3],
}

/// A cascade of second-order sections.
#[derive(Debug, Clone, PartialEq)]
pub struct Sos {
    pub sections: Vec<Biquad>,
}

/// Which Butterworth response to design.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ButterBand {
    Lowpass(f64),
    Highpass(f64),
    Bandpass(f64, f64),
}

/// Digital Butterworth filter as second-order sections, like
/// `scipy.signal.butter(order, corners, btype, output="sos", fs=fs)`: the order-`order`
/// analogue prototype, pre-warped corners, the low/high/band-pass transform, and the bilinear
/// transform. A band-pass of order N has 2N poles (N sections).
pub fn butter(order: usize, band: ButterBand, fs: f64) -> Result<Sos, DspError> {
    if !(1..=20).contains(&order) {
        return Err(DspError::BadOrder(order));
    }
    if !fs.is_finite() || fs <= 0.0 {
        return Err(DspError::BadRate(fs));
    }
    let nyquist = fs / 2.0;
    let check = |hz: f64| {
        if hz.is_finite() && hz > 0.0 && hz < nyquist {
            Ok(())
        } else {
            Err(DspError::BadCorner { hz, nyquist })
        }
    };
    match band {
        ButterBand::Lowpass(f) | ButterBand::Highpass(f) => check(f)?,
        ButterBand::Bandpass(lo, hi) => {
            check(lo)?;
            check(hi)?;
            if lo >= hi {
                return Err(DspError::BadBand { low: lo, high: hi });
            }
        }
    }
    // Work at fs = 2 (corners normalised to Nyquist), as scipy does; the design is invariant.
    let warp = |hz: f64| 4.0 * (PI * (hz / nyquist) / 2.0).tan();

    // Analogue prototype: poles on the unit circle's left half, no zeros, unit gain.
    let proto: Vec<Complex> = (0..order)
        .map(|k| {
            let m = -(order as f64) + 1.0 + 2.0 * k as f64;
            let theta = PI * m / (2.0 * order as f64);
            // -exp(j theta)
            Complex::new(-theta.cos(), -theta.sin())
        })
        .collect();

    let (zeros, poles, gain): (Vec<Complex>, Vec<Complex>, f64) = match band {
        ButterBand::Lowpass(f) => {
            let wo = warp(f);
            let poles = proto.iter().map(|p| p.scale(wo)).collect();
            (Vec::new(), poles, wo.powi(order as i32))
        }
        ButterBand::Highpass(f) => {
            let wo = warp(f);
            let poles: Vec<Complex> = proto
                .iter()
                .map(|p| Complex::new(wo, 0.0).div(*p))
                .collect();
            // Gain: real(prod(-z) / prod(-p)) with no zeros = 1 / real(prod(-p)).
            let prod = proto
                .iter()
                .fold(Complex::new(1.0, 0.0), |acc, p| acc.mul(p.scale(-1.0)));
            let zeros = vec![Complex::new(0.0, 0.0); order];
            (zeros, poles, 1.0 / prod.re)
        }
        ButterBand::Bandpass(lo, hi) => {
            let (wl, wh) = (warp(lo), warp(hi));
            let bw = wh - wl;
            let wo2 = Complex::new(wl * wh, 0.0);
            let mut poles = Vec::with_capacity(2 * order);
            let mut second = Vec::with_capacity(order);
            for p in &proto {
                let p_lp = p.scale(bw / 2.0);
                let root = p_lp.mul(p_lp).sub(wo2).sqrt();
                poles.push(p_lp.add(root));
                second.push(p_lp.sub(root));
            }
            poles.extend(second);
            let zeros = vec![Complex::new(0.0, 0.0); order];
            (zeros, poles, bw.powi(order as i32))
        }
    };

    // Bilinear transform at fs = 2 (fs2 = 4).
    let fs2 = Complex::new(4.0, 0.0);
    let mut z_digital: Vec<Complex> = zeros.iter().map(|z| fs2.add(*z).div(fs2.sub(*z))).collect();
    let p_digital: Vec<Complex> = poles.iter().map(|p| fs2.add(*p).div(fs2.sub(*p))).collect();
    z_digital.extend(std::iter::repeat_n(
        Complex::new(-1.0, 0.0),
        poles.len() - zeros.len(),
    ));
    let num = zeros
        .iter()
        .fold(Complex::new(1.0, 0.0), |acc, z| acc.mul(fs2.sub(*z)));
    let den = poles
        .iter()
        .fold(Complex::new(1.0, 0.0), |acc, p| acc.mul(fs2.sub(*p)));
    let k_digital = gain * num.div(den).re;

    Ok(zpk_to_sos(&z_digital, &p_digital, k_digital))
}

/// Groups roots of a real polynomial into factors of degree <= 2 (conjugate pairs first, then
/// remaining real roots two at a time), each as `[1, c1, c2]`.
fn quadratic_factors(roots: &[Complex]) -> Vec<[f64; 3]> {
    const TOL: f64 = 1e-9;
    let mut complex: Vec<Complex> = roots
        .iter()
        .copied()
        .filter(|r| r.im > TOL * r.abs().max(1.0))
        .collect();
    // Sort by distance to the unit circle so the most resonant pairs end up last, as scipy does.
    complex.sort_by(|a, b| {
        (1.0 - a.abs())
            .abs()
            .total_cmp(&(1.0 - b.abs()).abs())
            .reverse()
    });
    let mut reals: Vec<f64> = roots
        .iter()
        .filter(|r| r.im.abs() <= TOL * r.abs().max(1.0))
        .map(|r| r.re)
        .collect();
    reals.sort_by(|a, b| a.total_cmp(b));
    let mut factors = Vec::new();
    for c in complex {
        factors.push([1.0, -2.0 * c.re, c.re * c.re + c.im * c.im]);
    }
    // Pair the smallest real root with the largest: a band-pass then gets one zero at z = -1
    // and one at z = +1 per section (b = [1, 0, -1]), which keeps every section's gain tame.
    let (mut lo, mut hi) = (0usize, reals.len());
    while lo < hi {
        if hi - lo >= 2 {
            let (r1, r2) = (reals[lo], reals[hi - 1]);
            factors.push([1.0, -(r1 + r2), r1 * r2]);
            lo += 1;
            hi -= 1;
        } else {
            factors.push([1.0, -reals[lo], 0.0]);
            lo += 1;
        }
    }
    factors
}

fn zpk_to_sos(zeros: &[Complex], poles: &[Complex], gain: f64) -> Sos {
    let num = quadratic_factors(zeros);
    let den = quadratic_factors(poles);
    let n_sections = num.len().max(den.len()).max(1);
    let sections = (0..n_sections)
        .map(|i| {
            let mut b = num.get(i).copied().unwrap_or([1.0, 0.0, 0.0]);
            let a = den.get(i).copied().unwrap_or([1.0, 0.0, 0.0]);
            if i == 0 {
                for c in &mut b {
                    *c *= gain;
                }
            }
            Biquad { b, a }
        })
        .collect();
    Sos { sections }
}

/// Second-order IIR notch at `freq_hz` with quality factor `q` (bandwidth = freq / q), as
/// `scipy.signal.iirnotch`.
pub fn notch(freq_hz: f64, q: f64, fs: f64) -> Result<Sos, DspError> {
    if !fs.is_finite() || fs <= 0.0 {
        return Err(DspError::BadRate(fs));
    }
    if !(freq_hz.is_finite() && freq_hz > 0.0 && freq_hz < fs / 2.0) {
        return Err(DspError::BadCorner {
            hz: freq_hz,
            nyquist: fs / 2.0,
        });
    }
    if !q.is_finite() || q <= 0.0 {
        return Err(DspError::BadQuality(q));
    }
    let w0 = freq_hz / (fs / 2.0) * PI;
    let bw = w0 / q;
    // -3 dB bandwidth: beta = sqrt(1 - gb^2) / gb * tan(bw / 2) with gb = 1/sqrt(2).
    let beta = (bw / 2.0).tan();
    let gain = 1.0 / (1.0 + beta);
    Ok(Sos {
        sections: vec![Biquad {
            b: [gain, -2.0 * gain * w0.cos(), gain],
            a: [1.0, -2.0 * gain * w0.cos(), 2.0 * gain - 1.0],
        }],
    })
}

impl Sos {
    /// Complex frequency response magnitude at `freq_hz`.
    pub fn gain_at(&self, freq_hz: f64, fs: f64) -> f64 {
        let w = 2.0 * PI * freq_hz / fs;
        // z^-1 = exp(-jw)
        let z1 = Complex::new(w.cos(), -w.sin());
        let z2 = z1.mul(z1);
        self.sections
            .iter()
            .map(|s| {
                let num = Complex::new(s.b[0], 0.0)
                    .add(z1.scale(s.b[1]))
                    .add(z2.scale(s.b[2]));
                let den = Complex::new(s.a[0], 0.0)
                    .add(z1.scale(s.a[1]))
                    .add(z2.scale(s.a[2]));
                num.div(den).abs()
            })
            .product()
    }

    /// Steady-state initial conditions for a unit step (scipy's `sosfilt_zi`): each section's
    /// direct-form-II-transposed state when the input has been 1 forever.
    fn step_state(&self) -> Vec<[f64; 2]> {
        let mut scale = 1.0;
        self.sections
            .iter()
            .map(|s| {
                let a_sum = s.a[0] + s.a[1] + s.a[2];
                let dc = (s.b[0] + s.b[1] + s.b[2]) / a_sum;
                let z1 = s.b[2] - s.a[2] * dc;
                let z0 = s.b[1] + s.b[2] - (s.a[1] + s.a[2]) * dc;
                let state = [scale * z0, scale * z1];
                scale *= dc;
                state
            })
            .collect()
    }

    /// Runs the cascade over `x` in place (direct form II transposed), starting from `state`.
    fn run(&self, x: &mut [f64], mut state: Vec<[f64; 2]>) {
        for (s, z) in self.sections.iter().zip(state.iter_mut()) {
            let [b0, b1, b2] = s.b;
            let [_, a1, a2] = s.a;
            let [mut z0, mut z1] = *z;
            for v in x.iter_mut() {
                let input = *v;
                let y = b0 * input + z0;
                z0 = b1 * input - a1 * y + z1;
                z1 = b2 * input - a2 * y;
                *v = y;
            }
        }
    }

    /// Causal filtering from rest (scipy's `sosfilt` without `zi`).
    pub fn filter(&self, x: &[f32]) -> Vec<f32> {
        let mut buf: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        self.run(&mut buf, vec![[0.0; 2]; self.sections.len()]);
        buf.into_iter().map(|v| v as f32).collect()
    }

    /// scipy's default `sosfiltfilt` pad length: three times the number of taps, where
    /// sections with both trailing coefficients zero count one tap less.
    pub fn default_padlen(&self) -> usize {
        let zero_b2 = self.sections.iter().filter(|s| s.b[2] == 0.0).count();
        let zero_a2 = self.sections.iter().filter(|s| s.a[2] == 0.0).count();
        3 * (2 * self.sections.len() + 1 - zero_b2.min(zero_a2))
    }

    /// Zero-phase forward-backward filtering as `scipy.signal.sosfiltfilt(sos, x)`: the signal
    /// is extended at both ends by odd reflection (`2 x[0] - x[k]`) over
    /// [`default_padlen`](Self::default_padlen) samples, each pass starts from the steady state
    /// of the first sample it sees, and the extension is cut away again.
    ///
    /// Where the signal is not longer than the pad length (scipy raises an error there), the pad
    /// shrinks to `len - 1` samples so short inputs still filter.
    pub fn filtfilt(&self, x: &[f32]) -> Vec<f32> {
        let n = x.len();
        if n == 0 {
            return Vec::new();
        }
        let edge = self.default_padlen().min(n - 1);
        let mut ext = Vec::with_capacity(n + 2 * edge);
        let first = x[0] as f64;
        let last = x[n - 1] as f64;
        for k in (1..=edge).rev() {
            ext.push(2.0 * first - x[k] as f64);
        }
        ext.extend(x.iter().map(|&v| v as f64));
        for k in 1..=edge {
            ext.push(2.0 * last - x[n - 1 - k] as f64);
        }
        let zi = self.step_state();
        let scaled = |v: f64| zi.iter().map(|z| [z[0] * v, z[1] * v]).collect::<Vec<_>>();
        let x0 = ext[0];
        self.run(&mut ext, scaled(x0));
        ext.reverse();
        let y0 = ext[0];
        self.run(&mut ext, scaled(y0));
        ext.reverse();
        ext[edge..edge + n].iter().map(|&v| v as f32).collect()
    }
}
