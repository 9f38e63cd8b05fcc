//! Line charts for training curves and experiment plots, drawn with the built-in bitmap font of
//! [`draw`] (no font files): a title, axes with "nice" ticks (steps of 1, 2 or 5 x
//! 10^k, labelled compactly: `0.25`, `1.5k`, `1e-3`), light grid lines, axis labels, an optional
//! log-scale y axis with decades as ticks, and a legend placed in the corner of the plot that
//! covers the fewest data pixels.
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

use image::RgbImage;

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
    /// Drawn centred above the plot at twice the size of the other text; empty for none.
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

    /// Where axis position `at` lies along the axis, 0 at `lo` and 1 at `hi`.
    fn fraction(&self, at: f64) -> f64 {
        (at - self.lo) / (self.hi - self.lo)
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

/// The pixel rectangle of the plot area, inclusive: data at the axes' `lo` lands on column `x0`
/// and row `y1`, at `hi` on column `x1` and row `y0`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct PlotArea {
    x0: i64,
    y0: i64,
    x1: i64,
    y1: i64,
}

impl PlotArea {
    fn contains(&self, x: i64, y: i64) -> bool {
        (self.x0..=self.x1).contains(&x) && (self.y0..=self.y1).contains(&y)
    }

    /// The pixel of the point at axis positions `(x, y)`.
    fn pixel(&self, x_axis: &Axis, y_axis: &Axis, x: f64, y: f64) -> (i64, i64) {
        let px = self.x0 as f64 + x_axis.fraction(x) * (self.x1 - self.x0) as f64;
        let py = self.y1 as f64 - y_axis.fraction(y) * (self.y1 - self.y0) as f64;
        (px.round() as i64, py.round() as i64)
    }
}

/// Everything [`Chart::render`] works out before drawing: the axes, the plot area, the text
/// scale and each series' points in axis units.
struct Layout {
    x_axis: Axis,
    y_axis: Axis,
    area: PlotArea,
    scale: u32,
    series: Vec<Vec<(f64, f64)>>,
}

impl Chart {
    /// Draws the chart.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidParameter`] when there is nothing to plot (no series, or no point with
    /// finite coordinates, or on a log axis none with a positive y), when the values span more
    /// than an `f64` holds, or when the image is too small for its labels.
    pub fn render(&self) -> Result<RgbImage> {
        let layout = self.layout()?;
        let mut image = RgbImage::from_pixel(self.width, self.height, image::Rgb(BACKGROUND));
        self.draw_grid(&mut image, &layout);
        let mut ink = vec![false; image.width() as usize * image.height() as usize];
        for (series, points) in self.series.iter().zip(&layout.series) {
            draw_series(&mut image, &mut ink, &layout, points, series.colour);
        }
        self.draw_axes(&mut image, &layout);
        self.draw_legend(&mut image, &ink, &layout);
        Ok(image)
    }

    /// Draws the chart and writes it as a PNG at `path` (see [`draw::save_png`]).
    ///
    /// # Errors
    ///
    /// Those of [`Chart::render`], and [`Error::Io`] when the file cannot be written.
    pub fn save_png(&self, path: impl AsRef<Path>) -> Result<()> {
        draw::save_png(path, &self.render()?)
    }

    /// The text scale for tick labels, axis labels and the legend: 2 where the chart is large
    /// enough (800 x 500 is), 1 on small charts.
    fn text_scale(&self) -> u32 {
        if self.width >= 560 && self.height >= 360 { 2 } else { 1 }
    }

