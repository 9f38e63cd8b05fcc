//! The CPU backend of the network layers ([`crate::nn`]): pooled tensors and the layers, the
//! twins of `shaders/conv_gemm.wgsl`, `elementwise.wgsl`, `upsample_nearest.wgsl`,
//! `head_permute.wgsl` and `sgd.wgsl` (GroupNorm's twins are in `src/cpu/group_norm.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use crate::cpu::conv::{self, ConvProblem, Real};
use crate::cpu::depthwise;
use crate::cpu::group_norm;
use crate::error::{Error, Result};
use crate::nn::{
    Conv2d, ConvGrads, Engine, GroupNorm, GroupNormGrads, GroupNormOut, MaxPool2d, PoolStats, Sgd, Shape, check_concat,
    check_depthwise, check_permute, check_same, check_sgd, check_slice, check_slope, check_upsample,
    check_upsample_backward, host_vec,
};

/// Recycled vectors by length. Shared by the engine and its tensors, which return their storage
/// when dropped.
pub struct Pool<T> {
    inner: Mutex<PoolInner<T>>,
}

struct PoolInner<T> {
    free: HashMap<usize, Vec<Vec<T>>>,
    stats: PoolStats,
}

impl<T: Real> Pool<T> {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(PoolInner {
                free: HashMap::new(),
                stats: PoolStats::default(),
            }),
        })
    }

    /// Scratch space of `len` values (contents unspecified) that returns to the pool when
    /// dropped.
    pub(crate) fn take(&self, len: usize) -> PooledVec<'_, T> {
        // Empty scratch allocates nothing, and `give` never keeps it.
        let data = if len == 0 {
            Vec::new()
        } else {
            self.take_vec(len, true, String::new).unwrap_or_default()
        };
        PooledVec { data, pool: self }
    }

    /// A vector of `len` values from the pool, or a new zero-filled one: fallibly for tensors
    /// (an [`Error::OutOfMemory`] beyond [`crate::nn::MAX_HOST_BYTES`] or when the allocator
    /// refuses), infallibly for the conv's scratch blocks, whose sizes are bounded by its tiling.
    /// `what` names a tensor in an error; it is formatted only when a new vector is needed.
    fn take_vec(&self, len: usize, scratch: bool, what: impl FnOnce() -> String) -> Result<Vec<T>> {
        {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(v) = inner.free.get_mut(&len).and_then(Vec::pop) {
                inner.stats.reuses += 1;
                return Ok(v);
            }
            if scratch {
                inner.stats.scratch_allocations += 1;
            } else {
                inner.stats.allocations += 1;
            }
        }
        if scratch {
            return Ok(vec![T::ZERO; len]);
        }
        host_vec(len, T::ZERO, &what())
    }

    fn give(&self, v: Vec<T>) {
        if v.is_empty() {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.free.entry(v.len()).or_default().push(v);
    }

    fn stats(&self) -> PoolStats {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).stats
    }
}

/// Scratch space from a [`Pool`], returned on drop.
pub(crate) struct PooledVec<'a, T: Real> {
    data: Vec<T>,
    pool: &'a Pool<T>,
}

impl<T: Real> std::ops::Deref for PooledVec<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.data
    }
}

impl<T: Real> std::ops::DerefMut for PooledVec<'_, T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.data
    }
}

impl<T: Real> Drop for PooledVec<'_, T> {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.data));
    }
}

/// An NCHW tensor in host memory, from an engine's pool (returned there when dropped).
pub struct CpuTensor<T: Real = f32> {
    shape: Shape,
    data: Vec<T>,
    pool: Arc<Pool<T>>,
}

impl<T: Real> CpuTensor<T> {
    /// The shape.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// The values, row-major NCHW.
    pub fn data(&self) -> &[T] {
        &self.data
    }

    /// The values, mutable (for instance to perturb one in a gradient check).
    pub fn data_mut(&mut self) -> &mut [T] {
        &mut self.data
    }
}

impl<T: Real> std::fmt::Debug for CpuTensor<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CpuTensor{}", self.shape)
    }
}

impl<T: Real> Drop for CpuTensor<T> {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.data));
    }
}

/// The CPU backend of the layers, in f32 (training) or f64 (gradient checks).
pub struct CpuEngine<T: Real = f32> {
    pool: Arc<Pool<T>>,
}

