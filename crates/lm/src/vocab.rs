//! Token embeddings and the output head of a decoder, with room for tokens added after the
//! checkpoint was made.
//!
//! The checkpoint's table (`model.embed_tokens`, and `lm_head` unless tied) stays as loaded.
//! Extra rows live in *segments*, each with its own small tensors in a [`ParamStore`] of the
//! caller's choice: rows appended past the checkpoint's vocabulary ([`Vocabulary::grow`]) or rows
//! that take over existing ids ([`Vocabulary::own_rows`], e.g. special tokens a tokenizer placed
//! in a checkpoint's padding rows). Putting a segment in a trainable store trains exactly those
//! rows while the checkpoint's rows stay frozen; putting it in a store that no optimiser sees
//! freezes it (the paper freezes its image / signal start and end markers).
//!
//! Lookups never concatenate the big table: each id is looked up in the table that owns it (the
//! others see index 0 and a zero weight), and logits are assembled from column slices.

use std::ops::Range;

use beatlab_nn::ParamStore;
use candle_core::{DType, Device, Tensor};
use candle_nn::Init;

use crate::error::{LmError, Result};
use crate::layers::INIT_STD;

#[derive(Debug, Clone)]
struct Segment {
    start: usize,
    len: usize,
    /// `[len, hidden]`, f32.
    embed: Tensor,
    /// `[len, hidden]`, f32; `None` when the embeddings are tied to the head.
    head: Option<Tensor>,
}

impl Segment {
    fn range(&self) -> Range<usize> {
        self.start..self.start + self.len
    }
}

/// Input embeddings plus output head of a decoder.
#[derive(Debug, Clone)]
pub(crate) struct Vocabulary {
    /// `[base_size, hidden]` in the model dtype.
    base_embed: Tensor,
    /// `[base_size, hidden]`; `None` when tied to `base_embed`.
    base_head: Option<Tensor>,
    /// Sorted by `start`, non-overlapping.
    segments: Vec<Segment>,
}

impl Vocabulary {
    pub(crate) fn new(base_embed: Tensor, base_head: Option<Tensor>) -> Self {
        Self {
            base_embed,
            base_head,
            segments: Vec::new(),
        }
    }

    fn base_size(&self) -> usize {
        self.base_embed.dims()[0]
    }

    fn hidden(&self) -> usize {
        self.base_embed.dims()[1]
    }

    fn dtype(&self) -> DType {
        self.base_embed.dtype()
    }

    fn device(&self) -> &Device {
        self.base_embed.device()
    }

    /// Number of token ids the model accepts and predicts.
    pub(crate) fn size(&self) -> usize {
        self.segments
            .iter()
            .map(|s| s.start + s.len)
            .fold(self.base_size(), usize::max)
    }

    /// The id ranges served by segments.
    pub(crate) fn segment_ranges(&self) -> Vec<Range<usize>> {
        self.segments.iter().map(Segment::range).collect()
    }

