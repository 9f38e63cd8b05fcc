//! The GPU backend of the network layers ([`crate::nn`]): pooled device tensors, an engine that
//! records every layer into one command encoder, and the dispatch of `conv_gemm.wgsl` and the
//! small layer kernels.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use bytemuck::Pod;

use crate::error::{Error, Result};
use crate::gpu::buffer::{BUFFER_USAGE, GpuBuffer};
use crate::gpu::context::GpuContext;
use crate::gpu::conv::{ChannelSumConfig, ConvConfig, ConvReduceConfig};
use crate::gpu::dispatch::{Bind, binds, record_one, storage};
use crate::gpu::kernels::{Kernel, WG_SIZE};
use crate::gpu::reduce::{Normaliser, record_sum_levels, sum_levels};
use crate::nn::{
    Conv2d, ConvGrads, Engine, GroupNorm, GroupNormGrads, GroupNormOut, MaxPool2d, PoolStats, Sgd, Shape, check_concat,
    check_depthwise, check_permute, check_same, check_sgd, check_slice, check_slope, check_upsample,
    check_upsample_backward,
};

/// Bytes of per-dispatch uniforms held before the encoder is submitted.
const ARENA_BYTES: u64 = 1 << 20;
/// Bytes per dispatch in the uniform arena (rounded up to the uniform offset alignment): every
/// layer config must fit, which the assertions below check when the crate compiles.
pub(super) const ARENA_STRIDE: usize = 128;
const _: () = {
    assert!(size_of::<ConvConfig>() <= ARENA_STRIDE);
    assert!(size_of::<ConvReduceConfig>() <= ARENA_STRIDE);
    assert!(size_of::<ChannelSumConfig>() <= ARENA_STRIDE);
    assert!(size_of::<ElementwiseConfig>() <= ARENA_STRIDE);
    assert!(size_of::<UpsampleConfig>() <= ARENA_STRIDE);
    assert!(size_of::<DepthwiseConfig>() <= ARENA_STRIDE);
    assert!(size_of::<ChannelCopyConfig>() <= ARENA_STRIDE);
    assert!(size_of::<PermuteHeadConfig>() <= ARENA_STRIDE);
    assert!(size_of::<SgdConfig>() <= ARENA_STRIDE);
    assert!(size_of::<SumSquaresConfig>() <= ARENA_STRIDE);
};

/// Must stay in sync with `Config` in shaders/elementwise.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct ElementwiseConfig {
    pub(crate) n: u32,
    pub(crate) scale: f32,
    pub(crate) _pad: [u32; 2],
}

/// Must stay in sync with `Config` in shaders/depthwise_conv.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct DepthwiseConfig {
    pub(crate) batch: u32,
    pub(crate) channels: u32,
    pub(crate) in_h: u32,
    pub(crate) in_w: u32,
    pub(crate) out_h: u32,
    pub(crate) out_w: u32,
    pub(crate) kernel_h: u32,
    pub(crate) kernel_w: u32,
    pub(crate) stride: u32,
    pub(crate) pad: u32,
    pub(crate) has_bias: u32,
    pub(crate) _pad: u32,
}

/// Must stay in sync with `Config` in shaders/channel_copy.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct ChannelCopyConfig {
    pub(crate) batch: u32,
    pub(crate) src_c: u32,
    pub(crate) dst_c: u32,
    pub(crate) offset: u32,
    pub(crate) plane: u32,
    pub(crate) _pad: [u32; 3],
}

/// Must stay in sync with `Config` in shaders/upsample_nearest.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct UpsampleConfig {
    pub(crate) planes: u32,
    pub(crate) in_h: u32,
    pub(crate) in_w: u32,
    pub(crate) out_h: u32,
    pub(crate) out_w: u32,
    pub(crate) _pad: [u32; 3],
}

/// Must stay in sync with `Config` in shaders/max_pool.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct MaxPoolConfig {
    pub(crate) planes: u32,
    pub(crate) in_h: u32,
    pub(crate) in_w: u32,
    pub(crate) out_h: u32,
    pub(crate) out_w: u32,
    pub(crate) kernel: u32,
    pub(crate) stride: u32,
    pub(crate) padding: u32,
}

/// Must stay in sync with `Config` in shaders/head_permute.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct PermuteHeadConfig {
    pub(crate) batch: u32,
    pub(crate) anchors: u32,
    pub(crate) values: u32,
    pub(crate) plane: u32,
    pub(crate) rows_per_image: u32,
    pub(crate) row_offset: u32,
    pub(crate) _pad: [u32; 2],
}

/// Must stay in sync with `Config` in shaders/sgd.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct SgdConfig {
    pub(crate) n: u32,
    pub(crate) flags: u32,
    pub(crate) lr: f32,
    pub(crate) momentum: f32,
    pub(crate) weight_decay: f32,
    pub(crate) max_norm: f32,
    pub(crate) _pad: [u32; 2],
}

/// Must stay in sync with `Config` in shaders/sum_squares.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct SumSquaresConfig {
    pub(crate) n: u32,
    pub(crate) flags: u32,
    pub(crate) _pad: [u32; 2],
}

/// sum_squares.wgsl: squares scaled by the power of two above the sum of |g| (else that sum).
const FLAG_SCALED_SQUARES: u32 = 1;

/// Free buffers by size, each by its serial number.
type FreeBuffers = HashMap<u64, BTreeMap<u64, wgpu::Buffer>>;

/// Recycled device buffers by size, all of one context.
///
/// A request takes the earliest-made free buffer of its size, a choice that depends only on
/// which buffers are free and the order the pool made them in: a frame that allocates and
/// drops its tensors as the previous frame did gets the same buffers for the same tensors (the
/// first frame too, which made them in that order), so the bind groups of a prepared detector
/// are found again in its frame cache. (wgpu's own order of buffers is not their creation
/// order.)
struct GpuPool {
    /// Free buffers by size, by the serial number the pool gave them; the pool's statistics;
    /// the next serial number.
    free: Mutex<(FreeBuffers, PoolStats, u64)>,
    /// The id of the context the buffers belong to: a tensor of another context is refused.
    context: u64,
}

