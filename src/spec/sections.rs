//! The sections of an experiment spec, field by field, with their defaults.
//!
//! Defaults follow the HeartcareGPT paper (`paper-facts.md`) where it published a value; where it
//! did not, the doc comment says so and gives the reason for the chosen default.

use std::collections::BTreeMap;

use beatlab_heartcare::instruct::Task;

use super::schema::{spec_choice, spec_section};

spec_section! {
    /// Identity of the experiment and run-wide settings.
    pub struct ExperimentSpec in "experiment" {
        /// Experiment name: groups runs in the registry and names the folder under `runs/`.
        /// Letters, digits, `_`, `-` and `.`; no `/` and no `..`.
        name: String = String::new() => required(),
        /// Free text shown by `beatlab plan` and `beatlab table`; not part of the cell hash.
        description: String = String::new(),
        /// A base spec this file extends, relative to this file; chains are followed.
        /// Not part of the cell hash (only the resolved values are).
        extends: String = String::new(),
        /// Seed of model initialisation, data order and dropout. `[sweep] seeds` repeats cells
        /// over several seeds.
        seed: u64 = 0 => range(0, u32::MAX),
        /// Numeric precision of training: `f32`, or `bf16` (GPU only).
        precision: Precision = Precision::F32,
        /// Labels for filtering runs.
        tags: Vec<String> = Vec::new(),
    }
}

spec_choice! {
    /// Floating-point precision of model weights and activations.
    pub enum Precision { F32 = "f32", Bf16 = "bf16" }
}

spec_choice! {
    /// Where the ECG records come from.
    pub enum DataSource {
        /// The built-in 12-lead simulator (no files needed).
        Synthetic = "synthetic",
        /// A PTB-XL root (`ptbxl_database.csv`, `records100/`, `records500/`).
        Ptbxl = "ptbxl",
        /// A LUDB root (`ludb.csv`, `data/`).
        Ludb = "ludb",
        /// Any folder of WFDB records, searched recursively; PTB-XL and LUDB sub-folders are
        /// recognised and read with their metadata.
        Wfdb = "wfdb",
    }
}

spec_choice! {
    /// How the training window is chosen inside a record.
    pub enum WindowMode {
        /// The window with the best signal-quality index, centre crop when none passes.
        Quality = "quality",
        /// The centre of the record.
        Center = "center",
        /// Every `window_stride` samples (several windows per record).
        Sliding = "sliding",
    }
}

spec_choice! {
    /// Amplitude normalisation of a window.
    pub enum Normalize {
        /// Subtract each lead's mean and divide by one global std, over the input part (paper).
        LeadMeanGlobalStd = "lead_mean_global_std",
        /// Per-lead min-max scaling to [-1, 1] (anyECG-chat).
        Minmax = "minmax",
        /// Millivolts as recorded.
        None = "none",
    }
}

