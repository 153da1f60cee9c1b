//! Row-wise ops: the tanh GELU, bias addition, gain multiplication, column sums and dots, the
//! softmax and LayerNorm / RmsNorm normalisation, each with its backward kernel.

use super::*;

pub(in crate::layers) struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "beatlab-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = data(s, l, self.name())?;
        let n = last_dim(l, self.name())?;
        let y = map_rows(x.len(), n, |r0, out| {
            let x = &x[r0 * n..r0 * n + out.len()];
            for (o, &v) in out.iter_mut().zip(x) {
                *o = 0.5 * v * (1.0 + fast_tanh(GELU_K * (v + GELU_A * v * v * v)));
            }
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op3_no_bwd(y, &dy.contiguous()?, &GeluGrad)?))
    }
}

/// `dy * gelu'(x)`, with `t = tanh(k (x + a x^3))` read back from the forward output
/// `y = x (1 + t) / 2` where that is well conditioned (`|x| >= 0.01`), so that the
/// backward pass does not compute the tanh a second time.
struct GeluGrad;

impl CustomOp3 for GeluGrad {
    fn name(&self) -> &'static str {
        "beatlab-gelu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = data(s1, l1, self.name())?;
        let y = data(s2, l2, self.name())?;
        let dy = data(s3, l3, self.name())?;
        let n = last_dim(l1, self.name())?;
        if y.len() != x.len() || dy.len() != x.len() {
            candle_core::bail!("{}: inputs of different sizes", self.name());
        }
        let dx = map_rows(x.len(), n, |r0, out| {
            let range = r0 * n..r0 * n + out.len();
            let (x, y, dy) = (&x[range.clone()], &y[range.clone()], &dy[range]);
            for (((o, &v), &out), &g) in out.iter_mut().zip(x).zip(y).zip(dy) {
                let t = if v.abs() >= 0.01 {
                    2.0 * out / v - 1.0
                } else {
                    fast_tanh(GELU_K * (v + GELU_A * v * v * v))
                };
                let du = GELU_K * (1.0 + 3.0 * GELU_A * v * v);
                *o = g * (0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * du);
            }
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// Sums of the rows of a contiguous `[.., n]` tensor: `[n]`.
fn column_sums(values: &[f32], n: usize) -> Vec<f32> {
    column_reduce(values.len() / n, n, |c0, sums| {
        for row in values.chunks_exact(n) {
            for (s, &v) in sums.iter_mut().zip(&row[c0..]) {
                *s += v;
            }
        }
    })
}

fn row_len(l: &Layout, v: &Layout, op: &str) -> Result<usize> {
    let n = last_dim(l, op)?;
    if v.dims() != [n] {
        candle_core::bail!("{op}: vector of shape {:?} for rows of {n}", v.dims());
    }
    Ok(n)
}

/// `x + b` per row; backward `(dy, column sums of dy)`.
pub(in crate::layers) struct AddRow;

impl CustomOp2 for AddRow {
    fn name(&self) -> &'static str {
        "beatlab-add-row"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = data(s1, l1, self.name())?;
        let b = data(s2, l2, self.name())?;
        let n = row_len(l1, l2, self.name())?;
        let y = map_rows(x.len(), n, |r0, out| {
            let x = &x[r0 * n..r0 * n + out.len()];
            for (orow, xrow) in out.chunks_exact_mut(n).zip(x.chunks_exact(n)) {
                for ((o, &v), &bv) in orow.iter_mut().zip(xrow).zip(b) {
                    *o = v + bv;
                }
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let db = dy.contiguous()?.apply_op1_no_bwd(&ColumnSums)?;
        Ok((Some(dy.clone()), Some(db.reshape(b.shape())?)))
    }
}

/// `x * w` per row; backward `(dy * w, column sums of dy * x)`.
pub(in crate::layers) struct MulRow;

impl CustomOp2 for MulRow {
    fn name(&self) -> &'static str {
        "beatlab-mul-row"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = data(s1, l1, self.name())?;
        let w = data(s2, l2, self.name())?;
        let n = row_len(l1, l2, self.name())?;
        let y = map_rows(x.len(), n, |r0, out| {
            let x = &x[r0 * n..r0 * n + out.len()];
            for (orow, xrow) in out.chunks_exact_mut(n).zip(x.chunks_exact(n)) {
                for ((o, &v), &wv) in orow.iter_mut().zip(xrow).zip(w) {
                    *o = v * wv;
                }
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let dx = dy.apply_op2_no_bwd(w, &MulRow)?;
        let dw = dy.apply_op2_no_bwd(x, &ColumnDots)?;
        Ok((Some(dx), Some(dw)))
    }
}

/// Column sums of a contiguous tensor over all rows.
pub(super) struct ColumnSums;

impl CustomOp1 for ColumnSums {
    fn name(&self) -> &'static str {
        "beatlab-column-sums"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = data(s, l, self.name())?;
        let n = last_dim(l, self.name())?;
        Ok((CpuStorage::F32(column_sums(x, n)), Shape::from(n)))
    }
}

/// Column sums of `a * b` (same shapes), without materialising the product.
pub(super) struct ColumnDots;

impl CustomOp2 for ColumnDots {
    fn name(&self) -> &'static str {
        "beatlab-column-dots"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let a = data(s1, l1, self.name())?;
        let b = data(s2, l2, self.name())?;
        let n = last_dim(l1, self.name())?;
        if l1.dims() != l2.dims() {
            candle_core::bail!(
                "{}: shapes {:?} and {:?}",
                self.name(),
                l1.dims(),
                l2.dims()
            );
        }
        let sums = column_reduce(a.len() / n, n, |c0, sums| {
            for (ra, rb) in a.chunks_exact(n).zip(b.chunks_exact(n)) {
                for ((s, &va), &vb) in sums.iter_mut().zip(&ra[c0..]).zip(&rb[c0..]) {
                    *s += va * vb;
                }
            }
        });
        Ok((CpuStorage::F32(sums), Shape::from(n)))
    }
}

pub(in crate::layers) struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "beatlab-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = data(s, l, self.name())?;
        let n = last_dim(l, self.name())?;
        let y = map_rows(x.len(), n, |r0, out| {
            let x = &x[r0 * n..r0 * n + out.len()];
            out.copy_from_slice(x);
            out.chunks_exact_mut(n).for_each(softmax_in_place);
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(y.apply_op2_no_bwd(&dy.contiguous()?, &SoftmaxGrad)?))
    }
}

/// `y * (dy - sum(dy * y))` per row.
struct SoftmaxGrad;

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "beatlab-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = data(s1, l1, self.name())?;
        let dy = data(s2, l2, self.name())?;
        let n = last_dim(l1, self.name())?;
        let dx = map_row_pairs(self.name(), (y, dy), n, |yr, gr, or| {
            let dot = lane_dot(yr, gr);
            for ((o, &a), &g) in or.iter_mut().zip(yr).zip(gr) {
                *o = a * (g - dot);
            }
        })?;
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// LayerNorm (`remove_mean`) or RmsNorm normalisation over the last dimension.
pub(in crate::layers) struct Normalize {
    pub(in crate::layers) eps: f64,
    pub(in crate::layers) remove_mean: bool,
}

impl Normalize {
    /// Mean (0 for RmsNorm) and `1 / sqrt(var + eps)` of one row.
    #[inline(always)]
    fn stats(&self, row: &[f32]) -> (f32, f32) {
        let n = row.len() as f32;
        let mean = if self.remove_mean {
            lane_sum(row) / n
        } else {
            0.0
        };
        let mut square = [0f32; LANES];
        let chunks = row.chunks_exact(LANES);
        let tail = chunks.remainder();
        for chunk in chunks {
            for (a, &v) in square.iter_mut().zip(chunk) {
                *a += (v - mean) * (v - mean);
            }
        }
        for (a, &v) in square.iter_mut().zip(tail) {
            *a += (v - mean) * (v - mean);
        }
        let var = square.iter().sum::<f32>() / n;
        (mean, 1.0 / (var + self.eps as f32).sqrt())
    }
}

impl CustomOp1 for Normalize {
    fn name(&self) -> &'static str {
        "beatlab-normalize"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = data(s, l, self.name())?;
        let n = last_dim(l, self.name())?;
        let y = map_rows(x.len(), n, |r0, out| {
            let x = &x[r0 * n..r0 * n + out.len()];
            for (xr, yr) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
                let (mean, inv_std) = self.stats(xr);
                for (o, &v) in yr.iter_mut().zip(xr) {
                    *o = (v - mean) * inv_std;
                }
            }
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let grad = NormalizeGrad {
            eps: self.eps,
            remove_mean: self.remove_mean,
        };
        Ok(Some(x.apply_op2_no_bwd(&dy.contiguous()?, &grad)?))
    }
}

/// With `y` the normalised row and `r = 1 / sqrt(var + eps)`:
/// LayerNorm `dx = r * (dy - mean(dy) - y * mean(dy * y))`,
/// RmsNorm `dx = r * (dy - y * mean(dy * y))`.
struct NormalizeGrad {
    eps: f64,
    remove_mean: bool,
}

impl CustomOp2 for NormalizeGrad {
    fn name(&self) -> &'static str {
        "beatlab-normalize-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = data(s1, l1, self.name())?;
        let dy = data(s2, l2, self.name())?;
        let n = last_dim(l1, self.name())?;
        let norm = Normalize {
            eps: self.eps,
            remove_mean: self.remove_mean,
        };
        let dx = map_row_pairs(self.name(), (x, dy), n, |xr, gr, or| {
            let (mean, inv_std) = norm.stats(xr);
            let sum_g = lane_sum(gr);
            // sum(dy * y) = r * (sum(dy * x) - mean * sum(dy)).
            let sum_gy = inv_std * (lane_dot(gr, xr) - mean * sum_g);
            let mean_g = if self.remove_mean {
                sum_g / n as f32
            } else {
                0.0
            };
            let mean_gy = sum_gy / n as f32;
            for ((o, &v), &g) in or.iter_mut().zip(xr).zip(gr) {
                let y = (v - mean) * inv_std;
                *o = inv_std * (g - mean_g - y * mean_gy);
            }
        })?;
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}
