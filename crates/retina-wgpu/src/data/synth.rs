//! Deterministic synthetic scenes: flat-coloured shapes on textured backgrounds, with exact
//! boxes, for training a small RetinaNet from scratch in minutes.
//!
//! Every scene is a pure function of `(seed, index)`: its generator is seeded from both, and
//! everything it draws uses only IEEE arithmetic and square roots (no `sin`, `exp` or `ln` from
//! the platform's maths library), so a scene is the same bit for bit on every platform and in
//! any order; datasets are generated in parallel.
//!
//! Drawing: a pixel `(column c, row r)` belongs to a shape when its centre `(c + 0.5, r + 0.5)`
//! lies inside the shape's geometry (no anti-aliasing, so every pixel has one owner). A box is
//! the tight box of its object's *visible* pixels, `[x1, y1, x2, y2]` with `x2`/`y2` exclusive
//! (a column `c` covers `[c, c + 1)`), so boxes are whole numbers; an object's area is its
//! visible pixel count, as COCO's area is the visible segmentation's.

use std::path::Path;

use image::{ImageEncoder, RgbImage};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::coco::{self, Annotation, Category, Image, Instances};
use crate::cpu::boxes::iou;
use crate::error::{Error, Result};
use crate::nn::SeededRng;
use crate::ops::anchors::AnchorConfig;
use crate::ops::matcher::{GroundTruth, TargetAssigner};
use crate::progress::{Finish, NoProgress, Progress};

/// A shape class of the synthetic scenes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    /// A filled disc; its side is the diameter.
    Circle,
    /// An axis-aligned filled square.
    Square,
    /// A filled equilateral triangle of that side, at any rotation.
    Triangle,
    /// A plus sign (two bars of a third of the side's thickness), at any rotation.
    Cross,
    /// A disc with a hole of half its diameter (the background shows through the hole).
    Ring,
    /// A square standing on a corner; its side is the diagonal.
    Diamond,
}

impl Shape {
    /// Every shape, in a fixed order.
    pub const ALL: [Shape; 6] = [
        Shape::Circle,
        Shape::Square,
        Shape::Triangle,
        Shape::Cross,
        Shape::Ring,
        Shape::Diamond,
    ];

    /// The shape's name, as written in COCO's `categories` (`"circle"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Cross => "cross",
            Shape::Ring => "ring",
            Shape::Diamond => "diamond",
        }
    }
}

/// What lies behind the shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Background {
    /// A two-colour gradient at a random angle with up to three patches of stripes or checkers.
    Textured,
    /// One random colour (with `noise: 0`, every background pixel has exactly that colour).
    Flat,
}

/// How synthetic scenes are drawn; every number configurable, serialised as JSON.
///
/// The defaults are the data of the small RetinaNet (128 x 128, see docs/ARCHITECTURE.md): 1-8 objects
/// of 4 classes, 16-64 px, on textured backgrounds with a little noise.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SceneConfig {
    /// Side of the square image in pixels (default 128).
    pub size: u32,
    /// Fewest objects in a scene (default 1; 0 allows empty scenes).
    pub min_objects: u32,
    /// Most objects in a scene (default 8, at most 255). The count is drawn uniformly in
    /// between; a scene has fewer when an object finds no place that respects
    /// [`SceneConfig::max_occlusion`].
    pub max_objects: u32,
    /// Smallest object side as a fraction of [`SceneConfig::size`] (default 0.125: 16 px at 128,
    /// the smallest anchor; at 12 px, 6% of the objects have no anchor at IoU 0.5, at 16 px 1%).
    /// The side is a circle's diameter, a square's or triangle's side, a cross's span.
    pub min_side: f32,
    /// Largest object side as a fraction of [`SceneConfig::size`] (default 0.5: 64 px at 128).
    /// Sides are log-uniform between the two, as anchor sizes are.
    pub max_side: f32,
    /// The shape classes: class `i` is `shapes[i]` (default circle, square, triangle, cross).
    pub shapes: Vec<Shape>,
    /// The background (default textured).
    pub background: Background,
    /// Standard deviation of the per-pixel noise added to the whole image, in levels of 255
    /// (default 6; 0 for none).
    pub noise: f32,
    /// Least RGB distance between an object's colour and the mean of the background around
    /// it, and the colours of the objects it touches (default 100 of 441).
    pub min_contrast: f32,
    /// Most share of an object's pixels that later objects may cover (default 0.4); a placement
    /// that would hide more is tried elsewhere.
    pub max_occlusion: f32,
}

impl Default for SceneConfig {
    fn default() -> Self {
        Self {
            size: 128,
            min_objects: 1,
            max_objects: 8,
            min_side: 0.125,
            max_side: 0.5,
            shapes: vec![Shape::Circle, Shape::Square, Shape::Triangle, Shape::Cross],
            background: Background::Textured,
            noise: 6.0,
            min_contrast: 100.0,
            max_occlusion: 0.4,
        }
    }
}

