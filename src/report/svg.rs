//! A small SVG writer: a document of a fixed size to which shapes and text are appended, every
//! piece of text escaped. Each document carries its own `<style>`, so a plot written as a file
//! looks the same as the copy inlined in the report.

use std::fmt::Write;

use crate::table::render::html_escape;

/// Colours of series, in order (Okabe-Ito's palette, safe for colour-blind readers, then two
/// more).
pub const PALETTE: [&str; 10] = [
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442",
    "#8c564b", "#7f7f7f",
];

/// The colour of series `i`.
pub fn colour(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

/// The style every plot shares.
const STYLE: &str = "text{font-family:system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;\
font-size:11px;fill:#222}.title{font-size:13px;font-weight:600}.axis-label{font-size:11px;fill:#444}\
.tick text{font-size:10px;fill:#555}.grid{stroke:#e6e6e6;stroke-width:1}.axis{stroke:#888;stroke-width:1}\
.note{font-size:10px;fill:#777}";

/// An SVG document being written.
pub struct Svg {
    width: f64,
    height: f64,
    kind: &'static str,
    title: String,
    body: String,
}

/// A number as SVG wants it: at most two decimals, no `-0`.
pub fn n(v: f64) -> String {
    let r = (v * 100.0).round() / 100.0;
    if r == 0.0 { "0".into() } else { format!("{r}") }
}

impl Svg {
    /// An empty `width` x `height` document. `kind` becomes its class (`plot-loss`, ...) and
    /// `title` its accessible name.
    pub fn new(width: f64, height: f64, kind: &'static str, title: &str) -> Svg {
        Svg {
            width,
            height,
            kind,
            title: title.to_string(),
            body: String::new(),
        }
    }

    pub fn width(&self) -> f64 {
        self.width
    }

    pub fn height(&self) -> f64 {
        self.height
    }

    /// Appends markup as it is (built by this module's callers from escaped parts).
    pub fn raw(&mut self, markup: &str) {
        self.body.push_str(markup);
    }

    /// A line segment.
    pub fn line(&mut self, (x1, y1): (f64, f64), (x2, y2): (f64, f64), attrs: &str) {
        let _ = write!(
            self.body,
            "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" {attrs}/>",
            n(x1),
            n(y1),
            n(x2),
            n(y2)
        );
    }

    /// A rectangle, with a tooltip when `tip` is not empty.
    pub fn rect(&mut self, (x, y): (f64, f64), (w, h): (f64, f64), attrs: &str, tip: &str) {
        let _ = write!(
            self.body,
            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" {attrs}>{}</rect>",
            n(x),
            n(y),
            n(w.max(0.0)),
            n(h.max(0.0)),
            tooltip(tip)
        );
    }

    /// A circle, with a tooltip when `tip` is not empty.
    pub fn circle(&mut self, (x, y): (f64, f64), r: f64, attrs: &str, tip: &str) {
        let _ = write!(
            self.body,
            "<circle cx=\"{}\" cy=\"{}\" r=\"{}\" {attrs}>{}</circle>",
            n(x),
            n(y),
            n(r),
            tooltip(tip)
        );
    }

    /// A polyline through `points` (nothing for fewer than two), with a tooltip.
    pub fn polyline(&mut self, points: &[(f64, f64)], attrs: &str, tip: &str) {
        if points.len() < 2 {
            return;
        }
        let _ = write!(
            self.body,
            "<polyline fill=\"none\" points=\"{}\" {attrs}>{}</polyline>",
            points_attr(points),
            tooltip(tip)
        );
    }

    /// A closed polygon through `points`.
    pub fn polygon(&mut self, points: &[(f64, f64)], attrs: &str, tip: &str) {
        if points.len() < 3 {
            return;
        }
        let _ = write!(
            self.body,
            "<polygon points=\"{}\" {attrs}>{}</polygon>",
            points_attr(points),
            tooltip(tip)
        );
    }

    /// Text at `(x, y)`, anchored `start`, `middle` or `end`, escaped.
    pub fn text(&mut self, (x, y): (f64, f64), anchor: &str, attrs: &str, text: &str) {
        let _ = write!(
            self.body,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"{anchor}\" {attrs}>{}</text>",
            n(x),
            n(y),
            html_escape(text)
        );
    }

    /// Text rotated by -90° about its anchor point (a y-axis label).
    pub fn vertical_text(&mut self, (x, y): (f64, f64), attrs: &str, text: &str) {
        let _ = write!(
            self.body,
            "<text x=\"{x}\" y=\"{y}\" text-anchor=\"middle\" transform=\"rotate(-90 {x} {y})\" {attrs}>{}</text>",
            html_escape(text),
            x = n(x),
            y = n(y)
        );
    }

    /// The document.
    pub fn finish(self) -> String {
        format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"plot {kind}\" width=\"{w}\" height=\"{h}\" \
             viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"{title}\"><style>{STYLE}</style>\
             <rect width=\"100%\" height=\"100%\" fill=\"#fff\"/>{body}</svg>",
            kind = self.kind,
            w = n(self.width),
            h = n(self.height),
            title = html_escape(&self.title),
            body = self.body
        )
    }
}

fn points_attr(points: &[(f64, f64)]) -> String {
    let mut s = String::with_capacity(points.len() * 12);
    for (i, (x, y)) in points.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        let _ = write!(s, "{},{}", n(*x), n(*y));
    }
    s
}

/// `<title>` (a hover tooltip) of an element, or nothing.
fn tooltip(tip: &str) -> String {
    match tip.is_empty() {
        true => String::new(),
        false => format!("<title>{}</title>", html_escape(tip)),
    }
}

/// Roughly how wide `text` is at `size` px in a sans-serif font (for layout only).
pub fn text_width(text: &str, size: f64) -> f64 {
    text.chars().count() as f64 * size * 0.58
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_tooltips_are_escaped_and_numbers_short() {
        let mut s = Svg::new(10.0, 10.0, "plot-test", "a<b");
        s.text((1.0, 2.0), "start", "", "x & <y>");
        s.circle((1.0 / 3.0, -0.0001), 2.0, "", "\"tip\"");
        let out = s.finish();
        assert!(out.contains("x &amp; &lt;y&gt;"), "{out}");
        assert!(out.contains("aria-label=\"a&lt;b\""), "{out}");
        assert!(out.contains("cx=\"0.33\" cy=\"0\""), "{out}");
        assert!(out.contains("<title>&quot;tip&quot;</title>"), "{out}");
        assert!(
            out.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"plot plot-test\"")
        );
    }
}
