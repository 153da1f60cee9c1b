//! What multimodal cells answered, from their `generations-<stage>.jsonl` files: a confusion
//! matrix of closed-QA answers per cell group (seeds added up; rows the correct option, columns
//! the chosen one, `none` where no option was chosen), and a few open answers and reports
//! beside their references.
//!
//! Every matrix cell carries `data-correct`, `data-chosen` and `data-count`; every generation
//! row its cell and item type.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::curves::Plot;
use super::gather::{CellData, ReportData};
use super::svg::{Svg, text_width};
use crate::table::render::html_escape;

/// One matrix square and the room for the labels.
const SQUARE: f64 = 34.0;
const LEFT: f64 = 96.0;
const TOP: f64 = 64.0;

/// The closed-QA answers of a cell group.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Confusion {
    /// The option letters that occur, correct or chosen, sorted.
    pub letters: Vec<char>,
    /// (correct, chosen or `None`) -> count.
    pub counts: BTreeMap<(char, Option<char>), usize>,
}

impl Confusion {
    /// The counts of `answers`.
    pub fn of<'a>(answers: impl IntoIterator<Item = &'a (char, Option<char>)>) -> Confusion {
        let mut c = Confusion::default();
        for &(correct, chosen) in answers {
            *c.counts.entry((correct, chosen)).or_default() += 1;
            for l in std::iter::once(correct).chain(chosen) {
                if !c.letters.contains(&l) {
                    c.letters.push(l);
                }
            }
        }
        c.letters.sort_unstable();
        c
    }

    pub fn total(&self) -> usize {
        self.counts.values().sum()
    }

    pub fn correct(&self) -> usize {
        self.counts
            .iter()
            .filter(|((c, chosen), _)| Some(*c) == *chosen)
            .map(|(_, n)| n)
            .sum()
    }

    /// Whether some answer chose no option.
    fn has_none(&self) -> bool {
        self.counts.keys().any(|(_, chosen)| chosen.is_none())
    }
}

/// One matrix per cell group with closed-QA answers.
pub fn confusion_plots(data: &ReportData) -> Vec<Plot> {
    let mut plots = Vec::new();
    for (g, group) in data.groups.iter().enumerate() {
        let cells: Vec<&CellData> = data.group_cells(group).collect();
        let confusion = Confusion::of(cells.iter().flat_map(|c| &c.answers));
        if confusion.total() == 0 {
            continue;
        }
        let runs = cells.iter().filter(|c| !c.answers.is_empty()).count();
        let title = format!(
            "{} — closed-QA answers ({} items, {} run{})",
            group.title,
            confusion.total(),
            runs,
            if runs == 1 { "" } else { "s" }
        );
        plots.push(Plot {
            name: format!("confusion-{g}"),
            svg: matrix_svg(&confusion, &title),
        });
    }
    plots
}

/// The matrix: squares shaded by the share of their row, the count written in each.
pub fn matrix_svg(c: &Confusion, title: &str) -> String {
    let mut columns: Vec<Option<char>> = c.letters.iter().copied().map(Some).collect();
    if c.has_none() {
        columns.push(None);
    }
    let rows = &c.letters;
    let accuracy = 100.0 * c.correct() as f64 / c.total().max(1) as f64;
    let footer = format!("{accuracy:.1} % correct; shade: share of the row");
    let width = (LEFT + SQUARE * columns.len() as f64 + 24.0)
        .max(text_width(title, 13.0) + 24.0)
        .max(text_width(&footer, 10.0) + LEFT);
    let height = TOP + SQUARE * rows.len() as f64 + 40.0;
    let mut svg = Svg::new(width, height, "plot-confusion", title);
    svg.text((12.0, 18.0), "start", "class=\"title\"", title);
    let grid_w = SQUARE * columns.len() as f64;
    svg.text(
        (LEFT + grid_w / 2.0, TOP - 26.0),
        "middle",
        "class=\"axis-label\"",
        "chosen option",
    );
    svg.vertical_text(
        (LEFT - 48.0, TOP + SQUARE * rows.len() as f64 / 2.0),
        "class=\"axis-label\"",
        "correct option",
    );
    for (j, col) in columns.iter().enumerate() {
        let x = LEFT + SQUARE * (j as f64 + 0.5);
        svg.text((x, TOP - 8.0), "middle", "", &chosen_text(*col));
    }
    for (i, &correct) in rows.iter().enumerate() {
        let y = TOP + SQUARE * i as f64;
        svg.text(
            (LEFT - 8.0, y + SQUARE / 2.0 + 4.0),
            "end",
            "",
            &correct.to_string(),
        );
        let row_total: usize = columns
            .iter()
            .map(|&chosen| c.counts.get(&(correct, chosen)).copied().unwrap_or(0))
            .sum();
        for (j, &chosen) in columns.iter().enumerate() {
            let count = c.counts.get(&(correct, chosen)).copied().unwrap_or(0);
            square(
                &mut svg,
                (LEFT + SQUARE * j as f64, y),
                (correct, chosen),
                count,
                row_total,
            );
        }
    }
    svg.text((LEFT, height - 12.0), "start", "class=\"note\"", &footer);
    svg.finish()
}