spec_section! {
    /// ECG records and their preprocessing into model windows (window length =
    /// `beat.input_len + beat.predict_len` samples at `target_fs`).
    pub struct DataSpec in "data" {
        /// Record source.
        source: DataSource = DataSource::Synthetic,
        /// Folder of the records for `ptbxl`, `ludb` and `wfdb`; `${VAR}` and `${VAR:-default}`
        /// are expanded; relative paths resolve against the current directory.
        root: String = String::new(),
        /// Glob patterns (relative to `root`) of records to leave out, for `wfdb`.
        exclude: Vec<String> = Vec::new(),
        /// PTB-XL sampling rate to read (`records100` or `records500`).
        ptbxl_rate: u32 = 500 => range(100, 500),
        /// Use at most this many records (0 = all).
        max_records: u32 = 0,
        /// Number of records the simulator generates for `synthetic`.
        synthetic_records: u32 = 512 => range(1, 10_000_000),
        /// Simulated records added to a real source (0 = none): the simulator's labels and
        /// true intervals complement real records in the instruction data.
        mix_synthetic: u32 = 0 => range(0, 10_000_000),
        /// Sampling rate of simulated records, in Hz.
        synthetic_fs: f64 = 500.0 => range(50, 10_000),
        /// Length of simulated records, in seconds.
        synthetic_duration_s: f64 = 10.0 => range(1, 3600),
        /// Scale of simulated baseline wander, mains hum and muscle noise (0 = clean).
        synthetic_noise: f64 = 1.0 => range(0, 100),
        /// Relative weights of the simulator's conditions (`{ atrial_fibrillation = 3,
        /// premature_ventricular = 1 }`; they need not sum to 1, conditions not listed are never
        /// drawn). Empty: the built-in mix (28 % normal sinus, every other condition 4-7 %).
        synthetic_mix: BTreeMap<String, f64> = BTreeMap::new() => range(0, 1_000_000),
        /// Seed of the simulator and of the patient-level split; kept apart from
        /// `experiment.seed` so that seed repeats see the same data.
        seed: u64 = 0 => range(0, u32::MAX),
        /// Sampling rate every record is resampled to (polyphase), in Hz.
        target_fs: f64 = 250.0 => range(50, 2000),
        /// Lower corner of the band-pass cleaning filter, in Hz (paper: unpublished; 0.5 Hz
        /// removes baseline wander and keeps ST segments).
        bandpass_low_hz: f64 = 0.5 => range(0, 100),
        /// Upper corner of the band-pass filter, in Hz (paper: unpublished; 40 Hz keeps the QRS
        /// energy and removes mains hum and most muscle noise).
        bandpass_high_hz: f64 = 40.0 => range(1, 1000),
        /// Butterworth order of the band-pass (applied forward and backward).
        bandpass_order: u32 = 3 => range(1, 8),
        /// How the window is chosen in each record.
        window: WindowMode = WindowMode::Quality,
        /// Step between candidate windows (`quality`) or between windows (`sliding`), in
        /// samples at `target_fs` (125 = 0.5 s at 250 Hz).
        window_stride: u32 = 125 => range(1, 1_000_000),
        /// Quality index (0-1) below which the best window is replaced by the centre crop.
        min_quality: f64 = 0.5 => range(0, 1),
        /// Amplitude normalisation.
        normalize: Normalize = Normalize::LeadMeanGlobalStd,
        /// Share of patients in the validation split (sources without PTB-XL folds).
        val_fraction: f64 = 0.1 => range(0, 0.9),
        /// Share of patients in the test split (sources without PTB-XL folds).
        test_fraction: f64 = 0.1 => range(0, 0.9),
        /// Keep preprocessed windows on disk, keyed by a hash of these settings. Not part of the
        /// cell hash (cached and fresh windows are the same).
        cache: bool = true,
    }
}

spec_section! {
    /// The Beat signal tokenizer (paper §1.1): transformer encoder over 12-lead patches and
    /// learned queries, residual vector quantization, decoder and prediction head.
    pub struct BeatSpec in "beat" {
        /// Samples per patch; all 12 leads of a patch are flattened (12 x 25 = 300 values).
        patch_size: u32 = 25 => range(1, 1000),
        /// Samples of signal the tokenizer sees (at `data.target_fs`); a multiple of `patch_size`.
        input_len: u32 = 1000 => range(1, 100_000),
        /// Samples following the input that the prediction head predicts; a multiple of `patch_size`.
        predict_len: u32 = 500 => range(0, 100_000),
        /// Transformer width.
        width: u32 = 128 => range(8, 8192),
        /// Encoder depth (transformer blocks).
        depth: u32 = 6 => range(1, 64),
        /// Decoder depth (transformer blocks).
        decoder_depth: u32 = 6 => range(1, 64),
        /// Attention heads.
        heads: u32 = 8 => range(1, 128),
        /// Size of one attention head (paper: 8 heads of 64 at width 128, an attention width of
        /// 512 projected back to 128); 0 = width / heads.
        head_dim: u32 = 64 => range(0, 4096),
        /// MLP hidden size as a multiple of the width (paper: unpublished; 4 is the transformer norm).
        mlp_ratio: f64 = 4.0 => range(0.25, 16),
        /// Learned query tokens per patch (20 queries for 40 patches).
        query_ratio: f64 = 0.5 => range(0.01, 8),
        /// Entries per codebook.
        codebook_size: u32 = 512 => range(2, 1_000_000),
        /// Residual quantization levels: 1 = single VQ, 2 = the paper's DVQ.
        dvq_levels: u32 = 2 => range(1, 8),
        /// One codebook shared by all levels (the public code) instead of one per level (paper).
        shared_codebook: bool = false,
        /// Decay of the EMA codebook updates.
        ema_decay: f64 = 0.8 => range(0, 1),
        /// Weight of the commitment term inside the VQ loss.
        commitment: f64 = 1.0 => range(0, 100),
        /// Restart codes whose EMA cluster size falls below this from current encoder outputs
        /// (0 = never). The paper does not mention restarts, but without them the first level
        /// collapses to a few codes, far from the 96 % use it reports.
        dead_code_threshold: f64 = 0.1 => range(0, 1_000_000),
        /// Dropout in the transformer blocks (paper: unpublished).
        dropout: f64 = 0.0 => range(0, 0.9),
        /// Weight of the reconstruction MSE in the total loss.
        w_recon: f64 = 1.0 => range(0, 1000),
        /// Weight of the prediction MSE in the total loss.
        w_pred: f64 = 0.5 => range(0, 1000),
        /// Weight of the VQ loss in the total loss.
        w_vq: f64 = 0.25 => range(0, 1000),
        /// Slope of an ALiBi-style distance bias on the encoder's and decoder's attention, so
        /// that each query and mask token starts out reading its own stretch of the window
        /// (0 = none, the paper). Not in the paper: without it Beat stays at "predict zero" on
        /// ECG windows for thousands of steps at CPU sizes (beatlab-nn's `BeatConfig` says why).
        locality_slope: f64 = 1.0 => range(0, 100),
        /// Start the output heads at zero (the untrained model predicts the mean) instead of
        /// the public code's random init, which first collapses the latents to quiet the output.
        zero_init_heads: bool = true,
        /// Training steps over which the VQ loss weight ramps from 0 to `w_vq` (0 = the paper,
        /// full weight from the start), so commitment does not collapse the early latents.
        vq_warmup_steps: u32 = 300 => range(0, 10_000_000),
    }
}

