//! The comparison chart: accuracy against inference samples/s, one labelled point per model.
//!
//! The x axis is logarithmic (CPU and GPU rows differ by orders of magnitude). Rows without a measured
//! accuracy (models run with random weights, timed but not scored) are drawn as hollow markers on a band
//! of their own under the chart, never at a made-up accuracy.
//!
//! Labels are placed one by one, left to right, at the spot around their marker (right, left, above,
//! below, then further out with a leader line) that covers the least of the other markers and labels.
//!
//! Text is laid out with DejaVu Sans, bundled in the crate (`assets/DejaVuSans.ttf`, its licence next to
//! it), registered with plotters' `ab_glyph` fonts: the PNG has its labels on a machine without any font
//! installed, and no system font library is linked. The PNG's glyphs are drawn by the `bitmap` module's
//! backend (plotters 0.3.7 misplaces them); the SVG names the family, `DejaVu Sans, sans-serif`.

mod bitmap;

use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::coord::combinators::{LogCoord, WithKeyPoints};
use plotters::coord::ranged1d::Ranged;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};
use serde::{Deserialize, Serialize};

use crate::BenchError;
use crate::error::write_file;

/// The chart's size in pixels (width, height), for both the SVG and the PNG.
pub const CHART_SIZE: (u32, u32) = (900, 600);

/// DejaVu Sans (version 2.35), the font of every text in the chart.
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
/// The family every text asks for: registered under this name, and written as the SVG's `font-family`
/// list, so an SVG viewer with DejaVu Sans draws what the PNG shows (any sans-serif otherwise).
const FAMILY: &str = "DejaVu Sans, sans-serif";

// Text sizes as plotters counts them: the em is size / 1.24 pixels.
const TITLE_SIZE: f64 = 24.0;
const AXIS_DESC_SIZE: f64 = 18.0;
const TICK_SIZE: f64 = 15.0;
const LABEL_SIZE: f64 = 15.0;
const MARKER_RADIUS: i32 = 5;
/// Height of the band of points without an accuracy, x axis labels included.
const BAND_HEIGHT: u32 = 150;
const X_LABEL_AREA: u32 = 50;
const Y_LABEL_AREA: u32 = 70;
const BAND_CAPTION: &str = "accuracy not measured (no weights)";

/// Marker and label colours, one per point in turn (matplotlib's "tab10", readable on white).
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// One point of the chart: a model row's label, speed and (when its weights were real) accuracy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChartPoint {
    /// The text next to the marker (model, backend, precision…).
    pub label: String,
    /// Inference throughput, samples per second (the x axis, logarithmic: finite and above zero).
    pub samples_per_second: f64,
    /// Accuracy as a fraction in `[0, 1]`; `None` for a row whose accuracy was not measured (random
    /// weights), drawn on the band under the chart.
    pub accuracy: Option<f64>,
}

impl ChartPoint {
    /// A point from its three fields.
    pub fn new(label: impl Into<String>, samples_per_second: f64, accuracy: Option<f64>) -> Self {
        Self { label: label.into(), samples_per_second, accuracy }
    }
}

/// Draws the chart as an SVG document ([`CHART_SIZE`]).
///
/// # Errors
/// [`BenchError::EmptyInput`] for no points, [`BenchError::InvalidChartPoint`] for a speed that is not
/// finite and positive or an accuracy outside `[0, 1]`, [`BenchError::Chart`] if drawing fails.
pub fn render_svg(title: &str, points: &[ChartPoint]) -> Result<String, BenchError> {
    validate(points)?;
    register_bundled_font()?;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, CHART_SIZE).into_drawing_area();
        draw(&root, title, points).map_err(|e| chart_error("SVG", e))?;
        root.present().map_err(|e| chart_error("SVG", e))?;
    }
    Ok(svg)
}

