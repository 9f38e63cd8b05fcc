//! The GPU context: a device and queue (the crate's own, or a host application's), the limits
//! that dispatch honours, and the kernel table.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::gpu::anchors::AnchorCache;
use crate::gpu::frame::{Count, Counters, FrameCache, KernelWork, KeyedBindGroups, ResourceStats, WorkStats};
use crate::gpu::kernels::{Kernel, Kernels};
use crate::gpu::profile::ProfilerSlot;
use crate::gpu::shader::ShaderFeatures;

/// Caps that lower the device's limits, so that chunking and grid folding can be exercised on
/// small inputs (tests), or so that the crate leaves room for a host application.
/// `None` keeps the device's own limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimitCaps {
    /// Largest storage-buffer binding, in bytes (device: `max_storage_buffer_binding_size`);
    /// values under 4 KiB are raised to 4 KiB, the least that every reduction step needs.
    pub max_storage_binding: Option<u64>,
    /// Largest workgroup count per dispatch dimension (`max_compute_workgroups_per_dimension`).
    pub max_workgroups_per_dim: Option<u32>,
    /// Largest single buffer, in bytes (`max_buffer_size`); host-side inputs beyond it are
    /// processed in segments.
    pub max_buffer_size: Option<u64>,
}

/// How [`GpuContext::new_with`] chooses and configures its device.
#[derive(Clone, Debug)]
pub struct GpuOptions {
    /// Backends to search. `None`: the `WGPU_BACKEND` environment variable if set, else the
    /// primary backends (Vulkan, Metal, DX12).
    pub backends: Option<wgpu::Backends>,
    /// Choose the first adapter whose name contains this (case-insensitive). `None`: the
    /// `WGPU_ADAPTER_NAME` environment variable if set, else wgpu's choice by power preference.
    pub adapter_name: Option<String>,
    /// Preference when no adapter name is given.
    pub power_preference: wgpu::PowerPreference,
    /// Lower some limits artificially (see [`LimitCaps`]).
    pub caps: LimitCaps,
    /// Use subgroup operations when the device has them (default true).
    pub subgroups: bool,
    /// Longest wait for the device in a blocking call before it fails with
    /// [`Error::ReadbackFailed`]. `None` waits indefinitely.
    pub poll_timeout: Option<Duration>,
    /// Compile every kernel when the context is made instead of on first use, so that no later
    /// call (a host's first frame) stalls on shader compilation. Default false: a context
    /// that runs two kernels compiles two.
    pub precompile: bool,
    /// A pipeline cache to compile through (`Features::PIPELINE_CACHE`, Vulkan): made by the
    /// host with `Device::create_pipeline_cache` from the bytes a previous run saved with
    /// [`wgpu::PipelineCache::get_data`], it lets a second run skip the driver's compilation.
    pub pipeline_cache: Option<wgpu::PipelineCache>,
}

impl Default for GpuOptions {
    fn default() -> Self {
        Self {
            backends: None,
            adapter_name: None,
            power_preference: wgpu::PowerPreference::HighPerformance,
            caps: LimitCaps::default(),
            subgroups: true,
            poll_timeout: Some(Duration::from_secs(600)),
            precompile: false,
            pipeline_cache: None,
        }
    }
}

/// The limits every dispatch of the crate honours: the device's, lowered by [`LimitCaps`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceLimits {
    /// Largest storage-buffer binding, in bytes.
    pub max_storage_binding: u64,
    /// Largest workgroup count in one dispatch dimension.
    pub max_workgroups_per_dim: u32,
    /// Largest buffer, in bytes.
    pub max_buffer_size: u64,
    /// Alignment of storage-buffer binding offsets, in bytes.
    pub storage_offset_alignment: u64,
    /// Alignment of uniform-buffer binding offsets, in bytes.
    pub uniform_offset_alignment: u64,
}

/// The smallest binding cap honoured: one reduction tile (1024 f32).
const MIN_BINDING_CAP: u64 = 4096;