impl<T: Real> Default for CpuEngine<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Real> CpuEngine<T> {
    /// An engine with an empty pool.
    pub fn new() -> Self {
        Self { pool: Pool::new() }
    }

    /// A pooled tensor of `shape` (contents unspecified until written); an error when the
    /// shape's element count overflows or the host cannot hold it.
    fn alloc(&self, op: &str, shape: Shape) -> Result<CpuTensor<T>> {
        let len = shape
            .checked_len()
            .map_err(|_| Error::invalid(format!("{op}: a tensor of {shape} holds more than usize::MAX elements")))?;
        Ok(CpuTensor {
            shape,
            data: self
                .pool
                .take_vec(len, false, || format!("{op}: a CPU tensor of {shape}"))?,
            pool: Arc::clone(&self.pool),
        })
    }

    /// A tensor holding `data` in the engine's own precision.
    pub fn tensor_from(&mut self, shape: Shape, data: &[T]) -> Result<CpuTensor<T>> {
        if data.len() != shape.len() {
            return Err(Error::shape(
                "tensor",
                format!("{} values for a tensor of {shape}", data.len()),
            ));
        }
        let mut t = self.alloc("tensor_from", shape)?;
        t.data.copy_from_slice(data);
        Ok(t)
    }

    /// [`Engine::group_norm`], followed by ReLU in the same pass with `relu`.
    fn group_norm_maybe_relu(
        &mut self,
        gn: &GroupNorm,
        x: &CpuTensor<T>,
        gamma: &CpuTensor<T>,
        beta: &CpuTensor<T>,
        relu: bool,
    ) -> Result<GroupNormOut<CpuTensor<T>>> {
        gn.check_forward(x.shape, gamma.shape, beta.shape)?;
        let mut y = self.alloc("group norm", x.shape)?;
        let mut stats = self.alloc("group norm", gn.stats_shape(x.shape.n))?;
        group_norm::forward(
            gn,
            x.shape,
            &x.data,
            &gamma.data,
            &beta.data,
            relu,
            &mut y.data,
            &mut stats.data,
        );
        Ok(GroupNormOut { y, stats })
    }

    /// [`Engine::group_norm_backward`], through the ReLU whose output is `relu_out` when given.
    fn group_norm_backward_maybe_relu(
        &mut self,
        gn: &GroupNorm,
        x: &CpuTensor<T>,
        gamma: &CpuTensor<T>,
        stats: &CpuTensor<T>,
        relu_out: Option<&CpuTensor<T>>,
        grad_out: &CpuTensor<T>,
    ) -> Result<GroupNormGrads<CpuTensor<T>>> {
        gn.check_backward(x.shape, gamma.shape, stats.shape, grad_out.shape)?;
        let mut dx = self.alloc("group norm backward", x.shape)?;
        let mut dgamma = self.alloc("group norm backward", gn.param_shape())?;
        let mut dbeta = self.alloc("group norm backward", gn.param_shape())?;
        let mut sums = self.pool.take(2 * x.shape.n * x.shape.c);
        group_norm::backward(
            gn,
            x.shape,
            &x.data,
            &gamma.data,
            &stats.data,
            relu_out.map(|y| &y.data[..]),
            &grad_out.data,
            &mut dx.data,
            &mut dgamma.data,
            &mut dbeta.data,
            &mut sums,
        );
        Ok(GroupNormGrads {
            input: dx,
            gamma: dgamma,
            beta: dbeta,
        })
    }

    /// A convolution, with LeakyReLU of slope `leaky` fused into its epilogue when given.
    fn conv2d_maybe_leaky(
        &mut self,
        c: &Conv2d,
        x: &CpuTensor<T>,
        weight: &CpuTensor<T>,
        bias: Option<&CpuTensor<T>>,
        leaky: Option<T>,
    ) -> Result<CpuTensor<T>> {
        let out = c.output_shape(x.shape)?;
        check_same("conv2d weights", weight.shape, c.weight_shape())?;
        if let Some(b) = bias {
            check_same("conv2d bias", b.shape, c.bias_shape())?;
        }
        let mut y = self.alloc("conv2d", out)?;
        if out.is_empty() {
            // A batch of no images: nothing to compute.
            return Ok(y);
        }
        let problem = ConvProblem {
            conv: c,
            x: &x.data,
            input: x.shape,
            w: &weight.data,
            out,
            pool: &self.pool,
        };
        conv::forward_leaky(&problem, bias.map(|b| &b.data[..]), leaky, &mut y.data);
        Ok(y)
    }

