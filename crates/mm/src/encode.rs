//! Turning an item's ECG inputs into backbone embeddings: validation of each input against the
//! model, the signal encoder (Beat, or the ECG ViT) and SigLIP run once per batch (or skipped
//! for precomputed inputs), the projectors, and the blocks that tell the sequence layout where
//! each projected input lies in the batch's table of embeddings ("codes" mode: which code
//! tokens it becomes). A chunked input's chunks run through the encoder with the batch's other
//! windows; its block gets the chunk-position and lead-mask tokens of [`crate::flexible`].

use beatlab_heartcare::instruct::Modality;
use beatlab_lm::SiglipVision;
use beatlab_nn::Beat;
use candle_core::{DType, Tensor};

use crate::error::{MmError, Result};
use crate::input::EcgInput;
use crate::model::{Example, HeartcareModel, MissingModality, SignalInput};
use crate::parts::Part;
use crate::sequence::{Block, BlockContent, Encoded, block_order, item_name};

/// Where an input's embeddings (or codes) will be: its index among the batch's inputs of its
/// kind.
enum Planned {
    Signal(usize),
    Codes(usize),
    Image(usize),
}

/// The batch's inputs by kind, filled as they are checked (precomputed ones) or by the encoders'
/// one run over the batch (`windows`, `pixels`: slot and input).
///
/// `latents[s]` is `[chunks * Q, width]`, with `signal_shape[s]` = (chunks, lead mask);
/// `windows` holds `(slot, [n, leads, L])`, `n` the input's chunks (1 for a plain window).
#[derive(Default)]
struct Slots {
    latents: Vec<Option<Tensor>>,
    signal_shape: Vec<(usize, Option<Vec<bool>>)>,
    codes: Vec<Option<Vec<Vec<u32>>>>,
    features: Vec<Option<Tensor>>,
    windows: Vec<(usize, Tensor)>,
    pixels: Vec<(usize, Tensor)>,
}

impl Slots {
    fn push_latents(&mut self, t: Option<Tensor>) -> usize {
        self.push_chunked(t, 1, None)
    }

    fn push_chunked(&mut self, t: Option<Tensor>, chunks: usize, mask: Option<Vec<bool>>) -> usize {
        self.latents.push(t);
        self.signal_shape.push((chunks, mask));
        self.latents.len() - 1
    }

    fn push_codes(&mut self, c: Option<Vec<Vec<u32>>>) -> usize {
        self.codes.push(c);
        self.codes.len() - 1
    }

    fn push_features(&mut self, t: Option<Tensor>) -> usize {
        self.features.push(t);
        self.features.len() - 1
    }
}

/// Each projected input's `(first row, rows)` in the embedding table.
#[derive(Default)]
struct TableRows {
    signal: Vec<(usize, usize)>,
    image: Vec<(usize, usize)>,
    next: usize,
}

impl TableRows {
    fn take(&mut self, n: usize) -> (usize, usize) {
        self.next += n;
        (self.next - n, n)
    }
}

fn filled(slots: Vec<Option<Tensor>>) -> Vec<Tensor> {
    slots
        .into_iter()
        .map(|t| t.expect("every slot is filled before projection"))
        .collect()
}

fn label_name(label: Modality) -> &'static str {
    match label {
        Modality::Signal => "signal",
        Modality::Image => "img",
    }
}

impl HeartcareModel {
    fn require_beat(&self) -> Result<&Beat> {
        self.beat.as_ref().ok_or_else(|| MmError::AbsentPart {
            part: Part::Beat.name().into(),
            reason: "signal windows need Beat; give precomputed latents or codes instead, or \
                     build the model with a Beat configuration"
                .into(),
        })
    }

    fn require_vision(&self) -> Result<&SiglipVision> {
        self.vision.as_ref().ok_or_else(|| MmError::AbsentPart {
            part: Part::Vision.name().into(),
            reason: "pixels need a vision tower; give precomputed features instead".into(),
        })
    }

    /// The part that encodes signal windows: the ECG ViT when the model has one, else Beat.
    fn signal_encoder_part(&self) -> Option<Part> {
        if self.vit.is_some() {
            Some(Part::Vit)
        } else {
            self.beat.as_ref().map(|_| Part::Beat)
        }
    }

    /// `(leads, input_len)` of the windows the signal encoder takes.
    fn window_shape(&self) -> Result<(usize, usize)> {
        match &self.vit {
            Some(vit) => Ok((vit.config().leads, vit.config().input_len)),
            None => {
                let c = self.require_beat()?.config();
                Ok((c.leads, c.input_len))
            }
        }
    }

