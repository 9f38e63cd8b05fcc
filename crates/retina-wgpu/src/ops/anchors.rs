//! RetinaNet anchors: per pyramid level, `scales x aspect ratios` boxes centred on every cell.
//!
//! **Anchor order** (fixed; the model's head output is laid out the same way, so no gather is
//! needed between them): level (P3 first), then row, then column, then anchor-within-cell, where
//! anchor `a = ratio_index * scales.len() + scale_index` (torchvision's order).
//!
//! A level of stride `s` over an image of `H x W` has `ceil(H / s) x ceil(W / s)` cells (the
//! size of a feature map after log2(s) stride-2 convolutions with padding 1). The anchor of cell
//! `(row, col)` is centred at `((col + offset) s, (row + offset) s)`; its width and height are
//! `size * scale / sqrt(ratio)` and `size * scale * sqrt(ratio)` (ratio = h / w, area
//! `(size * scale)^2`), without rounding.

use crate::backend::Backend;
use crate::error::{Error, Result};

/// The largest anchor half-size and cell offset, in pixels, that [`AnchorConfig::validate`]
/// accepts (`1e15`): with images of up to 2^32 pixels a side every anchor then stays far inside
/// the box operations' coordinate range ([`crate::ops::boxes::MAX_BOX_COORD`], `1e18`).
pub const MAX_ANCHOR_PIXELS: f64 = 1e15;

/// Anchor generation parameters; every number configurable.
#[derive(Clone, Debug, PartialEq)]
pub struct AnchorConfig {
    /// Stride of each pyramid level in pixels (P3-P7: 8, 16, 32, 64, 128).
    pub strides: Vec<u32>,
    /// Base anchor size of each level in pixels (the paper: 32 to 512, 4 x the stride).
    pub sizes: Vec<f32>,
    /// Scales applied to every base size (the paper: 2^0, 2^(1/3), 2^(2/3)).
    pub scales: Vec<f32>,
    /// Aspect ratios h / w (the paper: 0.5, 1, 2).
    pub aspect_ratios: Vec<f32>,
    /// Position of the anchor centre in its cell, in cells: 0.5 is the cell centre, 0 its
    /// top-left corner (torchvision's and Detectron2's default).
    pub offset: f32,
}

impl Default for AnchorConfig {
    fn default() -> Self {
        Self::retinanet()
    }
}

impl AnchorConfig {
    /// The paper's anchors: P3-P7, sizes 32-512, three scales, three ratios, centred in cells.
    pub fn retinanet() -> Self {
        Self {
            strides: vec![8, 16, 32, 64, 128],
            sizes: vec![32.0, 64.0, 128.0, 256.0, 512.0],
            scales: vec![1.0, 2f32.powf(1.0 / 3.0), 2f32.powf(2.0 / 3.0)],
            aspect_ratios: vec![0.5, 1.0, 2.0],
            offset: 0.5,
        }
    }

    /// The small RetinaNet's anchors (128 x 128 input): base sizes 16-256 on P3-P7.
    pub fn small() -> Self {
        Self {
            sizes: vec![16.0, 32.0, 64.0, 128.0, 256.0],
            ..Self::retinanet()
        }
    }

    /// Anchors per cell (`scales x ratios`).
    pub fn anchors_per_cell(&self) -> usize {
        self.scales.len().saturating_mul(self.aspect_ratios.len())
    }

