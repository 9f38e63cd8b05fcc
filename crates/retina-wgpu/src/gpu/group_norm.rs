//! GroupNorm on the GPU: records `shaders/group_norm_forward.wgsl` (forward, one dispatch)
//! and `group_norm_backward.wgsl` then `group_norm_param_grads.wgsl` (backward) for groups of
//! at most [`FUSED_MAX_GROUP`] values and [`FUSED_MAX_GROUP_CHANNELS`] channels; for larger ones `group_norm_stats.wgsl` then
//! `group_norm_apply.wgsl` (forward), and `group_norm_grad_sums.wgsl`, `group_norm_grad_coef.wgsl` then
//! `group_norm_apply.wgsl` (backward) into a [`GpuEngine`]'s encoder. No float atomics: every
//! sum has one owner (a workgroup's tree, or one invocation's bounded loop).

use crate::error::{Error, Result};
use crate::gpu::dispatch::binds;
use crate::gpu::kernels::{Kernel, LOOP_BUDGET, WG_SIZE};
use crate::gpu::nn::{GpuEngine, GpuTensor};
use crate::nn::{GroupNorm, GroupNormGrads, GroupNormOut, Shape};

/// Must stay in sync with `Config` in shaders/shared/group_norm_config.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct GroupNormConfig {
    pub(crate) batch: u32,
    pub(crate) channels: u32,
    pub(crate) groups: u32,
    pub(crate) group_channels: u32,
    pub(crate) plane: u32,
    pub(crate) eps: f32,
    /// [`RELU_OUT`], [`MASK_GRAD`], [`ACCUMULATE`].
    pub(crate) flags: u32,
    pub(crate) _pad: u32,
}

/// The forward (group_norm_forward.wgsl or group_norm_apply.wgsl) clamps its output at 0
/// (GroupNorm then ReLU).
const RELU_OUT: u32 = 1;
/// The output gradient counts only where the forward's output is above 0 (ReLU's backward).
const MASK_GRAD: u32 = 2;
/// The backward (group_norm_param_grads.wgsl or group_norm_grad_coef.wgsl) adds the gamma and
/// beta gradients to what their tensors hold.
const ACCUMULATE: u32 = 4;
const _: () = assert!(size_of::<GroupNormConfig>() <= super::nn::ARENA_STRIDE);

/// Values per (image, group) up to which the forward pass is one dispatch
/// (`group_norm_forward.wgsl`: one workgroup per group computes its statistics, then writes
/// it). Larger groups take two, so that the elementwise map spreads over the whole device
/// instead of one workgroup per group (torchvision v2's heads: 8 channels of 100 x 168 per
/// group at 800 px, 32 groups: 32 workgroups for 4.3M values). At this size a workgroup of
/// 256 writes 256 values per invocation; the small RetinaNet's largest group (128 px) holds
/// 8,192.
pub(crate) const FUSED_MAX_GROUP: usize = 1 << 16;

/// Channels per group up to which a group of at most [`FUSED_MAX_GROUP`] values runs with one
/// workgroup per group. `group_norm_backward.wgsl` walks a group channel by channel, each
/// channel a plane walk and two workgroup trees, so its loop count grows with the channels even
/// when the planes are 1 x 1 (`GroupNorm(1, 4096)` on a 1 x 1 map would take about 70,000
/// steps); at 256 channels it stays under 5,000 steps.
pub(crate) const FUSED_MAX_GROUP_CHANNELS: usize = 256;

/// Whether GroupNorm `gn` on `x` runs with one workgroup per (image, group): forward in one
/// dispatch, backward in two.
fn one_workgroup_per_group(gn: &GroupNorm, x: Shape) -> bool {
    gn.channels_per_group() <= FUSED_MAX_GROUP_CHANNELS && gn.channels_per_group() * x.plane() <= FUSED_MAX_GROUP
}