/// One synthetic image and its ground truth.
#[derive(Clone, Debug, PartialEq)]
pub struct Scene {
    /// Side of the square image in pixels.
    pub size: u32,
    /// RGB, row-major, `size * size * 3` bytes (HWC).
    pub pixels: Vec<u8>,
    /// Tight boxes `[x1, y1, x2, y2]` of the objects' visible pixels (`x2`, `y2` exclusive);
    /// whole numbers.
    pub boxes: Vec<[f32; 4]>,
    /// Class of each object: an index into [`SceneConfig::shapes`].
    pub classes: Vec<u32>,
    /// Visible pixels of each object.
    pub areas: Vec<u32>,
}

impl Scene {
    /// The classes as the matcher takes them.
    pub fn classes_i32(&self) -> Vec<i32> {
        self.classes.iter().map(|&c| c as i32).collect()
    }

    /// The pixels as an [`image::RgbImage`] (a copy).
    ///
    /// # Panics
    /// If `pixels` was changed by hand to hold other than `size * size * 3` bytes.
    pub fn to_image(&self) -> RgbImage {
        RgbImage::from_raw(self.size, self.size, self.pixels.clone()).expect("size * size * 3 bytes")
    }
}

impl SceneConfig {
    /// Checks that every number is in range; errors name the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::invalid(format!("scene config: {msg}")));
        if !(16..=4096).contains(&self.size) {
            return bad(format!("size {} must be in [16, 4096]", self.size));
        }
        if self.max_objects > 255 || self.min_objects > self.max_objects {
            return bad(format!(
                "objects {}-{}: need min_objects <= max_objects <= 255",
                self.min_objects, self.max_objects
            ));
        }
        let sides_ok = self.min_side.is_finite()
            && self.max_side.is_finite()
            && self.min_side > 0.0
            && self.min_side <= self.max_side
            && self.max_side <= 0.9;
        if !sides_ok {
            return bad(format!(
                "sides {}-{} (fractions of the size) must satisfy 0 < min_side <= max_side <= 0.9",
                self.min_side, self.max_side
            ));
        }
        if f64::from(self.min_side) * f64::from(self.size) < 4.0 {
            return bad(format!(
                "min_side {} x size {} is under 4 px; objects would be a few pixels",
                self.min_side, self.size
            ));
        }
        if self.shapes.is_empty() {
            return bad("shapes is empty; give at least one shape class".into());
        }
        for (i, s) in self.shapes.iter().enumerate() {
            if self.shapes[..i].contains(s) {
                return bad(format!("shape {} is listed twice", s.name()));
            }
        }
        if !(self.noise.is_finite() && (0.0..=128.0).contains(&self.noise)) {
            return bad(format!("noise {} must be in [0, 128]", self.noise));
        }
        if !(self.min_contrast.is_finite() && (0.0..=400.0).contains(&self.min_contrast)) {
            return bad(format!("min_contrast {} must be in [0, 400]", self.min_contrast));
        }
        if !(self.max_occlusion.is_finite() && (0.0..=1.0).contains(&self.max_occlusion)) {
            return bad(format!("max_occlusion {} must be in [0, 1]", self.max_occlusion));
        }
        Ok(())
    }

    /// The class names, class `i` first: `shapes[i].name()`.
    pub fn class_names(&self) -> Vec<&'static str> {
        self.shapes.iter().map(|s| s.name()).collect()
    }

    /// Number of classes K.
    pub fn num_classes(&self) -> usize {
        self.shapes.len()
    }

    /// The smallest and largest object side in pixels.
    pub fn side_range_px(&self) -> (f64, f64) {
        let size = f64::from(self.size);
        (f64::from(self.min_side) * size, f64::from(self.max_side) * size)
    }

    /// Scene `index` of the stream `seed`: a function of `(seed, index)` alone.
    pub fn scene(&self, seed: u64, index: u64) -> Result<Scene> {
        Ok(self.scene_with_mask(seed, index)?.0)
    }

    /// Scene `index` of the stream `seed` and its object mask: `mask[row * size + col]` is
    /// `i + 1` where object `i` is visible, 0 on the background.
    pub fn scene_with_mask(&self, seed: u64, index: u64) -> Result<(Scene, Vec<u8>)> {
        self.validate()?;
        Ok(Painter::new(self, seed, index).paint())
    }
}

/// The generator of scene `index` of stream `seed`: both pass through SplitMix64's finaliser so
/// that nearby seeds and indices give unrelated streams.
fn scene_rng(seed: u64, index: u64) -> SeededRng {
    let mut a = SeededRng::new(seed);
    let mixed = a.next_u64() ^ index.wrapping_mul(0xd1b5_4a32_d192_ed03);
    let mut b = SeededRng::new(mixed);
    SeededRng::new(b.next_u64())
}

// ---------------------------------------------------------------------------------------------
// Platform-independent maths: arithmetic and sqrt only (both correctly rounded under IEEE 754).

const LN_2: f64 = std::f64::consts::LN_2;

