//! Checks a merged spec tree against the schema, then the typed spec against the rules that
//! span several fields. Every problem becomes a [`Diagnostic`]; nothing stops at the first.

use beatlab_ecg::synthetic::Condition;

use super::diag::{Diagnostic, did_you_mean};
use super::schema::{SectionSchema, Ty};
use super::sections::{
    BackboneModel, BeatSpec, DataSource, DataSpec, SignalEncoder, SignalInput, StageKind,
    StageSpec, VisionModel,
};
use super::tree::{Node, Origin, Value, lookup};
use super::{LORA_TARGETS, Spec};

/// Checks a table against a section schema. Invalid entries are reported and removed, so that
/// the rest of the spec can still be typed and checked in the same pass.
pub fn check_section(
    node: &mut Node,
    schema: &SectionSchema,
    path: &str,
    diags: &mut Vec<Diagnostic>,
) {
    let section_label = match path
        .strip_prefix("stage[")
        .and_then(|r| r.strip_suffix(']'))
    {
        _ if path.is_empty() => "the spec".to_string(),
        Some(i) => format!(
            "[[stage]] number {}",
            i.parse::<usize>().map_or(0, |i| i + 1)
        ),
        None => format!("[{path}]"),
    };
    let origin = node.origin.clone();
    let Value::Table(table) = &mut node.value else {
        diags.push(Diagnostic::new(
            &node.origin,
            false,
            path,
            format!("expected a table, found {}", node.value.type_name()),
        ));
        return;
    };
    let mut remove = std::collections::HashSet::new();
    for (key, child) in table.iter_mut() {
        let child_path = join(path, key);
        if path.is_empty() && key == "sweep" {
            continue; // validated by the sweep module
        }
        let Some(field) = schema.field(key) else {
            let what = if path.is_empty() { "section" } else { "key" };
            let mut d = Diagnostic::new(
                &child.origin,
                true,
                &child_path,
                format!("unknown {what} `{key}` in {section_label}"),
            );
            let known = schema
                .field_names()
                .chain(path.is_empty().then_some("sweep"));
            if let Some(help) = did_you_mean(key, known) {
                d = d.with_help(help);
            } else {
                d = d.with_help(format!(
                    "known keys: {}",
                    schema.field_names().collect::<Vec<_>>().join(", ")
                ));
            }
            diags.push(d);
            remove.insert(key.clone());
            continue;
        };
        if !check_value(child, &field.ty, &child_path, diags) {
            remove.insert(key.clone());
        }
    }
    // One pass: removing keys one by one would shift the table once per key.
    if !remove.is_empty() {
        table.retain(|key, _| !remove.contains(key));
    }
    let present: Vec<&str> = table.keys().map(String::as_str).collect();
    missing_required(schema, path, &section_label, &present, &origin, diags);
}

/// Reports the required keys of `schema` that are not among `present`, and those of its
/// sub-sections that are absent altogether (an empty spec still lacks `experiment.name`).
fn missing_required(
    schema: &SectionSchema,
    path: &str,
    section_label: &str,
    present: &[&str],
    origin: &Origin,
    diags: &mut Vec<Diagnostic>,
) {
    for field in &schema.fields {
        if present.contains(&field.name) {
            continue;
        }
        if field.required {
            diags.push(Diagnostic::new(
                origin,
                false,
                join(path, field.name),
                format!("missing required key `{}` in {section_label}", field.name),
            ));
        } else if let Ty::Section(inner) = &field.ty {
            let sub = join(path, field.name);
            missing_required(&inner(), &sub, &format!("[{sub}]"), &[], origin, diags);
        }
    }
}

