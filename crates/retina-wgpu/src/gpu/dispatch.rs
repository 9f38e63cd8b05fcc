//! Limits-aware dispatch: splitting work into chunks that fit the binding-size limit, folding
//! long 1-D grids into x and y, and packing per-dispatch uniforms into one buffer.

use std::ops::Range;

use bytemuck::Pod;

use crate::error::{Error, Result};
use crate::gpu::buffer::GpuBuffer;
use crate::gpu::context::{DeviceLimits, GpuContext};
use crate::gpu::frame::KernelWork;
use crate::gpu::kernels::{Kernel, WG_SIZE};

/// One dispatch's share of a row-major input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Chunk {
    /// The rows of the input this dispatch covers.
    pub rows: Range<u64>,
    /// Workgroups needed (before folding into a 2-D grid).
    pub workgroups: u32,
    /// First slot of this chunk's per-workgroup outputs; aligned so it can be bound on its own.
    pub output_offset: u64,
}

/// How a dispatch over `rows` rows is split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ChunkPlan {
    pub chunks: Vec<Chunk>,
    /// Slots of per-workgroup output needed in all (including alignment gaps, which must be
    /// zero-filled if the outputs are summed).
    pub output_slots: u64,
}

/// The shape of a row-major dispatch, for [`plan_chunks`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct RowLayout<'a> {
    /// Rows in the whole input.
    pub rows: u64,
    /// Elements per row (one workgroup handles `elems_per_workgroup` elements).
    pub elems_per_row: u64,
    /// Bytes per row of each buffer bound per chunk (inputs and per-element outputs).
    pub row_bytes: &'a [u64],
    /// Elements one workgroup handles.
    pub elems_per_workgroup: u64,
    /// Bytes of per-workgroup output (a partial sum, say), 0 if none.
    pub output_bytes: u64,
}

