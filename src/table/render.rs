//! One renderer per format, all printing the same content: the title, the header, the rows and
//! the footer ([`Table::footer`]). Every piece of text goes through the format's escaping, so a
//! label or claim holding `|`, `*`, `_`, `&`, `%`, `{` or `<` comes out as written.

use super::{ColumnKind, Entry, MISSING, Table};

/// The text of an entry before escaping (`0.90 ± 0.14`, `+0.14`, `—`).
fn entry_text(e: &Entry, digits: usize) -> String {
    match e {
        Entry::Text(s) => s.clone(),
        Entry::Stat(s) => match s.std {
            None => format!("{:.digits$}", s.mean),
            Some(std) => format!("{:.digits$} ± {std:.digits$}", s.mean),
        },
        Entry::Missing => MISSING.into(),
        Entry::Empty => String::new(),
        Entry::Paper(p) => format!("{p:.digits$}"),
        Entry::Delta(d) => format!("{:+.digits$}", d.value),
    }
}

/// The header and body as text, before escaping.
fn text_rows(t: &Table) -> Vec<Vec<String>> {
    let header = t.columns.iter().map(|c| c.label.clone()).collect();
    let body = t
        .rows
        .iter()
        .map(|r| r.iter().map(|e| entry_text(e, t.digits)).collect());
    std::iter::once(header).chain(body).collect()
}

/// Markdown: backslash before every character that can start markup in a table cell
/// (CommonMark allows a backslash before any ASCII punctuation); line breaks become spaces.
pub fn md_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '|' | '#' | '~' | '&' | '$' | '!'
            | '{' | '}' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' => out.push(' '),
            _ => out.push(c),
        }
    }
    out
}

/// A Markdown table (GitHub style) under a bold title, the footer below.
pub fn markdown(t: &Table) -> String {
    let rows: Vec<Vec<String>> = text_rows(t)
        .iter()
        .map(|r| r.iter().map(|c| md_escape(c)).collect())
        .collect();
    let mut widths = vec![0; t.columns.len()];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
            .collect();
        format!("| {} |\n", padded.join(" | "))
    };
    let mut s = format!("**{}**\n\n", md_escape(&t.title));
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(w + 2)).collect();
    for (i, r) in rows.iter().enumerate() {
        s.push_str(&line(r));
        if i == 0 {
            s.push_str(&format!("|{}|\n", rule.join("|")));
        }
    }
    let footer = t.footer();
    if !footer.is_empty() {
        s.push('\n');
        for l in footer {
            s.push_str(&md_escape(&l));
            s.push('\n');
        }
    }
    s
}

/// A CSV field, quoted (RFC 4180) when it holds a comma, quote, line break or edge space.
fn csv_field(c: &str) -> String {
    let edge_space = c.starts_with(' ') || c.ends_with(' ');
    if c.contains([',', '"', '\n', '\r']) || edge_space {
        format!("\"{}\"", c.replace('"', "\"\""))
    } else {
        c.to_string()
    }
}

/// CSV: the title and footer as `#` comment lines (pandas: `comment="#"`), header, rows.
pub fn csv(t: &Table) -> String {
    let comment = |l: &str| format!("# {}\n", l.replace(['\n', '\r'], " "));
    let mut s = comment(&t.title);
    for r in text_rows(t) {
        s.push_str(&r.iter().map(|c| csv_field(c)).collect::<Vec<_>>().join(","));
        s.push('\n');
    }
    for l in t.footer() {
        s.push_str(&comment(&l));
    }
    s
}

/// LaTeX: every special character of text mode escaped, and the symbols the tables use
/// (±, Δ, —, −) as commands.
pub fn latex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\textbackslash{}"),
            '{' | '}' | '$' | '&' | '#' | '_' | '%' => {
                out.push('\\');
                out.push(c);
            }
            '^' => out.push_str("\\textasciicircum{}"),
            '~' => out.push_str("\\textasciitilde{}"),
            '<' => out.push_str("\\textless{}"),
            '>' => out.push_str("\\textgreater{}"),
            '|' => out.push_str("\\textbar{}"),
            '±' => out.push_str("$\\pm$"),
            'Δ' => out.push_str("$\\Delta$"),
            '—' => out.push_str("--"),
            '−' => out.push_str("$-$"),
            '\n' | '\r' => out.push(' '),
            _ => out.push(c),
        }
    }
    out
}

/// A LaTeX `table` (booktabs rules), numbers right-aligned, the footer as footnote-sized lines.
pub fn latex(t: &Table) -> String {
    let align: String = t
        .columns
        .iter()
        .map(|c| if c.kind == ColumnKind::Key { 'l' } else { 'r' })
        .collect();
    let mut s = String::from("\\begin{table}[t]\n\\centering\n");
    s.push_str(&format!("\\caption{{{}}}\n", latex_escape(&t.title)));
    s.push_str(&format!("\\begin{{tabular}}{{{align}}}\n\\toprule\n"));
    for (i, r) in text_rows(t).iter().enumerate() {
        let cells: Vec<String> = r.iter().map(|c| latex_escape(c)).collect();
        s.push_str(&format!("{} \\\\\n", cells.join(" & ")));
        if i == 0 {
            s.push_str("\\midrule\n");
        }
    }
    s.push_str("\\bottomrule\n\\end{tabular}\n");
    let footer = t.footer();
    if !footer.is_empty() {
        s.push_str("\\par\\smallskip\n{\\footnotesize\n");
        for l in footer {
            s.push_str(&format!("{}\\par\n", latex_escape(&l)));
        }
        s.push_str("}\n");
    }
    s.push_str("\\end{table}\n");
    s
}