    fn title_scale(&self) -> u32 {
        if self.width >= 320 { 2 } else { 1 }
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

        let s = self.text_scale();
        let (_, text_h) = draw::text_size("0", s);
        let text_h = i64::from(text_h);
        let label_w = |t: &Tick| t.label.as_deref().map_or(0, |l| i64::from(draw::text_size(l, s).0));
        let y_tick_w = y_axis.ticks.iter().map(label_w).max().unwrap_or(0);
        let last_x_tick_w = x_axis.ticks.last().map_or(0, label_w);
        let (w, h) = (i64::from(self.width), i64::from(self.height));
        let margin = 6 * i64::from(s) + 4;
        let gap = 4 * i64::from(s);
        let tick_len = tick_length(s);

        let mut top = margin;
        if !self.title.is_empty() {
            top += i64::from(draw::text_size(&self.title, self.title_scale()).1) + 3 * gap;
        }
        top = top.max(margin + text_h / 2);
        let mut bottom = margin + text_h + tick_len + gap;
        if !self.x_label.is_empty() {
            bottom += text_h + 2 * gap;
        }
        let mut left = margin + y_tick_w + tick_len + gap;
        if !self.y_label.is_empty() {
            left += text_h + 2 * gap;
        }
        let right = margin + last_x_tick_w / 2;
        let area = PlotArea {
            x0: left,
            y0: top,
            x1: w - 1 - right,
            y1: h - 1 - bottom,
        };
        if area.x1 - area.x0 < 40 || area.y1 - area.y0 < 40 {
            return Err(Error::invalid(format!(
                "chart {:?} is {}x{}, too small for its title, labels and ticks",
                self.title, self.width, self.height
            )));
        }
        Ok(Layout {
            x_axis,
            y_axis,
            area,
            scale: s,
            series,
        })
    }

    /// Grid lines at every tick, faint ones at the minor ticks of a log axis.
    fn draw_grid(&self, image: &mut RgbImage, layout: &Layout) {
        let a = layout.area;
        for tick in &layout.x_axis.ticks {
            let (x, _) = a.pixel(&layout.x_axis, &layout.y_axis, tick.at, layout.y_axis.lo);
            let colour = if tick.label.is_some() { GRID } else { MINOR_GRID };
            draw::fill_rect(image, x, a.y0, x + 1, a.y1 + 1, colour);
        }
        // Minor lines first so major ones are never painted over.
        for major in [false, true] {
            for tick in layout.y_axis.ticks.iter().filter(|t| t.label.is_some() == major) {
                let (_, y) = a.pixel(&layout.x_axis, &layout.y_axis, layout.x_axis.lo, tick.at);
                let colour = if major { GRID } else { MINOR_GRID };
                draw::fill_rect(image, a.x0, y, a.x1 + 1, y + 1, colour);
            }
        }
    }

    /// The frame, tick marks, tick labels, axis labels and title.
    fn draw_axes(&self, image: &mut RgbImage, layout: &Layout) {
        let (a, s) = (layout.area, layout.scale);
        let (_, text_h) = draw::text_size("0", s);
        let text_h = i64::from(text_h);
        let gap = 4 * i64::from(s);
        let tick_len = tick_length(s);
        draw::fill_rect(image, a.x0, a.y0, a.x1 + 1, a.y0 + 1, FRAME);
        draw::fill_rect(image, a.x0, a.y1, a.x1 + 1, a.y1 + 1, FRAME);
        draw::fill_rect(image, a.x0, a.y0, a.x0 + 1, a.y1 + 1, FRAME);
        draw::fill_rect(image, a.x1, a.y0, a.x1 + 1, a.y1 + 1, FRAME);

        for tick in &layout.x_axis.ticks {
            let (x, _) = a.pixel(&layout.x_axis, &layout.y_axis, tick.at, layout.y_axis.lo);
            let len = if tick.label.is_some() { tick_len } else { tick_len / 2 };
            draw::fill_rect(image, x, a.y1 + 1, x + 1, a.y1 + 1 + len, FRAME);
            if let Some(label) = &tick.label {
                let w = i64::from(draw::text_size(label, s).0);
                draw::draw_text(image, x - w / 2, a.y1 + 1 + tick_len + gap, label, TEXT, s);
            }
        }
        for tick in &layout.y_axis.ticks {
            let (_, y) = a.pixel(&layout.x_axis, &layout.y_axis, layout.x_axis.lo, tick.at);
            let len = if tick.label.is_some() { tick_len } else { tick_len / 2 };
            draw::fill_rect(image, a.x0 - len, y, a.x0, y + 1, FRAME);
            if let Some(label) = &tick.label {
                let w = i64::from(draw::text_size(label, s).0);
                draw::draw_text(image, a.x0 - tick_len - gap - w, y - text_h / 2, label, TEXT, s);
            }
        }

        let centre_x = (a.x0 + a.x1) / 2;
        if !self.x_label.is_empty() {
            let w = i64::from(draw::text_size(&self.x_label, s).0);
            let y = a.y1 + 1 + tick_len + gap + text_h + 2 * gap;
            draw::draw_text(image, centre_x - w / 2, y, &self.x_label, TEXT, s);
        }
        if !self.y_label.is_empty() {
            let w = i64::from(draw::text_size(&self.y_label, s).0);
            let x = 6 * i64::from(s) + 4;
            draw_text_upwards(image, x, (a.y0 + a.y1) / 2 - w / 2, &self.y_label, TEXT, s);
        }
        if !self.title.is_empty() {
            let ts = self.title_scale();
            let w = i64::from(draw::text_size(&self.title, ts).0) + 1;
            let x = (centre_x - w / 2).clamp(0, (i64::from(self.width) - w).max(0));
            // Struck twice, a pixel apart, so it reads bold.
            for dx in [0, 1] {
                draw::draw_text(image, x + dx, 6 * i64::from(s) + 4, &self.title, TEXT, ts);
            }
        }
    }

