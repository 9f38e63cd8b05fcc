//! Line charts for training curves and experiment plots, drawn with [plotters] into an RGB
//! bitmap, their text set in DejaVu Sans (embedded, so no system font is needed): a title, axes
//! with "nice" ticks (steps of 1, 2 or 5 x 10^k, labelled compactly: `0.25`, `1.5k`, `1e-3`),
//! light grid lines, axis labels, an optional log-scale y axis with decades as ticks, and a
//! legend placed in the plot where it covers the fewest of the lines' pixels (a corner if one
//! is clear).
//!
//! ```
//! use retina_cli::plot::{Chart, Series};
//!
//! let loss = (0..=100).map(|i| (f64::from(i) * 30.0, 2.0 * (-f64::from(i) / 30.0).exp())).collect();
//! let chart = Chart {
//!     title: "Training loss".into(),
//!     x_label: "step".into(),
//!     y_label: "loss".into(),
//!     log_y: true,
//!     series: vec![Series::new("train", [230, 25, 75], loss)],
//!     ..Chart::default()
//! };
//! let image = chart.render()?; // or chart.save_png("loss.png")?
//! assert_eq!(image.dimensions(), (800, 500));
//! # Ok::<(), retina_wgpu::Error>(())
//! ```
//!
//! Points with a non-finite coordinate (and, on a log axis, a y that is not positive) are
//! skipped; the line joins the points either side of them. Axes span the data, widened to whole
//! tick steps; a range of one value is padded so it still shows as a level line mid-plot.

use std::path::Path;
use std::sync::OnceLock;

use ab_glyph::{Font, FontRef, ScaleFont, point};
use image::RgbImage;
use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, Ranged, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::element::MultiLineText;
use plotters::prelude::{
    BitMapBackend, ChartBuilder, Circle, Color, FontDesc, FontFamily, FontStyle, IntoDrawingArea, PathElement,
    RGBColor, Rectangle, SeriesLabelPosition, ShapeStyle, TextStyle,
};
use plotters::style::register_font;
use plotters_backend::text_anchor::{HPos, VPos};
use plotters_backend::{BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingBackend, DrawingErrorKind};

use retina_wgpu::data::draw;
use retina_wgpu::{Error, Result};

/// One line on a [`Chart`]: its legend name, colour and `(x, y)` points, joined in order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Series {
    /// The name shown in the legend; a series with an empty name is left out of the legend.
    pub name: String,
    /// The line's RGB colour ([`draw::palette`] gives distinct ones).
    pub colour: [u8; 3],
    /// The points, joined by straight lines in this order; non-finite ones are skipped.
    pub points: Vec<(f64, f64)>,
}

impl Series {
    /// A series named `name` drawn in `colour` through `points`.
    pub fn new(name: impl Into<String>, colour: [u8; 3], points: Vec<(f64, f64)>) -> Self {
        Series {
            name: name.into(),
            colour,
            points,
        }
    }
}

/// A line chart: one or more [`Series`] on shared axes. [`Chart::default`] is an empty 800 x 500
/// chart with a linear y axis; fill in the fields that matter.
#[derive(Clone, Debug, PartialEq)]
pub struct Chart {
    /// Drawn centred above the plot, a little larger than the other text; empty for none.
    pub title: String,
    /// Drawn centred below the x axis; empty for none.
    pub x_label: String,
    /// Drawn upwards along the y axis; empty for none.
    pub y_label: String,
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
    /// A logarithmic y axis (decades as ticks); points with `y <= 0` are then skipped.
    pub log_y: bool,
    /// The lines, drawn in order (later ones on top) and listed in this order in the legend.
    pub series: Vec<Series>,
}

impl Default for Chart {
    fn default() -> Self {
        Chart {
            title: String::new(),
            x_label: String::new(),
            y_label: String::new(),
            width: 800,
            height: 500,
            log_y: false,
            series: Vec::new(),
        }
    }
}

const BACKGROUND: [u8; 3] = [255, 255, 255];
const TEXT: [u8; 3] = [34, 34, 34];
const FRAME: [u8; 3] = [110, 110, 110];
const GRID: [u8; 3] = [228, 228, 228];
const MINOR_GRID: [u8; 3] = [243, 243, 243];
const LEGEND_BORDER: [u8; 3] = [190, 190, 190];

/// Most ticks an axis gets (and, for a linear axis, fewest is 4).
const MAX_TICKS: usize = 8;

/// A tick on an axis: its position in axis units (`log10(y)` on a log axis) and its label;
/// minor ticks (the 2..9 x 10^k of a log axis) have no label and a fainter grid line.
#[derive(Clone, Debug, PartialEq)]
struct Tick {
    at: f64,
    label: Option<String>,
}

/// An axis: the span `lo..hi` in axis units (log10 of the value on a log axis) and its ticks.
#[derive(Clone, Debug, PartialEq)]
struct Axis {
    lo: f64,
    hi: f64,
    ticks: Vec<Tick>,
}

impl Axis {
    /// A value in axis units, `None` where it cannot be shown (non-finite; `<= 0` on a log axis).
    fn to_axis(value: f64, log: bool) -> Option<f64> {
        match (value.is_finite(), log) {
            (false, _) => None,
            (true, false) => Some(value),
            (true, true) => (value > 0.0).then(|| value.log10()),
        }
    }

    /// A linear axis over data in `lo..=hi` (finite, `lo <= hi`).
    fn linear(lo: f64, hi: f64) -> Axis {
        let (lo, hi) = pad_range(lo, hi);
        let (step, first, last) = nice_step(lo, hi);
        let values: Vec<f64> = (first..=last).map(|i| i as f64 * step).collect();
        let magnitude = values.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let ticks = values
            .iter()
            .map(|&v| Tick {
                at: v,
                label: Some(format_tick(v, step, magnitude)),
            })
            .collect();
        Axis {
            lo: first as f64 * step,
            hi: last as f64 * step,
            ticks,
        }
    }

    /// A log axis over data whose log10 lies in `lo..=hi` (finite, `lo <= hi`): whole decades,
    /// every `k`-th one labelled (`k` of 1, 2, 5, 10, ...) so that 4 to 8 are; 2 x and 5 x each
    /// decade are labelled too when the data spans only one or two decades.
    fn log(lo: f64, hi: f64) -> Axis {
        let mut first = (lo + 1e-9).floor();
        let mut last = (hi - 1e-9).ceil().max(first);
        if first == last {
            first -= 1.0;
            last += 1.0;
        }
        let decades = (last - first) as i64;
        // log10 of an f64 lies within -324..=309, so 100 decades a tick always suffices.
        let (k, e0, e1) = [1i64, 2, 5, 10, 20, 50, 100]
            .into_iter()
            .map(|k| {
                let e0 = (first as i64).div_euclid(k) * k;
                let e1 = -(-(last as i64)).div_euclid(k) * k;
                (k, e0, e1)
            })
            .find(|&(k, e0, e1)| ((e1 - e0) / k + 1) as usize <= MAX_TICKS)
            .expect("100-decade ticks fit");
        let mut ticks = Vec::new();
        for e in (e0..=e1).step_by(k as usize) {
            let decade = 10f64.powi(e as i32);
            ticks.push(Tick {
                at: e as f64,
                label: Some(format_tick(decade, decade, decade)),
            });
            if k == 1 && e < e1 {
                for m in 2..10 {
                    let v = f64::from(m) * decade;
                    let label = (decades <= 2 && (m == 2 || m == 5)).then(|| format_tick(v, decade, v));
                    ticks.push(Tick { at: v.log10(), label });
                }
            }
        }
        Axis {
            lo: e0 as f64,
            hi: e1 as f64,
            ticks,
        }
    }
}

