//! Beat evaluated over a whole split: losses, Code% and perplexity per quantizer level (over the
//! split, not one batch as the public code did), and the reconstruction error per lead.

use beatlab_ecg::STANDARD_LEADS;
use beatlab_ecg::dataset::WindowSet;
use beatlab_nn::beat::{Beat, Mode};
use beatlab_nn::metrics::{CodeUsage, LeadErrors};
use candle_core::{DType, Device, Tensor};

use super::step::scalar;
use crate::runner::StageError;

/// Validation results over a whole split.
#[derive(Debug, Clone, Default)]
pub struct Evaluation {
    pub windows: usize,
    pub loss: f64,
    pub recon: f64,
    pub pred: f64,
    pub vq: f64,
    /// Per level: used codes / codebook size, in percent.
    pub code_pct: Vec<f64>,
    pub perplexity: Vec<f64>,
    /// Reconstruction MSE per lead (standard order).
    pub lead_mse: Vec<f64>,
}

impl Evaluation {
    /// `(key, value)` pairs as logged and summarised (`<split>/loss`, `<split>/code_pct_l1`, ...).
    pub fn entries(&self, split: &str) -> Vec<(String, f64)> {
        let mut out = vec![
            (format!("{split}/loss"), self.loss),
            (format!("{split}/loss_recon"), self.recon),
            (format!("{split}/loss_pred"), self.pred),
            (format!("{split}/loss_vq"), self.vq),
        ];
        for (l, (pct, ppl)) in self.code_pct.iter().zip(&self.perplexity).enumerate() {
            out.push((format!("{split}/code_pct_l{}", l + 1), *pct));
            out.push((format!("{split}/perplexity_l{}", l + 1), *ppl));
        }
        if !self.code_pct.is_empty() {
            let mean = self.code_pct.iter().sum::<f64>() / self.code_pct.len() as f64;
            out.push((format!("{split}/code_pct"), mean));
        }
        for (lead, mse) in STANDARD_LEADS.iter().zip(&self.lead_mse) {
            out.push((format!("{split}/recon_mse_{lead}"), *mse));
        }
        out
    }
}

/// Stacks windows `indices` of a split into a `[B, 12, window_len]` tensor.
pub(super) fn batch_tensor(
    set: &WindowSet,
    indices: &[usize],
    window_len: usize,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let size = STANDARD_LEADS.len() * window_len;
    let mut data = Vec::with_capacity(indices.len() * size);
    for &i in indices {
        data.extend_from_slice(set.window(i, window_len));
    }
    Tensor::from_vec(
        data,
        (indices.len(), STANDARD_LEADS.len(), window_len),
        &Device::Cpu,
    )?
    .to_dtype(dtype)?
    .to_device(device)
}

/// Evaluates Beat over a whole split.
pub fn evaluate(
    model: &Beat,
    set: &WindowSet,
    window_len: usize,
    batch: usize,
    dtype: DType,
    device: &Device,
) -> Result<Evaluation, StageError> {
    let cfg = model.config();
    let mut usage = CodeUsage::new(cfg.dvq_levels, cfg.codebook_size);
    let mut leads = LeadErrors::new(cfg.leads);
    let (mut loss, mut recon, mut pred, mut vq) = (0.0, 0.0, 0.0, 0.0);
    let all: Vec<usize> = (0..set.len()).collect();
    for chunk in all.chunks(batch.max(1)) {
        let x = batch_tensor(set, chunk, window_len, dtype, device)?;
        let out = model.forward(&x, Mode::Eval)?;
        let n = chunk.len() as f64;
        loss += scalar(&out.loss)? * n;
        recon += scalar(&out.recon_loss)? * n;
        pred += scalar(&out.pred_loss)? * n;
        vq += scalar(&out.vq_loss)? * n;
        usage.add(&out.codes)?;
        leads.add(&out.reconstruction, &x.narrow(2, 0, cfg.input_len)?)?;
    }
    let n = set.len().max(1) as f64;
    Ok(Evaluation {
        windows: set.len(),
        loss: loss / n,
        recon: recon / n,
        pred: pred / n,
        vq: vq / n,
        code_pct: (0..cfg.dvq_levels).map(|l| usage.code_percent(l)).collect(),
        perplexity: (0..cfg.dvq_levels).map(|l| usage.perplexity(l)).collect(),
        lead_mse: leads.mse_per_lead(),
    })
}