    /// A depthwise convolution, with LeakyReLU of slope `leaky` fused when given.
    fn depthwise_maybe_leaky(
        &mut self,
        c: &Conv2d,
        x: &CpuTensor<T>,
        weight: &CpuTensor<T>,
        bias: Option<&CpuTensor<T>>,
        leaky: Option<T>,
    ) -> Result<CpuTensor<T>> {
        let out = check_depthwise(c, x.shape, weight.shape, bias.map(|b| b.shape))?;
        let mut y = self.alloc("depthwise conv2d", out)?;
        if !out.is_empty() {
            let b = bias.map(|b| &b.data[..]);
            depthwise::forward(c, &x.data, x.shape, &weight.data, b, leaky, out, &mut y.data);
        }
        Ok(y)
    }

    fn map(&self, op: &str, x: &CpuTensor<T>, f: impl Fn(T) -> T + Sync) -> Result<CpuTensor<T>> {
        let mut out = self.alloc(op, x.shape)?;
        out.data
            .par_iter_mut()
            .zip(x.data.par_iter())
            .for_each(|(o, &v)| *o = f(v));
        Ok(out)
    }
}

/// Source index of the nearest-neighbour resize: `floor(i * from / to)`.
fn nearest(i: usize, from: usize, to: usize) -> usize {
    i * from / to
}

/// Cells (pixels) per parallel task of [`Engine::permute_head`].
const PERMUTE_CELLS: usize = 256;

/// Rows of cells from `first` on: `dst`'s cell `k` holds the `dst.len() / cells` channels of
/// pixel `first + k` of `src` (channel planes `plane` values long).
fn permute_cells<T: Real>(dst: &mut [T], src: &[T], plane: usize, first: usize) {
    let channels = src.len() / plane.max(1);
    if channels == 0 {
        return;
    }
    for (k, cell) in dst.chunks_exact_mut(channels).enumerate() {
        for (j, v) in cell.iter_mut().enumerate() {
            *v = src[j * plane + first + k];
        }
    }
}

/// One plane of nearest upsampling: `dst` (`cols.len()` wide) from `src` (`sh x sw`), output
/// column `x` reading source column `cols[x]`.
fn upsample_plane<T: Real>(dst: &mut [T], src: &[T], sh: usize, sw: usize, cols: &[usize]) {
    let w = cols.len();
    if w == 0 {
        return;
    }
    let h = dst.len() / w;
    for (y, out) in dst.chunks_exact_mut(w).enumerate() {
        let row = &src[nearest(y, sh, h) * sw..][..sw];
        for (d, &c) in out.iter_mut().zip(cols) {
            *d = row[c];
        }
    }
}

impl<T: Real> Engine for CpuEngine<T> {
    /// `f` with rayon's other workers polling for work until it returns (they would otherwise
    /// sleep between layers and be woken about 50 times per RetinaFace pass, 20-60 us each on
    /// the project's VM): 8-11% faster there at 2 threads. They burn CPU while `f` runs.
    fn pass<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> R {
        crate::cpu::with_busy_workers(|| f(self))
    }

    type Tensor = CpuTensor<T>;

    fn shape(tensor: &CpuTensor<T>) -> Shape {
        tensor.shape
    }

    fn tensor(&mut self, shape: Shape, data: &[f32]) -> Result<CpuTensor<T>> {
        if data.len() != shape.len() {
            return Err(Error::shape(
                "tensor",
                format!("{} values for a tensor of {shape}", data.len()),
            ));
        }
        let mut t = self.alloc("tensor", shape)?;
        t.data.iter_mut().zip(data).for_each(|(o, &v)| *o = T::from_f32(v));
        Ok(t)
    }

    fn tensor_with(&mut self, shape: Shape, fill: impl FnOnce(&mut [f32])) -> Result<CpuTensor<T>> {
        let mut t = self.alloc("tensor", shape)?;
        if let Some(data) = T::as_f32_mut(&mut t.data) {
            fill(data);
            return Ok(t);
        }
        // Another precision: f32 values converted as `tensor` converts them.
        drop(t);
        let mut data = crate::nn::host_vec(shape.len(), 0.0, &format!("tensor: the f32 copy of {shape}"))?;
        fill(&mut data);
        self.tensor(shape, &data)
    }