impl DeviceLimits {
    fn new(limits: &wgpu::Limits, caps: LimitCaps) -> Self {
        let cap = |own: u64, cap: Option<u64>| cap.map_or(own, |c| c.min(own));
        Self {
            // Bindings are used in whole 4-byte words.
            max_storage_binding: cap(
                limits.max_storage_buffer_binding_size,
                caps.max_storage_binding.map(|c| c.max(MIN_BINDING_CAP)),
            ) & !3,
            max_workgroups_per_dim: caps
                .max_workgroups_per_dim
                .map_or(limits.max_compute_workgroups_per_dimension, |c| {
                    c.min(limits.max_compute_workgroups_per_dimension)
                })
                .max(1),
            max_buffer_size: cap(limits.max_buffer_size, caps.max_buffer_size) & !3,
            storage_offset_alignment: u64::from(limits.min_storage_buffer_offset_alignment),
            uniform_offset_alignment: u64::from(limits.min_uniform_buffer_offset_alignment),
        }
    }
}

pub(crate) struct Inner {
    /// Unique per context made by `new_with` or `from_device` (clones share it): the buffers
    /// and tensors a context makes carry it, and other contexts refuse them.
    pub(crate) id: u64,
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) info: wgpu::AdapterInfo,
    pub(crate) limits: DeviceLimits,
    pub(crate) features: wgpu::Features,
    pub(crate) shader_features: ShaderFeatures,
    pub(crate) kernels: Kernels,
    pub(crate) anchor_cache: AnchorCache,
    /// Set by the device-lost callback; only installed on devices the crate created itself.
    lost: Option<Arc<Mutex<Option<String>>>>,
    pub(crate) poll_timeout: Option<Duration>,
    pub(crate) pipeline_cache: Option<wgpu::PipelineCache>,
    pub(crate) counters: Counters,
    /// The open profile, if any ([`GpuContext::start_profile`]).
    pub(crate) profiler: ProfilerSlot,
}

/// A wgpu device and queue with the crate's kernels.
///
/// Cheap to clone (shared). Either [`GpuContext::new`] creates its own device, or
/// [`GpuContext::from_device`] wraps a device and queue that a host application already owns;
/// then the crate installs no handler of its own on the device and catches its errors with error
/// scopes. Pipelines are compiled once per context, the first time a kernel is used.
///
/// The buffers and tensors a context makes belong to it and its clones: handing them to
/// another context is an [`Error::InvalidParameter`] (wgpu could otherwise read another
/// device's memory, or panic). Two contexts made with `from_device` on one host device are two
/// contexts: make one and clone it to share buffers.
#[derive(Clone)]
pub struct GpuContext {
    pub(crate) inner: Arc<Inner>,
    /// Set on the context of a prepared object: its requests for buffers and bind groups are
    /// served from this cache ([`crate::gpu::frame`]).
    pub(crate) frame: Option<Arc<Mutex<FrameCache>>>,
    /// Set on the layer engine's context: bind groups kept by what they bind
    /// ([`GpuContext::keyed_context`]).
    pub(crate) keyed: Option<Arc<Mutex<KeyedBindGroups>>>,
}

impl fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GpuContext")
            .field("adapter", &self.inner.info.name)
            .field("backend", &self.inner.info.backend)
            .field("limits", &self.inner.limits)
            .field("subgroups", &self.inner.shader_features.subgroups)
            .finish()
    }
}

/// The backends to search: the options', else `WGPU_BACKEND`'s, else the primary ones.
fn backends_for(options: &GpuOptions) -> Result<wgpu::Backends> {
    if let Some(backends) = options.backends {
        if backends.is_empty() {
            return Err(Error::invalid(
                "GpuOptions::backends is empty: name at least one backend, or None for the default",
            ));
        }
        return Ok(backends);
    }
    match std::env::var("WGPU_BACKEND") {
        Ok(value) if !value.trim().is_empty() => parse_backends(&value),
        _ => Ok(wgpu::Backends::PRIMARY),
    }
}

/// Parses a `WGPU_BACKEND` value, a comma-separated list of backend names; unlike wgpu, which
/// skips unknown names (and then searches no backend at all), any unknown name is an error that
/// quotes it.
pub(crate) fn parse_backends(value: &str) -> Result<wgpu::Backends> {
    const NAMES: &str = "vulkan (vk), metal (mtl), dx12 (d3d12), gl (opengl, gles), webgpu, noop";
    let mut backends = wgpu::Backends::empty();
    for name in value.split(',').map(str::trim) {
        let parsed = wgpu::Backends::from_comma_list(name);
        if name.is_empty() || parsed.is_empty() {
            return Err(Error::invalid(format!(
                "WGPU_BACKEND={value:?}: {name:?} is not a backend; use a comma-separated list of {NAMES}"
            )));
        }
        backends |= parsed;
    }
    Ok(backends)
}

