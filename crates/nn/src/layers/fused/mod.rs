//! CPU f32 kernels with hand-written backward passes (see the module documentation). Each
//! forward op keeps what its backward needs as its input or output; the backward kernels are
//! applied without autograd (no second derivatives).
//!
//! Shared here: the split of work over rayon, the fixed-order 16-lane SIMD reductions, the fast
//! `exp`/`tanh` approximations and the row helpers; the ops live in [`rows`] (row-wise
//! non-linearities, norms, bias and gain), [`linear`] (the fused linear layer), [`strided`] (strided
//! products) and [`attention`] (scaled dot-product attention straight from the gemm kernels).

mod attention;
mod linear;
mod rows;
mod strided;

use super::*;
use rayon::prelude::*;

pub(super) use attention::{Attention, BiasBlocks, PackedAttention};
pub(super) use linear::LinearRows;
pub(super) use rows::{AddRow, Gelu, MulRow, Normalize, Softmax};

/// Below this many values a row-wise kernel runs on the calling thread: handing a job to the
/// pool and waiting for it costs microseconds.
const PAR_MIN_VALUES: usize = 1 << 14;

/// Whether there is more than one thread in the current rayon pool (the global one, or the
/// one a caller `install`ed).
fn parallel() -> bool {
    rayon::current_num_threads() > 1
}

/// Rows per parallel task for a row-wise kernel over `rows` rows of `n` values: at least
/// [`PAR_MIN_VALUES`] values per task, and a few tasks per thread so that a thread the
/// scheduler preempts does not hold up the rest (the cores are shared).
fn rows_per_task(rows: usize, n: usize) -> usize {
    let threads = rayon::current_num_threads();
    let tasks = (rows * n / PAR_MIN_VALUES).clamp(1, 4 * threads);
    rows.div_ceil(tasks).max(1)
}

/// Runs `f` compiled for the widest vector unit the CPU has (AVX-512 or AVX2 + FMA on
/// x86-64, chosen at run time by `pulp`, the dispatcher of candle's matrix kernels): the
/// binary targets baseline x86-64 (SSE2), where the kernels' loops vectorise only four lanes
/// wide. `f` and what it calls `#[inline(always)]` are compiled inside the dispatched
/// function. Elementwise results are the same on every CPU: Rust never fuses `a * b + c`
/// into an FMA on its own, and reductions use [`lane_sum`]'s fixed order.
#[inline(always)]
fn simd<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}

/// Lanes of [`lane_sum`] and [`lane_max`]: one AVX-512 register of f32.
const LANES: usize = 16;

/// The sum of `xs` as [`LANES`] interleaved partial sums added at the end: a fixed order
/// (the same on every CPU and thread count) that vectorises, where one running sum is a
/// serial chain of additions.
#[inline(always)]
pub(super) fn lane_sum(xs: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a += v;
        }
    }
    for (a, &v) in acc.iter_mut().zip(tail) {
        *a += v;
    }
    acc.iter().sum()
}

/// `sum(a * b)` in [`lane_sum`]'s order.
#[inline(always)]
fn lane_dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for ((s, &u), &v) in acc.iter_mut().zip(x).zip(y) {
            *s += u * v;
        }
    }
    for ((s, &u), &v) in acc.iter_mut().zip(ta).zip(tb) {
        *s += u * v;
    }
    acc.iter().sum()
}

/// The largest value of `xs` (NaN-ignoring like `f32::max`), [`LANES`] at a time.
#[inline(always)]
fn lane_max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a = a.max(v);
        }
    }
    for (a, &v) in acc.iter_mut().zip(tail) {
        *a = a.max(v);
    }
    acc.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

/// Softmax of one row in place: `exp(x - max) / sum`.
#[inline(always)]
fn softmax_in_place(row: &mut [f32]) {
    let max = lane_max(row);
    for x in row.iter_mut() {
        *x = fast_exp(*x - max);
    }
    let inv = 1.0 / lane_sum(row);
    row.iter_mut().for_each(|x| *x *= inv);
}

/// `f(first_row, chunk)` over chunks of whole rows (`n` values each) of `out`, in parallel
/// when `out` is big enough. Every row is computed by the same code whatever the chunking,
/// so the results do not depend on the thread count.
fn for_row_chunks<T: Send>(out: &mut [T], n: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let rows = out.len() / n;
    let per = rows_per_task(rows, n);
    if per >= rows || !parallel() {
        simd(|| f(0, out));
    } else {
        out.par_chunks_mut(per * n)
            .enumerate()
            .for_each(|(i, chunk)| simd(|| f(i * per, chunk)));
    }
}

/// A new `[rows, n]` buffer filled row chunk by row chunk by `f(first_row, chunk)` (see
/// [`for_row_chunks`]); `f` finds zeros.
fn map_rows(len: usize, n: usize, f: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    map_rows_from(&vec![0f32; n], len, f)
}