    /// Checks that the levels agree and every number is positive and finite.
    pub fn validate(&self) -> Result<()> {
        if self.strides.is_empty() || self.strides.len() != self.sizes.len() {
            return Err(Error::invalid(format!(
                "anchors: {} strides but {} sizes; give one size per level",
                self.strides.len(),
                self.sizes.len()
            )));
        }
        if self.scales.is_empty() || self.aspect_ratios.is_empty() {
            return Err(Error::invalid("anchors: at least one scale and one aspect ratio"));
        }
        if let Some(s) = self.strides.iter().find(|&&s| s == 0) {
            return Err(Error::invalid(format!("anchors: stride {s} must be >= 1")));
        }
        for (name, values) in [
            ("size", &self.sizes),
            ("scale", &self.scales),
            ("aspect ratio", &self.aspect_ratios),
        ] {
            if let Some(v) = values.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
                return Err(Error::invalid(format!("anchors: {name} {v} must be finite and > 0")));
            }
        }
        let max_stride = self.strides.iter().copied().max().unwrap_or(1);
        if !(self.offset.is_finite() && f64::from(self.offset.abs()) * f64::from(max_stride) <= MAX_ANCHOR_PIXELS) {
            return Err(Error::invalid(format!(
                "anchors: offset {} cells at stride {max_stride} must be finite and within \
                 {MAX_ANCHOR_PIXELS:e} pixels",
                self.offset
            )));
        }
        // The templates as the generator computes them (in f32): each must be a finite box of
        // positive size within the limit, so that no image gives an infinite or empty anchor.
        for (level, cell) in self.cell_templates().iter().enumerate() {
            for t in cell {
                let (half_w, half_h) = (t[2], t[3]);
                let ok = |v: f32| v.is_finite() && v > 0.0 && f64::from(v) <= MAX_ANCHOR_PIXELS;
                if !(ok(half_w) && ok(half_h)) {
                    return Err(Error::invalid(format!(
                        "anchors: level {level} (size {}) with scales {:?} and aspect ratios {:?} gives \
                         a template of half-size {half_w} x {half_h}; every half-size must be finite, \
                         positive and at most {MAX_ANCHOR_PIXELS:e} pixels",
                        self.sizes[level], self.scales, self.aspect_ratios
                    )));
                }
            }
        }
        Ok(())
    }

    /// Cells `(rows, cols)` of each level for an image of `height x width`; a stride of 0 is
    /// an error.
    pub fn grid(&self, height: u32, width: u32) -> Result<Vec<(u32, u32)>> {
        self.strides
            .iter()
            .map(|&s| {
                if s == 0 {
                    return Err(Error::invalid("anchors: stride 0 must be >= 1"));
                }
                Ok((height.div_ceil(s), width.div_ceil(s)))
            })
            .collect()
    }

    /// Number of anchors for an image of `height x width`; an error for a stride of 0 or a
    /// count that overflows `usize`.
    pub fn num_anchors(&self, height: u32, width: u32) -> Result<usize> {
        let offsets = self.level_offsets(height, width)?;
        Ok(offsets.last().copied().unwrap_or(0))
    }

    /// Index of the first anchor of each level, and the total at the end; an error for a stride
    /// of 0 or a count that overflows `usize`.
    pub fn level_offsets(&self, height: u32, width: u32) -> Result<Vec<usize>> {
        let a = self.anchors_per_cell();
        let mut offsets = vec![0usize];
        for (h, w) in self.grid(height, width)? {
            let last = offsets.last().copied().unwrap_or(0);
            let next = (h as usize)
                .checked_mul(w as usize)
                .and_then(|cells| cells.checked_mul(a))
                .and_then(|n| n.checked_add(last))
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "anchors: {height} x {width} with {a} anchors per cell gives more than usize::MAX anchors"
                    ))
                })?;
            offsets.push(next);
        }
        Ok(offsets)
    }

    /// The anchors of one cell of each level, centred at the origin: `[level][a]`.
    pub fn cell_templates(&self) -> Vec<Vec<[f32; 4]>> {
        self.sizes
            .iter()
            .map(|&size| {
                let mut cell = Vec::with_capacity(self.anchors_per_cell());
                for &ratio in &self.aspect_ratios {
                    let h_ratio = ratio.sqrt();
                    let w_ratio = 1.0 / h_ratio;
                    for &scale in &self.scales {
                        let half_w = w_ratio * size * scale / 2.0;
                        let half_h = h_ratio * size * scale / 2.0;
                        cell.push([-half_w, -half_h, half_w, half_h]);
                    }
                }
                cell
            })
            .collect()
    }

    /// Checks the configuration and that the image size gives a valid anchor count.
    pub(crate) fn check_size(&self, height: u32, width: u32) -> Result<()> {
        self.validate()?;
        if height == 0 || width == 0 {
            return Err(Error::invalid(format!(
                "anchors: image size {height} x {width} must be positive"
            )));
        }
        if u32::try_from(self.num_anchors(height, width)?).is_err() {
            return Err(Error::invalid(format!(
                "anchors: {height} x {width} gives more than 2^32 anchors"
            )));
        }
        Ok(())
    }

    /// The anchors of an image of `height x width`, in the documented order, on `backend`.
    /// (On the GPU they are generated on the device, cached per context and image size, and read
    /// back; [`crate::GpuContext::anchors`] keeps them on the device.)
    pub fn generate(&self, backend: &Backend, height: u32, width: u32) -> Result<Vec<[f32; 4]>> {
        self.check_size(height, width)?;
        match backend {
            Backend::Cpu => crate::cpu::anchors::generate(self, height, width),
            Backend::Gpu(ctx) => {
                let anchors = ctx.anchors(self, height, width)?;
                ctx.download(&anchors)
            }
        }
    }

    /// A cache key that identifies this configuration and size exactly.
    pub(crate) fn cache_key(&self, height: u32, width: u32) -> Vec<u32> {
        let mut key = vec![height, width, self.offset.to_bits(), self.strides.len() as u32];
        key.extend(&self.strides);
        for values in [&self.sizes, &self.scales, &self.aspect_ratios] {
            key.push(values.len() as u32);
            key.extend(values.iter().map(|v| v.to_bits()));
        }
        key
    }
}
