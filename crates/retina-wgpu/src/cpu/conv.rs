//! CPU convolution: im2col and a real GEMM (the `gemm` crate), images in parallel with rayon.
//! The CPU twin of `shaders/conv_gemm.wgsl`; generic over f32 and f64 so that gradients can be
//! checked against finite differences in f64.

use std::marker::PhantomData;
use std::ops::{Add, AddAssign, Mul, Sub};

use gemm::Parallelism;
use rayon::prelude::*;

use crate::cpu::nn::{Pool, PooledVec};
use crate::nn::{Conv2d, Shape};

/// The float types the CPU layers run in.
pub trait Real:
    Copy
    + Default
    + Send
    + Sync
    + std::fmt::Debug
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + AddAssign
    + 'static
{
    /// 0.
    const ZERO: Self;
    /// 1.
    const ONE: Self;
    /// From f32.
    fn from_f32(v: f32) -> Self;
    /// From f64 (rounded to nearest in f32).
    fn from_f64(v: f64) -> Self;
    /// To f32.
    fn to_f32(self) -> f32;
    /// To f64.
    fn to_f64(self) -> f64;
    /// The values as f32, where they are (the kernels written for f32 only).
    fn as_f32(values: &[Self]) -> Option<&[f32]>;
    /// The values as f32, where they are.
    fn as_f32_mut(values: &mut [Self]) -> Option<&mut [f32]>;
}

impl Real for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    fn from_f32(v: f32) -> Self {
        v
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn to_f32(self) -> f32 {
        self
    }
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    fn as_f32(values: &[Self]) -> Option<&[f32]> {
        Some(values)
    }
    fn as_f32_mut(values: &mut [Self]) -> Option<&mut [f32]> {
        Some(values)
    }
}

impl Real for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    fn from_f32(v: f32) -> Self {
        f64::from(v)
    }
    fn from_f64(v: f64) -> Self {
        v
    }
    fn to_f32(self) -> f32 {
        self as f32
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn as_f32(_: &[Self]) -> Option<&[f32]> {
        None
    }
    fn as_f32_mut(_: &mut [Self]) -> Option<&mut [f32]> {
        None
    }
}

/// `dst[m x n] (+)= lhs[m x k] * rhs[k x n]`; `dst` has rows of `n` values, `lhs` and `rhs` are
/// given as (values, row stride, column stride). With `accumulate`, adds to `dst`; otherwise
/// overwrites it.
#[allow(clippy::too_many_arguments)]
fn matmul<T: Real>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [T],
    lhs: (&[T], usize, usize),
    rhs: (&[T], usize, usize),
    accumulate: bool,
    parallelism: Parallelism,
) {
    matmul_strided(m, n, k, (dst, n), lhs, rhs, accumulate, parallelism);
}

/// [`matmul`] into a `dst` whose rows are `dst.1` values apart (a block of columns of a wider
/// matrix).
#[allow(clippy::too_many_arguments)]
fn matmul_strided<T: Real>(
    m: usize,
    n: usize,
    k: usize,
    dst: (&mut [T], usize),
    lhs: (&[T], usize, usize),
    rhs: (&[T], usize, usize),
    accumulate: bool,
    parallelism: Parallelism,
) {
    let (dst, dst_rs) = dst;
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for row in 0..m {
                dst[row * dst_rs..row * dst_rs + n].fill(T::ZERO);
            }
        }
        return;
    }
    // The last element each operand's strides reach must lie inside it: the GEMM below reads
    // and writes through raw pointers.
    let reaches = |(v, rs, cs): (&[T], usize, usize), rows: usize, cols: usize| {
        let last = (rows - 1).checked_mul(rs).zip((cols - 1).checked_mul(cs));
        last.and_then(|(r, c)| r.checked_add(c))
            .is_some_and(|last| last < v.len())
    };
    assert!(reaches((&*dst, dst_rs, 1), m, n), "matmul: dst too short");
    assert!(reaches(lhs, m, k), "matmul: lhs too short");
    assert!(reaches(rhs, k, n), "matmul: rhs too short");
    // SAFETY: the asserts above check that every element the three (pointer, row stride,
    // column stride) triples address lies inside its slice (dst: m x n, lhs: m x k, rhs: k x n),
    // and `dst` is a `&mut` borrow, so it overlaps neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.0.as_ptr(),
            lhs.2 as isize,
            lhs.1 as isize,
            rhs.0.as_ptr(),
            rhs.2 as isize,
            rhs.1 as isize,
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Where one kernel tap reads a row: output columns `ox0..ox0 + len` of tap `kx` read input
/// columns `ox * stride - padding + kx`; `lo..hi` (relative to `ox0`) are those that fall inside
/// the input row, the first of them at input column `start`. Computed once per tap for whole
/// rows: small images have rows of a few pixels, where per-row divisions would cost more than
/// the copy.
#[derive(Clone, Copy)]
struct Span {
    lo: usize,
    hi: usize,
    start: usize,
}

impl Span {
    fn new(len: usize, in_w: usize, ox0: usize, stride: usize, padding: usize, kx: usize) -> Span {
        let first = (ox0 * stride + kx) as isize - padding as isize;
        let s = stride as isize;
        // Smallest i with first + i*s >= 0, and smallest i with first + i*s >= in_w.
        let lo = if first >= 0 { 0 } else { ((-first + s - 1) / s) as usize };
        let end = in_w as isize - first;
        let hi = if end <= 0 { 0 } else { ((end + s - 1) / s) as usize };
        let lo = lo.min(len);
        let hi = hi.clamp(lo, len);
        Span {
            lo,
            hi,
            start: (first + lo as isize * s).max(0) as usize,
        }
    }
}

/// `dst[i] = src[(ox0 + i) * stride - padding + kx]`, zero where that is outside the row.
fn gather_row<T: Real>(dst: &mut [T], src: &[T], span: Span, stride: usize) {
    let Span { lo, hi, start } = span;
    dst[..lo].fill(T::ZERO);
    dst[hi..].fill(T::ZERO);
    // A tap may miss the row altogether (a kernel overhanging a small input by more than the
    // padding): then `start` can lie past its end.
    if hi == lo {
        return;
    }
    let dst = &mut dst[lo..hi];
    match stride {
        1 => dst.copy_from_slice(&src[start..start + dst.len()]),
        // Every other pixel: pairs, so that the loop has no stride arithmetic (the backbone's
        // five downsampling convolutions).
        2 => {
            let src = &src[start..];
            let pairs = dst.len().min(src.len() / 2);
            for (d, pair) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = pair[0];
            }
            if pairs < dst.len() {
                dst[pairs] = src[2 * pairs];
            }
        }
        _ => {
            for (d, &v) in dst.iter_mut().zip(src[start..].iter().step_by(stride)) {
                *d = v;
            }
        }
    }
}

/// The adjoint of [`gather_row`]: `dst[(ox0 + i) * stride - padding + kx] += src[i]` where that
/// is inside the row.
fn scatter_row<T: Real>(dst: &mut [T], src: &[T], span: Span, stride: usize) {
    let Span { lo, hi, start } = span;
    if hi == lo {
        return;
    }
    if stride == 1 {
        for (d, &v) in dst[start..start + hi - lo].iter_mut().zip(&src[lo..hi]) {
            *d += v;
        }
    } else {
        for (d, &v) in dst[start..].iter_mut().step_by(stride).zip(&src[lo..hi]) {
            *d += v;
        }
    }
}

/// The im2col columns of one image, written into its band of the batch-wide matrix:
/// `band.row((ci, ky, kx))` holds this image's `(oy, ox)` columns, zero outside the image.
fn im2col<T: Real>(conv: &Conv2d, x: &[T], input: Shape, out: Shape, band: &mut ColumnBand<'_, T>) {
    let (kh, kw) = conv.kernel;
    let (s, p) = (conv.stride as isize, conv.padding as isize);
    for ci in 0..input.c {
        let plane = &x[ci * input.plane()..(ci + 1) * input.plane()];
        for ky in 0..kh {
            for kx in 0..kw {
                let row = band.row((ci * kh + ky) * kw + kx);
                let span = Span::new(out.w, input.w, 0, conv.stride, conv.padding, kx);
                for oy in 0..out.h {
                    let y = oy as isize * s - p + ky as isize;
                    let dst = &mut row[oy * out.w..(oy + 1) * out.w];
                    if y < 0 || y >= input.h as isize {
                        dst.fill(T::ZERO);
                        continue;
                    }
                    let src = &plane[y as usize * input.w..(y as usize + 1) * input.w];
                    gather_row(dst, src, span, conv.stride);
                }
            }
        }
    }
}