impl<'a> RowLayout<'a> {
    /// The layout of a kernel with one invocation per element, `WG_SIZE` per workgroup, and no
    /// per-workgroup output.
    pub(crate) fn elementwise(rows: u64, elems_per_row: u64, row_bytes: &'a [u64]) -> Self {
        Self {
            rows,
            elems_per_row,
            row_bytes,
            elems_per_workgroup: WG_SIZE,
            output_bytes: 0,
        }
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Splits a row-major dispatch into chunks that respect `limits`:
/// - every buffer's chunk binding fits `max_storage_binding`,
/// - every chunk's binding offset is a multiple of `storage_offset_alignment` (chunks start at
///   row multiples chosen for that),
/// - every chunk's workgroups fit a folded grid of `max_workgroups_per_dim`^2,
/// - element indices inside a chunk fit in u32.
pub(crate) fn plan_chunks(limits: &DeviceLimits, layout: RowLayout<'_>) -> Result<ChunkPlan> {
    let RowLayout {
        rows,
        elems_per_row,
        row_bytes,
        elems_per_workgroup,
        output_bytes,
    } = layout;
    let align = limits.storage_offset_alignment.max(1);
    let max_binding = limits.max_storage_binding;
    let max_wg = u64::from(limits.max_workgroups_per_dim).pow(2);
    // Each chunk's per-workgroup outputs are bound too.
    let max_wg = max_binding.checked_div(output_bytes).map_or(max_wg, |m| max_wg.min(m));
    // Element indices are u32 in the kernels; keep a tile of headroom.
    let max_elems = (max_wg * elems_per_workgroup).min(u64::from(u32::MAX) - elems_per_workgroup);
    let mut max_rows = max_elems / elems_per_row.max(1);
    // Row multiple that keeps every buffer's chunk offset aligned.
    let mut row_multiple = 1u64;
    for &bytes in row_bytes.iter().filter(|&&b| b > 0) {
        max_rows = max_rows.min(max_binding / bytes);
        let need = align / gcd(align, bytes);
        row_multiple = row_multiple / gcd(row_multiple, need) * need;
    }
    let chunk_rows = if rows <= max_rows {
        rows.max(1)
    } else {
        let aligned = max_rows / row_multiple * row_multiple;
        if aligned == 0 {
            return Err(Error::invalid(format!(
                "a row of {elems_per_row} elements ({row_bytes:?} bytes per buffer) cannot be \
                 split to fit the device limits (storage binding {max_binding} bytes, offset \
                 alignment {align}, {} workgroups per dimension)",
                limits.max_workgroups_per_dim
            )));
        }
        aligned
    };
    let slot_align = if output_bytes > 0 {
        (align / gcd(align, output_bytes)).max(1)
    } else {
        1
    };
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut slot = 0u64;
    while start < rows {
        let end = (start + chunk_rows).min(rows);
        let workgroups = ((end - start) * elems_per_row).div_ceil(elems_per_workgroup) as u32;
        slot = slot.div_ceil(slot_align) * slot_align;
        chunks.push(Chunk {
            rows: start..end,
            workgroups,
            output_offset: slot,
        });
        slot += u64::from(workgroups);
        start = end;
    }
    Ok(ChunkPlan {
        chunks,
        output_slots: slot,
    })
}

/// Folds `workgroups` into an (x, y) grid with both sides at most `max_per_dim`. Kernels
/// recover the linear index as `x + y * num_workgroups.x` and skip indices past the end.
pub(crate) fn fold_grid(workgroups: u32, max_per_dim: u32) -> (u32, u32) {
    if workgroups <= max_per_dim {
        return (workgroups, 1);
    }
    let y = workgroups.div_ceil(max_per_dim);
    (workgroups.div_ceil(y), y)
}

/// One binding of a dispatch: a resource and the name of the WGSL variable it binds.
///
/// Bindings are placed by name: [`Kernel::bindings`] lists each kernel's variables in binding
/// order (checked against the WGSL by naga in `layout_tests`), so a binding named wrongly, left
/// out or given twice is an error naming the kernel, not a silently swapped buffer.
pub(crate) struct Bind<'a> {
    pub(crate) name: &'static str,
    pub(crate) resource: wgpu::BindingResource<'a>,
}

/// `binds![logits = whole(&x), grad = storage(..)]`: the bindings of one dispatch, each named
/// after its variable in the kernel's WGSL (binding 0, the `cfg` uniform, is added by the
/// dispatch helpers).
macro_rules! binds {
    ($($name:ident = $resource:expr),* $(,)?) => {
        vec![$($crate::gpu::dispatch::Bind { name: stringify!($name), resource: $resource }),*]
    };
}
pub(crate) use binds;

/// A list of dispatches recorded into one compute pass: each step's uniform config packed into
/// one buffer at the device's offset alignment (bound as binding 0), its other bindings placed
/// by name, its workgroups folded into a 2-D grid. Every `record_*` function of the crate
/// records through this (or, for the layer engine's uniform arena, through [`record_one`]).
///
/// Steps run in the order pushed; wgpu orders a pass's dispatches by their storage accesses.
pub(crate) struct Dispatches<'a> {
    label: &'static str,
    align: usize,
    uniforms: Vec<u8>,
    steps: Vec<Step<'a>>,
}

struct Step<'a> {
    kernel: Kernel,
    uniform: Range<u64>,
    bindings: Vec<Bind<'a>>,
    workgroups: Workgroups<'a>,
}

/// How many workgroups a dispatch runs: a count known when it is recorded, or one that an
/// earlier kernel writes on the device (`dispatch_workgroups_indirect`: three u32s, x, y, z, at
/// a byte offset), so that work sized by device-side counts needs no readback.
#[derive(Clone, Copy)]
pub(crate) enum Workgroups<'a> {
    /// This many, folded into a 2-D grid.
    Direct(u32),
    /// Read from `buffer` at byte `offset` when the dispatch runs.
    Indirect { buffer: &'a wgpu::Buffer, offset: u64 },
}

