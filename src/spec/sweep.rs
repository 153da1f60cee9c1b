//! `[sweep]`: the grid of cells an experiment runs.
//!
//! Keys are dotted spec paths mapping to lists of values (`beat.codebook_size = [256, 512]`, or
//! the same key quoted). The cells are the product of the axes, in the order the file lists them.
//! `zip = [["a", "b"]]` makes keys vary together, `exclude = [{ a = 1, b = 2 }]` drops the cells
//! matching all given values, and `seeds = [0, 1, 2]` (or `seeds = 3`) repeats every cell with
//! `experiment.seed` set to each seed.

use std::collections::HashMap;

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

    /// The override sets of every cell, in grid order (seeds innermost), made one at a time:
    /// a huge grid costs no memory until its cells are kept.
    pub fn cells(&self) -> Cells<'_> {
        Cells {
            sweep: self,
            kept: Exclusions::new(self),
            digits: vec![0; self.axes.len()],
            combo: None,
            seed: 0,
            done: self.axes.iter().any(|a| a.rows.is_empty()),
        }
    }

    /// How many cells [`Sweep::cells`] makes, counted without making them (exclusions
    /// included); `None` when the count does not fit in 128 bits.
    pub fn count(&self) -> Option<u128> {
        let kept = Exclusions::new(self);
        let free = self
            .axes
            .iter()
            .enumerate()
            .filter(|(a, _)| !kept.constrained.contains(a))
            .try_fold(1u128, |n, (_, axis)| n.checked_mul(axis.rows.len() as u128))?;
        let alive = vec![u64::MAX; kept.words];
        let combos = kept.count_from(self, 0, &alive, &mut HashMap::new())?;
        combos
            .checked_mul(free)?
            .checked_mul(self.seeds.len().max(1) as u128)
    }
}

/// Which exclusion entries each row of each axis satisfies, as bit sets, so that a cell is
/// dropped when one entry is satisfied by its rows on every axis that entry names.
struct Exclusions {
    /// Axes named by at least one exclusion, in axis order.
    constrained: Vec<usize>,
    /// Per constrained axis (same order), per row: bit `e` set when the row satisfies entry
    /// `e` (or entry `e` does not name this axis).
    rows: Vec<Vec<Vec<u64>>>,
    /// Per entry: the position in `constrained` of the last axis it names (`None`: no axis,
    /// so it drops every cell).
    last: Vec<Option<usize>>,
    /// Words per bit set.
    words: usize,
}

impl Exclusions {
    fn new(sweep: &Sweep) -> Self {
        let n = sweep.exclude.len();
        let words = n.div_ceil(64);
        let names = |entry: &[(String, Node)], axis: &Axis| {
            entry.iter().any(|(k, _)| axis.keys.contains(k))
        };
        let constrained: Vec<usize> = (0..sweep.axes.len())
            .filter(|&a| sweep.exclude.iter().any(|e| names(e, &sweep.axes[a])))
            .collect();
        let rows = constrained
            .iter()
            .map(|&a| {
                let axis = &sweep.axes[a];
                axis.rows
                    .iter()
                    .map(|row| {
                        let mut bits = vec![0u64; words];
                        for (e, entry) in sweep.exclude.iter().enumerate() {
                            if row_satisfies(axis, row, entry) {
                                bits[e / 64] |= 1 << (e % 64);
                            }
                        }
                        bits
                    })
                    .collect()
            })
            .collect();
        let last = sweep
            .exclude
            .iter()
            .map(|e| constrained.iter().rposition(|&a| names(e, &sweep.axes[a])))
            .collect();
        Self {
            constrained,
            rows,
            last,
            words,
        }
    }

    /// Whether an entry still alive (satisfied on every constrained axis before `depth`) names
    /// no axis from `depth` on: it is then satisfied, and the cell dropped.
    fn completes(&self, alive: &[u64], depth: usize) -> bool {
        self.last
            .iter()
            .enumerate()
            .any(|(e, last)| alive[e / 64] & (1 << (e % 64)) != 0 && last.is_none_or(|l| l < depth))
    }