    /// The signal encoder's output `[N, Q, width]` of windows `[N, leads, L]`: the ECG ViT's
    /// tokens, else Beat's quantized latents; detached unless that encoder is trainable.
    pub fn signal_latents(&self, windows: &Tensor) -> Result<Tensor> {
        let windows = windows.to_dtype(DType::F32)?;
        let (latents, part) = match &self.vit {
            Some(vit) => (vit.forward(&windows)?, Part::Vit),
            None => (self.require_beat()?.encode(&windows)?, Part::Beat),
        };
        Ok(if self.trainable.contains(&part) {
            latents
        } else {
            latents.detach()
        })
    }

    /// Beat's codes `[N, levels, Q]` (u32) of windows `[N, leads, L]`.
    pub fn signal_codes(&self, windows: &Tensor) -> Result<Tensor> {
        let beat = self.require_beat()?;
        let levels = beat.codes(&windows.to_dtype(DType::F32)?)?;
        Ok(Tensor::stack(&levels, 1)?)
    }

    /// Pooled features `[N, F]` of normalised pixels `[N, 3, S, S]`; detached unless the
    /// vision tower is trainable.
    pub fn image_features(&self, pixels: &Tensor) -> Result<Tensor> {
        let vision = self.require_vision()?;
        let pooled = vision
            .forward(&pixels.to_dtype(self.dtype)?)?
            .pooled
            .ok_or_else(|| MmError::config("vision", "the tower has no pooling head"))?;
        Ok(if self.trainable.contains(&Part::Vision) {
            pooled
        } else {
            pooled.detach()
        })
    }

    /// Run the frozen encoders once: windows (and chunks) become latents (or codes in "codes"
    /// mode) when the signal encoder is frozen, pixels become pooled features when the vision
    /// tower is frozen; other inputs are returned as they are. Inputs of one kind are encoded
    /// in one batch.
    pub fn precompute(&self, inputs: &[EcgInput]) -> Result<Vec<EcgInput>> {
        let mut out: Vec<EcgInput> = inputs.to_vec();
        let signal_frozen = self
            .signal_encoder_part()
            .is_some_and(|p| !self.trainable.contains(&p));
        let vision_frozen = self.vision.is_some() && !self.trainable.contains(&Part::Vision);
        if signal_frozen {
            self.precompute_signals(inputs, &mut out)?;
        }
        if vision_frozen {
            let mut slots = Vec::new();
            let mut pixels = Vec::new();
            for (i, input) in inputs.iter().enumerate() {
                if let EcgInput::Pixels(p) = input {
                    let p = self.check_pixels(p, "precompute", i)?;
                    slots.push((i, p.dim(0)?));
                    pixels.push(p);
                }
            }
            if !pixels.is_empty() {
                let features = self.image_features(&Tensor::cat(&pixels, 0)?)?;
                let mut offset = 0;
                for (slot, n) in slots {
                    out[slot] = EcgInput::Features(features.narrow(0, offset, n)?);
                    offset += n;
                }
            }
        }
        Ok(out)
    }

    /// The frozen signal encoder over every window and chunk of `inputs`, in one batch.
    fn precompute_signals(&self, inputs: &[EcgInput], out: &mut [EcgInput]) -> Result<()> {
        let input_len = self.window_shape()?.1;
        let mut slots = Vec::new();
        let mut windows = Vec::new();
        for (i, input) in inputs.iter().enumerate() {
            let w = match input {
                EcgInput::Window(w) => self.check_window(w, "precompute", i)?.unsqueeze(0)?,
                EcgInput::Chunks { windows, .. } => self.check_chunks(windows, "precompute", i)?,
                _ => continue,
            };
            slots.push((i, w.dim(0)?));
            windows.push(w.narrow(2, 0, input_len)?);
        }
        if windows.is_empty() {
            return Ok(());
        }
        let stacked = Tensor::cat(&windows, 0)?;
        let encoded = match self.config.signal_input {
            SignalInput::Latents => self.signal_latents(&stacked)?,
            SignalInput::Codes => self.signal_codes(&stacked)?,
        };
        let mut offset = 0;
        for (slot, n) in slots {
            let lead_mask = match &inputs[slot] {
                EcgInput::Chunks { lead_mask, .. } => Some(lead_mask.clone()),
                _ => None,
            };
            out[slot] = match (lead_mask, self.config.signal_input) {
                (Some(lead_mask), _) => EcgInput::ChunkLatents {
                    latents: encoded.narrow(0, offset, n)?,
                    lead_mask,
                },
                (None, SignalInput::Latents) => EcgInput::Latents(encoded.get(offset)?),
                (None, SignalInput::Codes) => EcgInput::Codes(encoded.get(offset)?),
            };
            offset += n;
        }
        Ok(())
    }