/// Checks one value against a type; returns whether to keep it (after widening integers given
/// for float fields). Tables are kept with their invalid entries removed, so one bad field in a
/// `[[stage]]` does not hide the checks of the others.
pub fn check_value(node: &mut Node, ty: &Ty, path: &str, diags: &mut Vec<Diagnostic>) -> bool {
    let mismatch = |node: &Node, diags: &mut Vec<Diagnostic>| {
        diags.push(Diagnostic::new(
            &node.origin,
            false,
            path,
            format!(
                "expected {}, found {} {}",
                ty.describe(),
                node.value.type_name(),
                show(node)
            ),
        ));
        false
    };
    match (ty, &mut node.value) {
        (Ty::Bool, Value::Bool(_)) => true,
        (Ty::Int { min, max }, Value::Int(v)) => {
            if *v < *min || *v > *max {
                diags.push(Diagnostic::new(
                    &node.origin,
                    false,
                    path,
                    format!("{v} is out of range: expected {}", ty.describe()),
                ));
                return false;
            }
            true
        }
        (Ty::Float { min, max }, Value::Int(_) | Value::Float(_)) => {
            let v = match node.value {
                Value::Int(i) => i as f64,
                Value::Float(f) => f,
                _ => unreachable!(),
            };
            if !v.is_finite() || v < *min || v > *max {
                diags.push(Diagnostic::new(
                    &node.origin,
                    false,
                    path,
                    format!("{} is out of range: expected {}", show(node), ty.describe()),
                ));
                return false;
            }
            node.value = Value::Float(v);
            true
        }
        (Ty::Str, Value::Str(_)) => true,
        (Ty::Choice(allowed), Value::Str(s)) => {
            if allowed.contains(&s.as_str()) {
                return true;
            }
            let mut d = Diagnostic::new(
                &node.origin,
                false,
                path,
                format!("unknown value `{s}`: expected {}", ty.describe()),
            );
            if let Some(help) = did_you_mean(s, allowed.iter().copied()) {
                d = d.with_help(help);
            }
            diags.push(d);
            false
        }
        (Ty::List(inner), Value::Array(items)) => {
            let mut ok = true;
            for (i, item) in items.iter_mut().enumerate() {
                // Stages are addressed by name, as in overrides (`stage.beat.lr`).
                let item_path = match super::tree::stage_name(item) {
                    Some(name) if path == "stage" => format!("stage.{name}"),
                    _ => format!("{path}[{i}]"),
                };
                ok &= check_value(item, inner, &item_path, diags);
            }
            ok
        }
        (Ty::Map(inner), Value::Table(entries)) => {
            let mut ok = true;
            for (k, v) in entries.iter_mut() {
                ok &= check_value(v, inner, &join(path, &format!("\"{k}\"")), diags);
            }
            ok
        }
        (Ty::Section(schema), Value::Table(_)) => {
            check_section(node, &schema(), path, diags);
            true
        }
        (Ty::Scalar, Value::Str(_) | Value::Int(_) | Value::Float(_) | Value::Bool(_)) => true,
        _ => mismatch(node, diags),
    }
}

/// A value as it would be written in TOML, for messages.
pub fn show(node: &Node) -> String {
    match &node.value {
        Value::Table(_) => String::new(),
        _ => format!("`{}`", node.to_toml()),
    }
}

pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Collects rule violations, locating each at the value that set the offending field.
struct Rules<'a> {
    tree: &'a Node,
    diags: Vec<Diagnostic>,
}