    fn zeros(&mut self, shape: Shape) -> Result<CpuTensor<T>> {
        let mut t = self.alloc("zeros", shape)?;
        t.data.fill(T::ZERO);
        Ok(t)
    }

    fn read(&mut self, tensor: &CpuTensor<T>) -> Result<Vec<f32>> {
        Ok(tensor.data.iter().map(|v| v.to_f32()).collect())
    }

    fn conv2d(
        &mut self,
        c: &Conv2d,
        x: &CpuTensor<T>,
        weight: &CpuTensor<T>,
        bias: Option<&CpuTensor<T>>,
    ) -> Result<CpuTensor<T>> {
        self.conv2d_maybe_leaky(c, x, weight, bias, None)
    }

    fn conv2d_leaky(
        &mut self,
        c: &Conv2d,
        x: &CpuTensor<T>,
        weight: &CpuTensor<T>,
        bias: Option<&CpuTensor<T>>,
        slope: f32,
    ) -> Result<CpuTensor<T>> {
        check_slope("conv2d leaky", slope)?;
        self.conv2d_maybe_leaky(c, x, weight, bias, Some(T::from_f32(slope)))
    }

    fn conv2d_backward(
        &mut self,
        c: &Conv2d,
        x: &CpuTensor<T>,
        weight: &CpuTensor<T>,
        grad_out: &CpuTensor<T>,
        input_grad: bool,
    ) -> Result<ConvGrads<CpuTensor<T>>> {
        let out = c.output_shape(x.shape)?;
        check_same("conv2d weights", weight.shape, c.weight_shape())?;
        check_same("conv2d output gradient", grad_out.shape, out)?;
        let mut dw = self.alloc("conv2d backward", c.weight_shape())?;
        let mut db = self.alloc("conv2d backward", c.bias_shape())?;
        let mut dx = input_grad.then(|| self.alloc("conv2d backward", x.shape)).transpose()?;
        if out.is_empty() {
            // A batch of no images: no gradient flows to the weights or the bias.
            dw.data.fill(T::ZERO);
            db.data.fill(T::ZERO);
            return Ok(ConvGrads {
                input: dx,
                weight: dw,
                bias: db,
            });
        }
        let problem = ConvProblem {
            conv: c,
            x: &x.data,
            input: x.shape,
            w: &weight.data,
            out,
            pool: &self.pool,
        };
        let dx_data = dx.as_mut().map(|t| &mut t.data[..]);
        conv::backward(&problem, &grad_out.data, &mut dw.data, &mut db.data, dx_data);
        Ok(ConvGrads {
            input: dx,
            weight: dw,
            bias: db,
        })
    }

    fn group_norm(
        &mut self,
        gn: &GroupNorm,
        x: &CpuTensor<T>,
        gamma: &CpuTensor<T>,
        beta: &CpuTensor<T>,
    ) -> Result<GroupNormOut<CpuTensor<T>>> {
        self.group_norm_maybe_relu(gn, x, gamma, beta, false)
    }

    fn group_norm_backward(
        &mut self,
        gn: &GroupNorm,
        x: &CpuTensor<T>,
        gamma: &CpuTensor<T>,
        stats: &CpuTensor<T>,
        grad_out: &CpuTensor<T>,
    ) -> Result<GroupNormGrads<CpuTensor<T>>> {
        self.group_norm_backward_maybe_relu(gn, x, gamma, stats, None, grad_out)
    }

    fn group_norm_relu(
        &mut self,
        gn: &GroupNorm,
        x: &CpuTensor<T>,
        gamma: &CpuTensor<T>,
        beta: &CpuTensor<T>,
    ) -> Result<GroupNormOut<CpuTensor<T>>> {
        self.group_norm_maybe_relu(gn, x, gamma, beta, true)
    }

    fn group_norm_relu_backward(
        &mut self,
        gn: &GroupNorm,
        x: &CpuTensor<T>,
        gamma: &CpuTensor<T>,
        stats: &CpuTensor<T>,
        y: &CpuTensor<T>,
        grad_out: &CpuTensor<T>,
    ) -> Result<GroupNormGrads<CpuTensor<T>>> {
        check_same("group_norm_relu backward", y.shape, grad_out.shape)?;
        self.group_norm_backward_maybe_relu(gn, x, gamma, stats, Some(y), grad_out)
    }