impl GpuPool {
    /// A buffer of `bytes` (rounded up to whole words, at least one), reused or new, with its
    /// serial number; the caller ([`GpuEngine::alloc`]) has checked the size against the
    /// device's binding limit.
    fn take(&self, ctx: &GpuContext, bytes: u64) -> Result<(u64, wgpu::Buffer)> {
        let bytes = bytes.div_ceil(4).max(4) * 4;
        let serial = {
            let mut guard = self.free.lock().unwrap_or_else(|e| e.into_inner());
            let (free, stats, next) = &mut *guard;
            if let Some(reused) = free.get_mut(&bytes).and_then(BTreeMap::pop_first) {
                stats.reuses += 1;
                return Ok(reused);
            }
            stats.allocations += 1;
            *next += 1;
            *next
        };
        Ok((serial, ctx.create_buffer_scoped(bytes, BUFFER_USAGE, None)?))
    }

    fn give(&self, serial: u64, buffer: wgpu::Buffer) {
        let mut guard = self.free.lock().unwrap_or_else(|e| e.into_inner());
        guard.0.entry(buffer.size()).or_default().insert(serial, buffer);
    }
}

/// A device buffer of an engine's pool, returned there when the last tensor on it is dropped
/// (the device finishes any recorded use of it first, in submission order).
struct Backing {
    buffer: Option<wgpu::Buffer>,
    /// The pool's serial number of the buffer.
    serial: u64,
    pool: Arc<GpuPool>,
}

impl Drop for Backing {
    fn drop(&mut self) {
        if let Some(buffer) = self.buffer.take() {
            self.pool.give(self.serial, buffer);
        }
    }
}

/// An NCHW f32 tensor on the device: a buffer of an engine's pool of its own, or a view at an
/// aligned offset of a buffer shared with other tensors ([`Engine::zeros_packed`]).
pub struct GpuTensor {
    pub(super) shape: Shape,
    backing: Arc<Backing>,
    /// Byte offset of the first value in the buffer (0 unless packed; a multiple of the
    /// device's storage offset alignment).
    offset: u64,
    /// A view of a buffer shared with other tensors (even at offset 0).
    packed: bool,
}

impl GpuTensor {
    /// The shape.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    pub(crate) fn buffer(&self) -> &wgpu::Buffer {
        self.backing.buffer.as_ref().expect("a live tensor holds its buffer")
    }

    /// Bytes of the values.
    pub(super) fn bytes(&self) -> u64 {
        (self.shape.len() * 4) as u64
    }

    /// The tensor's buffer viewed as `len` elements of `T` for the crate's `record_*` ops
    /// (the view shares the buffer; the tensor stays the owner). Not for a packed tensor.
    pub(crate) fn view<T: Pod>(&self, len: usize) -> Result<GpuBuffer<T>> {
        if self.packed {
            return Err(Error::invalid(format!(
                "a packed tensor of {} (a view at byte {} of a shared buffer) cannot be used as a whole buffer",
                self.shape, self.offset
            )));
        }
        GpuBuffer::from_raw_on(self.buffer().clone(), len, self.backing.pool.context)
    }

    pub(super) fn binding(&self) -> wgpu::BindingResource<'_> {
        storage(self.buffer(), self.offset, self.bytes())
    }

    /// Whether `self` and `other` are views of one buffer.
    fn shares_buffer(&self, other: &GpuTensor) -> bool {
        Arc::ptr_eq(&self.backing, &other.backing)
    }
}

impl std::fmt::Debug for GpuTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GpuTensor{}", self.shape)
    }
}

/// The GPU backend of the layers: records every operation into one command encoder, submitted
/// by [`Engine::sync`] or a read (or when its uniform arena fills).
pub struct GpuEngine {
    ctx: GpuContext,
    pool: Arc<GpuPool>,
    encoder: Option<wgpu::CommandEncoder>,
    arena: wgpu::Buffer,
    arena_bytes: Vec<u8>,
    /// What the arena on the device holds (the last write), so that an unchanged frame of
    /// uniforms is not written again.
    arena_written: Vec<u8>,
    stride: usize,
    /// True while recording into a host's encoder ([`GpuEngine::record_into`]): nothing may be
    /// submitted then.
    recording: bool,
}

impl GpuEngine {
    /// An engine on `ctx`.
    pub fn new(ctx: &GpuContext) -> Result<Self> {
        let align = ctx.limits().uniform_offset_alignment.max(16) as usize;
        let arena = ctx.create_buffer_scoped(
            ARENA_BYTES,
            wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            None,
        )?;
        Ok(Self {
            // Bind groups kept by what they bind: a training step finds the previous step's.
            ctx: ctx.keyed_context(),
            pool: Arc::new(GpuPool {
                free: Mutex::new((HashMap::new(), PoolStats::default(), 0)),
                context: ctx.id(),
            }),
            encoder: None,
            arena,
            arena_bytes: Vec::new(),
            arena_written: Vec::new(),
            stride: ARENA_STRIDE.div_ceil(align) * align,
            recording: false,
        })
    }

    /// Runs `f`, which records layers, into the host's `encoder` instead of the engine's own:
    /// the engine's work goes where the host submits it, and nothing is submitted or waited
    /// on. `spare` is an empty encoder the caller keeps between frames (the engine swaps it with
    /// the host's while recording, so that no encoder is created per frame). At the end the
    /// frame's layer uniforms are written to the queue unless they equal the last ones written;
    /// the host must submit this frame before recording the next.
    pub(crate) fn record_into<R>(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        spare: &mut Option<wgpu::CommandEncoder>,
        f: impl FnOnce(&mut Self) -> Result<R>,
    ) -> Result<R> {
        self.sync()?;
        let mut own = match spare.take() {
            Some(e) => e,
            None => self.ctx.encoder("retina-wgpu spare"),
        };
        std::mem::swap(&mut own, encoder);
        self.encoder = Some(own);
        self.recording = true;
        let result = f(self);
        self.recording = false;
        let mut own = self
            .encoder
            .take()
            .expect("the engine holds the host's encoder while recording");
        std::mem::swap(&mut own, encoder);
        *spare = Some(own);
        self.write_arena();
        result
    }