    fn input_error(
        &self,
        item: &str,
        index: usize,
        modality: &str,
        expected: impl Into<String>,
        found: impl Into<String>,
    ) -> MmError {
        MmError::Input {
            item: item.to_string(),
            index,
            modality: modality.to_string(),
            expected: expected.into(),
            found: found.into(),
        }
    }

    /// A window `[leads, L >= input_len]`, as f32.
    fn check_window(&self, w: &Tensor, item: &str, index: usize) -> Result<Tensor> {
        let (leads, input_len) = self.window_shape()?;
        match w.dims() {
            &[l, len] if l == leads && len >= input_len => Ok(w.to_dtype(DType::F32)?),
            other => Err(self.input_error(
                item,
                index,
                "signal",
                format!("a window [{leads}, L >= {input_len}]"),
                format!("shape {other:?}"),
            )),
        }
    }

    /// Chunks `[k, leads, L >= input_len]`, `1 <= k <=` the model's chunk limit, as f32.
    fn check_chunks(&self, w: &Tensor, item: &str, index: usize) -> Result<Tensor> {
        let (leads, input_len) = self.window_shape()?;
        let max = self.flexible.as_ref().map_or(1, |f| f.max_chunks());
        if self.config.signal_input == SignalInput::Codes {
            return Err(self.input_error(
                item,
                index,
                "signal",
                "a window or codes (chunked recordings need signal_input = \"latents\")",
                format!("chunks of shape {:?}", w.dims()),
            ));
        }
        match w.dims() {
            &[k, l, len] if (1..=max).contains(&k) && l == leads && len >= input_len => {
                Ok(w.to_dtype(DType::F32)?)
            }
            other => Err(self.input_error(
                item,
                index,
                "signal",
                format!("chunks [1..={max}, {leads}, L >= {input_len}] (max_chunks = {max})"),
                format!("shape {other:?}"),
            )),
        }
    }

    /// Pixels `[3, S, S]` or `[n, 3, S, S]` with n features per image -> `[n, 3, S, S]`.
    fn check_pixels(&self, p: &Tensor, item: &str, index: usize) -> Result<Tensor> {
        let vision = self.require_vision()?;
        let s = vision.config().image_size;
        let n = self.config.features_per_image();
        let p = if p.rank() == 3 {
            p.unsqueeze(0)?
        } else {
            p.clone()
        };
        match p.dims() {
            &[count, 3, h, w] if count == n && h == s && w == s => Ok(p),
            _ => Err(self.input_error(
                item,
                index,
                "img",
                if n == 1 {
                    format!("pixels [3, {s}, {s}] (or [1, 3, {s}, {s}])")
                } else {
                    format!("{n} lead tiles [{n}, 3, {s}, {s}] (12-lead mode)")
                },
                format!("shape {:?}", p.dims()),
            )),
        }
    }

    /// Codes `[levels, Q]` with values below the codebook size, on the host.
    fn check_codes(&self, c: &Tensor, item: &str, index: usize) -> Result<Vec<Vec<u32>>> {
        let beat = self.require_beat()?;
        let (levels, q, k) = (
            beat.config().dvq_levels,
            beat.dims().queries,
            beat.config().codebook_size,
        );
        let bad = |found: String| {
            self.input_error(
                item,
                index,
                "signal",
                format!("codes [{levels}, {q}] below {k}"),
                found,
            )
        };
        if c.dims() != [levels, q] {
            return Err(bad(format!("shape {:?}", c.dims())));
        }
        let host = c.to_dtype(DType::U32)?.to_vec2::<u32>()?;
        if let Some(v) = host.iter().flatten().find(|&&v| v as usize >= k) {
            return Err(bad(format!("code {v}")));
        }
        Ok(host)
    }