/// HTML text: `&`, `<`, `>`, `"` and `'` as entities, and every character that neither HTML
/// nor XML allows in text (control characters other than tab and line breaks, U+FFFE, U+FFFF:
/// a small model's generations hold them) as U+FFFD, so the page stays well-formed.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            c if not_text(c) => out.push(char::REPLACEMENT_CHARACTER),
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Whether `c` is not allowed in HTML or XML text ([`html_escape`] replaces it).
pub fn not_text(c: char) -> bool {
    (c.is_control() && !matches!(c, '\t' | '\n' | '\r')) || matches!(c, '\u{FFFE}' | '\u{FFFF}')
}

/// The background of a Δ cell: blue above the paper, red below, stronger the larger the
/// difference relative to the paper's value (full strength at 50 %).
pub fn delta_colour(value: f64, paper: f64) -> String {
    let scale = paper.abs().max(1e-12);
    let rel = (value.abs() / scale / 0.5).clamp(0.0, 1.0);
    let alpha = 0.12 + 0.58 * rel.sqrt();
    let (r, g, b) = if value >= 0.0 {
        (33, 102, 172)
    } else {
        (178, 24, 43)
    };
    format!("rgba({r},{g},{b},{alpha:.2})")
}

/// One `<td>` with the entry's numbers as data attributes.
fn html_cell(e: &Entry, digits: usize) -> String {
    let text = html_escape(&entry_text(e, digits));
    match e {
        Entry::Text(_) => format!("<th scope=\"row\">{text}</th>"),
        Entry::Stat(s) => format!(
            "<td class=\"num\" data-mean=\"{}\" data-std=\"{}\" data-n=\"{}\" title=\"n = {}\">{text}</td>",
            s.mean,
            s.std.map_or(String::new(), |v| v.to_string()),
            s.n,
            s.n
        ),
        Entry::Missing => format!("<td class=\"missing\">{text}</td>"),
        Entry::Empty => "<td></td>".into(),
        Entry::Paper(p) => format!("<td class=\"num paper\" data-value=\"{p}\">{text}</td>"),
        Entry::Delta(d) => format!(
            "<td class=\"num delta {}\" data-value=\"{}\" style=\"background:{}\">{text}</td>",
            if d.value >= 0.0 { "pos" } else { "neg" },
            d.value,
            delta_colour(d.value, d.paper)
        ),
    }
}

/// An HTML `<table>`: caption, header, body, and the footer in `<tfoot>`.
pub fn html(t: &Table) -> String {
    let mut s = format!(
        "<table class=\"beatlab-table\">\n<caption>{}</caption>\n<thead><tr>",
        html_escape(&t.title)
    );
    for c in &t.columns {
        s.push_str(&format!("<th scope=\"col\">{}</th>", html_escape(&c.label)));
    }
    s.push_str("</tr></thead>\n<tbody>\n");
    for r in &t.rows {
        s.push_str("<tr>");
        for e in r {
            s.push_str(&html_cell(e, t.digits));
        }
        s.push_str("</tr>\n");
    }
    s.push_str("</tbody>\n");
    let footer = t.footer();
    if !footer.is_empty() {
        s.push_str(&format!(
            "<tfoot><tr><td colspan=\"{}\">",
            t.columns.len().max(1)
        ));
        let lines: Vec<String> = footer.iter().map(|l| html_escape(l)).collect();
        s.push_str(&lines.join("<br/>"));
        s.push_str("</td></tr></tfoot>\n");
    }
    s.push_str("</table>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latex_escapes_every_special_character_once() {
        assert_eq!(
            latex_escape(r"a\b{c}$d&e#f^g_h%i~j<k>l|m"),
            r"a\textbackslash{}b\{c\}\$d\&e\#f\textasciicircum{}g\_h\%i\textasciitilde{}j\textless{}k\textgreater{}l\textbar{}m"
        );
        assert_eq!(latex_escape("0.90 ± 0.14"), "0.90 $\\pm$ 0.14");
    }

    #[test]
    fn markdown_escapes_what_starts_markup_and_keeps_numbers() {
        assert_eq!(md_escape("a|b*c_d`e[f]<g>"), r"a\|b\*c\_d\`e\[f\]\<g\>");
        assert_eq!(md_escape("+0.14 ± 0.02, -1.5e3"), "+0.14 ± 0.02, -1.5e3");
        assert_eq!(md_escape("two\nlines"), "two lines");
    }

    #[test]
    fn html_escapes_markup_and_replaces_what_text_cannot_hold() {
        assert_eq!(
            html_escape("a<b>&\"c'\u{5}\u{7f}\u{85}\u{FFFF}\t\n"),
            "a&lt;b&gt;&amp;&quot;c&#39;\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}\t\n"
        );
    }

    #[test]
    fn delta_colours_by_sign_and_size() {
        assert!(delta_colour(0.1, 1.0).starts_with("rgba(33,102,172"));
        assert!(delta_colour(-0.1, 1.0).starts_with("rgba(178,24,43"));
        assert!(delta_colour(0.01, 1.0) < delta_colour(0.4, 1.0));
    }
}