/// One band of columns of a row-major matrix: columns `offset..offset + width` of each of its
/// `rows` rows, which are `stride` values apart. The batched im2col matrix gives every image
/// such a band (its output pixels in every row), so images can fill it in parallel although
/// none of them owns a contiguous slice. It borrows its values exclusively, like `&mut [T]`:
/// [`column_bands`] makes disjoint bands from one `&mut` borrow of the matrix.
struct ColumnBand<'a, T> {
    /// The matrix's first value.
    matrix: *mut T,
    rows: usize,
    stride: usize,
    offset: usize,
    width: usize,
    _borrow: PhantomData<&'a mut [T]>,
}

// SAFETY: a band is an exclusive borrow of values no other band or reference reaches while it
// lives (see `column_bands`), so sending it to another thread is sending a `&mut [T]`.
unsafe impl<T: Send> Send for ColumnBand<'_, T> {}

impl<T> ColumnBand<'_, T> {
    /// Row `r` of the band: `width` values.
    fn row(&mut self, r: usize) -> &mut [T] {
        assert!(r < self.rows, "row {r} of a band of {} rows", self.rows);
        // SAFETY: `column_bands` checked `rows * stride <= len` and `offset + width <= stride`,
        // so the row's `width` values lie inside the matrix, within row `r`. No other band
        // reaches them (bands have disjoint column ranges), the matrix is mutably borrowed for
        // `'a`, and `&mut self` keeps this row the band's only live one.
        unsafe { std::slice::from_raw_parts_mut(self.matrix.add(r * self.stride + self.offset), self.width) }
    }
}

/// The rows of an im2col matrix (or of one image's part of it) that [`SameTaps`] fills and
/// reads: a block of rows laid end to end, or an image's band of the batch-wide matrix.
trait Rows<T> {
    /// Row `r`: the columns of one `(ci, ky, kx)` tap.
    fn row(&mut self, r: usize) -> &mut [T];
}

impl<T> Rows<T> for ColumnBand<'_, T> {
    fn row(&mut self, r: usize) -> &mut [T] {
        ColumnBand::row(self, r)
    }
}

/// Rows of `width` values laid end to end.
struct Packed<'a, T> {
    values: &'a mut [T],
    width: usize,
}

impl<T> Rows<T> for Packed<'_, T> {
    fn row(&mut self, r: usize) -> &mut [T] {
        &mut self.values[r * self.width..(r + 1) * self.width]
    }
}

/// Splits a matrix of `rows` rows of `stride` values into `count` bands of `width` columns,
/// band `i` holding columns `i * width..(i + 1) * width` of every row.
fn column_bands<T>(matrix: &mut [T], rows: usize, stride: usize, width: usize, count: usize) -> Vec<ColumnBand<'_, T>> {
    let used = count.checked_mul(width);
    assert!(
        used.is_some_and(|used| used <= stride),
        "{count} bands of {width} columns in rows of {stride}"
    );
    assert!(
        rows.checked_mul(stride).is_some_and(|len| len <= matrix.len()),
        "{rows} rows of {stride} values in a matrix of {}",
        matrix.len()
    );
    let matrix = matrix.as_mut_ptr();
    (0..count)
        .map(|i| ColumnBand {
            matrix,
            rows,
            stride,
            offset: i * width,
            width,
            _borrow: PhantomData,
        })
        .collect()
}

/// Adds one image's columns of an im2col-shaped gradient back onto that image (overwriting
/// `dx`).
fn col2im<T: Real>(
    conv: &Conv2d,
    col: &[T],
    row_stride: usize,
    col_offset: usize,
    input: Shape,
    out: Shape,
    dx: &mut [T],
) {
    let (kh, kw) = conv.kernel;
    let (s, p) = (conv.stride as isize, conv.padding as isize);
    let n = out.plane();
    dx.fill(T::ZERO);
    for ci in 0..input.c {
        let plane = &mut dx[ci * input.plane()..(ci + 1) * input.plane()];
        for ky in 0..kh {
            for kx in 0..kw {
                let row = &col[((ci * kh + ky) * kw + kx) * row_stride + col_offset..][..n];
                let span = Span::new(out.w, input.w, 0, conv.stride, conv.padding, kx);
                for oy in 0..out.h {
                    let y = oy as isize * s - p + ky as isize;
                    if y < 0 || y >= input.h as isize {
                        continue;
                    }
                    let dst = &mut plane[y as usize * input.w..(y as usize + 1) * input.w];
                    scatter_row(dst, &row[oy * out.w..(oy + 1) * out.w], span, conv.stride);
                }
            }
        }
    }
}

/// Convolutions (of the batched path) with fewer multiply-adds than this run on the calling
/// thread alone: handing work to rayon's pool and waking its threads costs tens of microseconds
/// per parallel region on a small VM, more than such a GEMM takes on one core (measured on the
/// small RetinaNet's layers on 2 cores: serial halves the time of the 1x1- and 2x2-pixel head
/// convolutions, and loses from about 4M multiply-adds up).
const SERIAL_MAX_MACS: usize = 1 << 22;

/// Parallelism inside a GEMM: all of rayon's threads, or none for small work.
fn gemm_parallelism(serial: bool) -> Parallelism {
    if serial {
        Parallelism::None
    } else {
        Parallelism::Rayon(rayon::current_num_threads())
    }
}

/// `f(i, chunk)` over `data.chunks_mut(size)`: on rayon's threads, or on this one (`serial`).
fn for_each_chunk<T: Send>(data: &mut [T], size: usize, serial: bool, f: impl Fn(usize, &mut [T]) + Send + Sync) {
    if serial {
        data.chunks_mut(size).enumerate().for_each(|(i, c)| f(i, c));
    } else {
        data.par_chunks_mut(size).enumerate().for_each(|(i, c)| f(i, c));
    }
}

/// The batch's im2col matrix `[K x (B * Ho*Wo)]`, images side by side (images in parallel
/// unless `serial`).
fn batch_columns<'p, T: Real>(
    conv: &Conv2d,
    x: &[T],
    input: Shape,
    out: Shape,
    pool: &'p Pool<T>,
    serial: bool,
) -> PooledVec<'p, T> {
    let (k, n) = (conv.fan_in(), out.plane());
    let bn = input.n * n;
    let mut col = pool.take(k * bn);
    let per_in = input.len() / input.n.max(1);
    let same = SameTaps::new(conv, input, out);
    let split_len = same.as_ref().map_or(0, SameTaps::split_len);
    // One image's polyphase components each (strided convolutions), taken before the loop.
    let mut phases: Vec<_> = (0..input.n).map(|_| pool.take(split_len)).collect();
    let bands = column_bands(&mut col, k, bn, n, input.n);
    let fill = |(b, (mut band, phases)): (usize, (ColumnBand<'_, T>, &mut PooledVec<'_, T>))| {
        let xb = &x[b * per_in..(b + 1) * per_in];
        match &same {
            Some(same) => same.im2col(same.split(xb, phases), 0, n, &mut band),
            None => im2col(conv, xb, input, out, &mut band),
        }
    };
    if serial {
        bands.into_iter().zip(phases.iter_mut()).enumerate().for_each(fill);
    } else {
        bands
            .into_par_iter()
            .zip(phases.par_iter_mut())
            .enumerate()
            .for_each(fill);
    }
    drop(phases);
    col
}

/// Images of at least this many output pixels take per-image GEMMs on cache-sized im2col blocks
/// (when there are enough images for every thread); smaller ones are batched into one GEMM over
/// the whole batch, whose N would otherwise be too small to run the GEMM at full speed
/// (measured on the small RetinaNet's layers: 64 pixels is where the two meet).
const PER_IMAGE_MIN_PIXELS: usize = 64;

/// Whether the convolution reads its input as-is (1x1, stride 1, no padding): no im2col.
fn is_pointwise(conv: &Conv2d) -> bool {
    conv.kernel == (1, 1) && conv.stride == 1 && conv.padding == 0
}

fn per_image(input: Shape, out: Shape) -> bool {
    out.plane() >= PER_IMAGE_MIN_PIXELS && input.n >= rayon::current_num_threads()
}

/// One convolution's operands, shared by its forward and backward passes: the layer, its input
/// and weights, the output shape, and the engine's scratch pool.
pub(crate) struct ConvProblem<'a, T> {
    /// The layer.
    pub conv: &'a Conv2d,
    /// The input, `input` shaped.
    pub x: &'a [T],
    /// The input's shape.
    pub input: Shape,
    /// The weights, `conv.weight_shape()`.
    pub w: &'a [T],
    /// The output's shape.
    pub out: Shape,
    /// Scratch.
    pub pool: &'a Pool<T>,
}