/// An axis is plotters' coordinate for it: mapped as a linear range of axis units, its labelled
/// ticks as the bold key points (grid lines, tick marks and labels) and the others as the light
/// ones (fainter grid lines).
impl Ranged for Axis {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        RangedCoordf64::from(self.lo..self.hi).map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        let light = hint.weight().allow_light_points();
        self.ticks
            .iter()
            .filter(|t| t.label.is_none() == light)
            .map(|t| t.at)
            .collect()
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

impl ValueFormatter<f64> for Axis {
    fn format_ext(&self, value: &f64) -> String {
        let tick = self.ticks.iter().find(|t| t.at == *value);
        tick.and_then(|t| t.label.clone()).unwrap_or_default()
    }
}

/// Widens a range of (nearly) one value so it has room: by 10% of the value each way, or by 1
/// about zero.
fn pad_range(lo: f64, hi: f64) -> (f64, f64) {
    let mid = 0.5 * (lo + hi);
    if hi - lo > mid.abs() * 1e-9 {
        (lo, hi)
    } else if mid == 0.0 {
        (-1.0, 1.0)
    } else {
        (mid - 0.1 * mid.abs(), mid + 0.1 * mid.abs())
    }
}

/// The nice tick step for `lo..=hi` (`lo < hi`): the smallest of 1, 2 or 5 x 10^k that needs at
/// most [`MAX_TICKS`] ticks from a multiple of it at or below `lo` to one at or above `hi`.
/// Returns the step and the multiples of it at the first and last ticks; there are 4 to 8.
fn nice_step(lo: f64, hi: f64) -> (f64, i64, i64) {
    // Quotients within a hair of a whole number count as whole, so 3000 / 500 gives 6, not 7.
    let snap = |q: f64| {
        if (q - q.round()).abs() < 1e-9 * q.abs().max(1.0) {
            q.round()
        } else {
            q
        }
    };
    let mut exponent = ((hi - lo).log10().floor() as i32) - 2;
    loop {
        for mantissa in [1.0, 2.0, 5.0] {
            let step = mantissa * 10f64.powi(exponent);
            let first = snap(lo / step).floor();
            let last = snap(hi / step).ceil();
            if last - first < MAX_TICKS as f64 {
                return (step, first as i64, last as i64);
            }
        }
        exponent += 1;
    }
}

/// A compact tick label for `value` on an axis ticked every `step` whose largest tick is
/// `magnitude` in size: `0.25`, `1.5k`, `2M`, `1e-3`. Axes of small numbers (all below 0.01) are
/// labelled in scientific notation, large ones with k, M, G or T suffixes; decimals come from
/// the step, with trailing zeros dropped.
fn format_tick(value: f64, step: f64, magnitude: f64) -> String {
    if value.abs() < step.abs() * 1e-6 || value == 0.0 {
        return "0".into();
    }
    let exponent_of = |x: f64| (x.abs().log10() + 1e-9).floor() as i32;
    let step_exp = exponent_of(step);
    let exp = exponent_of(value);
    let fixed = |x: f64, decimals: i32| {
        let s = format!("{:.*}", decimals.clamp(0, 12) as usize, x);
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    };
    let mag_exp = exponent_of(magnitude);
    if mag_exp < -2 || exp >= 15 {
        let decimals = (exp - step_exp).clamp(0, 12);
        let mut mantissa = fixed(value / 10f64.powi(exp), decimals);
        let mut exp = exp;
        // 9.9996e-4 may round up to a mantissa of 10.
        if mantissa.trim_start_matches('-').starts_with("10") {
            exp += 1;
            mantissa = fixed(value / 10f64.powi(exp), decimals);
        }
        format!("{mantissa}e{exp}")
    } else if exp >= 3 {
        let tier = (exp / 3).min(4);
        let suffix = ["", "k", "M", "G", "T"][tier as usize];
        fixed(value / 10f64.powi(3 * tier), 3 * tier - step_exp) + suffix
    } else {
        fixed(value, -step_exp)
    }
}

/// DejaVu Sans 2.37, the font of every chart's text, embedded so that no system font is needed:
/// `DejaVuSans.ttf` of Debian's `fonts-dejavu-core` package (2.37-6), from
/// <https://dejavu-fonts.github.io/>; its licence (Bitstream Vera's, DejaVu's changes in the
/// public domain) is `assets/DejaVuSans-LICENSE.txt`, Debian's copyright file of the package.
static DEJAVU_SANS: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// The name the font is registered under in plotters' (process-wide) font table.
const FONT_FAMILY: &str = "retina-cli DejaVu Sans";

/// The charts' font, parsed and registered with plotters (which measures text with it, as in the
/// legend's box) on first use, and its family name for plotters.
fn font() -> Result<(&'static FontRef<'static>, FontFamily<'static>)> {
    static FONT: OnceLock<Option<FontRef<'static>>> = OnceLock::new();
    let font = FONT.get_or_init(|| {
        register_font(FONT_FAMILY, FontStyle::Normal, DEJAVU_SANS).ok()?;
        FontRef::try_from_slice(DEJAVU_SANS).ok()
    });
    match font {
        Some(font) => Ok((font, FontFamily::Name(FONT_FAMILY))),
        None => Err(Error::invalid("the embedded DejaVu Sans font cannot be read")),
    }
}

fn colour(rgb: [u8; 3]) -> RGBColor {
    RGBColor(rgb[0], rgb[1], rgb[2])
}

/// A line `width` pixels wide in `rgb`.
fn pen(rgb: [u8; 3], width: u32) -> ShapeStyle {
    Color::stroke_width(&colour(rgb), width)
}

/// plotters' bitmap backend with its text set by ab_glyph here. plotters 0.3.7's own ab_glyph
/// text drops each glyph's left side bearing, so letters sit unevenly ("AP50" reads "AP5 0",
/// "box" reads "bo x"), and puts the baseline half the text size below the top whatever the font.
/// Here glyphs go where their outlines say, and a text's box runs from the capitals' top to the
/// descenders' bottom: `Top` puts the capitals' top at the anchor, `Center` their middle (so
/// numbers centre on their tick) and `Bottom` the descenders' bottom.
struct Canvas<'a> {
    bitmap: BitMapBackend<'a>,
    font: &'static FontRef<'static>,
}

