//! anyECG-chat's flexible inputs as the backbone sees them (`paper-facts.md` §3): a signal
//! block of `k` chunks, each chunk's tokens after a learned **chunk-position token**, and,
//! when the model has one, a **lead-mask token** first that tells which of the 12 leads carry
//! signal (the others are zero-filled):
//!
//! ```text
//! <signal_start> [lead mask] [chunk 0] [tokens of chunk 0] [chunk 1] [tokens of chunk 1] ... <signal_end>
//! ```
//!
//! The chunk-position tokens are rows `0..k` of a learned table `chunk_pos` `[max_chunks, H]`
//! (anyECG-chat concatenates its chunks' tokens; the position tokens keep their order). The
//! lead-mask token is a linear map of the mask (1 for a recorded lead, 0 for a zero-filled
//! one) to `H`, `lead_mask.{weight,bias}`; a model with it gives every signal block one, all
//! ones for a full recording. Both live in the signal projector's store (`projector.signal`,
//! under `flexible.`) and train with it; a model with neither (the default, the paper's
//! HeartcareGPT) lays out its signal blocks as before, with no extra position.

use beatlab_nn::layers::{Linear, TOKEN_INIT_STD};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::error::{MmError, Result};

/// The chunk-position table and the lead-mask map.
#[derive(Debug, Clone)]
pub struct FlexibleTokens {
    chunk_pos: Option<Tensor>,
    lead_mask: Option<Linear>,
    leads: usize,
    hidden: usize,
}

impl FlexibleTokens {
    /// Tokens of width `hidden` for up to `max_chunks` chunks (0: no chunk-position tokens,
    /// inputs are single windows) and, with `lead_mask`, the mask token of `leads` leads;
    /// `None` when there are neither.
    pub fn new(
        hidden: usize,
        max_chunks: usize,
        lead_mask: bool,
        leads: usize,
        vb: VarBuilder,
    ) -> Result<Option<Self>> {
        if max_chunks == 0 && !lead_mask {
            return Ok(None);
        }
        let chunk_pos = if max_chunks > 0 {
            let init = Init::Randn {
                mean: 0.0,
                stdev: TOKEN_INIT_STD,
            };
            Some(vb.get_with_hints((max_chunks, hidden), "chunk_pos", init)?)
        } else {
            None
        };
        let lead_mask = if lead_mask {
            Some(Linear::new(leads, hidden, true, vb.pp("lead_mask"))?)
        } else {
            None
        };
        Ok(Some(Self {
            chunk_pos,
            lead_mask,
            leads,
            hidden,
        }))
    }

    /// The same tokens cut from the autograd graph.
    pub fn detached(&self) -> Self {
        Self {
            chunk_pos: self.chunk_pos.as_ref().map(Tensor::detach),
            lead_mask: self
                .lead_mask
                .as_ref()
                .map(|l| Linear::from_tensors(l.weight().detach(), l.bias().map(Tensor::detach))),
            ..self.clone()
        }
    }

    /// Most chunks one input may have (1 without chunk-position tokens).
    pub fn max_chunks(&self) -> usize {
        self.chunk_pos.as_ref().map_or(1, |t| t.dims()[0])
    }

    /// Whether signal blocks start with a lead-mask token.
    pub fn has_lead_mask(&self) -> bool {
        self.lead_mask.is_some()
    }

    /// Positions a block of `chunks` chunks of `per_chunk` tokens takes between its markers.
    pub fn block_len(&self, chunks: usize, per_chunk: usize) -> usize {
        let positions = if self.chunk_pos.is_some() { chunks } else { 0 };
        usize::from(self.has_lead_mask()) + positions + chunks * per_chunk
    }

