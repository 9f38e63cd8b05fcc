//! Typed device buffers, upload and readback.

use std::marker::PhantomData;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use bytemuck::Pod;

use crate::error::{Error, Result};
use crate::gpu::context::GpuContext;

/// The usage every buffer the crate allocates has: bindable as storage, copyable both ways.
pub const BUFFER_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// The usage of the buffers that results are copied into to be read back.
const STAGING_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::MAP_READ.union(wgpu::BufferUsages::COPY_DST);

/// A device buffer of `len` elements of `T`.
///
/// The underlying [`wgpu::Buffer`] may be larger (sizes are rounded up to whole 4-byte words,
/// and an empty buffer still holds one element); a host application can hand in its own buffer
/// with [`GpuBuffer::from_raw`] and bind [`GpuBuffer::buffer`] in its own passes.
///
/// A buffer made by a [`GpuContext`] remembers the context: handing it to another context is an
/// [`Error::InvalidParameter`], not a wrong answer or a wgpu panic. (A buffer wrapped with
/// [`GpuBuffer::from_raw`] cannot be checked; it must belong to the device of the context it is
/// used with.)
pub struct GpuBuffer<T: Pod> {
    buffer: wgpu::Buffer,
    len: usize,
    /// [`GpuContext`]'s id of the context that made it; `None` for a wrapped host buffer.
    context: Option<u64>,
    _element: PhantomData<T>,
}

impl<T: Pod> std::fmt::Debug for GpuBuffer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuBuffer")
            .field("type", &std::any::type_name::<T>())
            .field("len", &self.len)
            .field("bytes", &self.buffer.size())
            .finish()
    }
}

/// Bytes of `len` elements of `T`, rounded up to whole words (saturating at `u64::MAX`, which
/// no device can hold).
pub(crate) fn padded_bytes<T>(len: usize) -> u64 {
    (len as u64)
        .checked_mul(size_of::<T>() as u64)
        .and_then(|b| b.checked_add(3))
        .map_or(u64::MAX, |b| b / 4 * 4)
}

/// Bytes the crate allocates for `len` elements of `T`: whole words, and at least 16 bytes and
/// one element, so that even an empty buffer can be bound as an array of `vec4<f32>` or of `T`.
pub(crate) fn alloc_bytes<T>(len: usize) -> u64 {
    padded_bytes::<T>(len).max(16).max(padded_bytes::<T>(1))
}

impl<T: Pod> GpuBuffer<T> {
    /// Wraps an existing buffer (for instance one a host application owns) as `len` elements.
    /// It needs the usages `STORAGE | COPY_SRC | COPY_DST` and at least `len` elements of room
    /// (rounded up to a whole 4-byte word).
    pub fn from_raw(buffer: wgpu::Buffer, len: usize) -> Result<Self> {
        Self::wrap(buffer, len, None)
    }

    /// [`GpuBuffer::from_raw`] for a buffer known to belong to the context of id `context`.
    pub(crate) fn from_raw_on(buffer: wgpu::Buffer, len: usize, context: u64) -> Result<Self> {
        Self::wrap(buffer, len, Some(context))
    }

    fn wrap(buffer: wgpu::Buffer, len: usize, context: Option<u64>) -> Result<Self> {
        let need = padded_bytes::<T>(len);
        if buffer.size() < need {
            return Err(Error::shape(
                "GpuBuffer::from_raw",
                format!(
                    "{len} elements of {} need {need} bytes, the buffer has {}",
                    std::any::type_name::<T>(),
                    buffer.size()
                ),
            ));
        }
        if !buffer.usage().contains(BUFFER_USAGE) {
            return Err(Error::invalid(format!(
                "GpuBuffer::from_raw: the buffer has usages {:?}, it needs {BUFFER_USAGE:?}",
                buffer.usage()
            )));
        }
        Ok(Self {
            buffer,
            len,
            context,
            _element: PhantomData,
        })
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the buffer holds no element.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The underlying wgpu buffer.
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    /// Size of the elements in bytes (not rounded).
    pub fn byte_len(&self) -> u64 {
        // The buffer exists, so its element bytes fit in u64.
        self.len as u64 * size_of::<T>() as u64
    }

    /// The id of the context that made the buffer, when the crate made it.
    pub(crate) fn context_id(&self) -> Option<u64> {
        self.context
    }
}

impl GpuContext {
    /// Refuses a buffer made by another context: `op` and `name` say which call and argument.
    pub(crate) fn check_buffer<T: Pod>(&self, op: &str, name: &str, buffer: &GpuBuffer<T>) -> Result<()> {
        match buffer.context_id() {
            Some(id) if id != self.id() => Err(Error::invalid(format!(
                "{op}: `{name}` was made by another GpuContext (another GPU device) than this one \
                 on {}; buffers cannot move between contexts (clone one context to share them)",
                self.adapter_name()
            ))),
            _ => Ok(()),
        }
    }