impl Workgroups<'_> {
    /// Whether the dispatch is known to run nothing (then it is not recorded).
    fn none(&self) -> bool {
        matches!(self, Workgroups::Direct(0))
    }
}

impl<'a> Dispatches<'a> {
    /// An empty list, recorded as a compute pass called `label`.
    pub(crate) fn new(ctx: &GpuContext, label: &'static str) -> Self {
        Self {
            label,
            align: ctx.limits().uniform_offset_alignment.max(16) as usize,
            uniforms: Vec::new(),
            steps: Vec::new(),
        }
    }

    /// Adds a dispatch of `workgroups` workgroups of `kernel` with `config` as its `cfg` uniform.
    /// A step of no workgroups is skipped when recorded.
    pub(crate) fn push<C: Pod>(
        &mut self,
        kernel: Kernel,
        config: &C,
        bindings: Vec<Bind<'a>>,
        workgroups: u64,
    ) -> Result<()> {
        let workgroups = workgroups_u32(kernel, workgroups)?;
        let uniform = self.push_uniform(config);
        self.steps.push(Step {
            kernel,
            uniform,
            bindings,
            workgroups: Workgroups::Direct(workgroups),
        });
        Ok(())
    }

    /// Adds a dispatch of `kernel` whose workgroup counts (x, y, z) are three u32s that an
    /// earlier step writes into `args` at byte `offset` (a buffer made with
    /// `BufferUsages::INDIRECT`). The kernel must find its place from `num_workgroups` and what
    /// the earlier step wrote, not from a count on the host.
    pub(crate) fn push_indirect<C: Pod>(
        &mut self,
        kernel: Kernel,
        config: &C,
        bindings: Vec<Bind<'a>>,
        args: &'a wgpu::Buffer,
        offset: u64,
    ) -> Result<()> {
        if !offset.is_multiple_of(4) || offset + 12 > args.size() {
            return Err(Error::Validation(format!(
                "{}: indirect arguments at byte {offset} of a buffer of {} bytes",
                kernel.file(),
                args.size()
            )));
        }
        let uniform = self.push_uniform(config);
        self.steps.push(Step {
            kernel,
            uniform,
            bindings,
            workgroups: Workgroups::Indirect { buffer: args, offset },
        });
        Ok(())
    }

    /// Appends `config` to the packed uniforms at the device's offset alignment; its range.
    fn push_uniform<C: Pod>(&mut self, config: &C) -> Range<u64> {
        let offset = self.uniforms.len().div_ceil(self.align) * self.align;
        self.uniforms.resize(offset, 0);
        self.uniforms.extend_from_slice(bytemuck::bytes_of(config));
        offset as u64..self.uniforms.len() as u64
    }

    /// Records every step into one compute pass of `encoder` (one pass per step while a profile
    /// is open: [`GpuContext::start_profile`]). Validation errors come back as
    /// [`crate::Error`]; nothing is recorded when the list is empty.
    pub(crate) fn record(self, ctx: &GpuContext, encoder: &mut wgpu::CommandEncoder) -> Result<()> {
        if self.steps.is_empty() {
            return Ok(());
        }
        ctx.scoped(|| {
            let mut bytes = self.uniforms;
            bytes.resize(bytes.len().div_ceil(16) * 16, 0);
            let buffer = ctx.request_buffer(
                bytes.len() as u64,
                wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                Some(&bytes),
            )?;
            // Compile (or fetch) every pipeline before the pass borrows the encoder.
            for step in &self.steps {
                ctx.pipeline(step.kernel)?;
            }
            let uniform = |step: &Step<'_>| {
                wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &buffer,
                    offset: step.uniform.start,
                    size: wgpu::BufferSize::new(step.uniform.end - step.uniform.start),
                })
            };
            let run = |pass: &mut wgpu::ComputePass<'_>, step: &Step<'_>| {
                dispatch(ctx, pass, step.kernel, uniform(step), &step.bindings, step.workgroups)
            };
            if ctx.profiling() {
                // A pass per dispatch, each timed on its own; a step of no workgroups records
                // nothing, but its bindings are checked as when not profiling.
                for step in &self.steps {
                    if step.workgroups.none() {
                        entries(step.kernel, uniform(step), &step.bindings)?;
                        continue;
                    }
                    let timed = ctx.profile_pass(step.kernel);
                    run(&mut begin_pass(encoder, self.label, timed.as_ref()), step)?;
                }
                return Ok(());
            }
            let mut pass = begin_pass(encoder, self.label, None);
            for step in &self.steps {
                run(&mut pass, step)?;
            }
            Ok(())
        })
    }
}