fn instance_for(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = backends;
    wgpu::Instance::new(desc)
}

/// Every adapter wgpu can see on `backends` (for `retina info`).
pub fn enumerate_adapters(backends: wgpu::Backends) -> Vec<wgpu::Adapter> {
    pollster::block_on(instance_for(backends).enumerate_adapters(backends))
}

/// The features the crate asks for when the adapter has them.
fn wanted_features(adapter: wgpu::Features) -> wgpu::Features {
    adapter
        & (wgpu::Features::SHADER_F16
            | wgpu::Features::SUBGROUP
            | wgpu::Features::TIMESTAMP_QUERY
            | wgpu::Features::PIPELINE_CACHE)
}

impl GpuContext {
    /// Creates a context on its own device with [`GpuOptions::default`] (honouring
    /// `WGPU_BACKEND` and `WGPU_ADAPTER_NAME`).
    pub fn new() -> Result<Self> {
        Self::new_with(GpuOptions::default())
    }

    /// Creates a context on its own device, chosen and configured by `options`. The device gets
    /// the adapter's own limits (large bindings, not the 128 MiB default) and the features
    /// `SHADER_F16`, `SUBGROUP`, `TIMESTAMP_QUERY` and `PIPELINE_CACHE` when the adapter has
    /// them.
    ///
    /// Blocks while the adapter and device are requested; in a browser (wasm32), where nothing
    /// may block, it is an error: use [`GpuContext::new_async`].
    pub fn new_with(options: GpuOptions) -> Result<Self> {
        if cfg!(target_arch = "wasm32") {
            return Err(Error::NoAdapter(
                " without blocking: in a browser, make the context with GpuContext::new_async".into(),
            ));
        }
        pollster::block_on(Self::new_async(options))
    }