/// Like [`map_rows`], every row starting as a copy of `row`. Each task writes its own
/// chunk before `f` reads it, so the buffer is not first zeroed as a whole on the calling
/// thread (with the binary's malloc settings buffers come from the heap, and that serial
/// `memset`, or a bias copied row by row, was 6 % of a Beat forward pass).
fn map_rows_from(row: &[f32], len: usize, f: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    let n = row.len();
    if n == 0 {
        // No row to copy (then `len` is 0 for any `[rows, 0]` buffer).
        return vec![0f32; len];
    }
    let mut out: Vec<f32> = Vec::with_capacity(len);
    for_row_chunks(&mut out.spare_capacity_mut()[..len], n, |r0, chunk| {
        for dst in chunk.chunks_mut(n) {
            for (d, &v) in dst.iter_mut().zip(row) {
                d.write(v);
            }
        }
        // SAFETY: the loop above wrote every element of `chunk` (its rows cover it, a
        // shorter last row included), and `MaybeUninit<f32>` has the layout of `f32`.
        let chunk = unsafe { &mut *(chunk as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) };
        f(r0, chunk)
    });
    // SAFETY: `for_row_chunks` hands every element of `out[..len]` to the closure exactly
    // once (in one call or in disjoint chunks), and the closure initialised all of them.
    unsafe { out.set_len(len) };
    out
}

/// `f(a_row, b_row, out_row)` over the rows (`n` values each) of two same-sized inputs into
/// a new buffer (see [`map_rows`]); the gradient kernels that read an activation and its
/// gradient side by side.
#[inline(always)]
fn map_row_pairs(
    op: &str,
    (a, b): (&[f32], &[f32]),
    n: usize,
    f: impl Fn(&[f32], &[f32], &mut [f32]) + Sync,
) -> Result<Vec<f32>> {
    if a.len() != b.len() {
        candle_core::bail!("{op}: inputs of different sizes");
    }
    Ok(map_rows(a.len(), n, |r0, out| {
        let range = r0 * n..r0 * n + out.len();
        let (a, b) = (&a[range.clone()], &b[range]);
        for ((ar, br), or) in a
            .chunks_exact(n)
            .zip(b.chunks_exact(n))
            .zip(out.chunks_exact_mut(n))
        {
            f(ar, br, or);
        }
    }))
}

/// Per-column reductions over all rows of a `[rows, n]` layout: `f(first_col, sums)` adds
/// the rows' values of columns `first_col..first_col + sums.len()` into `sums`, rows in
/// order. Parallel over column blocks, so every column is still summed by one thread in row
/// order: the result is the sequential one, bit for bit, whatever the thread count.
fn column_reduce(rows: usize, n: usize, f: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    let mut sums = vec![0f32; n];
    let threads = rayon::current_num_threads();
    // Blocks of whole 64-byte lines of a row, a couple per thread.
    let width = n.div_ceil(2 * threads).next_multiple_of(16);
    if threads == 1 || rows * n < PAR_MIN_VALUES || width >= n {
        simd(|| f(0, &mut sums));
    } else {
        sums.par_chunks_mut(width)
            .enumerate()
            .for_each(|(i, block)| simd(|| f(i * width, block)));
    }
    sums
}

/// The contiguous f32 data of a custom op input.
fn data<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(values) = storage else {
        candle_core::bail!("{op}: expected f32 data");
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&values[start..end]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

fn last_dim(layout: &Layout, op: &str) -> Result<usize> {
    match layout.dims().last() {
        Some(&n) if n > 0 => Ok(n),
        _ => candle_core::bail!("{op}: needs a non-empty last dimension"),
    }
}

/// `sqrt(2 / pi)` and the cubic coefficient of the tanh GELU approximation.
const GELU_K: f32 = 0.797_884_6;
const GELU_A: f32 = 0.044_715;

/// `exp(x)` for `x` in [-87, 88], to about 2e-7 relative error, in straight-line code that
/// the compiler vectorises (libm's `expf` and `tanhf` are scalar calls; they were a tenth of
/// a Beat step inside GELU). `x = n ln 2 + f` with `|f| <= ln 2 / 2`; `e^f` by its Taylor
/// series to degree 7 (truncation below 1e-8 there); `2^n` put in the exponent bits.
#[inline(always)]
pub(super) fn fast_exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n * LN2_HI is exact for |n| < 2^9.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer in plain SSE2
    // arithmetic (`round` / `floor` are libm calls without SSE4.1).
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2_E + ROUND) - ROUND;
    let f = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.0 / 5040.0;
    p = p * f + 1.0 / 720.0;
    p = p * f + 1.0 / 120.0;
    p = p * f + 1.0 / 24.0;
    p = p * f + 1.0 / 6.0;
    p = p * f + 0.5;
    p = p * f + 1.0;
    p = p * f + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    p * scale
}

/// `tanh(x) = 1 - 2 / (e^{2x} + 1)`, absolute error about 3e-7 (it is added to 1 in GELU,
/// so relative accuracy near 0 does not matter). Saturates cleanly: `e^{2x}` is clamped.
#[inline(always)]
pub(super) fn fast_tanh(x: f32) -> f32 {
    1.0 - 2.0 / (fast_exp(2.0 * x.clamp(-20.0, 20.0)) + 1.0)
}
