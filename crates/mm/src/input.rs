//! The tensors an item's ECGs enter the model as, one [`EcgInput`] per entry of the item's
//! `filename` / `label` lists: raw inputs the model encodes itself (a signal window for Beat,
//! pixels for SigLIP) or precomputed ones (Beat latents or codes, pooled image features), so a
//! training loop with frozen encoders runs them once per ECG instead of once per step (see
//! [`crate::HeartcareModel::precompute`]). Also the helpers that turn a record into image input.
//!
//! anyECG-chat's flexible inputs (`paper-facts.md` §3) are [`EcgInput::Chunks`]: a long
//! recording cut into consecutive windows, each encoded on its own, and optionally the lead
//! mask of a reduced-lead recording (its missing leads zero-filled in standard order). How
//! they enter the sequence (chunk-position tokens, the lead-mask token) is
//! [`crate::flexible`]'s.

use beatlab_ecg::Record;
use beatlab_heartcare::instruct::Modality;
use beatlab_heartcare::render::{EcgImage, RenderConfig, render, render_lead_tiles};
use beatlab_lm::siglip::normalize_pixels;
use candle_core::{Device, Tensor};

use crate::error::Result;

/// Images cut from the 6 x 2 page in 12-lead mode: one per lead.
pub const TILES_PER_IMAGE: usize = 12;

/// One ECG as the model takes it.
#[derive(Debug, Clone)]
pub enum EcgInput {
    /// A signal window `[leads, L]` (`L >= ` Beat's `input_len`; the first `input_len` samples
    /// are encoded), preprocessed as Beat was trained.
    Window(Tensor),
    /// The signal encoder's output `[Q, width]` (Beat's quantized latents, or the ECG ViT's
    /// tokens), precomputed.
    Latents(Tensor),
    /// Beat's codes `[levels, Q]` (u32), precomputed; what "codes" mode turns into tokens.
    Codes(Tensor),
    /// Normalised pixels for the vision tower: `[3, S, S]` (whole image) or `[12, 3, S, S]`
    /// (12-lead mode tiles), `S` the tower's image size.
    Pixels(Tensor),
    /// Pooled vision features `[n, F]` (n = 1, or 12 tiles), precomputed.
    Features(Tensor),
    /// A recording as `k >= 1` consecutive windows `[k, leads, L]`, each encoded on its own,
    /// with the recording's lead mask (`leads` flags, true = recorded; `None` = all leads).
    Chunks {
        /// The windows, preprocessed as the signal encoder expects.
        windows: Tensor,
        /// Which leads carry signal; the others are zeros.
        lead_mask: Option<Vec<bool>>,
    },
    /// [`EcgInput::Chunks`] after the frozen signal encoder: `[k, Q, width]`.
    ChunkLatents {
        /// The encoder's output per chunk.
        latents: Tensor,
        /// As in [`EcgInput::Chunks`].
        lead_mask: Option<Vec<bool>>,
    },
}

impl EcgInput {
    /// The modality this input carries.
    pub fn modality(&self) -> Modality {
        match self {
            Self::Window(_)
            | Self::Latents(_)
            | Self::Codes(_)
            | Self::Chunks { .. }
            | Self::ChunkLatents { .. } => Modality::Signal,
            Self::Pixels(_) | Self::Features(_) => Modality::Image,
        }
    }

    /// The kind and shape, for error messages.
    pub fn describe(&self) -> String {
        let (kind, t) = match self {
            Self::Window(t) => ("a signal window", t),
            Self::Latents(t) => ("Beat latents", t),
            Self::Codes(t) => ("Beat codes", t),
            Self::Pixels(t) => ("pixels", t),
            Self::Features(t) => ("image features", t),
            Self::Chunks { windows, .. } => ("signal chunks", windows),
            Self::ChunkLatents { latents, .. } => ("encoded signal chunks", latents),
        };
        format!("{kind} of shape {:?}", t.dims())
    }
}

/// `[3, H, W]` SigLIP-normalised pixels (`(x - 0.5) / 0.5`) of a rendered image.
pub fn pixels_from_image(image: &EcgImage, device: &Device) -> Result<Tensor> {
    let t = Tensor::from_slice(image.chw(), (3, image.height, image.width), device)?;
    Ok(normalize_pixels(&t)?)
}

/// Render `record` as the image input: the whole page (`[3, S, S]`), or in 12-lead mode its 12
/// lead panels (`[12, 3, S, S]`), at `config.width` x `config.height` (the vision tower's size).
pub fn render_image_input(
    record: &Record,
    config: &RenderConfig,
    tiles: bool,
    device: &Device,
) -> Result<EcgInput> {
    if tiles {
        let tiles = render_lead_tiles(record, config)?
            .iter()
            .map(|(_, image)| pixels_from_image(image, device))
            .collect::<Result<Vec<_>>>()?;
        Ok(EcgInput::Pixels(Tensor::stack(&tiles, 0)?))
    } else {
        Ok(EcgInput::Pixels(pixels_from_image(
            &render(record, config)?,
            device,
        )?))
    }
}
