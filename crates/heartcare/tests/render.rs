//! Geometry and encoding tests of the printed-ECG renderer.

use beatlab_ecg::{Record, RecordMeta, STANDARD_LEADS, SourceKind};
use beatlab_heartcare::render::{
    EcgImage, Layout, RenderConfig, RenderError, draw_paper, render, render_lead_tiles,
};

const FS: f64 = 500.0;

/// A 10 s, 12-lead record whose leads are given by `value(lead index, time s)` in mV.
fn record_with(value: impl Fn(usize, f32) -> f32) -> Record {
    let n = (10.0 * FS) as usize;
    Record {
        id: "test/record".into(),
        source: SourceKind::Synthetic,
        fs: FS,
        leads: STANDARD_LEADS.iter().map(|s| s.to_string()).collect(),
        signals: (0..12)
            .map(|lead| (0..n).map(|i| value(lead, i as f32 / FS as f32)).collect())
            .collect(),
        meta: RecordMeta::default(),
        waves: Vec::new(),
    }
}

fn flat_record() -> Record {
    record_with(|_, _| 0.0)
}

fn lead_index(name: &str) -> usize {
    STANDARD_LEADS.iter().position(|l| *l == name).unwrap()
}

/// Ink weight of a pixel: the grid and the paper are red-dominant (R >= 0.9), ink is black.
fn ink(image: &EcgImage, x: usize, y: usize) -> f32 {
    1.0 - image.pixel(x, y)[0]
}

/// Ink-weighted centre row of column `x` within rows `[y0, y1)`.
fn ink_centroid(image: &EcgImage, x: usize, y0: usize, y1: usize) -> f32 {
    let (mut sum, mut weight) = (0.0, 0.0);
    for y in y0..y1 {
        let w = ink(image, x, y);
        if w > 0.2 {
            sum += w * y as f32;
            weight += w;
        }
    }
    assert!(weight > 0.0, "no ink in column {x} rows {y0}..{y1}");
    sum / weight
}

fn bare(mut config: RenderConfig) -> RenderConfig {
    config.labels = false;
    config.calibration = false;
    config
}

#[test]
fn grid_pitch_in_pixels_equals_px_per_mm() {
    fn check(px_per_mm: f32) {
        let mut config = bare(RenderConfig::six_by_two(64, 64));
        config.px_per_mm = px_per_mm;
        let paper = draw_paper(&flat_record(), &config).unwrap().image;
        // Row 1 lies in the top margin: only vertical grid lines cross it.
        // The paper colour is the most common colour along the row.
        let row: Vec<[u8; 3]> = (0..paper.width)
            .map(|x| paper.pixel(x, 1).map(|v| (v * 255.0).round() as u8))
            .collect();
        let background_rgb8 = *row
            .iter()
            .max_by_key(|c| row.iter().filter(|d| d == c).count())
            .unwrap();
        let background = paper.pixel(
            (0..paper.width)
                .find(|&x| row[x] == background_rgb8)
                .unwrap(),
            1,
        );
        assert!(background[1] > 0.9, "paper is light: {background:?}");
        let columns: Vec<usize> = (0..paper.width)
            .filter(|&x| paper.pixel(x, 1) != background || x == 0)
            .collect();
        let pitches: Vec<usize> = columns.windows(2).map(|w| w[1] - w[0]).collect();
        let mean_pitch = (columns[columns.len() - 1] - columns[0]) as f32 / pitches.len() as f32;
        assert!(
            (mean_pitch - px_per_mm).abs() < 0.01,
            "px_per_mm {px_per_mm}: mean grid pitch {mean_pitch}"
        );
        // Every single pitch is the scale rounded down or up: no missing or doubled lines.
        for p in &pitches {
            assert!(
                (*p as f32 - px_per_mm).abs() < 1.0,
                "px_per_mm {px_per_mm}: pitch {p} in {pitches:?}"
            );
        }
        // Every fifth line is a thick (darker) line.
        let thick: Vec<usize> = columns
            .iter()
            .copied()
            .filter(|&x| paper.pixel(x, 1)[1] < 0.6)
            .collect();
        let expected: Vec<usize> = columns.iter().copied().step_by(5).collect();
        assert_eq!(thick, expected, "px_per_mm {px_per_mm}: thick lines");
    }
    check(4.0);
    check(5.0);
    check(3.5);
}

#[test]
fn grid_absent_when_disabled() {
    let mut config = bare(RenderConfig::six_by_two(64, 64));
    config.grid = false;
    let paper = draw_paper(&flat_record(), &config).unwrap().image;
    let background = paper.pixel(2, 2);
    assert!((0..paper.width).all(|x| paper.pixel(x, 1) == background));
}