/// Draws the chart as a PNG image ([`CHART_SIZE`], 8-bit RGB), returning the encoded file.
///
/// # Errors
/// As [`render_svg`], and [`BenchError::Chart`] if the PNG cannot be encoded.
pub fn render_png(title: &str, points: &[ChartPoint]) -> Result<Vec<u8>, BenchError> {
    validate(points)?;
    register_bundled_font()?;
    let (width, height) = CHART_SIZE;
    let font = ab_glyph::FontRef::try_from_slice(FONT).map_err(|e| font_error(&e.to_string()))?;
    let mut pixels = vec![0u8; width as usize * height as usize * 3];
    {
        let bitmap = BitMapBackend::with_buffer(&mut pixels, CHART_SIZE);
        let root = bitmap::TextBitmap::new(bitmap, font).into_drawing_area();
        draw(&root, title, points).map_err(|e| chart_error("PNG", e))?;
        root.present().map_err(|e| chart_error("PNG", e))?;
    }
    let png_error = |e: png::EncodingError| BenchError::Chart { format: "PNG", message: e.to_string() };
    let mut encoded = Vec::new();
    let mut encoder = png::Encoder::new(&mut encoded, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(png_error)?;
    writer.write_image_data(&pixels).map_err(png_error)?;
    writer.finish().map_err(png_error)?;
    Ok(encoded)
}

/// Writes the chart as SVG to `svg` and as PNG to `png`, creating their folders.
///
/// # Errors
/// As [`render_svg`] and [`render_png`] (nothing is written then), and [`BenchError::Write`] naming the
/// file that could not be written.
pub fn write_chart(title: &str, points: &[ChartPoint], svg: &Path, png: &Path) -> Result<(), BenchError> {
    let svg_text = render_svg(title, points)?;
    let png_bytes = render_png(title, points)?;
    write_file(svg, svg_text.as_bytes())?;
    write_file(png, &png_bytes)
}

/// The checks plotters cannot make: a log axis needs positive speeds, the y axis fractions.
fn validate(points: &[ChartPoint]) -> Result<(), BenchError> {
    if points.is_empty() {
        return Err(BenchError::EmptyInput { what: "chart points" });
    }
    for point in points {
        let invalid =
            |field, value, reason| BenchError::InvalidChartPoint { label: point.label.clone(), field, value, reason };
        let speed = point.samples_per_second;
        if !(speed.is_finite() && speed > 0.0) {
            return Err(invalid("samples_per_second", speed, "must be finite and above zero (log axis)"));
        }
        if let Some(accuracy) = point.accuracy
            && !(0.0..=1.0).contains(&accuracy)
        {
            return Err(invalid("accuracy", accuracy, "must be a fraction in [0, 1]"));
        }
    }
    Ok(())
}

/// Registers the bundled font with plotters, once per process.
fn register_bundled_font() -> Result<(), BenchError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    // Also as plotters' default family, for any text drawn without a family of ours.
    let register =
        || [FAMILY, "sans-serif"].iter().all(|family| register_font(family, FontStyle::Normal, FONT).is_ok());
    if *REGISTERED.get_or_init(register) { Ok(()) } else { Err(font_error("invalid font")) }
}

fn font_error(reason: &str) -> BenchError {
    BenchError::Chart { format: "font", message: format!("the bundled assets/DejaVuSans.ttf: {reason}") }
}

fn chart_error<E: std::error::Error + Send + Sync>(format: &'static str, error: DrawingAreaErrorKind<E>) -> BenchError {
    BenchError::Chart { format, message: error.to_string() }
}

type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// A point's marker on the canvas, and where its label may go.
struct Placed {
    index: usize,
    /// Marker centre, canvas pixels.
    at: (i32, i32),
    /// The plotting area it belongs to (its label stays inside).
    bounds: PixelBox,
    measured: bool,
}

/// A rectangle in canvas pixels: left, top, right, bottom.
#[derive(Clone, Copy, Debug)]
struct PixelBox {
    left: i32,
    top: i32,
    right: i32,
    bottom: i32,
}

