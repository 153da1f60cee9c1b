//! A plan's cells handed over a chunk at a time ([`PlanCells`]): by a [`Plan`] that holds them
//! all, or made on demand from the sweep by a [`LazyPlan`], so that a command over a huge grid
//! holds the cells in flight (each a resolved spec and its canonical JSON, kilobytes), not the
//! grid.

use std::borrow::Cow;
use std::path::Path;

use super::{Cell, Loaded, Plan, Spec, SpecError};

/// Cells the commands make, check, offer to the registry or look up at a time. Small enough
/// that a PostgreSQL claim over one chunk takes few advisory locks (each is held to the end of
/// its transaction), large enough that a pass over the grid costs few transactions.
pub const CHUNK: usize = 256;

/// What the commands that run or tabulate a plan need of it: what its cells share, and the
/// cells in plan order, a chunk at a time.
pub trait PlanCells: Sync {
    /// `experiment.name`.
    fn experiment(&self) -> &str;
    /// `experiment.description`.
    fn description(&self) -> &str;
    /// The spec file the user named.
    fn path(&self) -> &Path;
    /// The spec before the sweep (tables, paper values).
    fn base(&self) -> &Spec;
    /// Sweep keys in axis order.
    fn sweep_keys(&self) -> &[String];
    /// How many cells the plan has.
    fn count(&self) -> usize;
    /// The cells in plan order, at most `size` (at least 1) at a time.
    fn chunks(&self, size: usize) -> Box<dyn Iterator<Item = Cow<'_, [Cell]>> + '_>;
    /// The cells in plan order, one at a time.
    fn cells(&self) -> Box<dyn Iterator<Item = Cow<'_, Cell>> + '_>;
}

impl PlanCells for Plan {
    fn experiment(&self) -> &str {
        &self.experiment
    }

    fn description(&self) -> &str {
        &self.description
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn base(&self) -> &Spec {
        &self.base
    }

    fn sweep_keys(&self) -> &[String] {
        &self.sweep_keys
    }

    fn count(&self) -> usize {
        self.cells.len()
    }

    fn chunks(&self, size: usize) -> Box<dyn Iterator<Item = Cow<'_, [Cell]>> + '_> {
        Box::new(self.cells.chunks(size.max(1)).map(Cow::Borrowed))
    }

    fn cells(&self) -> Box<dyn Iterator<Item = Cow<'_, Cell>> + '_> {
        Box::new(self.cells.iter().map(Cow::Borrowed))
    }
}

/// A plan whose cells were all checked once, when it was made, and are made again from the
/// sweep each time they are asked for: a pass over the grid holds one chunk of cells.
pub struct LazyPlan<'a> {
    loaded: &'a Loaded,
    sweep_keys: Vec<String>,
    count: usize,
}

impl Loaded {
    /// Checks every cell as [`Loaded::plan_within`] does (the same errors, the same cap),
    /// keeping none of them: the plan makes them again, a chunk at a time, when asked.
    pub fn lazy_plan(&self, max_cells: u64) -> Result<LazyPlan<'_>, SpecError> {
        let mut count = 0;
        self.each_cell(max_cells, |_| count += 1)?;
        Ok(LazyPlan {
            loaded: self,
            sweep_keys: self.sweep.keys().into_iter().map(str::to_string).collect(),
            count,
        })
    }
}

impl PlanCells for LazyPlan<'_> {
    fn experiment(&self) -> &str {
        &self.loaded.spec.experiment.name
    }

    fn description(&self) -> &str {
        &self.loaded.spec.experiment.description
    }

    fn path(&self) -> &Path {
        &self.loaded.path
    }

    fn base(&self) -> &Spec {
        &self.loaded.spec
    }

    fn sweep_keys(&self) -> &[String] {
        &self.sweep_keys
    }

    fn count(&self) -> usize {
        self.count
    }

    fn chunks(&self, size: usize) -> Box<dyn Iterator<Item = Cow<'_, [Cell]>> + '_> {
        let mut cells = self.made();
        let size = size.max(1);
        Box::new(std::iter::from_fn(move || {
            let chunk: Vec<Cell> = cells.by_ref().take(size).collect();
            (!chunk.is_empty()).then_some(Cow::Owned(chunk))
        }))
    }

    fn cells(&self) -> Box<dyn Iterator<Item = Cow<'_, Cell>> + '_> {
        Box::new(self.made().map(Cow::Owned))
    }
}

impl LazyPlan<'_> {
    /// The cells made again from the sweep, one at a time.
    fn made(&self) -> impl Iterator<Item = Cell> + '_ {
        let loaded = self.loaded;
        // The sweep was accepted when the plan was made, so no cell has problems now.
        loaded
            .sweep
            .cells()
            .enumerate()
            .map(move |(index, overrides)| loaded.make_cell(index, &overrides).0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Overrides, load_str};

    const SPEC: &str = r#"
[experiment]
name = "lazy"
[beat]
codebook_size = 8
[sweep]
"beat.codebook_size" = [8, 16, 32]
"beat.dvq_levels" = [1, 2]
exclude = [{ "beat.codebook_size" = 16, "beat.dvq_levels" = 2 }]
seeds = [0, 1, 2]
"#;

    #[test]
    fn lazy_chunks_are_the_planned_cells_in_order() {
        let loaded = load_str("lazy.toml", SPEC, &Overrides::default()).unwrap();
        let plan = loaded.plan().unwrap();
        let lazy = loaded.lazy_plan(1000).unwrap();
        assert_eq!(lazy.count(), plan.cells.len());
        assert_eq!(plan.cells.len(), 15);
        for size in [1, 4, 15, 100] {
            let chunks: Vec<_> = lazy.chunks(size).collect();
            assert!(chunks.iter().all(|c| !c.is_empty() && c.len() <= size));
            let got: Vec<(usize, String, String)> = chunks
                .iter()
                .flat_map(|c| c.iter())
                .map(|c| (c.index, c.hash.clone(), c.label()))
                .collect();
            let want: Vec<(usize, String, String)> = plan
                .cells
                .iter()
                .map(|c| (c.index, c.hash.clone(), c.label()))
                .collect();
            assert_eq!(got, want, "chunks of {size}");
        }
        let one_by_one: Vec<String> = lazy.cells().map(|c| c.hash.clone()).collect();
        let planned: Vec<String> = plan.cells.iter().map(|c| c.hash.clone()).collect();
        assert_eq!(one_by_one, planned);
        assert_eq!(lazy.sweep_keys(), plan.sweep_keys.as_slice());
        assert_eq!(lazy.experiment(), "lazy");
    }

    #[test]
    fn a_lazy_plan_refuses_what_plan_refuses() {
        let loaded = load_str("lazy.toml", SPEC, &Overrides::default()).unwrap();
        let over = loaded.lazy_plan(14).err().expect("15 cells > 14");
        assert!(
            over.to_string().contains("the sweep has 15 cells"),
            "{over}"
        );
    }
}