    /// Project every ECG of `examples` and lay out their blocks.
    pub fn encode(&self, examples: &[Example]) -> Result<Encoded> {
        let mut slots = Slots::default();
        let plans = examples
            .iter()
            .enumerate()
            .map(|(k, ex)| self.plan_example(ex, k, &mut slots))
            .collect::<Result<Vec<_>>>()?;
        self.run_encoders(&mut slots)?;
        let (table, rows) = self.project(slots.latents, &slots.signal_shape, slots.features)?;
        let blocks = plans
            .into_iter()
            .map(|plan| self.blocks_of(plan, &rows, &slots.codes))
            .collect();
        Ok(Encoded { table, blocks })
    }

    /// Checks an example's inputs against its labels and the model, and gives each kept input a
    /// slot of `slots`; returns its inputs in block order.
    fn plan_example(
        &self,
        ex: &Example,
        k: usize,
        slots: &mut Slots,
    ) -> Result<Vec<(Modality, Planned)>> {
        let name = item_name(ex.item, k);
        let order = block_order(ex.item, k)?;
        if ex.inputs.len() != ex.item.label.len() {
            return Err(MmError::item(
                name,
                format!(
                    "has {} modality labels but {} inputs were given",
                    ex.item.label.len(),
                    ex.inputs.len()
                ),
            ));
        }
        let mut plan = Vec::with_capacity(order.len());
        for i in order {
            let label = ex.item.label[i];
            let input = &ex.inputs[i];
            if input.modality() != label {
                return Err(self.input_error(
                    &name,
                    i,
                    label_name(label),
                    format!("{} input", label_name(label)),
                    input.describe(),
                ));
            }
            if !self.keeps(label, &name, i)? {
                continue;
            }
            plan.push((label, self.plan_input(input, label, &name, i, slots)?));
        }
        Ok(plan)
    }

    /// Whether inputs of `label` enter the model: its stream exists, or missing streams are
    /// dropped (else an error).
    fn keeps(&self, label: Modality, name: &str, i: usize) -> Result<bool> {
        let available = match label {
            Modality::Signal => self.config.signal,
            Modality::Image => self.config.image,
        };
        match (available, self.config.missing_modality) {
            (true, _) => Ok(true),
            (false, MissingModality::Drop) => Ok(false),
            (false, MissingModality::Error) => Err(MmError::item(
                name.to_string(),
                format!(
                    "input {i} is `{}`, a stream this model was built without (set \
                     missing_modality = \"drop\" to leave such inputs out)",
                    label_name(label)
                ),
            )),
        }
    }

    /// Width of the latents the signal projector takes.
    fn signal_width(&self) -> usize {
        (self.signal_proj.as_ref()).map_or(self.config.signal_feature_dim, |p| p.in_dim())
    }

    /// Encoded chunks `[k, Q, width]` as latent rows `[k * Q, width]` (f32) and `k`; `Err`
    /// holds what was expected.
    fn chunk_latent_rows(&self, latents: &Tensor) -> std::result::Result<(Tensor, usize), String> {
        let width = self.signal_width();
        let max = self.flexible.as_ref().map_or(1, |f| f.max_chunks());
        let &[k, q, w] = latents.dims() else {
            return Err(format!("encoded chunks [k, Q, {width}]"));
        };
        if !(1..=max).contains(&k) || q == 0 || w != width {
            return Err(format!("encoded chunks [1..={max}, Q, {width}]"));
        }
        let rows = latents
            .reshape((k * q, w))
            .and_then(|r| r.to_dtype(DType::F32));
        rows.map(|rows| (rows, k))
            .map_err(|e| format!("encoded chunks ({e})"))
    }