    /// `[batch, seq]` ids -> `[batch, seq, hidden]` embeddings in the model dtype.
    pub(crate) fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (batch, seq) = ids.dims2().map_err(|_| {
            LmError::input(
                "ids",
                "a 2-D tensor [batch, seq]",
                format!("{:?}", ids.dims()),
            )
        })?;
        let host: Vec<u32> = ids.to_dtype(DType::U32)?.flatten_all()?.to_vec1::<u32>()?;
        let size = self.size();
        if let Some(bad) = host.iter().find(|&&id| id as usize >= size) {
            return Err(LmError::input(
                "ids",
                format!("token ids below the vocabulary size {size}"),
                format!("id {bad}"),
            ));
        }
        let hidden = self.hidden();
        let n = host.len();
        let dev = self.device().clone();
        let flat = if self.segments.is_empty() {
            let idx = Tensor::from_vec(host, n, &dev)?;
            self.base_embed.index_select(&idx, 0)?
        } else {
            let owner = |id: u32| {
                self.segments
                    .iter()
                    .position(|s| s.range().contains(&(id as usize)))
            };
            let mut base_idx = Vec::with_capacity(n);
            let mut base_keep = Vec::with_capacity(n);
            for &id in &host {
                let in_base = owner(id).is_none();
                base_idx.push(if in_base { id } else { 0 });
                base_keep.push(if in_base { 1f32 } else { 0.0 });
            }
            let mut out = self
                .base_embed
                .index_select(&Tensor::from_vec(base_idx, n, &dev)?, 0)?
                .broadcast_mul(&keep_column(base_keep, self.dtype(), &dev)?)?;
            for (k, seg) in self.segments.iter().enumerate() {
                let mut idx = Vec::with_capacity(n);
                let mut keep = Vec::with_capacity(n);
                for &id in &host {
                    let mine = owner(id) == Some(k);
                    idx.push(if mine { id - seg.start as u32 } else { 0 });
                    keep.push(if mine { 1f32 } else { 0.0 });
                }
                let rows = seg
                    .embed
                    .index_select(&Tensor::from_vec(idx, n, &dev)?, 0)?
                    .to_dtype(self.dtype())?
                    .broadcast_mul(&keep_column(keep, self.dtype(), &dev)?)?;
                out = (out + rows)?;
            }
            out
        };
        Ok(flat.reshape((batch, seq, hidden))?)
    }

    /// `[batch, seq, hidden]` hidden states -> `[batch, seq, size]` logits.
    pub(crate) fn logits(&self, hidden_states: &Tensor) -> Result<Tensor> {
        let (batch, seq, hidden) = hidden_states.dims3()?;
        let flat = hidden_states.reshape((batch * seq, hidden))?;
        let base_head = self.base_head.as_ref().unwrap_or(&self.base_embed);
        let base = flat.matmul(&base_head.t()?)?;
        if self.segments.is_empty() {
            return Ok(base.reshape((batch, seq, self.base_size()))?);
        }
        let mut pieces = Vec::new();
        let mut cursor = 0;
        for seg in &self.segments {
            if seg.start > cursor {
                pieces.push(base.narrow(1, cursor, seg.start - cursor)?);
            }
            let head = seg
                .head
                .as_ref()
                .unwrap_or(&seg.embed)
                .to_dtype(self.dtype())?;
            pieces.push(flat.matmul(&head.t()?)?);
            cursor = seg.start + seg.len;
        }
        if cursor < self.base_size() {
            pieces.push(base.narrow(1, cursor, self.base_size() - cursor)?);
        }
        let logits = Tensor::cat(&pieces, 1)?;
        Ok(logits.reshape((batch, seq, self.size()))?)
    }

    /// Append `n` ids after the current vocabulary, their rows created in `store` under
    /// `<name>.embed_tokens` (and `<name>.lm_head` when the head is not tied). New rows start at
    /// the mean of the checkpoint's rows plus seeded noise of std [`INIT_STD`], so they are
    /// distinct yet typical. If `store` already holds the tensors (a reloaded run), they are used
    /// as they are.
    pub(crate) fn grow(&mut self, n: usize, store: &ParamStore, name: &str) -> Result<Range<u32>> {
        if n == 0 {
            return Err(LmError::input("n", "at least one token to add", "0"));
        }
        let start = self.size();
        let init = |table: &Tensor| -> Result<Tensor> {
            let mean = table.to_dtype(DType::F32)?.mean_keepdim(0)?;
            Ok(mean.broadcast_as((n, self.hidden()))?.contiguous()?)
        };
        let embed = segment_var(
            store,
            &format!("{name}.embed_tokens"),
            (n, self.hidden()),
            self.device(),
            SegmentInit::OffsetNoise(init(&self.base_embed)?),
        )?;
        let head = match &self.base_head {
            Some(h) => Some(segment_var(
                store,
                &format!("{name}.lm_head"),
                (n, self.hidden()),
                self.device(),
                SegmentInit::OffsetNoise(init(h)?),
            )?),
            None => None,
        };
        self.segments.push(Segment {
            start,
            len: n,
            embed,
            head,
        });
        Ok(start as u32..(start + n) as u32)
    }

    /// Serve the existing ids `range` from new rows in `store` (`<name>.embed_tokens`,
    /// `<name>.lm_head`), initialised as copies of the rows they replace so the model's function
    /// is unchanged until they are trained.
    pub(crate) fn own_rows(
        &mut self,
        range: Range<u32>,
        store: &ParamStore,
        name: &str,
    ) -> Result<()> {
        let range = range.start as usize..range.end as usize;
        if range.is_empty() || range.end > self.base_size() {
            return Err(LmError::input(
                "range",
                format!(
                    "a non-empty id range inside the checkpoint vocabulary 0..{}",
                    self.base_size()
                ),
                format!("{range:?}"),
            ));
        }
        if let Some(other) = self
            .segments
            .iter()
            .find(|s| s.start < range.end && range.start < s.start + s.len)
        {
            return Err(LmError::input(
                "range",
                "ids not yet served by another segment",
                format!("{range:?} overlaps {:?}", other.range()),
            ));
        }
        let len = range.len();
        let copy_of = |table: &Tensor| -> Result<Tensor> {
            Ok(table
                .narrow(0, range.start, len)?
                .to_dtype(DType::F32)?
                .contiguous()?)
        };
        let embed = segment_var(
            store,
            &format!("{name}.embed_tokens"),
            (len, self.hidden()),
            self.device(),
            SegmentInit::Exact(copy_of(&self.base_embed)?),
        )?;
        let head = match &self.base_head {
            Some(h) => Some(segment_var(
                store,
                &format!("{name}.lm_head"),
                (len, self.hidden()),
                self.device(),
                SegmentInit::Exact(copy_of(h)?),
            )?),
            None => None,
        };
        self.segments.push(Segment {
            start: range.start,
            len,
            embed,
            head,
        });
        self.segments.sort_by_key(|s| s.start);
        Ok(())
    }
}

enum SegmentInit {
    /// Seeded noise of std [`INIT_STD`] added to this tensor.
    OffsetNoise(Tensor),
    /// Exactly this tensor.
    Exact(Tensor),
}

/// Create (or fetch, when it already exists) an f32 variable in `store` and set its first value.
fn segment_var(
    store: &ParamStore,
    name: &str,
    shape: (usize, usize),
    device: &Device,
    init: SegmentInit,
) -> Result<Tensor> {
    let existed = store.get(name).is_some();
    let vb = store.var_builder(DType::F32, device);
    let tensor = vb.get_with_hints(
        shape,
        name,
        Init::Randn {
            mean: 0.0,
            stdev: INIT_STD,
        },
    )?;
    if !existed {
        let var = store
            .get(name)
            .expect("ParamStore::get_with_hints creates the variable");
        let first = match init {
            SegmentInit::OffsetNoise(offset) => (tensor.detach() + offset)?,
            SegmentInit::Exact(value) => value,
        };
        var.set(&first)?;
    }
    Ok(tensor)
}

fn keep_column(keep: Vec<f32>, dtype: DType, dev: &Device) -> Result<Tensor> {
    let n = keep.len();
    Ok(Tensor::from_vec(keep, (n, 1), dev)?.to_dtype(dtype)?)
}