/// `e^x` by range reduction to `[0, ln 2)` and a Taylor series.
fn exp_det(x: f64) -> f64 {
    let n = (x / LN_2).floor();
    let f = x - n * LN_2;
    let (mut term, mut sum) = (1.0f64, 1.0f64);
    for k in 1..=24 {
        term *= f / f64::from(k);
        sum += term;
    }
    let mut scale = 1.0;
    let two = if n >= 0.0 { 2.0 } else { 0.5 };
    for _ in 0..(n.abs() as u32) {
        scale *= two;
    }
    sum * scale
}

/// `ln x` for `x > 0` by reduction to `[1, 2)` and the `atanh` series.
fn ln_det(x: f64) -> f64 {
    let (mut m, mut e) = (x, 0.0);
    while m >= 2.0 {
        m *= 0.5;
        e += 1.0;
    }
    while m < 1.0 {
        m *= 2.0;
        e -= 1.0;
    }
    let z = (m - 1.0) / (m + 1.0);
    let z2 = z * z;
    let (mut power, mut sum) = (z, 0.0);
    for k in 0..40 {
        sum += power / f64::from(2 * k + 1);
        power *= z2;
    }
    2.0 * sum + e * LN_2
}

/// Uniform in `[lo, hi)`.
fn uniform(rng: &mut SeededRng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.uniform()
}

/// Uniform in `lo..=hi`.
fn uniform_int(rng: &mut SeededRng, lo: u32, hi: u32) -> u32 {
    let span = u64::from(hi - lo) + 1;
    lo + (rng.next_u64() % span) as u32
}

/// A uniformly distributed direction `(cos t, sin t)`, by rejection from the square.
fn direction(rng: &mut SeededRng) -> [f64; 2] {
    loop {
        let (x, y) = (uniform(rng, -1.0, 1.0), uniform(rng, -1.0, 1.0));
        let r2 = x * x + y * y;
        if r2 > 1e-4 && r2 <= 1.0 {
            let r = r2.sqrt();
            return [x / r, y / r];
        }
    }
}

fn random_colour(rng: &mut SeededRng) -> [f64; 3] {
    [0; 3].map(|_| (rng.next_u64() % 256) as f64)
}

fn distance(a: [f64; 3], b: [f64; 3]) -> f64 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

// ---------------------------------------------------------------------------------------------
// Geometry.

/// A shape placed in the image: its pixels are those whose centres are inside.
enum Geometry {
    /// Points with `r_in^2 < d^2 <= r_out^2` from the centre.
    Disc { centre: [f64; 2], r_out2: f64, r_in2: f64 },
    /// A union of convex polygons (each given by its vertices in order).
    Polygons(Vec<Vec<[f64; 2]>>),
}

impl Geometry {
    fn contains(&self, p: [f64; 2]) -> bool {
        match self {
            Geometry::Disc { centre, r_out2, r_in2 } => {
                let d2 = (p[0] - centre[0]).powi(2) + (p[1] - centre[1]).powi(2);
                d2 <= *r_out2 && d2 > *r_in2
            }
            Geometry::Polygons(polygons) => polygons.iter().any(|poly| inside_convex(poly, p)),
        }
    }
}

/// Inside (or on the edge of) a convex polygon of either orientation.
fn inside_convex(poly: &[[f64; 2]], p: [f64; 2]) -> bool {
    let (mut pos, mut neg) = (false, false);
    for (i, a) in poly.iter().enumerate() {
        let b = poly[(i + 1) % poly.len()];
        let cross = (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0]);
        pos |= cross > 0.0;
        neg |= cross < 0.0;
        if pos && neg {
            return false;
        }
    }
    true
}

/// A shape of side `side` around the origin: its geometry relative to the centre and its
/// half-extents (how far it reaches in x and y).
fn outline(shape: Shape, side: f64, rng: &mut SeededRng) -> (Outline, [f64; 2]) {
    let h = side / 2.0;
    let rotate = |v: [f64; 2], d: [f64; 2]| [v[0] * d[0] - v[1] * d[1], v[0] * d[1] + v[1] * d[0]];
    let polygons = match shape {
        Shape::Circle => return (Outline::Disc { r_out: h, r_in: 0.0 }, [h, h]),
        Shape::Ring => {
            return (
                Outline::Disc {
                    r_out: h,
                    r_in: h / 2.0,
                },
                [h, h],
            );
        }
        Shape::Square => vec![vec![[-h, -h], [h, -h], [h, h], [-h, h]]],
        Shape::Diamond => vec![vec![[0.0, -h], [h, 0.0], [0.0, h], [-h, 0.0]]],
        Shape::Triangle => {
            let d = direction(rng);
            let r = side / 3f64.sqrt(); // circumradius of an equilateral triangle
            let turn = [-0.5, 3f64.sqrt() / 2.0]; // 120 degrees
            let v0 = [r * d[0], r * d[1]];
            let v1 = rotate(v0, turn);
            let v2 = rotate(v1, turn);
            vec![vec![v0, v1, v2]]
        }
        Shape::Cross => {
            let d = direction(rng);
            let t = side / 6.0; // half the bar thickness: bars a third of the side thick
            let bar = |a: f64, b: f64| {
                vec![[-a, -b], [a, -b], [a, b], [-a, b]]
                    .into_iter()
                    .map(|v| rotate(v, d))
                    .collect()
            };
            vec![bar(h, t), bar(t, h)]
        }
    };
    let mut extent = [0.0f64; 2];
    for v in polygons.iter().flatten() {
        extent[0] = extent[0].max(v[0].abs());
        extent[1] = extent[1].max(v[1].abs());
    }
    (Outline::Polygons(polygons), extent)
}