impl<T> Clone for ConvProblem<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for ConvProblem<'_, T> {}

/// Forward pass into `y` (`p.out` shaped), followed by LeakyReLU with slope `leaky` when given, applied as the
/// bias is added (one pass over the output instead of two).
pub(crate) fn forward_leaky<T: Real>(p: &ConvProblem<'_, T>, bias: Option<&[T]>, leaky: Option<T>, y: &mut [T]) {
    let per_image = per_image(p.input, p.out);
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::direct::applies(p, per_image) {
        return crate::cpu::direct::forward(p, bias, leaky, y);
    }
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::pointwise::applies(p, per_image) {
        return crate::cpu::pointwise::forward(p, bias, leaky, y);
    }
    if per_image {
        forward_per_image(p, bias, leaky, y);
    } else {
        forward_batched(p, bias, leaky, y);
    }
}

/// `row[j] = src[s * j]` for as many `j` as both hold (`min(row.len(), ceil(src.len() / s))`,
/// returned); stride 2 runs over pairs, with no stride arithmetic in the loop (the compiler
/// vectorises it; `step_by` stays scalar), an odd last pixel after it.
#[inline(always)]
pub(crate) fn decimate<T: Real>(row: &mut [T], src: &[T], s: usize) -> usize {
    let n = src.len().div_ceil(s).min(row.len());
    if s == 2 {
        let pairs = src.chunks_exact(2);
        let last = pairs.remainder().first().copied();
        let full = pairs.len().min(n);
        for (d, pair) in row[..full].iter_mut().zip(pairs) {
            *d = pair[0];
        }
        if let (Some(v), true) = (last, full < n) {
            row[full] = v;
        }
    } else {
        for (d, &v) in row[..n].iter_mut().zip(src.iter().step_by(s)) {
            *d = v;
        }
    }
    n
}

/// `v` through the epilogue: LeakyReLU with slope `leaky` when given (a NaN stays NaN).
#[inline(always)]
pub(crate) fn epilogue<T: Real>(v: T, leaky: Option<T>) -> T {
    match leaky {
        Some(_) if v > T::ZERO => v,
        Some(slope) => v * slope,
        None => v,
    }
}

/// Stores `acc` (16 values each) into `out` (`16 * acc.len()` values) through the epilogue, for
/// the AVX-512 kernels. LeakyReLU with a slope in (0, 1] is applied in the registers as
/// max(a * slope, a) (`a` where above 0, else `a * slope`, NaN staying NaN: `max_ps` returns
/// its second operand when either is NaN or both are zeros), bit for bit [`epilogue`]'s; other
/// slopes take [`epilogue`] after the store (slope 0 too: there -inf * 0 is NaN, which `max_ps`
/// would turn back into -inf), as does every slope under Miri, which does not implement
/// `max_ps`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) fn store_epilogue_avx512(out: &mut [f32], acc: &[std::arch::x86_64::__m512], leaky: Option<f32>) {
    use std::arch::x86_64::{_mm512_max_ps, _mm512_mul_ps, _mm512_set1_ps, _mm512_storeu_ps};
    let out = &mut out[..16 * acc.len()];
    let in_registers = leaky.filter(|&s| s > 0.0 && s <= 1.0 && !cfg!(miri));
    for (i, &a) in acc.iter().enumerate() {
        let v = match in_registers {
            Some(slope) => _mm512_max_ps(_mm512_mul_ps(a, _mm512_set1_ps(slope)), a),
            None => a,
        };
        // SAFETY: `out` holds 16 values per accumulator (sliced above); this store writes the
        // 16 of accumulator `i`.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(16 * i), v) };
    }
    if leaky.is_some() && in_registers.is_none() {
        for v in out.iter_mut() {
            *v = epilogue(*v, leaky);
        }
    }
}

/// Adds the bias to each output channel's row of `n` values and applies the epilogue.
fn bias_epilogue<T: Real>(y: &mut [T], n: usize, bias: Option<&[T]>, leaky: Option<T>) {
    if bias.is_none() && leaky.is_none() {
        return;
    }
    for (co, row) in y.chunks_mut(n).enumerate() {
        let bc = bias.map_or(T::ZERO, |b| b[co]);
        row.iter_mut().for_each(|v| *v = epilogue(*v + bc, leaky));
    }
}

/// Backward pass: writes `dw` and `db` (overwritten) and `dx` if given.
pub(crate) fn backward<T: Real>(p: &ConvProblem<'_, T>, dy: &[T], dw: &mut [T], db: &mut [T], dx: Option<&mut [T]>) {
    if per_image(p.input, p.out) {
        backward_per_image(p, dy, dw, db, dx);
    } else {
        backward_batched(p, dy, dw, db, dx);
    }
}

/// Forward pass, the whole batch as one GEMM, `[Cout x K] x [K x B*Ho*Wo]`, then the result
/// scattered to NCHW with the bias.
fn forward_batched<T: Real>(p: &ConvProblem<'_, T>, bias: Option<&[T]>, leaky: Option<T>, y: &mut [T]) {
    let ConvProblem {
        conv,
        x,
        input,
        w,
        out,
        pool,
    } = *p;
    let (k, n, cout) = (conv.fan_in(), out.plane(), conv.out_channels);
    let bn = input.n * n;
    let serial = cout * bn * k < SERIAL_MAX_MACS;
    if input.n == 1 && !serial && !is_pointwise(conv) && rayon::current_num_threads() > 1 {
        forward_one_image_split(p, bias, leaky, y);
        return;
    }
    if input.n == 1 {
        // One image: the GEMM's [Cout x H*W] result is already NCHW, and a pointwise layer's
        // input is already its [K x H*W] operand: no im2col copy, no scatter.
        let col;
        let rhs: &[T] = if is_pointwise(conv) {
            x
        } else {
            col = batch_columns(conv, x, input, out, pool, serial);
            &col
        };
        matmul(cout, n, k, y, (w, k, 1), (rhs, n, 1), false, gemm_parallelism(serial));
        if serial {
            bias_epilogue(y, n, bias, leaky);
        } else {
            y.par_chunks_mut(n).enumerate().for_each(|(co, row)| {
                bias_epilogue(row, n, bias.map(|b| &b[co..co + 1]), leaky);
            });
        }
        return;
    }
    let col = batch_columns(conv, x, input, out, pool, serial);
    let mut y_t = pool.take(cout * bn);
    matmul(
        cout,
        bn,
        k,
        &mut y_t,
        (w, k, 1),
        (&col, bn, 1),
        false,
        gemm_parallelism(serial),
    );
    for_each_chunk(y, cout * n, serial, |b, yb| {
        for (co, row) in yb.chunks_mut(n).enumerate() {
            let bc = bias.map_or(T::ZERO, |bias| bias[co]);
            for (v, &t) in row.iter_mut().zip(&y_t[co * bn + b * n..][..n]) {
                *v = epilogue(t + bc, leaky);
            }
        }
    });
}