/// The uniform of every GroupNorm kernel for an input of `x`, after checking that no
/// invocation loops more than [`LOOP_BUDGET`] times: the statistics walk each group twice in
/// steps of `WG_SIZE` (three times, at most 768 steps, when the same kernel writes a group of
/// at most [`FUSED_MAX_GROUP`]), the gradient sums each plane once, the coefficients loop over the batch
/// or over a group's channels twice.
fn config(gn: &GroupNorm, x: Shape) -> Result<GroupNormConfig> {
    let group = (gn.channels_per_group() * x.plane()) as u64;
    let steps = (2 * group.div_ceil(WG_SIZE))
        .max(x.n as u64)
        .max(2 * gn.channels_per_group() as u64);
    if steps > LOOP_BUDGET {
        return Err(Error::invalid(format!(
            "group norm: {gn} on {x} needs {steps} loop steps per GPU invocation, more than the \
             {LOOP_BUDGET} a device runs reliably; use more groups, a smaller batch or the CPU"
        )));
    }
    let narrow = |v: usize| u32::try_from(v).map_err(|_| Error::invalid(format!("group norm: {x} is too large")));
    Ok(GroupNormConfig {
        batch: narrow(x.n)?,
        channels: narrow(x.c)?,
        groups: narrow(gn.groups)?,
        group_channels: narrow(gn.channels_per_group())?,
        plane: narrow(x.plane())?,
        eps: gn.eps,
        flags: 0,
        _pad: 0,
    })
}

impl GpuEngine {
    /// [`crate::nn::Engine::group_norm`] on the GPU, followed by ReLU in the same pass when
    /// `relu` ([`crate::nn::Engine::group_norm_relu`]).
    pub(super) fn record_group_norm(
        &mut self,
        gn: &GroupNorm,
        x: &GpuTensor,
        gamma: &GpuTensor,
        beta: &GpuTensor,
        relu: bool,
    ) -> Result<GroupNormOut<GpuTensor>> {
        let s = x.shape();
        gn.check_forward(s, gamma.shape(), beta.shape())?;
        let config = GroupNormConfig {
            flags: if relu { RELU_OUT } else { 0 },
            ..config(gn, s)?
        };
        let y = self.alloc("group norm", s)?;
        let stats = self.alloc("group norm", gn.stats_shape(s.n))?;
        if s.is_empty() {
            return Ok(GroupNormOut { y, stats });
        }
        if one_workgroup_per_group(gn, s) {
            self.run(
                Kernel::GroupNormForward,
                &config,
                binds![
                    x = x.binding(),
                    gamma = gamma.binding(),
                    beta = beta.binding(),
                    stats = stats.binding(),
                    y = y.binding(),
                ],
                (s.n * gn.groups) as u64,
            )?;
            return Ok(GroupNormOut { y, stats });
        }
        // Per (image, channel): the map group_norm_apply.wgsl applies.
        let coef = self.alloc("group norm", Shape::new(s.n, s.c, 1, 4))?;
        self.run(
            Kernel::GroupNormStats,
            &config,
            binds![
                x = x.binding(),
                gamma = gamma.binding(),
                beta = beta.binding(),
                stats = stats.binding(),
                coef = coef.binding(),
            ],
            (s.n * gn.groups) as u64,
        )?;
        self.run(
            Kernel::GroupNormApply,
            &config,
            binds![
                coef = coef.binding(),
                u = x.binding(),
                v = x.binding(),
                mask = x.binding(),
                out = y.binding(),
            ],
            (s.len() as u64).div_ceil(WG_SIZE),
        )?;
        Ok(GroupNormOut { y, stats })
    }

    /// [`crate::nn::Engine::group_norm_backward`] on the GPU; with `relu_out` (the output of
    /// [`GpuEngine::record_group_norm`] with ReLU), the ReLU's backward first, fused into the
    /// same passes ([`crate::nn::Engine::group_norm_relu_backward`]).
    pub(super) fn group_norm_grads(
        &mut self,
        gn: &GroupNorm,
        x: &GpuTensor,
        gamma: &GpuTensor,
        stats: &GpuTensor,
        grad_out: &GpuTensor,
        relu_out: Option<&GpuTensor>,
    ) -> Result<GroupNormGrads<GpuTensor>> {
        let dgamma = self.alloc("group norm backward", gn.param_shape())?;
        let dbeta = self.alloc("group norm backward", gn.param_shape())?;
        let input =
            self.record_group_norm_backward(gn, x, gamma, stats, grad_out, relu_out, (&dgamma, &dbeta), false)?;
        Ok(GroupNormGrads {
            input,
            gamma: dgamma,
            beta: dbeta,
        })
    }

