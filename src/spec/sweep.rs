//! `[sweep]`: the grid of cells an experiment runs.
//!
//! Keys are dotted spec paths mapping to lists of values (`beat.codebook_size = [256, 512]`, or
//! the same key quoted). The cells are the product of the axes, in the order the file lists them.
//! `zip = [["a", "b"]]` makes keys vary together, `exclude = [{ a = 1, b = 2 }]` drops the cells
//! matching all given values, and `seeds = [0, 1, 2]` (or `seeds = 3`) repeats every cell with
//! `experiment.seed` set to each seed.

use super::diag::{Diagnostic, did_you_mean};
use super::tree::{Node, Value, flatten};
use super::validate::{check_value, show};
use super::{Spec, all_field_paths, field_type};

/// One dimension of the grid.
#[derive(Clone, Debug)]
pub struct Axis {
    /// One key, or several that vary together (`zip`).
    pub keys: Vec<String>,
    /// One row per position on the axis; each row holds one value per key.
    pub rows: Vec<Vec<Node>>,
}

/// A parsed, validated `[sweep]`.
#[derive(Clone, Debug, Default)]
pub struct Sweep {
    pub axes: Vec<Axis>,
    /// Each entry: key -> value; a cell matching all of an entry's values is dropped.
    pub exclude: Vec<Vec<(String, Node)>>,
    /// Seed repeats (empty = the spec's own seed only).
    pub seeds: Vec<u64>,
    /// Axes removed because `--set` or the environment fixed their key.
    pub pinned: Vec<String>,
}

impl Sweep {
    /// All swept keys, in axis order.
    pub fn keys(&self) -> Vec<&str> {
        self.axes
            .iter()
            .flat_map(|a| a.keys.iter().map(String::as_str))
            .collect()
    }

    /// The override sets of every cell, in grid order (seeds innermost).
    pub fn cells(&self) -> Vec<Vec<(String, Node)>> {
        let mut cells: Vec<Vec<(String, Node)>> = vec![Vec::new()];
        for axis in &self.axes {
            let mut next = Vec::with_capacity(cells.len() * axis.rows.len());
            for cell in &cells {
                for row in &axis.rows {
                    let mut c = cell.clone();
                    c.extend(axis.keys.iter().cloned().zip(row.iter().cloned()));
                    next.push(c);
                }
            }
            cells = next;
        }
        cells.retain(|cell| !self.exclude.iter().any(|ex| matches_all(cell, ex)));
        if self.seeds.is_empty() {
            return cells;
        }
        let mut out = Vec::with_capacity(cells.len() * self.seeds.len());
        for cell in cells {
            for &seed in &self.seeds {
                let mut c = cell.clone();
                c.push((
                    "experiment.seed".to_string(),
                    Node::new(Value::Int(seed as i64), super::tree::Origin::Default),
                ));
                out.push(c);
            }
        }
        out
    }
}

fn matches_all(cell: &[(String, Node)], exclusion: &[(String, Node)]) -> bool {
    exclusion.iter().all(|(k, v)| {
        cell.iter()
            .any(|(ck, cv)| ck == k && same_value(&cv.to_toml(), &v.to_toml()))
    })
}

/// Value equality that treats `512` and `512.0` as the same number.
pub fn same_value(a: &toml::Value, b: &toml::Value) -> bool {
    match (a, b) {
        (toml::Value::Integer(x), toml::Value::Float(y))
        | (toml::Value::Float(y), toml::Value::Integer(x)) => (*x as f64) == *y,
        _ => a == b,
    }
}

