//! The multimodal chat sequence: where each ECG's image and signal blocks go, where the
//! projected embeddings are spliced in, which positions the loss sees, how long items are
//! truncated, and how rows are right-padded into a batch.
//!
//! One row is (paper §1.2, one ECG shown as image and signal):
//!
//! ```text
//! <image_start> [image tokens] <image_end> <signal_start> [signal tokens] <signal_end>
//! <|user|> question <|assistant|> answer <|end|>
//! ```
//!
//! An item's inputs (its `filename` / `label` lists) are grouped into ECGs: a run of consecutive
//! entries with the same file name is one ECG shown in several modalities (the Heartcare builder
//! writes "signal and image" items that way). ECGs keep their order (comparison-QA shows the
//! first ECG first); within one ECG its image block comes before its signal block, as in the
//! paper's sequence. Each input gets its own block.
//!
//! Positions of projected tokens hold the `<pad>` id as a placeholder in [`Row::ids`]; the model
//! replaces their embeddings with projector outputs (see [`Batch::splice_index`]). In the
//! earlier release's "codes" mode the signal block holds real token ids (`<|ecg_k|>`) instead.
//!
//! The loss covers exactly the answer tokens and the closing `<|end|>`.
//!
//! **Truncation** to `max_seq_len` never touches the ECG blocks or the chat markers: the
//! question is cut first, from its *start* (the end of a Heartcare question holds what is asked
//! and, for closed-QA, the lettered options); only when the question is gone is the answer cut,
//! from its *end* (its first tokens are what the loss and the scoring need most), the `<|end|>`
//! marker going first. A row that cannot hold its blocks, markers and one answer token is an
//! error. Prompt rows (no answer, for generation) keep one free position for the first
//! generated token.

use std::ops::Range;

use beatlab_heartcare::instruct::{Item, Modality};
use beatlab_lm::{LmTokenizer, Special};
use candle_core::{DType, Device, Tensor};

use crate::error::{MmError, Result};

/// The ids of the chat and modality markers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatTokens {
    /// `<pad>`: right padding and the placeholder at spliced positions.
    pub pad: u32,
    /// `<|user|>`.
    pub user: u32,
    /// `<|assistant|>`.
    pub assistant: u32,
    /// `<|end|>`.
    pub end: u32,
    /// `<image_start>`.
    pub image_start: u32,
    /// `<image_end>`.
    pub image_end: u32,
    /// `<signal_start>`.
    pub signal_start: u32,
    /// `<signal_end>`.
    pub signal_end: u32,
}

impl ChatTokens {
    /// The markers' ids in `tokenizer`.
    pub fn from_tokenizer(tokenizer: &LmTokenizer) -> Self {
        Self {
            pad: tokenizer.special_id(Special::Pad),
            user: tokenizer.special_id(Special::User),
            assistant: tokenizer.special_id(Special::Assistant),
            end: tokenizer.special_id(Special::End),
            image_start: tokenizer.special_id(Special::ImageStart),
            image_end: tokenizer.special_id(Special::ImageEnd),
            signal_start: tokenizer.special_id(Special::SignalStart),
            signal_end: tokenizer.special_id(Special::SignalEnd),
        }
    }

    fn markers(&self, modality: Modality) -> (u32, u32) {
        match modality {
            Modality::Image => (self.image_start, self.image_end),
            Modality::Signal => (self.signal_start, self.signal_end),
        }
    }
}

/// What fills one modality block between its start and end markers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockContent {
    /// `len` positions filled with rows `first_row .. first_row + len` of the batch's table of
    /// projected embeddings.
    Embeds {
        /// First table row.
        first_row: usize,
        /// Number of positions (and rows).
        len: usize,
    },
    /// Token ids (Beat code tokens in "codes" mode).
    Tokens(Vec<u32>),
}

impl BlockContent {
    /// Positions the content takes.
    pub fn len(&self) -> usize {
        match self {
            Self::Embeds { len, .. } => *len,
            Self::Tokens(ids) => ids.len(),
        }
    }