    fn relu(&mut self, x: &CpuTensor<T>) -> Result<CpuTensor<T>> {
        self.map("relu", x, |v| if v > T::ZERO { v } else { T::ZERO })
    }

    fn relu_backward(&mut self, x: &CpuTensor<T>, grad_out: &CpuTensor<T>) -> Result<CpuTensor<T>> {
        check_same("relu backward", x.shape, grad_out.shape)?;
        let mut out = self.alloc("relu backward", x.shape)?;
        out.data
            .par_iter_mut()
            .zip(x.data.par_iter().zip(grad_out.data.par_iter()))
            .for_each(|(o, (&v, &g))| *o = if v > T::ZERO { g } else { T::ZERO });
        Ok(out)
    }

    fn leaky_relu(&mut self, x: &CpuTensor<T>, slope: f32) -> Result<CpuTensor<T>> {
        check_slope("leaky relu", slope)?;
        let s = T::from_f32(slope);
        self.map("leaky relu", x, |v| if v > T::ZERO { v } else { v * s })
    }

    fn leaky_relu_backward(&mut self, x: &CpuTensor<T>, grad_out: &CpuTensor<T>, slope: f32) -> Result<CpuTensor<T>> {
        check_slope("leaky relu backward", slope)?;
        check_same("leaky relu backward", x.shape, grad_out.shape)?;
        let s = T::from_f32(slope);
        let mut out = self.alloc("leaky relu backward", x.shape)?;
        out.data
            .par_iter_mut()
            .zip(x.data.par_iter().zip(grad_out.data.par_iter()))
            .for_each(|(o, (&v, &g))| *o = if v > T::ZERO { g } else { g * s });
        Ok(out)
    }

    fn depthwise_conv2d(
        &mut self,
        c: &Conv2d,
        x: &CpuTensor<T>,
        weight: &CpuTensor<T>,
        bias: Option<&CpuTensor<T>>,
    ) -> Result<CpuTensor<T>> {
        self.depthwise_maybe_leaky(c, x, weight, bias, None)
    }

    fn depthwise_conv2d_leaky(
        &mut self,
        c: &Conv2d,
        x: &CpuTensor<T>,
        weight: &CpuTensor<T>,
        bias: Option<&CpuTensor<T>>,
        slope: f32,
    ) -> Result<CpuTensor<T>> {
        check_slope("depthwise conv2d leaky", slope)?;
        self.depthwise_maybe_leaky(c, x, weight, bias, Some(T::from_f32(slope)))
    }

    fn depthwise_conv2d_backward(
        &mut self,
        c: &Conv2d,
        x: &CpuTensor<T>,
        weight: &CpuTensor<T>,
        grad_out: &CpuTensor<T>,
        input_grad: bool,
    ) -> Result<ConvGrads<CpuTensor<T>>> {
        let out = check_depthwise(c, x.shape, weight.shape, None)?;
        check_same("depthwise conv2d output gradient", grad_out.shape, out)?;
        let mut dw = self.alloc("depthwise conv2d backward", c.depthwise_weight_shape())?;
        let mut db = self.alloc("depthwise conv2d backward", c.bias_shape())?;
        let mut dx = input_grad
            .then(|| self.alloc("depthwise conv2d backward", x.shape))
            .transpose()?;
        let dx_data = dx.as_mut().map(|t| &mut t.data[..]);
        // An empty batch leaves every gradient zero (the loops run over no image).
        depthwise::backward(
            c,
            &x.data,
            x.shape,
            &weight.data,
            &grad_out.data,
            out,
            &mut dw.data,
            &mut db.data,
            dx_data,
        );
        Ok(ConvGrads {
            input: dx,
            weight: dw,
            bias: db,
        })
    }

    fn concat_channels(&mut self, parts: &[&CpuTensor<T>]) -> Result<CpuTensor<T>> {
        let shapes: Vec<Shape> = parts.iter().map(|p| p.shape).collect();
        let out = check_concat(&shapes)?;
        let mut y = self.alloc("concat channels", out)?;
        if out.is_empty() {
            return Ok(y);
        }
        let plane = out.plane();
        y.data.par_chunks_mut(out.c * plane).enumerate().for_each(|(n, dst)| {
            let mut offset = 0;
            for p in parts {
                let len = p.shape.c * plane;
                dst[offset..offset + len].copy_from_slice(&p.data[n * len..(n + 1) * len]);
                offset += len;
            }
        });
        Ok(y)
    }