/// Parses and validates `[sweep]` against the (merged, typed) spec. Keys set by `--set` or the
/// environment are pinned: their axis is dropped and the override wins.
pub fn parse(
    node: Option<&Node>,
    spec: &Spec,
    pinned_keys: &[String],
    diags: &mut Vec<Diagnostic>,
) -> Sweep {
    let mut sweep = Sweep::default();
    let Some(node) = node else {
        return sweep;
    };
    let Value::Table(table) = &node.value else {
        diags.push(Diagnostic::new(
            &node.origin,
            false,
            "sweep",
            format!("expected a table, found {}", node.value.type_name()),
        ));
        return sweep;
    };

    let mut axes: Vec<Axis> = Vec::new();
    let mut zip_node = None;
    let mut exclude_node = None;
    for (key, value) in table {
        match key.as_str() {
            "zip" => zip_node = Some(value),
            "exclude" => exclude_node = Some(value),
            "seeds" => sweep.seeds = parse_seeds(value, spec.experiment.seed, diags),
            _ => {
                let entries = match &value.value {
                    Value::Table(inner) => flatten(inner)
                        .into_iter()
                        .map(|(k, n)| (format!("{key}.{k}"), n))
                        .collect(),
                    _ => vec![(key.clone(), value)],
                };
                for (path, values) in entries {
                    if let Some(axis) = parse_axis(&path, values, spec, diags) {
                        if pinned_keys.contains(&path) {
                            sweep.pinned.push(path);
                        } else {
                            axes.push(axis);
                        }
                    }
                }
            }
        }
    }

    if let Some(zip) = zip_node {
        axes = apply_zip(axes, zip, &sweep.pinned, diags);
    }
    sweep.axes = axes;
    if let Some(ex) = exclude_node {
        sweep.exclude = parse_exclude(ex, &sweep, spec, diags);
    }
    sweep
}

fn parse_axis(path: &str, values: &Node, spec: &Spec, diags: &mut Vec<Diagnostic>) -> Option<Axis> {
    let sweep_path = format!("sweep.{path}");
    let Some(ty) = field_type(spec, path) else {
        let paths = all_field_paths(spec);
        let mut d = Diagnostic::new(
            &values.origin,
            true,
            &sweep_path,
            format!("unknown sweep key `{path}`: not a spec field"),
        );
        if let Some(h) = did_you_mean(path, paths.iter().map(String::as_str)) {
            d = d.with_help(h);
        }
        diags.push(d);
        return None;
    };
    let Value::Array(items) = &values.value else {
        diags.push(Diagnostic::new(
            &values.origin,
            false,
            &sweep_path,
            format!(
                "expected a list of values to sweep, found {} {}",
                values.value.type_name(),
                show(values)
            ),
        ));
        return None;
    };
    if items.is_empty() {
        diags.push(Diagnostic::new(
            &values.origin,
            false,
            &sweep_path,
            "empty sweep list: give at least one value",
        ));
        return None;
    }
    let mut rows = Vec::new();
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let mut item = item.clone();
        ok &= check_value(&mut item, &ty, &format!("{sweep_path}[{i}]"), diags);
        rows.push(vec![item]);
    }
    ok.then(|| Axis {
        keys: vec![path.to_string()],
        rows,
    })
}

fn parse_seeds(node: &Node, base: u64, diags: &mut Vec<Diagnostic>) -> Vec<u64> {
    let bad = |diags: &mut Vec<Diagnostic>, node: &Node| {
        diags.push(Diagnostic::new(
            &node.origin,
            false,
            "sweep.seeds",
            format!(
                "expected a count (`seeds = 3`) or a non-empty list of seeds (`seeds = [0, 1, 2]`), found {} {}",
                node.value.type_name(),
                show(node)
            ),
        ));
        Vec::new()
    };
    match &node.value {
        Value::Int(n) if *n >= 1 && *n <= 10_000 => (0..*n as u64).map(|i| base + i).collect(),
        Value::Array(items) if !items.is_empty() => {
            let mut seeds = Vec::new();
            for item in items {
                match item.value {
                    Value::Int(s) if (0..=u32::MAX as i64).contains(&s) => seeds.push(s as u64),
                    _ => return bad(diags, item),
                }
            }
            seeds
        }
        _ => bad(diags, node),
    }
}

