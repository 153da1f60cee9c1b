//! Experiment specs: typed TOML with layered overrides, sweeps, and content hashes.
//!
//! Layers, lowest first: built-in defaults < the `extends` chain < the file < `BEATLAB_*`
//! environment variables < `--set key=value`. The merged spec is checked against the schema and
//! the cross-field rules, reporting every problem with its location at once. A [`Plan`] expands
//! `[sweep]` into [`Cell`]s; each cell's resolved spec has a canonical JSON form (sorted keys,
//! normalised numbers, no comments) whose sha256 identifies the cell in the registry.

pub mod cells;
pub mod diag;
pub mod metrics;
pub mod reference;
pub mod schema;
pub mod sections;
pub mod sweep;
pub mod tree;
pub mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub use cells::{LazyPlan, PlanCells};
pub use diag::{Diagnostic, SpecError};
pub use schema::{FieldSchema, SectionSchema, Ty};
pub use sections::*;
pub use sweep::Sweep;
use tree::{Node, Origin, Value};

use self::schema::spec_section;

spec_section! {
    /// A beatlab experiment spec.
    pub struct Spec in "" {
        /// Identity and run-wide settings.
        experiment: ExperimentSpec = ExperimentSpec::default(),
        /// ECG records and preprocessing.
        data: DataSpec = DataSpec::default(),
        /// The Beat signal tokenizer.
        beat: BeatSpec = BeatSpec::default(),
        /// DSPA projectors.
        projector: ProjectorSpec = ProjectorSpec::default(),
        /// The signal stream's encoder and flexible inputs.
        signal: SignalSpec = SignalSpec::default(),
        /// The ECG ViT.
        vit: VitSpec = VitSpec::default(),
        /// Image stream.
        vision: VisionSpec = VisionSpec::default(),
        /// Language-model backbone.
        backbone: BackboneSpec = BackboneSpec::default(),
        /// Instruction data.
        instructions: InstructionsSpec = InstructionsSpec::default(),
        /// Benchmark evaluation.
        eval: EvalSpec = EvalSpec::default(),
        /// Training stages, run in order (`[[stage]]`); without any, the paper's pipeline
        /// `beat`, `warmup`, `joint`, `eval` runs.
        stage: Vec<StageSpec> = Vec::new(),
        /// Table rendering.
        table: TableSpec = TableSpec::default(),
        /// Published values.
        paper: PaperSpec = PaperSpec::default(),
    }
}

/// Module names LoRA adapters can target.
pub const LORA_TARGETS: &[&str] = &[
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "qkv_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
    "gate_up_proj",
];

/// Environment variables with this prefix and a `__` in their name set spec fields:
/// `BEATLAB_BEAT__CODEBOOK_SIZE=1024` sets `beat.codebook_size`.
pub const ENV_PREFIX: &str = "BEATLAB_";

/// Overrides applied on top of the spec files.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `key=value` pairs from `--set`, in order.
    pub sets: Vec<String>,
    /// `(name, value)` environment variables (pass `std::env::vars()`; only `BEATLAB_*__*` are used).
    pub env: Vec<(String, String)>,
}

impl Overrides {
    /// `--set` values plus this process's `BEATLAB_*` environment.
    pub fn from_process(sets: Vec<String>) -> Self {
        Self {
            sets,
            env: std::env::vars().collect(),
        }
    }
}

/// A loaded, validated spec and its sweep, ready to expand into cells.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// The file the user named.
    pub path: PathBuf,
    /// The spec with every layer applied, before the sweep.
    pub spec: Spec,
    pub sweep: Sweep,
    /// The merged tree (with origins), from which cells are derived.
    tree: Node,
}

/// Loads a spec file with its `extends` chain and overrides, and validates it.
pub fn load(path: &Path, overrides: &Overrides) -> Result<Loaded, SpecError> {
    let text = read_spec(path)?;
    load_text(path, text, overrides)
}