/// Records one dispatch of `kernel` in a compute pass of its own, with `uniform` (a binding of
/// the caller's uniform buffer) as its `cfg`: the layer engine's path, whose uniforms live in
/// an arena it writes once per submission.
pub(crate) fn record_one(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    kernel: Kernel,
    uniform: wgpu::BindingResource<'_>,
    bindings: &[Bind<'_>],
    workgroups: u64,
) -> Result<()> {
    let workgroups = workgroups_u32(kernel, workgroups)?;
    ctx.scoped(|| {
        ctx.pipeline(kernel)?;
        let timed = if workgroups > 0 { ctx.profile_pass(kernel) } else { None };
        let mut pass = begin_pass(encoder, kernel.file(), timed.as_ref());
        dispatch(
            ctx,
            &mut pass,
            kernel,
            uniform,
            bindings,
            Workgroups::Direct(workgroups),
        )
    })
}

/// Begins a compute pass called `label`, with timestamps at its beginning and end at queries
/// `timed.1` and `timed.1 + 1` of `timed.0` when a profile times it ([`GpuContext::profile_pass`]).
fn begin_pass<'e>(
    encoder: &'e mut wgpu::CommandEncoder,
    label: &str,
    timed: Option<&(wgpu::QuerySet, u32)>,
) -> wgpu::ComputePass<'e> {
    encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: Some(label),
        timestamp_writes: timed.map(|(set, first)| wgpu::ComputePassTimestampWrites {
            query_set: set,
            beginning_of_pass_write_index: Some(*first),
            end_of_pass_write_index: Some(first + 1),
        }),
    })
}

/// `workgroups` as a dispatch's count, or an error naming `kernel` past 2^32.
fn workgroups_u32(kernel: Kernel, workgroups: u64) -> Result<u32> {
    u32::try_from(workgroups).map_err(|_| {
        Error::invalid(format!(
            "{}: a dispatch of {workgroups} workgroups (more than 2^32)",
            kernel.file()
        ))
    })
}

/// The bind group entries of one dispatch of `kernel`: `uniform` at binding 0 and each named
/// binding at the index of its name in [`Kernel::bindings`]. A name the kernel does not have,
/// a name given twice or a binding left out is an error that names the kernel and the binding.
pub(crate) fn entries<'r>(
    kernel: Kernel,
    uniform: wgpu::BindingResource<'r>,
    bindings: &[Bind<'r>],
) -> Result<Vec<wgpu::BindGroupEntry<'r>>> {
    let names = kernel.bindings();
    let mut slots: Vec<Option<wgpu::BindingResource<'r>>> = vec![None; names.len()];
    for bind in bindings {
        let index = names.iter().position(|n| *n == bind.name).ok_or_else(|| {
            Error::Validation(format!(
                "{}: no binding named `{}` (the kernel binds {names:?})",
                kernel.file(),
                bind.name
            ))
        })?;
        if slots[index].replace(bind.resource.clone()).is_some() {
            return Err(Error::Validation(format!(
                "{}: binding `{}` given twice",
                kernel.file(),
                bind.name
            )));
        }
    }
    let mut entries = vec![wgpu::BindGroupEntry {
        binding: 0,
        resource: uniform,
    }];
    for (i, (slot, name)) in slots.into_iter().zip(names).enumerate() {
        let resource =
            slot.ok_or_else(|| Error::Validation(format!("{}: binding `{name}` not given", kernel.file())))?;
        entries.push(wgpu::BindGroupEntry {
            binding: i as u32 + 1,
            resource,
        });
    }
    Ok(entries)
}