    /// Kept combinations of the constrained axes from `depth` on, given the entries alive;
    /// `memo` holds the answers already found, so a count costs at most one visit per
    /// distinct (depth, alive entries), not one per combination.
    fn count_from(
        &self,
        sweep: &Sweep,
        depth: usize,
        alive: &[u64],
        memo: &mut HashMap<(usize, Vec<u64>), u128>,
    ) -> Option<u128> {
        if self.completes(alive, depth) {
            return Some(0);
        }
        if alive.iter().all(|w| *w == 0) || depth == self.constrained.len() {
            // No entry can match any more: every combination from here on is kept.
            return self.constrained[depth..].iter().try_fold(1u128, |n, &a| {
                n.checked_mul(sweep.axes[a].rows.len() as u128)
            });
        }
        if let Some(&n) = memo.get(&(depth, alive.to_vec())) {
            return Some(n);
        }
        let mut total = 0u128;
        for bits in &self.rows[depth] {
            let next: Vec<u64> = alive.iter().zip(bits).map(|(a, b)| a & b).collect();
            total = total.checked_add(self.count_from(sweep, depth + 1, &next, memo)?)?;
        }
        memo.insert((depth, alive.to_vec()), total);
        Some(total)
    }

    /// Whether the cell at `digits` (one row index per axis) is dropped, and if so how far
    /// the grid can skip: `Some(Some(k))` when every cell sharing its rows on axes `0..=k` is
    /// dropped too, `Some(None)` when every cell is.
    fn drops(&self, digits: &[usize]) -> Option<Option<usize>> {
        let mut alive = vec![u64::MAX; self.words];
        for (pos, &a) in self.constrained.iter().enumerate() {
            for (w, b) in alive.iter_mut().zip(&self.rows[pos][digits[a]]) {
                *w &= b;
            }
        }
        let mut skip: Option<Option<usize>> = None;
        for (e, last) in self.last.iter().enumerate() {
            if alive[e / 64] & (1 << (e % 64)) == 0 {
                continue;
            }
            let axis = last.map(|l| self.constrained[l]);
            skip = Some(match (skip, axis) {
                (Some(Some(k)), Some(a)) => Some(k.min(a)),
                (Some(None), _) | (_, None) => None,
                (None, a) => a,
            });
        }
        skip
    }
}

/// Whether a row of an axis has the values an exclusion entry gives for the axis's keys.
fn row_satisfies(axis: &Axis, row: &[Node], entry: &[(String, Node)]) -> bool {
    entry.iter().all(
        |(key, value)| match axis.keys.iter().position(|k| k == key) {
            Some(i) => same_value(&row[i].to_toml(), &value.to_toml()),
            None => true,
        },
    )
}

/// The cells of a sweep, in grid order (seeds innermost); see [`Sweep::cells`].
pub struct Cells<'a> {
    sweep: &'a Sweep,
    kept: Exclusions,
    /// The row of each axis of the next combination to look at.
    digits: Vec<usize>,
    /// The current kept combination, repeated once per seed.
    combo: Option<Vec<(String, Node)>>,
    /// The next seed of `combo`.
    seed: usize,
    done: bool,
}

impl Cells<'_> {
    /// The next kept combination of axis rows, advancing the digits past it; a run of
    /// dropped combinations that share their rows up to some axis is skipped at once.
    fn next_combo(&mut self) -> Option<Vec<(String, Node)>> {
        let last = self.sweep.axes.len().checked_sub(1);
        while !self.done {
            match self.kept.drops(&self.digits) {
                Some(None) => self.done = true,
                Some(Some(k)) => self.advance(Some(k)),
                None => {
                    let mut c = Vec::new();
                    for (axis, &d) in self.sweep.axes.iter().zip(&self.digits) {
                        c.extend(axis.keys.iter().cloned().zip(axis.rows[d].iter().cloned()));
                    }
                    self.advance(last);
                    return Some(c);
                }
            }
        }
        None
    }

    /// Moves to the next row of axis `at` (`None`: there are no axes), the axes after it back
    /// to their first row; `done` after the last combination.
    fn advance(&mut self, at: Option<usize>) {
        let Some(at) = at else {
            self.done = true;
            return;
        };
        for d in &mut self.digits[at + 1..] {
            *d = 0;
        }
        for (axis, d) in self.sweep.axes[..=at]
            .iter()
            .zip(self.digits[..=at].iter_mut())
            .rev()
        {
            *d += 1;
            if *d < axis.rows.len() {
                return;
            }
            *d = 0;
        }
        self.done = true;
    }
}