impl PixelBox {
    fn from_ranges(x: Range<i32>, y: Range<i32>) -> Self {
        Self { left: x.start, top: y.start, right: x.end, bottom: y.end }
    }

    fn around((x, y): (i32, i32), radius: i32) -> Self {
        Self { left: x - radius, top: y - radius, right: x + radius, bottom: y + radius }
    }

    fn overlap(&self, other: &PixelBox) -> i64 {
        let width = (self.right.min(other.right) - self.left.max(other.left)).max(0);
        let height = (self.bottom.min(other.bottom) - self.top.max(other.top)).max(0);
        i64::from(width) * i64::from(height)
    }

    fn area(&self) -> i64 {
        i64::from(self.right - self.left) * i64::from(self.bottom - self.top)
    }
}

/// The whole chart on `root`: title, the accuracy chart, the band of unmeasured points, labels.
fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, title: &str, points: &[ChartPoint]) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let area = root.margin(8, 0, 0, 0).titled(title, (FAMILY, TITLE_SIZE).into_font().color(&BLACK))?;
    let has_band = points.iter().any(|p| p.accuracy.is_none());
    let (top, band) = if has_band {
        let (_, height) = area.dim_in_pixel();
        let (top, band) = area.split_vertically(height.saturating_sub(BAND_HEIGHT));
        (top, Some(band))
    } else {
        (area, None)
    };

    let y_range = accuracy_axis(points);
    let tick_font = (FAMILY, TICK_SIZE).into_font();
    let desc_font = (FAMILY, AXIS_DESC_SIZE).into_font();
    let x_desc = "inference samples/s (log scale)";
    let mut placed = Vec::new();
    let mut obstacles = Vec::new();

    let mut chart = ChartBuilder::on(&top)
        .margin_left(10)
        .margin_right(30)
        .margin_top(10)
        .margin_bottom(if has_band { 0 } else { 10 })
        .x_label_area_size(if has_band { 0 } else { X_LABEL_AREA })
        .y_label_area_size(Y_LABEL_AREA)
        .build_cartesian_2d(speed_axis(points), y_range)?;
    let speed_label = |v: &f64| format_speed(*v);
    let accuracy_label = |v: &f64| format_percent(*v);
    let mut mesh = chart.configure_mesh();
    mesh.x_label_formatter(&speed_label)
        .y_label_formatter(&accuracy_label)
        .y_desc("accuracy")
        .x_label_style(tick_font.clone())
        .y_label_style(tick_font.clone())
        .axis_desc_style(desc_font.clone())
        .y_max_light_lines(1)
        .light_line_style(RGBColor(238, 238, 238))
        .bold_line_style(RGBColor(205, 205, 205));
    if !has_band {
        mesh.x_desc(x_desc);
    }
    mesh.draw()?;
    let bounds = plotting_box(&chart);
    for (index, point) in points.iter().enumerate() {
        if let Some(accuracy) = point.accuracy {
            let at = chart.backend_coord(&(point.samples_per_second, accuracy));
            placed.push(Placed { index, at, bounds, measured: true });
        }
    }

    if let Some(band) = band {
        let mut band_chart = ChartBuilder::on(&band)
            .margin_left(10)
            .margin_right(30)
            .margin_top(12)
            .margin_bottom(10)
            .x_label_area_size(X_LABEL_AREA)
            .y_label_area_size(Y_LABEL_AREA)
            .build_cartesian_2d(speed_axis(points), 0.0..1.0f64)?;
        band_chart.plotting_area().fill(&RGBColor(246, 246, 246))?;
        band_chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(0)
            .x_label_formatter(&speed_label)
            .x_desc(x_desc)
            .x_label_style(tick_font)
            .axis_desc_style(desc_font)
            .light_line_style(RGBColor(232, 232, 232))
            .bold_line_style(RGBColor(212, 212, 212))
            .draw()?;
        let bounds = plotting_box(&band_chart);
        let caption = (FAMILY, LABEL_SIZE).into_font().color(&RGBColor(90, 90, 90));
        let (caption_width, caption_height) = root.estimate_text_size(BAND_CAPTION, &caption)?;
        let at = (bounds.left + 6, bounds.top + 4);
        root.draw_text(BAND_CAPTION, &caption, at)?;
        obstacles.push(PixelBox {
            left: at.0,
            top: at.1,
            right: at.0 + px(caption_width),
            bottom: at.1 + px(caption_height) + 4,
        });
        // Markers on the middle of what the caption leaves.
        let marker_y = (bounds.top + px(caption_height) + 8 + bounds.bottom) / 2;
        for (index, point) in points.iter().enumerate() {
            if point.accuracy.is_none() {
                let (x, _) = band_chart.backend_coord(&(point.samples_per_second, 0.0));
                placed.push(Placed { index, at: (x, marker_y), bounds, measured: false });
            }
        }
    }

    draw_points(root, points, &placed, obstacles)
}

