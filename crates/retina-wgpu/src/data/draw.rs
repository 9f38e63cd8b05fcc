//! Boxes and labels drawn into RGB images, with a built-in 5 x 7 bitmap font, and image grids:
//! enough to show ground truth and detections (`circle 0.93`) without a font file.
//!
//! ```
//! use retina_wgpu::data::draw;
//!
//! let mut image = image::RgbImage::new(128, 128);
//! draw::draw_label(&mut image, [20.0, 30.0, 60.0, 90.0], "circle 0.93", draw::palette(0), 1);
//! let sheet = draw::grid(&[image.clone(), image], 2, 4, [255, 255, 255]);
//! assert_eq!(sheet.dimensions(), (260, 128));
//! ```
//!
//! Coordinates follow the crate's boxes: `[x1, y1, x2, y2]` in pixels, a column `c` covering
//! `[c, c + 1)`, so a box outline covers columns `floor(x1)` to `ceil(x2) - 1`. Everything is
//! clipped to the image; nothing panics on boxes partly or wholly outside it.

use std::path::Path;

use image::RgbImage;

use crate::error::{Error, Result};

/// Glyph width and height of the built-in font, in font pixels (glyphs advance by one more).
pub const GLYPH_SIZE: (u32, u32) = (5, 7);

/// The font: each row is 5 bits, the leftmost pixel in bit 4. Letters are upper case (lower
/// case is drawn with them); a character not listed is drawn as `?`.
#[rustfmt::skip]
const GLYPHS: &[(char, [u8; 7])] = &[
    (' ', [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000]),
    ('^', [0b00100, 0b01010, 0b10001, 0b00000, 0b00000, 0b00000, 0b00000]),
    ('*', [0b00000, 0b00100, 0b10101, 0b01110, 0b10101, 0b00100, 0b00000]),
    ('0', [0b01110, 0b10001, 0b10011, 0b10101, 0b11001, 0b10001, 0b01110]),
    ('1', [0b00100, 0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110]),
    ('2', [0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b01000, 0b11111]),
    ('3', [0b11111, 0b00010, 0b00100, 0b00010, 0b00001, 0b10001, 0b01110]),
    ('4', [0b00010, 0b00110, 0b01010, 0b10010, 0b11111, 0b00010, 0b00010]),
    ('5', [0b11111, 0b10000, 0b11110, 0b00001, 0b00001, 0b10001, 0b01110]),
    ('6', [0b00110, 0b01000, 0b10000, 0b11110, 0b10001, 0b10001, 0b01110]),
    ('7', [0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b01000, 0b01000]),
    ('8', [0b01110, 0b10001, 0b10001, 0b01110, 0b10001, 0b10001, 0b01110]),
    ('9', [0b01110, 0b10001, 0b10001, 0b01111, 0b00001, 0b00010, 0b01100]),
    ('A', [0b01110, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001]),
    ('B', [0b11110, 0b10001, 0b10001, 0b11110, 0b10001, 0b10001, 0b11110]),
    ('C', [0b01110, 0b10001, 0b10000, 0b10000, 0b10000, 0b10001, 0b01110]),
    ('D', [0b11100, 0b10010, 0b10001, 0b10001, 0b10001, 0b10010, 0b11100]),
    ('E', [0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b11111]),
    ('F', [0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b10000]),
    ('G', [0b01110, 0b10001, 0b10000, 0b10111, 0b10001, 0b10001, 0b01111]),
    ('H', [0b10001, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001]),
    ('I', [0b01110, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110]),
    ('J', [0b00111, 0b00010, 0b00010, 0b00010, 0b00010, 0b10010, 0b01100]),
    ('K', [0b10001, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010, 0b10001]),
    ('L', [0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b11111]),
    ('M', [0b10001, 0b11011, 0b10101, 0b10101, 0b10001, 0b10001, 0b10001]),
    ('N', [0b10001, 0b10001, 0b11001, 0b10101, 0b10011, 0b10001, 0b10001]),
    ('O', [0b01110, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110]),
    ('P', [0b11110, 0b10001, 0b10001, 0b11110, 0b10000, 0b10000, 0b10000]),
    ('Q', [0b01110, 0b10001, 0b10001, 0b10001, 0b10101, 0b10010, 0b01101]),
    ('R', [0b11110, 0b10001, 0b10001, 0b11110, 0b10100, 0b10010, 0b10001]),
    ('S', [0b01111, 0b10000, 0b10000, 0b01110, 0b00001, 0b00001, 0b11110]),
    ('T', [0b11111, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100]),
    ('U', [0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110]),
    ('V', [0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100]),
    ('W', [0b10001, 0b10001, 0b10001, 0b10101, 0b10101, 0b10101, 0b01010]),
    ('X', [0b10001, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001, 0b10001]),
    ('Y', [0b10001, 0b10001, 0b10001, 0b01010, 0b00100, 0b00100, 0b00100]),
    ('Z', [0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b11111]),
    ('.', [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b01100, 0b01100]),
    (',', [0b00000, 0b00000, 0b00000, 0b00000, 0b01100, 0b00100, 0b01000]),
    (':', [0b00000, 0b01100, 0b01100, 0b00000, 0b01100, 0b01100, 0b00000]),
    ('-', [0b00000, 0b00000, 0b00000, 0b11111, 0b00000, 0b00000, 0b00000]),
    ('_', [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b11111]),
    ('+', [0b00000, 0b00100, 0b00100, 0b11111, 0b00100, 0b00100, 0b00000]),
    ('=', [0b00000, 0b00000, 0b11111, 0b00000, 0b11111, 0b00000, 0b00000]),
    ('%', [0b11000, 0b11001, 0b00010, 0b00100, 0b01000, 0b10011, 0b00011]),
    ('/', [0b00000, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b00000]),
    ('(', [0b00010, 0b00100, 0b01000, 0b01000, 0b01000, 0b00100, 0b00010]),
    (')', [0b01000, 0b00100, 0b00010, 0b00010, 0b00010, 0b00100, 0b01000]),
    ('#', [0b01010, 0b01010, 0b11111, 0b01010, 0b11111, 0b01010, 0b01010]),
    ('?', [0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b00000, 0b00100]),
];