impl Iterator for Cells<'_> {
    type Item = Vec<(String, Node)>;

    fn next(&mut self) -> Option<Self::Item> {
        let seeds = &self.sweep.seeds;
        if seeds.is_empty() {
            return self.next_combo();
        }
        if self.combo.is_none() || self.seed == seeds.len() {
            self.combo = Some(self.next_combo()?);
            self.seed = 0;
        }
        let mut cell = self.combo.clone()?;
        cell.push((
            "experiment.seed".to_string(),
            Node::new(
                Value::Int(seeds[self.seed] as i64),
                super::tree::Origin::Default,
            ),
        ));
        self.seed += 1;
        Some(cell)
    }
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
    let Some(groups) = zip_groups(zip, diags) else {
        return axes;
    };
    let mut axes: Vec<Option<Axis>> = axes.into_iter().map(Some).collect();
    let mut zipped: Vec<(usize, Axis)> = Vec::new();
    for (keys, node) in groups {
        if let Some(members) = zip_members(&keys, node, &axes, pinned, diags) {
            let first = members[0];
            let parts: Vec<Axis> = members.iter().map(|&p| axes[p].take().unwrap()).collect();
            let rows = (0..parts[0].rows.len())
                .map(|i| parts.iter().map(|a| a.rows[i][0].clone()).collect())
                .collect();
            zipped.push((first, Axis { keys, rows }));
        }
    }
    for (pos, axis) in zipped {
        axes[pos] = Some(axis);
    }
    axes.into_iter().flatten().collect()
}

/// `sweep.zip`'s groups of keys, each with its node; `None` (and a diagnostic) unless it is a
/// list. A group that is not a list of strings gets a diagnostic and is left out.
fn zip_groups<'a>(
    zip: &'a Node,
    diags: &mut Vec<Diagnostic>,
) -> Option<Vec<(Vec<String>, &'a Node)>> {
    let Value::Array(groups) = &zip.value else {
        diags.push(Diagnostic::new(
            &zip.origin,
            false,
            "sweep.zip",
            "expected a list of key groups, e.g. zip = [[\"a\", \"b\"]]",
        ));
        return None;
    };
    let group = |g: &'a Node| -> Option<(Vec<String>, &'a Node)> {
        let Value::Array(keys) = &g.value else {
            return None;
        };
        let keys: Option<Vec<String>> = keys
            .iter()
            .map(|k| k.value.as_str().map(str::to_string))
            .collect();
        Some((keys?, g))
    };
    let mut out = Vec::new();
    for g in groups {
        match group(g) {
            Some(found) => out.push(found),
            None => diags.push(Diagnostic::new(
                &g.origin,
                false,
                "sweep.zip",
                "expected a list of sweep keys, e.g. [\"beat.codebook_size\", \"beat.width\"]",
            )),
        }
    }
    Some(out)
}

