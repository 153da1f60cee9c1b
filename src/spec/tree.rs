//! A TOML value tree that remembers where every value came from.
//!
//! Spec layers (defaults, `extends` chain, the file, `BEATLAB_*` variables, `--set`, sweep cells)
//! are merged as [`Node`] trees. Each node carries an [`Origin`] so that a validation error can
//! name the file, line and column — or the environment variable or command-line flag — that set
//! the offending value. Stages (`[[stage]]`) merge by `name`, so a layer can change one stage
//! without repeating the others.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use indexmap::IndexMap;
use toml::de::{DeTable, DeValue};

/// The text of a spec file, kept to turn byte offsets into lines and columns.
#[derive(Debug)]
pub struct SourceFile {
    /// The path as the user gave it (or as resolved from `extends`), for messages.
    pub path: PathBuf,
    pub text: String,
    /// Where each line starts and whether it is ASCII, built on the first lookup, so that
    /// locating many problems costs a binary search each, not a scan of the file each.
    lines: OnceLock<Vec<LineStart>>,
}

/// The byte offset a line starts at, and whether its bytes are all ASCII (then a column in
/// characters is a column in bytes).
#[derive(Debug, Clone, Copy)]
struct LineStart {
    offset: usize,
    ascii: bool,
}

impl SourceFile {
    pub fn new(path: PathBuf, text: String) -> Self {
        Self {
            path,
            text,
            lines: OnceLock::new(),
        }
    }

    fn lines(&self) -> &[LineStart] {
        self.lines.get_or_init(|| {
            let mut starts = vec![0];
            starts.extend(self.text.match_indices('\n').map(|(i, _)| i + 1));
            let ends = starts[1..].iter().copied().chain([self.text.len()]);
            starts
                .iter()
                .zip(ends)
                .map(|(&offset, end)| LineStart {
                    offset,
                    ascii: self.text.as_bytes()[offset..end].is_ascii(),
                })
                .collect()
        })
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let lines = self.lines();
        let index = lines.partition_point(|l| l.offset <= offset) - 1;
        let line = lines[index];
        let column = if line.ascii {
            offset - line.offset
        } else {
            self.text[line.offset..offset].chars().count()
        };
        (index + 1, column + 1)
    }
}

/// Where a value was set.
#[derive(Clone, Debug)]
pub enum Origin {
    /// A built-in default.
    Default,
    /// A spec file: the key's and the value's byte ranges.
    File {
        file: Arc<SourceFile>,
        key: Option<Range<usize>>,
        value: Range<usize>,
    },
    /// A `BEATLAB_*` environment variable.
    Env { var: String },
    /// A `--set key=value` argument.
    Set { arg: String },
}

impl Origin {
    /// Human location: `file:line:col`, `env BEATLAB_X`, `--set a=b`.
    pub fn describe(&self, prefer_key: bool) -> String {
        match self {
            Origin::Default => "built-in default".into(),
            Origin::File { file, key, value } => {
                let offset = match (prefer_key, key) {
                    (true, Some(k)) => k.start,
                    _ => value.start,
                };
                let (line, col) = file.line_col(offset);
                format!("{}:{line}:{col}", file.path.display())
            }
            Origin::Env { var } => format!("environment variable {var}"),
            Origin::Set { arg } => format!("--set {arg}"),
        }
    }
}

/// A value and where it came from.
#[derive(Clone, Debug)]
pub struct Node {
    pub value: Value,
    pub origin: Origin,
}

/// A TOML value whose children are [`Node`]s. Tables keep their insertion order, so sweeps
/// enumerate cells in the order the file lists its axes.
#[derive(Clone, Debug)]
pub enum Value {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Datetime(String),
    Array(Vec<Node>),
    Table(IndexMap<String, Node>),
}