/// A shape around the origin, before it is placed.
enum Outline {
    Disc { r_out: f64, r_in: f64 },
    Polygons(Vec<Vec<[f64; 2]>>),
}

impl Outline {
    fn place(self, c: [f64; 2]) -> Geometry {
        match self {
            Outline::Disc { r_out, r_in } => Geometry::Disc {
                centre: c,
                r_out2: r_out * r_out,
                r_in2: r_in * r_in,
            },
            Outline::Polygons(polys) => Geometry::Polygons(
                polys
                    .into_iter()
                    .map(|p| p.into_iter().map(|v| [v[0] + c[0], v[1] + c[1]]).collect())
                    .collect(),
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Painting.

struct Object {
    class: u32,
    colour: [f64; 3],
    /// Pixel box `[c0, r0, c1, r1]` (inclusive) of its drawn pixels.
    drawn_box: [usize; 4],
    drawn: u32,
    visible: u32,
}

struct Painter<'a> {
    config: &'a SceneConfig,
    rng: SeededRng,
    n: usize,
    canvas: Vec<[f64; 3]>,
    owner: Vec<u8>,
    objects: Vec<Object>,
}

/// Placements tried per object before it is given up.
const PLACEMENT_TRIES: usize = 40;
/// Colours tried per object before the most distinct one is taken.
const COLOUR_TRIES: usize = 64;

impl<'a> Painter<'a> {
    fn new(config: &'a SceneConfig, seed: u64, index: u64) -> Self {
        let n = config.size as usize;
        Self {
            config,
            rng: scene_rng(seed, index),
            n,
            canvas: vec![[0.0; 3]; n * n],
            owner: vec![0; n * n],
            objects: Vec::new(),
        }
    }

    fn paint(mut self) -> (Scene, Vec<u8>) {
        match self.config.background {
            Background::Flat => {
                let c = random_colour(&mut self.rng);
                self.canvas.fill(c);
            }
            Background::Textured => self.textured_background(),
        }
        let count = uniform_int(&mut self.rng, self.config.min_objects, self.config.max_objects);
        for _ in 0..count {
            self.add_object();
        }
        self.finish()
    }

    fn textured_background(&mut self) {
        let n = self.n;
        let rng = &mut self.rng;
        let a = random_colour(rng);
        let b = a.map(|v| (v + uniform(rng, -90.0, 90.0)).clamp(0.0, 255.0));
        let d = direction(rng);
        // Projection of the pixel centres on d spans [lo, lo + span].
        let span = (d[0].abs() + d[1].abs()) * n as f64;
        let lo = d[0].min(0.0) * n as f64 + d[1].min(0.0) * n as f64;
        for r in 0..n {
            for c in 0..n {
                let t = ((c as f64 + 0.5) * d[0] + (r as f64 + 0.5) * d[1] - lo) / span;
                self.canvas[r * n + c] = [0, 1, 2].map(|k| a[k] + (b[k] - a[k]) * t);
            }
        }
        let patches = uniform_int(rng, 0, 3);
        for _ in 0..patches {
            let w = uniform(rng, n as f64 / 8.0, n as f64 / 2.0) as usize;
            let h = uniform(rng, n as f64 / 8.0, n as f64 / 2.0) as usize;
            let x0 = uniform_int(rng, 0, (n - w) as u32) as usize;
            let y0 = uniform_int(rng, 0, (n - h) as u32) as usize;
            let amplitude = [0; 3].map(|_| uniform(rng, -45.0, 45.0));
            let stripes = rng.uniform() < 0.5;
            let dir = direction(rng);
            let period = uniform(rng, 3.0, 12.0) * n as f64 / 128.0;
            for r in y0..y0 + h {
                for c in x0..x0 + w {
                    let (x, y) = (c as f64 + 0.5, r as f64 + 0.5);
                    let on = if stripes {
                        ((x * dir[0] + y * dir[1]) / period).floor().rem_euclid(2.0) == 0.0
                    } else {
                        ((x / period).floor() + (y / period).floor()).rem_euclid(2.0) == 0.0
                    };
                    let sign = if on { 1.0 } else { -1.0 };
                    let px = &mut self.canvas[r * n + c];
                    for k in 0..3 {
                        px[k] = (px[k] + sign * amplitude[k]).clamp(0.0, 255.0);
                    }
                }
            }
        }
    }

    /// Tries to place one more object; gives up after [`PLACEMENT_TRIES`] positions.
    fn add_object(&mut self) {
        let n = self.n;
        let (min_side, max_side) = self.config.side_range_px();
        let log_range = ln_det(max_side / min_side);
        let mut covered = vec![0u32; self.objects.len()];
        // Class and size are drawn once, so that crowded scenes do not favour small or thin
        // shapes; only the position and rotation are tried again.
        let class = uniform_int(&mut self.rng, 0, self.config.shapes.len() as u32 - 1);
        let side = min_side * exp_det(log_range * self.rng.uniform());
        for _ in 0..PLACEMENT_TRIES {
            let (outline, extent) = outline(self.config.shapes[class as usize], side, &mut self.rng);
            let centre = [0, 1].map(|k| {
                let room = n as f64 - 2.0 * extent[k];
                if room > 0.0 {
                    extent[k] + room * self.rng.uniform()
                } else {
                    n as f64 / 2.0
                }
            });
            let geometry = outline.place(centre);
            let c0 = (centre[0] - extent[0] - 1.0).floor().max(0.0) as usize;
            let r0 = (centre[1] - extent[1] - 1.0).floor().max(0.0) as usize;
            let c1 = ((centre[0] + extent[0] + 1.0).ceil() as usize).min(n - 1);
            let r1 = ((centre[1] + extent[1] + 1.0).ceil() as usize).min(n - 1);
            let mut pixels = Vec::new();
            let mut bx = [usize::MAX, usize::MAX, 0, 0];
            for r in r0..=r1 {
                for c in c0..=c1 {
                    if geometry.contains([c as f64 + 0.5, r as f64 + 0.5]) {
                        pixels.push(r * n + c);
                        bx = [bx[0].min(c), bx[1].min(r), bx[2].max(c), bx[3].max(r)];
                    }
                }
            }
            if pixels.len() < 8 {
                continue;
            }
            covered.fill(0);
            for &p in &pixels {
                if let Some(o) = (self.owner[p] as usize).checked_sub(1) {
                    covered[o] += 1;
                }
            }
            let max_hidden = f64::from(self.config.max_occlusion);
            let too_hidden =
                self.objects.iter().zip(&covered).any(|(o, &cov)| {
                    cov > 0 && f64::from(o.drawn - (o.visible - cov)) > max_hidden * f64::from(o.drawn)
                });
            if too_hidden {
                continue;
            }
            let colour = self.pick_colour(bx);
            let id = self.objects.len() as u8 + 1;
            for &p in &pixels {
                self.canvas[p] = colour;
                self.owner[p] = id;
            }
            for (o, &cov) in self.objects.iter_mut().zip(&covered) {
                o.visible -= cov;
            }
            self.objects.push(Object {
                class,
                colour,
                drawn_box: bx,
                drawn: pixels.len() as u32,
                visible: pixels.len() as u32,
            });
            return;
        }
    }

    /// A random colour at least `min_contrast` from the mean of the canvas around the box and
    /// from the colours of the objects whose boxes it touches; the most distinct of
    /// [`COLOUR_TRIES`] when none is.
    fn pick_colour(&mut self, bx: [usize; 4]) -> [f64; 3] {
        let n = self.n;
        let margin = 3;
        let (c0, r0) = (bx[0].saturating_sub(margin), bx[1].saturating_sub(margin));
        let (c1, r1) = ((bx[2] + margin).min(n - 1), (bx[3] + margin).min(n - 1));
        let mut mean = [0.0; 3];
        for r in r0..=r1 {
            for c in c0..=c1 {
                let px = self.canvas[r * n + c];
                for k in 0..3 {
                    mean[k] += px[k];
                }
            }
        }
        let count = ((r1 - r0 + 1) * (c1 - c0 + 1)) as f64;
        mean = mean.map(|v| v / count);
        let touching: Vec<[f64; 3]> = self
            .objects
            .iter()
            .filter(|o| {
                let b = o.drawn_box;
                o.visible > 0 && b[0] <= c1 && c0 <= b[2] && b[1] <= r1 && r0 <= b[3]
            })
            .map(|o| o.colour)
            .collect();
        let mut best = ([0.0; 3], -1.0);
        for _ in 0..COLOUR_TRIES {
            let colour = random_colour(&mut self.rng);
            let score = touching
                .iter()
                .fold(distance(colour, mean), |s, &t| s.min(distance(colour, t)));
            if score >= f64::from(self.config.min_contrast) {
                return colour;
            }
            if score > best.1 {
                best = (colour, score);
            }
        }
        best.0
    }

    fn finish(mut self) -> (Scene, Vec<u8>) {
        let n = self.n;
        // Tight boxes and areas of the visible pixels.
        let mut boxes = vec![[usize::MAX, usize::MAX, 0, 0]; self.objects.len()];
        let mut areas = vec![0u32; self.objects.len()];
        for r in 0..n {
            for c in 0..n {
                if let Some(o) = (self.owner[r * n + c] as usize).checked_sub(1) {
                    let b = &mut boxes[o];
                    *b = [b[0].min(c), b[1].min(r), b[2].max(c), b[3].max(r)];
                    areas[o] += 1;
                }
            }
        }
        // Objects hidden entirely (possible only with max_occlusion 1) are dropped, and the
        // mask renumbered.
        let mut renumber = vec![0u8; self.objects.len() + 1];
        let mut scene = Scene {
            size: self.config.size,
            pixels: Vec::with_capacity(n * n * 3),
            boxes: Vec::new(),
            classes: Vec::new(),
            areas: Vec::new(),
        };
        for (i, o) in self.objects.iter().enumerate() {
            if areas[i] == 0 {
                continue;
            }
            let b = boxes[i];
            scene
                .boxes
                .push([b[0] as f32, b[1] as f32, (b[2] + 1) as f32, (b[3] + 1) as f32]);
            scene.classes.push(o.class);
            scene.areas.push(areas[i]);
            renumber[i + 1] = scene.boxes.len() as u8;
        }
        for o in &mut self.owner {
            *o = renumber[*o as usize];
        }
        // Noise: a sum of four uniforms (nearly normal), scaled to the configured deviation;
        // four 16-bit uniforms come from one draw.
        let sigma = f64::from(self.config.noise);
        let scale = sigma * 3f64.sqrt() / 65536.0;
        for px in &self.canvas {
            for &v in px {
                let noisy = if sigma > 0.0 {
                    let bits = self.rng.next_u64();
                    let sum: u64 = (0..4).map(|k| (bits >> (16 * k)) & 0xffff).sum();
                    v + (sum as f64 - 2.0 * 65536.0) * scale
                } else {
                    v
                };
                scene.pixels.push(noisy.round().clamp(0.0, 255.0) as u8);
            }
        }
        (scene, self.owner)
    }
}

// ---------------------------------------------------------------------------------------------
// COCO output.

/// Writes `images` scenes of stream `seed` as a COCO dataset: `dir/images/000000.png`, ... (scene
/// `i` is image id `i` and file `{i:06}.png`), then `dir/annotations.json` (categories `1..=K`
/// named by [`SceneConfig::class_names`]; `bbox` the tight box; `area` the visible pixel count;
/// `iscrowd` 0) and `dir/synth.json` (the seed, the count and the configuration, to regenerate
/// it). Scenes are generated and encoded in parallel; every file is written through a
/// temporary file renamed into place, and the annotations last, so a dataset with
/// `annotations.json` is complete. Returns the instances written.
pub fn write_coco(dir: impl AsRef<Path>, config: &SceneConfig, images: usize, seed: u64) -> Result<Instances> {
    write_coco_with_progress(dir, config, images, seed, &NoProgress)
}

/// [`write_coco`], reporting to `progress` in scenes written.
pub fn write_coco_with_progress(
    dir: impl AsRef<Path>,
    config: &SceneConfig,
    images: usize,
    seed: u64,
    progress: &dyn Progress,
) -> Result<Instances> {
    config.validate()?;
    if images == 0 {
        return Err(Error::invalid("synthetic dataset: the image count must be at least 1"));
    }
    let dir = dir.as_ref();
    let image_dir = dir.join("images");
    std::fs::create_dir_all(&image_dir).map_err(|e| Error::io(&image_dir, e))?;

    let finish = Finish::start(progress, "writing scenes", images as u64);
    let scenes: Result<Vec<(Image, Scene)>> = (0..images)
        .into_par_iter()
        .map(|i| {
            let mut scene = config.scene(seed, i as u64)?;
            let file_name = format!("{i:06}.png");
            let path = image_dir.join(&file_name);
            let png = encode_png(&scene.pixels, scene.size, scene.size)
                .map_err(|e| Error::format(path.display().to_string(), e))?;
            coco::write_file(&path, &png)?;
            scene.pixels = Vec::new();
            progress.advance(1);
            let image = Image {
                id: i as i64,
                file_name,
                width: scene.size,
                height: scene.size,
            };
            Ok((image, scene))
        })
        .collect();
    drop(finish);
    let scenes = scenes?;

    let categories = config
        .class_names()
        .iter()
        .enumerate()
        .map(|(i, name)| Category {
            id: i as i64 + 1,
            name: (*name).to_string(),
            supercategory: "shape".to_string(),
        })
        .collect();
    let mut annotations = Vec::new();
    let mut image_list = Vec::with_capacity(scenes.len());
    for (image, scene) in scenes {
        for ((b, &class), &area) in scene.boxes.iter().zip(&scene.classes).zip(&scene.areas) {
            annotations.push(Annotation {
                id: annotations.len() as i64 + 1,
                image_id: image.id,
                category_id: i64::from(class) + 1,
                bbox: [
                    f64::from(b[0]),
                    f64::from(b[1]),
                    f64::from(b[2] - b[0]),
                    f64::from(b[3] - b[1]),
                ],
                area: f64::from(area),
                iscrowd: false,
            });
        }
        image_list.push(image);
    }
    let source = dir.join("annotations.json").display().to_string();
    let instances = Instances::new(image_list, annotations, categories, &source)?;

    #[derive(Serialize)]
    struct Recipe<'a> {
        seed: u64,
        images: usize,
        config: &'a SceneConfig,
    }
    let recipe = Recipe { seed, images, config };
    let recipe = serde_json::to_vec_pretty(&recipe).expect("the recipe serialises");
    coco::write_file(&dir.join("synth.json"), &recipe)?;
    instances.save(dir.join("annotations.json"))?;
    Ok(instances)
}

/// PNG bytes of an RGB image.
pub(crate) fn encode_png(rgb: &[u8], width: u32, height: u32) -> std::result::Result<Vec<u8>, String> {
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(rgb, width, height, image::ExtendedColorType::Rgb8)
        .map_err(|e| format!("cannot encode the PNG: {e}"))?;
    Ok(png)
}

// ---------------------------------------------------------------------------------------------
// Anchor statistics.

/// Objects of one size range (the square root of the box area, in pixels) and how many of them
/// an anchor covers.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct SizeBin {
    /// Smallest size in the bin (inclusive).
    pub from: f32,
    /// Size the bin stops before (infinite for the last).
    pub to: f32,
    /// Objects in the bin.
    pub objects: usize,
    /// Of them, those with an anchor at IoU >= the matcher's high threshold.
    pub covered: usize,
}

/// How a set of images' boxes meets the anchors: what the matcher makes of them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SynthStats {
    /// Images measured.
    pub images: usize,
    /// Objects (ground-truth boxes) in them.
    pub objects: usize,
    /// Anchors per image.
    pub anchors_per_image: usize,
    /// The matcher's high threshold (IoU for a positive).
    pub high: f32,
    /// Objects with an anchor at IoU >= `high`.
    pub covered: usize,
    /// Sum over objects of the highest IoU of any anchor.
    pub best_iou_sum: f64,
    /// Positive anchors (matched to an object), low-quality matches included.
    pub positives: u64,
    /// Background anchors (IoU below the low threshold with every object).
    pub background: u64,
    /// Ignored anchors (between the thresholds).
    pub ignored: u64,
    /// Objects that no anchor is matched to (every anchor of theirs is taken by another object).
    pub without_positive: usize,
    /// Objects whose positive anchors all come from low-quality matching (IoU < `high`).
    pub low_quality_only: usize,
    /// Coverage by object size.
    pub by_size: Vec<SizeBin>,
}