spec_choice! {
    /// What the signal projector consumes.
    pub enum SignalInput {
        /// Beat's quantized latents through the signal projector (paper).
        Latents = "latents",
        /// Beat's code ids as added vocabulary tokens `<|ecg_k|>` (earlier release).
        Codes = "codes",
    }
}

spec_section! {
    /// DSPA projectors from the signal and image streams into the language model (paper §1.2).
    pub struct ProjectorSpec in "projector" {
        /// Layers of the signal projector (paper: 1 = linear, GELU, LayerNorm).
        signal_depth: u32 = 1 => range(1, 8),
        /// Layers of the image projector (paper: 2).
        image_depth: u32 = 2 => range(1, 8),
        /// Tokens each image feature becomes (paper: 2, from a 2H-wide output).
        image_tokens: u32 = 2 => range(1, 64),
        /// Signal stream input.
        signal_input: SignalInput = SignalInput::Latents,
    }
}

spec_choice! {
    /// What encodes the signal stream.
    pub enum SignalEncoder {
        /// The Beat tokenizer's quantized latents (HeartcareGPT).
        Beat = "beat",
        /// An ECG ViT over signal patches (GEM, anyECG-chat; shaped by `[vit]`).
        Vit = "vit",
    }
}

spec_section! {
    /// The signal stream's encoder and anyECG-chat's flexible inputs: long recordings cut into
    /// consecutive windows of `beat.input_len` samples, each encoded and placed after a
    /// chunk-position token; reduced lead sets with a lead-mask token. With the defaults the
    /// stream is the paper's (one Beat window per ECG).
    pub struct SignalSpec in "signal" {
        /// Encoder of the signal windows. A `vit` is trained by the stages whose `train` list
        /// names `ecg_vit` and frozen elsewhere (GEM keeps its encoder frozen).
        encoder: SignalEncoder = SignalEncoder::Beat,
        /// Most chunks per recording (0 = one window per ECG, no chunk-position tokens); a
        /// recording longer than `chunks` windows keeps its first `chunks`.
        chunks: u32 = 0 => range(0, 1024),
        /// Leads kept, the others zero-filled in standard order: 12, 6 (the limb leads I, II,
        /// III, aVR, aVL, aVF), 2 (I, II) or 1 (II, the rhythm strip). anyECG-chat does not
        /// name its subsets; these are the usual ones.
        leads: u32 = 12 => range(1, 12),
        /// Start every signal block with a lead-mask token (which leads are recorded).
        lead_mask: bool = false,
    }
}

spec_choice! {
    /// What one ViT patch covers.
    pub enum VitPatches {
        /// All leads over `patch_size` samples (GEM).
        AllLeads = "all_leads",
        /// One lead over `patch_size` samples (anyECG-chat).
        PerLead = "per_lead",
    }
}