impl Rules<'_> {
    /// Where `path` was set; for a field left at its default, the nearest enclosing key that
    /// was written (e.g. the `[backbone]` table for an absent `backbone.weights`).
    fn origin(&self, path: &str) -> Origin {
        let mut prefix = path;
        loop {
            if let Some(n) = lookup(self.tree, prefix)
                && !matches!(n.origin, Origin::Default)
            {
                return n.origin.clone();
            }
            match prefix.rsplit_once('.') {
                Some((head, _)) => prefix = head,
                None => return self.tree.origin.clone(),
            }
        }
    }

    /// Where field `field` of the `index`-th stage was set (by position: names may be invalid).
    fn stage_origin(&self, index: usize, field: &str) -> Origin {
        let stage = match self.tree.get("stage").map(|s| &s.value) {
            Some(Value::Array(stages)) => stages.get(index),
            _ => None,
        };
        stage
            .and_then(|s| s.get(field).or(Some(s)))
            .map(|n| n.origin.clone())
            .unwrap_or_else(|| self.tree.origin.clone())
    }

    fn stage_err(
        &mut self,
        index: usize,
        name: &str,
        field: &str,
        message: impl Into<String>,
    ) -> &mut Diagnostic {
        let d = Diagnostic::new(
            &self.stage_origin(index, field),
            false,
            format!("stage.{name}.{field}"),
            message,
        );
        self.diags.push(d);
        self.diags.last_mut().expect("just pushed")
    }

    fn err(&mut self, path: &str, message: impl Into<String>) -> &mut Diagnostic {
        let d = Diagnostic::new(&self.origin(path), false, path, message);
        self.diags.push(d);
        self.diags.last_mut().expect("just pushed")
    }

    /// Every entry of `values` must be one of `allowed`.
    fn members(&mut self, path: &str, values: &[String], allowed: &[&str], what: &str) {
        for v in values {
            if !allowed.contains(&v.as_str()) {
                let help = did_you_mean(v, allowed.iter().copied());
                let d = self.err(
                    path,
                    format!(
                        "unknown {what} `{v}`: expected {}",
                        super::schema::quote_list(allowed)
                    ),
                );
                d.help = help;
            }
        }
    }

    /// `key` must be a field path of the spec.
    fn field(&mut self, spec: &Spec, path: &str, key: &str) {
        if super::field_type(spec, key).is_none() {
            let paths = super::all_field_paths(spec);
            let help = did_you_mean(key, paths.iter().map(String::as_str));
            self.err(path, format!("`{key}` is not a spec field")).help = help;
        }
    }
}

/// Rules that span several fields, checked on the typed spec. `tree` gives the locations.
pub fn check_rules(spec: &Spec, tree: &Node) -> Vec<Diagnostic> {
    let mut r = Rules {
        tree,
        diags: Vec::new(),
    };
    // An absent name is reported as a missing required key by the schema check.
    if !spec.experiment.name.is_empty()
        && let Some(problem) = name_problem(&spec.experiment.name)
    {
        r.err("experiment.name", problem);
    }
    beat_rules(&mut r, &spec.beat);
    data_rules(&mut r, &spec.data);
    stage_rules(&mut r, &spec.stage);
    model_rules(&mut r, spec);
    table_rules(&mut r, spec);
    r.diags
}

/// Beat's shapes: lengths in whole patches, heads that divide the width, some query tokens.
fn beat_rules(r: &mut Rules<'_>, b: &BeatSpec) {
    for (field, len) in [
        ("beat.input_len", b.input_len),
        ("beat.predict_len", b.predict_len),
    ] {
        if len % b.patch_size != 0 {
            r.err(
                field,
                format!(
                    "{len} is not a multiple of beat.patch_size ({})",
                    b.patch_size
                ),
            );
        }
    }
    if b.head_dim == 0 && !b.width.is_multiple_of(b.heads) {
        r.err(
            "beat.heads",
            format!(
                "beat.width ({}) is not divisible by {} heads",
                b.width, b.heads
            ),
        );
    }
    if b.input_len.is_multiple_of(b.patch_size) {
        let patches = b.input_len / b.patch_size;
        if (f64::from(patches) * b.query_ratio).round() < 1.0 {
            r.err(
                "beat.query_ratio",
                format!(
                    "{} x {patches} patches gives no query tokens",
                    b.query_ratio
                ),
            );
        }
    }
}

