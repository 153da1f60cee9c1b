//! Scaled dot-product attention from the gemm kernels on strided per-head views (separate
//! q/k/v and packed qkv layouts), the softmax probabilities kept for the backward pass.

use super::strided::{View, matmul};
use super::*;
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// Where one (batch, head) pair's matrices are: q `[tq, d]`, k and v `[tk, d]`, the output
/// (or its gradient) `[tq, d]`.
#[derive(Clone, Copy, Debug)]
struct HeadViews {
    q: View,
    k: View,
    v: View,
    out: View,
    /// Start of this head's `[tq, tk]` block in the additive score bias, if there is one.
    bias: Option<usize>,
}

/// Sizes shared by every head of one attention call.
#[derive(Clone, Copy, Debug)]
struct Dims {
    tq: usize,
    tk: usize,
    d: usize,
    scale: f32,
    causal: bool,
}

/// `p = softmax(scale * q k^T + bias)` (masked above the shifted diagonal if causal) into
/// `p`; the bias block is read at `hv.bias` in `bias`.
#[inline(always)]
fn probabilities(
    dims: Dims,
    (q, k, bias): (&[f32], &[f32], Option<&[f32]>),
    hv: HeadViews,
    p: &mut [f32],
) -> Result<()> {
    let Dims {
        tq,
        tk,
        d,
        scale,
        causal,
    } = dims;
    matmul(
        (tq, tk, d),
        p,
        View::rows(0, tk),
        q,
        hv.q,
        k,
        hv.k.t(),
        scale,
    )?;
    if let (Some(bias), Some(off)) = (bias, hv.bias) {
        let Some(block) = bias.get(off..off + tq * tk) else {
            candle_core::bail!("attention kernel: score bias block outside its buffer");
        };
        p.iter_mut().zip(block).for_each(|(x, b)| *x += b);
    }
    for (i, row) in p.chunks_exact_mut(tk).enumerate() {
        let visible = if causal {
            (i + 1 + tk - tq).min(tk)
        } else {
            tk
        };
        let (seen, hidden) = row.split_at_mut(visible);
        softmax_in_place(seen);
        hidden.iter_mut().for_each(|x| *x = 0.0);
    }
    Ok(())
}

/// The buffers an attention kernel reads: q, k, v (possibly one packed buffer three times)
/// and the optional additive score bias.
type Operands<'a> = (&'a [f32], &'a [f32], &'a [f32], Option<&'a [f32]>);

/// Per-worker scratch of the backward attention kernel: one head's probabilities `p` (when
/// they are recomputed) and their gradient `dp`, `[tq, tk]` each.
struct Scratch {
    p: Vec<f32>,
    dp: Vec<f32>,
}

/// `f(index, item, scratch)` for every work item of an attention kernel, on the rayon pool
/// when there are several items and threads, each worker with its own scratch. An item is
/// the output (or gradient) block of some heads, disjoint from every other item's, and its
/// heads are computed in order by one thread, so the results do not depend on the thread
/// count or the scheduling.
fn for_each_item<T: Send>(
    dims: Dims,
    with_scratch: bool,
    items: Vec<T>,
    f: impl Fn(usize, T, &mut Scratch) -> Result<()> + Sync,
) -> Result<()> {
    let square = if with_scratch { dims.tq * dims.tk } else { 0 };
    let scratch = || Scratch {
        p: vec![0f32; square],
        dp: vec![0f32; square],
    };
    if items.len() > 1 && parallel() {
        items
            .into_par_iter()
            .enumerate()
            .try_for_each_init(scratch, |s, (i, item)| simd(|| f(i, item, s)))
    } else {
        let mut s = scratch();
        items
            .into_iter()
            .enumerate()
            .try_for_each(|(i, item)| simd(|| f(i, item, &mut s)))
    }
}

/// The softmax probabilities of every head, `[pairs, tq, tk]` in the order of the work items
/// and their heads, kept by a forward pass for its backward pass (which then skips the
/// score product and the exponentials). Filled by the op's `cpu_fwd`; freed with the op,
/// i.e. with the graph that holds it, or at once when no gradient is tracked.
#[derive(Debug, Default)]
pub(in crate::layers) struct SavedProbabilities(Mutex<Option<Arc<[f32]>>>);

impl SavedProbabilities {
    fn store(&self, probs: Vec<f32>) {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *slot = Some(probs.into());
    }