    /// Validates one input and reserves its slot (filled now, or by the batch's encoder run).
    fn plan_input(
        &self,
        input: &EcgInput,
        label: Modality,
        name: &str,
        i: usize,
        slots: &mut Slots,
    ) -> Result<Planned> {
        let codes_mode = self.config.signal_input == SignalInput::Codes;
        let wrong = |expected: String, found: String| {
            self.input_error(name, i, label_name(label), expected, found)
        };
        Ok(match (input, codes_mode) {
            (EcgInput::Window(w), false) => {
                let w = self.check_window(w, name, i)?.unsqueeze(0)?;
                slots.windows.push((slots.latents.len(), w));
                Planned::Signal(slots.push_latents(None))
            }
            (EcgInput::Window(w), true) => {
                let w = self.check_window(w, name, i)?.unsqueeze(0)?;
                slots.windows.push((slots.codes.len(), w));
                Planned::Codes(slots.push_codes(None))
            }
            (EcgInput::Latents(t), false) => {
                let width = self.signal_width();
                if !matches!(t.dims(), &[q, w] if q > 0 && w == width) {
                    return Err(wrong(
                        format!("latents [Q, {width}]"),
                        format!("shape {:?}", t.dims()),
                    ));
                }
                Planned::Signal(slots.push_latents(Some(t.to_dtype(DType::F32)?)))
            }
            (EcgInput::Latents(t), true) => {
                return Err(wrong(
                    "a window or codes (the model runs in \"codes\" mode)".into(),
                    format!("latents of shape {:?}", t.dims()),
                ));
            }
            (EcgInput::Codes(c), false) => {
                let latents = self.latents_of_codes(&self.check_codes(c, name, i)?)?;
                Planned::Signal(slots.push_latents(Some(latents)))
            }
            (EcgInput::Codes(c), true) => {
                Planned::Codes(slots.push_codes(Some(self.check_codes(c, name, i)?)))
            }
            (EcgInput::Chunks { windows, lead_mask }, _) => {
                let w = self.check_chunks(windows, name, i)?;
                slots.windows.push((slots.latents.len(), w.clone()));
                let k = w.dim(0)?;
                Planned::Signal(slots.push_chunked(None, k, lead_mask.clone()))
            }
            (EcgInput::ChunkLatents { latents, lead_mask }, false) => {
                let (rows, k) = self
                    .chunk_latent_rows(latents)
                    .map_err(|e| wrong(e, format!("shape {:?}", latents.dims())))?;
                Planned::Signal(slots.push_chunked(Some(rows), k, lead_mask.clone()))
            }
            (EcgInput::ChunkLatents { latents, .. }, true) => {
                return Err(wrong(
                    "a window or codes (the model runs in \"codes\" mode)".into(),
                    format!("encoded chunks of shape {:?}", latents.dims()),
                ));
            }
            (EcgInput::Pixels(p), _) => {
                let p = self.check_pixels(p, name, i)?;
                slots.pixels.push((slots.features.len(), p));
                Planned::Image(slots.push_features(None))
            }
            (EcgInput::Features(f), _) => {
                let n = self.config.features_per_image();
                let width = self
                    .image_proj
                    .as_ref()
                    .map_or(self.config.image_feature_dim, |p| p.in_dim());
                if f.dims() != [n, width] {
                    return Err(wrong(
                        format!("features [{n}, {width}]"),
                        format!("shape {:?}", f.dims()),
                    ));
                }
                Planned::Image(slots.push_features(Some(f.to_dtype(DType::F32)?)))
            }
        })
    }

    /// Beat's latents `[Q, width]` (detached) of one ECG's codes `[levels][Q]`.
    fn latents_of_codes(&self, host: &[Vec<u32>]) -> Result<Tensor> {
        let beat = self.require_beat()?;
        let levels = host
            .iter()
            .map(|row| Tensor::new(row.as_slice(), &self.device)?.unsqueeze(0))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let l = beat.latents_from_codes(&levels)?.squeeze(0)?;
        Ok(l.to_dtype(DType::F32)?.detach())
    }

    /// Runs the signal encoder once over every window and chunk of the batch and SigLIP once
    /// over every image, filling their slots.
    fn run_encoders(&self, slots: &mut Slots) -> Result<()> {
        if !slots.windows.is_empty() {
            let input_len = self.window_shape()?.1;
            let stacked = Tensor::cat(
                &slots
                    .windows
                    .iter()
                    .map(|(_, w)| w.narrow(2, 0, input_len))
                    .collect::<candle_core::Result<Vec<_>>>()?,
                0,
            )?;
            if self.config.signal_input == SignalInput::Codes {
                // Codes mode takes single windows only (chunks are refused when planned).
                let all = self.signal_codes(&stacked)?;
                for (k, (slot, _)) in slots.windows.iter().enumerate() {
                    slots.codes[*slot] = Some(all.get(k)?.to_vec2::<u32>()?);
                }
            } else {
                let all = self.signal_latents(&stacked)?;
                let mut offset = 0;
                for (slot, w) in &slots.windows {
                    let n = w.dim(0)?;
                    let (_, q, width) = all.dims3()?;
                    let rows = if n == 1 {
                        all.get(offset)?
                    } else {
                        all.narrow(0, offset, n)?.reshape((n * q, width))?
                    };
                    slots.latents[*slot] = Some(rows);
                    offset += n;
                }
            }
        }
        if !slots.pixels.is_empty() {
            let all = Tensor::cat(&slots.pixels.iter().map(|(_, p)| p).collect::<Vec<_>>(), 0)?;
            let pooled = self.image_features(&all)?.to_dtype(DType::F32)?;
            let mut offset = 0;
            for (slot, p) in &slots.pixels {
                let n = p.dim(0)?;
                slots.features[*slot] = Some(pooled.narrow(0, offset, n)?);
                offset += n;
            }
        }
        Ok(())
    }