spec_section! {
    /// The ECG ViT of `signal.encoder = "vit"` (GEM: 12 layers, width 768, patch 50 at 500 Hz;
    /// anyECG-chat: ViT-Base, patches of 1 lead x 200 samples at 100 Hz, CLS). It reads the
    /// first `beat.input_len` samples of a window. Neither paper's weights are public: it
    /// starts random (seeded).
    pub struct VitSpec in "vit" {
        /// Samples per patch; divides `beat.input_len`.
        patch_size: u32 = 50 => range(1, 100_000),
        /// Patch layout.
        patches: VitPatches = VitPatches::AllLeads,
        /// Token width.
        width: u32 = 64 => range(8, 8192),
        /// Transformer blocks.
        depth: u32 = 2 => range(1, 64),
        /// Attention heads.
        heads: u32 = 4 => range(1, 128),
        /// Width of one head.
        head_dim: u32 = 16 => range(1, 4096),
        /// MLP hidden size as a multiple of the width.
        mlp_ratio: f64 = 4.0 => range(0.25, 16),
        /// A learned CLS token first (anyECG-chat).
        cls_token: bool = false,
    }
}

spec_choice! {
    /// What GEM-style grounded answers cite.
    pub enum GroundingSource {
        /// The delineator's per-lead medians (GEM).
        Delineator = "delineator",
        /// The record's own intervals in every lead (the simulator's true values).
        Truth = "truth",
    }
}

spec_choice! {
    /// Vision encoder choice.
    pub enum VisionModel {
        /// A small randomly initialised SigLIP of the same code (CPU-friendly).
        TinySiglip = "tiny-siglip",
        /// SigLIP so400m-patch14-384 from `weights`.
        Siglip = "siglip",
        /// No image stream.
        None = "none",
    }
}

spec_choice! {
    /// Printed-ECG layout of the image stream.
    pub enum EcgLayout { SixByTwo = "6x2", ThreeByFour = "3x4" }
}

spec_section! {
    /// The image stream: printed-ECG rendering and the vision encoder.
    pub struct VisionSpec in "vision" {
        /// Encoder.
        model: VisionModel = VisionModel::TinySiglip,
        /// Local folder or Hugging Face model id of real weights (`siglip`).
        weights: String = String::new(),
        /// Image side in pixels fed to the encoder (0 = the encoder's own size).
        image_size: u32 = 0 => range(0, 4096),
        /// Printed-ECG layout.
        layout: EcgLayout = EcgLayout::SixByTwo,
        /// Cut the 6 x 2 image into 12 lead tiles, one feature per tile (paper's 12-lead mode).
        tiles: bool = false,
        /// Keep the encoder frozen in every stage.
        frozen: bool = true,
    }
}

spec_choice! {
    /// Language-model backbone.
    pub enum BackboneModel {
        /// A small randomly initialised Qwen2 with a BPE tokenizer trained on the instructions.
        TinyQwen2 = "tiny-qwen2",
        /// A small randomly initialised Phi-3.
        TinyPhi3 = "tiny-phi3",
        /// A Qwen2 / Qwen2.5 checkpoint from `weights`.
        Qwen2 = "qwen2",
        /// A Phi-3 checkpoint from `weights`.
        Phi3 = "phi3",
    }
}

spec_section! {
    /// LoRA adapters on the backbone (paper §1.3: r 64, alpha 128, dropout 0.05 on qkv and o).
    pub struct LoraSpec in "backbone.lora" {
        /// Adapter rank (0 = no adapters; the joint stage then trains only the projectors).
        rank: u32 = 64 => range(0, 4096),
        /// Scale numerator: updates are scaled by alpha / rank.
        alpha: f64 = 128.0 => range(0, 100_000),
        /// Dropout on the adapter input.
        dropout: f64 = 0.05 => range(0, 0.9),
        /// Module names the adapters attach to (Hugging Face names; `q_proj` etc. map to the
        /// fused `qkv_proj` of Phi-3).
        targets: Vec<String> = vec!["q_proj".into(), "k_proj".into(), "v_proj".into(), "o_proj".into()],
    }
}

spec_section! {
    /// The language-model backbone.
    pub struct BackboneSpec in "backbone" {
        /// Architecture and size.
        model: BackboneModel = BackboneModel::TinyQwen2,
        /// Local folder or Hugging Face model id (offline cache) of real weights.
        weights: String = String::new(),
        /// Hidden size of tiny presets.
        hidden_size: u32 = 128 => range(16, 16384),
        /// Transformer layers of tiny presets.
        layers: u32 = 2 => range(1, 128),
        /// Attention heads of tiny presets.
        heads: u32 = 4 => range(1, 128),
        /// Vocabulary of the BPE tokenizer trained for tiny presets.
        vocab_size: u32 = 2048 => range(300, 1_000_000),
        /// Longest token sequence; longer items lose the start of their question first, then the
        /// end of their answer (ECG blocks are never cut).
        max_seq_len: u32 = 384 => range(16, 131_072),
        /// LoRA adapters.
        lora: LoraSpec = LoraSpec::default(),
    }
}

