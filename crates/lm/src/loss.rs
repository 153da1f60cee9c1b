//! The language-modelling loss: next-token cross-entropy over full-sequence logits, restricted
//! to the positions a mask selects (the answer tokens of a chat item).

use candle_core::{D, DType, Tensor};

use crate::error::{LmError, Result};

/// Mean cross-entropy of predicting `ids[:, t + 1]` from `logits[:, t]`.
///
/// `logits` is `[batch, seq, vocab]`, `ids` `[batch, seq]` (u32 or i64), `target_mask`
/// (optional) `[batch, seq]` with 1 where the token at that position is a target (its
/// prediction comes from the position before). Computed in f32. Errors when no position is a
/// target.
pub fn next_token_loss(
    logits: &Tensor,
    ids: &Tensor,
    target_mask: Option<&Tensor>,
) -> Result<Tensor> {
    let (batch, seq, vocab) = logits.dims3().map_err(|_| {
        LmError::input(
            "logits",
            "[batch, seq, vocab]",
            format!("{:?}", logits.dims()),
        )
    })?;
    if ids.dims() != [batch, seq] || seq < 2 {
        return Err(LmError::input(
            "ids",
            format!("[{batch}, {seq}] with seq >= 2"),
            format!("{:?}", ids.dims()),
        ));
    }
    let log_probs = candle_nn::ops::log_softmax(
        &logits.narrow(1, 0, seq - 1)?.to_dtype(DType::F32)?,
        D::Minus1,
    )?;
    let targets = ids
        .narrow(1, 1, seq - 1)?
        .to_dtype(DType::U32)?
        .contiguous()?;
    let picked = log_probs
        .reshape(((seq - 1) * batch, vocab))?
        .gather(&targets.reshape(((seq - 1) * batch, 1))?, 1)?
        .reshape((batch, seq - 1))?;
    let weights = match target_mask {
        None => Tensor::ones((batch, seq - 1), DType::F32, logits.device())?,
        Some(m) => {
            if m.dims() != [batch, seq] {
                return Err(LmError::input(
                    "target_mask",
                    format!("[{batch}, {seq}]"),
                    format!("{:?}", m.dims()),
                ));
            }
            m.narrow(1, 1, seq - 1)?.to_dtype(DType::F32)?
        }
    };
    let count = weights.sum_all()?.to_scalar::<f32>()?;
    if count <= 0.0 {
        return Err(LmError::input(
            "target_mask",
            "at least one target position after the first",
            "none",
        ));
    }
    Ok((picked.mul(&weights)?.sum_all()?.neg()? / count as f64)?)
}
