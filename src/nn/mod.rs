//! The layers a small convolutional RetinaNet is made of, on both backends: 2-D convolution
//! (forward, and backward to input, weights and bias), ReLU, nearest upsampling, elementwise
//! addition, GroupNorm (forward and backward), the head permute into anchor rows, parameter
//! initialisation and SGD.
//!
//! Tensors are NCHW f32 ([`Shape`]). Each backend is an [`Engine`]: [`CpuEngine`] runs the
//! layers with im2col and a real GEMM (the `gemm` crate), rayon-parallel, and is generic over
//! f32 and f64 (gradient checks run in f64); [`GpuEngine`] records them into one command
//! encoder (an implicit-GEMM WGSL kernel for convolutions) and submits on [`Engine::sync`].
//! Both take tensors from a pool: after the first training step, a step allocates no tensor.

mod engine;
mod group_norm;
mod init;
mod retinanet;
mod sgd;

pub use engine::{ConvGrads, Engine, GroupNormGrads, GroupNormOut, PoolStats};
pub use group_norm::GroupNorm;
pub use init::{Init, SeededRng};
pub use retinanet::{ConvUse, small_retinanet_convs};
pub use sgd::{LrSchedule, Sgd};

pub use crate::cpu::nn::{CpuEngine, CpuTensor};
pub use crate::gpu::nn::{GpuEngine, GpuTensor};

use crate::error::{Error, Result};

/// An NCHW shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    /// Batch.
    pub n: usize,
    /// Channels.
    pub c: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
}

impl Shape {
    /// `n x c x h x w`.
    pub const fn new(n: usize, c: usize, h: usize, w: usize) -> Self {
        Self { n, c, h, w }
    }

    /// Number of elements.
    pub const fn len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }

    /// True when the tensor holds no element.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `h * w`.
    pub const fn plane(&self) -> usize {
        self.h * self.w
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}, {}, {}, {}]", self.n, self.c, self.h, self.w)
    }
}

/// A 2-D convolution's geometry: `out_channels x in_channels x kernel_h x kernel_w` weights,
/// stride, zero padding. Weights are `[out_channels, in_channels, kernel_h, kernel_w]`, the bias
/// `[out_channels]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conv2d {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Kernel height and width.
    pub kernel: (usize, usize),
    /// Stride (both directions).
    pub stride: usize,
    /// Zero padding (both sides, both directions).
    pub padding: usize,
}

impl Conv2d {
    /// A square `kernel x kernel` convolution with "same" padding (`kernel / 2`).
    pub const fn new(in_channels: usize, out_channels: usize, kernel: usize, stride: usize) -> Self {
        Self {
            in_channels,
            out_channels,
            kernel: (kernel, kernel),
            stride,
            padding: kernel / 2,
        }
    }

    /// Weights per output channel: `in_channels * kernel_h * kernel_w` (the GEMM's K).
    pub const fn fan_in(&self) -> usize {
        self.in_channels * self.kernel.0 * self.kernel.1
    }

    /// Shape of the weights, as an NCHW tensor.
    pub const fn weight_shape(&self) -> Shape {
        Shape::new(self.out_channels, self.in_channels, self.kernel.0, self.kernel.1)
    }

    /// Shape of the bias, as an NCHW tensor `[1, out_channels, 1, 1]`.
    pub const fn bias_shape(&self) -> Shape {
        Shape::new(1, self.out_channels, 1, 1)
    }

    /// Output shape for `input`, or an error naming the layer and the shapes.
    pub fn output_shape(&self, input: Shape) -> Result<Shape> {
        self.validate()?;
        if input.c != self.in_channels {
            return Err(Error::shape(
                "conv2d",
                format!("{self} takes {} input channels, the input is {input}", self.in_channels),
            ));
        }
        let out = |size: usize, k: usize| (size + 2 * self.padding).checked_sub(k).map(|v| v / self.stride + 1);
        match (out(input.h, self.kernel.0), out(input.w, self.kernel.1)) {
            (Some(h), Some(w)) if h > 0 && w > 0 => Ok(Shape::new(input.n, self.out_channels, h, w)),
            _ => Err(Error::shape(
                "conv2d",
                format!("{self} cannot cover an input of {input}"),
            )),
        }
    }

    /// Checks that every dimension is positive.
    pub fn validate(&self) -> Result<()> {
        if self.in_channels == 0
            || self.out_channels == 0
            || self.kernel.0 == 0
            || self.kernel.1 == 0
            || self.stride == 0
        {
            return Err(Error::invalid(format!(
                "conv2d: every size and the stride must be >= 1, got {self}"
            )));
        }
        Ok(())
    }

    /// Multiply-adds x 2 of the forward pass for `input` (the backward pass costs twice that).
    pub fn flops(&self, input: Shape) -> Result<f64> {
        let out = self.output_shape(input)?;
        Ok(2.0 * out.len() as f64 * self.fan_in() as f64)
    }
}

impl std::fmt::Display for Conv2d {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "conv {}x{} {}->{} stride {} pad {}",
            self.kernel.0, self.kernel.1, self.in_channels, self.out_channels, self.stride, self.padding
        )
    }
}