/// Data: splits that leave training data, a band-pass below Nyquist, real PTB-XL rates, a
/// root for file sources.
fn data_rules(r: &mut Rules<'_>, d: &DataSpec) {
    if d.val_fraction + d.test_fraction >= 1.0 {
        r.err(
            "data.test_fraction",
            format!(
                "val_fraction + test_fraction = {} leaves no training data (must be < 1)",
                d.val_fraction + d.test_fraction
            ),
        );
    }
    if d.bandpass_low_hz >= d.bandpass_high_hz {
        r.err(
            "data.bandpass_high_hz",
            format!(
                "{} Hz is not above bandpass_low_hz ({} Hz)",
                d.bandpass_high_hz, d.bandpass_low_hz
            ),
        );
    } else if d.bandpass_high_hz >= d.target_fs / 2.0 {
        r.err(
            "data.bandpass_high_hz",
            format!(
                "{} Hz is not below the Nyquist frequency of target_fs ({} Hz)",
                d.bandpass_high_hz,
                d.target_fs / 2.0
            ),
        );
    }
    if ![100, 500].contains(&d.ptbxl_rate) {
        r.err(
            "data.ptbxl_rate",
            format!("{} Hz: PTB-XL ships 100 or 500 Hz records", d.ptbxl_rate),
        );
    }
    synthetic_mix_rules(r, &d.synthetic_mix);
    if d.source != DataSource::Synthetic && d.root.trim().is_empty() {
        r.err(
            "data.source",
            format!(
                "source `{}` needs `data.root` (the folder of its records)",
                d.source
            ),
        );
    }
}

/// The simulator's condition mix: known conditions, and one of them with a positive weight.
fn synthetic_mix_rules(r: &mut Rules<'_>, mix: &std::collections::BTreeMap<String, f64>) {
    let names = Condition::ALL.map(Condition::name);
    for name in mix.keys() {
        if Condition::from_name(name).is_none() {
            let help = did_you_mean(name, names);
            r.err(
                &format!("data.synthetic_mix.{name}"),
                format!(
                    "unknown condition `{name}`: expected {}",
                    super::schema::quote_list(&names)
                ),
            )
            .help = help;
        }
    }
    if !mix.is_empty() && mix.values().all(|w| *w <= 0.0) {
        r.err(
            "data.synthetic_mix",
            "no condition has a positive weight: the simulator would have nothing to draw",
        );
    }
}

/// Stages: unique names usable in dotted paths, known parts and tasks, sane rates and lengths.
fn stage_rules(r: &mut Rules<'_>, stages: &[StageSpec]) {
    let mut seen = std::collections::BTreeMap::new();
    for (i, stage) in stages.iter().enumerate() {
        let name = stage.name.as_str();
        if let Some(first) = seen.insert(name.to_string(), i) {
            r.stage_err(
                i,
                name,
                "name",
                format!(
                    "duplicate stage name `{name}` (stages {} and {} of [[stage]])",
                    first + 1,
                    i + 1
                ),
            );
            continue;
        }
        let name_ok = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !name.is_empty() && !name_ok {
            r.stage_err(
                i,
                name,
                "name",
                format!(
                    "stage name `{name}` may hold only letters, digits, `_` and `-` (it is used in dotted paths)"
                ),
            );
            continue;
        }
        stage_fields(r, i, stage);
    }
}

/// The fields of one (well-named) stage.
fn stage_fields(r: &mut Rules<'_>, i: usize, stage: &StageSpec) {
    let name = stage.name.as_str();
    let path = format!("stage.{name}");
    r.members(
        &format!("{path}.train"),
        &stage.train,
        &beatlab_mm::Part::spec_names(),
        "part",
    );
    if stage.lr_min > stage.lr {
        r.stage_err(
            i,
            name,
            "lr_min",
            format!("{} is above the stage's lr ({})", stage.lr_min, stage.lr),
        );
    }
    if stage.kind != StageKind::Eval && stage.epochs == 0 && stage.steps == 0 {
        r.stage_err(
            i,
            name,
            "epochs",
            "a training stage needs epochs > 0 or steps > 0",
        );
    }
}