    /// The legend (series with a name), in the inside corner of the plot area covering the fewest
    /// data pixels (`ink`), preferring top right, then top left, bottom right, bottom left.
    fn draw_legend(&self, image: &mut RgbImage, ink: &[bool], layout: &Layout) {
        let entries: Vec<&Series> = self.series.iter().filter(|s| !s.name.is_empty()).collect();
        if entries.is_empty() {
            return;
        }
        let (a, s) = (layout.area, i64::from(layout.scale));
        let text_h = i64::from(draw::text_size("0", layout.scale).1);
        let pad = 4 * s;
        let swatch = 10 * s;
        let row_h = text_h + 3 * s;
        let text_w = entries
            .iter()
            .map(|e| i64::from(draw::text_size(&e.name, layout.scale).0))
            .max()
            .unwrap_or(0);
        let (box_w, box_h) = (
            2 * pad + swatch + 3 * s + text_w,
            2 * pad + row_h * entries.len() as i64 - 3 * s,
        );
        let inset = 4 * s + 2;
        let (left, right) = (a.x0 + inset, a.x1 - inset - box_w + 1);
        let (top, bottom) = (a.y0 + inset, a.y1 - inset - box_h + 1);
        let width = image.width() as usize;
        let covered = |x0: i64, y0: i64| {
            let mut n = 0usize;
            for y in y0.max(0)..(y0 + box_h).min(i64::from(image.height())) {
                for x in x0.max(0)..(x0 + box_w).min(i64::from(image.width())) {
                    n += usize::from(ink[y as usize * width + x as usize]);
                }
            }
            n
        };
        let (x0, y0) = [(right, top), (left, top), (right, bottom), (left, bottom)]
            .into_iter()
            .min_by_key(|&(x, y)| covered(x, y))
            .expect("four corners");
        draw::fill_rect(image, x0, y0, x0 + box_w, y0 + box_h, BACKGROUND);
        draw::draw_box(
            image,
            [x0 as f32, y0 as f32, (x0 + box_w) as f32, (y0 + box_h) as f32],
            LEGEND_BORDER,
            1,
        );
        for (i, entry) in entries.iter().enumerate() {
            let y = y0 + pad + row_h * i as i64;
            let mid = y + text_h / 2;
            draw::fill_rect(image, x0 + pad, mid - s, x0 + pad + swatch, mid + s, entry.colour);
            draw::draw_text(image, x0 + pad + swatch + 3 * s, y, &entry.name, TEXT, layout.scale);
        }
    }
}

fn tick_length(scale: u32) -> i64 {
    3 * i64::from(scale) + 1
}

/// Draws one series: 2 px lines between consecutive points, clipped to the plot area; a lone
/// point is drawn as a small square. Marks the pixels drawn in `ink`.
fn draw_series(image: &mut RgbImage, ink: &mut [bool], layout: &Layout, points: &[(f64, f64)], colour: [u8; 3]) {
    let a = layout.area;
    let width = image.width() as usize;
    let mut plot = |x: i64, y: i64| {
        if a.contains(x, y) {
            image.put_pixel(x as u32, y as u32, image::Rgb(colour));
            ink[y as usize * width + x as usize] = true;
        }
    };
    let pixels: Vec<(i64, i64)> = points
        .iter()
        .map(|&(x, y)| a.pixel(&layout.x_axis, &layout.y_axis, x, y))
        .collect();
    if let [(x, y)] = pixels[..] {
        for dy in -1..=2 {
            for dx in -1..=2 {
                plot(x + dx, y + dy);
            }
        }
        return;
    }
    for pair in pixels.windows(2) {
        line(pair[0], pair[1], |x, y| {
            for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                plot(x + dx, y + dy);
            }
        });
    }
}

