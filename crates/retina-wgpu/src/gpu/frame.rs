//! Resource counters, and the frame cache behind the prepared objects
//! ([`crate::gpu::PreparedPostProcess`] and the others).
//!
//! A `record_*` call of the crate asks its context for scratch buffers, uniform buffers and bind
//! groups. On a plain context each request creates a new wgpu object. On a context made by
//! [`GpuContext::frame_context`] the requests go through a [`FrameCache`] instead: the n-th
//! request of a frame is served by the object that answered the n-th request of the previous
//! frame when it still fits (a buffer at least as large with the same usages, a uniform buffer
//! with the same bytes, a bind group over the same resources), and a new object is created only
//! when it does not. A frame with the shapes and parameters of the previous one therefore
//! creates nothing, writes nothing to the queue and waits on nothing; a larger shape grows the
//! affected buffers once (never shrinks them).
//!
//! Reused scratch buffers must look as fresh ones do (zero-filled, since kernels count with
//! atomics into them): [`FrameCache::begin_frame`] records a `clear_buffer` of each into the
//! frame's encoder before any of the frame's work.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::Result;
use crate::gpu::context::GpuContext;
use crate::gpu::kernels::Kernel;

/// What a context has created and written since it was made: a test reads it before and after a
/// frame to prove that a prepared object's frame created nothing.
///
/// Counts are per device context and shared by its clones (and by the frame contexts of the
/// prepared objects made from it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResourceStats {
    /// Buffers created (scratch, uniform, staging, tensors, outputs).
    pub buffers_created: u64,
    /// Bind groups created.
    pub bind_groups_created: u64,
    /// Writes queued with `Queue::write_buffer`.
    pub queue_writes: u64,
    /// Compute pipelines compiled.
    pub pipelines_compiled: u64,
}

/// The work a context has issued since it was made: what a training step or a frame costs in
/// round trips, beside [`ResourceStats`] (what it created). Read before and after the work and
/// subtract ([`WorkStats::since`]).
///
/// Counts are per device context and shared by its clones; work the host records into its own
/// encoders through the crate's `record_*` calls counts its dispatches, not the host's submits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkStats {
    /// Compute dispatches recorded (by the crate, into its encoders or the host's).
    pub dispatches: u64,
    /// Command buffers the crate submitted to the queue itself.
    pub submits: u64,
    /// Readbacks: each time the host waited to map device data (a download of one or several
    /// buffers in one copy counts once).
    pub readbacks: u64,
    /// Bytes of the tensors the layers of [`crate::nn::GpuEngine`] asked for (activations,
    /// gradients, scratch): the traffic through its buffer pool, not the memory held at once.
    pub tensor_bytes: u64,
}

/// The work of one kernel, summed over its dispatches: what a roofline estimate of its time
/// needs ([`GpuContext::kernel_work`](crate::GpuContext::kernel_work)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelWork {
    /// Dispatches recorded.
    pub dispatches: u64,
    /// Workgroups dispatched (those of indirect dispatches, sized on the device, are not known
    /// here and count 0: the top-k's later passes and the NMS mask).
    pub workgroups: u64,
    /// Bytes of the storage buffers bound to its dispatches (each binding once per dispatch):
    /// the memory traffic a dispatch has at least if it touches every element it binds, and
    /// about what an elementwise kernel moves.
    pub bound_bytes: u64,
    /// Floating-point operations, where the kernel's caller knows them (the convolution's
    /// implicit GEMMs: 2 M N K per product); 0 elsewhere.
    pub flops: u64,
}

impl KernelWork {
    /// The work between `earlier` and `self`.
    pub fn since(&self, earlier: &KernelWork) -> KernelWork {
        KernelWork {
            dispatches: self.dispatches.saturating_sub(earlier.dispatches),
            workgroups: self.workgroups.saturating_sub(earlier.workgroups),
            bound_bytes: self.bound_bytes.saturating_sub(earlier.bound_bytes),
            flops: self.flops.saturating_sub(earlier.flops),
        }
    }
}

impl WorkStats {
    /// The work issued between `earlier` and `self`.
    pub fn since(&self, earlier: &WorkStats) -> WorkStats {
        WorkStats {
            dispatches: self.dispatches.saturating_sub(earlier.dispatches),
            submits: self.submits.saturating_sub(earlier.submits),
            readbacks: self.readbacks.saturating_sub(earlier.readbacks),
            tensor_bytes: self.tensor_bytes.saturating_sub(earlier.tensor_bytes),
        }
    }
}