#[test]
fn calibration_pulse_is_gain_millimetres_tall() {
    fn check(px_per_mm: f32, gain_mm_per_mv: f32) {
        let mut config = RenderConfig::six_by_two(64, 64);
        config.labels = false;
        config.grid = false;
        config.px_per_mm = px_per_mm;
        config.gain_mm_per_mv = gain_mm_per_mv;
        config.row_height_mm = 40.0;
        let paper = draw_paper(&flat_record(), &config).unwrap().image;
        // First row spans margin..margin+40 mm; the pulse rises 2.5 mm after the margin and
        // is 5 mm wide, so its middle is 5 mm after the margin and 1 mm after is lead-in.
        let px = |mm: f32| (mm * px_per_mm).round() as usize;
        let row = (px(config.margin_mm), px(config.margin_mm + 40.0));
        let top = ink_centroid(&paper, px(config.margin_mm + 5.0), row.0, row.1);
        let base = ink_centroid(&paper, px(config.margin_mm + 1.0), row.0, row.1);
        let height_px = base - top;
        let expected = gain_mm_per_mv * px_per_mm;
        assert!(
            (height_px - expected).abs() < 0.3,
            "px/mm {px_per_mm}, gain {gain_mm_per_mv}: pulse {height_px} px, expected {expected}"
        );
    }
    check(4.0, 10.0);
    check(6.0, 10.0);
    check(5.0, 20.0);
}

#[test]
fn flat_lead_draws_a_horizontal_line_at_the_panel_baseline() {
    for layout_config in [
        RenderConfig::six_by_two(64, 64),
        RenderConfig::three_by_four(64, 64),
    ] {
        let mut config = bare(layout_config);
        config.grid = false;
        config.px_per_mm = 5.0;
        let paper = draw_paper(&flat_record(), &config).unwrap();
        let rows = match config.layout {
            Layout::SixByTwo => 6,
            Layout::ThreeByFourRhythm => 4,
        };
        assert_eq!(
            paper.panels.len(),
            if rows == 6 { 12 } else { 13 },
            "panel count"
        );
        for panel in &paper.panels {
            // Baseline derived from the layout: row top + the row's 2/3 snapped to 5 mm.
            let row = ((panel.rect.y0 / config.px_per_mm - config.margin_mm)
                / config.row_height_mm)
                .round();
            let snapped = (config.row_height_mm * 2.0 / 3.0 / 5.0).round() * 5.0;
            let expected =
                (config.margin_mm + row * config.row_height_mm + snapped) * config.px_per_mm;
            assert!((panel.baseline_y - expected).abs() < 1e-3, "{}", panel.lead);
            let (y0, y1) = (panel.rect.y0 as usize, panel.rect.y1 as usize);
            for fraction in [0.1, 0.5, 0.9] {
                let x = (panel.rect.x0 + fraction * (panel.rect.x1 - panel.rect.x0)) as usize;
                let centre = ink_centroid(&paper.image, x, y0, y1);
                assert!(
                    (centre - expected).abs() < 0.25,
                    "lead {} at x {x}: line at {centre}, baseline {expected}",
                    panel.lead
                );
            }
        }
    }
}

#[test]
fn a_leads_trace_lies_inside_its_panel() {
    fn check(layout_config: RenderConfig, lead: &str) {
        let mut config = layout_config;
        // Without clipping, a misplaced trace would show up outside its panel.
        config.clip_to_panel = false;
        let target = lead_index(lead);
        let with_signal = record_with(|l, t| {
            if l == target {
                0.8 * (2.0 * std::f32::consts::PI * 1.3 * t).sin()
            } else {
                0.0
            }
        });
        let flat = draw_paper(&flat_record(), &config).unwrap();
        let drawn = draw_paper(&with_signal, &config).unwrap();
        let panels: Vec<_> = drawn.panels.iter().filter(|p| p.lead == lead).collect();
        assert!(!panels.is_empty(), "{lead} has a panel");
        let slack = 2.0; // antialiasing reach past the first and last sample
        let mut min_x = f32::MAX;
        let mut max_x = f32::MIN;
        for y in 0..flat.image.height {
            for x in 0..flat.image.width {
                if flat.image.pixel(x, y) != drawn.image.pixel(x, y) {
                    let (xf, yf) = (x as f32, y as f32);
                    let inside = panels.iter().any(|p| {
                        xf >= p.rect.x0 - slack
                            && xf <= p.rect.x1 + slack
                            && yf >= p.rect.y0
                            && yf <= p.rect.y1
                    });
                    assert!(
                        inside,
                        "{lead}: ink changed at ({x}, {y}) outside its panel"
                    );
                    min_x = min_x.min(xf);
                    max_x = max_x.max(xf);
                }
            }
        }
        // The trace covers its whole time segment.
        let first = panels[0];
        let last = panels[panels.len() - 1];
        assert!(
            min_x <= first.rect.x0 + 2.0,
            "{lead}: trace starts at {min_x}"
        );
        assert!(max_x >= last.rect.x1 - 2.0, "{lead}: trace ends at {max_x}");
    }
    check(RenderConfig::six_by_two(64, 64), "V3");
    check(RenderConfig::six_by_two(64, 64), "aVL");
    check(RenderConfig::three_by_four(64, 64), "aVF");
    check(RenderConfig::three_by_four(64, 64), "II");
}