    /// A tensor of `shape` holding a copy of `source`'s first `shape.len()` values, copied inside
    /// the engine's encoder (no queued write, no staging buffer).
    pub(crate) fn tensor_from_buffer(&mut self, shape: Shape, source: &GpuBuffer<f32>) -> Result<GpuTensor> {
        let len = shape.checked_len()?;
        self.ctx
            .check_buffer("GpuEngine::tensor_from_buffer", "source", source)?;
        if source.len() < len {
            return Err(Error::shape(
                "tensor_from_buffer",
                format!("{} values in the buffer for a tensor of {shape}", source.len()),
            ));
        }
        let t = self.alloc("tensor_from_buffer", shape)?;
        if len > 0 {
            let (src, dst) = (source.buffer().clone(), t.buffer().clone());
            self.encoder().copy_buffer_to_buffer(&src, 0, &dst, 0, (len * 4) as u64);
        }
        Ok(t)
    }

    /// Moves the engine onto a frame context of its context (the one of a prepared detector),
    /// so that its bind groups and the post-processing's buffers come from a frame cache.
    pub(crate) fn use_frame_context(&mut self) {
        self.ctx = self.ctx.frame_context();
    }

    /// Writes the pending layer uniforms to the arena (unless the device already holds them).
    fn write_arena(&mut self) {
        if !self.arena_bytes.is_empty() {
            if self.arena_bytes != self.arena_written {
                self.ctx.queue_write(&self.arena, 0, &self.arena_bytes);
                std::mem::swap(&mut self.arena_written, &mut self.arena_bytes);
            }
            self.arena_bytes.clear();
        }
    }

    /// The context.
    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// The bytes of a tensor of `shape`, checked against the device's storage binding limit.
    fn tensor_bytes(&self, op: &str, shape: Shape) -> Result<u64> {
        let bytes = shape
            .checked_len()
            .ok()
            .and_then(|len| (len as u64).checked_mul(4))
            .ok_or_else(|| Error::invalid(format!("{op}: a tensor of {shape} holds more than 2^62 elements")))?;
        let limit = self.ctx.limits().max_storage_binding;
        if bytes > limit {
            return Err(Error::invalid(format!(
                "{op}: a tensor of {shape} ({bytes} bytes) exceeds the device's storage binding limit of \
                 {limit} bytes; use a smaller batch or input"
            )));
        }
        Ok(bytes)
    }

    pub(super) fn alloc(&self, op: &str, shape: Shape) -> Result<GpuTensor> {
        let bytes = self.tensor_bytes(op, shape)?;
        let (serial, buffer) = self.pool.take(&self.ctx, bytes)?;
        self.ctx.count_tensor_bytes(bytes);
        Ok(GpuTensor {
            shape,
            backing: Arc::new(Backing {
                buffer: Some(buffer),
                serial,
                pool: Arc::clone(&self.pool),
            }),
            offset: 0,
            packed: false,
        })
    }

    /// Records zero-filling `t`'s values (its range of a packed buffer).
    pub(super) fn clear(&mut self, t: &GpuTensor) {
        let buffer = t.buffer().clone();
        self.encoder().clear_buffer(&buffer, t.offset, Some(t.bytes()));
    }

    /// Records copying `data` (`t`'s length) into `t`: in the encoder, after the commands
    /// already recorded, not with a queued write, which would land before them while a pooled
    /// buffer may still be read by one of them.
    fn upload_into(&mut self, t: &GpuTensor, data: &[f32]) -> Result<()> {
        if !data.is_empty() {
            let staging = self.ctx.upload(data)?;
            let (src, dst) = (staging.buffer().clone(), t.buffer().clone());
            self.encoder().copy_buffer_to_buffer(&src, 0, &dst, t.offset, t.bytes());
        }
        Ok(())
    }

    /// [`Engine::zeros_packed`]: the tensors in order at offsets aligned for a storage binding,
    /// a new buffer whenever the next tensor would take the current one past the device's
    /// binding limit (so that a pass over one buffer binds it whole).
    fn packed(&mut self, shapes: &[Shape]) -> Result<Vec<GpuTensor>> {
        let align = self.ctx.limits().storage_offset_alignment;
        let limit = self.ctx.limits().max_storage_binding;
        // (first tensor, byte length) of each buffer, and each tensor's offset.
        let mut buffers: Vec<(usize, u64)> = Vec::new();
        let mut offsets = Vec::with_capacity(shapes.len());
        for (i, &shape) in shapes.iter().enumerate() {
            let bytes = self.tensor_bytes("zeros_packed", shape)?.max(4);
            let start = match buffers.last() {
                Some(&(_, used)) if align_up(used, align) + bytes <= limit => align_up(used, align),
                _ => {
                    buffers.push((i, 0));
                    0
                }
            };
            buffers.last_mut().expect("a buffer was opened").1 = start + bytes;
            offsets.push(start);
        }
        let mut tensors = Vec::with_capacity(shapes.len());
        for (b, &(first, bytes)) in buffers.iter().enumerate() {
            let end = buffers.get(b + 1).map_or(shapes.len(), |next| next.0);
            let whole = self.zeros(Shape::new(1, 1, 1, (bytes / 4) as usize))?;
            for i in first..end {
                tensors.push(GpuTensor {
                    shape: shapes[i],
                    backing: Arc::clone(&whole.backing),
                    offset: offsets[i],
                    packed: true,
                });
            }
        }
        Ok(tensors)
    }

    /// Refuses tensors of another context (their buffers cannot be bound here; wgpu would read
    /// this device's memory instead, or panic).
    pub(crate) fn check_tensors(&self, op: &str, tensors: &[&GpuTensor]) -> Result<()> {
        for (i, t) in tensors.iter().enumerate() {
            if t.backing.pool.context != self.ctx.id() {
                return Err(Error::invalid(format!(
                    "{op}: tensor {i} ({}) belongs to another GpuContext (another GPU device) than \
                     this engine's on {}; tensors cannot move between contexts",
                    t.shape,
                    self.ctx.adapter_name()
                )));
            }
        }
        Ok(())
    }

    /// The engine's open command encoder (opened on first use; submitted at [`Engine::sync`]).
    pub(crate) fn encoder(&mut self) -> &mut wgpu::CommandEncoder {
        let ctx = &self.ctx;
        self.encoder.get_or_insert_with(|| ctx.encoder("retina-wgpu layers"))
    }