impl ResourceStats {
    /// What was created and written between `earlier` and `self`.
    pub fn since(&self, earlier: &ResourceStats) -> ResourceStats {
        ResourceStats {
            buffers_created: self.buffers_created.saturating_sub(earlier.buffers_created),
            bind_groups_created: self.bind_groups_created.saturating_sub(earlier.bind_groups_created),
            queue_writes: self.queue_writes.saturating_sub(earlier.queue_writes),
            pipelines_compiled: self.pipelines_compiled.saturating_sub(earlier.pipelines_compiled),
        }
    }
}

/// The atomic counters behind [`ResourceStats`] and [`WorkStats`].
#[derive(Default)]
pub(crate) struct Counters {
    buffers: AtomicU64,
    bind_groups: AtomicU64,
    queue_writes: AtomicU64,
    pipelines: AtomicU64,
    dispatches: AtomicU64,
    submits: AtomicU64,
    readbacks: AtomicU64,
    tensor_bytes: AtomicU64,
    /// Nanoseconds blocked in [`GpuContext::wait`].
    wait_nanos: AtomicU64,
    /// Per kernel, in [`Kernel::ALL`] order (empty until the first dispatch).
    kernels: Mutex<Vec<KernelWork>>,
}

/// What a counter counts.
#[derive(Clone, Copy)]
pub(crate) enum Count {
    Buffer,
    BindGroup,
    QueueWrite,
    Pipeline,
    Dispatch,
    Submit,
    Readback,
}

