//! Evaluation: length-normalised likelihood scoring of answer options (closed-QA and
//! comparison-QA) and greedy generation (open-QA, reports), both in evaluation mode.

use beatlab_heartcare::instruct::Item;
use candle_core::{D, DType, Tensor};

use crate::error::{MmError, Result};
use crate::input::EcgInput;
use crate::model::{Example, HeartcareModel};
use crate::sequence::{Row, collate, item_name, layout_row};

/// A greedy continuation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    /// Generated ids, `<|end|>` excluded.
    pub ids: Vec<u32>,
    /// Their text (special and non-text tokens left out).
    pub text: String,
    /// Whether generation stopped at `<|end|>` (rather than at a length limit).
    pub finished: bool,
}

impl HeartcareModel {
    /// Length-normalised log-likelihood of each option as the answer: the mean log-probability
    /// of the option's tokens and the closing `<|end|>` given the item's ECGs and question
    /// (the mean, so long options are not penalised for their length; `<|end|>` is included
    /// so that an option that is only the prefix of the trained answer scores lower). All
    /// options run as one batch over one encoding of the ECGs, in evaluation mode.
    pub fn score_options(
        &self,
        item: &Item,
        inputs: &[EcgInput],
        options: &[String],
    ) -> Result<Vec<f64>> {
        if options.is_empty() {
            return Ok(Vec::new());
        }
        let _eval = EvalMode::enter(self);
        let encoded = self.encode(&[Example::new(item, inputs)])?;
        let question = self.encode_text(&item.question)?;
        let name = item_name(item, 0);
        let rows = options
            .iter()
            .map(|option| {
                layout_row(
                    &self.chat,
                    &encoded.blocks[0],
                    &question,
                    Some(&self.encode_text(option)?),
                    self.config.max_seq_len,
                    &name,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let batch = collate(&rows, self.chat.pad, &self.device)?;
        let logits = self.logits_of(&batch, encoded.table.as_ref())?;
        let (_, t, _) = logits.dims3()?;
        let log_probs = candle_nn::ops::log_softmax(
            &logits.narrow(1, 0, t - 1)?.to_dtype(DType::F32)?,
            D::Minus1,
        )?;
        let next = batch.ids.narrow(1, 1, t - 1)?.contiguous()?;
        let picked = log_probs.gather(&next.unsqueeze(2)?, 2)?.squeeze(2)?;
        let sums = picked
            .mul(&batch.target_mask.narrow(1, 1, t - 1)?)?
            .sum(1)?
            .to_vec1::<f32>()?;
        Ok(sums
            .iter()
            .zip(&rows)
            .map(|(&sum, row)| f64::from(sum) / row.targets.len() as f64)
            .collect())
    }

    /// Greedy answer to one item, at most `max_new_tokens` tokens, stopping at `<|end|>`.
    pub fn generate(
        &self,
        item: &Item,
        inputs: &[EcgInput],
        max_new_tokens: usize,
    ) -> Result<Generation> {
        let mut out = self.generate_batch(&[Example::new(item, inputs)], max_new_tokens)?;
        Ok(out.remove(0))
    }

    /// Greedy answers to several items at once (right-padded rows; each row reads its logits
    /// at its own last position). The backbone has no KV cache, so each step recomputes the
    /// whole sequence: fine for tiny models. Rows stop at `<|end|>`, after `max_new_tokens`,
    /// or at `max_seq_len`.
    pub fn generate_batch(
        &self,
        examples: &[Example],
        max_new_tokens: usize,
    ) -> Result<Vec<Generation>> {
        if examples.is_empty() {
            return Err(MmError::EmptyBatch);
        }
        let _eval = EvalMode::enter(self);
        let encoded = self.encode(examples)?;
        let mut rows = Vec::with_capacity(examples.len());
        for (k, (ex, blocks)) in examples.iter().zip(&encoded.blocks).enumerate() {
            rows.push(layout_row(
                &self.chat,
                blocks,
                &self.encode_text(&ex.item.question)?,
                None,
                self.config.max_seq_len,
                &item_name(ex.item, k),
            )?);
        }
        let mut generated: Vec<Vec<u32>> = vec![Vec::new(); rows.len()];
        let mut finished = vec![false; rows.len()];
        let mut active: Vec<usize> = (0..rows.len()).collect();
        for _ in 0..max_new_tokens {
            if active.is_empty() {
                break;
            }
            let batch_rows: Vec<Row> = active.iter().map(|&k| rows[k].clone()).collect();
            let batch = collate(&batch_rows, self.chat.pad, &self.device)?;
            let logits = self.logits_of(&batch, encoded.table.as_ref())?;
            let (b, t, v) = logits.dims3()?;
            let last: Vec<u32> = batch
                .lengths
                .iter()
                .enumerate()
                .map(|(i, len)| (i * t + len - 1) as u32)
                .collect();
            let next = logits
                .reshape((b * t, v))?
                .index_select(&Tensor::new(last.as_slice(), &self.device)?, 0)?
                .argmax(D::Minus1)?
                .to_vec1::<u32>()?;
            let mut still = Vec::with_capacity(active.len());
            for (&k, &token) in active.iter().zip(&next) {
                if token == self.chat.end {
                    finished[k] = true;
                    continue;
                }
                rows[k].ids.push(token);
                generated[k].push(token);
                if rows[k].ids.len() < self.config.max_seq_len {
                    still.push(k);
                }
            }
            active = still;
        }
        let text_vocab = self.tokenizer.vocab_size() as u32;
        generated
            .into_iter()
            .zip(finished)
            .map(|(ids, finished)| {
                let text_ids: Vec<u32> = ids.iter().copied().filter(|&i| i < text_vocab).collect();
                Ok(Generation {
                    text: self.tokenizer.decode(&text_ids, true)?,
                    ids,
                    finished,
                })
            })
            .collect()
    }
}

/// Evaluation mode (dropout off) for the guard's lifetime; the previous mode comes back after.
struct EvalMode<'a> {
    model: &'a HeartcareModel,
    was_training: bool,
}

impl<'a> EvalMode<'a> {
    fn enter(model: &'a HeartcareModel) -> Self {
        let was_training = model.is_training();
        model.set_training(false);
        Self {
            model,
            was_training,
        }
    }
}

impl Drop for EvalMode<'_> {
    fn drop(&mut self) {
        self.model.set_training(self.was_training);
    }
}