    /// Records one dispatch of `kernel` with `config` as its `cfg` uniform, taken from the
    /// engine's uniform arena (written once per submission), and `bindings` by name.
    pub(super) fn run<C: Pod>(
        &mut self,
        kernel: Kernel,
        config: &C,
        bindings: Vec<Bind<'_>>,
        workgroups: u64,
    ) -> Result<()> {
        if workgroups == 0 {
            return Ok(());
        }
        if size_of::<C>() > self.stride {
            return Err(Error::invalid(format!(
                "a layer config of {} bytes does not fit the uniform arena's {}-byte stride",
                size_of::<C>(),
                self.stride
            )));
        }
        if self.arena_bytes.len() + self.stride > ARENA_BYTES as usize {
            if self.recording {
                return Err(Error::invalid(format!(
                    "a frame recorded into a host encoder needs more than the {ARENA_BYTES} bytes of layer \
                     uniforms the engine holds; record a smaller network or batch per frame"
                )));
            }
            self.sync()?;
        }
        let offset = self.arena_bytes.len();
        self.arena_bytes.extend_from_slice(bytemuck::bytes_of(config));
        self.arena_bytes.resize(offset + self.stride, 0);
        let ctx = self.ctx.clone();
        let arena = self.arena.clone();
        let uniform = wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &arena,
            offset: offset as u64,
            size: wgpu::BufferSize::new(size_of::<C>() as u64),
        });
        record_one(&ctx, self.encoder(), kernel, uniform, &bindings, workgroups)
    }

    fn elementwise(&mut self, kernel: Kernel, n: usize, a: &GpuTensor, b: &GpuTensor, out: &GpuTensor) -> Result<()> {
        self.elementwise_scaled(kernel, n, a, b, out, 1.0)
    }

    /// An elementwise kernel with `cfg.scale` (LeakyReLU's slope).
    fn elementwise_scaled(
        &mut self,
        kernel: Kernel,
        n: usize,
        a: &GpuTensor,
        b: &GpuTensor,
        out: &GpuTensor,
        scale: f32,
    ) -> Result<()> {
        let config = ElementwiseConfig {
            n: u32_of("elementwise length", n)?,
            scale,
            _pad: [0; 2],
        };
        self.run(
            kernel,
            &config,
            binds![a = a.binding(), b = b.binding(), out = out.binding(),],
            (n as u64).div_ceil(WG_SIZE),
        )
    }

    /// The config of a depthwise convolution of `input` into `out`.
    fn depthwise_config(c: &Conv2d, input: Shape, out: Shape, has_bias: bool) -> Result<DepthwiseConfig> {
        Ok(DepthwiseConfig {
            batch: u32_of("depthwise conv2d batch", input.n)?,
            channels: u32_of("depthwise conv2d channels", input.c)?,
            in_h: u32_of("depthwise conv2d input height", input.h)?,
            in_w: u32_of("depthwise conv2d input width", input.w)?,
            out_h: u32_of("depthwise conv2d output height", out.h)?,
            out_w: u32_of("depthwise conv2d output width", out.w)?,
            kernel_h: u32_of("depthwise conv2d kernel height", c.kernel.0)?,
            kernel_w: u32_of("depthwise conv2d kernel width", c.kernel.1)?,
            stride: u32_of("depthwise conv2d stride", c.stride)?,
            pad: u32_of("depthwise conv2d padding", c.padding)?,
            has_bias: u32::from(has_bias),
            _pad: 0,
        })
    }

    /// Records one channel copy (`slice`: out of `src`, else into `dst`) of `copied` elements.
    fn channel_copy(
        &mut self,
        slice: bool,
        src: &GpuTensor,
        dst: &GpuTensor,
        offset: usize,
        copied: Shape,
    ) -> Result<()> {
        let op = if slice { "slice channels" } else { "concat channels" };
        let config = ChannelCopyConfig {
            batch: u32_of(op, copied.n)?,
            src_c: u32_of(op, src.shape.c)?,
            dst_c: u32_of(op, dst.shape.c)?,
            offset: u32_of(op, offset)?,
            plane: u32_of(op, copied.plane())?,
            _pad: [0; 3],
        };
        // Every index the kernel forms (up to the larger tensor's length) must fit in u32.
        u32_of(op, src.shape.len().max(dst.shape.len()))?;
        let kernel = if slice {
            Kernel::SliceChannels
        } else {
            Kernel::ConcatChannels
        };
        self.run(
            kernel,
            &config,
            binds![src = src.binding(), dst = dst.binding(),],
            (copied.len() as u64).div_ceil(WG_SIZE),
        )
    }
}

/// `v` as a u32 for a shader's config, or an error naming the layer's value.
/// `v` as the u32 a kernel indexes with, or an error naming `what`.
pub(super) fn u32_of(what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::invalid(format!("{what} {v} does not fit the GPU's 32-bit indices")))
}

impl Engine for GpuEngine {
    type Tensor = GpuTensor;

    fn shape(tensor: &GpuTensor) -> Shape {
        tensor.shape
    }

    fn tensor(&mut self, shape: Shape, data: &[f32]) -> Result<GpuTensor> {
        shape.checked_len()?;
        if data.len() != shape.len() {
            return Err(Error::shape(
                "tensor",
                format!("{} values for a tensor of {shape}", data.len()),
            ));
        }
        let t = self.alloc("tensor", shape)?;
        self.upload_into(&t, data)?;
        Ok(t)
    }

    fn zeros(&mut self, shape: Shape) -> Result<GpuTensor> {
        let t = self.alloc("zeros", shape)?;
        let buffer = t.buffer().clone();
        self.encoder().clear_buffer(&buffer, 0, None);
        Ok(t)
    }

    fn read(&mut self, tensor: &GpuTensor) -> Result<Vec<f32>> {
        self.check_tensors("read", &[tensor])?;
        if tensor.packed {
            // A packed tensor: its values copied to a buffer of their own first.
            let copy = self.alloc("read", tensor.shape)?;
            let (src, dst) = (tensor.buffer().clone(), copy.buffer().clone());
            self.encoder()
                .copy_buffer_to_buffer(&src, tensor.offset, &dst, 0, tensor.bytes());
            return self.read(&copy);
        }
        self.sync()?;
        let raw = tensor.view::<f32>(tensor.shape.len())?;
        self.ctx.download(&raw)
    }