    /// Refuses `len` elements of `T` (`bytes` once padded) beyond the device's buffer limit,
    /// naming both.
    fn check_buffer_size<T>(&self, len: usize, bytes: u64) -> Result<()> {
        let max = self.inner.limits.max_buffer_size;
        if bytes > max {
            let shown = if bytes == u64::MAX {
                "more than 2^64 bytes".to_string()
            } else {
                format!("{bytes} bytes")
            };
            return Err(Error::invalid(format!(
                "a buffer of {len} elements of {} ({shown}) exceeds the device's max_buffer_size \
                 of {max} bytes; split the input (the host-slice APIs do this themselves)",
                std::any::type_name::<T>()
            )));
        }
        Ok(())
    }

    /// A zero-filled buffer of `len` elements.
    pub fn zeros<T: Pod>(&self, len: usize) -> Result<GpuBuffer<T>> {
        self.zeros_with_usage(len, wgpu::BufferUsages::empty())
    }

    /// A zero-filled buffer of `len` elements with usages beyond [`BUFFER_USAGE`] (for example
    /// `VERTEX`, `INDIRECT` or `UNIFORM`), so that a host can bind it in its own passes.
    pub fn zeros_with_usage<T: Pod>(&self, len: usize, extra: wgpu::BufferUsages) -> Result<GpuBuffer<T>> {
        let size = alloc_bytes::<T>(len);
        self.check_buffer_size::<T>(len, size)?;
        let buffer = self.request_buffer(size, BUFFER_USAGE | extra, None)?;
        Ok(GpuBuffer {
            buffer,
            len,
            context: Some(self.id()),
            _element: PhantomData,
        })
    }

    /// A buffer holding a copy of `data`.
    ///
    /// On a prepared object's context the buffer is a constant of the frame: no kernel may
    /// write to it (the frame cache reuses it while `data` stays the same).
    pub fn upload<T: Pod>(&self, data: &[T]) -> Result<GpuBuffer<T>> {
        let size = alloc_bytes::<T>(data.len());
        self.check_buffer_size::<T>(data.len(), size)?;
        let buffer = self.request_buffer(size, BUFFER_USAGE, Some(bytemuck::cast_slice(data)))?;
        Ok(GpuBuffer {
            buffer,
            len: data.len(),
            context: Some(self.id()),
            _element: PhantomData,
        })
    }

    /// Overwrites the start of `buffer` with `data` (queued; takes effect at the next submit).
    pub fn write<T: Pod>(&self, buffer: &GpuBuffer<T>, data: &[T]) -> Result<()> {
        self.check_buffer("GpuContext::write", "buffer", buffer)?;
        if data.len() > buffer.len {
            return Err(Error::shape(
                "GpuContext::write",
                format!("{} elements into a buffer of {}", data.len(), buffer.len),
            ));
        }
        let bytes: &[u8] = bytemuck::cast_slice(data);
        self.scoped(|| {
            if bytes.len().is_multiple_of(4) {
                self.queue_write(&buffer.buffer, 0, bytes);
            } else {
                let mut padded = bytes.to_vec();
                padded.resize(bytes.len().div_ceil(4) * 4, 0);
                self.queue_write(&buffer.buffer, 0, &padded);
            }
            Ok(())
        })
    }

