//! Tree sums on the device (`shaders/reduce_sum.wgsl`): partial sums in, `[sum / normaliser,
//! sum, normaliser]` out, in as many levels as the partials need.

use crate::error::Result;
use crate::gpu::buffer::GpuBuffer;
use crate::gpu::context::GpuContext;
use crate::gpu::dispatch::{RowLayout, Uniforms, dispatch, plan_chunks, storage, uniform};
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
    let limits = ctx.limits();
    let pipeline = ctx.pipeline(Kernel::ReduceSum)?;
    let (norm_flags, norm_index, norm_value, counts) = match *normaliser {
        Normaliser::Constant(v) => (0, 0, v, None),
        Normaliser::Count { counts, index, scale } => (FLAG_NORM_FROM_COUNTS, index, scale, Some(counts)),
    };
    let spare = ctx.zeros::<u32>(1)?;
    let counts = counts.unwrap_or(spare.buffer());
    let counts_bytes = counts.size().min(limits.max_storage_binding);

    // Levels until one workgroup can finish, each level a chunked dispatch into a new buffer.
    let mut levels: Vec<GpuBuffer<f32>> = Vec::new();
    let mut uniforms = Uniforms::new::<ReduceConfig>(limits);
    let mut steps = Vec::new();
    let mut len = values.len() as u64;
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
        let next = ctx.zeros::<f32>(plan.output_slots as usize)?;
        let chunks: Vec<_> = plan
            .chunks
            .into_iter()
            .map(|c| {
                let n = c.rows.end - c.rows.start;
                let slot = uniforms.push(&ReduceConfig {
                    n: n as u32,
                    flags: 0,
                    norm_index,
                    norm_value,
                });
                (c, slot)
            })
            .collect();
        len = next.len() as u64;
        steps.push(chunks);
        levels.push(next);
    }
    let final_slot = uniforms.push(&ReduceConfig {
        n: len as u32,
        flags: FLAG_FINAL | norm_flags,
        norm_index,
        norm_value,
    });
    let uniform_buffer = uniforms.into_buffer(ctx)?;

    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: Some("reduce sum"),
        timestamp_writes: None,
    });
    let mut input = values;
    for (chunks, output) in steps.iter().zip(&levels) {
        for (chunk, slot) in chunks {
            let n = chunk.rows.end - chunk.rows.start;
            dispatch(
                ctx,
                &mut pass,
                pipeline,
                &[
                    uniform(&uniform_buffer, *slot),
                    storage(input.buffer(), chunk.rows.start * 4, n * 4),
                    storage(counts, 0, counts_bytes),
                    storage(
                        output.buffer(),
                        chunk.output_offset * 4,
                        u64::from(chunk.workgroups) * 4,
                    ),
                ],
                chunk.workgroups,
            )?;
        }
        input = output;
    }
    dispatch(
        ctx,
        &mut pass,
        pipeline,
        &[
            uniform(&uniform_buffer, final_slot),
            storage(input.buffer(), 0, len * 4),
            storage(counts, 0, counts_bytes),
            storage(out.buffer(), 0, 12),
        ],
        1,
    )?;
    Ok(())
}