    fn zeros_packed(&mut self, shapes: &[Shape]) -> Result<Vec<GpuTensor>> {
        self.packed(shapes)
    }

    fn write(&mut self, tensor: &mut GpuTensor, data: &[f32]) -> Result<()> {
        self.check_tensors("write", &[tensor])?;
        if data.len() != tensor.shape.len() {
            return Err(Error::shape(
                "write",
                format!("{} values for a tensor of {}", data.len(), tensor.shape),
            ));
        }
        self.upload_into(tensor, data)
    }

    fn conv2d(&mut self, c: &Conv2d, x: &GpuTensor, weight: &GpuTensor, bias: Option<&GpuTensor>) -> Result<GpuTensor> {
        self.conv2d_forward(c, x, weight, bias)
    }

    fn conv2d_backward(
        &mut self,
        c: &Conv2d,
        x: &GpuTensor,
        weight: &GpuTensor,
        grad_out: &GpuTensor,
        input_grad: bool,
    ) -> Result<ConvGrads<GpuTensor>> {
        self.conv2d_grads(c, x, weight, grad_out, input_grad)
    }

    fn group_norm(
        &mut self,
        gn: &GroupNorm,
        x: &GpuTensor,
        gamma: &GpuTensor,
        beta: &GpuTensor,
    ) -> Result<GroupNormOut<GpuTensor>> {
        self.check_tensors("group norm", &[x, gamma, beta])?;
        self.record_group_norm(gn, x, gamma, beta, false)
    }

    /// GroupNorm and ReLU in the same passes: the apply clamps its output.
    fn group_norm_relu(
        &mut self,
        gn: &GroupNorm,
        x: &GpuTensor,
        gamma: &GpuTensor,
        beta: &GpuTensor,
    ) -> Result<GroupNormOut<GpuTensor>> {
        self.check_tensors("group norm", &[x, gamma, beta])?;
        self.record_group_norm(gn, x, gamma, beta, true)
    }

    /// The ReLU's backward fused into GroupNorm's: the gradient sums and the apply read the
    /// output gradient only where `y > 0`.
    fn group_norm_relu_backward(
        &mut self,
        gn: &GroupNorm,
        x: &GpuTensor,
        gamma: &GpuTensor,
        stats: &GpuTensor,
        y: &GpuTensor,
        grad_out: &GpuTensor,
    ) -> Result<GroupNormGrads<GpuTensor>> {
        self.check_tensors("group norm backward", &[x, gamma, stats, y, grad_out])?;
        self.group_norm_grads(gn, x, gamma, stats, grad_out, Some(y))
    }

    fn conv2d_backward_acc(
        &mut self,
        c: &Conv2d,
        x: &GpuTensor,
        weight: &GpuTensor,
        grad_out: &GpuTensor,
        input_grad: bool,
        weight_grad: &mut GpuTensor,
        bias_grad: Option<&mut GpuTensor>,
    ) -> Result<Option<GpuTensor>> {
        self.conv2d_grads_into(
            c,
            x,
            weight,
            grad_out,
            input_grad,
            weight_grad,
            bias_grad.as_deref(),
            true,
        )
    }

    fn group_norm_backward_acc(
        &mut self,
        gn: &GroupNorm,
        x: &GpuTensor,
        gamma: &GpuTensor,
        stats: &GpuTensor,
        relu_out: Option<&GpuTensor>,
        grad_out: &GpuTensor,
        gamma_grad: &mut GpuTensor,
        beta_grad: &mut GpuTensor,
    ) -> Result<GpuTensor> {
        self.check_tensors(
            "group norm backward",
            &[x, gamma, stats, grad_out, gamma_grad, beta_grad],
        )?;
        if let Some(y) = relu_out {
            self.check_tensors("group norm backward", &[y])?;
        }
        self.record_group_norm_backward(gn, x, gamma, stats, grad_out, relu_out, (gamma_grad, beta_grad), true)
    }

    fn group_norm_backward(
        &mut self,
        gn: &GroupNorm,
        x: &GpuTensor,
        gamma: &GpuTensor,
        stats: &GpuTensor,
        grad_out: &GpuTensor,
    ) -> Result<GroupNormGrads<GpuTensor>> {
        self.check_tensors("group norm backward", &[x, gamma, stats, grad_out])?;
        self.group_norm_grads(gn, x, gamma, stats, grad_out, None)
    }

    fn relu(&mut self, x: &GpuTensor) -> Result<GpuTensor> {
        self.check_tensors("relu", &[x])?;
        let out = self.alloc("relu", x.shape)?;
        self.elementwise(Kernel::Relu, x.shape.len(), x, x, &out)?;
        Ok(out)
    }

    fn relu_backward(&mut self, x: &GpuTensor, grad_out: &GpuTensor) -> Result<GpuTensor> {
        check_same("relu backward", x.shape, grad_out.shape)?;
        self.check_tensors("relu backward", &[x, grad_out])?;
        let out = self.alloc("relu backward", x.shape)?;
        self.elementwise(Kernel::ReluGrad, x.shape.len(), x, grad_out, &out)?;
        Ok(out)
    }

    fn leaky_relu(&mut self, x: &GpuTensor, slope: f32) -> Result<GpuTensor> {
        check_slope("leaky relu", slope)?;
        self.check_tensors("leaky relu", &[x])?;
        let out = self.alloc("leaky relu", x.shape)?;
        self.elementwise_scaled(Kernel::LeakyRelu, x.shape.len(), x, x, &out, slope)?;
        Ok(out)
    }

    fn leaky_relu_backward(&mut self, x: &GpuTensor, grad_out: &GpuTensor, slope: f32) -> Result<GpuTensor> {
        check_slope("leaky relu backward", slope)?;
        check_same("leaky relu backward", x.shape, grad_out.shape)?;
        self.check_tensors("leaky relu backward", &[x, grad_out])?;
        let out = self.alloc("leaky relu backward", x.shape)?;
        self.elementwise_scaled(Kernel::LeakyReluGrad, x.shape.len(), x, grad_out, &out, slope)?;
        Ok(out)
    }