    fn slice_channels(&mut self, x: &CpuTensor<T>, start: usize, len: usize) -> Result<CpuTensor<T>> {
        let out = check_slice(x.shape, start, len)?;
        let mut y = self.alloc("slice channels", out)?;
        if out.is_empty() {
            return Ok(y);
        }
        let plane = out.plane();
        y.data.par_chunks_mut(len * plane).enumerate().for_each(|(n, dst)| {
            let from = (n * x.shape.c + start) * plane;
            dst.copy_from_slice(&x.data[from..from + len * plane]);
        });
        Ok(y)
    }

    fn max_pool2d(&mut self, pool: &MaxPool2d, x: &CpuTensor<T>) -> Result<CpuTensor<T>> {
        let s = x.shape;
        let out_shape = pool.output_shape(s)?;
        let mut out = self.alloc("max pool", out_shape)?;
        if out.data.is_empty() {
            return Ok(out);
        }
        let (oh, ow) = (out_shape.h, out_shape.w);
        out.data
            .par_chunks_mut(oh * ow)
            .zip(x.data.par_chunks(s.plane()))
            .for_each(|(dst, src)| {
                for y in 0..oh {
                    // The window's rows and columns inside the input (the padding never wins).
                    let y0 = (y * pool.stride).saturating_sub(pool.padding);
                    let y1 = (y * pool.stride + pool.kernel - pool.padding).min(s.h);
                    for xx in 0..ow {
                        let x0 = (xx * pool.stride).saturating_sub(pool.padding);
                        let x1 = (xx * pool.stride + pool.kernel - pool.padding).min(s.w);
                        let mut best = src[y0 * s.w + x0];
                        for row in src[y0 * s.w..y1 * s.w].chunks_exact(s.w) {
                            for &v in &row[x0..x1] {
                                // As PyTorch: a NaN in the window wins.
                                #[allow(clippy::eq_op)]
                                if v > best || v != v {
                                    best = v;
                                }
                            }
                        }
                        dst[y * ow + xx] = best;
                    }
                }
            });
        Ok(out)
    }

    fn upsample_nearest(&mut self, x: &CpuTensor<T>, h: usize, w: usize) -> Result<CpuTensor<T>> {
        let s = x.shape;
        check_upsample(s, h, w)?;
        let mut out = self.alloc("upsample", Shape::new(s.n, s.c, h, w))?;
        if out.data.is_empty() {
            return Ok(out);
        }
        // Each output column's source column, computed once (a division per value otherwise).
        let cols: Vec<usize> = (0..w).map(|xx| nearest(xx, s.w, w)).collect();
        out.data
            .par_chunks_mut(h * w)
            .zip(x.data.par_chunks(s.plane()))
            .for_each(|(dst, src)| upsample_plane(dst, src, s.h, s.w, &cols));
        Ok(out)
    }

    fn upsample_nearest_backward(&mut self, grad_out: &CpuTensor<T>, h: usize, w: usize) -> Result<CpuTensor<T>> {
        let s = grad_out.shape;
        check_upsample_backward(s, h, w)?;
        let mut out = self.alloc("upsample backward", Shape::new(s.n, s.c, h, w))?;
        if out.data.is_empty() {
            return Ok(out);
        }
        out.data
            .par_chunks_mut(h * w)
            .zip(grad_out.data.par_chunks(s.plane()))
            .for_each(|(dst, src)| {
                dst.fill(T::ZERO);
                for y in 0..s.h {
                    for x in 0..s.w {
                        dst[nearest(y, h, s.h) * w + nearest(x, w, s.w)] += src[y * s.w + x];
                    }
                }
            });
        Ok(out)
    }

    fn add(&mut self, a: &CpuTensor<T>, b: &CpuTensor<T>) -> Result<CpuTensor<T>> {
        check_same("add", a.shape, b.shape)?;
        let mut out = self.alloc("add", a.shape)?;
        out.data
            .par_iter_mut()
            .zip(a.data.par_iter().zip(b.data.par_iter()))
            .for_each(|(o, (&x, &y))| *o = x + y);
        Ok(out)
    }

    fn accumulate(&mut self, acc: &mut CpuTensor<T>, x: &CpuTensor<T>) -> Result<()> {
        check_same("accumulate", acc.shape, x.shape)?;
        acc.data
            .par_iter_mut()
            .zip(x.data.par_iter())
            .for_each(|(a, &v)| *a += v);
        Ok(())
    }