/// Backward pass, one GEMM over the whole batch for each of the weight and input gradients.
fn backward_batched<T: Real>(p: &ConvProblem<'_, T>, dy: &[T], dw: &mut [T], db: &mut [T], dx: Option<&mut [T]>) {
    let ConvProblem {
        conv,
        x,
        input,
        w,
        out,
        pool,
    } = *p;
    let (k, n, cout) = (conv.fan_in(), out.plane(), conv.out_channels);
    let bn = input.n * n;
    let serial = cout * bn * k < SERIAL_MAX_MACS;
    // dY as [Cout x B*N]: rows per channel, images side by side.
    let mut dy_t = pool.take(cout * bn);
    for_each_chunk(&mut dy_t, bn, serial, |co, row| {
        for b in 0..input.n {
            row[b * n..(b + 1) * n].copy_from_slice(&dy[(b * cout + co) * n..][..n]);
        }
    });
    for_each_chunk(db, 1, serial, |co, d| {
        d[0] = dy_t[co * bn..(co + 1) * bn].iter().fold(T::ZERO, |a, &v| a + v);
    });

    // dW = dY [Cout x BN] x col^T [BN x K].
    let col = batch_columns(conv, x, input, out, pool, serial);
    matmul(
        cout,
        k,
        bn,
        dw,
        (&dy_t, bn, 1),
        (&col, 1, bn),
        false,
        gemm_parallelism(serial),
    );
    drop(col);

    // dX: W^T [K x Cout] x dY [Cout x BN], then col2im per image.
    if let Some(dx) = dx {
        let mut dcol = pool.take(k * bn);
        matmul(
            k,
            bn,
            cout,
            &mut dcol,
            (w, 1, k),
            (&dy_t, bn, 1),
            false,
            gemm_parallelism(serial),
        );
        let per_in = input.len() / input.n.max(1);
        match SameTaps::new(conv, input, out) {
            Some(same) => {
                let split_len = same.split_len();
                // One image's components' gradient each (strided convolutions).
                let mut dphases: Vec<_> = (0..input.n).map(|_| pool.take(split_len)).collect();
                let bands = column_bands(&mut dcol, k, bn, n, input.n);
                let add = |((mut band, dxb), dphases): ((ColumnBand<'_, T>, &mut [T]), &mut PooledVec<'_, T>)| {
                    if split_len == 0 {
                        dxb.fill(T::ZERO);
                        same.col2im(&mut band, 0, n, dxb);
                    } else {
                        dphases.fill(T::ZERO);
                        same.col2im(&mut band, 0, n, dphases);
                        same.merge(dphases, dxb);
                    }
                };
                let images = bands.into_iter().zip(dx.chunks_mut(per_in)).zip(dphases.iter_mut());
                if serial {
                    images.for_each(add);
                } else {
                    images.collect::<Vec<_>>().into_par_iter().for_each(add);
                }
            }
            None => for_each_chunk(dx, per_in, serial, |b, dxb| {
                col2im(conv, &dcol, bn, b * n, input, out, dxb)
            }),
        }
    }
}

/// The im2col rows of one image restricted to output pixels `c0..c1`: `col[(ci, ky, kx)]` rows of
/// `c1 - c0` values. `x` is what `same.split` returned for the image, or the image itself when
/// there is no `same` (the row-by-row path).
#[allow(clippy::too_many_arguments)]
fn im2col_block<T: Real>(
    same: Option<&SameTaps>,
    conv: &Conv2d,
    x: &[T],
    input: Shape,
    out: Shape,
    c0: usize,
    c1: usize,
    col: &mut [T],
) {
    match same {
        Some(same) => same.im2col(
            x,
            c0,
            c1,
            &mut Packed {
                values: col,
                width: c1 - c0,
            },
        ),
        None => im2col_rows(conv, x, input, out, c0, c1, col),
    }
}

/// [`im2col_block`] for any convolution, row by row.
fn im2col_rows<T: Real>(conv: &Conv2d, x: &[T], input: Shape, out: Shape, c0: usize, c1: usize, col: &mut [T]) {
    let (kh, kw) = conv.kernel;
    let (s, p) = (conv.stride as isize, conv.padding as isize);
    let width = c1 - c0;
    for ci in 0..input.c {
        let plane = &x[ci * input.plane()..(ci + 1) * input.plane()];
        for ky in 0..kh {
            for kx in 0..kw {
                let row = &mut col[((ci * kh + ky) * kw + kx) * width..][..width];
                let full = Span::new(out.w, input.w, 0, conv.stride, conv.padding, kx);
                let mut c = c0;
                while c < c1 {
                    let (oy, ox0) = (c / out.w, c % out.w);
                    let ox1 = out.w.min(ox0 + c1 - c);
                    let dst = &mut row[c - c0..c - c0 + ox1 - ox0];
                    let y = oy as isize * s - p + ky as isize;
                    if y < 0 || y >= input.h as isize {
                        dst.fill(T::ZERO);
                    } else {
                        let src = &plane[y as usize * input.w..(y as usize + 1) * input.w];
                        let span = if ox1 - ox0 == out.w {
                            full
                        } else {
                            Span::new(ox1 - ox0, input.w, ox0, conv.stride, conv.padding, kx)
                        };
                        gather_row(dst, src, span, conv.stride);
                    }
                    c += ox1 - ox0;
                }
            }
        }
    }
}

/// Adds an im2col-shaped gradient of output pixels `c0..c1` onto the image (accumulating):
/// onto its polyphase components' gradient when `same` splits it (`same.split_len() > 0`),
/// otherwise onto `dx` itself. `col` is scratch: the shifted-copy path zeroes its entries that
/// fall outside the image before adding.
#[allow(clippy::too_many_arguments)]
fn col2im_block<T: Real>(
    same: Option<&SameTaps>,
    conv: &Conv2d,
    col: &mut [T],
    c0: usize,
    c1: usize,
    input: Shape,
    out: Shape,
    dx: &mut [T],
) {
    match same {
        Some(same) => same.col2im(
            &mut Packed {
                values: col,
                width: c1 - c0,
            },
            c0,
            c1,
            dx,
        ),
        None => col2im_rows(conv, col, c0, c1, input, out, dx),
    }
}

/// [`col2im_block`] for any convolution, row by row.
fn col2im_rows<T: Real>(conv: &Conv2d, col: &[T], c0: usize, c1: usize, input: Shape, out: Shape, dx: &mut [T]) {
    let (kh, kw) = conv.kernel;
    let (s, p) = (conv.stride as isize, conv.padding as isize);
    let width = c1 - c0;
    for ci in 0..input.c {
        let plane = &mut dx[ci * input.plane()..(ci + 1) * input.plane()];
        for ky in 0..kh {
            for kx in 0..kw {
                let row = &col[((ci * kh + ky) * kw + kx) * width..][..width];
                let full = Span::new(out.w, input.w, 0, conv.stride, conv.padding, kx);
                let mut c = c0;
                while c < c1 {
                    let (oy, ox0) = (c / out.w, c % out.w);
                    let ox1 = out.w.min(ox0 + c1 - c);
                    let y = oy as isize * s - p + ky as isize;
                    if y >= 0 && y < input.h as isize {
                        let dst = &mut plane[y as usize * input.w..(y as usize + 1) * input.w];
                        let span = if ox1 - ox0 == out.w {
                            full
                        } else {
                            Span::new(ox1 - ox0, input.w, ox0, conv.stride, conv.padding, kx)
                        };
                        scatter_row(dst, &row[c - c0..c - c0 + ox1 - ox0], span, conv.stride);
                    }
                    c += ox1 - ox0;
                }
            }
        }
    }
}

/// A convolution whose im2col rows are shifted copies of whole planes. For stride 1 with an
/// output of the input's size (3x3 with padding 1, 5x5 with 2, ...), tap `(ky, kx)` of output
/// pixel `q` reads input pixel `q + (ky - p) * W + (kx - p)` in the flattened plane, so each
/// im2col row is one contiguous copy of the plane, shifted, plus zeros where the shift leaves
/// the plane and in the columns per row where it wraps into the neighbouring row. This turns
/// the per-row gathers of the general path (rows of 16-64 pixels here) into one copy per tap.
///
/// A stride-`s` convolution (the backbone's downsampling 3x3s) is the same after splitting the
/// input into its `s * s` polyphase components, planes of the output's size holding pixels
/// `(s * i + a, s * j + b)` (zero past the input's edge): tap `(ky, kx)` reads component
/// `((ky - p) mod s, (kx - p) mod s)` shifted by `(floor((ky - p) / s), floor((kx - p) / s))`.
/// [`SameTaps::split`] makes the components once per image, and [`SameTaps::merge`] turns the
/// components' gradient back into the image's.
struct SameTaps {
    /// Per kernel tap `(ky, kx)`, in im2col row order: the component it reads (`a * s + b`, 0
    /// for stride 1), its flat shift and its column shift. Computed once: the divisions would
    /// otherwise cost more than the copies on small planes.
    offsets: Vec<(usize, isize, isize)>,
    stride: usize,
    channels: usize,
    /// The input's size.
    in_h: usize,
    in_w: usize,
    /// The output's (and each component's) row length and plane size.
    w: usize,
    plane: usize,
}

impl SameTaps {
    fn new(conv: &Conv2d, input: Shape, out: Shape) -> Option<SameTaps> {
        let (kh, kw) = conv.kernel;
        let (p, s) = (conv.padding, conv.stride);
        let fits = if s == 1 {
            out.h == input.h && out.w == input.w && kh == 2 * p + 1 && kw == kh
        } else {
            // Every component pixel past the output's size lies past the input's edge, so a
            // shift out of the component's plane reads a zero there too.
            s >= 2 && s * out.h >= input.h && s * out.w >= input.w && kh == kw
        };
        // The largest column shift: the kernel's reach either side, in components' pixels.
        let reach = p.div_ceil(s).max(kw.saturating_sub(1 + p) / s);
        // A column shift must stay within the neighbouring row.
        if !(fits && reach < out.w) {
            return None;
        }
        let (w, si) = (out.w as isize, s as isize);
        let offsets = (0..kh * kw)
            .map(|t| {
                let (ty, tx) = ((t / kw) as isize - p as isize, (t % kw) as isize - p as isize);
                let (a, b) = (ty.rem_euclid(si) as usize, tx.rem_euclid(si) as usize);
                let (dy, dx) = (ty.div_euclid(si), tx.div_euclid(si));
                (a * s + b, dy * w + dx, dx)
            })
            .collect();
        Some(SameTaps {
            offsets,
            stride: s,
            channels: input.c,
            in_h: input.h,
            in_w: input.w,
            w: out.w,
            plane: out.plane(),
        })
    }

    /// Values of the polyphase components of one image (none for stride 1, which reads the
    /// image itself).
    fn split_len(&self) -> usize {
        if self.stride == 1 {
            0
        } else {
            self.channels * self.stride * self.stride * self.plane
        }
    }

    /// The planes the taps read: the image for stride 1, otherwise its polyphase components,
    /// written into `phases` (`split_len` values).
    fn split<'a, T: Real>(&self, x: &'a [T], phases: &'a mut [T]) -> &'a [T] {
        if self.stride == 1 {
            return x;
        }
        let s = self.stride;
        let (in_plane, w) = (self.in_h * self.in_w, self.w);
        for (ph, dst) in phases[..self.split_len()].chunks_mut(self.plane).enumerate() {
            let (ci, a, b) = (ph / (s * s), (ph / s) % s, ph % s);
            let src = &x[ci * in_plane..(ci + 1) * in_plane];
            for (i, row) in dst.chunks_mut(w).enumerate() {
                let y = s * i + a;
                if y >= self.in_h || b >= self.in_w {
                    row.fill(T::ZERO);
                    continue;
                }
                let n = decimate(row, &src[y * self.in_w + b..(y + 1) * self.in_w], s);
                row[n..].fill(T::ZERO);
            }
        }
        &phases[..self.split_len()]
    }

    /// The adjoint of [`SameTaps::split`] for stride > 1: writes the image's gradient `dx`
    /// (every pixel: each lies in exactly one component) from the components' gradient.
    fn merge<T: Real>(&self, phases: &[T], dx: &mut [T]) {
        let s = self.stride;
        let (in_plane, w) = (self.in_h * self.in_w, self.w);
        for (ph, src) in phases[..self.split_len()].chunks(self.plane).enumerate() {
            let (ci, a, b) = (ph / (s * s), (ph / s) % s, ph % s);
            let dst = &mut dx[ci * in_plane..(ci + 1) * in_plane];
            for (i, row) in src.chunks(w).enumerate() {
                let y = s * i + a;
                if y >= self.in_h || b >= self.in_w {
                    continue;
                }
                let dst_row = &mut dst[y * self.in_w + b..(y + 1) * self.in_w];
                if s == 2 {
                    let mut pairs = dst_row.chunks_exact_mut(2);
                    let full = pairs.len().min(row.len());
                    for (pair, &v) in (&mut pairs).zip(&row[..full]) {
                        pair[0] = v;
                    }
                    if let (Some(d), Some(&v)) = (pairs.into_remainder().first_mut(), row.get(full)) {
                        *d = v;
                    }
                } else {
                    for (d, &v) in dst_row.iter_mut().step_by(s).zip(row) {
                        *d = v;
                    }
                }
            }
        }
    }

    /// The taps in im2col row order: (row, plane read, flat shift, column shift).
    fn taps(&self) -> impl Iterator<Item = (usize, usize, isize, isize)> + '_ {
        let (taps, phases) = (self.offsets.len(), self.stride * self.stride);
        (0..self.channels).flat_map(move |ci| {
            let offsets = self.offsets.iter().enumerate();
            offsets.map(move |(t, &(phase, shift, dx))| (ci * taps + t, ci * phases + phase, shift, dx))
        })
    }

    /// Block positions `lo..hi` of output pixels `c0..c0 + width` whose shifted pixel
    /// `c + shift` lies inside the plane.
    fn inside(&self, c0: usize, width: usize, shift: isize) -> (usize, usize) {
        let lo = (-shift - c0 as isize).clamp(0, width as isize) as usize;
        let hi = (self.plane as isize - shift - c0 as isize).clamp(lo as isize, width as isize) as usize;
        (lo, hi)
    }

    /// The output rows that pixels `c0..c1` touch (computed once per block, not per tap).
    fn rows_of(&self, c0: usize, c1: usize) -> std::ops::Range<usize> {
        if c0 >= c1 {
            return 0..0;
        }
        c0 / self.w..(c1 - 1) / self.w + 1
    }

    /// Calls `f(block position)` for the output pixels of `c0..c1` (in output rows `rows`,
    /// [`SameTaps::rows_of`]) whose column shift `dx` wraps into the neighbouring row.
    fn wrapped(&self, c0: usize, c1: usize, rows: &std::ops::Range<usize>, dx: isize, mut f: impl FnMut(usize)) {
        if dx == 0 || c0 >= c1 {
            return;
        }
        let w = self.w;
        let cols = if dx < 0 { 0..(-dx) as usize } else { w - dx as usize..w };
        for oy in rows.clone() {
            for ox in cols.clone() {
                let c = oy * w + ox;
                if (c0..c1).contains(&c) {
                    f(c - c0);
                }
            }
        }
    }

    /// The im2col rows of output pixels `c0..c1` from `planes`, what [`SameTaps::split`]
    /// returned.
    fn im2col<T: Real>(&self, planes: &[T], c0: usize, c1: usize, col: &mut impl Rows<T>) {
        let (width, rows) = (c1 - c0, self.rows_of(c0, c1));
        for (r, src, shift, dx) in self.taps() {
            let plane = &planes[src * self.plane..(src + 1) * self.plane];
            let row = col.row(r);
            assert_eq!(row.len(), width, "im2col rows of {width} pixels");
            let (lo, hi) = self.inside(c0, width, shift);
            row[..lo].fill(T::ZERO);
            row[hi..].fill(T::ZERO);
            let start = (c0 + lo) as isize + shift;
            if hi > lo {
                row[lo..hi].copy_from_slice(&plane[start as usize..start as usize + hi - lo]);
            }
            self.wrapped(c0, c1, &rows, dx, |i| row[i] = T::ZERO);
        }
    }

    /// Adds the im2col-shaped gradient `col` of output pixels `c0..c1` onto `planes`: the
    /// image's gradient for stride 1, its components' (`split_len` values) otherwise. `col` is
    /// scratch: its entries that fall outside the image are zeroed before adding.
    fn col2im<T: Real>(&self, col: &mut impl Rows<T>, c0: usize, c1: usize, planes: &mut [T]) {
        let (width, rows) = (c1 - c0, self.rows_of(c0, c1));
        for (r, src, shift, dx) in self.taps() {
            let plane = &mut planes[src * self.plane..(src + 1) * self.plane];
            let row = col.row(r);
            assert_eq!(row.len(), width, "im2col rows of {width} pixels");
            self.wrapped(c0, c1, &rows, dx, |i| row[i] = T::ZERO);
            let (lo, hi) = self.inside(c0, width, shift);
            if hi > lo {
                let start = ((c0 + lo) as isize + shift) as usize;
                for (d, &v) in plane[start..start + hi - lo].iter_mut().zip(&row[lo..hi]) {
                    *d += v;
                }
            }
        }
    }
}

