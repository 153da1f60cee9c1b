//! The spec reference in Markdown, generated from the schema (`beatlab reference`).
//!
//! The README embeds this text between markers and a test checks that the two are equal, so the
//! documented fields, types and defaults are always the ones the code accepts.

use super::schema::{SectionSchema, Ty, fmt_num};
use super::{Spec, StageKind, StageSpec};

/// The whole reference.
pub fn markdown() -> String {
    let mut out = String::new();
    let top = Spec::schema();
    for field in &top.fields {
        match &field.ty {
            Ty::Section(section) => section_markdown(&section(), &mut out),
            Ty::List(inner) if matches!(**inner, Ty::Section(_)) => {
                if let Ty::Section(section) = **inner {
                    section_markdown(&section(), &mut out);
                }
                if field.name == "stage" {
                    stage_kinds_markdown(&mut out);
                }
            }
            _ => {}
        }
    }
    out.push_str(SWEEP_DOC);
    out
}

const SWEEP_DOC: &str = "### `[sweep]`

The grid of cells. Each key is a dotted field path (`beat.codebook_size`, or
`stage.<name>.<field>` for a stage) mapping to a non-empty list of values; the cells are the
product of the lists, in the order the file gives them. Reserved keys:

| key | type | meaning |
|---|---|---|
| `zip` | [[string]] | groups of keys that vary together (their lists have equal length) |
| `exclude` | [table] | cells to drop: each table maps keys to values, a cell matching all of them is dropped |
| `seeds` | int or [int] | repeat every cell with `experiment.seed` set to each seed (`3` = seed, seed+1, seed+2) |

A key fixed by `--set` or a `BEATLAB_*` variable is pinned: its axis is dropped.
Overrides from the environment: `BEATLAB_<SECTION>__<FIELD>=value` (double underscore between
path parts, e.g. `BEATLAB_STAGE__BEAT__EPOCHS=3`).
";

fn section_markdown(section: &SectionSchema, out: &mut String) {
    let header = match section.name {
        "stage" => "[[stage]]".to_string(),
        "paper.cell" => "[[paper.cell]]".to_string(),
        name => format!("[{name}]"),
    };
    out.push_str(&format!("### `{header}`\n\n{}\n\n", section.doc));
    out.push_str("| field | type | default | meaning |\n|---|---|---|---|\n");
    let mut nested = Vec::new();
    for f in &section.fields {
        if let Ty::Section(inner) = &f.ty {
            nested.push(inner());
            continue;
        }
        let default = if f.required {
            "(required)".to_string()
        } else if section.name == "stage" && kind_dependent(f.name) {
            format!("{} (by kind)", show_default(&f.default))
        } else {
            show_default(&f.default)
        };
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            f.name,
            f.ty.short(),
            default,
            f.doc.replace('|', "\\|")
        ));
    }
    out.push('\n');
    for n in nested {
        section_markdown(&n, out);
    }
}

fn kind_dependent(field: &str) -> bool {
    StageKind::ALL.iter().any(|k| {
        StageSpec::kind_defaults(*k)
            .iter()
            .any(|(f, _)| *f == field)
    })
}

fn stage_kinds_markdown(out: &mut String) {
    out.push_str("Stage defaults by `kind` (a stage's own fields override them):\n\n");
    out.push_str("| kind | defaults |\n|---|---|\n");
    for &kind in StageKind::ALL {
        let items: Vec<String> = StageSpec::kind_defaults(kind)
            .iter()
            .map(|(k, v)| format!("`{k} = {}`", show_default(v)))
            .collect();
        out.push_str(&format!("| `{}` | {} |\n", kind.as_str(), items.join(", ")));
    }
    out.push_str(&format!(
        "\nParts a stage can train (`train`): {}.\n\n",
        super::schema::quote_list(&beatlab_mm::Part::spec_names())
    ));
}

fn show_default(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => format!("`\"{s}\"`"),
        toml::Value::Float(f) => format!("`{}`", fmt_num(*f)),
        toml::Value::Array(a) if a.is_empty() => "`[]`".into(),
        toml::Value::Table(t) if t.is_empty() => "`{}`".into(),
        other => format!("`{other}`"),
    }
}