    /// Reads a whole buffer back (one submit, one wait).
    pub fn download<T: Pod>(&self, buffer: &GpuBuffer<T>) -> Result<Vec<T>> {
        self.check_buffer("GpuContext::download", "buffer", buffer)?;
        let mut readback = Readback::default();
        let slot = readback.add(buffer);
        let mut results = readback.run(self, self.encoder("retina-wgpu readback"))?;
        Ok(results.take(slot))
    }
}

impl GpuContext {
    /// Reads a whole buffer back without blocking: copies it to a staging buffer, submits, and
    /// awaits the map. The way to read results in a browser (wasm32), where the device answers
    /// through the page's event loop; natively the future polls the device itself, so any
    /// executor (or `pollster::block_on`) runs it.
    pub async fn download_async<T: Pod>(&self, buffer: &GpuBuffer<T>) -> Result<Vec<T>> {
        self.check_buffer("GpuContext::download_async", "buffer", buffer)?;
        let size = padded_bytes::<T>(buffer.len).max(4);
        let staging = self.create_buffer_scoped(size, STAGING_USAGE, None)?;
        let mut encoder = self.encoder("retina-wgpu readback");
        encoder.copy_buffer_to_buffer(&buffer.buffer, 0, &staging, 0, size);
        self.submit(encoder);
        self.count(crate::gpu::frame::Count::Readback);
        let state: std::sync::Arc<std::sync::Mutex<MapState>> = Default::default();
        let callback_state = std::sync::Arc::clone(&state);
        staging.map_async(wgpu::MapMode::Read, .., move |result| {
            let mut s = callback_state.lock().unwrap_or_else(|e| e.into_inner());
            s.result = Some(result.map_err(|e| e.to_string()));
            if let Some(waker) = s.waker.take() {
                waker.wake();
            }
        });
        MapWait {
            state,
            device: self.inner.device.clone(),
            timeout: self.inner.poll_timeout,
        }
        .await
        .map_err(|e| Error::ReadbackFailed(format!("mapping the staging buffer: {e}")))?;
        self.check_lost()?;
        let mut out = vec![T::zeroed(); buffer.len];
        {
            let view = staging
                .get_mapped_range(..)
                .map_err(|e| Error::ReadbackFailed(format!("reading a mapped buffer: {e}")))?;
            bytemuck::cast_slice_mut::<T, u8>(&mut out).copy_from_slice(&view[..buffer.len * size_of::<T>()]);
        }
        staging.unmap();
        Ok(out)
    }
}

/// What a buffer map's callback reported, and who waits for it.
#[derive(Default)]
struct MapState {
    result: Option<std::result::Result<(), String>>,
    waker: Option<std::task::Waker>,
}

/// A future that resolves when a `map_async` callback has fired. In a browser the callback
/// comes from the event loop and wakes the task; natively each poll waits for the device's
/// queue (where callbacks fire; bounded by the context's poll timeout), so it blocks the
/// executor's thread for as long as the device works, as [`GpuContext::download`] does.
struct MapWait {
    state: std::sync::Arc<std::sync::Mutex<MapState>>,
    device: wgpu::Device,
    timeout: Option<std::time::Duration>,
}

impl std::future::Future for MapWait {
    type Output = std::result::Result<(), String>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        if !cfg!(target_arch = "wasm32")
            && let Err(e) = self.device.poll(wgpu::PollType::Wait {
                submission_index: None,
                timeout: self.timeout,
            })
        {
            return std::task::Poll::Ready(Err(format!("polling the device: {e}")));
        }
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(result) = s.result.take() {
            return std::task::Poll::Ready(result);
        }
        s.waker = Some(cx.waker().clone());
        if !cfg!(target_arch = "wasm32") {
            // Nothing else polls this device for us: ask the executor to come back.
            cx.waker().wake_by_ref();
        }
        std::task::Poll::Pending
    }
}

/// A batch of buffers to copy back in one submission: `add` them, then `run` with the encoder
/// holding the work that produces them.
#[derive(Default)]
pub(crate) struct Readback<'a> {
    sources: Vec<(&'a wgpu::Buffer, u64, usize)>,
}

/// Handle to one buffer of a [`Readback`].
#[derive(Clone, Copy)]
pub(crate) struct ReadbackSlot<T> {
    index: usize,
    _element: PhantomData<T>,
}