spec_choice! {
    /// Training stage kinds.
    pub enum StageKind {
        /// Train the Beat tokenizer on signal windows (stage 1).
        Beat = "beat",
        /// Projector warm-up on captioning, backbone frozen (stage 2).
        Warmup = "warmup",
        /// LoRA + projectors on the instruction mix (stage 3).
        Joint = "joint",
        /// Benchmark evaluation (no training).
        Eval = "eval",
    }
}

spec_choice! {
    /// Learning-rate schedule.
    pub enum Schedule {
        /// Cosine from `lr` to `lr_min` over `t_max` epochs (or the whole stage when 0).
        Cosine = "cosine",
        /// Linear warm-up over `warmup_steps`, then linear decay to `lr_min`.
        Linear = "linear",
        /// Constant `lr` (after optional warm-up).
        Constant = "constant",
    }
}

spec_section! {
    /// One training stage. Defaults depend on `kind` (see the stage-kind table); fields given
    /// here override them.
    pub struct StageSpec in "stage" {
        /// Unique name; overrides and sweeps address the stage by it (`stage.beat.epochs`).
        name: String = String::new() => required(),
        /// What the stage does.
        kind: StageKind = StageKind::Beat,
        /// A disabled stage is skipped (a disabled `beat` stage leaves a randomly initialised,
        /// frozen tokenizer, as in the paper's ablation).
        enabled: bool = true,
        /// Passes over the stage's training data.
        epochs: u32 = 1 => range(0, 100_000),
        /// Stop after this many optimiser steps (0 = run all epochs).
        steps: u32 = 0,
        /// Peak learning rate.
        lr: f64 = 1e-4 => range(0, 10),
        /// Smallest learning rate the schedule decays to.
        lr_min: f64 = 0.0 => range(0, 10),
        /// AdamW decoupled weight decay.
        weight_decay: f64 = 0.0 => range(0, 10),
        /// Learning-rate schedule.
        schedule: Schedule = Schedule::Cosine,
        /// Cosine period in epochs (0 = the stage's epoch count).
        t_max: u32 = 0,
        /// Linear warm-up steps.
        warmup_steps: u32 = 0,
        /// Batch size.
        batch: u32 = 32 => range(1, 1_000_000),
        /// Clip gradients to this global norm (0 = no clipping).
        grad_clip: f64 = 1.0 => range(0, 1_000_000),
        /// Save a checkpoint every this many epochs (0 = only at the end of the stage).
        checkpoint_every: u32 = 5,
        /// Also save every this many optimiser steps (0 = not by steps).
        checkpoint_every_steps: u32 = 0,
        /// Evaluate on the validation split every this many epochs.
        eval_every: u32 = 1 => range(1, 100_000),
        /// Parts trained by this stage (the part names are listed under the stage kinds
        /// below).
        train: Vec<String> = Vec::new(),
        /// Task types in the stage's data mix.
        tasks: Vec<Task> = Vec::new(),
        /// Share of the stage's items used (paper warm-up: about a fifth).
        data_fraction: f64 = 1.0 => range(0, 1),
    }
}

impl StageSpec {
    /// Defaults that depend on the stage kind, applied before the file's own values (declared
    /// with the kind, in `stages::catalog`).
    pub fn kind_defaults(kind: StageKind) -> Vec<(&'static str, toml::Value)> {
        (crate::stages::catalog::declaration(kind).defaults)()
    }

    /// The stages a spec without `[[stage]]` runs: the paper's three-stage pipeline and its
    /// evaluation.
    pub fn default_pipeline() -> Vec<(&'static str, StageKind)> {
        vec![
            ("beat", StageKind::Beat),
            ("warmup", StageKind::Warmup),
            ("joint", StageKind::Joint),
            ("eval", StageKind::Eval),
        ]
    }
}

spec_choice! {
    /// How instruction items present their ECGs.
    pub enum InputMix {
        /// Each item draws signal or image (the benchmark's signal and image subsets).
        Mixed = "mixed",
        /// Every ECG as a signal (modality ablation: signal only).
        Signal = "signal",
        /// Every ECG as a printed image (modality ablation: image only).
        Image = "image",
        /// Every single-ECG item shows the signal and its image together (signal + image).
        Both = "both",
    }
}