    /// Projects every signal and image input; returns the table of their embeddings (in the
    /// backbone's dtype) and where each one's rows lie in it.
    fn project(
        &self,
        latents: Vec<Option<Tensor>>,
        signal_shape: &[(usize, Option<Vec<bool>>)],
        features: Vec<Option<Tensor>>,
    ) -> Result<(Option<Tensor>, TableRows)> {
        let (latents, features) = (filled(latents), filled(features));
        let mut rows = TableRows::default();
        let mut pieces = Vec::new();
        if !latents.is_empty() {
            let proj = self
                .signal_proj
                .as_ref()
                .ok_or_else(|| self.absent(Part::SignalProjector))?;
            let trained = self.trainable.contains(&Part::SignalProjector);
            let proj = if trained {
                proj.clone()
            } else {
                proj.detached()
            };
            let projected = proj.forward(&Tensor::cat(&latents, 0)?)?;
            match &self.flexible {
                None => {
                    for ((l, (chunks, _)), k) in latents.iter().zip(signal_shape).zip(0..) {
                        if *chunks > 1 {
                            return Err(MmError::config(
                                "max_chunks",
                                format!(
                                    "= 0 but signal input {k} of the batch has {chunks} chunks \
                                     (a model for chunked recordings needs max_chunks > 0)"
                                ),
                            ));
                        }
                        let r = rows.take(l.dim(0)?);
                        rows.signal.push(r);
                    }
                    pieces.push(projected);
                }
                Some(flex) => {
                    let flex = if trained {
                        flex.clone()
                    } else {
                        flex.detached()
                    };
                    let mut offset = 0;
                    for (l, (chunks, mask)) in latents.iter().zip(signal_shape) {
                        let n = l.dim(0)?;
                        let block =
                            flex.block(&projected.narrow(0, offset, n)?, *chunks, mask.as_deref())?;
                        offset += n;
                        let r = rows.take(block.dim(0)?);
                        rows.signal.push(r);
                        pieces.push(block);
                    }
                }
            }
        }
        if !features.is_empty() {
            let proj = self
                .image_proj
                .as_ref()
                .ok_or_else(|| self.absent(Part::ImageProjector))?;
            for f in &features {
                let r = rows.take(f.dim(0)? * proj.tokens());
                rows.image.push(r);
            }
            let proj = if self.trainable.contains(&Part::ImageProjector) {
                proj.clone()
            } else {
                proj.detached()
            };
            let projected = proj.forward(&Tensor::cat(&features, 0)?)?;
            let (n, t, h) = projected.dims3()?;
            pieces.push(projected.reshape((n * t, h))?);
        }
        let table = if pieces.is_empty() {
            None
        } else {
            Some(Tensor::cat(&pieces, 0)?.to_dtype(self.dtype)?)
        };
        Ok((table, rows))
    }

    /// One item's blocks: rows of the table, or ("codes" mode) code tokens, query-major.
    fn blocks_of(
        &self,
        plan: Vec<(Modality, Planned)>,
        rows: &TableRows,
        codes: &[Option<Vec<Vec<u32>>>],
    ) -> Vec<Block> {
        plan.into_iter()
            .map(|(modality, planned)| {
                let embeds =
                    |(first_row, len): (usize, usize)| BlockContent::Embeds { first_row, len };
                let content = match planned {
                    Planned::Signal(s) => embeds(rows.signal[s]),
                    Planned::Image(s) => embeds(rows.image[s]),
                    Planned::Codes(s) => {
                        let vocab = self.codes.expect("codes mode has a code vocabulary");
                        let levels = codes[s].as_ref().expect("every slot is filled");
                        let q = levels.first().map_or(0, Vec::len);
                        let mut ids = Vec::with_capacity(q * levels.len());
                        for query in 0..q {
                            for (level, row) in levels.iter().enumerate() {
                                ids.push(vocab.token(level, row[query]));
                            }
                        }
                        BlockContent::Tokens(ids)
                    }
                };
                Block { modality, content }
            })
            .collect()
    }
}