/// The bytes a [`Readback`] brought back.
pub(crate) struct ReadbackResults {
    bytes: Vec<Vec<u8>>,
    lens: Vec<usize>,
}

impl ReadbackResults {
    /// The elements read for `slot` (taken out; a second take returns an empty vector).
    pub(crate) fn take<T: Pod>(&mut self, slot: ReadbackSlot<T>) -> Vec<T> {
        let bytes = std::mem::take(&mut self.bytes[slot.index]);
        let len = self.lens[slot.index];
        let mut out = vec![T::zeroed(); len];
        bytemuck::cast_slice_mut::<T, u8>(&mut out).copy_from_slice(&bytes[..len * size_of::<T>()]);
        out
    }
}

impl<'a> Readback<'a> {
    /// Queues the whole of `buffer` for readback.
    pub(crate) fn add<T: Pod>(&mut self, buffer: &'a GpuBuffer<T>) -> ReadbackSlot<T> {
        self.sources
            .push((&buffer.buffer, padded_bytes::<T>(buffer.len).max(4), buffer.len));
        ReadbackSlot {
            index: self.sources.len() - 1,
            _element: PhantomData,
        }
    }

    /// Appends the copies to `encoder`, submits it, waits, and maps every staging buffer.
    pub(crate) fn run(self, ctx: &GpuContext, mut encoder: wgpu::CommandEncoder) -> Result<ReadbackResults> {
        if cfg!(target_arch = "wasm32") {
            return Err(Error::ReadbackFailed(
                "a blocking readback in a browser, where nothing may block: read results with \
                 GpuContext::download_async (the host-slice ops of Backend::Gpu read back this way \
                 and are for native code; in a page use the record_* calls)"
                    .into(),
            ));
        }
        let staging = ctx.scoped(|| {
            let staging: Vec<wgpu::Buffer> = self
                .sources
                .iter()
                .map(|&(source, size, _)| {
                    let buffer = ctx.create_buffer_scoped(size, STAGING_USAGE, None)?;
                    encoder.copy_buffer_to_buffer(source, 0, &buffer, 0, size);
                    Ok(buffer)
                })
                .collect::<Result<_>>()?;
            ctx.submit_and_wait(encoder)?;
            ctx.count(crate::gpu::frame::Count::Readback);
            Ok(staging)
        })?;
        let (sender, receiver) = std::sync::mpsc::channel();
        for (index, buffer) in staging.iter().enumerate() {
            let sender = sender.clone();
            buffer.map_async(wgpu::MapMode::Read, .., move |result| {
                let _ = sender.send((index, result));
            });
        }
        drop(sender);
        // Map callbacks fire inside some thread's `poll`; with other threads polling the same
        // device, ours may fire in theirs a moment later. Poll until every one has reported.
        let deadline = ctx.inner.poll_timeout.map(|t| Instant::now() + t);
        let mut mapped = 0;
        while mapped < staging.len() {
            ctx.inner
                .device
                .poll(wgpu::PollType::Poll)
                .map_err(|e| Error::ReadbackFailed(format!("polling for buffer maps: {e}")))?;
            match receiver.recv_timeout(Duration::from_millis(1)) {
                Ok((index, result)) => {
                    result.map_err(|e| Error::ReadbackFailed(format!("mapping staging buffer {index}: {e}")))?;
                    mapped += 1;
                }
                Err(RecvTimeoutError::Timeout) => {
                    ctx.check_lost()?;
                    if deadline.is_some_and(|d| Instant::now() > d) {
                        return Err(Error::ReadbackFailed(format!(
                            "{mapped} of {} staging buffers mapped before the poll timeout",
                            staging.len()
                        )));
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(Error::ReadbackFailed(
                        "a buffer map was dropped without completing".into(),
                    ));
                }
            }
        }
        let mut bytes = Vec::with_capacity(staging.len());
        for buffer in &staging {
            let view = buffer
                .get_mapped_range(..)
                .map_err(|e| Error::ReadbackFailed(format!("reading a mapped buffer: {e}")))?;
            bytes.push(view.to_vec());
            drop(view);
            buffer.unmap();
        }
        Ok(ReadbackResults {
            bytes,
            lens: self.sources.iter().map(|s| s.2).collect(),
        })
    }
}