    /// The passes of [`GpuEngine::group_norm_grads`], writing (or with `accumulate` adding)
    /// the `gamma` and `beta` gradients into `dgamma` and `dbeta`; returns the input gradient.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn record_group_norm_backward(
        &mut self,
        gn: &GroupNorm,
        x: &GpuTensor,
        gamma: &GpuTensor,
        stats: &GpuTensor,
        grad_out: &GpuTensor,
        relu_out: Option<&GpuTensor>,
        (dgamma, dbeta): (&GpuTensor, &GpuTensor),
        accumulate: bool,
    ) -> Result<GpuTensor> {
        let s = x.shape();
        gn.check_backward(s, gamma.shape(), stats.shape(), grad_out.shape())?;
        if let Some(y) = relu_out {
            crate::nn::check_same("group_norm_relu backward", y.shape(), s)?;
        }
        crate::nn::check_same("group norm gamma gradient", dgamma.shape(), gn.param_shape())?;
        crate::nn::check_same("group norm beta gradient", dbeta.shape(), gn.param_shape())?;
        let config = GroupNormConfig {
            flags: if relu_out.is_some() { MASK_GRAD } else { 0 } | if accumulate { ACCUMULATE } else { 0 },
            ..config(gn, s)?
        };
        let mask = relu_out.unwrap_or(grad_out);
        let dx = self.alloc("group norm backward", s)?;
        if s.is_empty() {
            // Sums over no image.
            if !accumulate {
                for t in [dgamma, dbeta] {
                    self.clear(t);
                }
            }
            return Ok(dx);
        }
        let sums = self.alloc("group norm backward", Shape::new(s.n, s.c, 1, 2))?;
        if one_workgroup_per_group(gn, s) {
            self.run(
                Kernel::GroupNormBackward,
                &config,
                binds![
                    x = x.binding(),
                    gamma = gamma.binding(),
                    stats = stats.binding(),
                    grad_out = grad_out.binding(),
                    mask = mask.binding(),
                    sums = sums.binding(),
                    dx = dx.binding(),
                ],
                (s.n * gn.groups) as u64,
            )?;
            self.run(
                Kernel::GroupNormParamGrads,
                &config,
                binds![
                    sums = sums.binding(),
                    dgamma = dgamma.binding(),
                    dbeta = dbeta.binding()
                ],
                (s.c as u64).div_ceil(WG_SIZE),
            )?;
            return Ok(dx);
        }
        let coef = self.alloc("group norm backward", Shape::new(s.n, s.c, 1, 4))?;
        self.run(
            Kernel::GroupNormGradSums,
            &config,
            binds![
                x = x.binding(),
                stats = stats.binding(),
                grad_out = grad_out.binding(),
                mask = mask.binding(),
                sums = sums.binding(),
            ],
            (s.n * s.c) as u64,
        )?;
        self.run(
            Kernel::GroupNormGradCoef,
            &config,
            binds![
                gamma = gamma.binding(),
                stats = stats.binding(),
                sums = sums.binding(),
                dgamma = dgamma.binding(),
                dbeta = dbeta.binding(),
                coef = coef.binding(),
            ],
            ((s.c + s.n * gn.groups) as u64).div_ceil(WG_SIZE),
        )?;
        self.run(
            Kernel::GroupNormApply,
            &config,
            binds![
                coef = coef.binding(),
                u = grad_out.binding(),
                v = x.binding(),
                mask = mask.binding(),
                out = dx.binding(),
            ],
            (s.len() as u64).div_ceil(WG_SIZE),
        )?;
        Ok(dx)
    }
}
