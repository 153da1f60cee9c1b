//! `[table] metrics` checked against what the spec's stages record: a metric no stage of any
//! cell can produce would be an empty column in every table, so it is a spec error, with the
//! nearest key that exists as a suggestion.

use std::collections::BTreeSet;

use super::Spec;
use super::diag::{Diagnostic, did_you_mean};
use super::tree::{Node, Value, lookup};
use crate::stages::catalog;

/// The metrics the cells of a plan record, gathered one cell at a time.
pub struct KnownMetrics {
    /// Empty when the spec's table names no metric (nothing to check).
    known: BTreeSet<String>,
    wanted: bool,
}

impl KnownMetrics {
    /// Starts with what `base` records.
    pub fn new(base: &Spec) -> Self {
        let wanted = !base.table.metrics.is_empty();
        let known = if wanted {
            catalog::table_metrics(base).into_iter().collect()
        } else {
            BTreeSet::new()
        };
        Self { known, wanted }
    }

    /// Adds what one cell records.
    pub fn add(&mut self, cell: &Spec) {
        if self.wanted {
            self.known.extend(catalog::table_metrics(cell));
        }
    }

    /// One diagnostic per `[table] metrics` entry of `base` that no cell records.
    pub fn check(&self, base: &Spec, tree: &Node) -> Vec<Diagnostic> {
        check_table_metrics(base, &self.known, tree)
    }
}

/// One diagnostic per table metric that is not in `known` (what the cells record).
fn check_table_metrics(base: &Spec, known: &BTreeSet<String>, tree: &Node) -> Vec<Diagnostic> {
    if base.table.metrics.is_empty() {
        return Vec::new();
    }
    let entries = lookup(tree, "table.metrics").map(|n| match &n.value {
        Value::Array(items) => items.as_slice(),
        _ => &[],
    });
    base.table
        .metrics
        .iter()
        .enumerate()
        .filter(|(_, metric)| !known.contains(metric.as_str()))
        .map(|(i, metric)| {
            let origin = entries
                .and_then(|items| items.get(i))
                .map(|n| &n.origin)
                .unwrap_or(&tree.origin);
            let message = match metric.split_once('/') {
                Some((stage, _)) if !base.stage.iter().any(|s| s.name == stage) => format!(
                    "`{metric}`: no stage is named `{stage}` (a table metric is `<stage>/<key>`)"
                ),
                _ => format!("`{metric}`: no stage of this spec records this metric"),
            };
            let d = Diagnostic::new(origin, false, format!("table.metrics[{i}]"), message);
            match did_you_mean(metric, known.iter().map(String::as_str)) {
                Some(help) => d.with_help(help),
                None => d,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::spec::{Overrides, load_str};

    fn plan_errors(table_metrics: &str, sweep: &str) -> Option<String> {
        let text = format!(
            "[experiment]\nname = \"x\"\n[beat]\ndvq_levels = 1\n[[stage]]\nname = \"beat\"\nkind = \"beat\"\n\
             [[stage]]\nname = \"eval\"\nkind = \"eval\"\ntasks = [\"closed_qa\"]\n\
             [sweep]\n{sweep}\n[table]\nmetrics = {table_metrics}\n"
        );
        load_str("t.toml", &text, &Overrides::default())
            .and_then(|l| l.plan())
            .err()
            .map(|e| e.to_string())
    }

    #[test]
    fn a_key_that_one_cell_of_the_sweep_records_is_a_metric() {
        let metrics =
            r#"["beat/val/code_pct_l2", "eval/closed_qa/acc_diagnosis", "eval/accuracy"]"#;
        assert_eq!(plan_errors(metrics, r#""beat.dvq_levels" = [1, 2]"#), None);
        let err = plan_errors(metrics, r#""beat.dvq_levels" = [1]"#).unwrap();
        assert!(err.contains("`beat/val/code_pct_l2`"), "{err}");
    }

    #[test]
    fn a_task_the_eval_stage_does_not_run_is_not_a_metric() {
        let err = plan_errors(r#"["eval/report/rouge_l"]"#, "").unwrap();
        assert!(err.contains("no stage of this spec records"), "{err}");
    }
}
