//! Matrix products of strided views straight from the gemm kernels (no copies), the plumbing
//! the fused linear layer and attention share.

use super::*;

/// A matrix inside a flat buffer: element `(i, j)` at `off + i * rs + j * cs`.
#[derive(Clone, Copy, Debug)]
pub(super) struct View {
    pub(super) off: usize,
    pub(super) rs: usize,
    pub(super) cs: usize,
}

impl View {
    pub(super) fn rows(off: usize, rs: usize) -> View {
        View { off, rs, cs: 1 }
    }

    pub(super) fn t(self) -> View {
        View {
            off: self.off,
            rs: self.cs,
            cs: self.rs,
        }
    }

    /// One past the last element of a `rows x cols` matrix.
    pub(super) fn end(self, rows: usize, cols: usize) -> usize {
        self.off + (rows - 1) * self.rs + (cols - 1) * self.cs + 1
    }

    /// The same matrix in a sub-slice of the buffer that starts at `start`.
    pub(super) fn rebase(self, start: usize) -> Result<View> {
        match self.off.checked_sub(start) {
            Some(off) => Ok(View { off, ..self }),
            None => candle_core::bail!("attention kernel: view before its block"),
        }
    }
}

/// `dst = scale * lhs * rhs` for an `m x k` times `k x n` product, every matrix a strided
/// view, on the calling thread (the attention kernels run one per head on the pool).
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul(
    sizes: (usize, usize, usize),
    dst: &mut [f32],
    dv: View,
    lhs: &[f32],
    lv: View,
    rhs: &[f32],
    rv: View,
    scale: f32,
) -> Result<()> {
    let product = Product {
        scale,
        accumulate: false,
        threads: 1,
    };
    gemm_views(sizes, (dst, dv), (lhs, lv), (rhs, rv), product)
}

/// How [`gemm_views`] combines and runs a product.
#[derive(Clone, Copy, Debug)]
pub(super) struct Product {
    pub(super) scale: f32,
    /// `dst += scale * lhs * rhs` instead of `dst = scale * lhs * rhs`.
    pub(super) accumulate: bool,
    /// Threads of the current rayon pool gemm may use (1: the calling thread only).
    pub(super) threads: usize,
}

/// One gemm over strided views. Bounds are checked here, so the unsafe call only ever
/// touches the three slices; `dst` cannot alias the inputs (it is borrowed mutably).
pub(super) fn gemm_views(
    (m, n, k): (usize, usize, usize),
    (dst, dv): (&mut [f32], View),
    (lhs, lv): (&[f32], View),
    (rhs, rv): (&[f32], View),
    product: Product,
) -> Result<()> {
    if m == 0 || n == 0 || k == 0 {
        candle_core::bail!("fused kernel: empty product {m}x{k} by {k}x{n}");
    }
    if dv.end(m, n) > dst.len() || lv.end(m, k) > lhs.len() || rv.end(k, n) > rhs.len() {
        candle_core::bail!("fused kernel: view outside its buffer");
    }
    let parallelism = if product.threads > 1 {
        ::gemm::Parallelism::Rayon(product.threads)
    } else {
        ::gemm::Parallelism::None
    };
    // SAFETY: the three views were just checked to lie inside their slices, and `dst` is a
    // unique borrow distinct from `lhs` and `rhs`.
    unsafe {
        ::gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().add(dv.off),
            dv.cs as isize,
            dv.rs as isize,
            product.accumulate,
            lhs.as_ptr().add(lv.off),
            lv.cs as isize,
            lv.rs as isize,
            rhs.as_ptr().add(rv.off),
            rv.cs as isize,
            rv.rs as isize,
            if product.accumulate { 1.0 } else { 0.0 },
            product.scale,
            false,
            false,
            false,
            parallelism,
        );
    }
    Ok(())
}