    fn permute_head(
        &mut self,
        head: &CpuTensor<T>,
        anchors: usize,
        rows: &mut CpuTensor<T>,
        row_offset: usize,
    ) -> Result<()> {
        let (h, r) = (head.shape, rows.shape);
        let values = check_permute("permute head", h, anchors, r, row_offset)?;
        let (plane, per_cell) = (h.plane(), h.c);
        for b in 0..h.n {
            // Row `pixel * anchors + a` value `c` is channel `a * values + c`: each cell's rows
            // are its `h.c` channels in order, so cells split into disjoint runs of rows.
            let src = &head.data[b * h.c * plane..][..h.c * plane];
            let dst = &mut rows.data[(b * r.h + row_offset) * values..][..plane * per_cell];
            dst.par_chunks_mut(PERMUTE_CELLS * per_cell)
                .enumerate()
                .for_each(|(i, dst)| permute_cells(dst, src, plane, i * PERMUTE_CELLS));
        }
        Ok(())
    }

    fn permute_head_backward(
        &mut self,
        rows: &CpuTensor<T>,
        anchors: usize,
        row_offset: usize,
        head: Shape,
    ) -> Result<CpuTensor<T>> {
        let r = rows.shape;
        let values = check_permute("permute head backward", head, anchors, r, row_offset)?;
        let mut out = self.alloc("permute head backward", head)?;
        let plane = head.plane();
        for b in 0..head.n {
            for a in 0..anchors {
                for c in 0..values {
                    let dst = &mut out.data[((b * head.c) + a * values + c) * plane..][..plane];
                    for (pixel, d) in dst.iter_mut().enumerate() {
                        *d = rows.data[(b * r.h + row_offset + pixel * anchors + a) * values + c];
                    }
                }
            }
        }
        Ok(out)
    }

    fn sgd_step(
        &mut self,
        sgd: &Sgd,
        lr: f32,
        params: &mut [CpuTensor<T>],
        grads: &[CpuTensor<T>],
        velocity: &mut [CpuTensor<T>],
        decay: &[bool],
    ) -> Result<()> {
        sgd.validate()?;
        Sgd::check_lr(lr)?;
        check_sgd(params.len(), grads.len(), velocity.len(), decay.len())?;
        for ((p, g), v) in params.iter().zip(grads).zip(velocity.iter()) {
            check_same("sgd gradient", p.shape, g.shape)?;
            check_same("sgd velocity", p.shape, v.shape)?;
        }
        // The global norm in f64 (tensors in parallel, their sums added in order), then the
        // shader's update in T.
        let sums: Vec<f64> = grads.par_iter().map(|g| sum_squares(&g.data)).collect();
        let norm_sq: f64 = sums.iter().sum();
        let clip = match sgd.max_grad_norm {
            Some(max) => (max / ((norm_sq.sqrt() as f32) + 1e-6)).min(1.0),
            None => 1.0,
        };
        let (clip, lr, momentum) = (T::from_f32(clip), T::from_f32(lr), T::from_f32(sgd.momentum));
        // One parallel loop over the tensors (most are small: a parallel loop each would cost
        // more in scheduling than the update).
        params
            .par_iter_mut()
            .zip(grads.par_iter())
            .zip(velocity.par_iter_mut())
            .enumerate()
            .for_each(|(i, ((p, g), v))| {
                let decay = T::from_f32(if decay.get(i).copied().unwrap_or(true) {
                    sgd.weight_decay
                } else {
                    0.0
                });
                for (w, (vel, &grad)) in p.data.iter_mut().zip(v.data.iter_mut().zip(g.data.iter())) {
                    let gi = grad * clip + decay * *w;
                    *vel = momentum * *vel + gi;
                    *w = *w - lr * *vel;
                }
            });
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        Ok(())
    }

    fn pool_stats(&self) -> PoolStats {
        self.pool.stats()
    }
}

/// The sum of squares of `v` in f64, over eight independent accumulators (a single running
/// sum is a chain of dependent additions, several times slower).
fn sum_squares<T: Real>(v: &[T]) -> f64 {
    let mut acc = [0f64; 8];
    let chunks = v.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            let x = x.to_f64();
            *a += x * x;
        }
    }
    rest.iter()
        .fold(acc.iter().sum::<f64>(), |s, x| s + x.to_f64() * x.to_f64())
}