type CanvasResult<T> = std::result::Result<T, DrawingErrorKind<<BitMapBackend<'static> as DrawingBackend>::ErrorType>>;

/// A text's width and the heights of the capitals and the descenders (positive) in pixels.
fn text_metrics(font: &FontRef<'static>, size: f64, text: &str) -> (f32, f32, f32) {
    let scaled = font.as_scaled(size as f32);
    let mut width = 0.0;
    let mut prev = None;
    for c in text.chars() {
        let id = scaled.glyph_id(c);
        width += prev.map_or(0.0, |p| scaled.kern(p, id)) + scaled.h_advance(id);
        prev = Some(id);
    }
    // (ab_glyph's unscaled bounds hold the outline's top, y up, in `min.y`.)
    let cap = font
        .outline(font.glyph_id('H'))
        .map_or(scaled.ascent(), |o| o.bounds.min.y * scaled.v_scale_factor());
    (width, cap, -scaled.descent())
}

impl DrawingBackend for Canvas<'_> {
    type ErrorType = <BitMapBackend<'static> as DrawingBackend>::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.bitmap.get_size()
    }

    fn ensure_prepared(&mut self) -> CanvasResult<()> {
        self.bitmap.ensure_prepared()
    }

    fn present(&mut self) -> CanvasResult<()> {
        self.bitmap.present()
    }

    fn draw_pixel(&mut self, point: BackendCoord, colour: BackendColor) -> CanvasResult<()> {
        self.bitmap.draw_pixel(point, colour)
    }

    fn draw_line<S: BackendStyle>(&mut self, from: BackendCoord, to: BackendCoord, style: &S) -> CanvasResult<()> {
        self.bitmap.draw_line(from, to, style)
    }

    fn draw_rect<S: BackendStyle>(
        &mut self,
        a: BackendCoord,
        b: BackendCoord,
        style: &S,
        fill: bool,
    ) -> CanvasResult<()> {
        self.bitmap.draw_rect(a, b, style, fill)
    }

    fn blit_bitmap(&mut self, pos: BackendCoord, size: (u32, u32), src: &[u8]) -> CanvasResult<()> {
        self.bitmap.blit_bitmap(pos, size, src)
    }

    fn estimate_text_size<S: BackendTextStyle>(&self, text: &str, style: &S) -> CanvasResult<(u32, u32)> {
        let (w, cap, descent) = text_metrics(self.font, style.size(), text);
        Ok((w.ceil() as u32, (cap + descent).ceil() as u32))
    }

    fn draw_text<S: BackendTextStyle>(&mut self, text: &str, style: &S, pos: BackendCoord) -> CanvasResult<()> {
        let colour = style.color();
        if colour.alpha == 0.0 {
            return Ok(());
        }
        let (width, cap, descent) = text_metrics(self.font, style.size(), text);
        let mut x = match style.anchor().h_pos {
            HPos::Left => 0.0,
            HPos::Center => -width / 2.0,
            HPos::Right => -width,
        };
        let baseline = match style.anchor().v_pos {
            VPos::Top => cap,
            VPos::Center => cap / 2.0,
            VPos::Bottom => -descent,
        };
        let scaled = self.font.as_scaled(style.size() as f32);
        let transform = style.transform();
        let mut outcome = Ok(());
        let mut prev = None;
        for c in text.chars() {
            let id = scaled.glyph_id(c);
            x += prev.map_or(0.0, |p| scaled.kern(p, id));
            let glyph = id.with_scale_and_position(scaled.scale(), point(x, baseline));
            if let Some(outline) = self.font.outline_glyph(glyph) {
                let min = outline.px_bounds().min;
                outline.draw(|gx, gy, coverage| {
                    let (dx, dy) = transform.transform(min.x as i32 + gx as i32, min.y as i32 + gy as i32);
                    let ink = BackendColor {
                        alpha: colour.alpha * f64::from(coverage),
                        rgb: colour.rgb,
                    };
                    if outcome.is_ok() && coverage > 0.0 {
                        outcome = self.bitmap.draw_pixel((pos.0 + dx, pos.1 + dy), ink);
                    }
                });
            }
            x += scaled.h_advance(id);
            prev = Some(id);
        }
        outcome
    }
}

/// The pixels along the line through `points` (a lone point's own pixel), a pixel apart.
fn line_pixels(points: &[(i32, i32)]) -> Vec<(i32, i32)> {
    let mut pixels: Vec<(i32, i32)> = points.iter().copied().take(1).collect();
    for pair in points.windows(2) {
        let ((x0, y0), (x1, y1)) = (pair[0], pair[1]);
        let steps = (x1 - x0).abs().max((y1 - y0).abs()).max(1);
        pixels.extend((1..=steps).map(|i| (x0 + (x1 - x0) * i / steps, y0 + (y1 - y0) * i / steps)));
    }
    pixels
}

/// Sizes in pixels, by the size of the chart: text and ticks for an 800 x 500 chart, and
/// smaller ones for small charts.
#[derive(Clone, Copy, Debug)]
struct Sizes {
    /// Tick labels, axis labels and the legend.
    text: f64,
    title: f64,
    tick: i32,
    margin: i32,
    /// Between an axis' tick labels and its label, and the legend's swatch and name.
    gap: i32,
    line: u32,
}

/// Everything [`Chart::draw`] works out before drawing: the axes and each series' points in
/// axis units.
struct Layout {
    x_axis: Axis,
    y_axis: Axis,
    series: Vec<Vec<(f64, f64)>>,
}

/// Where [`Chart::draw`] put things, for the tests: the plot area's pixels (inclusive; data at
/// the axes' `lo` lands on column `x.0` and row `y.1`, at `hi` on column `x.1` and row `y.0`) and
/// the legend's box (left, top, right, bottom; `None` without a legend).
#[derive(Clone, Debug, PartialEq)]
struct Frame {
    x: (i32, i32),
    y: (i32, i32),
    legend: Option<[i32; 4]>,
}

impl Chart {
    /// Draws the chart.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidParameter`] when there is nothing to plot (no series, or no point with
    /// finite coordinates, or on a log axis none with a positive y), when the values span more
    /// than an `f64` holds, when the image is too small for its labels (or over 2^26 pixels), or
    /// when plotters fails to draw it.
    pub fn render(&self) -> Result<RgbImage> {
        Ok(self.draw()?.0)
    }

    /// Draws the chart and writes it as a PNG at `path` (see [`draw::save_png`]).
    ///
    /// # Errors
    ///
    /// Those of [`Chart::render`], and [`Error::Io`] when the file cannot be written.
    pub fn save_png(&self, path: impl AsRef<Path>) -> Result<()> {
        draw::save_png(path, &self.render()?)
    }