    /// Whether the content takes no position.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The projected embeddings of a batch's ECGs and where each item's blocks find them.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// `[N, H]` projected embeddings in the backbone's dtype (`None` when nothing is spliced).
    pub table: Option<Tensor>,
    /// Per item, its blocks in sequence order.
    pub blocks: Vec<Vec<Block>>,
}

/// One ECG input as it enters the sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// Which markers surround it.
    pub modality: Modality,
    /// What is between them.
    pub content: BlockContent,
}

impl Block {
    /// Positions the block takes, markers included.
    pub fn len(&self) -> usize {
        self.content.len() + 2
    }

    /// Never true: a block always holds its two markers.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// A name for `item` in error messages: its id, else its place in the batch and its type.
pub fn item_name(item: &Item, index: usize) -> String {
    match &item.id {
        Some(id) => format!("item `{id}`"),
        None => format!("item {index} (type `{}`)", item.item_type),
    }
}

/// The order in which an item's inputs (indices into `filename` / `label`) enter the sequence:
/// ECGs (runs of consecutive equal file names) in order, the image block of an ECG before its
/// signal block, inputs of one ECG and one modality in their listed order.
pub fn block_order(item: &Item, index: usize) -> Result<Vec<usize>> {
    if item.filename.len() != item.label.len() {
        return Err(MmError::item(
            item_name(item, index),
            format!(
                "has {} file names but {} modality labels; they must pair up",
                item.filename.len(),
                item.label.len()
            ),
        ));
    }
    let mut order = Vec::with_capacity(item.label.len());
    let mut start = 0;
    while start < item.filename.len() {
        let mut end = start + 1;
        while end < item.filename.len() && item.filename[end] == item.filename[start] {
            end += 1;
        }
        for wanted in [Modality::Image, Modality::Signal] {
            order.extend((start..end).filter(|&i| item.label[i] == wanted));
        }
        start = end;
    }
    Ok(order)
}

/// A run of positions whose embeddings come from the table of projected embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Splice {
    /// First position in the row.
    pub position: usize,
    /// First table row.
    pub first_row: usize,
    /// Positions (and rows).
    pub len: usize,
}

/// One laid-out sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Token ids; `<pad>` placeholders at spliced positions.
    pub ids: Vec<u32>,
    /// Where projected embeddings replace the token embeddings.
    pub splices: Vec<Splice>,
    /// Positions whose tokens are loss targets: the answer and its `<|end|>` (empty for a
    /// prompt row).
    pub targets: Range<usize>,
    /// Positions up to and including `<|assistant|>`.
    pub prompt_len: usize,
    /// Question tokens dropped to fit `max_seq_len` (from the question's start).
    pub question_dropped: usize,
    /// Answer tokens dropped to fit `max_seq_len` (from the answer's end; `<|end|>` counted).
    pub answer_dropped: usize,
}

/// Lay out one row: `blocks` (in sequence order), then `<|user|> question <|assistant|>`, then,
/// when `answer` is given, `answer <|end|>` as loss targets. Truncates as the module doc says;
/// `name` identifies the item in errors.
pub fn layout_row(
    tokens: &ChatTokens,
    blocks: &[Block],
    question: &[u32],
    answer: Option<&[u32]>,
    max_seq_len: usize,
    name: &str,
) -> Result<Row> {
    let prefix: usize = blocks.iter().map(Block::len).sum();
    let fixed = prefix + 2;
    // A training row needs its answer and `<|end|>`; a prompt row one free position.
    let wanted_tail = answer.map_or(1, |a| a.len() + 1);
    if fixed + 1 > max_seq_len {
        return Err(MmError::TooLong {
            item: name.to_string(),
            needed: fixed,
            max_seq_len,
        });
    }
    let room = max_seq_len - fixed;
    let question_kept = question.len().min(room.saturating_sub(wanted_tail));
    let tail_kept = wanted_tail.min(room - question_kept);

    let mut ids = Vec::with_capacity(fixed + question_kept + tail_kept);
    let mut splices = Vec::new();
    for block in blocks {
        let (start, end) = tokens.markers(block.modality);
        ids.push(start);
        match &block.content {
            BlockContent::Embeds { first_row, len } => {
                splices.push(Splice {
                    position: ids.len(),
                    first_row: *first_row,
                    len: *len,
                });
                ids.extend(std::iter::repeat_n(tokens.pad, *len));
            }
            BlockContent::Tokens(content) => ids.extend_from_slice(content),
        }
        ids.push(end);
    }
    ids.push(tokens.user);
    ids.extend_from_slice(&question[question.len() - question_kept..]);
    ids.push(tokens.assistant);
    let prompt_len = ids.len();
    let (targets, answer_dropped) = match answer {
        Some(a) => {
            let answer_kept = tail_kept.min(a.len());
            ids.extend_from_slice(&a[..answer_kept]);
            if tail_kept > a.len() {
                ids.push(tokens.end);
            }
            (prompt_len..ids.len(), wanted_tail - tail_kept)
        }
        None => (prompt_len..prompt_len, 0),
    };
    Ok(Row {
        ids,
        splices,
        targets,
        prompt_len,
        question_dropped: question.len() - question_kept,
        answer_dropped,
    })
}