impl Value {
    /// The TOML type name, for messages ("found a string").
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Str(_) => "a string",
            Value::Datetime(_) => "a datetime",
            Value::Array(_) => "an array",
            Value::Table(_) => "a table",
        }
    }

    pub fn as_table(&self) -> Option<&IndexMap<String, Node>> {
        match self {
            Value::Table(t) => Some(t),
            _ => None,
        }
    }

    pub fn as_table_mut(&mut self) -> Option<&mut IndexMap<String, Node>> {
        match self {
            Value::Table(t) => Some(t),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

impl Node {
    pub fn new(value: Value, origin: Origin) -> Self {
        Self { value, origin }
    }

    pub fn empty_table(origin: Origin) -> Self {
        Self::new(Value::Table(IndexMap::new()), origin)
    }

    /// Child of a table by key.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.value.as_table().and_then(|t| t.get(key))
    }

    /// Converts to a plain TOML value (origins dropped).
    pub fn to_toml(&self) -> toml::Value {
        match &self.value {
            Value::Bool(b) => toml::Value::Boolean(*b),
            Value::Int(i) => toml::Value::Integer(*i),
            Value::Float(f) => toml::Value::Float(*f),
            Value::Str(s) => toml::Value::String(s.clone()),
            Value::Datetime(d) => d
                .parse()
                .map(toml::Value::Datetime)
                .unwrap_or_else(|_| toml::Value::String(d.clone())),
            Value::Array(a) => toml::Value::Array(a.iter().map(Node::to_toml).collect()),
            Value::Table(t) => toml::Value::Table(
                t.iter()
                    .map(|(k, v)| (k.clone(), v.to_toml()))
                    .collect::<toml::Table>(),
            ),
        }
    }

    /// Builds a node tree from a plain TOML value, every node with the same origin.
    pub fn from_toml(value: &toml::Value, origin: &Origin) -> Node {
        let v = match value {
            toml::Value::Boolean(b) => Value::Bool(*b),
            toml::Value::Integer(i) => Value::Int(*i),
            toml::Value::Float(f) => Value::Float(*f),
            toml::Value::String(s) => Value::Str(s.clone()),
            toml::Value::Datetime(d) => Value::Datetime(d.to_string()),
            toml::Value::Array(a) => {
                Value::Array(a.iter().map(|x| Node::from_toml(x, origin)).collect())
            }
            toml::Value::Table(t) => Value::Table(
                t.iter()
                    .map(|(k, v)| (k.clone(), Node::from_toml(v, origin)))
                    .collect(),
            ),
        };
        Node::new(v, origin.clone())
    }
}

/// A TOML syntax error with its location.
#[derive(Debug, Clone)]
pub struct SyntaxError {
    pub location: String,
    pub message: String,
}

/// Parses a spec file into a node tree.
pub fn parse_file(path: &Path, text: String) -> Result<Node, SyntaxError> {
    let file = Arc::new(SourceFile::new(path.to_path_buf(), text));
    // The parsed table borrows the text; the Arc keeps it alive for the origins.
    let text: &str = &file.text;
    match DeTable::parse(text) {
        Ok(table) => {
            let span = table.span();
            Ok(Node::new(
                Value::Table(convert_table(table.get_ref(), &file)),
                Origin::File {
                    file: file.clone(),
                    key: None,
                    value: span,
                },
            ))
        }
        Err(err) => {
            let offset = err.span().map_or(0, |s| s.start);
            let (line, col) = file.line_col(offset);
            Err(SyntaxError {
                location: format!("{}:{line}:{col}", file.path.display()),
                message: format!("invalid TOML: {}", err.message().trim()),
            })
        }
    }
}

fn convert_table(table: &DeTable<'_>, file: &Arc<SourceFile>) -> IndexMap<String, Node> {
    table
        .iter()
        .map(|(k, v)| {
            let mut node = convert_value(v.get_ref(), v.span(), file);
            if let Origin::File { key, .. } = &mut node.origin {
                *key = Some(k.span());
            }
            (k.get_ref().to_string(), node)
        })
        .collect()
}

fn convert_value(value: &DeValue<'_>, span: Range<usize>, file: &Arc<SourceFile>) -> Node {
    let v = match value {
        DeValue::String(s) => Value::Str(s.to_string()),
        DeValue::Integer(i) => parse_int(i.as_str(), i.radix())
            .map(Value::Int)
            .unwrap_or_else(|| Value::Str(i.as_str().to_string())),
        DeValue::Float(f) => parse_float(f.as_str())
            .map(Value::Float)
            .unwrap_or_else(|| Value::Str(f.as_str().to_string())),
        DeValue::Boolean(b) => Value::Bool(*b),
        DeValue::Datetime(d) => Value::Datetime(d.to_string()),
        DeValue::Array(a) => Value::Array(
            a.iter()
                .map(|x| convert_value(x.get_ref(), x.span(), file))
                .collect(),
        ),
        DeValue::Table(t) => Value::Table(convert_table(t, file)),
    };
    Node::new(
        v,
        Origin::File {
            file: file.clone(),
            key: None,
            value: span,
        },
    )
}

fn parse_int(text: &str, radix: u32) -> Option<i64> {
    let clean: String = text.chars().filter(|c| *c != '_').collect();
    let (neg, digits) = match clean.strip_prefix('-') {
        Some(rest) => (true, rest.to_string()),
        None => (false, clean.strip_prefix('+').unwrap_or(&clean).to_string()),
    };
    let digits = match radix {
        16 => digits.trim_start_matches("0x").to_string(),
        8 => digits.trim_start_matches("0o").to_string(),
        2 => digits.trim_start_matches("0b").to_string(),
        _ => digits,
    };
    let v = i64::from_str_radix(&digits, radix).ok()?;
    Some(if neg { -v } else { v })
}

fn parse_float(text: &str) -> Option<f64> {
    let clean: String = text.chars().filter(|c| *c != '_').collect();
    match clean.as_str() {
        "inf" | "+inf" => Some(f64::INFINITY),
        "-inf" => Some(f64::NEG_INFINITY),
        "nan" | "+nan" | "-nan" => Some(f64::NAN),
        other => other.parse().ok(),
    }
}

/// Parses the text of an override value (`--set`, environment) as a TOML value; text that is
/// not a TOML literal is taken as a string, so `--set data.root=/data/ptbxl` needs no quotes.
pub fn parse_override_value(text: &str, origin: &Origin) -> Node {
    let wrapped = format!("v = {text}");
    match toml::from_str::<toml::Table>(&wrapped) {
        // Only a text that is one TOML value: `1\nbeat.width = 5` is a table of two keys,
        // and taking its `v` would silently drop the rest.
        Ok(mut t) if t.len() == 1 => match t.remove("v") {
            Some(v) => Node::from_toml(&v, origin),
            None => Node::new(Value::Str(text.to_string()), origin.clone()),
        },
        _ => Node::new(Value::Str(text.to_string()), origin.clone()),
    }
}

/// Merges `over` into `base`: tables merge key by key, the top-level `stage` arrays merge by
/// stage `name`, and every other value is replaced.
pub fn merge(base: &mut Node, over: Node) {
    merge_at(base, over, 0, "");
}

fn merge_at(base: &mut Node, over: Node, depth: usize, key: &str) {
    match (&mut base.value, over.value) {
        (Value::Table(b), Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge_at(existing, v, depth + 1, &k),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (Value::Array(b), Value::Array(o)) if depth == 1 && key == "stage" => {
            for stage in o {
                let name = stage_name(&stage).map(str::to_string);
                let existing = name
                    .as_deref()
                    .and_then(|n| b.iter_mut().find(|s| stage_name(s) == Some(n)));
                match existing {
                    Some(e) => merge_at(e, stage, depth + 1, "stage[]"),
                    None => b.push(stage),
                }
            }
        }
        (_, value) => {
            *base = Node {
                value,
                origin: over.origin,
            }
        }
    }
}

/// The `name` of a stage table, if it has one.
pub fn stage_name(node: &Node) -> Option<&str> {
    node.get("name").and_then(|n| n.value.as_str())
}

/// Why an override path could not be applied.
#[derive(Debug, Clone, PartialEq)]
pub enum PathError {
    /// `stage.<name>` names no stage.
    UnknownStage { name: String, known: Vec<String> },
    /// A path component is a value, not a table.
    NotATable { prefix: String },
    /// The path is empty or has an empty component.
    Empty,
}

/// Sets the value at a dotted path (`beat.codebook_size`, `stage.beat.epochs`), creating tables
/// on the way. `stage.<name>` addresses the stage with that name.
pub fn set_path(root: &mut Node, path: &str, value: Node) -> Result<(), PathError> {
    let parts: Vec<&str> = path.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(PathError::Empty);
    }
    let mut node = root;
    let mut i = 0;
    while i + 1 < parts.len() {
        let part = parts[i];
        if i == 0 && part == "stage" {
            let name = parts[1];
            let stages = match node.get("stage").map(|s| &s.value) {
                Some(Value::Array(a)) => a,
                _ => &Vec::new(),
            };
            let known: Vec<String> = stages
                .iter()
                .filter_map(|s| stage_name(s).map(str::to_string))
                .collect();
            let Some(pos) = known.iter().position(|n| n == name) else {
                return Err(PathError::UnknownStage {
                    name: name.to_string(),
                    known,
                });
            };
            let Some(Value::Array(stages)) = node
                .value
                .as_table_mut()
                .and_then(|t| t.get_mut("stage"))
                .map(|s| &mut s.value)
            else {
                unreachable!("stage array checked above");
            };
            node = &mut stages[pos];
            i += 2;
            continue;
        }
        let origin = value.origin.clone();
        let table = node
            .value
            .as_table_mut()
            .ok_or_else(|| PathError::NotATable {
                prefix: parts[..i].join("."),
            })?;
        node = table
            .entry(part.to_string())
            .or_insert_with(|| Node::empty_table(origin));
        if node.value.as_table().is_none() {
            return Err(PathError::NotATable {
                prefix: parts[..=i].join("."),
            });
        }
        i += 1;
    }
    let table = node
        .value
        .as_table_mut()
        .ok_or_else(|| PathError::NotATable {
            prefix: parts[..parts.len() - 1].join("."),
        })?;
    table.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

/// The node at a dotted path, with `stage.<name>` addressing a stage.
pub fn lookup<'a>(root: &'a Node, path: &str) -> Option<&'a Node> {
    let parts: Vec<&str> = path.split('.').collect();
    let mut node = root;
    let mut i = 0;
    while i < parts.len() {
        if i == 0 && parts[0] == "stage" && parts.len() > 1 {
            let Value::Array(stages) = &node.get("stage")?.value else {
                return None;
            };
            node = stages.iter().find(|s| stage_name(s) == Some(parts[1]))?;
            i += 2;
            continue;
        }
        node = node.get(parts[i])?;
        i += 1;
    }
    Some(node)
}