spec_section! {
    /// Instruction data built from the records' labels, reports and intervals (paper §1.4).
    pub struct InstructionsSpec in "instructions" {
        /// How items present their ECGs.
        inputs: InputMix = InputMix::Mixed,
        /// Closed (multiple-choice) questions per record.
        closed_qa_per_record: u32 = 2 => range(0, 100),
        /// Open questions per record.
        open_qa_per_record: u32 = 2 => range(0, 100),
        /// Comparison questions per record (the record is the first of the pair).
        comparison_per_record: u32 = 1 => range(0, 100),
        /// Report-generation items per record.
        reports_per_record: u32 = 1 => range(0, 100),
        /// Signal-prediction items per record.
        predictions_per_record: u32 = 1 => range(0, 100),
        /// Options per closed question (A, B, ...).
        num_options: u32 = 4 => range(2, 8),
        /// GEM-style grounded interpretations per record: findings with per-lead evidence.
        grounded_per_record: u32 = 0 => range(0, 100),
        /// What grounded answers cite.
        grounding: GroundingSource = GroundingSource::Delineator,
        /// anyECG-chat abnormal-segment localization items per record whose segments are known
        /// (simulated records).
        localization_per_record: u32 = 0 => range(0, 100),
        /// anyECG-chat questions over several ECGs per record.
        multi_ecg_per_record: u32 = 0 => range(0, 100),
        /// Most ECGs in one multi-ECG question (anyECG-chat: up to 4).
        multi_ecg_max: u32 = 4 => range(2, 8),
    }
}

spec_choice! {
    /// How closed-QA and comparison-QA answers are scored.
    pub enum ChoiceScoring {
        /// The option with the highest answer likelihood.
        Likelihood = "likelihood",
        /// Parse the option from a free generation.
        Generate = "generate",
        /// Both, reported as separate metrics.
        Both = "both",
    }
}

spec_section! {
    /// Benchmark evaluation (the `eval` stage).
    pub struct EvalSpec in "eval" {
        /// Scoring of multiple-choice answers.
        choice_scoring: ChoiceScoring = ChoiceScoring::Both,
        /// Longest generation for open-QA and reports, in tokens.
        max_new_tokens: u32 = 48 => range(1, 4096),
        /// Evaluate at most this many test items per task (0 = all).
        max_items: u32 = 0,
        /// Local folder or Hugging Face id (offline cache) of a BERT encoder (`config.json`,
        /// `model.safetensors`, `tokenizer.json` or `vocab.txt`) for BERTScore of open-QA and
        /// report generations, recorded as `bertscore_f1` (with `bertscore_precision`,
        /// `bertscore_recall`); a biomedical BERT gives the paper's F1-Bio. Last layer, no IDF
        /// weighting, no baseline rescaling; empty = no BERTScore (ROUGE-L and token F1 only).
        bertscore_encoder: String = String::new(),
    }
}

spec_section! {
    /// How `beatlab table` renders the experiment's results.
    pub struct TableSpec in "table" {
        /// Caption.
        title: String = String::new(),
        /// Fields whose values make the rows (dotted spec paths, usually sweep keys).
        rows: Vec<String> = Vec::new(),
        /// Fields whose values make the column groups.
        columns: Vec<String> = Vec::new(),
        /// Summary metrics shown per column group (`val/loss`, `val/code_pct`, ...).
        metrics: Vec<String> = Vec::new(),
        /// Digits after the decimal point.
        digits: u32 = 2 => range(0, 10),
        /// Display names for fields (`"beat.dvq_levels"`), values (`"beat.dvq_levels=2"`) and
        /// metrics (`"val/loss"`).
        labels: BTreeMap<String, String> = BTreeMap::new(),
    }
}

spec_section! {
    /// A published value for one cell of the table.
    pub struct PaperCell in "paper.cell" {
        /// The cell: field path -> value (`{ "beat.codebook_size" = 512 }`).
        at: BTreeMap<String, toml::Value> = BTreeMap::new(),
        /// Metric -> published value.
        values: BTreeMap<String, f64> = BTreeMap::new(),
    }
}

spec_section! {
    /// Published numbers and claims shown beside the table.
    pub struct PaperSpec in "paper" {
        /// Where the numbers come from.
        source: String = String::new(),
        /// Claims without numbers, printed under the table.
        claims: Vec<String> = Vec::new(),
        /// Published values.
        cell: Vec<PaperCell> = Vec::new(),
    }
}