/// Binds `uniform` and `bindings` to `kernel`'s pipeline (already compiled) and dispatches
/// `workgroups`: a count folded into a 2-D grid when it exceeds the per-dimension limit, or
/// the counts an earlier kernel wrote (counted as a dispatch of unknown workgroups). The bind
/// group comes from the frame cache on a prepared object's context.
fn dispatch(
    ctx: &GpuContext,
    pass: &mut wgpu::ComputePass<'_>,
    kernel: Kernel,
    uniform: wgpu::BindingResource<'_>,
    bindings: &[Bind<'_>],
    workgroups: Workgroups<'_>,
) -> Result<()> {
    let entries = entries(kernel, uniform, bindings)?;
    if workgroups.none() {
        return Ok(());
    }
    let pipeline = ctx.pipeline(kernel)?;
    let bind_group = ctx.request_bind_group(pipeline, &entries)?;
    pass.set_pipeline(pipeline);
    pass.set_bind_group(0, &bind_group, &[]);
    let workgroups = match workgroups {
        Workgroups::Direct(n) => {
            let (x, y) = fold_grid(n, ctx.limits().max_workgroups_per_dim);
            pass.dispatch_workgroups(x, y, 1);
            n
        }
        Workgroups::Indirect { buffer, offset } => {
            pass.dispatch_workgroups_indirect(buffer, offset);
            0
        }
    };
    ctx.count(crate::gpu::frame::Count::Dispatch);
    let bound: u64 = bindings
        .iter()
        .map(|b| match &b.resource {
            wgpu::BindingResource::Buffer(binding) => binding
                .size
                .map_or(binding.buffer.size().saturating_sub(binding.offset), |s| s.get()),
            _ => 0,
        })
        .sum();
    let work = KernelWork {
        dispatches: 1,
        workgroups: u64::from(workgroups),
        bound_bytes: bound,
        flops: 0,
    };
    ctx.count_kernel_work(kernel, work);
    Ok(())
}

/// A storage binding of `bytes` bytes at `offset` in `buffer` (rounded up to whole words and
/// clamped to the buffer; at least 16 bytes, one `vec4`, since a binding must hold one element
/// of its array even when the kernel reads none).
pub(crate) fn storage(buffer: &wgpu::Buffer, offset: u64, bytes: u64) -> wgpu::BindingResource<'_> {
    let size = bytes.div_ceil(4).max(4) * 4;
    let size = size.min(buffer.size().saturating_sub(offset));
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer,
        offset,
        size: wgpu::BufferSize::new(size),
    })
}

/// A storage binding of the whole of `buffer`'s elements (at least one element, which every
/// buffer the crate allocates has room for, so that an empty buffer still binds as `array<T>`).
pub(crate) fn whole<T: bytemuck::Pod>(buffer: &GpuBuffer<T>) -> wgpu::BindingResource<'_> {
    storage(buffer.buffer(), 0, buffer.byte_len().max(size_of::<T>() as u64))
}

/// A storage binding that covers elements `start..start + len` (of `elem_bytes` each) of
/// `buffer` from the nearest aligned offset at or below `start`, and the index of element
/// `start` inside the binding. Kernels add that index ("base") to their own, which frees the
/// chunking from alignment: the binding is at most `storage_offset_alignment` bytes longer than
/// the elements it serves.
pub(crate) fn storage_window<'a>(
    limits: &DeviceLimits,
    buffer: &'a wgpu::Buffer,
    start: u64,
    len: u64,
    elem_bytes: u64,
) -> (wgpu::BindingResource<'a>, u32) {
    let align = limits.storage_offset_alignment.max(1);
    let offset = start * elem_bytes / align * align;
    let base = (start * elem_bytes - offset) / elem_bytes;
    (storage(buffer, offset, (base + len) * elem_bytes), base as u32)
}