/// Rows right-padded into tensors.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `[B, T]` u32 token ids (`<pad>` after each row's end).
    pub ids: Tensor,
    /// `[B, T]` u8: 1 for positions of the row, 0 for padding.
    pub attention_mask: Tensor,
    /// `[B, T]` f32: 1 where the token is a loss target.
    pub target_mask: Tensor,
    /// `[B * T]` u32, present when some row splices: 0 keeps the token embedding, `r + 1`
    /// takes row `r` of the table of projected embeddings.
    pub splice_index: Option<Tensor>,
    /// `[B * T, 1]` f32, present with `splice_index`: 1 where the token embedding is kept.
    pub token_keep: Option<Tensor>,
    /// Length of each row.
    pub lengths: Vec<usize>,
    /// `T`, the longest row.
    pub seq_len: usize,
    /// One more than the largest table row any row splices (0 when none does).
    pub table_rows: usize,
}

/// Right-pad `rows` with `pad` into one batch on `device`.
pub fn collate(rows: &[Row], pad: u32, device: &Device) -> Result<Batch> {
    if rows.is_empty() {
        return Err(MmError::EmptyBatch);
    }
    let batch = rows.len();
    let seq_len = rows.iter().map(|r| r.ids.len()).max().unwrap_or(0);
    let cells = batch * seq_len;
    let mut ids = vec![pad; cells];
    let mut attention = vec![0u8; cells];
    let mut targets = vec![0f32; cells];
    let any_splice = rows.iter().any(|r| !r.splices.is_empty());
    let mut splice = vec![0u32; if any_splice { cells } else { 0 }];
    let mut table_rows = 0;
    for (b, row) in rows.iter().enumerate() {
        let base = b * seq_len;
        ids[base..base + row.ids.len()].copy_from_slice(&row.ids);
        attention[base..base + row.ids.len()].fill(1);
        targets[base + row.targets.start..base + row.targets.end].fill(1.0);
        for s in &row.splices {
            for k in 0..s.len {
                splice[base + s.position + k] = (s.first_row + k + 1) as u32;
            }
            table_rows = table_rows.max(s.first_row + s.len);
        }
    }
    let (splice_index, token_keep) = if any_splice {
        let keep: Vec<f32> = splice
            .iter()
            .map(|&s| if s == 0 { 1.0 } else { 0.0 })
            .collect();
        (
            Some(Tensor::from_vec(splice, cells, device)?),
            Some(Tensor::from_vec(keep, (cells, 1), device)?),
        )
    } else {
        (None, None)
    };
    Ok(Batch {
        ids: Tensor::from_vec(ids, (batch, seq_len), device)?,
        attention_mask: Tensor::from_vec(attention, (batch, seq_len), device)?,
        target_mask: Tensor::from_vec(targets, (batch, seq_len), device)?.to_dtype(DType::F32)?,
        splice_index,
        token_keep,
        lengths: rows.iter().map(|r| r.ids.len()).collect(),
        seq_len,
        table_rows,
    })
}