    /// [`GpuContext::new_with`] without blocking: the adapter and device requests are awaited.
    /// The way to make a context in a browser (wasm32, WebGPU); natively, any executor (or
    /// `pollster::block_on`) runs it.
    pub async fn new_async(options: GpuOptions) -> Result<Self> {
        let backends = backends_for(&options)?;
        let instance = instance_for(backends);
        let name = options
            .adapter_name
            .clone()
            .or_else(|| std::env::var("WGPU_ADAPTER_NAME").ok())
            .filter(|n| !n.is_empty());
        let adapter = match name {
            Some(name) => {
                let wanted = name.to_lowercase();
                let adapters = instance.enumerate_adapters(backends).await;
                let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
                adapters
                    .into_iter()
                    .find(|a| a.get_info().name.to_lowercase().contains(&wanted))
                    .ok_or_else(|| {
                        Error::NoAdapter(format!(
                            " named like \"{name}\" on {backends:?} (adapters seen: {names:?})"
                        ))
                    })?
            }
            None => instance
                .request_adapter(&wgpu::RequestAdapterOptions {
                    power_preference: options.power_preference,
                    ..Default::default()
                })
                .await
                .map_err(|e| Error::NoAdapter(format!(" on {backends:?} ({e})")))?,
        };
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("retina-wgpu"),
                required_features: wanted_features(adapter.features()),
                required_limits: adapter.limits(),
                ..Default::default()
            })
            .await
            .map_err(|e| Error::DeviceLost(format!("could not create a device on {}: {e}", adapter.get_info().name)))?;
        let lost = Arc::new(Mutex::new(None));
        let flag = Arc::clone(&lost);
        device.set_device_lost_callback(move |reason, message| {
            if let Ok(mut slot) = flag.lock() {
                *slot = Some(format!("{reason:?}: {message}"));
            }
        });
        Self::build(device, queue, adapter.get_info(), Some(lost), &options)
    }

    /// Wraps a device and queue that a host application owns (a game, a renderer).
    ///
    /// The device keeps whatever features and limits the host created it with; subgroups are
    /// used if it has `SUBGROUP`. Nothing global is installed on it: no uncaptured-error handler,
    /// no device-lost callback. Only `caps`, `subgroups`, `poll_timeout`, `precompile` and
    /// `pipeline_cache` of `options` apply; an error can only come from precompiling.
    pub fn from_device(device: &wgpu::Device, queue: &wgpu::Queue, options: &GpuOptions) -> Result<Self> {
        Self::build(device.clone(), queue.clone(), device.adapter_info(), None, options)
    }

    fn build(
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: wgpu::AdapterInfo,
        lost: Option<Arc<Mutex<Option<String>>>>,
        options: &GpuOptions,
    ) -> Result<Self> {
        let features = device.features();
        let shader_features = ShaderFeatures {
            subgroups: options.subgroups && features.contains(wgpu::Features::SUBGROUP),
        };
        let limits = DeviceLimits::new(&device.limits(), options.caps);
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let ctx = Self {
            inner: Arc::new(Inner {
                id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                device,
                queue,
                info,
                limits,
                features,
                shader_features,
                kernels: Kernels::default(),
                anchor_cache: AnchorCache::default(),
                lost,
                poll_timeout: options.poll_timeout,
                pipeline_cache: options.pipeline_cache.clone(),
                counters: Counters::default(),
                profiler: ProfilerSlot::default(),
            }),
            frame: None,
            keyed: None,
        };
        if options.precompile {
            ctx.precompile(Kernel::ALL)?;
        }
        Ok(ctx)
    }

    /// Compiles the pipelines of `kernels` now (those already compiled are skipped).
    pub(crate) fn precompile(&self, kernels: &[Kernel]) -> Result<()> {
        for &kernel in kernels {
            self.pipeline(kernel)?;
        }
        Ok(())
    }

    /// Compiles every kernel of the crate now, if not already compiled: a host calls this
    /// during loading (or sets [`GpuOptions::precompile`]) so that no frame pays for it.
    pub fn precompile_all(&self) -> Result<()> {
        self.precompile(Kernel::ALL)
    }

    /// What this context (and every clone of it) has created and queued so far.
    pub fn resource_stats(&self) -> ResourceStats {
        self.inner.counters.snapshot()
    }

    /// How long the host has been blocked so far waiting for submissions this context (and
    /// every clone) waits on, such as the layer engine's [`crate::nn::Engine::sync`] (not the
    /// waits of readbacks; nothing in the browser, where waits are asynchronous). A step's wall
    /// time minus its waits is the host's time to record and submit it.
    pub fn wait_time(&self) -> std::time::Duration {
        self.inner.counters.wait_time()
    }

    /// The work this context (and every clone of it) has issued so far: dispatches, submits
    /// and readbacks.
    pub fn work_stats(&self) -> WorkStats {
        self.inner.counters.work()
    }

    /// Per kernel (named after its variant, e.g. `ConvGradInput`), in declaration order, the
    /// work this context (and every clone) has dispatched so far: dispatches, workgroups, bytes
    /// bound and, for the convolution's GEMMs, FLOPs. With [`GpuContext::work_stats`], what a
    /// roofline estimate of a step on another device needs (`retina bench train`).
    pub fn kernel_work(&self) -> Vec<(&'static str, KernelWork)> {
        self.inner.counters.kernel_work()
    }

    /// Adds `work` (workgroups 0 where the device decides them) to `kernel`'s per-kernel work.
    pub(crate) fn count_kernel_work(&self, kernel: Kernel, work: KernelWork) {
        self.inner.counters.add_kernel_work(kernel, work);
    }

    pub(crate) fn count(&self, what: Count) {
        self.inner.counters.add(what);
    }

    pub(crate) fn count_tensor_bytes(&self, bytes: u64) {
        self.inner.counters.add_tensor_bytes(bytes);
    }

    /// Submits `encoder` (counted in [`GpuContext::work_stats`]).
    pub(crate) fn submit(&self, encoder: wgpu::CommandEncoder) -> wgpu::SubmissionIndex {
        self.count(Count::Submit);
        self.inner.queue.submit([encoder.finish()])
    }

    /// A clone of this context whose buffer and bind group requests go through a new
    /// [`FrameCache`] (the context of a prepared object).
    pub(crate) fn frame_context(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            frame: Some(Arc::new(Mutex::new(FrameCache::default()))),
            keyed: None,
        }
    }

    /// A clone of this context whose bind groups are kept by what they bind (pipeline and
    /// resources) and found again by any later request for the same, in whatever order the
    /// requests come (the layer engine's: a training step binds the same buffers every step, in
    /// an order that may vary with the batch). [`GpuContext::next_bind_generation`] drops what
    /// a whole generation did not use.
    pub(crate) fn keyed_context(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            frame: None,
            keyed: Some(Arc::new(Mutex::new(KeyedBindGroups::default()))),
        }
    }

    /// On a keyed context, ends a generation of bind-group requests (the layer engine's
    /// submission): groups unused during the generation that ends and the one before are
    /// dropped, so that the buffers they hold are released.
    pub(crate) fn next_bind_generation(&self) {
        if let Some(keyed) = &self.keyed {
            keyed.lock().unwrap_or_else(|e| e.into_inner()).next_generation();
        }
    }

    /// Records one frame of a frame context: [`FrameCache::begin_frame`], `f`, then
    /// [`FrameCache::end_frame`] (also when `f` fails).
    pub(crate) fn frame<R>(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        f: impl FnOnce(&mut wgpu::CommandEncoder) -> Result<R>,
    ) -> Result<R> {
        if let Some(frame) = &self.frame {
            frame.lock().unwrap_or_else(|e| e.into_inner()).begin_frame(encoder);
        }
        let result = f(encoder);
        if let Some(frame) = &self.frame {
            frame.lock().unwrap_or_else(|e| e.into_inner()).end_frame();
        }
        result
    }

    /// Creates a buffer of `size` bytes inside error scopes (filled with `contents` when given;
    /// its length must equal `size`), counting it.
    pub(crate) fn create_buffer_scoped(
        &self,
        size: u64,
        usage: wgpu::BufferUsages,
        contents: Option<&[u8]>,
    ) -> Result<wgpu::Buffer> {
        use wgpu::util::DeviceExt;
        let device = &self.inner.device;
        let padded;
        let contents = match contents {
            Some(bytes) if bytes.len() as u64 != size => {
                padded = {
                    let mut v = bytes.to_vec();
                    v.resize(size as usize, 0);
                    v
                };
                Some(padded.as_slice())
            }
            other => other,
        };
        let buffer = self.scoped_always(|| {
            Ok(match contents {
                Some(bytes) => device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("retina-wgpu buffer"),
                    contents: bytes,
                    usage,
                }),
                None => device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("retina-wgpu buffer"),
                    size,
                    usage,
                    mapped_at_creation: false,
                }),
            })
        })?;
        self.inner.counters.add(Count::Buffer);
        Ok(buffer)
    }

    /// A buffer for a request: from the frame cache on a frame context, a kept uniform buffer
    /// of the same contents on a keyed context, else newly created.
    pub(crate) fn request_buffer(
        &self,
        size: u64,
        usage: wgpu::BufferUsages,
        contents: Option<&[u8]>,
    ) -> Result<wgpu::Buffer> {
        match (&self.frame, &self.keyed, contents) {
            (Some(frame), _, _) => frame
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .buffer(self, size, usage, contents),
            (None, Some(keyed), Some(bytes)) if bytes.len() as u64 == size => {
                match keyed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .uniform(self, usage, bytes)
                {
                    Some(buffer) => buffer,
                    None => self.create_buffer_scoped(size, usage, contents),
                }
            }
            _ => self.create_buffer_scoped(size, usage, contents),
        }
    }

    /// Creates a bind group inside error scopes, counting it.
    pub(crate) fn create_bind_group_scoped(
        &self,
        layout: &wgpu::BindGroupLayout,
        entries: &[wgpu::BindGroupEntry<'_>],
    ) -> Result<wgpu::BindGroup> {
        let group = self.scoped_always(|| {
            Ok(self.inner.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout,
                entries,
            }))
        })?;
        self.inner.counters.add(Count::BindGroup);
        Ok(group)
    }

    /// A bind group of `pipeline`'s group 0 over `entries`: from the frame cache on a frame
    /// context, else newly created.
    pub(crate) fn request_bind_group(
        &self,
        pipeline: &wgpu::ComputePipeline,
        entries: &[wgpu::BindGroupEntry<'_>],
    ) -> Result<wgpu::BindGroup> {
        match &self.frame {
            Some(frame) => frame
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .bind_group(self, pipeline, entries),
            None => match &self.keyed {
                Some(keyed) => keyed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .bind_group(self, pipeline, entries),
                None => self.create_bind_group_scoped(&pipeline.get_bind_group_layout(0), entries),
            },
        }
    }

    /// Queues a write of `bytes` into `buffer` at `offset`, counting it.
    pub(crate) fn queue_write(&self, buffer: &wgpu::Buffer, offset: u64, bytes: &[u8]) {
        self.inner.queue.write_buffer(buffer, offset, bytes);
        self.inner.counters.add(Count::QueueWrite);
    }

    /// The identity that the context's buffers and tensors carry.
    pub(crate) fn id(&self) -> u64 {
        self.inner.id
    }

    /// The wgpu device.
    pub fn device(&self) -> &wgpu::Device {
        &self.inner.device
    }

    /// The wgpu queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.inner.queue
    }

    /// The adapter behind the device.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.inner.info
    }

    /// A short description: adapter name and backend.
    pub fn adapter_name(&self) -> String {
        format!("{} ({:?})", self.inner.info.name, self.inner.info.backend)
    }

    /// The limits dispatch honours (the device's, lowered by any [`LimitCaps`]).
    pub fn limits(&self) -> &DeviceLimits {
        &self.inner.limits
    }

    /// The device's features.
    pub fn features(&self) -> wgpu::Features {
        self.inner.features
    }

    /// Whether kernels use subgroup operations.
    pub fn uses_subgroups(&self) -> bool {
        self.inner.shader_features.subgroups
    }

    /// Runs `f` inside validation, out-of-memory and internal error scopes and turns anything
    /// they catch (or a lost device) into the crate's [`Error`].
    ///
    /// On a frame context (a prepared object's) `f` runs without scopes: its recording creates
    /// nothing the scopes could report on (the frame cache scopes each creation itself), and a
    /// frame must not wait on the device. Errors in recorded commands surface when the host
    /// finishes its encoder.
    pub(crate) fn scoped<R>(&self, f: impl FnOnce() -> Result<R>) -> Result<R> {
        // In a browser an error scope's pop is a promise, which nothing may block on: errors
        // there reach the page's console (uncaptured-error handler) instead.
        if self.frame.is_some() || cfg!(target_arch = "wasm32") {
            self.check_lost()?;
            return f();
        }
        self.scoped_always(f)
    }

    /// [`GpuContext::scoped`], with scopes on a frame context too (not in a browser).
    pub(crate) fn scoped_always<R>(&self, f: impl FnOnce() -> Result<R>) -> Result<R> {
        if cfg!(target_arch = "wasm32") {
            self.check_lost()?;
            return f();
        }
        let device = &self.inner.device;
        let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let internal = device.push_error_scope(wgpu::ErrorFilter::Internal);
        let result = f();
        let errors = [
            pollster::block_on(internal.pop()),
            pollster::block_on(validation.pop()),
            pollster::block_on(oom.pop()),
        ];
        self.check_lost()?;
        if let Some(err) = errors.into_iter().flatten().next() {
            return Err(Error::from_wgpu(err));
        }
        result
    }

    pub(crate) fn check_lost(&self) -> Result<()> {
        if let Some(lost) = &self.inner.lost
            && let Some(reason) = lost.lock().ok().and_then(|slot| slot.clone())
        {
            return Err(Error::DeviceLost(reason));
        }
        Ok(())
    }

    /// Submits `encoder` and waits for the device to finish it.
    pub(crate) fn submit_and_wait(&self, encoder: wgpu::CommandEncoder) -> Result<()> {
        let index = self.submit(encoder);
        self.wait(index)
    }

    pub(crate) fn wait(&self, index: wgpu::SubmissionIndex) -> Result<()> {
        let start = web_time_now();
        let polled = self.inner.device.poll(wgpu::PollType::Wait {
            submission_index: Some(index),
            timeout: self.inner.poll_timeout,
        });
        if let Some(start) = start {
            self.inner.counters.add_wait(start.elapsed());
        }
        polled.map_err(|e| {
            self.check_lost()
                .err()
                .unwrap_or_else(|| Error::ReadbackFailed(format!("waiting for the device: {e}")))
        })?;
        self.check_lost()
    }

    pub(crate) fn encoder(&self, label: &str) -> wgpu::CommandEncoder {
        self.inner
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) })
    }
}

/// Now, where the platform has a clock (not in the browser, whose waits are asynchronous and
/// not counted).
fn web_time_now() -> Option<std::time::Instant> {
    (!cfg!(target_arch = "wasm32")).then(std::time::Instant::now)
}