/// Backbone, vision encoder and LoRA: tiny presets that divide into heads, real models with
/// weights, known LoRA target modules.
fn model_rules(r: &mut Rules<'_>, spec: &Spec) {
    let bb = &spec.backbone;
    match bb.model {
        BackboneModel::TinyQwen2 | BackboneModel::TinyPhi3 => {
            if !bb.hidden_size.is_multiple_of(bb.heads) {
                r.err(
                    "backbone.heads",
                    format!(
                        "backbone.hidden_size ({}) is not divisible by {} heads",
                        bb.hidden_size, bb.heads
                    ),
                );
            }
        }
        BackboneModel::Qwen2 | BackboneModel::Phi3 => {
            if bb.weights.trim().is_empty() {
                r.err(
                    "backbone.weights",
                    format!(
                        "backbone `{}` needs `weights` (a local folder or a Hugging Face model id)",
                        bb.model
                    ),
                );
            }
        }
    }
    if spec.vision.model == VisionModel::Siglip && spec.vision.weights.trim().is_empty() {
        r.err(
            "vision.weights",
            "vision model `siglip` needs `weights` (a local folder or a Hugging Face model id)",
        );
    }
    signal_rules(r, spec);
    r.members(
        "backbone.lora.targets",
        &spec.backbone.lora.targets,
        LORA_TARGETS,
        "module",
    );
}

/// The signal stream: a lead set anyECG-chat's ablation knows, ViT patches that tile Beat's
/// input, heads of a usable size.
fn signal_rules(r: &mut Rules<'_>, spec: &Spec) {
    let sig = &spec.signal;
    if beatlab_ecg::flexible::reduced_leads(sig.leads as usize).is_none() {
        r.err(
            "signal.leads",
            format!("{} is not a lead set; expected 12, 6, 2 or 1", sig.leads),
        );
    }
    if sig.encoder == SignalEncoder::Vit {
        if !spec.beat.input_len.is_multiple_of(spec.vit.patch_size) {
            r.err(
                "vit.patch_size",
                format!(
                    "{} does not divide beat.input_len ({}), the samples the ViT reads",
                    spec.vit.patch_size, spec.beat.input_len
                ),
            );
        }
        if spec.projector.signal_input == SignalInput::Codes {
            r.err(
                "projector.signal_input",
                "\"codes\" tokenizes Beat's codes; signal.encoder = \"vit\" needs \"latents\"",
            );
        }
    }
    let flexible = sig.chunks > 0 || sig.lead_mask || sig.leads != 12;
    if flexible && spec.projector.signal_input == SignalInput::Codes {
        r.err(
            "projector.signal_input",
            "\"codes\" takes single 12-lead windows; chunks, reduced leads and lead-mask \
             tokens (signal.chunks, signal.leads, signal.lead_mask) need \"latents\"",
        );
    }
}

/// `[table]` rows and columns and `[paper]` cells name spec fields.
fn table_rules(r: &mut Rules<'_>, spec: &Spec) {
    for key in &spec.table.rows {
        r.field(spec, "table.rows", key);
    }
    for key in &spec.table.columns {
        r.field(spec, "table.columns", key);
    }
    for cell in &spec.paper.cell {
        for key in cell.at.keys() {
            r.field(spec, "paper.cell", key);
        }
    }
}

/// Why a name cannot be used as a folder under `runs/`, if it cannot.
pub fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("must not be empty".into());
    }
    if name.contains('/') || name.contains('\\') || name.contains("..") || name.starts_with('.') {
        return Some(format!(
            "`{name}` would escape or hide in runs/: no `/`, `\\`, `..` or leading `.`"
        ));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Some(format!(
            "`{name}` may hold only letters, digits, `_`, `-` and `.`"
        ));
    }
    None
}
