//! GroupNorm's geometry and the shape checks both backends share (Wu & He, "Group
//! Normalization", ECCV 2018; PyTorch's `nn.GroupNorm`).
//!
//! For each image `n` and group `g` of `channels / groups` consecutive channels, the
//! `channels_per_group * H * W` values are normalised with their mean and biased variance,
//! `xhat = (x - mean) / sqrt(var + eps)`, then each channel gets its own affine map
//! `y = gamma[c] * xhat + beta[c]`.

use crate::error::{Error, Result};
use crate::nn::Shape;

/// GroupNorm's geometry: `channels` split into `groups` groups of consecutive channels, and the
/// `eps` added to the variance inside the square root (PyTorch's default 1e-5).
///
/// The affine parameters `gamma` (scale) and `beta` (shift) are `[1, channels, 1, 1]` tensors
/// ([`GroupNorm::param_shape`]); the statistics saved for the backward pass are
/// `[N, groups, 1, 2]`, (mean, 1/sqrt(var + eps)) per image and group
/// ([`GroupNorm::stats_shape`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GroupNorm {
    /// Channels of the input (and of `gamma` and `beta`).
    pub channels: usize,
    /// Groups; must divide `channels`.
    pub groups: usize,
    /// Added to the variance before the square root.
    pub eps: f32,
}

impl GroupNorm {
    /// PyTorch's default `eps`.
    pub const EPS: f32 = 1e-5;

    /// `channels` in `groups` groups, with eps 1e-5.
    pub const fn new(channels: usize, groups: usize) -> Self {
        Self {
            channels,
            groups,
            eps: Self::EPS,
        }
    }

    /// The small RetinaNet's choice (docs/ARCHITECTURE.md): 16 groups, or `channels / 4` groups (4 channels
    /// each) below 64 channels, at least one group.
    pub const fn small_retinanet(channels: usize) -> Self {
        let groups = if channels >= 64 { 16 } else { channels / 4 };
        Self::new(channels, if groups == 0 { 1 } else { groups })
    }

    /// Channels in each group (`channels / groups`).
    pub const fn channels_per_group(&self) -> usize {
        if self.groups == 0 {
            return 0;
        }
        self.channels / self.groups
    }

    /// Shape of `gamma` and `beta` (and of their gradients): `[1, channels, 1, 1]`.
    pub const fn param_shape(&self) -> Shape {
        Shape::new(1, self.channels, 1, 1)
    }

    /// Shape of the saved statistics for a batch of `batch` images: `[batch, groups, 1, 2]`,
    /// (mean, 1/sqrt(var + eps)) per image and group.
    pub const fn stats_shape(&self, batch: usize) -> Shape {
        Shape::new(batch, self.groups, 1, 2)
    }

    /// Checks that there is at least one channel and one group, that the groups divide the
    /// channels, and that eps is finite and not negative.
    pub fn validate(&self) -> Result<()> {
        if self.channels == 0 || self.groups == 0 {
            return Err(Error::invalid(format!(
                "group norm: channels and groups must be >= 1, got {self}"
            )));
        }
        if !self.channels.is_multiple_of(self.groups) {
            return Err(Error::invalid(format!(
                "group norm: {} channels cannot be split into {} equal groups",
                self.channels, self.groups
            )));
        }
        if !(self.eps.is_finite() && self.eps >= 0.0) {
            return Err(Error::invalid(format!(
                "group norm: eps must be finite and >= 0, got {}",
                self.eps
            )));
        }
        Ok(())
    }

    /// Checks the forward pass's inputs: `x` is `[N, channels, H, W]` with `H * W > 0`
    /// (`N = 0` is allowed), `gamma` and `beta` are [`GroupNorm::param_shape`].
    pub(crate) fn check_forward(&self, x: Shape, gamma: Shape, beta: Shape) -> Result<()> {
        self.check_input("group norm", x)?;
        self.check_param("group norm gamma", gamma)?;
        self.check_param("group norm beta", beta)
    }

    /// Checks the backward pass's inputs: those of the forward pass, the statistics it saved and
    /// an output gradient shaped like `x`.
    pub(crate) fn check_backward(&self, x: Shape, gamma: Shape, stats: Shape, grad_out: Shape) -> Result<()> {
        self.check_input("group norm backward", x)?;
        self.check_param("group norm backward gamma", gamma)?;
        let want = self.stats_shape(x.n);
        if stats != want {
            return Err(Error::shape(
                "group norm backward statistics",
                format!("{self} on {x} saves statistics of {want}, got {stats}"),
            ));
        }
        if grad_out != x {
            return Err(Error::shape(
                "group norm backward",
                format!("the output gradient {grad_out} is not shaped like the input {x}"),
            ));
        }
        Ok(())
    }

    fn check_input(&self, op: &'static str, x: Shape) -> Result<()> {
        self.validate()?;
        if x.c != self.channels {
            return Err(Error::shape(
                op,
                format!("{self} takes {} channels, the input is {x}", self.channels),
            ));
        }
        if x.plane() == 0 {
            return Err(Error::shape(
                op,
                format!("{self} needs at least one pixel per channel, the input is {x}"),
            ));
        }
        x.checked_len()?;
        Ok(())
    }

    fn check_param(&self, op: &'static str, p: Shape) -> Result<()> {
        let want = self.param_shape();
        if p != want {
            return Err(Error::shape(op, format!("{self} takes {want}, got {p}")));
        }
        Ok(())
    }
}

impl std::fmt::Display for GroupNorm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "group norm {} channels in {} groups eps {}",
            self.channels, self.groups, self.eps
        )
    }
}