/// Markers, then labels placed greedily where they cover the fewest markers, other labels and edges.
fn draw_points<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    points: &[ChartPoint],
    placed: &[Placed],
    mut obstacles: Vec<PixelBox>,
) -> DrawResult<DB> {
    for marker in placed {
        let colour = PALETTE[marker.index % PALETTE.len()];
        if marker.measured {
            root.draw(&Circle::new(marker.at, MARKER_RADIUS, colour.filled()))?;
        } else {
            // Hollow: a two-pixel ring (plotters' wide strokes draw circles unevenly).
            root.draw(&Circle::new(marker.at, MARKER_RADIUS, WHITE.filled()))?;
            root.draw(&Circle::new(marker.at, MARKER_RADIUS, colour.stroke_width(1)))?;
            root.draw(&Circle::new(marker.at, MARKER_RADIUS - 1, colour.stroke_width(1)))?;
        }
        obstacles.push(PixelBox::around(marker.at, MARKER_RADIUS + 2));
    }
    // Left to right, so neighbours alternate sides instead of piling up.
    let mut order: Vec<&Placed> = placed.iter().collect();
    order.sort_by_key(|marker| (marker.at.0, marker.at.1));
    for marker in order {
        let point = &points[marker.index];
        let colour = PALETTE[marker.index % PALETTE.len()];
        let font = (FAMILY, LABEL_SIZE).into_font().color(&colour);
        let (width, height) = root.estimate_text_size(&point.label, &font)?;
        let (width, height) = (px(width), px(height).max(LABEL_SIZE as i32));
        let spot = best_spot(marker, width, height, &obstacles);
        if let Some((from, to)) = spot.leader {
            root.draw(&PathElement::new(vec![from, to], colour.mix(0.6).stroke_width(1)))?;
            obstacles.push(segment_box(from, to));
        }
        root.draw_text(&point.label, &font, (spot.rect.left, spot.rect.top))?;
        obstacles.push(spot.rect);
    }
    Ok(())
}

/// Where a label goes.
struct Spot {
    rect: PixelBox,
    /// Far from its marker: the line that joins them, from the marker's edge to the label's.
    leader: Option<((i32, i32), (i32, i32))>,
}

/// The line from a marker at `(x, y)` to the nearest edge of the label `rect` above or below it.
fn leader_line((x, y): (i32, i32), rect: &PixelBox) -> ((i32, i32), (i32, i32)) {
    let to_x = x.clamp(rect.left, rect.right);
    if rect.top > y {
        ((x, y + MARKER_RADIUS + 2), (to_x, rect.top))
    } else {
        ((x, y - MARKER_RADIUS - 2), (to_x, rect.bottom))
    }
}

/// A line's bounding box, a pixel wider each side.
fn segment_box((x0, y0): (i32, i32), (x1, y1): (i32, i32)) -> PixelBox {
    PixelBox { left: x0.min(x1) - 1, top: y0.min(y1), right: x0.max(x1) + 1, bottom: y0.max(y1) }
}