/// Values per im2col block (512 KiB of f32): a block stays in cache between being written and
/// being read by the GEMM (the whole im2col matrix of a large image would stream through memory
/// twice), and is wide enough that the GEMM's packing is paid back. Measured on the small
/// RetinaNet's layers on a 2-core Zen 4 (1 MiB L2): 32 Ki values is up to 2x slower on the
/// few-channel layers, 1 Mi values slower again; 128-256 Ki is the plateau.
const BLOCK_VALUES: usize = 128 * 1024;

/// Forward pass of one image split over the threads: each takes a contiguous range of output
/// pixels, builds its im2col in cache-sized blocks (one scratch block per thread) and runs
/// `[Cout x K] x [K x block]` GEMMs into its own `[Cout x range]` result; the results are then
/// copied into the output rows with the bias and the epilogue. (One image's im2col is
/// otherwise built by one thread, and a full-image im2col does not stay in cache.)
fn forward_one_image_split<T: Real>(p: &ConvProblem<'_, T>, bias: Option<&[T]>, leaky: Option<T>, y: &mut [T]) {
    let ConvProblem {
        conv,
        x,
        input,
        w,
        out,
        pool,
    } = *p;
    let (k, n, cout) = (conv.fan_in(), out.plane(), conv.out_channels);
    let threads = rayon::current_num_threads().clamp(1, n);
    let range = n.div_ceil(threads);
    let ranges: Vec<(usize, usize)> = (0..n).step_by(range).map(|r0| (r0, (r0 + range).min(n))).collect();
    let same = SameTaps::new(conv, input, out);
    let mut phases = pool.take(same.as_ref().map_or(0, SameTaps::split_len));
    let planes = match &same {
        Some(same) => same.split(x, &mut phases),
        None => x,
    };
    let nb = block_width(k, range);
    // Scratch taken before the parallel loop: the same number every run.
    let mut scratch: Vec<_> = ranges
        .iter()
        .map(|&(r0, r1)| (pool.take(k * nb), pool.take(cout * (r1 - r0))))
        .collect();
    scratch
        .par_iter_mut()
        .zip(&ranges)
        .for_each(|((col, part), &(r0, r1))| {
            let width = r1 - r0;
            for c0 in (r0..r1).step_by(nb) {
                let c1 = (c0 + nb).min(r1);
                im2col_block(same.as_ref(), conv, planes, input, out, c0, c1, col);
                matmul_strided(
                    cout,
                    c1 - c0,
                    k,
                    (&mut part[c0 - r0..], width),
                    (w, k, 1),
                    (col, c1 - c0, 1),
                    false,
                    Parallelism::None,
                );
            }
        });
    y.par_chunks_mut(n).enumerate().for_each(|(co, row)| {
        let bc = bias.map_or(T::ZERO, |b| b[co]);
        for (&(r0, r1), (_, part)) in ranges.iter().zip(&scratch) {
            let width = r1 - r0;
            for (v, &t) in row[r0..r1].iter_mut().zip(&part[co * width..(co + 1) * width]) {
                *v = epilogue(t + bc, leaky);
            }
        }
    });
}