/// Flattens nested tables into dotted keys, stopping at non-table values:
/// `{beat = {codebook_size = [..]}}` -> `[("beat.codebook_size", [..])]`.
pub fn flatten(table: &IndexMap<String, Node>) -> Vec<(String, &Node)> {
    let mut out = Vec::new();
    for (k, v) in table {
        match &v.value {
            Value::Table(inner) => {
                for (sub, node) in flatten(inner) {
                    out.push((format!("{k}.{sub}"), node));
                }
            }
            _ => out.push((k.clone(), v)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Node {
        parse_file(Path::new("t.toml"), text.to_string()).unwrap()
    }

    #[test]
    fn origins_point_at_lines_and_columns() {
        let n = parse("[beat]\n  codebook_size = 512\n");
        let v = lookup(&n, "beat.codebook_size").unwrap();
        assert_eq!(v.origin.describe(true), "t.toml:2:3");
        assert_eq!(v.origin.describe(false), "t.toml:2:19");
    }

    #[test]
    fn stages_merge_by_name_and_paths_address_them() {
        let mut base = parse("[[stage]]\nname = 'beat'\nepochs = 5\n[[stage]]\nname = 'joint'\n");
        let over = parse("[[stage]]\nname = 'beat'\nlr = 0.1\n[[stage]]\nname = 'eval'\n");
        merge(&mut base, over);
        assert_eq!(
            lookup(&base, "stage.beat.epochs")
                .unwrap()
                .to_toml()
                .as_integer(),
            Some(5)
        );
        assert_eq!(
            lookup(&base, "stage.beat.lr").unwrap().to_toml().as_float(),
            Some(0.1)
        );
        assert!(lookup(&base, "stage.eval").is_some());
        let set = parse_override_value("7", &Origin::Set { arg: "x".into() });
        set_path(&mut base, "stage.joint.epochs", set.clone()).unwrap();
        assert_eq!(
            lookup(&base, "stage.joint.epochs")
                .unwrap()
                .to_toml()
                .as_integer(),
            Some(7)
        );
        assert!(matches!(
            set_path(&mut base, "stage.nope.epochs", set),
            Err(PathError::UnknownStage { .. })
        ));
    }

    #[test]
    fn override_values_are_typed_toml_or_plain_strings() {
        let o = Origin::Set { arg: "x".into() };
        assert!(matches!(
            parse_override_value("1024", &o).value,
            Value::Int(1024)
        ));
        assert!(matches!(
            parse_override_value("1e-4", &o).value,
            Value::Float(_)
        ));
        assert!(matches!(
            parse_override_value("[1, 2]", &o).value,
            Value::Array(_)
        ));
        assert!(
            matches!(parse_override_value("/data/x", &o).value, Value::Str(ref s) if s == "/data/x")
        );
        // Text after a newline is kept, not dropped (issue #14.12).
        assert!(
            matches!(parse_override_value("64\nwidth = 5", &o).value, Value::Str(ref s) if s == "64\nwidth = 5")
        );
    }

    #[test]
    fn lines_and_columns_of_ascii_and_wide_lines() {
        let f = SourceFile::new("t".into(), "ab\n\u{e9}x = 1\n\nz".into());
        assert_eq!(f.line_col(0), (1, 1));
        assert_eq!(f.line_col(2), (1, 3));
        assert_eq!(f.line_col(3), (2, 1));
        // `x` follows the two-byte `é`: column 2 in characters.
        assert_eq!(f.line_col(5), (2, 2));
        assert_eq!(f.line_col(4), (2, 1), "inside a character: its start");
        assert_eq!(f.line_col(11), (3, 1));
        assert_eq!(f.line_col(12), (4, 1));
        assert_eq!(f.line_col(99), (4, 2));
    }
}
