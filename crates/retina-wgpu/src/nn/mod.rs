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

mod check;
mod engine;
mod group_norm;
mod init;
mod retinanet;
mod sgd;

pub use engine::{ConvGrads, Engine, GroupNormGrads, GroupNormOut, PoolStats};
pub use group_norm::GroupNorm;
pub use init::{Init, SeededRng};
pub use retinanet::{ConvUse, GemmShape, gemm_shapes, small_retinanet_convs};
pub use sgd::{LrSchedule, Sgd};

pub use crate::cpu::nn::{CpuEngine, CpuTensor};
pub use crate::gpu::nn::{GpuEngine, GpuTensor};

pub(crate) use check::{
    check_concat, check_depthwise, check_permute, check_same, check_sgd, check_slice, check_slope, check_upsample,
    check_upsample_backward,
};

use crate::error::{Error, Result};

/// The most bytes the CPU backend asks for in one tensor or result (64 GiB). Larger requests are
/// refused with [`Error::OutOfMemory`] before anything is allocated; smaller ones are reserved
/// fallibly, so a request the host cannot serve is an error too, not an abort.
pub const MAX_HOST_BYTES: u64 = 1 << 36;

/// Refuses `bytes` of host memory for `what` beyond [`MAX_HOST_BYTES`] with
/// [`Error::OutOfMemory`] naming both, before anything is allocated.
pub(crate) fn check_host_bytes(what: &str, bytes: u128) -> Result<()> {
    if bytes > u128::from(MAX_HOST_BYTES) {
        return Err(Error::OutOfMemory(format!(
            "CPU: {what} needs {bytes} bytes, more than the CPU backend's limit of {MAX_HOST_BYTES} bytes"
        )));
    }
    Ok(())
}

/// An empty vector with room for `len` values for the CPU backend: [`Error::OutOfMemory`]
/// (naming `what` and the size) beyond [`MAX_HOST_BYTES`] or when the allocator refuses.
pub(crate) fn host_capacity<T>(len: usize, what: &str) -> Result<Vec<T>> {
    let bytes = (len as u128) * (size_of::<T>() as u128);
    check_host_bytes(&format!("{what} of {len} elements"), bytes)?;
    let mut v = Vec::new();
    v.try_reserve_exact(len)
        .map_err(|e| Error::OutOfMemory(format!("CPU: {what} of {len} elements ({bytes} bytes): {e}")))?;
    Ok(v)
}