const SIZE_EDGES: [f32; 8] = [0.0, 12.0, 16.0, 24.0, 32.0, 48.0, 64.0, 96.0];

impl SynthStats {
    fn empty(anchors_per_image: usize, high: f32) -> Self {
        let by_size = SIZE_EDGES
            .iter()
            .enumerate()
            .map(|(i, &from)| SizeBin {
                from,
                to: SIZE_EDGES.get(i + 1).copied().unwrap_or(f32::INFINITY),
                objects: 0,
                covered: 0,
            })
            .collect();
        Self {
            images: 0,
            objects: 0,
            anchors_per_image,
            high,
            covered: 0,
            best_iou_sum: 0.0,
            positives: 0,
            background: 0,
            ignored: 0,
            without_positive: 0,
            low_quality_only: 0,
            by_size,
        }
    }

    fn merge(mut self, other: Self) -> Self {
        self.images += other.images;
        self.objects += other.objects;
        self.covered += other.covered;
        self.best_iou_sum += other.best_iou_sum;
        self.positives += other.positives;
        self.background += other.background;
        self.ignored += other.ignored;
        self.without_positive += other.without_positive;
        self.low_quality_only += other.low_quality_only;
        for (a, b) in self.by_size.iter_mut().zip(other.by_size) {
            a.objects += b.objects;
            a.covered += b.covered;
        }
        self
    }

