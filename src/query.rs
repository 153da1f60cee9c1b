//! `--where` expressions over runs: `beat.codebook_size = 512 and (eval/accuracy > 0.7 or
//! status = failed)`.
//!
//! A comparison is `FIELD OP VALUE`, with `OP` one of `=` (or `==`), `!=`, `<`, `<=`, `>`, `>=`;
//! comparisons combine with `and`, `or`, `not` (any case) and parentheses; `and` binds tighter
//! than `or`. A field is
//! - a run column: `status` (as `beatlab runs` shows it, so an expired lease is `stale`),
//!   `experiment`, `id`, `seed`, `attempt`, `stage`, `host`, `device`, `worker`, `code_rev`,
//!   `hash`, `cell`, `error`;
//! - a summary when it holds a `/` (`eval/accuracy`, `beat/val/loss`);
//! - otherwise a field of the run's resolved spec by dotted path (`beat.codebook_size`,
//!   `data.source`, `stage.beat.lr`).
//!
//! A value is a number, a quoted string (`'...'` or `"..."`) or a bare word (`failed`,
//! `tiny-qwen2`, `true`). Numbers compare as numbers, text as text; a number field compared
//! with text is never equal. A comparison on a field the run does not have is false (also for
//! `!=`), so `not` selects the runs that lack it.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use crate::registry::{Registry, RegistryError, RunRow, RunStatus};

/// A `--where` expression that did not parse.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message} at column {column}\n  {text}\n  {caret}^", caret = " ".repeat(column - 1))]
pub struct QueryError {
    /// 1-based column (in characters) of the problem.
    pub column: usize,
    pub message: String,
    /// The whole expression.
    pub text: String,
}

/// A parsed `--where` expression.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    expr: Expr,
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Or(Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Cmp(Comparison),
}

#[derive(Debug, Clone, PartialEq)]
struct Comparison {
    field: Field,
    op: Op,
    value: Literal,
}

/// Where a field's value comes from.
#[derive(Debug, Clone, PartialEq)]
enum Field {
    Column(Column),
    Summary(String),
    /// The dotted path and its parts.
    Spec(String, Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Column {
    Status,
    Experiment,
    Id,
    Seed,
    Attempt,
    Stage,
    Host,
    Device,
    Worker,
    CodeRev,
    Hash,
    Cell,
    Error,
}

const COLUMNS: [(&str, Column); 13] = [
    ("status", Column::Status),
    ("experiment", Column::Experiment),
    ("id", Column::Id),
    ("seed", Column::Seed),
    ("attempt", Column::Attempt),
    ("stage", Column::Stage),
    ("host", Column::Host),
    ("device", Column::Device),
    ("worker", Column::Worker),
    ("code_rev", Column::CodeRev),
    ("hash", Column::Hash),
    ("cell", Column::Cell),
    ("error", Column::Error),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
enum Literal {
    Number(f64),
    Text(String),
}

/// A field's value in one run.
#[derive(Debug, Clone, PartialEq)]
enum Value<'a> {
    Number(f64),
    Text(std::borrow::Cow<'a, str>),
    Missing,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Open,
    Close,
    Op(Op),
    Word(String),
    Number(f64),
    Quoted(String),
    End,
}

/// A token and its 1-based column.
type Spanned = (Token, usize);

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '.' | '/' | '-' | ':' | '+' | '@')
}

fn lex(text: &str) -> Result<Vec<Spanned>, QueryError> {
    let chars: Vec<char> = text.chars().collect();
    let err = |column: usize, message: String| QueryError {
        column,
        message,
        text: text.to_string(),
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let (c, col) = (chars[i], i + 1);
        let next = chars.get(i + 1).copied();
        let (token, len) = match c {
            _ if c.is_whitespace() => {
                i += 1;
                continue;
            }
            '(' => (Token::Open, 1),
            ')' => (Token::Close, 1),
            '=' if next == Some('=') => (Token::Op(Op::Eq), 2),
            '=' => (Token::Op(Op::Eq), 1),
            '!' if next == Some('=') => (Token::Op(Op::Ne), 2),
            '<' if next == Some('=') => (Token::Op(Op::Le), 2),
            '<' => (Token::Op(Op::Lt), 1),
            '>' if next == Some('=') => (Token::Op(Op::Ge), 2),
            '>' => (Token::Op(Op::Gt), 1),
            '\'' | '"' => {
                let end = chars[i + 1..]
                    .iter()
                    .position(|&d| d == c)
                    .ok_or_else(|| err(col, format!("unterminated string: no closing {c}")))?;
                let s: String = chars[i + 1..i + 1 + end].iter().collect();
                (Token::Quoted(s), end + 2)
            }
            _ if is_word_char(c) => {
                let len = chars[i..].iter().take_while(|&&d| is_word_char(d)).count();
                let word: String = chars[i..i + len].iter().collect();
                match word.parse::<f64>() {
                    Ok(n) if n.is_finite() => (Token::Number(n), len),
                    _ => (Token::Word(word), len),
                }
            }
            _ => return Err(err(col, format!("unexpected character `{c}`"))),
        };
        out.push((token, col));
        i += len;
    }
    out.push((Token::End, chars.len() + 1));
    Ok(out)
}

/// Recursive descent over the tokens: or > and > not > primary.
struct Parser<'a> {
    tokens: Vec<Spanned>,
    pos: usize,
    text: &'a str,
}

