//! The dyadic wavelet transform of the published delineators (Martinez et al. 2004): the
//! "algorithme à trous" with the quadratic-spline wavelet, low-pass `h = [1, 3, 3, 1] / 8` and
//! high-pass `g = [2, -2]`, the filters of level `k` spread by `2^(k-1) - 1` zeros. Scale `2^k`
//! is (up to a constant) the derivative of the signal smoothed at that scale, so a wave's peak is
//! a zero crossing and its steepest slopes are modulus maxima. At 250 Hz, scale 2^2-2^3 holds the
//! QRS, 2^4-2^5 the P and T waves.
//!
//! The shifts are NeuroKit2's (`_dwt_compute_multiscales`): every level is advanced by the same
//! half sample, so zero crossings and maxima line up across scales. Samples beyond the ends
//! repeat the end values.

/// `W_{2^1} .. W_{2^levels}` of `x`, each as long as `x`.
pub fn transform(x: &[f32], levels: usize) -> Vec<Vec<f32>> {
    let n = x.len();
    let mut approx: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
    let mut out = Vec::with_capacity(levels);
    if n == 0 {
        return vec![Vec::new(); levels];
    }
    let at = |a: &[f64], i: isize| a[i.clamp(0, n as isize - 1) as usize];
    for level in 0..levels {
        let step = 1isize << level;
        let detail: Vec<f32> = (0..n as isize)
            .map(|i| (2.0 * (at(&approx, i + step) - at(&approx, i))) as f32)
            .collect();
        let next: Vec<f64> = (0..n as isize)
            .map(|i| {
                (at(&approx, i + step)
                    + 3.0 * at(&approx, i)
                    + 3.0 * at(&approx, i - step)
                    + at(&approx, i - 2 * step))
                    / 8.0
            })
            .collect();
        out.push(detail);
        approx = next;
    }
    out
}

/// Local maxima of `|w|` inside `[from, to)`: indices where `|w|` is at least its left
/// neighbour and above its right one, and non-zero.
pub fn modulus_maxima(w: &[f32], from: usize, to: usize) -> Vec<usize> {
    let to = to.min(w.len());
    let mut out = Vec::new();
    for i in from.max(1)..to.min(w.len().saturating_sub(1)) {
        let (a, b, c) = (w[i - 1].abs(), w[i].abs(), w[i + 1].abs());
        if b > 0.0 && b >= a && b > c {
            out.push(i);
        }
    }
    out
}

/// The zero crossing of `w` between `a < b` nearest to `near`, if the sign changes there.
pub fn zero_crossing(w: &[f32], a: usize, b: usize, near: usize) -> Option<usize> {
    let mut best: Option<usize> = None;
    for i in a..b.min(w.len().saturating_sub(1)) {
        let (u, v) = (w[i], w[i + 1]);
        if (u >= 0.0) != (v >= 0.0) || u == 0.0 {
            let at = if u.abs() <= v.abs() { i } else { i + 1 };
            if best.is_none_or(|b| at.abs_diff(near) < b.abs_diff(near)) {
                best = Some(at);
            }
        }
    }
    best
}

/// Walks from `start` by `dir` (-1 or +1) while `|w|` stays at or above `threshold` and no
/// local minimum of `|w|` is met; stops at `limit`. Returns the first sample below the threshold
/// or the local minimum.
pub fn walk_to_edge(w: &[f32], start: usize, dir: isize, threshold: f32, limit: usize) -> usize {
    let mut i = start as isize;
    let n = w.len() as isize;
    loop {
        let next = i + dir;
        if next < 0
            || next >= n
            || (dir < 0 && next < limit as isize)
            || (dir > 0 && next > limit as isize)
        {
            return i as usize;
        }
        let v = w[next as usize].abs();
        if v < threshold {
            return next as usize;
        }
        let after = next + dir;
        if after >= 0 && after < n && v <= w[after as usize].abs() && v <= w[i as usize].abs() {
            return next as usize;
        }
        i = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bump_gives_a_zero_crossing_at_its_peak_and_maxima_on_its_slopes() {
        let x: Vec<f32> = (0..400)
            .map(|i| (-((i as f32 - 200.0) / 10.0).powi(2) / 2.0).exp())
            .collect();
        let w = transform(&x, 5);
        for scale in &w {
            let zc = zero_crossing(scale, 150, 250, 200).unwrap();
            assert!(zc.abs_diff(200) <= 1, "zero crossing at {zc}");
        }
        let maxima = modulus_maxima(&w[2], 100, 300);
        assert_eq!(maxima.len(), 2, "{maxima:?}");
        assert!(w[2][maxima[0]] > 0.0 && w[2][maxima[1]] < 0.0);
        assert!(maxima[0] < 200 && maxima[1] > 200);
    }

    #[test]
    fn constants_have_no_detail() {
        let w = transform(&[3.0; 64], 4);
        assert!(w.iter().flatten().all(|&v| v == 0.0));
        assert!(transform(&[], 3).iter().all(Vec::is_empty));
    }
}
