//! Turning an item's ECG inputs into backbone embeddings: validation of each input against the
//! model, Beat and SigLIP run once per batch (or skipped for precomputed inputs), the
//! projectors, and the blocks that tell the sequence layout where each projected input lies in
//! the batch's table of embeddings ("codes" mode: which code tokens it becomes).

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
#[derive(Default)]
struct Slots {
    latents: Vec<Option<Tensor>>,
    codes: Vec<Option<Vec<Vec<u32>>>>,
    features: Vec<Option<Tensor>>,
    windows: Vec<(usize, Tensor)>,
    pixels: Vec<(usize, Tensor)>,
}

impl Slots {
    fn push_latents(&mut self, t: Option<Tensor>) -> usize {
        self.latents.push(t);
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

    /// Beat's quantized latents `[N, Q, width]` of windows `[N, leads, L]`; detached unless
    /// Beat is trainable.
    pub fn signal_latents(&self, windows: &Tensor) -> Result<Tensor> {
        let beat = self.require_beat()?;
        let latents = beat.encode(&windows.to_dtype(DType::F32)?)?;
        Ok(if self.trainable.contains(&Part::Beat) {
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

    /// Run the frozen encoders once: windows become latents (or codes in "codes" mode) when
    /// Beat is frozen, pixels become pooled features when the vision tower is frozen; other
    /// inputs are returned as they are. Inputs of one kind are encoded in one batch.
    pub fn precompute(&self, inputs: &[EcgInput]) -> Result<Vec<EcgInput>> {
        let mut out: Vec<EcgInput> = inputs.to_vec();
        let beat_frozen = self.beat.is_some() && !self.trainable.contains(&Part::Beat);
        let vision_frozen = self.vision.is_some() && !self.trainable.contains(&Part::Vision);
        if beat_frozen {
            let input_len = self.require_beat()?.config().input_len;
            let mut slots = Vec::new();
            let mut windows = Vec::new();
            for (i, input) in inputs.iter().enumerate() {
                if let EcgInput::Window(w) = input {
                    let w = self.check_window(w, "precompute", i)?;
                    windows.push(w.narrow(1, 0, input_len)?);
                    slots.push(i);
                }
            }
            if !windows.is_empty() {
                let stacked = Tensor::stack(&windows, 0)?;
                let encoded = match self.config.signal_input {
                    SignalInput::Latents => self.signal_latents(&stacked)?,
                    SignalInput::Codes => self.signal_codes(&stacked)?,
                };
                for (k, &slot) in slots.iter().enumerate() {
                    let one = encoded.get(k)?;
                    out[slot] = match self.config.signal_input {
                        SignalInput::Latents => EcgInput::Latents(one),
                        SignalInput::Codes => EcgInput::Codes(one),
                    };
                }
            }
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
        let beat = self.require_beat()?;
        let c = beat.config();
        match w.dims() {
            &[leads, len] if leads == c.leads && len >= c.input_len => Ok(w.to_dtype(DType::F32)?),
            other => Err(self.input_error(
                item,
                index,
                "signal",
                format!("a window [{}, L >= {}]", c.leads, c.input_len),
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
        let (table, rows) = self.project(slots.latents, slots.features)?;
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
                let w = self.check_window(w, name, i)?;
                slots.windows.push((slots.latents.len(), w));
                Planned::Signal(slots.push_latents(None))
            }
            (EcgInput::Window(w), true) => {
                let w = self.check_window(w, name, i)?;
                slots.windows.push((slots.codes.len(), w));
                Planned::Codes(slots.push_codes(None))
            }
            (EcgInput::Latents(t), false) => {
                let width = self
                    .signal_proj
                    .as_ref()
                    .map_or(self.config.signal_feature_dim, |p| p.in_dim());
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

    /// Runs Beat once over every window of the batch and SigLIP once over every image, filling
    /// their slots.
    fn run_encoders(&self, slots: &mut Slots) -> Result<()> {
        if !slots.windows.is_empty() {
            let input_len = self.require_beat()?.config().input_len;
            let stacked = Tensor::stack(
                &slots
                    .windows
                    .iter()
                    .map(|(_, w)| w.narrow(1, 0, input_len))
                    .collect::<candle_core::Result<Vec<_>>>()?,
                0,
            )?;
            if self.config.signal_input == SignalInput::Codes {
                let all = self.signal_codes(&stacked)?;
                for (k, (slot, _)) in slots.windows.iter().enumerate() {
                    slots.codes[*slot] = Some(all.get(k)?.to_vec2::<u32>()?);
                }
            } else {
                let all = self.signal_latents(&stacked)?;
                for (k, (slot, _)) in slots.windows.iter().enumerate() {
                    slots.latents[*slot] = Some(all.get(k)?);
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
            for l in &latents {
                let r = rows.take(l.dim(0)?);
                rows.signal.push(r);
            }
            let proj = if self.trainable.contains(&Part::SignalProjector) {
                proj.clone()
            } else {
                proj.detached()
            };
            pieces.push(proj.forward(&Tensor::cat(&latents, 0)?)?);
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