/// The candidate position (right, left, above, below, then further out with a leader line) whose label,
/// and leader, cover the least of the other markers, labels, leaders and the outside of the plot.
fn best_spot(marker: &Placed, width: i32, height: i32, obstacles: &[PixelBox]) -> Spot {
    let (x, y) = marker.at;
    let gap = MARKER_RADIUS + 7;
    let centred = x - width / 2;
    let mut candidates = vec![
        (x + gap, y - height / 2, false),
        (x - gap - width, y - height / 2, false),
        (centred, y - gap - height, false),
        (centred, y + gap, false),
        (x + gap, y - gap - height + 2, false),
        (x + gap, y + gap - 2, false),
        (x - gap - width, y - gap - height + 2, false),
        (x - gap - width, y + gap - 2, false),
    ];
    for step in 1..=3 {
        let lift = step * (height + 4);
        candidates.extend([
            (centred, y - gap - height - lift, true),
            (centred, y + gap + lift, true),
            (x + gap, y - gap - height - lift, true),
            (x + gap, y + gap + lift, true),
            (x - gap - width, y - gap - height - lift, true),
            (x - gap - width, y + gap + lift, true),
        ]);
    }
    let mut best: Option<(i64, Spot)> = None;
    for (left, top, leader) in candidates {
        let rect = PixelBox { left, top, right: left + width, bottom: top + height };
        let inside = rect.overlap(&marker.bounds);
        let outside = rect.area() - inside;
        let leader = leader.then(|| leader_line(marker.at, &rect));
        let line = leader.map(|(from, to)| segment_box(from, to));
        let covered: i64 =
            obstacles.iter().map(|o| rect.overlap(o) + line.as_ref().map_or(0, |line| 4 * line.overlap(o))).sum();
        let cost = covered + 3 * outside;
        if best.as_ref().is_none_or(|(best_cost, _)| cost < *best_cost) {
            best = Some((cost, Spot { rect, leader }));
        }
        if cost == 0 {
            break;
        }
    }
    let right_of_marker =
        PixelBox { left: x + gap, top: y - height / 2, right: x + gap + width, bottom: y + height / 2 };
    best.map_or(Spot { rect: right_of_marker, leader: None }, |(_, spot)| spot)
}

fn plotting_box<DB: DrawingBackend, X: Ranged, Y: Ranged>(chart: &ChartContext<'_, DB, Cartesian2d<X, Y>>) -> PixelBox {
    let (x, y) = chart.plotting_area().get_pixel_range();
    PixelBox::from_ranges(x, y)
}

fn px(size: u32) -> i32 {
    i32::try_from(size).unwrap_or(i32::MAX)
}

/// The x axis: logarithmic, at least 1.2 decades, half a decade of margin beyond the extreme points;
/// ticks at 1-2-5 (or coarser) steps so that every range has a few labels.
fn speed_axis(points: &[ChartPoint]) -> WithKeyPoints<LogCoord<f64>> {
    let (min, max) = points
        .iter()
        .map(|p| p.samples_per_second)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    // Within what an f64 holds (10^±300), whatever the speeds.
    let (mut lo, mut hi) = ((min.log10() - 0.35).max(-300.0), (max.log10() + 0.35).min(300.0));
    let short = 1.2 - (hi - lo);
    if short > 0.0 {
        lo -= short / 2.0;
        hi += short / 2.0;
    }
    let (start, end) = (10f64.powf(lo), 10f64.powf(hi));
    // Over a dozen decades (not a real comparison, but drawable): every few powers of ten, no minor lines.
    let decade_step = ((hi - lo) / 10.0).ceil().max(1.0) as i32;
    let ticks = |mantissas: &[f64]| -> Vec<f64> {
        let mut ticks = Vec::new();
        for exponent in (lo.floor() as i32..=hi.ceil() as i32).filter(|e| e % decade_step == 0) {
            for mantissa in mantissas {
                let value = mantissa * 10f64.powi(exponent);
                if (start..=end).contains(&value) {
                    ticks.push(value);
                }
            }
        }
        ticks
    };
    let bold = [&[1.0][..], &[1.0, 3.0], &[1.0, 2.0, 5.0], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]]
        .into_iter()
        .map(&ticks)
        .find(|ticks| ticks.len() >= 3)
        .unwrap_or_default();
    let light = if decade_step == 1 { ticks(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]) } else { Vec::new() };
    (start..end).log_scale().with_key_points(bold).with_light_points(light)
}