    /// Matches the boxes of `images` to `anchors` with `assigner` on the CPU backend and counts.
    pub fn measure(anchors: &[[f32; 4]], assigner: &TargetAssigner, images: &[GroundTruth<'_>]) -> Result<Self> {
        let a = anchors.len();
        let high = assigner.matcher.high;
        let mut total = Self::empty(a, high);
        for chunk in images.chunks(64) {
            let targets = assigner.assign(&Backend::Cpu, anchors, chunk)?;
            let part = chunk
                .par_iter()
                .enumerate()
                .map(|(i, gt)| {
                    let matches = &targets.matches[i * a..(i + 1) * a];
                    let mut s = Self::empty(a, high);
                    s.images = 1;
                    s.objects = gt.boxes.len();
                    let mut best = vec![0.0f32; gt.boxes.len()];
                    let mut positives = vec![0u32; gt.boxes.len()];
                    let mut good = vec![0u32; gt.boxes.len()];
                    for (anchor, &m) in anchors.iter().zip(matches) {
                        for (b, &gt_box) in best.iter_mut().zip(gt.boxes) {
                            *b = b.max(iou(*anchor, gt_box));
                        }
                        match m {
                            -1 => s.background += 1,
                            -2 => s.ignored += 1,
                            j => {
                                let j = j as usize;
                                s.positives += 1;
                                positives[j] += 1;
                                good[j] += u32::from(iou(*anchor, gt.boxes[j]) >= high);
                            }
                        }
                    }
                    for (j, b) in gt.boxes.iter().enumerate() {
                        let hit = best[j] >= high;
                        s.covered += usize::from(hit);
                        s.best_iou_sum += f64::from(best[j]);
                        s.without_positive += usize::from(positives[j] == 0);
                        s.low_quality_only += usize::from(positives[j] > 0 && good[j] == 0);
                        let side = ((b[2] - b[0]) * (b[3] - b[1])).max(0.0).sqrt();
                        if let Some(bin) = s.by_size.iter_mut().rev().find(|bin| side >= bin.from) {
                            bin.objects += 1;
                            bin.covered += usize::from(hit);
                        }
                    }
                    s
                })
                .reduce(|| Self::empty(a, high), Self::merge);
            total = total.merge(part);
        }
        Ok(total)
    }

    /// Share of objects with an anchor at IoU >= `high`.
    pub fn covered_share(&self) -> f64 {
        self.covered as f64 / self.objects.max(1) as f64
    }

    /// Mean over objects of the highest anchor IoU.
    pub fn mean_best_iou(&self) -> f64 {
        self.best_iou_sum / self.objects.max(1) as f64
    }

    /// Positive anchors per object.
    pub fn positives_per_object(&self) -> f64 {
        self.positives as f64 / self.objects.max(1) as f64
    }

    /// Background anchors per positive anchor.
    pub fn background_per_positive(&self) -> f64 {
        self.background as f64 / self.positives.max(1) as f64
    }

    /// Share of all anchors that are ignored.
    pub fn ignored_share(&self) -> f64 {
        self.ignored as f64 / (self.images * self.anchors_per_image).max(1) as f64
    }
}

impl std::fmt::Display for SynthStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pct = |a: usize, b: usize| 100.0 * a as f64 / b.max(1) as f64;
        writeln!(
            f,
            "{} images, {} objects ({:.2} per image), {} anchors per image",
            self.images,
            self.objects,
            self.objects as f64 / self.images.max(1) as f64,
            self.anchors_per_image
        )?;
        writeln!(
            f,
            "objects with an anchor at IoU >= {}: {:.1}% (mean best IoU {:.3})",
            self.high,
            100.0 * self.covered_share(),
            self.mean_best_iou()
        )?;
        writeln!(
            f,
            "positive anchors per object: {:.2} ({:.1}% of objects only through low-quality matches, {:.1}% with none)",
            self.positives_per_object(),
            pct(self.low_quality_only, self.objects),
            pct(self.without_positive, self.objects)
        )?;
        writeln!(
            f,
            "background anchors per positive: {:.0}; ignored anchors: {:.2}% of all",
            self.background_per_positive(),
            100.0 * self.ignored_share()
        )?;
        write!(f, "coverage by object size (sqrt of box area):")?;
        for bin in self.by_size.iter().filter(|b| b.objects > 0) {
            let range = if bin.to.is_finite() {
                format!("{}-{}", bin.from, bin.to)
            } else {
                format!(">={}", bin.from)
            };
            write!(
                f,
                "\n  {range:>7} px: {:>7} objects, {:5.1}% covered",
                bin.objects,
                pct(bin.covered, bin.objects)
            )?;
        }
        Ok(())
    }
}

