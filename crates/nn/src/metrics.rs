//! Accumulators for evaluating Beat over a whole split: codebook usage per level (Code%,
//! perplexity) and reconstruction error per lead.
//!
//! The public HeartcareGPT code measured codebook usage on the last batch only, which
//! understates it; these accumulate over every batch they are given.

use candle_core::{DType, Result, Tensor};

/// Counts of every code of every level, over all batches added.
#[derive(Clone, Debug, PartialEq)]
pub struct CodeUsage {
    codebook_size: usize,
    counts: Vec<Vec<u64>>,
}

impl CodeUsage {
    pub fn new(levels: usize, codebook_size: usize) -> Self {
        Self {
            codebook_size,
            counts: vec![vec![0; codebook_size]; levels],
        }
    }

    pub fn levels(&self) -> usize {
        self.counts.len()
    }

    /// Adds the codes of one batch: one tensor of any shape per level (e.g. `BeatOutput::codes`).
    pub fn add(&mut self, codes: &[Tensor]) -> Result<()> {
        if codes.len() != self.counts.len() {
            candle_core::bail!(
                "code usage: got codes for {} levels, expected {}",
                codes.len(),
                self.counts.len()
            );
        }
        for (level, c) in codes.iter().enumerate() {
            let values = c.flatten_all()?.to_dtype(DType::U32)?.to_vec1::<u32>()?;
            self.add_level(level, &values)?;
        }
        Ok(())
    }

    /// Adds host-side codes of one level.
    pub fn add_level(&mut self, level: usize, codes: &[u32]) -> Result<()> {
        let size = self.codebook_size;
        let Some(counts) = self.counts.get_mut(level) else {
            candle_core::bail!("code usage: level {level} out of range");
        };
        for &c in codes {
            match counts.get_mut(c as usize) {
                Some(n) => *n += 1,
                None => candle_core::bail!(
                    "code usage: code {c} at level {level} outside a codebook of {size}"
                ),
            }
        }
        Ok(())
    }

    /// The counts of `level`, one per code.
    pub fn counts(&self, level: usize) -> &[u64] {
        &self.counts[level]
    }

    /// Codes of `level` used at least once.
    pub fn used(&self, level: usize) -> usize {
        self.counts[level].iter().filter(|&&n| n > 0).count()
    }

    /// Code% of `level`: used codes / codebook size * 100.
    pub fn code_percent(&self, level: usize) -> f64 {
        self.used(level) as f64 / self.codebook_size as f64 * 100.0
    }

    /// `exp(entropy)` of the usage distribution of `level` (natural log): the effective number
    /// of codes, from 1 (one code) to the codebook size (uniform use). 0 before any data.
    pub fn perplexity(&self, level: usize) -> f64 {
        let counts = &self.counts[level];
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0.0;
        }
        let total = total as f64;
        let entropy: f64 = counts
            .iter()
            .filter(|&&n| n > 0)
            .map(|&n| {
                let p = n as f64 / total;
                -p * p.ln()
            })
            .sum();
        entropy.exp()
    }
}

/// Sum of squared errors and sample count per lead, over all batches added.
#[derive(Clone, Debug, PartialEq)]
pub struct LeadErrors {
    sum_sq: Vec<f64>,
    count: Vec<u64>,
}

impl LeadErrors {
    pub fn new(leads: usize) -> Self {
        Self {
            sum_sq: vec![0.0; leads],
            count: vec![0; leads],
        }
    }

    /// Adds one batch: `estimate` and `target` of the same shape `[B, leads, T]`.
    pub fn add(&mut self, estimate: &Tensor, target: &Tensor) -> Result<()> {
        let (b, leads, t) = estimate.dims3()?;
        if target.dims() != estimate.dims() {
            candle_core::bail!(
                "lead errors: estimate {:?} and target {:?} differ in shape",
                estimate.dims(),
                target.dims()
            );
        }
        if leads != self.sum_sq.len() {
            candle_core::bail!("lead errors: {leads} leads, expected {}", self.sum_sq.len());
        }
        // Sum on the device (in f32 per batch), accumulate across batches in f64 on the host.
        let per_lead = (estimate.to_dtype(DType::F32)? - target.to_dtype(DType::F32)?)?
            .sqr()?
            .sum(2)?
            .sum(0)?
            .to_vec1::<f32>()?;
        for (acc, v) in self.sum_sq.iter_mut().zip(per_lead) {
            *acc += f64::from(v);
        }
        for n in &mut self.count {
            *n += (b * t) as u64;
        }
        Ok(())
    }

    /// Mean squared error per lead (NaN for a lead with no samples yet).
    pub fn mse_per_lead(&self) -> Vec<f64> {
        self.sum_sq
            .iter()
            .zip(&self.count)
            .map(|(&s, &n)| if n == 0 { f64::NAN } else { s / n as f64 })
            .collect()
    }

    /// Mean squared error over all leads and samples.
    pub fn mse(&self) -> f64 {
        let n: u64 = self.count.iter().sum();
        if n == 0 {
            return f64::NAN;
        }
        self.sum_sq.iter().sum::<f64>() / n as f64
    }
}