/// Calls `plot` on each pixel of the Bresenham line from `from` to `to`, both ends included.
fn line((mut x, mut y): (i64, i64), (x1, y1): (i64, i64), mut plot: impl FnMut(i64, i64)) {
    let (dx, dy) = ((x1 - x).abs(), -(y1 - y).abs());
    let (sx, sy) = (if x < x1 { 1 } else { -1 }, if y < y1 { 1 } else { -1 });
    let mut err = dx + dy;
    loop {
        plot(x, y);
        if x == x1 && y == y1 {
            return;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x += sx;
        }
        if e2 <= dx {
            err += dx;
            y += sy;
        }
    }
}

/// Draws `text` reading upwards (turned a quarter left), its bounding box's top-left at `(x, y)`.
fn draw_text_upwards(image: &mut RgbImage, x: i64, y: i64, text: &str, colour: [u8; 3], scale: u32) {
    let (w, h) = draw::text_size(text, scale);
    if w == 0 {
        return;
    }
    let mut flat = RgbImage::from_pixel(w, h, image::Rgb([0, 0, 0]));
    draw::draw_text(&mut flat, 0, 0, text, [255, 255, 255], scale);
    for (fx, fy, p) in flat.enumerate_pixels() {
        if p.0[0] > 0 {
            let (px, py) = (x + i64::from(fy), y + i64::from(w - 1 - fx));
            draw::fill_rect(image, px, py, px + 1, py + 1, colour);
        }
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

    fn chart(series: Vec<Series>) -> Chart {
        Chart {
            title: "test".into(),
            x_label: "step".into(),
            y_label: "loss".into(),
            series,
            ..Chart::default()
        }
    }

    #[test]
    fn values_land_on_the_expected_pixels() {
        let red = [230, 25, 75];
        let c = chart(vec![Series::new("a", red, vec![(0.0, 0.0), (10.0, 10.0)])]);
        let layout = c.layout().unwrap();
        let (a, xa, ya) = (layout.area, &layout.x_axis, &layout.y_axis);
        assert_eq!((xa.lo, xa.hi, ya.lo, ya.hi), (0.0, 10.0, 0.0, 10.0));
        assert_eq!(a.pixel(xa, ya, 0.0, 0.0), (a.x0, a.y1));
        assert_eq!(a.pixel(xa, ya, 10.0, 10.0), (a.x1, a.y0));
        let (cx, cy) = a.pixel(xa, ya, 5.0, 5.0);
        assert!((cx - (a.x0 + a.x1) / 2).abs() <= 1 && (cy - (a.y0 + a.y1) / 2).abs() <= 1);

        let image = c.render().unwrap();
        assert_eq!(image.dimensions(), (800, 500));
        // The diagonal is continuous: every column of the plot area has the series colour.
        for x in a.x0 + 4..a.x1 - 3 {
            let y = a.y1 as f64 - (x - a.x0) as f64 * (a.y1 - a.y0) as f64 / (a.x1 - a.x0) as f64;
            // (The legend, top left where the line leaves room, has a red swatch too.)
            let hits: Vec<i64> = (y as i64 - 8..=y as i64 + 8)
                .filter(|&y| image.get_pixel(x as u32, y as u32).0 == red)
                .collect();
            assert!((2..=4).contains(&hits.len()), "column {x} has line pixels {hits:?}");
            assert!(
                hits.iter().all(|&h| (h as f64 - y).abs() <= 3.0),
                "column {x}: {hits:?}, not near {y}"
            );
        }
        for v in [1.0, 2.5, 5.0, 7.5] {
            let (x, y) = a.pixel(xa, ya, v, v);
            assert_eq!(image.get_pixel(x as u32, y as u32).0, red, "({v}, {v}) at ({x}, {y})");
        }
        // A level line is 2 px thick, and nothing is drawn outside the plot area.
        let c = chart(vec![Series::new(
            "",
            red,
            vec![(0.0, 1.0), (4.0, 1.0), (4.0, 3.0), (6.0, 0.0)],
        )]);
        let layout = c.layout().unwrap();
        let image = c.render().unwrap();
        let (x, y) = layout.area.pixel(&layout.x_axis, &layout.y_axis, 2.0, 1.0);
        let column: Vec<u32> = (0..image.height())
            .filter(|&r| image.get_pixel(x as u32, r).0 == red)
            .collect();
        assert_eq!(column, [y as u32, y as u32 + 1]);
        for (px, py, p) in image.enumerate_pixels() {
            if p.0 == red {
                assert!(layout.area.contains(i64::from(px), i64::from(py)), "({px}, {py})");
            }
        }
    }

    #[test]
    fn log_y_maps_decades_evenly() {
        let c = Chart {
            log_y: true,
            ..chart(vec![Series::new("a", [0, 130, 200], vec![(0.0, 1e-3), (1.0, 1.0)])])
        };
        let layout = c.layout().unwrap();
        let (a, xa, ya) = (layout.area, &layout.x_axis, &layout.y_axis);
        assert_eq!((ya.lo, ya.hi), (-3.0, 0.0));
        assert_eq!(labels(ya), ["1e-3", "0.01", "0.1", "1"]);
        let at = |y: f64| a.pixel(xa, ya, 0.0, Axis::to_axis(y, true).unwrap()).1;
        assert_eq!(at(1e-3), a.y1);
        assert_eq!(at(1.0), a.y0);
        let third = (a.y1 - a.y0) as f64 / 3.0;
        assert_eq!(at(1e-2), (a.y1 as f64 - third).round() as i64);
        assert_eq!(at(1e-1), (a.y1 as f64 - 2.0 * third).round() as i64);
        // Points at or below zero cannot be shown on a log axis and are skipped.
        let c = Chart {
            log_y: true,
            ..chart(vec![Series::new(
                "a",
                [0, 0, 0],
                vec![(0.0, 0.0), (1.0, -1.0), (2.0, 0.5)],
            )])
        };
        assert_eq!(c.layout().unwrap().series[0], [(2.0, 0.5f64.log10())]);
        c.render().unwrap();
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
        let c = chart(vec![
            Series::new("a", [1, 2, 3], points),
            Series::new("empty", [4, 5, 6], vec![]),
        ]);
        let layout = c.layout().unwrap();
        assert_eq!(layout.series[0], [(0.0, 1.0), (3.0, 3.0)]);
        assert!(layout.series[1].is_empty());
        assert_eq!((layout.x_axis.lo, layout.x_axis.hi), (0.0, 3.0));
        c.render().unwrap();
        // All-equal values and a single point still render.
        chart(vec![Series::new("flat", [1, 2, 3], vec![(0.0, 2.0), (5.0, 2.0)])])
            .render()
            .unwrap();
        let one = chart(vec![Series::new("one", [1, 2, 3], vec![(7.0, 7.0)])]);
        let image = one.render().unwrap();
        assert!(image.pixels().any(|p| p.0 == [1, 2, 3]));
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
    }

    /// Renders two noisy decaying loss curves, linear and log, to the temporary directory
    /// (`/tmp/chart.png`, `/tmp/chart_log.png`) for a look.
    #[test]
    fn sample_chart_renders() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut curve = |start: f64, floor: f64, rate: f64, noise: f64| -> Vec<(f64, f64)> {
            (0..=3000)
                .step_by(5)
                .map(|step| {
                    let t = f64::from(step);
                    let mean = floor + (start - floor) * (-t / rate).exp();
                    (t, mean * (1.0 + noise * (uniform(&mut state) - 0.5)))
                })
                .collect()
        };
        let train = curve(2.3, 0.08, 500.0, 0.35);
        let val = curve(2.2, 0.21, 650.0, 0.12);
        let mut c = Chart {
            title: "RetinaNet training loss".into(),
            x_label: "step".into(),
            y_label: "loss".into(),
            series: vec![
                Series::new("train", draw::palette(0), train),
                Series::new("validation", draw::palette(3), val),
            ],
            ..Chart::default()
        };
        let dir = std::env::temp_dir();
        c.save_png(dir.join("chart.png")).unwrap();
        c.log_y = true;
        c.title = "RetinaNet training loss (log)".into();
        c.save_png(dir.join("chart_log.png")).unwrap();
        let image = c.render().unwrap();
        assert!(image.pixels().any(|p| p.0 == draw::palette(0)));
        assert!(image.pixels().any(|p| p.0 == draw::palette(3)));
    }
}