/// The positions in `axes` of a zip group's keys, when the group is valid: at least two keys,
/// each a single-key sweep axis not yet zipped (pinned keys are skipped), all of one length.
fn zip_members(
    keys: &[String],
    node: &Node,
    axes: &[Option<Axis>],
    pinned: &[String],
    diags: &mut Vec<Diagnostic>,
) -> Option<Vec<usize>> {
    let mut diag = |msg: String| diags.push(Diagnostic::new(&node.origin, false, "sweep.zip", msg));
    if keys.len() < 2 {
        diag("a zip group needs at least two keys".to_string());
        return None;
    }
    let mut members = Vec::new();
    for key in keys.iter().filter(|k| !pinned.contains(k)) {
        match (axes.iter()).position(|a| a.as_ref().is_some_and(|a| a.keys == [key.clone()])) {
            Some(pos) => members.push(pos),
            None => diag(format!(
                "`{key}` is not a sweep key (or is already in another zip group)"
            )),
        }
    }
    if members.len() != keys.len() {
        return None;
    }
    let lens: Vec<usize> = (members.iter())
        .map(|&p| axes[p].as_ref().unwrap().rows.len())
        .collect();
    if lens.iter().any(|&l| l != lens[0]) {
        let each: Vec<String> = (keys.iter().zip(&lens))
            .map(|(k, l)| format!("`{k}` has {l}"))
            .collect();
        diag(format!(
            "zipped keys need lists of equal length: {}",
            each.join(", ")
        ));
        return None;
    }
    Some(members)
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

#[cfg(test)]
mod tests {
    //! The streaming cells and the count against a plain expansion of random small sweeps.

    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::spec::tree::Origin;

    fn int(v: i64) -> Node {
        Node::new(Value::Int(v), Origin::Default)
    }

    /// The grid as the former implementation made it: full product, then exclusions, then seeds.
    fn expand(sweep: &Sweep) -> Vec<Vec<(String, Node)>> {
        let mut cells: Vec<Vec<(String, Node)>> = vec![Vec::new()];
        for axis in &sweep.axes {
            let mut next = Vec::new();
            for cell in &cells {
                for row in &axis.rows {
                    let mut c = cell.clone();
                    c.extend(axis.keys.iter().cloned().zip(row.iter().cloned()));
                    next.push(c);
                }
            }
            cells = next;
        }
        cells.retain(|cell| {
            !sweep.exclude.iter().any(|ex| {
                ex.iter().all(|(k, v)| {
                    cell.iter()
                        .any(|(ck, cv)| ck == k && same_value(&cv.to_toml(), &v.to_toml()))
                })
            })
        });
        if sweep.seeds.is_empty() {
            return cells;
        }
        let mut out = Vec::new();
        for cell in cells {
            for &seed in &sweep.seeds {
                let mut c = cell.clone();
                c.push(("experiment.seed".into(), int(seed as i64)));
                out.push(c);
            }
        }
        out
    }

    fn random_sweep(rng: &mut ChaCha8Rng) -> Sweep {
        let mut key = 0;
        let axes: Vec<Axis> = (0..rng.random_range(0..5))
            .map(|_| {
                let width = rng.random_range(1..3);
                let keys: Vec<String> = (0..width)
                    .map(|_| {
                        key += 1;
                        format!("k{key}")
                    })
                    .collect();
                let rows = (0..rng.random_range(1..5))
                    .map(|_| (0..width).map(|_| int(rng.random_range(0..3))).collect())
                    .collect();
                Axis { keys, rows }
            })
            .collect();
        let exclude = (0..rng.random_range(0..5))
            .map(|_| {
                (0..rng.random_range(0..4))
                    .filter_map(|_| {
                        let axis = &axes.get(rng.random_range(0..axes.len().max(1)))?;
                        let k = &axis.keys[rng.random_range(0..axis.keys.len())];
                        Some((k.clone(), int(rng.random_range(0..3))))
                    })
                    .collect()
            })
            .collect();
        let seeds = (0..rng.random_range(0..3)).collect();
        Sweep {
            axes,
            exclude,
            seeds,
            pinned: Vec::new(),
        }
    }

    fn shown(cells: &[Vec<(String, Node)>]) -> Vec<String> {
        cells
            .iter()
            .map(|c| {
                c.iter()
                    .map(|(k, v)| format!("{k}={}", v.to_toml()))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect()
    }

    #[test]
    fn streamed_cells_and_count_match_the_plain_expansion() {
        let mut rng = ChaCha8Rng::seed_from_u64(14);
        let mut dropped = 0;
        for _ in 0..3000 {
            let sweep = random_sweep(&mut rng);
            let want = expand(&sweep);
            let got: Vec<_> = sweep.cells().collect();
            assert_eq!(shown(&got), shown(&want), "{sweep:?}");
            assert_eq!(sweep.count(), Some(want.len() as u128), "{sweep:?}");
            let full: usize = sweep.axes.iter().map(|a| a.rows.len()).product::<usize>()
                * sweep.seeds.len().max(1);
            dropped += full - want.len();
        }
        // The random sweeps exercise exclusions, not only plain products.
        assert!(dropped > 1000, "{dropped}");
    }

    #[test]
    fn a_huge_grid_is_counted_and_walked_without_expanding_it() {
        // 12 axes of 10 values: 10^12 cells, one excluded value on the first axis.
        let axes: Vec<Axis> = (0..12)
            .map(|i| Axis {
                keys: vec![format!("k{i}")],
                rows: (0..10).map(|v| vec![int(v)]).collect(),
            })
            .collect();
        let sweep = Sweep {
            exclude: vec![vec![("k0".into(), int(0)), ("k11".into(), int(3))]],
            axes,
            seeds: vec![0, 1],
            pinned: Vec::new(),
        };
        assert_eq!(
            sweep.count(),
            Some(2 * (1_000_000_000_000 - 10_000_000_000))
        );
        let first: Vec<_> = sweep.cells().take(3).collect();
        assert_eq!(first.len(), 3);
        // An exclusion that drops every cell of a 10^12 grid but one is walked in skips.
        let mut sweep = sweep;
        sweep.exclude = (1..10)
            .map(|v| vec![("k0".to_string(), int(v))])
            .chain((1..10).map(|v| vec![("k1".to_string(), int(v))]))
            .collect();
        sweep.axes.truncate(2);
        sweep.axes.extend((2..12).map(|i| Axis {
            keys: vec![format!("k{i}")],
            rows: vec![vec![int(0)]],
        }));
        sweep.axes[11].rows = (0..100_000).map(|v| vec![int(v)]).collect();
        assert_eq!(sweep.count(), Some(200_000));
        assert_eq!(sweep.cells().count(), 200_000);
    }
}
