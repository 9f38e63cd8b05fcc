//! Dispatch of `shaders/box_iou.wgsl` and `shaders/box_coder.wgsl`.

use crate::error::{Error, Result};
use crate::gpu::buffer::{GpuBuffer, Readback};
use crate::gpu::context::GpuContext;
use crate::gpu::dispatch::{Chunk, RowLayout, binds, plan_chunks, storage};
use crate::gpu::kernels::Kernel;
use crate::ops::boxes::BoxCoder;

/// Must stay in sync with `Config` in shaders/box_iou.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct IouConfig {
    pub(crate) n_elements: u32,
    pub(crate) cols: u32,
    pub(crate) _pad: [u32; 2],
}

/// Must stay in sync with `Config` in shaders/box_coder.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct CoderConfig {
    pub(crate) n: u32,
    pub(crate) decode: u32,
    pub(crate) clamp: f32,
    pub(crate) _pad: u32,
    pub(crate) weights: [f32; 4],
}

/// Errors unless a buffer bound whole fits one binding.
pub(crate) fn check_whole_binding(ctx: &GpuContext, what: &str, bytes: u64) -> Result<()> {
    let max = ctx.limits().max_storage_binding;
    if bytes > max {
        return Err(Error::invalid(format!(
            "{what} takes {bytes} bytes, more than the device's storage binding limit of {max} bytes"
        )));
    }
    Ok(())
}

impl GpuContext {
    /// Records the IoU matrix of `a` x `b` into `out` (`a.len() * b.len()` elements, row-major).
    /// Rows of the output are split at the binding limit; `b` is bound whole.
    pub fn record_box_iou(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        a: &GpuBuffer<[f32; 4]>,
        b: &GpuBuffer<[f32; 4]>,
        out: &GpuBuffer<f32>,
    ) -> Result<()> {
        let op = "GpuContext::record_box_iou";
        self.check_buffer(op, "a", a)?;
        self.check_buffer(op, "b", b)?;
        self.check_buffer(op, "out", out)?;
        let (n, m) = (a.len() as u64, b.len() as u64);
        if n.checked_mul(m) != Some(out.len() as u64) {
            return Err(Error::shape(
                "box_iou",
                format!("{n} x {m} boxes but an output of {}", out.len()),
            ));
        }
        if n == 0 || m == 0 {
            return Ok(());
        }
        check_whole_binding(self, "box_iou's second set of boxes", b.byte_len())?;
        let limits = self.limits();
        let plan = plan_chunks(limits, RowLayout::elementwise(n, m, &[16, 4 * m]))?;
        let config = |c: &Chunk| IouConfig {
            n_elements: ((c.rows.end - c.rows.start) * m) as u32,
            cols: m as u32,
            _pad: [0; 2],
        };
        self.record_chunks(encoder, Kernel::BoxIou, &plan, config, |chunk| {
            let rows = chunk.rows.end - chunk.rows.start;
            binds![
                boxes_a = storage(a.buffer(), chunk.rows.start * 16, rows * 16),
                boxes_b = storage(b.buffer(), 0, b.byte_len()),
                iou = storage(out.buffer(), chunk.rows.start * m * 4, rows * m * 4),
            ]
        })
    }

    /// Records the box coder over `input` (boxes to encode, or deltas to decode) against
    /// `anchors` of the same length into `out`.
    pub fn record_box_coder(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        coder: &BoxCoder,
        decode: bool,
        input: &GpuBuffer<[f32; 4]>,
        anchors: &GpuBuffer<[f32; 4]>,
        out: &GpuBuffer<[f32; 4]>,
    ) -> Result<()> {
        coder.validate()?;
        let op = "GpuContext::record_box_coder";
        self.check_buffer(op, "input", input)?;
        self.check_buffer(op, "anchors", anchors)?;
        self.check_buffer(op, "out", out)?;
        let n = input.len();
        if anchors.len() != n || out.len() != n {
            return Err(Error::shape(
                "box coder",
                format!(
                    "{n} inputs, {} anchors and {} outputs must agree",
                    anchors.len(),
                    out.len()
                ),
            ));
        }
        if n == 0 {
            return Ok(());
        }
        let limits = self.limits();
        let plan = plan_chunks(limits, RowLayout::elementwise(n as u64, 1, &[16]))?;
        let config = |c: &Chunk| CoderConfig {
            n: (c.rows.end - c.rows.start) as u32,
            decode: u32::from(decode),
            clamp: coder.clamp,
            _pad: 0,
            weights: coder.weights,
        };
        self.record_chunks(encoder, Kernel::BoxCoder, &plan, config, |chunk| {
            let (start, len) = (chunk.rows.start * 16, (chunk.rows.end - chunk.rows.start) * 16);
            binds![
                input = storage(input.buffer(), start, len),
                anchors = storage(anchors.buffer(), start, len),
                output = storage(out.buffer(), start, len),
            ]
        })
    }
}

/// Host-slice IoU matrix on the GPU.
pub(crate) fn box_iou_host(ctx: &GpuContext, a: &[[f32; 4]], b: &[[f32; 4]]) -> Result<Vec<f32>> {
    let (a_buf, b_buf) = (ctx.upload(a)?, ctx.upload(b)?);
    let out = ctx.zeros::<f32>(a.len() * b.len())?;
    let mut encoder = ctx.encoder("box_iou");
    ctx.record_box_iou(&mut encoder, &a_buf, &b_buf, &out)?;
    let mut readback = Readback::default();
    let slot = readback.add(&out);
    Ok(readback.run(ctx, encoder)?.take(slot))
}

/// Host-slice box coding on the GPU.
pub(crate) fn coder_host(
    ctx: &GpuContext,
    coder: &BoxCoder,
    input: &[[f32; 4]],
    anchors: &[[f32; 4]],
    decode: bool,
) -> Result<Vec<[f32; 4]>> {
    let (in_buf, anchor_buf) = (ctx.upload(input)?, ctx.upload(anchors)?);
    let out = ctx.zeros::<[f32; 4]>(input.len())?;
    let mut encoder = ctx.encoder("box coder");
    ctx.record_box_coder(&mut encoder, coder, decode, &in_buf, &anchor_buf, &out)?;
    let mut readback = Readback::default();
    let slot = readback.add(&out);
    Ok(readback.run(ctx, encoder)?.take(slot))
}
