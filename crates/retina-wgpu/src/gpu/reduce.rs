//! Tree sums on the device (`shaders/reduce_sum.wgsl`): partial sums in, `[sum / normaliser,
//! sum, normaliser]` out, in as many levels as the partials need.

use crate::error::Result;
use crate::gpu::buffer::GpuBuffer;
use crate::gpu::context::GpuContext;
use crate::gpu::dispatch::{ChunkPlan, Dispatches, RowLayout, binds, plan_chunks, storage};
use crate::gpu::kernels::Kernel;

/// Values one reduce workgroup adds (`TILE` in the shader).
const REDUCE_TILE: u64 = 1024;

const FLAG_FINAL: u32 = 1;
const FLAG_NORM_FROM_COUNTS: u32 = 2;

/// Must stay in sync with `Config` in shaders/reduce_sum.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct ReduceConfig {
    pub(crate) n: u32,
    pub(crate) flags: u32,
    pub(crate) norm_index: u32,
    pub(crate) norm_value: f32,
}

/// What a sum is divided by.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Normaliser<'a> {
    /// A constant known when recording.
    Constant(f32),
    /// `max(1, counts[index] * scale)`, read on the device.
    Count {
        counts: &'a wgpu::Buffer,
        index: u32,
        scale: f32,
    },
}

/// Records the sum of `values` into `out[0..3]` = `[sum / normaliser, sum, normaliser]`.
pub(crate) fn record_sum(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    values: &GpuBuffer<f32>,
    normaliser: &Normaliser<'_>,
    out: &GpuBuffer<f32>,
) -> Result<()> {
    let plans = sum_levels(ctx, values.len())?;
    let levels = plans
        .into_iter()
        .map(|plan| {
            let next = ctx.zeros::<f32>(plan.output_slots as usize)?;
            Ok((plan, next))
        })
        .collect::<Result<Vec<_>>>()?;
    record_sum_levels(ctx, encoder, values, normaliser, out, &levels)
}

/// The levels of partial sums a sum of `len` values takes before one workgroup can finish it:
/// each a chunked dispatch into a zero-filled buffer of its `output_slots` values (slots
/// between chunks are read, never written).
pub(crate) fn sum_levels(ctx: &GpuContext, len: usize) -> Result<Vec<ChunkPlan>> {
    let limits = ctx.limits();
    let mut plans = Vec::new();
    let mut len = len as u64;
    while len > REDUCE_TILE || len * 4 > limits.max_storage_binding {
        let plan = plan_chunks(
            limits,
            RowLayout {
                rows: len,
                elems_per_row: 1,
                row_bytes: &[4],
                elems_per_workgroup: REDUCE_TILE,
                output_bytes: 4,
            },
        )?;
        len = plan.output_slots;
        plans.push(plan);
    }
    Ok(plans)
}

/// [`record_sum`] through the level buffers the caller gives ([`sum_levels`]' plans, each
/// with a zero-filled buffer of at least its `output_slots` values; the layer engine takes them from its
/// pool, so that a training step binds the same buffers every step).
pub(crate) fn record_sum_levels(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    values: &GpuBuffer<f32>,
    normaliser: &Normaliser<'_>,
    out: &GpuBuffer<f32>,
    levels: &[(ChunkPlan, GpuBuffer<f32>)],
) -> Result<()> {
    let limits = ctx.limits();
    let (norm_flags, norm_index, norm_value, counts) = match *normaliser {
        Normaliser::Constant(v) => (0, 0, v, None),
        Normaliser::Count { counts, index, scale } => (FLAG_NORM_FROM_COUNTS, index, scale, Some(counts)),
    };
    // Without counts the binding is never read: the input stands in (read-only, like it).
    let counts = counts.unwrap_or(values.buffer());
    let counts_bytes = counts.size().min(limits.max_storage_binding);
    let len = levels.last().map_or(values.len() as u64, |(plan, _)| plan.output_slots);

    let mut list = Dispatches::new(ctx, "reduce sum");
    let mut input = values;
    for (plan, output) in levels {
        for chunk in &plan.chunks {
            let n = chunk.rows.end - chunk.rows.start;
            let config = ReduceConfig {
                n: n as u32,
                flags: 0,
                norm_index,
                norm_value,
            };
            let bindings = binds![
                input = storage(input.buffer(), chunk.rows.start * 4, n * 4),
                counts = storage(counts, 0, counts_bytes),
                output = storage(
                    output.buffer(),
                    chunk.output_offset * 4,
                    u64::from(chunk.workgroups) * 4
                ),
            ];
            list.push(Kernel::ReduceSum, &config, bindings, u64::from(chunk.workgroups))?;
        }
        input = output;
    }
    let config = ReduceConfig {
        n: len as u32,
        flags: FLAG_FINAL | norm_flags,
        norm_index,
        norm_value,
    };
    let bindings = binds![
        input = storage(input.buffer(), 0, len * 4),
        counts = storage(counts, 0, counts_bytes),
        output = storage(out.buffer(), 0, 12),
    ];
    list.push(Kernel::ReduceSum, &config, bindings, 1)?;
    list.record(ctx, encoder)
}