/// Output pixels per im2col block of `k` rows (see [`BLOCK_VALUES`]), split evenly over the
/// image: 256 pixels of 576 rows take two blocks of 128, not 227 and a slow 29.
fn block_width(k: usize, n: usize) -> usize {
    let widest = (BLOCK_VALUES / k.max(1)).max(32).min(n.max(1));
    n.max(1).div_ceil(n.max(1).div_ceil(widest))
}

/// Forward pass, per image and per block of output pixels: `[Cout x K] x [K x block]` GEMMs
/// on cache-resident im2col blocks, images in parallel.
fn forward_per_image<T: Real>(p: &ConvProblem<'_, T>, bias: Option<&[T]>, leaky: Option<T>, y: &mut [T]) {
    let ConvProblem {
        conv,
        x,
        input,
        w,
        out,
        pool,
    } = *p;
    let (k, n, cout) = (conv.fan_in(), out.plane(), conv.out_channels);
    let nb = block_width(k, n);
    let per_in = input.len() / input.n.max(1);
    let per_out = out.len() / out.n.max(1);
    let images_per_worker = input.n.div_ceil(workers(input.n));
    // Workers take fixed groups of images, each with one scratch block: the same work, scratch
    // and order every run.
    let groups = input.n.div_ceil(images_per_worker);
    let same = SameTaps::new(conv, input, out);
    let split_len = same.as_ref().map_or(0, SameTaps::split_len);
    // Scratch taken before the parallel loop, so that how many exist never depends on how the
    // workers happened to be scheduled.
    let mut cols: Vec<_> = (0..groups).map(|_| (pool.take(k * nb), pool.take(split_len))).collect();
    let work = x
        .par_chunks(per_in * images_per_worker)
        .zip(y.par_chunks_mut(per_out * images_per_worker));
    work.zip(cols.par_iter_mut()).for_each(|((xs, ys), (col, phases))| {
        for (xb, yb) in xs.chunks(per_in).zip(ys.chunks_mut(per_out)) {
            let planes = match &same {
                Some(same) if !is_pointwise(conv) => same.split(xb, phases),
                _ => xb,
            };
            for c0 in (0..n).step_by(nb) {
                let c1 = (c0 + nb).min(n);
                let width = c1 - c0;
                if is_pointwise(conv) {
                    matmul_strided(
                        cout,
                        width,
                        k,
                        (&mut yb[c0..], n),
                        (w, k, 1),
                        (&xb[c0..], n, 1),
                        false,
                        Parallelism::None,
                    );
                } else {
                    im2col_block(same.as_ref(), conv, planes, input, out, c0, c1, col);
                    matmul_strided(
                        cout,
                        width,
                        k,
                        (&mut yb[c0..], n),
                        (w, k, 1),
                        (col, width, 1),
                        false,
                        Parallelism::None,
                    );
                }
            }
            bias_epilogue(yb, n, bias, leaky);
        }
    });
}

/// Parallel workers for `images` images: one group of images per rayon thread.
fn workers(images: usize) -> usize {
    rayon::current_num_threads().clamp(1, images.max(1))
}

/// Backward pass, per image and per block of output pixels (see [`forward_per_image`]); each
/// worker sums its images' weight gradients, then the workers' sums are added.
fn backward_per_image<T: Real>(p: &ConvProblem<'_, T>, dy: &[T], dw: &mut [T], db: &mut [T], dx: Option<&mut [T]>) {
    let ConvProblem {
        conv,
        x,
        input,
        w,
        out,
        pool,
    } = *p;
    let (k, n, cout) = (conv.fan_in(), out.plane(), conv.out_channels);
    let nb = block_width(k, n);
    let per_in = input.len() / input.n.max(1);
    let per_out = out.len() / out.n.max(1);

    db.fill(T::ZERO);
    for dyb in dy.chunks(per_out) {
        for (d, row) in db.iter_mut().zip(dyb.chunks(n)) {
            *d += row.iter().fold(T::ZERO, |a, &v| a + v);
        }
    }

    let images_per_worker = input.n.div_ceil(workers(input.n));
    let mut dx_groups: Vec<Option<&mut [T]>> = match dx {
        Some(dx) => dx.chunks_mut(per_in * images_per_worker).map(Some).collect(),
        None => (0..input.n.div_ceil(images_per_worker)).map(|_| None).collect(),
    };
    // Workers take fixed groups of images, each summing its weight gradient in its own buffer;
    // the buffers are then added in worker order: the same sums, scratch and order every run.
    let groups: Vec<_> = x
        .chunks(per_in * images_per_worker)
        .zip(dy.chunks(per_out * images_per_worker))
        .zip(dx_groups.iter_mut())
        .collect();
    let same = SameTaps::new(conv, input, out);
    let split_len = same.as_ref().map_or(0, SameTaps::split_len);
    // Scratch taken before the parallel loop (see forward_per_image).
    let mut scratch: Vec<_> = (0..groups.len())
        .map(|_| {
            let col = (pool.take(k * nb), pool.take(k * nb));
            (
                zeroed(pool, cout * k),
                col,
                (pool.take(split_len), pool.take(split_len)),
            )
        })
        .collect();
    groups.into_par_iter().zip(scratch.par_iter_mut()).for_each(
        |(((xs, dys), dxs), (acc, (col, dcol), (phases, dphases)))| {
            for (i, (xb, dyb)) in xs.chunks(per_in).zip(dys.chunks(per_out)).enumerate() {
                let mut dxb = dxs.as_deref_mut().map(|d| &mut d[i * per_in..(i + 1) * per_in]);
                // Split into polyphase components (stride > 1): the gradient is summed on the
                // components, then merged into the image's.
                let split = split_len > 0 && !is_pointwise(conv);
                let planes = match &same {
                    Some(same) if split => same.split(xb, phases),
                    _ => xb,
                };
                if let Some(d) = dxb.as_deref_mut() {
                    if split {
                        dphases.fill(T::ZERO);
                    } else {
                        d.fill(T::ZERO);
                    }
                }
                for c0 in (0..n).step_by(nb) {
                    let c1 = (c0 + nb).min(n);
                    let width = c1 - c0;
                    let dy_block = (&dyb[c0..], n, 1);
                    if is_pointwise(conv) {
                        matmul(
                            cout,
                            k,
                            width,
                            acc,
                            dy_block,
                            (&xb[c0..], 1, n),
                            true,
                            Parallelism::None,
                        );
                        if let Some(d) = dxb.as_deref_mut() {
                            matmul_strided(
                                k,
                                width,
                                cout,
                                (&mut d[c0..], n),
                                (w, 1, k),
                                dy_block,
                                false,
                                Parallelism::None,
                            );
                        }
                    } else {
                        im2col_block(same.as_ref(), conv, planes, input, out, c0, c1, col);
                        matmul(cout, k, width, acc, dy_block, (col, 1, width), true, Parallelism::None);
                        if let Some(d) = dxb.as_deref_mut() {
                            matmul(k, width, cout, dcol, (w, 1, k), dy_block, false, Parallelism::None);
                            let target = if split { &mut dphases[..] } else { d };
                            col2im_block(same.as_ref(), conv, dcol, c0, c1, input, out, target);
                        }
                    }
                }
                if let (true, Some(same), Some(d)) = (split, &same, dxb) {
                    same.merge(dphases, d);
                }
            }
        },
    );
    dw.fill(T::ZERO);
    for (sum, _, _) in &scratch {
        dw.iter_mut().zip(sum.iter()).for_each(|(d, &v)| *d += v);
    }
}

