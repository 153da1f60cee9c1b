//! The fused linear layer: `x W^T + b` as one gemm into rows that start as the bias, and its
//! backward (`dy W`, `dy^T x` in the weight's layout, column sums), each only for an argument
//! that needs a gradient.

use super::rows::ColumnSums;
use super::strided::{Product, View, gemm_views};
use super::*;

/// `y = x w^T + b` for token rows `x [rows, in]`, a weight `w [out, in]` and a bias `[out]`:
/// one gemm adding into rows that start as the bias, where candle's matmul followed by
/// [`AddRow`] zeroed, wrote and re-read the output. Backward: `dx = dy w`, `dw = dy^T x`
/// (straight into the weight's layout; candle's `x.matmul(w.t())` made `x^T dy` and swept
/// its transpose once more) and `db` the column sums of `dy`, each only for an argument
/// that carries a gradient (a frozen weight costs no `dw`).
pub(in crate::layers) struct LinearRows;

impl CustomOp3 for LinearRows {
    fn name(&self) -> &'static str {
        "beatlab-linear"
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
        let w = data(s2, l2, self.name())?;
        let (rows, fan_in) = l1.shape().dims2()?;
        let (fan_out, w_in) = l2.shape().dims2()?;
        let b = data(s3, l3, self.name())?;
        if w_in != fan_in || b.len() != fan_out {
            candle_core::bail!(
                "{}: rows of {fan_in}, weight {:?}, bias {:?}",
                self.name(),
                l2.dims(),
                l3.dims()
            );
        }
        let mut y = map_rows_from(b, rows * fan_out, |_, _| {});
        // An empty product leaves the bias (x W^T is 0 for an input of no columns).
        if rows > 0 && fan_in > 0 && fan_out > 0 {
            let product = Product {
                scale: 1.0,
                accumulate: true,
                threads: rayon::current_num_threads(),
            };
            gemm_views(
                (rows, fan_out, fan_in),
                (&mut y, View::rows(0, fan_out)),
                (x, View::rows(0, fan_in)),
                (w, View::rows(0, fan_in).t()),
                product,
            )?;
        }
        Ok((CpuStorage::F32(y), Shape::from((rows, fan_out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        // Detached operands: the gradients need no graph of their own.
        let dx = x.track_op().then(|| dy.matmul(&w.detach())).transpose()?;
        let dw = w
            .track_op()
            .then(|| dy.t()?.matmul(&x.detach()))
            .transpose()?;
        let db = b
            .track_op()
            .then(|| dy.apply_op1_no_bwd(&ColumnSums))
            .transpose()?;
        Ok((dx, dw, db))
    }
}