/// The y axis: the measured accuracies with a margin (at least 10 points wide, within 0–100%); 40–100%
/// when none was measured.
fn accuracy_axis(points: &[ChartPoint]) -> Range<f64> {
    let measured: Vec<f64> = points.iter().filter_map(|p| p.accuracy).collect();
    if measured.is_empty() {
        return 0.4..1.0;
    }
    let min = measured.iter().copied().fold(f64::INFINITY, f64::min);
    let max = measured.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let pad = ((max - min) * 0.15).max(0.02);
    let (mut lo, mut hi) = (min - pad, max + pad);
    let short = 0.1 - (hi - lo);
    if short > 0.0 {
        lo -= short / 2.0;
        hi += short / 2.0;
    }
    if lo < 0.0 {
        hi = (hi - lo).min(1.0);
        lo = 0.0;
    }
    if hi > 1.0 {
        lo = (lo - (hi - 1.0)).max(0.0);
        hi = 1.0;
    }
    lo..hi
}

/// An accuracy tick as a percentage, one decimal at most (85%, 85.5%).
fn format_percent(fraction: f64) -> String {
    let text = format!("{:.1}", fraction * 100.0);
    format!("{}%", text.strip_suffix(".0").unwrap_or(&text))
}

/// A speed tick: three significant digits at most, no trailing zeros (0.05, 2.5, 120, 1000).
fn format_speed(value: f64) -> String {
    let decimals = (2 - value.abs().log10().floor() as i32).max(0) as usize;
    let text = format!("{value:.decimals$}");
    if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.').to_string() } else { text }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speed_ticks_are_short() {
        assert_eq!(format_speed(0.05), "0.05");
        assert_eq!(format_speed(0.30000000000000004), "0.3");
        assert_eq!(format_speed(2.0), "2");
        assert_eq!(format_speed(1000.0), "1000");
        assert_eq!(format_speed(12.5), "12.5");
        assert_eq!((format_percent(0.86), format_percent(0.855)), ("86%".to_string(), "85.5%".to_string()));
    }

    #[test]
    fn accuracy_axis_keeps_a_margin_inside_zero_to_one() {
        let point = |acc| ChartPoint::new("m", 1.0, Some(acc));
        let range = accuracy_axis(&[point(0.85), point(0.86)]);
        assert!(range.start < 0.85 && range.end > 0.86 && range.end - range.start >= 0.1 - 1e-12);
        let range = accuracy_axis(&[point(0.99)]);
        assert!(range.end <= 1.0 && range.start < 0.99);
        assert_eq!(accuracy_axis(&[ChartPoint::new("r", 1.0, None)]), 0.4..1.0);
    }

    #[test]
    fn extreme_values_draw() {
        let points = [
            ChartPoint::new("", f64::MIN_POSITIVE, Some(0.0)),
            ChartPoint::new("fast", f64::MAX, Some(1.0)),
            ChartPoint::new("none", 1.0, None),
        ];
        assert!(render_svg("", &points).is_ok());
        assert!(render_png("extremes", &points).is_ok());
    }

    #[test]
    fn invalid_points_are_named() {
        let error = validate(&[ChartPoint::new("cpu", -1.0, None)]).unwrap_err();
        assert!(error.to_string().contains("cpu") && error.to_string().contains("samples_per_second"));
        let error = validate(&[ChartPoint::new("gpu", 1.0, Some(85.0))]).unwrap_err();
        assert!(error.to_string().contains("accuracy"));
    }
}