#[test]
fn panels_show_their_segment_of_time() {
    let paper = draw_paper(&flat_record(), &RenderConfig::six_by_two(64, 64)).unwrap();
    let i = paper.panel("I").unwrap();
    let v1 = paper.panel("V1").unwrap();
    assert_eq!((i.t0_s, i.t1_s), (0.0, 5.0));
    assert_eq!((v1.t0_s, v1.t1_s), (5.0, 10.0));
    let paper = draw_paper(&flat_record(), &RenderConfig::three_by_four(64, 64)).unwrap();
    let times: Vec<(String, f32, f32)> = paper
        .panels
        .iter()
        .map(|p| (p.lead.clone(), p.t0_s, p.t1_s))
        .collect();
    assert!(times.contains(&("aVL".into(), 2.5, 5.0)));
    assert!(times.contains(&("V6".into(), 7.5, 10.0)));
    // The rhythm strip is lead II over the whole page.
    assert_eq!(times.last().unwrap(), &("II".to_string(), 0.0, 10.0));
}

#[test]
fn render_delivers_the_requested_tensor_shape() {
    let record = record_with(|l, t| 0.1 * l as f32 * (6.0 * t).sin());
    let image = render(&record, &RenderConfig::six_by_two(384, 320)).unwrap();
    assert_eq!(image.shape(), [3, 320, 384]);
    assert_eq!(image.chw().len(), 3 * 320 * 384);
    assert!(image.chw().iter().all(|v| (0.0..=1.0).contains(v)));
}

#[test]
fn resize_preserves_flat_colour_and_averages_detail() {
    let flat = EcgImage::filled(40, 30, [0.2, 0.4, 0.6]);
    let small = flat.resize(7, 5);
    assert!(small.chw()[..35].iter().all(|v| (v - 0.2).abs() < 1e-6));
    // A one-pixel checkerboard halved in size averages to mid-grey.
    let mut checker = EcgImage::filled(16, 16, [0.0; 3]);
    for y in 0..16 {
        for x in 0..16 {
            if (x + y) % 2 == 0 {
                for c in 0..3 {
                    checker.data[c * 256 + y * 16 + x] = 1.0;
                }
            }
        }
    }
    let half = checker.resize(8, 8);
    for y in 1..7 {
        for x in 1..7 {
            assert!((half.pixel(x, y)[0] - 0.5).abs() < 0.05, "{x},{y}");
        }
    }
}

#[test]
fn png_decodes_back_to_the_same_pixels() {
    let record = record_with(|l, t| 0.05 * l as f32 + 0.5 * (9.0 * t).sin());
    let image = render(&record, &RenderConfig::three_by_four(96, 64)).unwrap();
    let bytes = image.encode_png().unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let decoded = EcgImage::decode_png(&bytes).unwrap();
    assert_eq!((decoded.width, decoded.height), (96, 64));
    assert_eq!(decoded.to_rgb8(), image.to_rgb8());
    // And through a file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ecg.png");
    image.write_png(&path).unwrap();
    assert_eq!(EcgImage::read_png(&path).unwrap(), decoded);
}

#[test]
fn lead_tiles_are_twelve_images_in_standard_order() {
    let record = record_with(|l, t| 0.3 * ((l + 1) as f32 * t).sin());
    let tiles = render_lead_tiles(&record, &RenderConfig::six_by_two(48, 40)).unwrap();
    let names: Vec<&str> = tiles.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, STANDARD_LEADS);
    assert!(tiles.iter().all(|(_, t)| t.shape() == [3, 40, 48]));
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let config = RenderConfig {
        px_per_mm: 0.0,
        ..RenderConfig::default()
    };
    match draw_paper(&flat_record(), &config) {
        Err(RenderError::BadConfig { field, .. }) => assert_eq!(field, "px_per_mm"),
        other => panic!("expected BadConfig, got {other:?}"),
    }
    let mut empty = flat_record();
    empty.signals.iter_mut().for_each(Vec::clear);
    assert!(matches!(
        render(&empty, &RenderConfig::default()),
        Err(RenderError::BadRecord { .. })
    ));
    assert!(matches!(
        EcgImage::decode_png(b"not a png"),
        Err(RenderError::Png { .. })
    ));
}
