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

/// The colour of series `i` (see [`style`] for series past the palette's ten).
pub fn colour(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

/// A shape drawn on a series' points (and in its legend entry) so that series past the
/// palette's ten colours stay apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Marker {
    None,
    Circle,
    Square,
    Triangle,
    Diamond,
}

/// Markers in the order they are taken: the first ten series have none, the next ten circles...
const MARKERS: [Marker; 5] = [
    Marker::None,
    Marker::Circle,
    Marker::Square,
    Marker::Triangle,
    Marker::Diamond,
];

/// How series `i` is told apart: a palette colour and, past the palette, a marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Style {
    pub colour: &'static str,
    pub marker: Marker,
}

/// The style of series `i`: distinct for the first 50 series (ten colours times five markers),
/// then repeating.
pub fn style(i: usize) -> Style {
    Style {
        colour: colour(i),
        marker: MARKERS[(i / PALETTE.len()) % MARKERS.len()],
    }
}

/// The style every plot shares.
const STYLE: &str = "text{font-family:system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;\
font-size:11px;fill:#222}.title{font-size:13px;font-weight:600}.axis-label{font-size:11px;fill:#444}\
.tick text{font-size:10px;fill:#555}.grid{stroke:#e6e6e6;stroke-width:1}.axis{stroke:#888;stroke-width:1}\
.note{font-size:10px;fill:#777}.halo{paint-order:stroke;stroke:#fff;stroke-width:3px;stroke-linejoin:round}";

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

    /// `marker` centred at `(x, y)`, `size` px across, filled with `fill` and outlined in
    /// white so that it stands out over lines and bars.
    pub fn marker(&mut self, marker: Marker, (x, y): (f64, f64), size: f64, fill: &str) {
        let r = size / 2.0;
        let attrs =
            format!("class=\"marker\" fill=\"{fill}\" stroke=\"#fff\" stroke-width=\"0.8\"");
        match marker {
            Marker::None => {}
            Marker::Circle => self.circle((x, y), r, &attrs, ""),
            Marker::Square => self.rect(
                (x - r * 0.85, y - r * 0.85),
                (size * 0.85, size * 0.85),
                &attrs,
                "",
            ),
            Marker::Triangle => self.polygon(
                &[
                    (x, y - r * 1.1),
                    (x + r * 1.1, y + r * 0.8),
                    (x - r * 1.1, y + r * 0.8),
                ],
                &attrs,
                "",
            ),
            Marker::Diamond => self.polygon(
                &[(x, y - r * 1.2), (x + r, y), (x, y + r * 1.2), (x - r, y)],
                &attrs,
                "",
            ),
        }
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
    fn styles_stay_distinct_past_the_palette() {
        let styles: Vec<Style> = (0..50).map(style).collect();
        let distinct: std::collections::HashSet<&Style> = styles.iter().collect();
        assert_eq!(distinct.len(), 50);
        assert_eq!(style(0).marker, Marker::None);
        assert_eq!(style(9).marker, Marker::None);
        assert_eq!(
            style(10),
            Style {
                colour: PALETTE[0],
                marker: Marker::Circle
            }
        );
        assert_eq!(style(50), style(0));
        let mut s = Svg::new(10.0, 10.0, "plot-test", "");
        for m in MARKERS {
            s.marker(m, (5.0, 5.0), 6.0, "#000");
        }
        let out = s.finish();
        assert_eq!(
            out.matches("class=\"marker\"").count(),
            4,
            "no shape for None: {out}"
        );
    }

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