fn keyword(t: &Token, k: &str) -> bool {
    matches!(t, Token::Word(w) if w.eq_ignore_ascii_case(k))
}

fn describe(t: &Token) -> String {
    match t {
        Token::Open => "`(`".into(),
        Token::Close => "`)`".into(),
        Token::Op(_) => "a comparison operator".into(),
        Token::Word(w) => format!("`{w}`"),
        Token::Number(n) => format!("`{n}`"),
        Token::Quoted(s) => format!("\"{s}\""),
        Token::End => "the end".into(),
    }
}

impl Parser<'_> {
    fn peek(&self) -> &Spanned {
        &self.tokens[self.pos]
    }

    fn bump(&mut self) -> Spanned {
        let t = self.tokens[self.pos].clone();
        if t.0 != Token::End {
            self.pos += 1;
        }
        t
    }

    fn error<T>(&self, column: usize, message: String) -> Result<T, QueryError> {
        Err(QueryError {
            column,
            message,
            text: self.text.to_string(),
        })
    }

    fn or(&mut self) -> Result<Expr, QueryError> {
        let mut left = self.and()?;
        while keyword(&self.peek().0, "or") {
            self.bump();
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, QueryError> {
        let mut left = self.not()?;
        while keyword(&self.peek().0, "and") {
            self.bump();
            left = Expr::And(Box::new(left), Box::new(self.not()?));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Expr, QueryError> {
        if keyword(&self.peek().0, "not") {
            self.bump();
            return Ok(Expr::Not(Box::new(self.not()?)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Expr, QueryError> {
        match self.bump() {
            (Token::Open, col) => {
                let inner = self.or()?;
                match self.bump() {
                    (Token::Close, _) => Ok(inner),
                    (t, at) => self.error(
                        at,
                        format!(
                            "expected `)` closing the `(` at column {col}, found {}",
                            describe(&t)
                        ),
                    ),
                }
            }
            (Token::Word(w), _) if !is_keyword(&w) => self.comparison(w),
            (t, col) => self.error(
                col,
                format!(
                    "expected a field name, `not` or `(`, found {}",
                    describe(&t)
                ),
            ),
        }
    }

    fn comparison(&mut self, name: String) -> Result<Expr, QueryError> {
        let field = field(&name);
        let op = match self.bump() {
            (Token::Op(op), _) => op,
            (t, at) => {
                return self.error(
                    at,
                    format!(
                        "expected a comparison (=, !=, <, <=, >, >=) after `{name}`, found {}",
                        describe(&t)
                    ),
                );
            }
        };
        let (value, at) = match self.bump() {
            (Token::Number(n), at) => (Literal::Number(n), at),
            (Token::Quoted(s), at) => (Literal::Text(s), at),
            (Token::Word(w), at) if !is_keyword(&w) => (Literal::Text(w), at),
            (t, at) => {
                return self.error(at, format!("expected a value, found {}", describe(&t)));
            }
        };
        if field == Field::Column(Column::Status) {
            self.check_status(&value, at)?;
        }
        Ok(Expr::Cmp(Comparison { field, op, value }))
    }

    fn check_status(&self, value: &Literal, at: usize) -> Result<(), QueryError> {
        let text = match value {
            Literal::Text(s) => s.clone(),
            Literal::Number(n) => n.to_string(),
        };
        match text.parse::<RunStatus>() {
            Ok(_) => Ok(()),
            Err(message) => self.error(at, message),
        }
    }
}

fn is_keyword(w: &str) -> bool {
    ["and", "or", "not"]
        .iter()
        .any(|k| w.eq_ignore_ascii_case(k))
}

fn field(name: &str) -> Field {
    if let Some((_, c)) = COLUMNS.iter().find(|(n, _)| *n == name) {
        return Field::Column(*c);
    }
    if name.contains('/') {
        return Field::Summary(name.to_string());
    }
    Field::Spec(
        name.to_string(),
        name.split('.').map(str::to_string).collect(),
    )
}

impl std::str::FromStr for Query {
    type Err = QueryError;

    fn from_str(text: &str) -> Result<Self, QueryError> {
        let mut p = Parser {
            tokens: lex(text)?,
            pos: 0,
            text,
        };
        let expr = p.or()?;
        match p.bump() {
            (Token::End, _) => Ok(Query { expr }),
            (t, col) => p.error(
                col,
                format!("expected `and`, `or` or the end, found {}", describe(&t)),
            ),
        }
    }
}

/// One run as a query sees it: its row, its summaries, and its spec parsed on first use.
pub struct RunView<'a> {
    run: &'a RunRow,
    summaries: Option<&'a BTreeMap<String, f64>>,
    spec: OnceLock<Option<serde_json::Value>>,
}

impl<'a> RunView<'a> {
    /// `summaries`: the run's summary values, where the query reads any ([`Query::summary_keys`]).
    pub fn new(run: &'a RunRow, summaries: Option<&'a BTreeMap<String, f64>>) -> Self {
        RunView {
            run,
            summaries,
            spec: OnceLock::new(),
        }
    }

    fn column(&self, c: Column) -> Value<'_> {
        let r = self.run;
        let text = |s: &'a str| Value::Text(s.into());
        match c {
            Column::Status => text(r.status.as_str()),
            Column::Experiment => text(&r.experiment),
            Column::Id => text(&r.id),
            Column::Seed => Value::Number(r.seed as f64),
            Column::Attempt => Value::Number(r.attempt as f64),
            Column::Stage => r.stage.as_deref().map_or(Value::Missing, text),
            Column::Host => text(&r.host),
            Column::Device => text(&r.device),
            Column::Worker => text(&r.worker),
            Column::CodeRev => text(&r.code_rev),
            Column::Hash => text(&r.hash),
            Column::Cell => text(&r.cell_label),
            Column::Error => r.error.as_deref().map_or(Value::Missing, text),
        }
    }

    fn spec_field(&self, path: &[String]) -> Value<'_> {
        let spec = self
            .spec
            .get_or_init(|| serde_json::from_str(&self.run.spec_json).ok());
        let Some(mut node) = spec.as_ref() else {
            return Value::Missing;
        };
        for part in path {
            node = match node {
                serde_json::Value::Object(map) => match map.get(part.as_str()) {
                    Some(n) => n,
                    None => return Value::Missing,
                },
                // `stage.<name>.<field>`: the stage of that name.
                serde_json::Value::Array(items) => {
                    let named = items
                        .iter()
                        .find(|s| s.get("name").and_then(|n| n.as_str()) == Some(part));
                    match named.or_else(|| part.parse::<usize>().ok().and_then(|i| items.get(i))) {
                        Some(n) => n,
                        None => return Value::Missing,
                    }
                }
                _ => return Value::Missing,
            };
        }
        json_value(node)
    }

    fn value(&self, f: &Field) -> Value<'_> {
        match f {
            Field::Column(c) => self.column(*c),
            Field::Summary(key) => self
                .summaries
                .and_then(|s| s.get(key))
                .map_or(Value::Missing, |v| Value::Number(*v)),
            // A swept field is in the run's overrides: no need to parse the whole spec.
            Field::Spec(dotted, path) => match self.run.overrides.get(dotted) {
                Some(v) => json_value(v),
                None => self.spec_field(path),
            },
        }
    }
}

fn json_value(v: &serde_json::Value) -> Value<'_> {
    match v {
        serde_json::Value::Number(n) => n.as_f64().map_or(Value::Missing, Value::Number),
        serde_json::Value::String(s) => Value::Text(s.as_str().into()),
        serde_json::Value::Null => Value::Missing,
        other => Value::Text(other.to_string().into()),
    }
}

fn compare(value: &Value, op: Op, literal: &Literal) -> bool {
    use std::cmp::Ordering;
    let ordering: Option<Ordering> = match (value, literal) {
        (Value::Missing, _) => return false,
        (Value::Number(a), Literal::Number(b)) => a.partial_cmp(b),
        (Value::Number(a), Literal::Text(b)) => match b.parse::<f64>() {
            Ok(b) => a.partial_cmp(&b),
            Err(_) => None,
        },
        (Value::Text(a), Literal::Text(b)) => Some(a.as_ref().cmp(b.as_str())),
        (Value::Text(a), Literal::Number(b)) => match a.parse::<f64>() {
            Ok(a) => a.partial_cmp(b),
            Err(_) => None,
        },
    };
    match (ordering, op) {
        (None, Op::Ne) => true,
        (None, _) => false,
        (Some(o), Op::Eq) => o == Ordering::Equal,
        (Some(o), Op::Ne) => o != Ordering::Equal,
        (Some(o), Op::Lt) => o == Ordering::Less,
        (Some(o), Op::Le) => o != Ordering::Greater,
        (Some(o), Op::Gt) => o == Ordering::Greater,
        (Some(o), Op::Ge) => o != Ordering::Less,
    }
}

fn eval(e: &Expr, run: &RunView) -> bool {
    match e {
        Expr::Or(a, b) => eval(a, run) || eval(b, run),
        Expr::And(a, b) => eval(a, run) && eval(b, run),
        Expr::Not(a) => !eval(a, run),
        Expr::Cmp(c) => compare(&run.value(&c.field), c.op, &c.value),
    }
}

fn each_field(e: &Expr, f: &mut dyn FnMut(&Field)) {
    match e {
        Expr::Or(a, b) | Expr::And(a, b) => {
            each_field(a, f);
            each_field(b, f);
        }
        Expr::Not(a) => each_field(a, f),
        Expr::Cmp(c) => f(&c.field),
    }
}

impl Query {
    /// Whether the run matches.
    pub fn matches(&self, run: &RunView) -> bool {
        eval(&self.expr, run)
    }

    /// The summary keys the expression reads (so the caller loads only those).
    pub fn summary_keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        each_field(&self.expr, &mut |f| {
            if let Field::Summary(k) = f
                && !keys.contains(k)
            {
                keys.push(k.clone());
            }
        });
        keys
    }

    /// The runs of `runs` that match, in order; `summaries` by run id.
    pub fn filter(
        &self,
        runs: Vec<RunRow>,
        summaries: &std::collections::HashMap<String, BTreeMap<String, f64>>,
    ) -> Vec<RunRow> {
        runs.into_iter()
            .filter(|r| self.matches(&RunView::new(r, summaries.get(&r.id))))
            .collect()
    }
}

/// Runs (newest first) with their effective status (an expired lease shows as `stale`), of
/// `experiment` and `status` where given, matching `filter`; summaries are read (in one query)
/// only when the filter uses them.
pub fn select_runs(
    registry: &Registry,
    experiment: Option<&str>,
    status: Option<RunStatus>,
    filter: Option<&Query>,
) -> Result<Vec<RunRow>, RegistryError> {
    let t = registry.clock()?;
    let rows: Vec<RunRow> = registry
        .runs(experiment, status)?
        .into_iter()
        .map(|mut r| {
            r.status = r.effective_status(t);
            r
        })
        .collect();
    let Some(q) = filter else {
        return Ok(rows);
    };
    let keys = q.summary_keys();
    let summaries = match keys.is_empty() {
        true => Default::default(),
        false => registry.summaries_by_run(experiment, &keys)?,
    };
    Ok(q.filter(rows, &summaries))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(status: RunStatus, spec: serde_json::Value) -> RunRow {
        RunRow {
            id: "abc-1".into(),
            experiment: "quickstart".into(),
            cell_index: 0,
            cell_label: "beat.dvq_levels=2".into(),
            overrides: serde_json::Value::Null,
            spec_json: spec.to_string(),
            hash: "abc".into(),
            seed: 0,
            status,
            attempt: 1,
            stage: None,
            code_rev: "r".into(),
            code_dirty: false,
            host: "h".into(),
            device: "cpu".into(),
            worker: "w".into(),
            run_dir: String::new(),
            created_at: 0.0,
            started_at: None,
            heartbeat_at: None,
            lease_s: 60.0,
            finished_at: None,
            error: None,
            failures: 0,
            job: None,
        }
    }

    fn matches(q: &str, r: &RunRow, acc: Option<f64>) -> bool {
        let summaries: BTreeMap<String, f64> = acc
            .map(|a| ("eval/accuracy".to_string(), a))
            .into_iter()
            .collect();
        q.parse::<Query>()
            .unwrap()
            .matches(&RunView::new(r, Some(&summaries)))
    }

    #[test]
    fn comparisons_combine_with_precedence_and_parentheses() {
        let spec = serde_json::json!({
            "beat": { "codebook_size": 512, "shared_codebook": false },
            "backbone": { "model": "tiny-qwen2" },
            "stage": [{ "name": "beat", "lr": 0.001 }],
        });
        let finished = run(RunStatus::Finished, spec.clone());
        let failed = run(RunStatus::Failed, spec);
        let q = "beat.codebook_size = 512 and (eval/accuracy > 0.7 or status = failed)";
        assert!(matches(q, &finished, Some(0.8)));
        assert!(!matches(q, &finished, Some(0.6)));
        assert!(matches(q, &failed, None));
        // `and` binds tighter: a or (b and c).
        assert!(matches(
            "status = finished or status = failed and seed = 9",
            &finished,
            None
        ));
        assert!(!matches(
            "(status = finished or status = failed) and seed = 9",
            &finished,
            None
        ));
        assert!(matches("NOT status != finished", &finished, None));
        assert!(matches(
            "backbone.model = tiny-qwen2 and stage.beat.lr <= 1e-3",
            &finished,
            None
        ));
        assert!(matches("beat.shared_codebook = false", &finished, None));
        assert!(matches(
            "experiment >= 'q' and experiment < \"r\"",
            &finished,
            None
        ));
        // A field the run lacks never compares, even with `!=`.
        assert!(!matches("eval/accuracy != 0.5", &finished, None));
        assert!(matches("not eval/accuracy = 0.5", &finished, None));
        assert!(!matches("beat.nope = 1", &finished, None));
        // A swept field is read from the overrides.
        let mut swept = run(RunStatus::Finished, serde_json::json!({}));
        swept.overrides = serde_json::json!({ "beat.codebook_size": 1024 });
        assert!(matches("beat.codebook_size > 512", &swept, None));
        // A number field against a word is never equal.
        assert!(matches("beat.codebook_size != big", &finished, None));
    }

    #[test]
    fn a_parse_error_points_at_its_column() {
        let err = "beat.codebook_size > and x".parse::<Query>().unwrap_err();
        assert_eq!(err.column, 22);
        assert_eq!(
            err.to_string(),
            "expected a value, found `and` at column 22\n  beat.codebook_size > and x\n                       ^"
        );
        let col = |q: &str| q.parse::<Query>().unwrap_err().column;
        assert_eq!(col("(status = failed"), 17);
        assert_eq!(col("status = failed)"), 16);
        assert_eq!(col("status failed"), 8);
        assert_eq!(col("status = finsihed"), 10);
        assert_eq!(col("a = 'open"), 5);
        assert_eq!(col("a = 1 ; b = 2"), 7);
        assert_eq!(col(""), 1);
        assert_eq!(col("not"), 4);
    }
}