/// Zero-filled scratch from the pool.
fn zeroed<T: Real>(pool: &Pool<T>, len: usize) -> PooledVec<'_, T> {
    let mut v = pool.take(len);
    v.fill(T::ZERO);
    v
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The shifted-copy path of "same" convolutions against the row-by-row path, on blocks that
    /// start and end mid-row, for kernels that reach one and two pixels out and rows as narrow
    /// as the shift allows.
    #[test]
    fn same_taps_match_the_row_by_row_path() {
        for (k, p) in [(3, 1), (5, 2)] {
            for (h, w) in [(2, 2), (3, 5), (7, 3), (8, 8), (5, 9)] {
                if p >= w {
                    continue;
                }
                let conv = Conv2d::new(2, 3, k, 1);
                assert_eq!(conv.padding, p);
                let input = Shape::new(1, 2, h, w);
                let out = conv.output_shape(input).unwrap();
                let same = SameTaps::new(&conv, input, out).expect("a same convolution");
                let x: Vec<f64> = (0..input.len()).map(|i| (i as f64 * 0.37).sin()).collect();
                let n = out.plane();
                for (c0, c1) in [(0, n), (1, n - 1), (w - 1, (2 * w + 1).min(n)), (n / 2, n)] {
                    let width = c1 - c0;
                    let rows = conv.fan_in();
                    let mut fast = vec![f64::NAN; rows * width];
                    let mut slow = vec![f64::NAN; rows * width];
                    same.im2col(
                        &x,
                        c0,
                        c1,
                        &mut Packed {
                            values: &mut fast,
                            width,
                        },
                    );
                    im2col_rows(&conv, &x, input, out, c0, c1, &mut slow);
                    assert_eq!(fast, slow, "im2col {k}x{k} on {h}x{w}, pixels {c0}..{c1}");

                    let g: Vec<f64> = (0..rows * width).map(|i| (i as f64 * 0.11).cos()).collect();
                    let (mut dx_fast, mut dx_slow) = (vec![0.5; input.len()], vec![0.5; input.len()]);
                    let mut g_rows = g.clone();
                    same.col2im(
                        &mut Packed {
                            values: &mut g_rows,
                            width,
                        },
                        c0,
                        c1,
                        &mut dx_fast,
                    );
                    col2im_rows(&conv, &g, c0, c1, input, out, &mut dx_slow);
                    assert_eq!(dx_fast, dx_slow, "col2im {k}x{k} on {h}x{w}, pixels {c0}..{c1}");
                }
            }
        }
    }

    /// Two 2-channel 5x5 images through a 3x3 "same" convolution (the shifted-copy path), a
    /// strided one (shifted copies of its polyphase components, on an odd size), an unpadded
    /// one (the row-by-row path) and a 1x1 one (no im2col per image; a shift-0 copy batched):
    /// small enough for Miri (`cargo +nightly miri test --lib cpu::conv::tests::tiny`), which
    /// checks the unsafe code these paths run.
    fn tiny_convolutions() -> [Conv2d; 4] {
        [
            Conv2d::new(2, 3, 3, 1),
            Conv2d::new(2, 3, 3, 2),
            Conv2d {
                padding: 0,
                ..Conv2d::new(2, 3, 3, 1)
            },
            Conv2d::new(2, 3, 1, 1),
        ]
    }

    const TINY_INPUT: Shape = Shape::new(2, 2, 5, 5);

    fn values(len: usize, scale: f64) -> Vec<f64> {
        (0..len).map(|i| (i as f64 * scale).sin()).collect()
    }

    /// `y = conv(x, w) + bias` and its gradients for `dy`, by the definition.
    pub(crate) struct Direct {
        pub(crate) y: Vec<f64>,
        dw: Vec<f64>,
        db: Vec<f64>,
        dx: Vec<f64>,
    }

    /// A kernel's forward pass: the problem, bias, LeakyReLU slope and output.
    #[cfg(target_arch = "x86_64")]
    pub(crate) type KernelForward = fn(&ConvProblem<'_, f32>, Option<&[f32]>, Option<f32>, &mut [f32]);

    /// `forward` (a kernel's forward pass: `cpu::direct`'s, `cpu::pointwise`'s) on each case
    /// against the f64 definition ([`direct`]) followed by LeakyReLU written out, within 1e-4,
    /// without an activation and with slopes 0.1, 0 and 1.5 (the kernels apply some slopes in
    /// registers and others after the store).
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn check_forward(forward: KernelForward, cases: &[(Conv2d, Shape)]) {
        let wide = |v: &[f32]| v.iter().map(|&v| f64::from(v)).collect::<Vec<f64>>();
        for &(c, s) in cases {
            let x: Vec<f32> = (0..s.len()).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.25).collect();
            let w: Vec<f32> = (0..c.weight_shape().len())
                .map(|i| ((i * 5 % 9) as f32 - 4.0) * 0.125)
                .collect();
            let b: Vec<f32> = (0..c.out_channels).map(|i| i as f32 * 0.5 - 0.25).collect();
            let out = c.output_shape(s).unwrap();
            let pool = Pool::new();
            let p = ConvProblem {
                conv: &c,
                x: &x,
                input: s,
                w: &w,
                out,
                pool: &pool,
            };
            let dy = vec![0.0; out.len()];
            let linear = direct(&c, &wide(&x), s, &wide(&w), &wide(&b), &dy).y;
            for leaky in [None, Some(0.1f32), Some(0.0), Some(1.5)] {
                let mut y = vec![f32::NAN; out.len()];
                forward(&p, Some(&b), leaky, &mut y);
                for (i, (&g, &v)) in y.iter().zip(&linear).enumerate() {
                    let r = match leaky {
                        Some(slope) if v <= 0.0 => v * f64::from(slope),
                        _ => v,
                    };
                    assert!((f64::from(g) - r).abs() < 1e-4, "{c:?} {s} {leaky:?} [{i}]: {g} != {r}");
                }
            }
        }
    }

    /// Whether `applies` (a kernel's test of a problem: `cpu::direct`'s, `cpu::pointwise`'s)
    /// takes convolution `c` on input `s` in precision `T`, zero-filled.
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn takes<T: Real>(
        applies: fn(&ConvProblem<'_, T>, bool) -> bool,
        c: Conv2d,
        s: Shape,
        per_image: bool,
    ) -> bool {
        let pool = Pool::<T>::new();
        let (x, w) = (vec![T::ZERO; s.len()], vec![T::ZERO; c.weight_shape().len()]);
        let p = ConvProblem {
            conv: &c,
            x: &x,
            input: s,
            w: &w,
            out: c.output_shape(s).unwrap(),
            pool: &pool,
        };
        applies(&p, per_image)
    }

    // Indexed loops: the definition, written as it reads.
    #[allow(clippy::needless_range_loop)]
    pub(crate) fn direct(conv: &Conv2d, x: &[f64], input: Shape, w: &[f64], bias: &[f64], dy: &[f64]) -> Direct {
        let out = conv.output_shape(input).unwrap();
        let (kh, kw) = conv.kernel;
        let mut d = Direct {
            y: vec![0.0; out.len()],
            dw: vec![0.0; w.len()],
            db: vec![0.0; bias.len()],
            dx: vec![0.0; x.len()],
        };
        for b in 0..input.n {
            for co in 0..out.c {
                for oy in 0..out.h {
                    for ox in 0..out.w {
                        let o = ((b * out.c + co) * out.h + oy) * out.w + ox;
                        d.y[o] = bias[co];
                        d.db[co] += dy[o];
                        for ci in 0..input.c {
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let iy = (oy * conv.stride + ky) as isize - conv.padding as isize;
                                    let ix = (ox * conv.stride + kx) as isize - conv.padding as isize;
                                    if iy < 0 || ix < 0 || iy >= input.h as isize || ix >= input.w as isize {
                                        continue;
                                    }
                                    let i = ((b * input.c + ci) * input.h + iy as usize) * input.w + ix as usize;
                                    let wi = ((co * input.c + ci) * kh + ky) * kw + kx;
                                    d.y[o] += w[wi] * x[i];
                                    d.dw[wi] += dy[o] * x[i];
                                    d.dx[i] += w[wi] * dy[o];
                                }
                            }
                        }
                    }
                }
            }
        }
        d
    }

    fn assert_close(got: &[f64], want: &[f64], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() < 1e-12, "{what}[{i}]: {g} != {w}");
        }
    }

    /// Both the batched and the per-image paths, forward and backward, against [`direct`].
    #[test]
    fn tiny_convolutions_match_the_definition_on_both_paths() {
        let pool = Pool::new();
        let input = TINY_INPUT;
        for conv in tiny_convolutions() {
            let out = conv.output_shape(input).unwrap();
            let x = values(input.len(), 0.37);
            let w = values(conv.out_channels * conv.fan_in(), 0.53);
            let bias = values(conv.out_channels, 1.7);
            let dy = values(out.len(), 0.29);
            let want = direct(&conv, &x, input, &w, &bias, &dy);
            let p = ConvProblem {
                conv: &conv,
                x: &x,
                input,
                w: &w,
                out,
                pool: &pool,
            };
            type Forward = fn(&ConvProblem<'_, f64>, Option<&[f64]>, Option<f64>, &mut [f64]);
            type Backward = fn(&ConvProblem<'_, f64>, &[f64], &mut [f64], &mut [f64], Option<&mut [f64]>);
            let paths: [(&str, Forward, Backward); 2] = [
                ("batched", forward_batched, backward_batched),
                ("per image", forward_per_image, backward_per_image),
            ];
            for (path, forward, backward) in paths {
                let what = |t: &str| format!("{t} of {conv:?}, {path}");
                let mut y = vec![f64::NAN; out.len()];
                forward(&p, Some(&bias), None, &mut y);
                assert_close(&y, &want.y, &what("y"));
                let (mut dw, mut db, mut dx) = (
                    vec![f64::NAN; w.len()],
                    vec![f64::NAN; bias.len()],
                    vec![f64::NAN; x.len()],
                );
                backward(&p, &dy, &mut dw, &mut db, Some(&mut dx));
                assert_close(&dw, &want.dw, &what("dw"));
                assert_close(&db, &want.db, &what("db"));
                assert_close(&dx, &want.dx, &what("dx"));
            }
        }
    }

    /// The batch's im2col matrix, images filling their column bands on two threads at once and
    /// on this one, against columns gathered by the definition.
    #[test]
    fn tiny_batch_columns_in_parallel_match_the_definition() {
        let pool = Pool::new();
        let threads = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let input = TINY_INPUT;
        for conv in tiny_convolutions() {
            let out = conv.output_shape(input).unwrap();
            let x = values(input.len(), 0.37);
            let (k, n) = (conv.fan_in(), out.plane());
            let bn = input.n * n;
            let (kh, kw) = conv.kernel;
            let mut want = vec![0.0; k * bn];
            for b in 0..input.n {
                for (r, row) in want.chunks_mut(bn).enumerate() {
                    let (ci, ky, kx) = (r / (kh * kw), (r / kw) % kh, r % kw);
                    for q in 0..n {
                        let iy = ((q / out.w) * conv.stride + ky) as isize - conv.padding as isize;
                        let ix = ((q % out.w) * conv.stride + kx) as isize - conv.padding as isize;
                        if iy >= 0 && ix >= 0 && iy < input.h as isize && ix < input.w as isize {
                            row[b * n + q] = x[((b * input.c + ci) * input.h + iy as usize) * input.w + ix as usize];
                        }
                    }
                }
            }
            for serial in [false, true] {
                let mut col = threads.install(|| batch_columns(&conv, &x, input, out, &pool, serial));
                assert_eq!(&col[..], &want[..], "{conv:?}, serial: {serial}");
                // Poison the scratch for the next take.
                col.fill(f64::NAN);
            }
        }
    }

    /// The polyphase path of strided convolutions against the row-by-row path, on even and odd
    /// sizes and blocks that start and end mid-row.
    #[test]
    fn strided_taps_match_the_row_by_row_path() {
        let convs = [
            Conv2d::new(2, 3, 3, 2),
            Conv2d::new(2, 3, 1, 2),
            Conv2d::new(2, 3, 5, 2),
            Conv2d::new(2, 3, 3, 3),
            Conv2d {
                padding: 0,
                ..Conv2d::new(2, 3, 3, 2)
            },
        ];
        let mut checked = 0;
        for conv in convs {
            for (h, w) in [(4, 4), (5, 5), (7, 4), (8, 8), (6, 9), (16, 11)] {
                let input = Shape::new(1, 2, h, w);
                let Some(out) = conv.output_shape(input).ok() else {
                    continue;
                };
                let Some(same) = SameTaps::new(&conv, input, out) else {
                    continue;
                };
                let x: Vec<f64> = (0..input.len()).map(|i| (i as f64 * 0.37).sin()).collect();
                let mut phases = vec![f64::NAN; same.split_len()];
                let planes = same.split(&x, &mut phases).to_vec();
                let n = out.plane();
                for (c0, c1) in [(0, n), (1, n - 1), (out.w - 1, (2 * out.w + 1).min(n)), (n / 2, n)] {
                    if c0 >= c1 {
                        continue;
                    }
                    let what = format!("{conv:?} on {h}x{w}, pixels {c0}..{c1}");
                    let width = c1 - c0;
                    let rows = conv.fan_in();
                    let mut fast = vec![f64::NAN; rows * width];
                    let mut slow = vec![f64::NAN; rows * width];
                    same.im2col(
                        &planes,
                        c0,
                        c1,
                        &mut Packed {
                            values: &mut fast,
                            width,
                        },
                    );
                    im2col_rows(&conv, &x, input, out, c0, c1, &mut slow);
                    assert_eq!(fast, slow, "im2col {what}");

                    let g: Vec<f64> = (0..rows * width).map(|i| (i as f64 * 0.11).cos()).collect();
                    let mut dphases = vec![0.0; same.split_len()];
                    let (mut dx_fast, mut dx_slow) = (vec![f64::NAN; input.len()], vec![0.0; input.len()]);
                    let mut g_rows = g.clone();
                    same.col2im(
                        &mut Packed {
                            values: &mut g_rows,
                            width,
                        },
                        c0,
                        c1,
                        &mut dphases,
                    );
                    same.merge(&dphases, &mut dx_fast);
                    col2im_rows(&conv, &g, c0, c1, input, out, &mut dx_slow);
                    assert_eq!(dx_fast, dx_slow, "col2im {what}");
                    checked += 1;
                }
            }
        }
        // Every convolution but the unpadded one (whose output is too small to split into)
        // on every size.
        assert_eq!(checked, 4 * 6 * 4, "blocks checked");
    }

    #[test]
    fn same_taps_leave_other_convolutions_to_the_general_path() {
        let input = Shape::new(1, 2, 8, 8);
        for conv in [
            Conv2d {
                padding: 0,
                ..Conv2d::new(2, 3, 3, 1)
            },
            Conv2d {
                kernel: (1, 3),
                ..Conv2d::new(2, 3, 3, 1)
            },
        ] {
            let out = conv.output_shape(input).unwrap();
            assert!(SameTaps::new(&conv, input, out).is_none(), "{conv:?}");
        }
        let tiny = Shape::new(1, 2, 1, 1);
        let conv = Conv2d::new(2, 3, 3, 1);
        assert!(SameTaps::new(&conv, tiny, conv.output_shape(tiny).unwrap()).is_none());
        // Stride 2 onto a 1-pixel-wide output: a column shift would wrap past the next row.
        let small = Shape::new(1, 2, 2, 2);
        let conv = Conv2d::new(2, 3, 3, 2);
        assert!(SameTaps::new(&conv, small, conv.output_shape(small).unwrap()).is_none());
    }
}
