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
use crate::sequence::{Block, BlockContent, block_order, item_name};

/// The projected embeddings of a batch's ECGs and where each item's blocks find them.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// `[N, H]` projected embeddings in the backbone's dtype (`None` when nothing is spliced).
    pub table: Option<Tensor>,
    /// Per item, its blocks in sequence order.
    pub blocks: Vec<Vec<Block>>,
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
        enum Planned {
            Signal(usize),
            Codes(usize),
            Image(usize),
        }
        let mut latents: Vec<Option<Tensor>> = Vec::new();
        let mut codes: Vec<Option<Vec<Vec<u32>>>> = Vec::new();
        let mut features: Vec<Option<Tensor>> = Vec::new();
        let mut windows: Vec<(usize, Tensor)> = Vec::new();
        let mut pixels: Vec<(usize, Tensor)> = Vec::new();
        let mut plans: Vec<Vec<(Modality, Planned)>> = Vec::with_capacity(examples.len());
        let codes_mode = self.config.signal_input == SignalInput::Codes;

        for (k, ex) in examples.iter().enumerate() {
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
                let label_name = match label {
                    Modality::Signal => "signal",
                    Modality::Image => "img",
                };
                if input.modality() != label {
                    return Err(self.input_error(
                        &name,
                        i,
                        label_name,
                        format!("{label_name} input"),
                        input.describe(),
                    ));
                }
                let available = match label {
                    Modality::Signal => self.config.signal,
                    Modality::Image => self.config.image,
                };
                if !available {
                    match self.config.missing_modality {
                        MissingModality::Drop => continue,
                        MissingModality::Error => {
                            return Err(MmError::item(
                                name,
                                format!(
                                    "input {i} is `{label_name}`, a stream this model was built \
                                     without (set missing_modality = \"drop\" to leave such \
                                     inputs out)"
                                ),
                            ));
                        }
                    }
                }
                let planned = match (input, codes_mode) {
                    (EcgInput::Window(w), false) => {
                        let w = self.check_window(w, &name, i)?;
                        windows.push((latents.len(), w));
                        latents.push(None);
                        Planned::Signal(latents.len() - 1)
                    }
                    (EcgInput::Window(w), true) => {
                        let w = self.check_window(w, &name, i)?;
                        windows.push((codes.len(), w));
                        codes.push(None);
                        Planned::Codes(codes.len() - 1)
                    }
                    (EcgInput::Latents(t), false) => {
                        let width = self
                            .signal_proj
                            .as_ref()
                            .map_or(self.config.signal_feature_dim, |p| p.in_dim());
                        match t.dims() {
                            &[q, w] if q > 0 && w == width => {}
                            other => {
                                return Err(self.input_error(
                                    &name,
                                    i,
                                    label_name,
                                    format!("latents [Q, {width}]"),
                                    format!("shape {other:?}"),
                                ));
                            }
                        }
                        latents.push(Some(t.to_dtype(DType::F32)?));
                        Planned::Signal(latents.len() - 1)
                    }
                    (EcgInput::Latents(t), true) => {
                        return Err(self.input_error(
                            &name,
                            i,
                            label_name,
                            "a window or codes (the model runs in \"codes\" mode)",
                            format!("latents of shape {:?}", t.dims()),
                        ));
                    }
                    (EcgInput::Codes(c), false) => {
                        let host = self.check_codes(c, &name, i)?;
                        let beat = self.require_beat()?;
                        let levels = host
                            .iter()
                            .map(|row| Tensor::new(row.as_slice(), &self.device)?.unsqueeze(0))
                            .collect::<candle_core::Result<Vec<_>>>()?;
                        let l = beat.latents_from_codes(&levels)?.squeeze(0)?;
                        latents.push(Some(l.to_dtype(DType::F32)?.detach()));
                        Planned::Signal(latents.len() - 1)
                    }
                    (EcgInput::Codes(c), true) => {
                        codes.push(Some(self.check_codes(c, &name, i)?));
                        Planned::Codes(codes.len() - 1)
                    }
                    (EcgInput::Pixels(p), _) => {
                        let p = self.check_pixels(p, &name, i)?;
                        pixels.push((features.len(), p));
                        features.push(None);
                        Planned::Image(features.len() - 1)
                    }
                    (EcgInput::Features(f), _) => {
                        let n = self.config.features_per_image();
                        let width = self
                            .image_proj
                            .as_ref()
                            .map_or(self.config.image_feature_dim, |p| p.in_dim());
                        if f.dims() != [n, width] {
                            return Err(self.input_error(
                                &name,
                                i,
                                label_name,
                                format!("features [{n}, {width}]"),
                                format!("shape {:?}", f.dims()),
                            ));
                        }
                        features.push(Some(f.to_dtype(DType::F32)?));
                        Planned::Image(features.len() - 1)
                    }
                };
                plan.push((label, planned));
            }
            plans.push(plan);
        }

        // Run the encoders once for the whole batch.
        if !windows.is_empty() {
            let input_len = self.require_beat()?.config().input_len;
            let stacked = Tensor::stack(
                &windows
                    .iter()
                    .map(|(_, w)| w.narrow(1, 0, input_len))
                    .collect::<candle_core::Result<Vec<_>>>()?,
                0,
            )?;
            if codes_mode {
                let all = self.signal_codes(&stacked)?;
                for (k, (slot, _)) in windows.iter().enumerate() {
                    codes[*slot] = Some(all.get(k)?.to_vec2::<u32>()?);
                }
            } else {
                let all = self.signal_latents(&stacked)?;
                for (k, (slot, _)) in windows.iter().enumerate() {
                    latents[*slot] = Some(all.get(k)?);
                }
            }
        }
        if !pixels.is_empty() {
            let all = Tensor::cat(&pixels.iter().map(|(_, p)| p).collect::<Vec<_>>(), 0)?;
            let pooled = self.image_features(&all)?.to_dtype(DType::F32)?;
            let mut offset = 0;
            for (slot, p) in &pixels {
                let n = p.dim(0)?;
                features[*slot] = Some(pooled.narrow(0, offset, n)?);
                offset += n;
            }
        }

        // Project, and give each projected input its rows of the table.
        let filled = |v: Vec<Option<Tensor>>| -> Vec<Tensor> {
            v.into_iter()
                .map(|t| t.expect("every slot is filled above"))
                .collect()
        };
        let latents = filled(latents);
        let features = filled(features);
        let mut pieces = Vec::new();
        let mut signal_rows = Vec::with_capacity(latents.len());
        let mut next_row = 0;
        if !latents.is_empty() {
            let proj = self
                .signal_proj
                .as_ref()
                .ok_or_else(|| self.absent(Part::SignalProjector))?;
            for l in &latents {
                let q = l.dim(0)?;
                signal_rows.push((next_row, q));
                next_row += q;
            }
            let proj = if self.trainable.contains(&Part::SignalProjector) {
                proj.clone()
            } else {
                proj.detached()
            };
            pieces.push(proj.forward(&Tensor::cat(&latents, 0)?)?);
        }
        let mut image_rows = Vec::with_capacity(features.len());
        if !features.is_empty() {
            let proj = self
                .image_proj
                .as_ref()
                .ok_or_else(|| self.absent(Part::ImageProjector))?;
            let tokens = proj.tokens();
            for f in &features {
                let n = f.dim(0)? * tokens;
                image_rows.push((next_row, n));
                next_row += n;
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

        let vocab = self.codes;
        let blocks = plans
            .into_iter()
            .map(|plan| {
                plan.into_iter()
                    .map(|(modality, planned)| {
                        let content = match planned {
                            Planned::Signal(s) => BlockContent::Embeds {
                                first_row: signal_rows[s].0,
                                len: signal_rows[s].1,
                            },
                            Planned::Image(s) => BlockContent::Embeds {
                                first_row: image_rows[s].0,
                                len: image_rows[s].1,
                            },
                            Planned::Codes(s) => {
                                let vocab = vocab.expect("codes mode has a code vocabulary");
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
            })
            .collect();
        Ok(Encoded { table, blocks })
    }
}