    fn sizes(&self) -> Sizes {
        if self.width >= 560 && self.height >= 360 {
            Sizes {
                text: 17.0,
                title: 21.0,
                tick: 5,
                margin: 12,
                gap: 8,
                line: 2,
            }
        } else {
            Sizes {
                text: 11.0,
                title: 13.0,
                tick: 3,
                margin: 5,
                gap: 4,
                // (plotters' one-pixel lines leave gaps between short segments.)
                line: 2,
            }
        }
    }

    fn layout(&self) -> Result<Layout> {
        let series: Vec<Vec<(f64, f64)>> = self
            .series
            .iter()
            .map(|s| {
                s.points
                    .iter()
                    .filter_map(|&(x, y)| Some((Axis::to_axis(x, false)?, Axis::to_axis(y, self.log_y)?)))
                    .collect()
            })
            .collect();
        let all = || series.iter().flatten();
        if all().next().is_none() {
            let finite = self
                .series
                .iter()
                .flat_map(|s| &s.points)
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .count();
            return Err(Error::invalid(if self.series.is_empty() {
                format!("chart {:?} has no series to plot", self.title)
            } else if finite > 0 {
                format!(
                    "chart {:?} has a log-scale y axis but none of its {finite} finite points has y > 0",
                    self.title
                )
            } else {
                format!(
                    "chart {:?} has no points to plot: its {} series hold no point with finite x and y",
                    self.title,
                    self.series.len()
                )
            }));
        }
        let (mut x_lo, mut x_hi, mut y_lo, mut y_hi) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y) in all() {
            (x_lo, x_hi, y_lo, y_hi) = (x_lo.min(x), x_hi.max(x), y_lo.min(y), y_hi.max(y));
        }
        for (axis, lo, hi) in [("x", x_lo, x_hi), ("y", y_lo, y_hi)] {
            if !(hi - lo).is_finite() || !(0.5 * (lo + hi)).is_finite() || lo.abs().max(hi.abs()) > 1e300 {
                return Err(Error::invalid(format!(
                    "chart {:?}: the {axis} values span {lo:e} to {hi:e}, too wide to tick",
                    self.title
                )));
            }
        }
        let x_axis = Axis::linear(x_lo, x_hi);
        let y_axis = if self.log_y {
            Axis::log(y_lo, y_hi)
        } else {
            Axis::linear(y_lo, y_hi)
        };
        Ok(Layout { x_axis, y_axis, series })
    }

    /// Draws the chart with plotters into an RGB buffer: the grid and tick labels (plotters'
    /// mesh, with this module's ticks as its key points), the series, a frame round the plot
    /// and the legend where it covers the least of the lines.
    fn draw(&self) -> Result<(RgbImage, Frame)> {
        let layout = self.layout()?;
        let (xa, ya) = (&layout.x_axis, &layout.y_axis);
        let (glyphs, family) = font()?;
        let s = self.sizes();
        let failed =
            |e: &dyn std::fmt::Display| Error::invalid(format!("chart {:?}: plotters failed: {e}", self.title));
        let text_colour = colour(TEXT);
        let style = |size: f64| TextStyle::from(FontDesc::new(family, size, FontStyle::Normal)).color(&text_colour);
        let text = style(s.text);
        // Widths and heights as the canvas measures them.
        let extent = |t: &str, size: f64| {
            let (w, cap, descent) = text_metrics(glyphs, size, t);
            (w.ceil() as i32, (cap + descent).ceil() as i32)
        };
        let label_w = |t: &Tick| t.label.as_deref().map_or(0, |l| extent(l, s.text).0);
        let y_tick_w = ya.ticks.iter().map(label_w).max().unwrap_or(0);
        let last_x_tick_w = xa.ticks.last().map_or(0, label_w);
        let text_h = extent("0", s.text).1;

        // plotters puts tick labels twice the tick length off the axis and an axis' label at
        // the outer edge of its label area.
        let label_dist = 2 * s.tick;
        let mut x_area = label_dist + text_h + s.gap / 2;
        if !self.x_label.is_empty() {
            x_area += s.gap + text_h;
        }
        let mut y_area = label_dist + y_tick_w;
        if !self.y_label.is_empty() {
            y_area += s.gap + text_h;
        }
        let top = if self.title.is_empty() {
            s.margin + text_h / 2
        } else {
            s.margin / 2
        };
        let right = s.margin + last_x_tick_w / 2;
        let title_h = if self.title.is_empty() {
            0
        } else {
            // plotters' caption takes its text's height and a padding above and below.
            let h = extent(&self.title, s.title).1;
            h + 2 * (h / 2).min(5) + s.gap
        };
        let (w, h) = (i64::from(self.width), i64::from(self.height));
        let plot_w = w - i64::from(s.margin + y_area + right);
        let plot_h = h - i64::from(top + title_h + x_area + s.margin);
        if plot_w < 40 || plot_h < 40 {
            return Err(Error::invalid(format!(
                "chart {:?} is {}x{}, too small for its title, labels and ticks",
                self.title, self.width, self.height
            )));
        }
        if w * h > 1 << 26 {
            return Err(Error::invalid(format!(
                "chart {:?} is {}x{}, over 2^26 pixels",
                self.title, self.width, self.height
            )));
        }

        let mut buffer = vec![0u8; 3 * (w * h) as usize];
        let frame = {
            let canvas = Canvas {
                bitmap: BitMapBackend::with_buffer(&mut buffer, (self.width, self.height)),
                font: glyphs,
            };
            let root = canvas.into_drawing_area();
            root.fill(&colour(BACKGROUND)).map_err(|e| failed(&e))?;
            let mut builder = ChartBuilder::on(&root);
            builder
                .margin_top(top)
                .margin_bottom(s.margin)
                .margin_left(s.margin)
                .margin_right(right)
                .x_label_area_size(x_area)
                .y_label_area_size(y_area);
            if !self.title.is_empty() {
                builder.caption(&self.title, style(s.title));
            }
            let mut chart = builder
                .build_cartesian_2d(xa.clone(), ya.clone())
                .map_err(|e| failed(&e))?;
            let (xr, yr) = chart.plotting_area().get_pixel_range();

            let mut mesh = chart.configure_mesh();
            mesh.bold_line_style(colour(GRID))
                .light_line_style(colour(MINOR_GRID))
                .axis_style(colour(FRAME))
                .label_style(text.clone())
                .axis_desc_style(text.clone())
                .set_all_tick_mark_size(s.tick);
            if !self.x_label.is_empty() {
                mesh.x_desc(self.x_label.as_str());
            }
            if !self.y_label.is_empty() {
                mesh.y_desc(self.y_label.as_str());
            }
            mesh.draw().map_err(|e| failed(&e))?;

            // plotters centres a legend swatch on its row's box as its font estimate has it
            // (0.806 of the size high); the canvas sets the capitals from the row's top.
            let row_h = text.font.box_size("0").map_err(|e| failed(&e))?.1 as i32;
            let lift = row_h / 2 - (text_metrics(glyphs, s.text, "0").1 / 2.0).round() as i32;
            let swatch = (2.0 * s.text).round() as i32;
            for (series, points) in self.series.iter().zip(&layout.series) {
                // Segment by segment: plotters fills a wide polyline's outline as one polygon,
                // its mitred joins spiking at each turn of a noisy curve and its width varying
                // from 2 to 4 pixels with the slope; a segment's own outline keeps it even.
                let line = pen(series.colour, s.line);
                let anno = if let [point] = points[..] {
                    let dot = Circle::new(point, s.line + 1, colour(series.colour).filled());
                    chart.draw_series(std::iter::once(dot))
                } else {
                    chart.draw_series(points.windows(2).map(|w| PathElement::new([w[0], w[1]], line)))
                }
                .map_err(|e| failed(&e))?;
                if !series.name.is_empty() {
                    let wide = pen(series.colour, s.line + 1);
                    anno.label(series.name.as_str())
                        .legend(move |(x, y)| PathElement::new([(x, y - lift), (x + swatch, y - lift)], wide));
                }
            }
            // A frame round the plot, over the lines' ends: the axes' lines are its left and
            // bottom.
            root.draw(&Rectangle::new(
                [(xr.start - 1, yr.start - 1), (xr.end, yr.end)],
                colour(FRAME),
            ))
            .map_err(|e| failed(&e))?;

            let names: Vec<&str> = self
                .series
                .iter()
                .filter(|s| !s.name.is_empty())
                .map(|s| s.name.as_str())
                .collect();
            let legend = if names.is_empty() {
                None
            } else {
                let mut lines = MultiLineText::<(i32, i32), &str>::new((0, 0), text.clone());
                for name in &names {
                    lines.push_line(*name);
                }
                let (tw, th) = lines.estimate_dimension().map_err(|e| failed(&e))?;
                let pad = s.gap + 2;
                let (bw, bh) = (tw + swatch + s.gap + 2 * pad, th + 2 * pad);
                // The box's top left in the plot area, where it covers (or comes within a gap of)
                // the fewest of the lines' pixels; on a tie the first of the corners (top right,
                // top left, bottom right, bottom left), then of the places down the right side,
                // the left side and the middle.
                let (aw, ah) = (xr.end - xr.start, yr.end - yr.start);
                let inset = s.margin;
                let (left, right, top, bottom) = (inset, aw - inset - bw, inset, ah - inset - bh);
                let mut places = vec![(right, top), (left, top), (right, bottom), (left, bottom)];
                for x in [right, left, (aw - bw) / 2] {
                    places.extend((0..=8).map(|row| (x, top + (bottom - top) * row / 8)));
                }
                let ink: Vec<(i32, i32)> = layout
                    .series
                    .iter()
                    .flat_map(|p| line_pixels(&p.iter().map(|p| chart.backend_coord(p)).collect::<Vec<_>>()))
                    .collect();
                let covered = |(x, y): (i32, i32)| {
                    let (x0, y0) = (xr.start + x - s.gap, yr.start + y - s.gap);
                    let (x1, y1) = (x0 + bw + 2 * s.gap, y0 + bh + 2 * s.gap);
                    let inside = |&&(px, py): &&(i32, i32)| (x0..=x1).contains(&px) && (y0..=y1).contains(&py);
                    ink.iter().filter(inside).count()
                };
                let (x, y) = places.into_iter().min_by_key(|&c| covered(c)).expect("places");
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::Coordinate(x, y))
                    .margin(pad)
                    .legend_area_size(swatch + s.gap)
                    .label_font(text.clone())
                    .background_style(colour(BACKGROUND).filled())
                    .border_style(colour(LEGEND_BORDER))
                    .draw()
                    .map_err(|e| failed(&e))?;
                Some([xr.start + x, yr.start + y, xr.start + x + bw, yr.start + y + bh])
            };
            root.present().map_err(|e| failed(&e))?;
            Frame {
                x: (xr.start, xr.end - 1),
                y: (yr.start, yr.end - 1),
                legend,
            }
        };
        let image = RgbImage::from_raw(self.width, self.height, buffer).expect("the buffer holds the image");
        Ok((image, frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(axis: &Axis) -> Vec<&str> {
        axis.ticks.iter().filter_map(|t| t.label.as_deref()).collect()
    }

    /// A deterministic uniform number in [0, 1) (xorshift).
    fn uniform(state: &mut u64) -> f64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        (*state >> 11) as f64 / (1u64 << 53) as f64
    }

    #[test]
    fn nice_ticks_cover_the_range_with_4_to_8_nice_steps() {
        let axis = Axis::linear(0.0, 3000.0);
        assert_eq!(labels(&axis), ["0", "500", "1k", "1.5k", "2k", "2.5k", "3k"]);
        assert_eq!((axis.lo, axis.hi), (0.0, 3000.0));
        let axis = Axis::linear(0.07, 2.31);
        assert_eq!(labels(&axis), ["0", "0.5", "1", "1.5", "2", "2.5"]);
        let axis = Axis::linear(0.1, 0.9);
        assert_eq!(labels(&axis), ["0", "0.2", "0.4", "0.6", "0.8", "1"]);
        let axis = Axis::linear(-0.37, 0.52);
        assert_eq!(labels(&axis), ["-0.4", "-0.2", "0", "0.2", "0.4", "0.6"]);
        let axis = Axis::linear(0.0, 0.004);
        assert_eq!(labels(&axis), ["0", "1e-3", "2e-3", "3e-3", "4e-3"]);
        let axis = Axis::linear(0.0005, 0.0021);
        assert_eq!(labels(&axis), ["5e-4", "1e-3", "1.5e-3", "2e-3", "2.5e-3"]);

        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            let scale = 10f64.powf(uniform(&mut state) * 24.0 - 12.0);
            let a = (uniform(&mut state) - 0.5) * scale;
            let b = a + uniform(&mut state) * scale * 10f64.powf(-3.0 * uniform(&mut state));
            let (lo, hi) = (a.min(b), a.max(b));
            let axis = Axis::linear(lo, hi);
            let n = axis.ticks.len();
            assert!((4..=8).contains(&n), "{n} ticks for {lo}..{hi}: {:?}", labels(&axis));
            assert!(
                axis.lo <= lo && axis.hi >= hi,
                "{lo}..{hi} not covered by {}..{}",
                axis.lo,
                axis.hi
            );
            let step = axis.ticks[1].at - axis.ticks[0].at;
            let mantissa = step / 10f64.powf(step.log10().floor());
            assert!(
                [1.0, 2.0, 5.0, 10.0].iter().any(|m| (mantissa - m).abs() < 1e-6),
                "step {step} for {lo}..{hi}"
            );
            // Labels are distinct, so every tick reads differently.
            let mut l = labels(&axis);
            l.dedup();
            assert_eq!(l.len(), n, "{lo}..{hi}: {:?}", labels(&axis));
        }
    }

    #[test]
    fn a_single_value_range_is_padded() {
        let axis = Axis::linear(5.0, 5.0);
        assert!(axis.lo < 5.0 && axis.hi > 5.0 && (4..=8).contains(&axis.ticks.len()));
        assert_eq!(labels(&Axis::linear(0.0, 0.0)), ["-1", "-0.5", "0", "0.5", "1"]);
        let axis = Axis::log(0.0, 0.0);
        assert_eq!((axis.lo, axis.hi), (-1.0, 1.0));
    }

    #[test]
    fn tick_labels_are_compact() {
        assert_eq!(format_tick(0.25, 0.05, 1.0), "0.25");
        assert_eq!(format_tick(1500.0, 500.0, 3000.0), "1.5k");
        assert_eq!(format_tick(2.0e6, 1.0e6, 5.0e6), "2M");
        assert_eq!(format_tick(0.001, 0.001, 0.001), "1e-3");
        assert_eq!(format_tick(0.0025, 0.0005, 0.004), "2.5e-3");
        assert_eq!(format_tick(-0.4, 0.2, 0.6), "-0.4");
        assert_eq!(format_tick(1e-17, 0.2, 1.0), "0");
        assert_eq!(format_tick(3e20, 1e20, 5e20), "3e20");
        assert_eq!(format_tick(0.01, 0.002, 0.012), "0.01");
    }

    #[test]
    fn log_axis_ticks_are_decades() {
        let axis = Axis::log(0.02f64.log10(), 2.3f64.log10());
        assert_eq!((axis.lo, axis.hi), (-2.0, 1.0));
        assert_eq!(labels(&axis), ["0.01", "0.1", "1", "10"]);
        // Ten decades: every other one.
        let axis = Axis::log(-6.3, 2.2);
        assert_eq!(labels(&axis), ["1e-8", "1e-6", "1e-4", "0.01", "1", "100", "10k"]);
        // One decade of data: 2 x and 5 x are labelled too.
        let axis = Axis::log(0.15f64.log10(), 0.9f64.log10());
        assert_eq!(labels(&axis), ["0.1", "0.2", "0.5", "1"]);
        let axis = Axis::log(-40.0, 40.0);
        assert!((4..=8).contains(&labels(&axis).len()), "{:?}", labels(&axis));
    }

    const RED: [u8; 3] = [230, 25, 75];
    const BLUE: [u8; 3] = [0, 130, 200];

    fn chart(series: Vec<Series>) -> Chart {
        Chart {
            title: "test".into(),
            x_label: "step".into(),
            y_label: "loss".into(),
            series,
            ..Chart::default()
        }
    }

    /// The pixel of the point at axis positions `(x, y)`, as plotters maps it.
    fn pixel(frame: &Frame, layout: &Layout, x: f64, y: f64) -> (i32, i32) {
        (
            layout.x_axis.map(&x, frame.x),
            layout.y_axis.map(&y, (frame.y.1, frame.y.0)),
        )
    }

    fn inside(frame: &Frame, (x, y): (i32, i32)) -> bool {
        (frame.x.0..=frame.x.1).contains(&x) && (frame.y.0..=frame.y.1).contains(&y)
    }

    fn in_box(b: [i32; 4], (x, y): (i32, i32)) -> bool {
        (b[0]..=b[2]).contains(&x) && (b[1]..=b[3]).contains(&y)
    }

    /// The rows of column `x` whose pixel is `rgb`.
    fn rows_of(image: &RgbImage, x: i32, rgb: [u8; 3]) -> Vec<i32> {
        (0..image.height() as i32)
            .filter(|&y| image.get_pixel(x as u32, y as u32).0 == rgb)
            .collect()
    }

    /// Pixels in the box (left, top, right, bottom; inclusive) dark enough to be text.
    fn dark_pixels(image: &RgbImage, [x0, y0, x1, y1]: [i32; 4]) -> usize {
        let mut n = 0;
        for y in y0.max(0)..=y1.min(image.height() as i32 - 1) {
            for x in x0.max(0)..=x1.min(image.width() as i32 - 1) {
                n += usize::from(image.get_pixel(x as u32, y as u32).0.iter().all(|&c| c < 120));
            }
        }
        n
    }

    #[test]
    fn values_land_on_the_expected_pixels() {
        let c = chart(vec![Series::new("a", RED, vec![(0.0, 0.0), (10.0, 10.0)])]);
        let layout = c.layout().unwrap();
        let (image, frame) = c.draw().unwrap();
        assert_eq!(image.dimensions(), (800, 500));
        let (xa, ya) = (&layout.x_axis, &layout.y_axis);
        assert_eq!((xa.lo, xa.hi, ya.lo, ya.hi), (0.0, 10.0, 0.0, 10.0));
        assert!(frame.x.0 > 40 && frame.x.1 > 700 && frame.x.1 < 799, "{frame:?}");
        assert!(frame.y.0 > 20 && frame.y.1 > 380 && frame.y.1 < 499, "{frame:?}");
        assert_eq!(pixel(&frame, &layout, 0.0, 0.0), (frame.x.0, frame.y.1));
        assert_eq!(pixel(&frame, &layout, 10.0, 10.0), (frame.x.1, frame.y.0));
        let (cx, cy) = pixel(&frame, &layout, 5.0, 5.0);
        assert!((cx - (frame.x.0 + frame.x.1) / 2).abs() <= 1 && (cy - (frame.y.0 + frame.y.1) / 2).abs() <= 1);

        // The diagonal is continuous: every column of the plot has the line, 2 or 3 px thick,
        // where the mapping puts it (and nothing else red but the legend's swatch).
        let legend = frame.legend.unwrap();
        for x in frame.x.0 + 3..frame.x.1 - 2 {
            let t = f64::from(x - frame.x.0) / f64::from(frame.x.1 - frame.x.0);
            let y = f64::from(frame.y.1) - t * f64::from(frame.y.1 - frame.y.0);
            let hits: Vec<i32> = rows_of(&image, x, RED)
                .into_iter()
                .filter(|&r| !in_box(legend, (x, r)))
                .collect();
            assert!((2..=4).contains(&hits.len()), "column {x} has line pixels {hits:?}");
            assert!(
                hits.iter().all(|&h| (f64::from(h) - y).abs() <= 3.0),
                "column {x}: {hits:?}, not near {y}"
            );
        }
        for v in [1.0, 2.5, 5.0, 7.5] {
            let (x, y) = pixel(&frame, &layout, v, v);
            assert_eq!(image.get_pixel(x as u32, y as u32).0, RED, "({v}, {v}) at ({x}, {y})");
        }
        // The legend goes top left, off the line, and holds the only red outside the plot.
        assert!(legend[0] < cx && legend[3] < cy, "{legend:?}");
        for (x, y, p) in image.enumerate_pixels() {
            let at = (x as i32, y as i32);
            if p.0 == RED {
                assert!(inside(&frame, at) || in_box(legend, at), "{at:?}");
            }
        }

        // A level line is 2 px thick, or 3 (plotters fills a wide line's outline inclusively).
        let c = chart(vec![Series::new(
            "",
            RED,
            vec![(0.0, 1.0), (4.0, 1.0), (4.0, 3.0), (6.0, 0.0)],
        )]);
        let layout = c.layout().unwrap();
        let (image, frame) = c.draw().unwrap();
        let (x, y) = pixel(&frame, &layout, 2.0, 1.0);
        let column = rows_of(&image, x, RED);
        assert!((2..=3).contains(&column.len()), "{column:?}");
        assert!(column.iter().all(|&r| (r - y).abs() <= 1), "{column:?} about {y}");
    }

    #[test]
    fn line_pixels_step_a_pixel_at_a_time() {
        assert_eq!(line_pixels(&[(0, 0), (3, 1)]), [(0, 0), (1, 0), (2, 0), (3, 1)]);
        assert_eq!(line_pixels(&[(5, 5), (5, 3), (5, 3)]), [(5, 5), (5, 4), (5, 3), (5, 3)]);
        assert_eq!(line_pixels(&[(7, 2)]), [(7, 2)]);
        assert!(line_pixels(&[]).is_empty());
    }

    #[test]
    fn the_legend_names_the_series_where_the_lines_are_not() {
        // Two lines along the top: the legend goes to a bottom corner.
        let high = |name: &str, rgb, y: f64| Series::new(name, rgb, vec![(0.0, y), (1.0, y)]);
        let c = chart(vec![
            high("a rather long series name", RED, 10.0),
            high("b", BLUE, 9.0),
            Series::new("", [0, 0, 0], vec![(0.0, 0.0)]),
        ]);
        let (image, frame) = c.draw().unwrap();
        let legend = frame.legend.unwrap();
        assert!(legend[1] > (frame.y.0 + frame.y.1) / 2, "{legend:?} in {frame:?}");
        assert!(legend[2] - legend[0] > 150, "{legend:?}");
        // Both swatches and the names' text are in the box, the names right of the swatches.
        let count = |rgb: [u8; 3]| {
            (legend[0]..=legend[2])
                .flat_map(|x| (legend[1]..=legend[3]).map(move |y| (x, y)))
                .filter(|&(x, y)| image.get_pixel(x as u32, y as u32).0 == rgb)
                .count()
        };
        assert!(count(RED) >= 20 && count(BLUE) >= 20, "{} {}", count(RED), count(BLUE));
        let swatch_end = (legend[0]..=legend[2])
            .filter(|&x| (legend[1]..=legend[3]).any(|y| image.get_pixel(x as u32, y as u32).0 == BLUE))
            .max()
            .unwrap();
        let text = [swatch_end + 1, legend[1] + 1, legend[2] - 1, legend[3] - 1];
        assert!(
            dark_pixels(&image, text) > 200,
            "{} text pixels",
            dark_pixels(&image, text)
        );
        // The long name's row has far more text than the short one's.
        let mid = (legend[1] + legend[3]) / 2;
        let (top, bottom) = (
            dark_pixels(&image, [text[0], text[1], text[2], mid]),
            dark_pixels(&image, [text[0], mid, text[2], text[3]]),
        );
        assert!(top > 4 * bottom && bottom > 10, "{top} against {bottom}");

        // Lines a tenth of the way in from the top and the bottom cover every corner: the legend
        // goes between them.
        let c = chart(vec![
            high("top", RED, 9.0),
            high("bottom", BLUE, 1.0),
            Series::new("", [0, 0, 0], vec![(0.0, 0.0), (0.0, 10.0)]),
        ]);
        let (image, frame) = c.draw().unwrap();
        let legend = frame.legend.unwrap();
        let line_rows = |rgb| -> Vec<i32> {
            rows_of(&image, (frame.x.0 + frame.x.1) / 2, rgb)
                .into_iter()
                .filter(|&r| !in_box(legend, ((frame.x.0 + frame.x.1) / 2, r)))
                .collect()
        };
        let (top, bottom) = (line_rows(RED), line_rows(BLUE));
        assert!(
            top[0] > frame.y.0 + 30 && bottom[0] < frame.y.1 - 30,
            "{top:?} {bottom:?}"
        );
        assert!(top.iter().all(|&r| r < legend[1]), "{top:?} {legend:?}");
        assert!(bottom.iter().all(|&r| r > legend[3]), "{bottom:?} {legend:?}");

        // Without names there is no legend, and no text inside the plot.
        let c = chart(vec![high("", RED, 10.0), high("", BLUE, 9.0)]);
        let (image, frame) = c.draw().unwrap();
        assert_eq!(frame.legend, None);
        let plot = [frame.x.0 + 2, frame.y.0 + 2, frame.x.1 - 2, frame.y.1 - 2];
        assert_eq!(dark_pixels(&image, plot), 0);
    }

    #[test]
    fn titles_labels_and_ticks_are_drawn() {
        let c = chart(vec![Series::new("a", RED, vec![(0.0, 0.0), (10.0, 10.0)])]);
        let layout = c.layout().unwrap();
        let (image, frame) = c.draw().unwrap();
        let (w, h) = (image.width() as i32, image.height() as i32);
        // The title above the plot, about the middle of the image (plotters centres it between
        // the margins); the x label below the tick labels, the y label left of them.
        // (The top tick label reaches up half its height from the plot's top.)
        let band = frame.y.0 - 12;
        let title = dark_pixels(&image, [0, 0, w - 1, band]);
        assert!(title > 30, "{title}");
        let columns: Vec<i32> = (0..w).filter(|&x| dark_pixels(&image, [x, 0, x, band]) > 0).collect();
        let (first, last) = (columns[0], columns[columns.len() - 1]);
        assert!(last - first > 20 && last - first < 60, "title over {first}..{last}");
        assert!(((first + last) / 2 - w / 2).abs() < 20, "title over {first}..{last}");
        // Each tick label sits under its tick, within half a tick step.
        let step = frame.x.1 - frame.x.0;
        for tick in &layout.x_axis.ticks {
            let (x, _) = pixel(&frame, &layout, tick.at, 0.0);
            let under = [x - step / 25, frame.y.1 + 4, x + step / 25, frame.y.1 + 30];
            assert!(dark_pixels(&image, under) > 10, "no label under tick {tick:?}");
        }
        let x_label = dark_pixels(&image, [frame.x.0, frame.y.1 + 32, frame.x.1, h - 1]);
        let y_label = dark_pixels(&image, [0, frame.y.0, 25, frame.y.1]);
        assert!(x_label > 20 && y_label > 20, "{x_label} {y_label}");
        // The same chart without its labels and title leaves those places blank.
        let bare = Chart {
            title: String::new(),
            x_label: String::new(),
            y_label: String::new(),
            ..c
        };
        let (image, frame) = bare.draw().unwrap();
        assert_eq!(dark_pixels(&image, [0, 0, w - 1, frame.y.0 - 12]), 0);
        assert_eq!(dark_pixels(&image, [0, frame.y.1 + 40, w - 1, h - 1]), 0);
    }

    #[test]
    fn log_y_maps_decades_evenly() {
        // Level lines at 0.01 and 0.1 between points at 1e-3 and 1.
        let c = Chart {
            log_y: true,
            ..chart(vec![
                Series::new("", [0, 0, 0], vec![(0.0, 1e-3), (0.0, 1.0)]),
                Series::new("", RED, vec![(0.0, 1e-2), (1.0, 1e-2)]),
                Series::new("", BLUE, vec![(0.0, 1e-1), (1.0, 1e-1)]),
            ])
        };
        let layout = c.layout().unwrap();
        let ya = &layout.y_axis;
        assert_eq!((ya.lo, ya.hi), (-3.0, 0.0));
        assert_eq!(labels(ya), ["1e-3", "0.01", "0.1", "1"]);
        let (image, frame) = c.draw().unwrap();
        let third = f64::from(frame.y.1 - frame.y.0) / 3.0;
        let x = (frame.x.0 + frame.x.1) / 2;
        for (rgb, value, thirds) in [(RED, 1e-2, 1.0), (BLUE, 1e-1, 2.0)] {
            let rows = rows_of(&image, x, rgb);
            let y = pixel(&frame, &layout, 0.5, f64::log10(value)).1;
            let exact = f64::from(frame.y.1) - thirds * third;
            assert!((f64::from(y) - exact).abs() <= 1.0, "{value} at row {y}, not {exact}");
            assert!((2..=3).contains(&rows.len()), "{rows:?}");
            assert!(rows.iter().all(|&r| (r - y).abs() <= 1), "{rows:?} not at {y}");
        }
        // The 2..9 x 10^k between decades have fainter grid lines: 0.05 lies 0.699 of a decade up.
        let y = f64::from(frame.y.1) - (1.0 + 5f64.log10()) * third;
        let faint = rows_of(&image, x + 7, MINOR_GRID);
        assert!(
            faint.iter().any(|&r| (f64::from(r) - y).abs() <= 1.0),
            "{faint:?} about {y}"
        );

        // Points at or below zero cannot be shown on a log axis and are skipped.
        let c = Chart {
            log_y: true,
            ..chart(vec![Series::new("a", RED, vec![(0.0, 0.0), (1.0, -1.0), (2.0, 0.5)])])
        };
        let layout = c.layout().unwrap();
        assert_eq!(layout.series[0], [(2.0, 0.5f64.log10())]);
        let (image, frame) = c.draw().unwrap();
        let (x, y) = pixel(&frame, &layout, 2.0, 0.5f64.log10());
        assert_eq!(image.get_pixel(x as u32, y as u32).0, RED);
    }

    #[test]
    fn non_finite_points_are_skipped() {
        let points = vec![
            (0.0, 1.0),
            (1.0, f64::NAN),
            (f64::INFINITY, 2.0),
            (2.0, f64::NEG_INFINITY),
            (f64::NAN, f64::NAN),
            (3.0, 3.0),
        ];
        let c = chart(vec![Series::new("", RED, points), Series::new("empty", BLUE, vec![])]);
        let layout = c.layout().unwrap();
        assert_eq!(layout.series[0], [(0.0, 1.0), (3.0, 3.0)]);
        assert!(layout.series[1].is_empty());
        assert_eq!((layout.x_axis.lo, layout.x_axis.hi), (0.0, 3.0));
        // The line joins the points either side of the skipped ones.
        let (image, frame) = c.draw().unwrap();
        for v in [0.5, 1.5, 2.5] {
            let (x, y) = pixel(&frame, &layout, v, 1.0 + 2.0 * v / 3.0);
            let rows = rows_of(&image, x, RED);
            assert!(
                rows.iter().any(|&r| (r - y).abs() <= 1),
                "{rows:?} about {y} at x = {v}"
            );
        }
        // All-equal values still render, as a level line mid-plot.
        let c = chart(vec![Series::new("flat", RED, vec![(0.0, 2.0), (5.0, 2.0)])]);
        let (image, frame) = c.draw().unwrap();
        let rows = rows_of(&image, (frame.x.0 + frame.x.1) / 2, RED);
        let mid = (frame.y.0 + frame.y.1) / 2;
        assert!(
            !rows.is_empty() && rows.iter().all(|&r| (r - mid).abs() <= 2),
            "{rows:?} about {mid}"
        );
        // A single point is drawn as a dot where it belongs: mid-plot, its range padded.
        let one = chart(vec![Series::new("", [1, 2, 3], vec![(7.0, 7.0)])]);
        let layout = one.layout().unwrap();
        let (image, frame) = one.draw().unwrap();
        let (x, y) = pixel(&frame, &layout, 7.0, 7.0);
        assert!((x - (frame.x.0 + frame.x.1) / 2).abs() <= 1, "{x} in {frame:?}");
        assert_eq!(image.get_pixel(x as u32, y as u32).0, [1, 2, 3]);
        assert!(image.pixels().filter(|p| p.0 == [1, 2, 3]).count() >= 9);
    }

    #[test]
    fn a_chart_without_points_is_an_error() {
        for c in [
            chart(vec![]),
            chart(vec![Series::new("a", [0, 0, 0], vec![])]),
            chart(vec![Series::new(
                "a",
                [0, 0, 0],
                vec![(f64::NAN, 1.0), (1.0, f64::INFINITY)],
            )]),
            Chart {
                log_y: true,
                ..chart(vec![Series::new("a", [0, 0, 0], vec![(0.0, 0.0), (1.0, -2.0)])])
            },
        ] {
            let err = c.render().unwrap_err();
            assert!(matches!(err, Error::InvalidParameter(_)), "{err}");
            assert!(err.to_string().contains("test"), "{err}");
        }
        let err = chart(vec![Series::new("a", [0, 0, 0], vec![(f64::NAN, 1.0)])])
            .render()
            .unwrap_err();
        assert!(err.to_string().contains("no points to plot"), "{err}");
        let tiny = Chart {
            width: 60,
            height: 40,
            ..chart(vec![Series::new("a", [0, 0, 0], vec![(0.0, 1.0)])])
        };
        assert!(tiny.render().unwrap_err().to_string().contains("too small"));
        let huge = chart(vec![Series::new(
            "a",
            [0, 0, 0],
            vec![(0.0, -f64::MAX), (1.0, f64::MAX)],
        )]);
        assert!(matches!(huge.render(), Err(Error::InvalidParameter(_))));
        let vast = Chart {
            width: 10_000,
            height: 10_000,
            ..chart(vec![Series::new("a", [0, 0, 0], vec![(0.0, 1.0)])])
        };
        assert!(vast.render().unwrap_err().to_string().contains("2^26"));
    }
}