    fn depthwise_conv2d(
        &mut self,
        c: &Conv2d,
        x: &GpuTensor,
        weight: &GpuTensor,
        bias: Option<&GpuTensor>,
    ) -> Result<GpuTensor> {
        let out = check_depthwise(c, x.shape, weight.shape, bias.map(|b| b.shape))?;
        self.check_tensors("depthwise conv2d", &[x, weight])?;
        if let Some(b) = bias {
            self.check_tensors("depthwise conv2d", &[b])?;
        }
        let y = self.alloc("depthwise conv2d", out)?;
        if out.is_empty() {
            return Ok(y);
        }
        let config = Self::depthwise_config(c, x.shape, out, bias.is_some())?;
        u32_of("depthwise conv2d input length", x.shape.len())?;
        u32_of("depthwise conv2d output length", out.len())?;
        // Without a bias the kernel reads none; the weights stand in for the binding.
        let bias = bias.unwrap_or(weight);
        self.run(
            Kernel::DepthwiseForward,
            &config,
            binds![
                a = x.binding(),
                b = weight.binding(),
                bias = bias.binding(),
                out = y.binding(),
            ],
            (out.len() as u64).div_ceil(WG_SIZE),
        )?;
        Ok(y)
    }

    fn depthwise_conv2d_backward(
        &mut self,
        c: &Conv2d,
        x: &GpuTensor,
        weight: &GpuTensor,
        grad_out: &GpuTensor,
        input_grad: bool,
    ) -> Result<ConvGrads<GpuTensor>> {
        let out = check_depthwise(c, x.shape, weight.shape, None)?;
        check_same("depthwise conv2d output gradient", grad_out.shape, out)?;
        self.check_tensors("depthwise conv2d backward", &[x, weight, grad_out])?;
        if out.is_empty() {
            // A batch of no images: no gradient flows to the weights or the bias.
            return Ok(ConvGrads {
                input: input_grad
                    .then(|| self.alloc("depthwise conv2d backward", x.shape))
                    .transpose()?,
                weight: self.zeros(c.depthwise_weight_shape())?,
                bias: self.zeros(c.bias_shape())?,
            });
        }
        let config = Self::depthwise_config(c, x.shape, out, false)?;
        u32_of("depthwise conv2d input length", x.shape.len())?;
        u32_of("depthwise conv2d output length", out.len())?;
        let taps = c.kernel.0 * c.kernel.1;
        // The weight gradient then the bias gradient in one buffer, one workgroup per channel
        // and tap (the last "tap" is the bias), then copied into the two tensors.
        let sums = self.alloc("depthwise conv2d backward", Shape::new(1, 1, 1, out.c * (taps + 1)))?;
        self.run(
            Kernel::DepthwiseGradWeight,
            &config,
            binds![
                a = grad_out.binding(),
                b = x.binding(),
                bias = weight.binding(),
                out = sums.binding(),
            ],
            (out.c * (taps + 1)) as u64,
        )?;
        let weight_grad = self.alloc("depthwise conv2d backward", c.depthwise_weight_shape())?;
        let bias_grad = self.alloc("depthwise conv2d backward", c.bias_shape())?;
        let f32s = size_of::<f32>() as u64;
        let weight_bytes = (out.c * taps) as u64 * f32s;
        let encoder = self.encoder();
        encoder.copy_buffer_to_buffer(sums.buffer(), 0, weight_grad.buffer(), 0, weight_bytes);
        encoder.copy_buffer_to_buffer(sums.buffer(), weight_bytes, bias_grad.buffer(), 0, out.c as u64 * f32s);
        let dx = if input_grad {
            let dx = self.alloc("depthwise conv2d backward", x.shape)?;
            self.run(
                Kernel::DepthwiseGradInput,
                &config,
                binds![
                    a = grad_out.binding(),
                    b = weight.binding(),
                    bias = weight.binding(),
                    out = dx.binding(),
                ],
                (x.shape.len() as u64).div_ceil(WG_SIZE),
            )?;
            Some(dx)
        } else {
            None
        };
        Ok(ConvGrads {
            input: dx,
            weight: weight_grad,
            bias: bias_grad,
        })
    }

    fn concat_channels(&mut self, parts: &[&GpuTensor]) -> Result<GpuTensor> {
        let shapes: Vec<Shape> = parts.iter().map(|p| p.shape).collect();
        let out = check_concat(&shapes)?;
        self.check_tensors("concat channels", parts)?;
        let y = self.alloc("concat channels", out)?;
        let mut offset = 0;
        for p in parts {
            if !p.shape.is_empty() {
                self.channel_copy(false, p, &y, offset, p.shape)?;
            }
            offset += p.shape.c;
        }
        Ok(y)
    }

    fn slice_channels(&mut self, x: &GpuTensor, start: usize, len: usize) -> Result<GpuTensor> {
        let out = check_slice(x.shape, start, len)?;
        self.check_tensors("slice channels", &[x])?;
        let y = self.alloc("slice channels", out)?;
        if !out.is_empty() {
            self.channel_copy(true, x, &y, start, out)?;
        }
        Ok(y)
    }

    fn max_pool2d(&mut self, pool: &MaxPool2d, x: &GpuTensor) -> Result<GpuTensor> {
        let s = x.shape;
        let out_shape = pool.output_shape(s)?;
        self.check_tensors("max pool", &[x])?;
        let out = self.alloc("max pool", out_shape)?;
        if out.shape.is_empty() {
            return Ok(out);
        }
        let config = MaxPoolConfig {
            planes: u32_of("max pool planes", s.n * s.c)?,
            in_h: u32_of("max pool height", s.h)?,
            in_w: u32_of("max pool width", s.w)?,
            out_h: out_shape.h as u32,
            out_w: out_shape.w as u32,
            kernel: u32_of("max pool kernel", pool.kernel)?,
            stride: u32_of("max pool stride", pool.stride)?,
            padding: u32_of("max pool padding", pool.padding)?,
        };
        self.run(
            Kernel::MaxPool,
            &config,
            binds![src = x.binding(), dst = out.binding(),],
            (out.shape.len() as u64).div_ceil(WG_SIZE),
        )?;
        Ok(out)
    }