/// Parses a spec from text, for tests and tools. `name` stands for the file in diagnostics; an
/// `extends` is resolved against the folder of `name`. Nothing is written to disk.
pub fn load_str(name: &str, text: &str, overrides: &Overrides) -> Result<Loaded, SpecError> {
    load_text(Path::new(name), text.to_owned(), overrides)
}

fn load_text(path: &Path, text: String, overrides: &Overrides) -> Result<Loaded, SpecError> {
    let mut diags = Vec::new();
    let mut tree = load_chain(path, text, &mut Vec::new(), &mut diags)?;
    if !diags.is_empty() {
        return Err(SpecError::Invalid { diagnostics: diags });
    }
    if tree.get("stage").is_none() {
        insert_default_pipeline(&mut tree);
    }
    let pinned = apply_overrides(&mut tree, overrides, &mut diags);
    fill_stage_defaults(&mut tree);
    let spec = check_and_type(&mut tree, &mut diags);
    let sweep = sweep::parse(tree.get("sweep"), &spec, &pinned, &mut diags);
    if !diags.is_empty() {
        diag::sort(&mut diags);
        return Err(SpecError::Invalid { diagnostics: diags });
    }
    Ok(Loaded {
        path: path.to_path_buf(),
        spec,
        sweep,
        tree,
    })
}