impl Counters {
    pub(crate) fn add(&self, what: Count) {
        let counter = match what {
            Count::Buffer => &self.buffers,
            Count::BindGroup => &self.bind_groups,
            Count::QueueWrite => &self.queue_writes,
            Count::Pipeline => &self.pipelines,
            Count::Dispatch => &self.dispatches,
            Count::Submit => &self.submits,
            Count::Readback => &self.readbacks,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> ResourceStats {
        ResourceStats {
            buffers_created: self.buffers.load(Ordering::Relaxed),
            bind_groups_created: self.bind_groups.load(Ordering::Relaxed),
            queue_writes: self.queue_writes.load(Ordering::Relaxed),
            pipelines_compiled: self.pipelines.load(Ordering::Relaxed),
        }
    }

    /// Adds `work` to `kernel`'s.
    pub(crate) fn add_kernel_work(&self, kernel: Kernel, work: KernelWork) {
        let mut kernels = self.kernels.lock().unwrap_or_else(|e| e.into_inner());
        if kernels.is_empty() {
            kernels.resize(Kernel::COUNT, KernelWork::default());
        }
        let k = &mut kernels[kernel as usize];
        k.dispatches += work.dispatches;
        k.workgroups += work.workgroups;
        k.bound_bytes += work.bound_bytes;
        k.flops += work.flops;
    }

    /// Every kernel's name and work so far, in declaration order.
    pub(crate) fn kernel_work(&self) -> Vec<(&'static str, KernelWork)> {
        let kernels = self.kernels.lock().unwrap_or_else(|e| e.into_inner());
        Kernel::ALL
            .iter()
            .map(|k| (k.name(), kernels.get(*k as usize).copied().unwrap_or_default()))
            .collect()
    }

    pub(crate) fn add_wait(&self, waited: std::time::Duration) {
        let nanos = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
        self.wait_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub(crate) fn wait_time(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.wait_nanos.load(Ordering::Relaxed))
    }

    pub(crate) fn add_tensor_bytes(&self, bytes: u64) {
        self.tensor_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn work(&self) -> WorkStats {
        WorkStats {
            dispatches: self.dispatches.load(Ordering::Relaxed),
            submits: self.submits.load(Ordering::Relaxed),
            readbacks: self.readbacks.load(Ordering::Relaxed),
            tensor_bytes: self.tensor_bytes.load(Ordering::Relaxed),
        }
    }
}

/// What a cached buffer holds between frames.
enum Contents {
    /// Scratch: cleared at the start of each frame that may reuse it.
    Zeroed,
    /// Bytes written at creation (or by the last queued write) that no kernel modifies:
    /// uniforms and constant tables.
    Bytes(Vec<u8>),
}

struct CachedBuffer {
    buffer: wgpu::Buffer,
    contents: Contents,
}

/// One resource of a bind group key.
#[derive(Clone, PartialEq, Eq, Hash)]
enum KeyEntry {
    Buffer(wgpu::Buffer, u64, Option<wgpu::BufferSize>),
    Texture(wgpu::TextureView),
    Sampler(wgpu::Sampler),
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct BindKey {
    pipeline: wgpu::ComputePipeline,
    entries: Vec<KeyEntry>,
}

/// Bind groups kept per request slot: a few keys each, so that a host alternating between two
/// shapes (or two input buffers) does not create bind groups every frame.
const KEYS_PER_SLOT: usize = 4;

/// The per-frame memo of buffers and bind groups of one prepared object (see the module docs).
#[derive(Default)]
pub(crate) struct FrameCache {
    buffers: Vec<CachedBuffer>,
    bind_groups: Vec<Vec<(BindKey, wgpu::BindGroup)>>,
    next_buffer: usize,
    next_bind_group: usize,
    /// Between [`FrameCache::begin_frame`] and [`FrameCache::end_frame`]: only then are
    /// requests served from the cache (a request outside a frame gets a new object, so that
    /// nothing made outside a frame is recycled under its owner).
    active: bool,
}

impl FrameCache {
    /// Starts a frame: request slots count from zero again, and every scratch buffer that the
    /// frame may reuse is cleared (recorded into `encoder`, ahead of the frame's work).
    pub(crate) fn begin_frame(&mut self, encoder: &mut wgpu::CommandEncoder) {
        self.next_buffer = 0;
        self.next_bind_group = 0;
        self.active = true;
        for cached in &self.buffers {
            if matches!(cached.contents, Contents::Zeroed) {
                encoder.clear_buffer(&cached.buffer, 0, None);
            }
        }
    }

    /// Ends a frame: later requests, until the next frame, are not cached.
    pub(crate) fn end_frame(&mut self) {
        self.active = false;
    }

    /// Serves a buffer request of `size` bytes (a multiple of 4) and `usage`: zero-filled
    /// scratch when `contents` is `None`, else a buffer holding exactly `contents` (which no
    /// kernel modifies).
    pub(crate) fn buffer(
        &mut self,
        ctx: &GpuContext,
        size: u64,
        usage: wgpu::BufferUsages,
        contents: Option<&[u8]>,
    ) -> Result<wgpu::Buffer> {
        if !self.active {
            return ctx.create_buffer_scoped(size, usage, contents);
        }
        let slot = self.next_buffer;
        self.next_buffer += 1;
        if let Some(cached) = self.buffers.get_mut(slot)
            && cached.buffer.size() >= size
            && cached.buffer.usage() == usage
        {
            match (&mut cached.contents, contents) {
                (Contents::Zeroed, None) => return Ok(cached.buffer.clone()),
                (Contents::Bytes(old), Some(new)) if usage.contains(wgpu::BufferUsages::COPY_DST) => {
                    if old.as_slice() != new {
                        ctx.queue_write(&cached.buffer, 0, new);
                        old.clear();
                        old.extend_from_slice(new);
                    }
                    return Ok(cached.buffer.clone());
                }
                _ => {}
            }
        }
        let buffer = ctx.create_buffer_scoped(size, usage, contents)?;
        let cached = CachedBuffer {
            buffer: buffer.clone(),
            contents: contents.map_or(Contents::Zeroed, |bytes| Contents::Bytes(bytes.to_vec())),
        };
        if slot < self.buffers.len() {
            self.buffers[slot] = cached;
        } else {
            self.buffers.push(cached);
        }
        Ok(buffer)
    }

    /// Serves a request for a bind group of `pipeline`'s group 0: the cached group when this
    /// slot saw the same pipeline and resources before, else a new one (also when a resource
    /// cannot be keyed).
    pub(crate) fn bind_group(
        &mut self,
        ctx: &GpuContext,
        pipeline: &wgpu::ComputePipeline,
        entries: &[wgpu::BindGroupEntry<'_>],
    ) -> Result<wgpu::BindGroup> {
        if !self.active {
            return ctx.create_bind_group_scoped(&pipeline.get_bind_group_layout(0), entries);
        }
        let slot = self.next_bind_group;
        self.next_bind_group += 1;
        let key = key_of(pipeline, entries);
        if self.bind_groups.len() <= slot {
            self.bind_groups.resize_with(slot + 1, Vec::new);
        }
        let kept = &mut self.bind_groups[slot];
        if let Some(key) = &key
            && let Some(i) = kept.iter().position(|(k, _)| k == key)
        {
            // Most recently used first.
            let hit = kept.remove(i);
            let group = hit.1.clone();
            kept.insert(0, hit);
            return Ok(group);
        }
        let group = ctx.create_bind_group_scoped(&pipeline.get_bind_group_layout(0), entries)?;
        if let Some(key) = key {
            kept.insert(0, (key, group.clone()));
            kept.truncate(KEYS_PER_SLOT);
        }
        Ok(group)
    }
}

/// The bind groups of a keyed context ([`GpuContext::keyed_context`]): each kept by its key
/// with the generation that last used it.
/// Uniform buffers are kept the same way, by usage and contents (no kernel writes a uniform
/// buffer), so that the bind groups over them are found again too.
#[derive(Default)]
pub(crate) struct KeyedBindGroups {
    groups: HashMap<BindKey, (wgpu::BindGroup, u64)>,
    uniforms: HashMap<(u32, Vec<u8>), (wgpu::Buffer, u64)>,
    generation: u64,
}

/// Largest uniform buffer a keyed context keeps by its contents.
const MAX_KEYED_UNIFORM: usize = 64 << 10;

/// Most bind groups a keyed context keeps: past it, the least recently used generation goes
/// first (a bound on memory for a host that never ends a generation).
const MAX_KEYED: usize = 1 << 14;

impl KeyedBindGroups {
    /// The kept group for `pipeline` and `entries`, or a new one (kept unless a resource
    /// cannot be keyed).
    pub(crate) fn bind_group(
        &mut self,
        ctx: &GpuContext,
        pipeline: &wgpu::ComputePipeline,
        entries: &[wgpu::BindGroupEntry<'_>],
    ) -> Result<wgpu::BindGroup> {
        let Some(key) = key_of(pipeline, entries) else {
            return ctx.create_bind_group_scoped(&pipeline.get_bind_group_layout(0), entries);
        };
        if let Some((group, used)) = self.groups.get_mut(&key) {
            *used = self.generation;
            return Ok(group.clone());
        }
        let group = ctx.create_bind_group_scoped(&pipeline.get_bind_group_layout(0), entries)?;
        if self.groups.len() >= MAX_KEYED {
            let oldest = self.groups.values().map(|(_, used)| *used).min().unwrap_or(0);
            self.groups.retain(|_, (_, used)| *used > oldest);
        }
        self.groups.insert(key, (group.clone(), self.generation));
        Ok(group)
    }

    /// A uniform buffer (`usage` has `UNIFORM` and not `STORAGE`) holding `contents`: the
    /// kept one with the same usage and contents, or a new one (kept when small). `None` for a
    /// request that is not a uniform buffer.
    pub(crate) fn uniform(
        &mut self,
        ctx: &GpuContext,
        usage: wgpu::BufferUsages,
        contents: &[u8],
    ) -> Option<Result<wgpu::Buffer>> {
        if !usage.contains(wgpu::BufferUsages::UNIFORM) || usage.contains(wgpu::BufferUsages::STORAGE) {
            return None;
        }
        let key = (usage.bits(), contents.to_vec());
        if let Some((buffer, used)) = self.uniforms.get_mut(&key) {
            *used = self.generation;
            return Some(Ok(buffer.clone()));
        }
        let buffer = ctx.create_buffer_scoped(contents.len() as u64, usage, Some(contents));
        if let Ok(b) = &buffer
            && contents.len() <= MAX_KEYED_UNIFORM
            && self.uniforms.len() < MAX_KEYED
        {
            self.uniforms.insert(key, (b.clone(), self.generation));
        }
        Some(buffer)
    }

    /// Ends a generation: drops the groups and uniform buffers that neither it nor the one
    /// before used.
    pub(crate) fn next_generation(&mut self) {
        let generation = self.generation;
        self.groups.retain(|_, (_, used)| *used + 1 >= generation);
        self.uniforms.retain(|_, (_, used)| *used + 1 >= generation);
        self.generation += 1;
    }
}

fn key_of(pipeline: &wgpu::ComputePipeline, entries: &[wgpu::BindGroupEntry<'_>]) -> Option<BindKey> {
    let mut keyed = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        // Keys assume bindings 0, 1, 2, ... in order, which is how the crate builds them.
        if entry.binding as usize != i {
            return None;
        }
        keyed.push(match &entry.resource {
            wgpu::BindingResource::Buffer(b) => KeyEntry::Buffer(b.buffer.clone(), b.offset, b.size),
            wgpu::BindingResource::TextureView(view) => KeyEntry::Texture((*view).clone()),
            wgpu::BindingResource::Sampler(sampler) => KeyEntry::Sampler((*sampler).clone()),
            _ => return None,
        });
    }
    Some(BindKey {
        pipeline: pipeline.clone(),
        entries: keyed,
    })
}