    fn upsample_nearest(&mut self, x: &GpuTensor, h: usize, w: usize) -> Result<GpuTensor> {
        let s = x.shape;
        check_upsample(s, h, w)?;
        self.check_tensors("upsample", &[x])?;
        let out = self.alloc("upsample", Shape::new(s.n, s.c, h, w))?;
        if out.shape.is_empty() {
            return Ok(out);
        }
        let config = UpsampleConfig {
            planes: u32_of("upsample planes", s.n * s.c)?,
            in_h: s.h as u32,
            in_w: s.w as u32,
            out_h: u32_of("upsample height", h)?,
            out_w: u32_of("upsample width", w)?,
            _pad: [0; 3],
        };
        self.run(
            Kernel::UpsampleForward,
            &config,
            binds![src = x.binding(), dst = out.binding(),],
            (out.shape.len() as u64).div_ceil(WG_SIZE),
        )?;
        Ok(out)
    }

    fn upsample_nearest_backward(&mut self, grad_out: &GpuTensor, h: usize, w: usize) -> Result<GpuTensor> {
        let s = grad_out.shape;
        check_upsample_backward(s, h, w)?;
        self.check_tensors("upsample backward", &[grad_out])?;
        let out = self.alloc("upsample backward", Shape::new(s.n, s.c, h, w))?;
        if out.shape.is_empty() {
            return Ok(out);
        }
        let config = UpsampleConfig {
            planes: u32_of("upsample planes", s.n * s.c)?,
            in_h: h as u32,
            in_w: w as u32,
            out_h: s.h as u32,
            out_w: s.w as u32,
            _pad: [0; 3],
        };
        self.run(
            Kernel::UpsampleBackward,
            &config,
            binds![src = grad_out.binding(), dst = out.binding(),],
            (out.shape.len() as u64).div_ceil(WG_SIZE),
        )?;
        Ok(out)
    }

    fn add(&mut self, a: &GpuTensor, b: &GpuTensor) -> Result<GpuTensor> {
        check_same("add", a.shape, b.shape)?;
        self.check_tensors("add", &[a, b])?;
        let out = self.alloc("add", a.shape)?;
        self.elementwise(Kernel::Add, a.shape.len(), a, b, &out)?;
        Ok(out)
    }

    fn accumulate(&mut self, acc: &mut GpuTensor, x: &GpuTensor) -> Result<()> {
        check_same("accumulate", acc.shape, x.shape)?;
        self.check_tensors("accumulate", &[acc, x])?;
        self.elementwise(Kernel::Accumulate, x.shape.len(), x, x, acc)
    }

    fn permute_head(
        &mut self,
        head: &GpuTensor,
        anchors: usize,
        rows: &mut GpuTensor,
        row_offset: usize,
    ) -> Result<()> {
        let values = check_permute("permute head", head.shape, anchors, rows.shape, row_offset)?;
        self.check_tensors("permute head", &[head, rows])?;
        let config = PermuteHeadConfig {
            batch: u32_of("permute head batch", head.shape.n)?,
            anchors: u32_of("permute head anchors", anchors)?,
            values: u32_of("permute head values", values)?,
            plane: u32_of("permute head plane", head.shape.plane())?,
            rows_per_image: u32_of("permute head rows", rows.shape.h)?,
            row_offset: u32_of("permute head row offset", row_offset)?,
            _pad: [0; 2],
        };
        self.run(
            Kernel::PermuteHead,
            &config,
            binds![src = head.binding(), dst = rows.binding(),],
            (head.shape.len() as u64).div_ceil(WG_SIZE),
        )
    }

    fn permute_head_backward(
        &mut self,
        rows: &GpuTensor,
        anchors: usize,
        row_offset: usize,
        head: Shape,
    ) -> Result<GpuTensor> {
        let values = check_permute("permute head backward", head, anchors, rows.shape, row_offset)?;
        self.check_tensors("permute head backward", &[rows])?;
        let out = self.alloc("permute head backward", head)?;
        let config = PermuteHeadConfig {
            batch: u32_of("permute head batch", head.n)?,
            anchors: u32_of("permute head anchors", anchors)?,
            values: u32_of("permute head values", values)?,
            plane: u32_of("permute head plane", head.plane())?,
            rows_per_image: u32_of("permute head rows", rows.shape.h)?,
            row_offset: u32_of("permute head row offset", row_offset)?,
            _pad: [0; 2],
        };
        self.run(
            Kernel::PermuteHeadBackward,
            &config,
            binds![src = rows.binding(), dst = out.binding(),],
            (head.len() as u64).div_ceil(WG_SIZE),
        )?;
        Ok(out)
    }