/// The anchor statistics of `images` scenes of stream `seed`, with the small RetinaNet's anchors
/// ([`AnchorConfig::small`]) for a `size x size` input and RetinaNet's matcher (0.5 / 0.4,
/// low-quality matches allowed, as in training), on the CPU backend.
pub fn anchor_statistics(config: &SceneConfig, images: usize, seed: u64) -> Result<SynthStats> {
    config.validate()?;
    let scenes: Vec<Scene> = (0..images as u64)
        .into_par_iter()
        .map(|i| config.scene(seed, i))
        .collect::<Result<_>>()?;
    let classes: Vec<Vec<i32>> = scenes.iter().map(Scene::classes_i32).collect();
    let gts: Vec<GroundTruth<'_>> = scenes
        .iter()
        .zip(&classes)
        .map(|(scene, classes)| GroundTruth {
            boxes: &scene.boxes,
            classes,
        })
        .collect();
    let anchors = AnchorConfig::small().generate(&Backend::Cpu, config.size, config.size)?;
    SynthStats::measure(&anchors, &TargetAssigner::new(config.num_classes()), &gts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_platform_free_exp_and_ln_agree_with_the_library() {
        for x in [-5.0, -0.3, 0.0, 0.1, 0.69, 1.0, 1.7, 3.3] {
            assert!((exp_det(x) - x.exp()).abs() <= 4.0 * f64::EPSILON * x.exp(), "{x}");
        }
        for x in [0.01, 0.5, 1.0, 1.5, 2.0, 5.333, 100.0] {
            assert!((ln_det(x) - x.ln()).abs() <= 1e-14, "{x}");
        }
    }

    #[test]
    fn directions_are_unit_vectors() {
        let mut rng = SeededRng::new(3);
        for _ in 0..100 {
            let d = direction(&mut rng);
            assert!((d[0] * d[0] + d[1] * d[1] - 1.0).abs() < 1e-12);
        }
    }
}