    fn get(&self) -> Option<Arc<[f32]>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Forward pass of every head: `out = softmax(scale q k^T + bias) v`. `out` is split into
/// `items` equal blocks; `heads_of(i)` lists the heads whose output lies in block `i`, with
/// views into the whole buffers (`out` included). Returns the probabilities of every head
/// (see [`SavedProbabilities`]).
fn attend<I: Iterator<Item = HeadViews>>(
    dims: Dims,
    items: usize,
    heads_of: impl Fn(usize) -> I + Sync,
    (q, k, v, bias): Operands,
    out: &mut [f32],
) -> Result<Vec<f32>> {
    if items == 0 && out.is_empty() {
        return Ok(Vec::new());
    }
    if items == 0 || !out.len().is_multiple_of(items) {
        candle_core::bail!("attention kernel: {} outputs in {items} blocks", out.len());
    }
    let block = out.len() / items;
    let square = dims.tq * dims.tk;
    let per_item = heads_of(0).count();
    let mut probs = vec![0f32; items * per_item * square];
    let blocks: Vec<(&mut [f32], &mut [f32])> = out
        .chunks_mut(block)
        .zip(probs.chunks_mut(per_item * square))
        .collect();
    for_each_item(dims, false, blocks, |i, (out, probs), _| {
        let mut heads = 0;
        for (hv, p) in heads_of(i).zip(probs.chunks_exact_mut(square)) {
            probabilities(dims, (q, k, bias), hv, p)?;
            let pv = View::rows(0, dims.tk);
            let ov = hv.out.rebase(i * block)?;
            matmul((dims.tq, dims.d, dims.tk), out, ov, p, pv, v, hv.v, 1.0)?;
            heads += 1;
        }
        if heads != per_item {
            candle_core::bail!("attention kernel: work items of different head counts");
        }
        Ok(())
    })?;
    Ok(probs)
}

/// Where one work item's gradients go: one block holding its heads' dq, dk and dv (packed
/// rows), or a block of each of dq, dk and dv.
enum GradBlocks<'a> {
    One(&'a mut [f32]),
    Three([&'a mut [f32]; 3]),
}

impl GradBlocks<'_> {
    /// The block of dq (0), dk (1) or dv (2).
    fn part(&mut self, which: usize) -> &mut [f32] {
        match self {
            GradBlocks::One(block) => block,
            GradBlocks::Three(blocks) => blocks[which],
        }
    }
}

/// Backward pass of every head. Work item `i` writes `blocks[i]`: `heads_of(i)` gives its
/// heads as (views into q, k, v and `dout`; views of dq, dk and dv relative to the item's
/// blocks). The probabilities are read from `saved` (what [`attend`] returned for the same
/// items) or, without it, recomputed.
fn attend_backward<I: Iterator<Item = (HeadViews, HeadViews)>>(
    dims: Dims,
    heads_of: impl Fn(usize) -> I + Sync,
    (q, k, v, bias): Operands,
    (dout, saved): (&[f32], Option<&[f32]>),
    blocks: Vec<GradBlocks>,
) -> Result<()> {
    let Dims {
        tq, tk, d, scale, ..
    } = dims;
    let rows = View::rows(0, tk);
    let square = tq * tk;
    let items = blocks.len();
    let saved = match saved {
        Some(all) if items > 0 && all.len().is_multiple_of(items * square) => {
            Some((all, all.len() / items))
        }
        Some(_) => candle_core::bail!("attention kernel: saved probabilities do not fit"),
        None => None,
    };
    for_each_item(dims, true, blocks, |i, mut grads, s| {
        let Scratch { p: p_buf, dp } = s;
        for (j, (hv, gv)) in heads_of(i).enumerate() {
            let p: &[f32] = match saved {
                Some((all, per_item)) => {
                    let start = i * per_item + j * square;
                    let Some(p) = all.get(start..start + square) else {
                        candle_core::bail!("attention kernel: saved probabilities too short");
                    };
                    p
                }
                None => {
                    probabilities(dims, (q, k, bias), hv, p_buf)?;
                    p_buf
                }
            };
            // dv = p^T dout
            matmul(
                (tk, d, tq),
                grads.part(2),
                gv.v,
                p,
                rows.t(),
                dout,
                hv.out,
                1.0,
            )?;
            // dp = dout v^T, then ds = p * (dp - rowsum(dp * p)), in place
            matmul((tq, tk, d), dp, rows, dout, hv.out, v, hv.v.t(), 1.0)?;
            for (pr, gr) in p.chunks_exact(tk).zip(dp.chunks_exact_mut(tk)) {
                let dot: f32 = pr.iter().zip(gr.iter()).map(|(a, b)| a * b).sum();
                for (g, &a) in gr.iter_mut().zip(pr) {
                    *g = a * (*g - dot);
                }
            }
            // dq = scale ds k, dk = scale ds^T q
            matmul((tq, d, tk), grads.part(0), gv.q, dp, rows, k, hv.k, scale)?;
            matmul(
                (tk, d, tq),
                grads.part(1),
                gv.k,
                dp,
                rows.t(),
                q,
                hv.q,
                scale,
            )?;
        }
        Ok(())
    })
}

/// The values of an additive score bias (a [`super::super::ScoreBias`] on the CPU):
/// `[B or 1, H or 1, Tq, Tk]`, row-major, each (sequence, head) pair reading its `[Tq, Tk]`
/// block. A constant: no gradient flows into it.
#[derive(Clone, Debug)]
pub(in crate::layers) struct BiasBlocks {
    pub(in crate::layers) values: Arc<[f32]>,
    /// `[B or 1, H or 1, Tq, Tk]`: a leading size of 1 is shared by every sequence or head.
    pub(in crate::layers) dims: [usize; 4],
}

impl BiasBlocks {
    /// Whether the blocks serve attention of `b` sequences of `h` heads, `tq` queries and `tk`
    /// keys.
    pub(in crate::layers) fn fits(&self, shape: (usize, usize, usize, usize)) -> bool {
        super::super::bias_fits(&self.dims, shape)
    }

    fn check(&self, shape: (usize, usize, usize, usize)) -> Result<()> {
        if !self.fits(shape) || self.values.len() != self.dims.iter().product::<usize>() {
            let (b, h, tq, tk) = shape;
            candle_core::bail!(
                "attention: score bias {:?} does not fit [{b}, {h}, {tq}, {tk}]",
                self.dims
            );
        }
        Ok(())
    }

    /// Start of the block of sequence `bi`'s head `hi`.
    fn block_start(&self, bi: usize, hi: usize) -> usize {
        let [mb, mh, mq, mk] = self.dims;
        let (bi, hi) = (if mb == 1 { 0 } else { bi }, if mh == 1 { 0 } else { hi });
        (bi * mh + hi) * mq * mk
    }
}

/// Attention over separate contiguous q `[B, H, Tq, D]`, k, v `[B, H, Tk, D]`.
pub(in crate::layers) struct Attention {
    pub(in crate::layers) scale: f32,
    pub(in crate::layers) causal: bool,
    pub(in crate::layers) bias: Option<BiasBlocks>,
    pub(in crate::layers) saved: SavedProbabilities,
}

impl Attention {
    /// (batch, heads) of q and the per-head sizes.
    fn dims(&self, lq: &Layout, lk: &Layout) -> Result<((usize, usize), Dims)> {
        let (&[b, h, tq, d], &[_, _, tk, _]) = (lq.dims(), lk.dims()) else {
            candle_core::bail!("attention: expected 4-d q, k, v");
        };
        let dims = Dims {
            tq,
            tk,
            d,
            scale: self.scale,
            causal: self.causal,
        };
        if let Some(bias) = &self.bias {
            bias.check((b, h, tq, tk))?;
        }
        Ok(((b, h), dims))
    }

    /// The views of (batch, head) pair `p` of `heads` heads per sequence.
    fn head(&self, p: usize, heads: usize, dims: Dims) -> HeadViews {
        let Dims { tq, tk, d, .. } = dims;
        let bias = (self.bias.as_ref()).map(|bias| bias.block_start(p / heads, p % heads));
        HeadViews {
            q: View::rows(p * tq * d, d),
            k: View::rows(p * tk * d, d),
            v: View::rows(p * tk * d, d),
            out: View::rows(p * tq * d, d),
            bias,
        }
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "beatlab-attention"
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
        let (q, k, v) = (
            data(s1, l1, self.name())?,
            data(s2, l2, self.name())?,
            data(s3, l3, self.name())?,
        );
        let ((b, h), dims) = self.dims(l1, l2)?;
        let mut out = vec![0f32; q.len()];
        let heads_of = |p| std::iter::once(self.head(p, h, dims));
        let bias = self.bias.as_ref().map(|b| &*b.values);
        let probs = attend(dims, b * h, heads_of, (q, k, v, bias), &mut out)?;
        self.saved.store(probs);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _out: &Tensor,
        dout: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // A custom op takes at most three inputs: k and v travel together.
        let kv = Tensor::cat(&[&k.flatten_all()?, &v.flatten_all()?], 0)?;
        let grad = AttentionGrad {
            scale: self.scale,
            causal: self.causal,
            bias: self.bias.clone(),
            kv_dims: k.dims().to_vec(),
            saved: self.saved.get(),
        };
        let all = q.apply_op3_no_bwd(&kv, &dout.contiguous()?, &grad)?;
        let (nq, nk) = (q.elem_count(), k.elem_count());
        let dq = all.narrow(0, 0, nq)?.reshape(q.shape())?;
        let dk = all.narrow(0, nq, nk)?.reshape(k.shape())?;
        let dv = all.narrow(0, nq + nk, nk)?.reshape(v.shape())?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// Gradients of [`Attention`] from (q, k and v concatenated flat, dout), as one flat
/// buffer `dq | dk | dv`.
struct AttentionGrad {
    scale: f32,
    causal: bool,
    bias: Option<BiasBlocks>,
    kv_dims: Vec<usize>,
    /// The forward pass's probabilities, if it kept them.
    saved: Option<Arc<[f32]>>,
}

impl CustomOp3 for AttentionGrad {
    fn name(&self) -> &'static str {
        "beatlab-attention-grad"
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
        let q = data(s1, l1, self.name())?;
        let kv = data(s2, l2, self.name())?;
        let dout = data(s3, l3, self.name())?;
        let op = Attention {
            scale: self.scale,
            causal: self.causal,
            bias: self.bias.clone(),
            saved: Default::default(),
        };
        let kv_layout = Layout::contiguous(self.kv_dims.as_slice());
        let ((b, h), dims) = op.dims(l1, &kv_layout)?;
        let pairs = b * h;
        let (nq, nk) = (q.len(), kv.len() / 2);
        let (k, v) = kv.split_at(nk);
        let (qn, kn) = (dims.tq * dims.d, dims.tk * dims.d);
        if nq != pairs * qn || nk != pairs * kn || qn == 0 || kn == 0 {
            candle_core::bail!("{}: q, k and v do not fit", self.name());
        }
        let mut grads = vec![0f32; nq + 2 * nk];
        // Pair p's gradients: its own blocks of dq, dk and dv.
        let (dq, dkv) = grads.split_at_mut(nq);
        let (dk, dv) = dkv.split_at_mut(nk);
        let blocks = dq
            .chunks_mut(qn)
            .zip(dk.chunks_mut(kn))
            .zip(dv.chunks_mut(kn))
            .map(|((dq, dk), dv)| GradBlocks::Three([dq, dk, dv]))
            .collect();
        let heads_of = |p| -> std::iter::Once<(HeadViews, HeadViews)> {
            let hv = op.head(p, h, dims);
            let gv = HeadViews {
                q: View::rows(0, dims.d),
                k: View::rows(0, dims.d),
                v: View::rows(0, dims.d),
                ..hv
            };
            std::iter::once((hv, gv))
        };
        let saved = self.saved.as_deref();
        let bias = op.bias.as_ref().map(|b| &*b.values);
        attend_backward(dims, heads_of, (q, k, v, bias), (dout, saved), blocks)?;
        Ok((CpuStorage::F32(grads), Shape::from(nq + 2 * nk)))
    }
}

/// Self-attention over packed rows `[B * T, 3 * H * D]` (see
/// [`super::packed_self_attention_rows`]); output `[B * T, H * D]`.
pub(in crate::layers) struct PackedAttention {
    pub(in crate::layers) heads: usize,
    pub(in crate::layers) head_dim: usize,
    pub(in crate::layers) seq_len: usize,
    pub(in crate::layers) scale: f32,
    /// Additive score bias `[B or 1, heads or 1, T, T]`; a constant.
    pub(in crate::layers) bias: Option<BiasBlocks>,
    pub(in crate::layers) saved: SavedProbabilities,
}

impl PackedAttention {
    /// Sequences in the input, and the per-head sizes.
    fn dims(&self, l: &Layout) -> Result<(usize, Dims)> {
        let &[rows, width] = l.dims() else {
            candle_core::bail!("packed attention: expected [B * T, 3 * H * D] rows");
        };
        let t = self.seq_len;
        if width != 3 * self.heads * self.head_dim || t == 0 || !rows.is_multiple_of(t) {
            candle_core::bail!("packed attention: rows [{rows}, {width}] do not fit");
        }
        if let Some(bias) = &self.bias {
            bias.check((rows / t, self.heads, t, t))?;
        }
        let dims = Dims {
            tq: t,
            tk: t,
            d: self.head_dim,
            scale: self.scale,
            causal: false,
        };
        Ok((rows / t, dims))
    }

    /// Views of the heads of sequence `bi` into the packed input (and its gradient) and
    /// into the merged output (and its gradient).
    fn heads(&self, bi: usize) -> impl Iterator<Item = HeadViews> + use<> {
        let (h, d, t) = (self.heads, self.head_dim, self.seq_len);
        let inner = h * d;
        let bias = self.bias.clone();
        (0..h).map(move |hi| {
            let row = bi * t * 3 * inner + hi * d;
            HeadViews {
                q: View::rows(row, 3 * inner),
                k: View::rows(row + inner, 3 * inner),
                v: View::rows(row + 2 * inner, 3 * inner),
                out: View::rows(bi * t * inner + hi * d, inner),
                bias: bias.as_ref().map(|bias| bias.block_start(bi, hi)),
            }
        })
    }
}

impl CustomOp1 for PackedAttention {
    fn name(&self) -> &'static str {
        "beatlab-packed-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let qkv = data(s, l, self.name())?;
        let (b, dims) = self.dims(l)?;
        let inner = self.heads * self.head_dim;
        let mut out = vec![0f32; b * dims.tq * inner];
        let bias = self.bias.as_ref().map(|b| &*b.values);
        // One work item per sequence: its rows of the output hold all its heads.
        let heads_of = |bi| self.heads(bi);
        let probs = attend(dims, b, heads_of, (qkv, qkv, qkv, bias), &mut out)?;
        self.saved.store(probs);
        Ok((CpuStorage::F32(out), Shape::from((b * dims.tq, inner))))
    }

    fn bwd(&self, qkv: &Tensor, _out: &Tensor, dout: &Tensor) -> Result<Option<Tensor>> {
        let grad = PackedAttentionGrad {
            op: PackedAttention {
                heads: self.heads,
                head_dim: self.head_dim,
                seq_len: self.seq_len,
                scale: self.scale,
                bias: self.bias.clone(),
                saved: Default::default(),
            },
            saved: self.saved.get(),
        };
        Ok(Some(qkv.apply_op2_no_bwd(&dout.contiguous()?, &grad)?))
    }
}

/// Gradient of [`PackedAttention`] with respect to its packed input.
struct PackedAttentionGrad {
    op: PackedAttention,
    /// The forward pass's probabilities, if it kept them.
    saved: Option<Arc<[f32]>>,
}

impl CustomOp2 for PackedAttentionGrad {
    fn name(&self) -> &'static str {
        "beatlab-packed-attention-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let qkv = data(s1, l1, self.name())?;
        let dout = data(s2, l2, self.name())?;
        let op = &self.op;
        let (b, dims) = op.dims(l1)?;
        let mut grads = vec![0f32; qkv.len()];
        // One work item per sequence: its rows of the gradient hold dq, dk and dv of all
        // its heads, and no other sequence's.
        let block = qkv.len() / b.max(1);
        let blocks = grads.chunks_mut(block).map(GradBlocks::One).collect();
        let heads_of = |bi: usize| {
            let start = bi * block;
            op.heads(bi).map(move |hv| {
                let rebase = |v: View| View {
                    off: v.off - start,
                    ..v
                };
                let gv = HeadViews {
                    q: rebase(hv.q),
                    k: rebase(hv.k),
                    v: rebase(hv.v),
                    ..hv
                };
                (hv, gv)
            })
        };
        let bias = op.bias.as_ref().map(|b| &*b.values);
        let saved = self.saved.as_deref();
        attend_backward(dims, heads_of, (qkv, qkv, qkv, bias), (dout, saved), blocks)?;
        Ok((CpuStorage::F32(grads), l1.shape().clone()))
    }
}