    fn sgd_step(
        &mut self,
        sgd: &Sgd,
        lr: f32,
        params: &mut [GpuTensor],
        grads: &[GpuTensor],
        velocity: &mut [GpuTensor],
        decay: &[bool],
    ) -> Result<()> {
        sgd.validate()?;
        Sgd::check_lr(lr)?;
        check_sgd(params.len(), grads.len(), velocity.len(), decay.len())?;
        for ((p, g), v) in params.iter().zip(grads).zip(velocity.iter()) {
            check_same("sgd gradient", p.shape, g.shape)?;
            check_same("sgd velocity", p.shape, v.shape)?;
            self.check_tensors("sgd", &[p, g, v])?;
        }
        let decay_of = |i: usize| decay.get(i).copied().unwrap_or(true);
        // Tensors packed back to back alike in the three lists (RetinaNet::packed_zeros) are
        // updated by one dispatch per run of equal decay; unpacked tensors are runs of one.
        let sgd_runs = packed_runs(
            &[&*params, grads, &*velocity],
            self.ctx.limits().storage_offset_alignment,
            |a, b| decay_of(a) == decay_of(b),
        );
        // Global gradient norm, in two passes so that no square overflows f32 (see
        // shaders/sum_squares.wgsl): S = sum |g|, then q = sum (g 2^-e)^2 with 2^e just above
        // S; the norm is 2^e sqrt(q). Each pass writes per-run partials, then one tree sum.
        let norm_sq = self.zeros(Shape::new(1, 1, 1, 3))?;
        let abs_sum = self.zeros(Shape::new(1, 1, 1, 3))?;
        if sgd.max_grad_norm.is_some() {
            let grad_runs = packed_runs(&[grads], self.ctx.limits().storage_offset_alignment, |_, _| true);
            // Each run's partials start at an aligned slot; the gaps must be zero.
            let align = (self.ctx.limits().storage_offset_alignment / 4).max(1);
            let tiles: Vec<u64> = grad_runs
                .iter()
                .map(|r| (r.bytes(grads) / 4).div_ceil(4 * WG_SIZE))
                .collect();
            let slots: u64 = tiles.iter().map(|t| t.div_ceil(align) * align).sum();
            let ctx = self.ctx.clone();
            for (flags, total) in [(0, &abs_sum), (FLAG_SCALED_SQUARES, &norm_sq)] {
                let partials = self.zeros(Shape::new(1, 1, 1, slots as usize))?;
                let mut offset = 0;
                for (run, &t) in grad_runs.iter().zip(&tiles) {
                    let config = SumSquaresConfig {
                        n: u32_of("sgd gradient run length", (run.bytes(grads) / 4) as usize)?,
                        flags,
                        _pad: [0; 2],
                    };
                    let out = storage(partials.buffer(), offset * 4, t * 4);
                    let scale = storage(abs_sum.buffer(), 0, 12);
                    self.run(
                        Kernel::SumSquares,
                        &config,
                        binds![values = run.binding(grads), partials = out, abs_sum = scale,],
                        t,
                    )?;
                    offset += t.div_ceil(align) * align;
                }
                let partials_view = partials.view::<f32>(slots as usize)?;
                let total_view = total.view::<f32>(3)?;
                // The sum's levels in zero-filled tensors of the pool (slots between chunks
                // are read, not written), so that every step binds the same buffers.
                let mut level_tensors = Vec::new();
                let mut levels = Vec::new();
                for plan in sum_levels(&ctx, slots as usize)? {
                    let n = plan.output_slots as usize;
                    let t = self.zeros(Shape::new(1, 1, 1, n))?;
                    levels.push((plan, t.view::<f32>(n)?));
                    level_tensors.push(t);
                }
                record_sum_levels(
                    &ctx,
                    self.encoder(),
                    &partials_view,
                    &Normaliser::Constant(1.0),
                    &total_view,
                    &levels,
                )?;
            }
        }
        for run in &sgd_runs {
            let n = run.bytes(params) / 4;
            let config = SgdConfig {
                n: u32_of("sgd run length", n as usize)?,
                flags: u32::from(sgd.max_grad_norm.is_some()),
                lr,
                momentum: sgd.momentum,
                weight_decay: if decay_of(run.first) { sgd.weight_decay } else { 0.0 },
                max_norm: sgd.max_grad_norm.unwrap_or(0.0),
                _pad: [0; 2],
            };
            let norm = storage(norm_sq.buffer(), 0, 12);
            let scale = storage(abs_sum.buffer(), 0, 12);
            self.run(
                Kernel::Sgd,
                &config,
                binds![
                    grad = run.binding(grads),
                    norm_sq = norm,
                    weights = run.binding(params),
                    velocity = run.binding(velocity),
                    abs_sum = scale,
                ],
                n.div_ceil(WG_SIZE),
            )?;
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        if self.recording {
            return Err(Error::invalid(
                "a read or sync while recording into a host encoder: a frame records only; read \
                 its outputs after the host has submitted it",
            ));
        }
        self.write_arena();
        match self.encoder.take() {
            Some(encoder) => {
                let done = self.ctx.scoped(|| self.ctx.submit_and_wait(encoder));
                self.ctx.next_bind_generation();
                done
            }
            None => Ok(()),
        }
    }

    fn pool_stats(&self) -> PoolStats {
        self.pool.free.lock().unwrap_or_else(|e| e.into_inner()).1
    }
}

/// Tensors of a list that one pass binds as one range: packed back to back in one buffer
/// ([`Engine::zeros_packed`]) with nothing between them, the same in every list given to
/// [`packed_runs`]; `first` and `last` are the indices of the first and last in memory.
struct PackedRun {
    first: usize,
    last: usize,
    /// The least list index in the run: runs go in this order, the lists' own.
    least: usize,
}

impl PackedRun {
    /// Bytes from the first tensor's start to the last one's end in `list`.
    fn bytes(&self, list: &[GpuTensor]) -> u64 {
        list[self.last].offset + list[self.last].bytes() - list[self.first].offset
    }

    /// The run's range of `list`'s buffer.
    fn binding<'a>(&self, list: &'a [GpuTensor]) -> wgpu::BindingResource<'a> {
        storage(list[self.first].buffer(), list[self.first].offset, self.bytes(list))
    }
}

/// Splits the indices of `lists` (equal lengths) into runs of tensors that follow each other
/// in memory in every list alike, taken in the memory order of the first list: each next
/// tensor in the same buffer as the previous, at the next slot [`GpuEngine::packed`] gives
/// (so that no tensor outside the lists lies between), in all lists at the same distance from
/// the run's first, and `together(previous, next)`. A tensor not packed is a run of its own.
/// The runs come in the lists' order (of each run's least index).
fn packed_runs(lists: &[&[GpuTensor]], align: u64, together: impl Fn(usize, usize) -> bool) -> Vec<PackedRun> {
    let key = lists[0];
    let mut order: Vec<usize> = (0..key.len()).collect();
    order.sort_by_key(|&i| (Arc::as_ptr(&key[i].backing) as usize, key[i].offset));
    let mut runs: Vec<PackedRun> = Vec::new();
    for i in order {
        let joins = runs.last().is_some_and(|run| {
            let (first, prev) = (run.first, run.last);
            together(prev, i)
                && lists.iter().all(|list| {
                    let next_slot = align_up(list[prev].offset + list[prev].bytes().max(4), align);
                    list[i].shares_buffer(&list[first])
                        && list[i].offset == next_slot
                        && list[i].offset - list[first].offset == key[i].offset - key[first].offset
                })
        });
        if let (true, Some(run)) = (joins, runs.last_mut()) {
            run.last = i;
            run.least = run.least.min(i);
        } else {
            runs.push(PackedRun {
                first: i,
                last: i,
                least: i,
            });
        }
    }
    // In the lists' order, not the buffers' addresses: the same every step, so the norm's
    // partial sums add in the same order and bind the same slots.
    runs.sort_by_key(|run| run.least);
    runs
}

/// `v` rounded up to a multiple of `align` (at least 4: a storage binding's offsets are words).
fn align_up(v: u64, align: u64) -> u64 {
    let align = align.max(4);
    v.div_ceil(align) * align
}