/// One square of the matrix.
fn square(
    svg: &mut Svg,
    (x, y): (f64, f64),
    (correct, chosen): (char, Option<char>),
    count: usize,
    row_total: usize,
) {
    let share = count as f64 / row_total.max(1) as f64;
    let hit = chosen == Some(correct);
    let (r, g, b) = if hit { (0, 158, 115) } else { (213, 94, 0) };
    let fill = match count {
        0 => "#fafafa".to_string(),
        _ => format!("rgba({r},{g},{b},{:.2})", 0.15 + 0.75 * share),
    };
    let attrs = format!(
        "class=\"cm-cell\" data-correct=\"{correct}\" data-chosen=\"{}\" data-count=\"{count}\" fill=\"{fill}\" stroke=\"#ddd\"",
        chosen_text(chosen)
    );
    let tip = format!(
        "correct {correct}, chosen {}: {count} of {row_total}",
        chosen_text(chosen)
    );
    svg.rect((x, y), (SQUARE, SQUARE), &attrs, &tip);
    if count > 0 {
        let attrs = match share > 0.6 {
            true => "fill=\"#fff\" font-weight=\"600\"",
            false => "",
        };
        svg.text(
            (x + SQUARE / 2.0, y + SQUARE / 2.0 + 4.0),
            "middle",
            attrs,
            &count.to_string(),
        );
    }
}

fn chosen_text(chosen: Option<char>) -> String {
    chosen.map_or("none".into(), |c| c.to_string())
}

/// The generations section's body: per cell group, the first cell's open answers and reports
/// beside their references (empty when no cell has any).
pub fn generations_html(data: &ReportData) -> String {
    let mut s = String::new();
    for group in &data.groups {
        let Some(cell) = data.group_cells(group).find(|c| !c.generations.is_empty()) else {
            continue;
        };
        let _ = write!(
            s,
            "<table class=\"generations\" data-cell=\"{idx}\"><caption>{title} (cell {idx})</caption>\
             <thead><tr><th>type</th><th>question</th><th>reference</th><th>generation</th></tr></thead><tbody>",
            idx = cell.index,
            title = html_escape(&group.title)
        );
        for g in &cell.generations {
            let _ = write!(
                s,
                "<tr data-type=\"{t}\"><td>{t}</td><td>{q}</td><td class=\"reference\">{r}</td>\
                 <td class=\"generation\">{o}</td></tr>",
                t = html_escape(&g.item_type),
                q = html_escape(&g.question),
                r = html_escape(&g.reference),
                o = html_escape(g.generation.as_deref().unwrap_or_default()),
            );
        }
        s.push_str("</tbody></table>\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_counted_by_correct_and_chosen_option() {
        let answers = [
            ('A', Some('A')),
            ('A', Some('C')),
            ('B', None),
            ('A', Some('A')),
        ];
        let c = Confusion::of(&answers);
        assert_eq!(c.letters, ['A', 'B', 'C']);
        assert_eq!((c.total(), c.correct()), (4, 2));
        assert_eq!(c.counts[&('A', Some('A'))], 2);
        let svg = matrix_svg(&c, "t");
        let cells = svg.matches("class=\"cm-cell\"").count();
        assert_eq!(cells, 3 * 4, "three correct letters by A, B, C and none");
        assert!(svg.contains("data-correct=\"A\" data-chosen=\"A\" data-count=\"2\""));
        assert!(svg.contains("data-correct=\"B\" data-chosen=\"none\" data-count=\"1\""));
        assert!(svg.contains("data-correct=\"C\" data-chosen=\"C\" data-count=\"0\""));
        assert!(svg.contains("50.0 % correct"));
    }
}