fn glyph(c: char) -> &'static [u8; 7] {
    let c = c.to_ascii_uppercase();
    GLYPHS
        .iter()
        .find(|(g, _)| *g == c)
        .or_else(|| GLYPHS.iter().find(|(g, _)| *g == '?'))
        .map(|(_, rows)| rows)
        .expect("the font has '?'")
}

/// A distinct, saturated colour for class `class` (a fixed cycle of 10).
pub fn palette(class: usize) -> [u8; 3] {
    const COLOURS: [[u8; 3]; 10] = [
        [230, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [210, 245, 60],
        [250, 190, 190],
    ];
    COLOURS[class % COLOURS.len()]
}

/// Fills the pixels of columns `x0..x1` and rows `y0..y1` (half-open, clipped to the image).
pub fn fill_rect(image: &mut RgbImage, x0: i64, y0: i64, x1: i64, y1: i64, colour: [u8; 3]) {
    let (w, h) = (i64::from(image.width()), i64::from(image.height()));
    for y in y0.max(0)..y1.min(h) {
        for x in x0.max(0)..x1.min(w) {
            image.put_pixel(x as u32, y as u32, image::Rgb(colour));
        }
    }
}

/// The pixel columns and rows a box covers: `[floor(x1), floor(y1), ceil(x2), ceil(y2)]`,
/// half-open; `None` for a box with a non-finite coordinate.
fn pixel_box(b: [f32; 4]) -> Option<[i64; 4]> {
    if b.iter().any(|v| !v.is_finite()) {
        return None;
    }
    // Saturating float-to-int casts keep huge boxes finite.
    Some([
        b[0].floor() as i64,
        b[1].floor() as i64,
        b[2].ceil() as i64,
        b[3].ceil() as i64,
    ])
}

/// Draws the outline of box `b` (`[x1, y1, x2, y2]`), `thickness` pixels wide, inside the
/// pixels the box covers; a box thinner than two outlines is filled.
pub fn draw_box(image: &mut RgbImage, b: [f32; 4], colour: [u8; 3], thickness: u32) {
    let Some([x0, y0, x1, y1]) = pixel_box(b) else {
        return;
    };
    let t = i64::from(thickness.max(1));
    fill_rect(image, x0, y0, x1, (y0 + t).min(y1), colour);
    fill_rect(image, x0, (y1 - t).max(y0), x1, y1, colour);
    fill_rect(image, x0, y0, (x0 + t).min(x1), y1, colour);
    fill_rect(image, (x1 - t).max(x0), y0, x1, y1, colour);
}

/// Width and height in pixels of `text` drawn at `scale` (one line; each glyph advances 6
/// font pixels, so the last one's spacing is not counted).
pub fn text_size(text: &str, scale: u32) -> (u32, u32) {
    let chars = text.chars().count() as u32;
    let scale = scale.max(1);
    let width = if chars == 0 {
        0
    } else {
        (chars * (GLYPH_SIZE.0 + 1) - 1) * scale
    };
    (width, GLYPH_SIZE.1 * scale)
}

/// Draws `text` with its top-left corner at `(x, y)`, each font pixel a `scale x scale` square.
pub fn draw_text(image: &mut RgbImage, x: i64, y: i64, text: &str, colour: [u8; 3], scale: u32) {
    let s = i64::from(scale.max(1));
    let advance = i64::from(GLYPH_SIZE.0 + 1) * s;
    for (i, c) in text.chars().enumerate() {
        let gx = x + i as i64 * advance;
        for (row, bits) in glyph(c).iter().enumerate() {
            for col in 0..GLYPH_SIZE.0 {
                if bits >> (GLYPH_SIZE.0 - 1 - col) & 1 == 1 {
                    let px = gx + i64::from(col) * s;
                    let py = y + row as i64 * s;
                    fill_rect(image, px, py, px + s, py + s, colour);
                }
            }
        }
    }
}

/// Black or white, whichever reads better on `background`.
pub fn text_colour_on(background: [u8; 3]) -> [u8; 3] {
    let [r, g, b] = background.map(f32::from);
    if 0.299 * r + 0.587 * g + 0.114 * b > 140.0 {
        [0, 0, 0]
    } else {
        [255, 255, 255]
    }
}

/// Draws box `b` with a filled tag holding `label` (`"circle 0.93"`): above the box when there
/// is room, otherwise inside it at its top; moved left to stay in the image where it can be.
pub fn draw_label(image: &mut RgbImage, b: [f32; 4], label: &str, colour: [u8; 3], scale: u32) {
    let Some([x0, y0, _, y1]) = pixel_box(b) else {
        return;
    };
    let scale = scale.max(1);
    draw_box(image, b, colour, scale);
    if label.is_empty() {
        return;
    }
    let (tw, th) = text_size(label, scale);
    let pad = i64::from(scale);
    let (tag_w, tag_h) = (i64::from(tw) + 2 * pad, i64::from(th) + 2 * pad);
    let tag_x = x0.min(i64::from(image.width()) - tag_w).max(0);
    let tag_y = if y0 >= tag_h { y0 - tag_h } else { y0.max(0).min(y1) };
    fill_rect(image, tag_x, tag_y, tag_x + tag_w, tag_y + tag_h, colour);
    draw_text(image, tag_x + pad, tag_y + pad, label, text_colour_on(colour), scale);
}

/// Tiles `images` row by row, `columns` per row, `gap` pixels apart on `background`; tiles may
/// differ in size (each cell is as large as the largest tile).
pub fn grid(images: &[RgbImage], columns: usize, gap: u32, background: [u8; 3]) -> RgbImage {
    let columns = columns.clamp(1, images.len().max(1));
    let rows = images.len().div_ceil(columns);
    let cell_w = images.iter().map(|i| i.width()).max().unwrap_or(0);
    let cell_h = images.iter().map(|i| i.height()).max().unwrap_or(0);
    let width = columns as u32 * cell_w + (columns as u32).saturating_sub(1) * gap;
    let height = rows as u32 * cell_h + (rows as u32).saturating_sub(1) * gap;
    let mut out = RgbImage::from_pixel(width, height, image::Rgb(background));
    for (i, tile) in images.iter().enumerate() {
        let x = (i % columns) as u32 * (cell_w + gap);
        let y = (i / columns) as u32 * (cell_h + gap);
        image::imageops::replace(&mut out, tile, i64::from(x), i64::from(y));
    }
    out
}

/// Scales an image up by a whole factor, each pixel becoming a `factor x factor` square (so
/// labels drawn afterwards stay legible on small images).
pub fn upscale(image: &RgbImage, factor: u32) -> RgbImage {
    let f = factor.max(1);
    image::imageops::resize(
        image,
        image.width() * f,
        image.height() * f,
        image::imageops::FilterType::Nearest,
    )
}

/// Writes `image` as a PNG, through a temporary file renamed into place; errors name the path.
pub fn save_png(path: impl AsRef<Path>, image: &RgbImage) -> Result<()> {
    let path = path.as_ref();
    let png = super::synth::encode_png(image.as_raw(), image.width(), image.height())
        .map_err(|e| Error::format(path.display().to_string(), e))?;
    Ok(crate::coco::write_file(path, &png)?)
}