fn read_spec(path: &Path) -> Result<String, SpecError> {
    std::fs::read_to_string(path).map_err(|source| SpecError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn load_chain(
    path: &Path,
    text: String,
    stack: &mut Vec<PathBuf>,
    diags: &mut Vec<Diagnostic>,
) -> Result<Node, SpecError> {
    let node = match tree::parse_file(path, text) {
        Ok(n) => n,
        Err(e) => {
            return Err(SpecError::Invalid {
                diagnostics: vec![Diagnostic {
                    location: e.location,
                    path: String::new(),
                    message: e.message,
                    help: None,
                }],
            });
        }
    };
    let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    stack.push(canonical);
    let extends = node
        .get("experiment")
        .and_then(|e| e.get("extends"))
        .cloned();
    let result = match extends {
        Some(ext) => match &ext.value {
            Value::Str(base) if !base.is_empty() => {
                let base_path = path.parent().unwrap_or(Path::new(".")).join(base);
                let base_canonical = base_path.canonicalize().ok();
                if let Some(pos) = base_canonical
                    .as_ref()
                    .and_then(|c| stack.iter().position(|s| s == c))
                {
                    let cycle: Vec<String> = stack[pos..]
                        .iter()
                        .chain(std::iter::once(&stack[pos]))
                        .map(|p| {
                            p.file_name()
                                .unwrap_or_default()
                                .to_string_lossy()
                                .into_owned()
                        })
                        .collect();
                    diags.push(Diagnostic::new(
                        &ext.origin,
                        false,
                        "experiment.extends",
                        format!("extends cycle: {}", cycle.join(" -> ")),
                    ));
                    node
                } else if !base_path.is_file() {
                    diags.push(Diagnostic::new(
                        &ext.origin,
                        false,
                        "experiment.extends",
                        format!(
                            "base spec `{base}` not found (looked for {})",
                            base_path.display()
                        ),
                    ));
                    node
                } else {
                    let base_text = read_spec(&base_path)?;
                    let mut base_tree = load_chain(&base_path, base_text, stack, diags)?;
                    // The child's own `extends` must not be shadowed by the base's.
                    tree::merge(&mut base_tree, node);
                    base_tree
                }
            }
            _ => node,
        },
        None => node,
    };
    stack.pop();
    Ok(result)
}

fn insert_default_pipeline(tree: &mut Node) {
    let stages = StageSpec::default_pipeline()
        .into_iter()
        .map(|(name, kind)| {
            let mut t = toml::Table::new();
            t.insert("name".into(), toml::Value::String(name.into()));
            t.insert("kind".into(), toml::Value::String(kind.as_str().into()));
            Node::from_toml(&toml::Value::Table(t), &Origin::Default)
        })
        .collect();
    if let Some(t) = tree.value.as_table_mut() {
        t.insert(
            "stage".into(),
            Node::new(Value::Array(stages), Origin::Default),
        );
    }
}

/// Kind-dependent stage defaults, inserted where a stage does not set the field itself.
fn fill_stage_defaults(tree: &mut Node) {
    let Some(Value::Array(stages)) = tree
        .value
        .as_table_mut()
        .and_then(|t| t.get_mut("stage"))
        .map(|s| &mut s.value)
    else {
        return;
    };
    for stage in stages {
        let kind = stage
            .get("kind")
            .and_then(|k| k.value.as_str())
            .unwrap_or(StageKind::Beat.as_str());
        let Ok(kind) = kind.parse::<StageKind>() else {
            continue; // reported by validation
        };
        if let Some(t) = stage.value.as_table_mut() {
            for (key, value) in StageSpec::kind_defaults(kind) {
                t.entry(key.to_string())
                    .or_insert_with(|| Node::from_toml(&value, &Origin::Default));
            }
        }
    }
}

/// Applies environment and `--set` overrides; returns the keys they set (which pin sweep axes).
fn apply_overrides(
    tree: &mut Node,
    overrides: &Overrides,
    diags: &mut Vec<Diagnostic>,
) -> Vec<String> {
    let mut pinned = Vec::new();
    let mut env: Vec<&(String, String)> = overrides
        .env
        .iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k.contains("__"))
        .collect();
    env.sort();
    let env_items = env.into_iter().map(|(k, v)| {
        let path = k[ENV_PREFIX.len()..].to_lowercase().replace("__", ".");
        (path, v.clone(), Origin::Env { var: k.clone() })
    });
    let mut items: Vec<(String, String, Origin)> = env_items.collect();
    for arg in &overrides.sets {
        match arg.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => items.push((
                k.trim().to_string(),
                v.to_string(),
                Origin::Set { arg: arg.clone() },
            )),
            _ => diags.push(Diagnostic {
                location: format!("--set {arg}"),
                path: String::new(),
                message: "expected KEY=VALUE, e.g. --set beat.codebook_size=1024".into(),
                help: None,
            }),
        }
    }
    for (path, text, origin) in items {
        let Some(ty) = path_type_in_tree(tree, &path) else {
            let spec = Spec::default();
            let mut d = Diagnostic::new(
                &origin,
                false,
                &path,
                format!("unknown key `{path}`: not a spec field"),
            );
            let mut candidates = all_field_paths(&spec);
            candidates.extend(stage_names(tree).iter().flat_map(|n| {
                StageSpec::schema()
                    .fields
                    .iter()
                    .map(|f| format!("stage.{n}.{}", f.name))
                    .collect::<Vec<_>>()
            }));
            if let Some(h) = did_you_mean_path(&path, &candidates) {
                d = d.with_help(h);
            }
            diags.push(d);
            continue;
        };
        let mut node = tree::parse_override_value(&text, &origin);
        // Typed by the schema: a string field takes the text as written (`--set experiment.name=123`).
        if matches!(ty, Ty::Str | Ty::Choice(_)) && !matches!(node.value, Value::Str(_)) {
            node.value = Value::Str(text.clone());
        }
        match tree::set_path(tree, &path, node) {
            Ok(()) => pinned.push(path),
            Err(tree::PathError::UnknownStage { name, known }) => diags.push(
                Diagnostic::new(&origin, false, &path, format!("no stage named `{name}`"))
                    .with_help(format!("stages: {}", known.join(", "))),
            ),
            Err(_) => diags.push(Diagnostic::new(
                &origin,
                false,
                &path,
                "cannot set this path",
            )),
        }
    }
    pinned
}

fn did_you_mean_path(path: &str, candidates: &[String]) -> Option<String> {
    diag::did_you_mean(path, candidates.iter().map(String::as_str))
}