impl GpuContext {
    /// Records one dispatch of `kernel` in a compute pass of its own: `config` as its `cfg`
    /// uniform, `bindings` by name, `workgroups` folded into a 2-D grid.
    pub(crate) fn record_dispatch<C: Pod>(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        kernel: Kernel,
        config: &C,
        bindings: Vec<Bind<'_>>,
        workgroups: u64,
    ) -> Result<()> {
        let mut list = Dispatches::new(self, kernel.file());
        list.push(kernel, config, bindings, workgroups)?;
        list.record(self, encoder)
    }

    /// Records one dispatch of `kernel` per chunk of `plan`, all in one compute pass:
    /// `config(chunk)` as that dispatch's uniform, `bindings(chunk)` by name.
    pub(crate) fn record_chunks<'r, C: Pod>(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        kernel: Kernel,
        plan: &ChunkPlan,
        config: impl Fn(&Chunk) -> C,
        bindings: impl Fn(&Chunk) -> Vec<Bind<'r>>,
    ) -> Result<()> {
        let mut list = Dispatches::new(self, kernel.file());
        for chunk in &plan.chunks {
            list.push(kernel, &config(chunk), bindings(chunk), u64::from(chunk.workgroups))?;
        }
        list.record(self, encoder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(binding: u64, per_dim: u32, align: u64) -> DeviceLimits {
        DeviceLimits {
            max_storage_binding: binding,
            max_workgroups_per_dim: per_dim,
            max_buffer_size: 1 << 30,
            storage_offset_alignment: align,
            uniform_offset_alignment: 256,
        }
    }

    #[test]
    fn fold_grid_covers_every_workgroup_within_the_limit() {
        for max in [1u32, 2, 3, 7, 65535] {
            for n in [1u32, 2, 5, 64, 1000, 70000] {
                let (x, y) = fold_grid(n, max);
                assert!(x <= max && y <= max.max(n.div_ceil(max)), "{n} over {max}: {x}x{y}");
                assert!(u64::from(x) * u64::from(y) >= u64::from(n));
                // No whole idle row: folding wastes less than one row of workgroups.
                assert!(u64::from(x) * u64::from(y - 1) < u64::from(n));
            }
        }
    }

    #[test]
    fn chunks_respect_binding_alignment_and_workgroup_limits() {
        let l = limits(4096, 2, 32);
        // Rows of 10 f32 (40 bytes) plus one i32 label per row.
        let plan = plan_chunks(
            &l,
            RowLayout {
                rows: 1000,
                elems_per_row: 10,
                row_bytes: &[40, 4],
                elems_per_workgroup: 64,
                output_bytes: 4,
            },
        )
        .unwrap();
        let mut next = 0;
        for c in &plan.chunks {
            assert_eq!(c.rows.start, next);
            next = c.rows.end;
            let n = c.rows.end - c.rows.start;
            assert!(n * 40 <= 4096);
            assert_eq!((c.rows.start * 40) % 32, 0);
            assert_eq!((c.rows.start * 4) % 32, 0);
            assert!(c.workgroups <= 4);
            assert_eq!(u64::from(c.workgroups), (n * 10).div_ceil(64));
            assert_eq!((c.output_offset * 4) % 32, 0);
        }
        assert_eq!(next, 1000);
        assert!(plan.chunks.len() > 1);
    }

    #[test]
    fn a_row_too_large_to_split_is_an_error() {
        let l = limits(256, 65535, 32);
        let err = plan_chunks(
            &l,
            RowLayout {
                rows: 10,
                elems_per_row: 100,
                row_bytes: &[400],
                elems_per_workgroup: 1024,
                output_bytes: 4,
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("cannot be split"), "{err}");
    }
}