    /// One signal block's embeddings `[block_len, H]` from its chunks' projected tokens
    /// `[chunks * per_chunk, H]` (chunk-major) and its lead mask (`None`: every lead).
    pub fn block(
        &self,
        projected: &Tensor,
        chunks: usize,
        lead_mask: Option<&[bool]>,
    ) -> Result<Tensor> {
        let (rows, h) = projected.dims2()?;
        if chunks == 0 || !rows.is_multiple_of(chunks) || h != self.hidden {
            return Err(MmError::config(
                "chunks",
                format!("{rows} projected rows of width {h} do not split into {chunks} chunks"),
            ));
        }
        if chunks > self.max_chunks() {
            return Err(MmError::config(
                "max_chunks",
                format!(
                    "= {} but an input has {chunks} chunks (cut recordings to at most \
                     max_chunks chunks)",
                    self.max_chunks()
                ),
            ));
        }
        let per_chunk = rows / chunks;
        let mut pieces = Vec::with_capacity(2 * chunks + 1);
        if let Some(map) = &self.lead_mask {
            pieces.push(map.forward(&self.mask_vector(lead_mask, projected.device())?)?);
        }
        for c in 0..chunks {
            if let Some(pos) = &self.chunk_pos {
                pieces.push(pos.narrow(0, c, 1)?);
            }
            pieces.push(projected.narrow(0, c * per_chunk, per_chunk)?);
        }
        let dtype = projected.dtype();
        let pieces = pieces
            .iter()
            .map(|p| p.to_dtype(dtype))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Tensor::cat(&pieces, 0)?)
    }

    /// `[1, leads]`: 1 for a recorded lead, 0 for a zero-filled one.
    fn mask_vector(&self, mask: Option<&[bool]>, device: &Device) -> Result<Tensor> {
        let values: Vec<f32> = match mask {
            None => vec![1.0; self.leads],
            Some(m) if m.len() == self.leads => m.iter().map(|&k| f32::from(u8::from(k))).collect(),
            Some(m) => {
                return Err(MmError::config(
                    "lead_mask",
                    format!("has {} flags; the model has {} leads", m.len(), self.leads),
                ));
            }
        };
        Ok(Tensor::from_vec(values, (1, self.leads), device)?.to_dtype(DType::F32)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use beatlab_nn::ParamStore;

    fn rows(values: &[f32], h: usize) -> Tensor {
        Tensor::from_vec(values.to_vec(), (values.len() / h, h), &Device::Cpu).unwrap()
    }

    #[test]
    fn off_by_default_and_block_order_is_mask_then_position_then_tokens() {
        let store = ParamStore::new(7);
        let vb = store.var_builder(DType::F32, &Device::Cpu);
        assert!(
            FlexibleTokens::new(2, 0, false, 3, vb.clone())
                .unwrap()
                .is_none()
        );
        assert!(store.vars().is_empty(), "nothing is created when off");
        let flex = FlexibleTokens::new(2, 3, true, 3, vb).unwrap().unwrap();
        // Two chunks of two tokens each: values 1..8 say which token is which.
        let projected = rows(&[1., 1., 2., 2., 3., 3., 4., 4.], 2);
        let mask = [true, false, true];
        let block = flex.block(&projected, 2, Some(&mask)).unwrap();
        assert_eq!(block.dims(), &[7, 2]);
        assert_eq!(flex.block_len(2, 2), 7);
        let got = block.to_vec2::<f32>().unwrap();
        // Rebuild each row from the stored weights.
        let pos = store
            .get("chunk_pos")
            .unwrap()
            .as_tensor()
            .to_vec2::<f32>()
            .unwrap();
        let w = store
            .get("lead_mask.weight")
            .unwrap()
            .as_tensor()
            .to_vec2::<f32>()
            .unwrap();
        let b = store
            .get("lead_mask.bias")
            .unwrap()
            .as_tensor()
            .to_vec1::<f32>()
            .unwrap();
        let mask_row: Vec<f32> = (0..2).map(|j| w[j][0] + w[j][2] + b[j]).collect();
        for (g, e) in got[0].iter().zip(&mask_row) {
            assert!((g - e).abs() < 1e-6, "mask token {got:?} vs {mask_row:?}");
        }
        assert_eq!(got[1], pos[0]);
        assert_eq!(got[2], [1., 1.]);
        assert_eq!(got[3], [2., 2.]);
        assert_eq!(got[4], pos[1]);
        assert_eq!(got[5], [3., 3.]);
        assert_eq!(got[6], [4., 4.]);
    }

    #[test]
    fn too_many_chunks_and_bad_masks_are_errors() {
        let store = ParamStore::new(8);
        let vb = store.var_builder(DType::F32, &Device::Cpu);
        let flex = FlexibleTokens::new(2, 2, true, 3, vb).unwrap().unwrap();
        let projected = rows(&[0.0; 6], 2);
        assert!(flex.block(&projected, 3, None).is_err());
        assert!(flex.block(&rows(&[0.0; 4], 2), 2, Some(&[true])).is_err());
        // Without chunk positions only single windows fit.
        let store = ParamStore::new(9);
        let flex = FlexibleTokens::new(2, 0, true, 3, store.var_builder(DType::F32, &Device::Cpu))
            .unwrap()
            .unwrap();
        assert_eq!(flex.max_chunks(), 1);
        assert_eq!(
            flex.block(&rows(&[0.0; 4], 2), 1, None).unwrap().dims(),
            &[3, 2]
        );
        assert!(flex.block(&rows(&[0.0; 4], 2), 2, None).is_err());
    }
}