fn apply_zip(
    axes: Vec<Axis>,
    zip: &Node,
    pinned: &[String],
    diags: &mut Vec<Diagnostic>,
) -> Vec<Axis> {
    let groups: Vec<(Vec<String>, &Node)> = match &zip.value {
        Value::Array(groups) => groups
            .iter()
            .filter_map(|g| match &g.value {
                Value::Array(keys) if keys.iter().all(|k| k.value.as_str().is_some()) => Some((
                    keys.iter()
                        .map(|k| k.value.as_str().unwrap().to_string())
                        .collect(),
                    g,
                )),
                _ => {
                    diags.push(Diagnostic::new(
                        &g.origin,
                        false,
                        "sweep.zip",
                        "expected a list of sweep keys, e.g. [\"beat.codebook_size\", \"beat.width\"]",
                    ));
                    None
                }
            })
            .collect(),
        _ => {
            diags.push(Diagnostic::new(
                &zip.origin,
                false,
                "sweep.zip",
                "expected a list of key groups, e.g. zip = [[\"a\", \"b\"]]",
            ));
            return axes;
        }
    };

    let mut axes: Vec<Option<Axis>> = axes.into_iter().map(Some).collect();
    let mut zipped: Vec<(usize, Axis)> = Vec::new();
    for (keys, node) in groups {
        if keys.len() < 2 {
            diags.push(Diagnostic::new(
                &node.origin,
                false,
                "sweep.zip",
                "a zip group needs at least two keys",
            ));
            continue;
        }
        let mut members = Vec::new();
        for key in &keys {
            if pinned.contains(key) {
                continue;
            }
            match axes
                .iter()
                .position(|a| a.as_ref().is_some_and(|a| a.keys == [key.clone()]))
            {
                Some(pos) => members.push(pos),
                None => diags.push(Diagnostic::new(
                    &node.origin,
                    false,
                    "sweep.zip",
                    format!("`{key}` is not a sweep key (or is already in another zip group)"),
                )),
            }
        }
        if members.len() != keys.len() {
            continue;
        }
        let lens: Vec<usize> = members
            .iter()
            .map(|&p| axes[p].as_ref().unwrap().rows.len())
            .collect();
        if lens.iter().any(|&l| l != lens[0]) {
            diags.push(Diagnostic::new(
                &node.origin,
                false,
                "sweep.zip",
                format!(
                    "zipped keys need lists of equal length: {}",
                    keys.iter()
                        .zip(&lens)
                        .map(|(k, l)| format!("`{k}` has {l}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
            continue;
        }
        let first = members[0];
        let parts: Vec<Axis> = members.iter().map(|&p| axes[p].take().unwrap()).collect();
        let rows = (0..lens[0])
            .map(|i| parts.iter().map(|a| a.rows[i][0].clone()).collect())
            .collect();
        zipped.push((first, Axis { keys, rows }));
    }
    for (pos, axis) in zipped {
        axes[pos] = Some(axis);
    }
    axes.into_iter().flatten().collect()
}

fn parse_exclude(
    node: &Node,
    sweep: &Sweep,
    spec: &Spec,
    diags: &mut Vec<Diagnostic>,
) -> Vec<Vec<(String, Node)>> {
    let Value::Array(entries) = &node.value else {
        diags.push(Diagnostic::new(
            &node.origin,
            false,
            "sweep.exclude",
            "expected a list of tables, e.g. exclude = [{ \"beat.dvq_levels\" = 1 }]",
        ));
        return Vec::new();
    };
    let keys = sweep.keys();
    let mut out = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let Value::Table(t) = &entry.value else {
            diags.push(Diagnostic::new(
                &entry.origin,
                false,
                format!("sweep.exclude[{i}]"),
                format!(
                    "expected a table of key = value, found {}",
                    entry.value.type_name()
                ),
            ));
            continue;
        };
        let mut conds = Vec::new();
        let mut void = false;
        for (key, value) in flatten(t) {
            if sweep.pinned.contains(&key) {
                // A pinned key has one value: the exclusion applies only if it names that value.
                let pinned = super::get_field(spec, &key);
                void |= !pinned.is_some_and(|p| same_value(&p, &value.to_toml()));
                continue;
            }
            if !keys.contains(&key.as_str()) {
                let mut d = Diagnostic::new(
                    &value.origin,
                    true,
                    format!("sweep.exclude[{i}]"),
                    format!("`{key}` is not a sweep key"),
                );
                if let Some(h) = did_you_mean(&key, keys.iter().copied()) {
                    d = d.with_help(h);
                }
                diags.push(d);
                continue;
            }
            let mut v = value.clone();
            if let Some(ty) = field_type(spec, &key)
                && !check_value(&mut v, &ty, &format!("sweep.exclude[{i}].{key}"), diags)
            {
                continue;
            }
            conds.push((key, v));
        }
        if !void {
            out.push(conds);
        }
    }
    out
}