fn stage_names(tree: &Node) -> Vec<String> {
    match tree.get("stage").map(|s| &s.value) {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|s| tree::stage_name(s).map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

/// The schema type at a path; `stage.<name>.<field>` is typed by the stage schema (whether the
/// stage exists is checked when the path is applied).
fn path_type_in_tree(_tree: &Node, path: &str) -> Option<Ty> {
    if let Some(rest) = path.strip_prefix("stage.") {
        let (_, field) = rest.split_once('.')?;
        return StageSpec::schema().field(field).map(|f| f.ty.clone());
    }
    section_path_type(&Spec::schema(), path)
}

fn section_path_type(schema: &SectionSchema, path: &str) -> Option<Ty> {
    let (head, rest) = match path.split_once('.') {
        Some((h, r)) => (h, Some(r)),
        None => (path, None),
    };
    let field = schema.field(head)?;
    match (rest, &field.ty) {
        (None, ty) => Some(ty.clone()),
        (Some(rest), Ty::Section(inner)) => section_path_type(&inner(), rest),
        _ => None,
    }
}

/// The schema type of a dotted field path of `spec` (`stage.<name>.<field>` for stages that
/// exist), or `None` if it is not a field.
pub fn field_type(spec: &Spec, path: &str) -> Option<Ty> {
    if let Some(rest) = path.strip_prefix("stage.") {
        let (name, field) = rest.split_once('.')?;
        spec.stage.iter().find(|s| s.name == name)?;
        return StageSpec::schema().field(field).map(|f| f.ty.clone());
    }
    match section_path_type(&Spec::schema(), path)? {
        Ty::Section(_) => None,
        ty => Some(ty),
    }
}

/// Every leaf field path of the spec (stages by their names), for suggestions.
pub fn all_field_paths(spec: &Spec) -> Vec<String> {
    fn walk(schema: &SectionSchema, prefix: &str, out: &mut Vec<String>) {
        for f in &schema.fields {
            let path = validate::join(prefix, f.name);
            match &f.ty {
                Ty::Section(inner) => walk(&inner(), &path, out),
                _ if path == "stage" => {}
                _ => out.push(path),
            }
        }
    }
    let mut out = Vec::new();
    walk(&Spec::schema(), "", &mut out);
    for s in &spec.stage {
        for f in &StageSpec::schema().fields {
            out.push(format!("stage.{}.{}", s.name, f.name));
        }
    }
    out
}

/// Validates a merged tree and types it as a [`Spec`]; problems go to `diags` (invalid values
/// are dropped so the rest can still be checked).
fn check_and_type(tree: &mut Node, diags: &mut Vec<Diagnostic>) -> Spec {
    validate::check_section(tree, &Spec::schema(), "", diags);
    let mut value = tree.to_toml();
    if let Some(t) = value.as_table_mut() {
        t.remove("sweep");
    }
    let spec: Spec = match value.try_into() {
        Ok(spec) => spec,
        Err(e) => {
            // Unreachable once the schema check passed; reported rather than panicking.
            diags.push(Diagnostic {
                location: tree.origin.describe(false),
                path: String::new(),
                message: format!("internal: the validated spec did not deserialise: {e}"),
                help: None,
            });
            return Spec::default();
        }
    };
    diags.extend(validate::check_rules(&spec, tree));
    spec
}

/// One cell of the sweep grid.
#[derive(Clone, Debug)]
pub struct Cell {
    /// Position in the plan (0-based).
    pub index: usize,
    /// The sweep values that make this cell, in axis order.
    pub overrides: Vec<(String, toml::Value)>,
    /// The resolved spec of this cell.
    pub spec: Spec,
    /// Canonical JSON of `spec` (the part that defines results).
    pub canonical: String,
    /// sha256 of `canonical`, hex.
    pub hash: String,
}

impl Cell {
    /// The first 12 hex digits of the hash.
    pub fn short_hash(&self) -> &str {
        &self.hash[..12]
    }

    /// `key=value` pairs, comma-separated (`beat.codebook_size=512, beat.dvq_levels=2`).
    pub fn label(&self) -> String {
        overrides_label(&self.overrides)
    }

    /// The overrides as a JSON object.
    pub fn overrides_json(&self) -> serde_json::Value {
        overrides_json(&self.overrides)
    }
}

/// A cell's sweep values as `key=value` pairs, comma-separated (`(base)` when there are none).
pub fn overrides_label(overrides: &[(String, toml::Value)]) -> String {
    if overrides.is_empty() {
        return "(base)".into();
    }
    overrides
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A cell's sweep values as a JSON object.
pub fn overrides_json(overrides: &[(String, toml::Value)]) -> serde_json::Value {
    serde_json::Value::Object(
        overrides
            .iter()
            .map(|(k, v)| (k.clone(), toml_to_json(v)))
            .collect(),
    )
}

/// The cells of an experiment.
#[derive(Clone, Debug)]
pub struct Plan {
    pub experiment: String,
    pub description: String,
    pub path: PathBuf,
    /// The spec before the sweep (tables, paper values).
    pub base: Spec,
    pub cells: Vec<Cell>,
    /// Sweep keys in axis order.
    pub sweep_keys: Vec<String>,
    /// Axes dropped because an override fixed their key.
    pub pinned: Vec<String>,
}

/// How many cells a command expands unless told otherwise (`--max-cells`,
/// `BEATLAB_MAX_CELLS`); `plan --count` counts any grid without expanding it.
pub const DEFAULT_MAX_CELLS: u64 = 10_000;

/// A plan's cells as their hashes only (32 bytes a cell), for listing grids of any size.
#[derive(Clone, Debug)]
pub struct CellHashes {
    /// sha256 of each cell's canonical JSON, in plan order.
    pub hashes: Vec<[u8; 32]>,
}

impl Loaded {
    /// Expands the sweep into cells, validating each cell's resolved spec; a sweep of more
    /// than [`DEFAULT_MAX_CELLS`] cells is a spec error.
    pub fn plan(&self) -> Result<Plan, SpecError> {
        self.plan_within(DEFAULT_MAX_CELLS)
    }

    /// [`Loaded::plan`] with another cell cap.
    pub fn plan_within(&self, max_cells: u64) -> Result<Plan, SpecError> {
        let mut cells = Vec::new();
        self.each_cell(max_cells, |cell| cells.push(cell))?;
        Ok(Plan {
            experiment: self.spec.experiment.name.clone(),
            description: self.spec.experiment.description.clone(),
            path: self.path.clone(),
            base: self.spec.clone(),
            cells,
            sweep_keys: self.sweep.keys().into_iter().map(str::to_string).collect(),
            pinned: self.sweep.pinned.clone(),
        })
    }

    /// Validates every cell as [`Loaded::plan_within`] does, keeping only their hashes; their
    /// overrides come again, in the same order, from `self.sweep.cells()`.
    pub fn cell_hashes(&self, max_cells: u64) -> Result<CellHashes, SpecError> {
        let mut hashes = Vec::new();
        self.each_cell(max_cells, |cell| {
            let mut h = [0u8; 32];
            // The hash is 64 hex digits made by `hash_text`.
            let _ = hex::decode_to_slice(&cell.hash, &mut h);
            hashes.push(h);
        })?;
        Ok(CellHashes { hashes })
    }

    /// How many cells the sweep has, counted without expanding it (`None`: more than 2^128).
    pub fn cell_count(&self) -> Option<u128> {
        self.sweep.count()
    }

    /// Refuses a sweep of more than `max_cells` cells before any is made.
    fn check_cell_cap(&self, max_cells: u64) -> Result<(), SpecError> {
        let count = self.cell_count();
        if count.is_some_and(|n| n <= u128::from(max_cells)) {
            return Ok(());
        }
        let origin = self
            .tree
            .get("sweep")
            .map_or(&self.tree.origin, |n| &n.origin);
        let count = count.map_or("more than 2^128".to_string(), |n| {
            group_digits(&n.to_string())
        });
        Err(SpecError::Invalid {
            diagnostics: vec![
                Diagnostic::new(
                    origin,
                    false,
                    "sweep",
                    format!(
                        "the sweep has {count} cells, more than the limit of {}",
                        group_digits(&max_cells.to_string())
                    ),
                )
                .with_help(
                    "narrow the sweep, or raise the limit with --max-cells N \
                     (or BEATLAB_MAX_CELLS); `beatlab plan --count` counts cells without expanding them",
                ),
            ],
        })
    }

    /// Makes, validates and hands over every cell in plan order; the problems of all cells are
    /// reported together. Nothing is made when the sweep is over `max_cells`.
    fn each_cell(&self, max_cells: u64, mut keep: impl FnMut(Cell)) -> Result<(), SpecError> {
        self.check_cell_cap(max_cells)?;
        let mut diags = Vec::new();
        let mut metrics = metrics::KnownMetrics::new(&self.spec);
        for (index, overrides) in self.sweep.cells().enumerate() {
            let (cell, cell_diags) = self.make_cell(index, &overrides);
            if !cell_diags.is_empty() {
                let label = cell.label();
                for mut d in cell_diags {
                    d.message = format!("in sweep cell {{{label}}}: {}", d.message);
                    diags.push(d);
                }
                continue;
            }
            metrics.add(&cell.spec);
            keep(cell);
        }
        if diags.is_empty() {
            diags = metrics.check(&self.spec, &self.tree);
        }
        if !diags.is_empty() {
            return Err(SpecError::Invalid { diagnostics: diags });
        }
        Ok(())
    }

    /// The cell at `index` of the grid, made from its sweep values, with the problems of its
    /// resolved spec (none once [`Loaded::each_cell`] accepted the sweep: making a cell is
    /// deterministic).
    fn make_cell(&self, index: usize, overrides: &[(String, Node)]) -> (Cell, Vec<Diagnostic>) {
        let mut tree = self.tree.clone();
        for (key, node) in overrides {
            // Sweep keys were checked against the schema; stage names exist.
            let _ = tree::set_path(&mut tree, key, node.clone());
        }
        let mut diags = Vec::new();
        let spec = check_and_type(&mut tree, &mut diags);
        let canonical = canonical_json(&spec);
        let hash = hash_text(&canonical);
        let cell = Cell {
            index,
            overrides: overrides
                .iter()
                .map(|(k, n)| (k.clone(), n.to_toml()))
                .collect(),
            spec,
            canonical,
            hash,
        };
        (cell, diags)
    }
}

/// `1048576` as `1,048,576`.
pub fn group_digits(digits: &str) -> String {
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The canonical JSON of the parts of a spec that define its results: sorted keys, numbers as
/// serde writes them (shortest round-trip form), no presentation fields (`description`,
/// `extends`, `[table]`, `[paper]`), no storage choices (`data.cache`), and no fields added
/// after their section while they hold their empty default (`data.synthetic_mix`).
pub fn canonical_json(spec: &Spec) -> String {
    let mut value = serde_json::to_value(spec).expect("specs serialise to JSON");
    if let Some(obj) = value.as_object_mut() {
        obj.remove("table");
        obj.remove("paper");
        if let Some(exp) = obj.get_mut("experiment").and_then(|e| e.as_object_mut()) {
            exp.remove("description");
            exp.remove("extends");
        }
        // Whether preprocessed windows are cached changes where they come from, not what they are.
        if let Some(data) = obj.get_mut("data").and_then(|d| d.as_object_mut()) {
            data.remove("cache");
            // Fields added later leave the hashes of specs that do not set them as they were,
            // so their finished cells are not run again.
            if data
                .get("synthetic_mix")
                .and_then(|m| m.as_object())
                .is_some_and(|m| m.is_empty())
            {
                data.remove("synthetic_mix");
            }
        }
    }
    let mut out = String::new();
    write_canonical(&value, &mut out);
    out
}

fn write_canonical(value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::Object(map) => {
            let sorted: BTreeMap<&String, &serde_json::Value> = map.iter().collect();
            out.push('{');
            for (i, (k, v)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(k).expect("string keys"));
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
        serde_json::Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// sha256 of a text, hex.
pub fn hash_text(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// TOML value to JSON (datetimes as strings).
pub fn toml_to_json(v: &toml::Value) -> serde_json::Value {
    match v {
        toml::Value::String(s) => serde_json::Value::String(s.clone()),
        toml::Value::Integer(i) => serde_json::Value::from(*i),
        toml::Value::Float(f) => serde_json::Value::from(*f),
        toml::Value::Boolean(b) => serde_json::Value::Bool(*b),
        toml::Value::Datetime(d) => serde_json::Value::String(d.to_string()),
        toml::Value::Array(a) => serde_json::Value::Array(a.iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => serde_json::Value::Object(
            t.iter()
                .map(|(k, v)| (k.clone(), toml_to_json(v)))
                .collect(),
        ),
    }
}

/// Reads a dotted field path out of a spec as a TOML value (`stage.<name>.<field>` for stages).
pub fn get_field(spec: &Spec, path: &str) -> Option<toml::Value> {
    let value = toml::Value::try_from(spec).ok()?;
    if let Some(rest) = path.strip_prefix("stage.") {
        let (name, field) = rest.split_once('.')?;
        let stage = spec.stage.iter().find(|s| s.name == name)?;
        return toml::Value::try_from(stage).ok()?.get(field).cloned();
    }
    let mut node = &value;
    for part in path.split('.') {
        node = node.get(part)?;
    }
    Some(node.clone())
}

/// The resolved cell as TOML, for `runs/<experiment>/<run>/spec.toml`.
pub fn to_toml_string(spec: &Spec) -> String {
    toml::to_string_pretty(spec).expect("specs serialise to TOML")
}

/// Expands `${VAR}` and `${VAR:-default}` in a path field.
pub fn expand_env(text: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unclosed `${{` in `{text}`"))?;
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        match (std::env::var(name).ok().filter(|v| !v.is_empty()), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => return Err(format!("environment variable `{name}` is not set")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The data root of a spec with variables expanded (`None` for the simulator).
pub fn data_root(spec: &Spec) -> Option<Result<PathBuf, String>> {
    (spec.data.source != DataSource::Synthetic)
        .then(|| expand_env(&spec.data.root).map(PathBuf::from))
}

impl Loaded {
    /// A diagnostic located where `path` was set (or the nearest enclosing table).
    pub fn diagnostic_at(&self, path: &str, message: impl Into<String>) -> Diagnostic {
        let mut prefix = path;
        let origin = loop {
            if let Some(n) = tree::lookup(&self.tree, prefix) {
                break n.origin.clone();
            }
            match prefix.rsplit_once('.') {
                Some((head, _)) => prefix = head,
                None => break self.tree.origin.clone(),
            }
        };
        Diagnostic::new(&origin, false, path, message)
    }

    /// Checks what running needs beyond a valid spec: every cell's data root exists.
    pub fn check_runtime(&self, plan: &(impl PlanCells + ?Sized)) -> Result<(), SpecError> {
        let origin = tree::lookup(&self.tree, "data.root")
            .map(|n| n.origin.clone())
            .unwrap_or(Origin::Default);
        let mut diags: Vec<Diagnostic> = Vec::new();
        for cell in plan.cells() {
            let problem = match data_root(&cell.spec) {
                None => None,
                Some(Err(e)) => Some(e),
                Some(Ok(root)) if !root.is_dir() => Some(format!(
                    "data root `{}` does not exist (source `{}`); set `data.root` or BEATLAB_ECG_DATA",
                    root.display(),
                    cell.spec.data.source
                )),
                Some(Ok(_)) => None,
            };
            if let Some(message) = problem {
                let d = Diagnostic::new(&origin, false, "data.root", message);
                if !diags.contains(&d) {
                    diags.push(d);
                }
            }
        }
        if diags.is_empty() {
            Ok(())
        } else {
            Err(SpecError::Invalid { diagnostics: diags })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_expansion_with_defaults() {
        assert_eq!(
            expand_env("${BEATLAB_SURELY_UNSET_X:-a/b}/c").unwrap(),
            "a/b/c"
        );
        assert!(expand_env("${BEATLAB_SURELY_UNSET_X}").is_err());
        assert_eq!(expand_env("plain").unwrap(), "plain");
    }
}