/// A zero-filled vector of `len` values for the CPU backend (see [`host_capacity`]).
pub(crate) fn host_vec<T: Clone>(len: usize, value: T, what: &str) -> Result<Vec<T>> {
    let mut v = host_capacity(len, what)?;
    v.resize(len, value);
    Ok(v)
}

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

    /// Number of elements, saturating at `usize::MAX` when the product overflows (engines
    /// refuse such shapes; [`Shape::checked_len`] says so as an error).
    pub const fn len(&self) -> usize {
        if self.is_empty() {
            return 0;
        }
        self.n
            .saturating_mul(self.c)
            .saturating_mul(self.h)
            .saturating_mul(self.w)
    }

    /// Number of elements, or an error naming the shape when the product overflows `usize`.
    pub fn checked_len(&self) -> Result<usize> {
        self.n
            .checked_mul(self.c)
            .and_then(|v| v.checked_mul(self.h))
            .and_then(|v| v.checked_mul(self.w))
            .ok_or_else(|| Error::invalid(format!("a tensor of {self} holds more than usize::MAX elements")))
    }

    /// True when the tensor holds no element (some dimension is 0).
    pub const fn is_empty(&self) -> bool {
        self.n == 0 || self.c == 0 || self.h == 0 || self.w == 0
    }

    /// `h * w` (saturating, like [`Shape::len`]).
    pub const fn plane(&self) -> usize {
        self.h.saturating_mul(self.w)
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

    /// A square depthwise convolution of `channels` (one filter per channel, MobileNet's) with
    /// "same" padding, for [`Engine::depthwise_conv2d`].
    pub const fn depthwise(channels: usize, kernel: usize, stride: usize) -> Self {
        Self::new(channels, channels, kernel, stride)
    }

    /// Shape of a depthwise convolution's weights, `[channels, 1, kh, kw]`.
    pub const fn depthwise_weight_shape(&self) -> Shape {
        Shape::new(self.out_channels, 1, self.kernel.0, self.kernel.1)
    }

    /// Weights per output channel: `in_channels * kernel_h * kernel_w` (the GEMM's K).
    /// Saturates at `usize::MAX` ([`Conv2d::output_shape`] refuses such a layer).
    pub const fn fan_in(&self) -> usize {
        self.in_channels
            .saturating_mul(self.kernel.0)
            .saturating_mul(self.kernel.1)
    }

    /// Shape of the weights, as an NCHW tensor.
    pub const fn weight_shape(&self) -> Shape {
        Shape::new(self.out_channels, self.in_channels, self.kernel.0, self.kernel.1)
    }

    /// Shape of the bias, as an NCHW tensor `[1, out_channels, 1, 1]`.
    pub const fn bias_shape(&self) -> Shape {
        Shape::new(1, self.out_channels, 1, 1)
    }

    /// Output shape for `input`, or an error naming the layer and the shapes. The input needs
    /// at least one row and one column (a batch of 0 images is fine and gives an empty output);
    /// sizes whose arithmetic overflows are an error.
    pub fn output_shape(&self, input: Shape) -> Result<Shape> {
        self.validate()?;
        if input.c != self.in_channels {
            return Err(Error::shape(
                "conv2d",
                format!("{self} takes {} input channels, the input is {input}", self.in_channels),
            ));
        }
        if input.h == 0 || input.w == 0 {
            return Err(Error::shape(
                "conv2d",
                format!("the input {input} has no pixels; a convolution needs at least 1 x 1"),
            ));
        }
        input.checked_len()?;
        let out = |size: usize, k: usize| {
            self.padding
                .checked_mul(2)
                .and_then(|p| p.checked_add(size))
                .and_then(|s| s.checked_sub(k))
                .map(|v| v / self.stride + 1)
        };
        match (out(input.h, self.kernel.0), out(input.w, self.kernel.1)) {
            (Some(h), Some(w)) if h > 0 && w > 0 => {
                let out = Shape::new(input.n, self.out_channels, h, w);
                out.checked_len()?;
                // The weights, and the GEMM's K, must be countable too.
                self.weight_shape().checked_len()?;
                Ok(out)
            }
            _ => Err(Error::shape(
                "conv2d",
                format!("{self} cannot cover an input of {input} (or the padded size overflows)"),
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

/// A max-pooling layer (PyTorch's `nn.MaxPool2d` without dilation or ceil mode): each output is
/// the largest input in its `kernel x kernel` window, the padding counting as minus infinity
/// (never chosen). ResNet's stem pools 3x3 with stride 2 and padding 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MaxPool2d {
    /// Window side.
    pub kernel: usize,
    /// Stride (both directions).
    pub stride: usize,
    /// Padding (both sides, both directions); at most half the window, as PyTorch requires.
    pub padding: usize,
}

impl MaxPool2d {
    /// Output shape for `input`: `(size + 2 * padding - kernel) / stride + 1` a side, or an
    /// error for a zero size or stride, padding over half the window, or an input smaller than
    /// the window.
    pub fn output_shape(&self, input: Shape) -> Result<Shape> {
        if self.kernel == 0 || self.stride == 0 || 2 * self.padding > self.kernel {
            return Err(Error::invalid(format!(
                "max pool: kernel {} stride {} padding {}: kernel and stride must be >= 1 and the padding at most half the kernel",
                self.kernel, self.stride, self.padding
            )));
        }
        let out = |size: usize| {
            size.checked_add(2 * self.padding)
                .and_then(|s| s.checked_sub(self.kernel))
                .map(|v| v / self.stride + 1)
        };
        match (out(input.h), out(input.w)) {
            (Some(h), Some(w)) if input.h > 0 && input.w > 0 => {
                let out = Shape::new(input.n, input.c, h, w);
                out.checked_len()?;
                Ok(out)
            }
            _ => Err(Error::shape(
                "max pool",
                format!("a {0}x{0} window cannot cover an input of {input}", self.kernel),
            )),
        }
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
