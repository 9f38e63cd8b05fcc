//! The network input's normalisation, shared by the CPU's [`Normalize::write_chw`] and the GPU's
//! texture-to-input kernel (`shaders/image_to_tensor.wgsl`, [`crate::model::PreparedDetector::record_frame`]).

use crate::error::{Error, Result};

/// Per-channel normalisation of RGB pixels into network input: `(pixel / 255 - mean) / std`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normalize {
    mean: [f32; 3],
    std: [f32; 3],
}

impl Default for Normalize {
    fn default() -> Self {
        Self::IMAGENET
    }
}

impl Normalize {
    /// ImageNet's statistics, as torchvision's backbones and detection transforms use them:
    /// mean `[0.485, 0.456, 0.406]`, std `[0.229, 0.224, 0.225]` (of pixels scaled to [0, 1]).
    pub const IMAGENET: Self = Self {
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };

    /// Pixels scaled to [0, 1], nothing more.
    pub const UNIT: Self = Self {
        mean: [0.0; 3],
        std: [1.0; 3],
    };

    /// Means and standard deviations of R, G and B (of pixels scaled to [0, 1]); the means must
    /// be finite and the standard deviations finite and positive.
    pub fn new(mean: [f32; 3], std: [f32; 3]) -> Result<Self> {
        if mean.iter().any(|m| !m.is_finite()) || std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(Error::invalid(format!(
                "normalisation mean {mean:?} must be finite and std {std:?} finite and positive"
            )));
        }
        Ok(Self { mean, std })
    }

    /// Means of R, G and B.
    pub fn mean(&self) -> [f32; 3] {
        self.mean
    }

    /// Standard deviations of R, G and B.
    pub fn std(&self) -> [f32; 3] {
        self.std
    }

    /// Writes interleaved RGB rows `width` pixels wide into `out`, the network input
    /// `[3, side, side]` (R, G, B planes, rows top to bottom): the image at the top left, each
    /// pixel normalised, the rest 0.0 (the mean colour after normalisation, as torchvision pads
    /// after normalising).
    pub fn write_chw(&self, rgb: &[u8], width: usize, side: usize, out: &mut [f32]) -> Result<()> {
        let rows = if width == 0 { 0 } else { rgb.len() / (3 * width) };
        if out.len() != 3 * side * side || width > side || rows > side || rows * 3 * width != rgb.len() {
            return Err(Error::shape(
                "Normalize::write_chw",
                format!(
                    "{} RGB bytes in rows of {width} pixels into {} values of a 3x{side}x{side} input",
                    rgb.len(),
                    out.len()
                ),
            ));
        }
        out.fill(0.0);
        if width == 0 {
            return Ok(());
        }
        for (c, plane) in out.chunks_exact_mut(side * side).enumerate() {
            let value: [f32; 256] = std::array::from_fn(|p| (p as f32 / 255.0 - self.mean[c]) / self.std[c]);
            for (row, pixels) in plane.chunks_exact_mut(side).zip(rgb.chunks_exact(3 * width)) {
                for (out, pixel) in row.iter_mut().zip(pixels.chunks_exact(3)) {
                    *out = value[usize::from(pixel[c])];
                }
            }
        }
        Ok(())
    }
}
