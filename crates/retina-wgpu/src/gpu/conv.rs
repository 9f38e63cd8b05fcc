//! The GPU's 2-D convolution (`shaders/conv_gemm.wgsl`, `conv_reduce.wgsl`,
//! `channel_sum.wgsl`): forward, and backward to the input, the weights and the bias, as
//! implicit GEMMs with workgroup-memory tiles, split along K through a scratch buffer and a
//! reduction when K is long or the output is small. The CPU twin is `cpu/conv.rs`.

use crate::error::Result;
use crate::gpu::dispatch::binds;
use crate::gpu::frame::KernelWork;
use crate::gpu::kernels::{Kernel, WG_SIZE};
use crate::gpu::nn::{GpuEngine, GpuTensor, u32_of};
use crate::nn::{Conv2d, ConvGrads, Shape, check_same};

/// Output tile of conv_gemm.wgsl's square shape (BM = BN) and its K step (BK).
const TILE: u64 = 64;
const TILE_K: u64 = 16;
/// The short sides of conv_gemm.wgsl's narrow tiles (64 x 16 and 16 x 64 of 4 x 4 blocks, 64
/// x 32 and 32 x 64 of 8 x 8 blocks), the longest taking products of up to 32 columns (or
/// rows): a 64-wide tile would compute at least twice the product (2-32x for the small
/// pyramid levels' 2-32 pixels, or for layers of 3-32 channels).
const NARROW_TILES: [u64; 2] = [16, 32];

/// Products of at most this many columns and more than 64 rows (a head's output at its 1 x 1
/// level: one column per image) take the 128 x 8 tile (`SHAPE` 6) of 8 x 4 blocks, not the 64 x
/// 16 one of which half or more would be padding.
const NARROWEST: u64 = 8;

/// Products of at most this many rows and more than [`WIDE_COLUMNS`] columns (the input
/// gradient of a first layer over RGB) take the 4 x 128 tile (`SHAPE` 7) of 4 x 4 blocks, not
/// the 16 x 128 one, three quarters of it padding or more.
const FEWEST_ROWS: u64 = 4;

/// Products of more than this many columns take a 128-column tile: 4 x 128 (`SHAPE` 7) over
/// at most [`FEWEST_ROWS`] rows, 16 x 128 (`SHAPE` 5) over at most `NARROW_TILES[0]`, whose 4 x
/// 16 blocks load 5 vec4s per 64 multiply-adds where 4 x 4 ones load 2 per 16, 32 x 128 (`SHAPE`
/// 9) over at most `NARROW_TILES[1]` and 64 x 128 (`SHAPE` 8) over more, 8 x 16 blocks against
/// 8 x 8, these two only where they leave [`MIN_WIDE_WORKGROUPS`] workgroups; on 64 columns or
/// fewer they would compute twice the product.
const WIDE_COLUMNS: u64 = 64;

/// conv_gemm.wgsl's output tiles, indexed by its `SHAPE` override: (rows, columns), and the
/// rows and columns of each invocation's block of them (its `TM` and `TN`).
const SHAPES: [(u64, u64, u64, u64); 10] = [
    (TILE, TILE, 8, 8),
    (TILE, 16, 4, 4),
    (16, TILE, 4, 4),
    (TILE, 32, 8, 8),
    (32, TILE, 8, 8),
    (16, 2 * TILE, 4, 16),
    (2 * TILE, NARROWEST, 8, 4),
    (FEWEST_ROWS, 2 * TILE, 4, 4),
    (TILE, 2 * TILE, 8, 16),
    (32, 2 * TILE, 8, 16),
];

/// The kernels of `kernel`'s product (the forward pass, the input or the weight gradient),
/// indexed by `SHAPE` as in the kernel table.
fn variants(kernel: Kernel) -> [Kernel; 10] {
    use Kernel::*;
    match kernel {
        ConvForward => [
            ConvForward,
            ConvForwardFewColumns,
            ConvForwardFewRows,
            ConvForwardColumns32,
            ConvForwardRows32,
            ConvForwardFewRowsWide,
            ConvForwardTallNarrow,
            ConvForwardFourRows,
            ConvForwardWide,
            ConvForwardRows32Wide,
        ],
        ConvGradInput => [
            ConvGradInput,
            ConvGradInputFewColumns,
            ConvGradInputFewRows,
            ConvGradInputColumns32,
            ConvGradInputRows32,
            ConvGradInputFewRowsWide,
            ConvGradInputTallNarrow,
            ConvGradInputFourRows,
            ConvGradInputWide,
            ConvGradInputRows32Wide,
        ],
        _ => [
            ConvGradWeight,
            ConvGradWeightFewColumns,
            ConvGradWeightFewRows,
            ConvGradWeightColumns32,
            ConvGradWeightRows32,
            ConvGradWeightFewRowsWide,
            ConvGradWeightTallNarrow,
            ConvGradWeightFourRows,
            ConvGradWeightWide,
            ConvGradWeightRows32Wide,
        ],
    }
}

/// The kernel for `kernel`'s product of `m` rows and `n` columns, and its tile's rows and
/// columns: for at most 32 columns (when the rows are more, or as few) the narrowest tile that
/// spans them (128 x 8 over more than 64 rows, 64 x 16 or 64 x 32), else for at most 16 rows
/// over more than [`WIDE_COLUMNS`] columns 4 x 128 (at most 4 rows) or 16 x 128, for at most
/// 16 rows otherwise 16 x 64; for at most 32 rows 32 x 128, else 64 x 128, over more than
/// [`WIDE_COLUMNS`] columns (8 x 16 blocks: 6 vec4 loads per 128 multiply-adds where 8 x 8 ones
/// load 4 per 64) where that leaves at least [`MIN_WIDE_WORKGROUPS`] workgroups (splits of a
/// long K included), and 32 x 64 or 64 x 64 otherwise.
fn tiled(kernel: Kernel, m: u64, n: u64, k: u64) -> (Kernel, u64, u64) {
    let [short, long] = NARROW_TILES;
    // Whether a tile of `rows` x 128 suits the product: wide, and in enough workgroups.
    let wide =
        |rows: u64| n > WIDE_COLUMNS && workgroups(m.div_ceil(rows) * n.div_ceil(2 * TILE), k) >= MIN_WIDE_WORKGROUPS;
    let shape = if n <= long && (m > long || n <= m) {
        if n <= NARROWEST && m > TILE {
            6
        } else if n <= short {
            1
        } else {
            3
        }
    } else if m <= short {
        match (n > WIDE_COLUMNS, m <= FEWEST_ROWS) {
            (true, true) => 7,
            (true, false) => 5,
            _ => 2,
        }
    } else if m <= long {
        if wide(long) { 9 } else { 4 }
    } else if wide(TILE) {
        8
    } else {
        0
    };
    let (rows, columns, _, _) = SHAPES[shape];
    (variants(kernel)[shape], rows, columns)
}

/// Invocations per workgroup of a conv_gemm.wgsl kernel (one per block of its tile), or
/// `None` for another kernel: what its `SHAPE` override must give (`shader.rs` tests it).
#[cfg(test)]
pub(crate) fn gemm_invocations(kernel: Kernel) -> Option<u64> {
    [Kernel::ConvForward, Kernel::ConvGradInput, Kernel::ConvGradWeight]
        .into_iter()
        .find_map(|product| variants(product).iter().position(|&k| k == kernel))
        .map(|shape| {
            let (rows, columns, tm, tn) = SHAPES[shape];
            (rows / tm) * (columns / tn)
        })
}

/// The 128-wide tiles of 8 x 16 blocks (64 x 128, 32 x 128) only where they leave at least this
/// many workgroups: a product in one workgroup runs on one core of a CPU adapter (on lavapipe's
/// two, 64 x 128 x 128 (M x K x N) took 0.4 ms in one 64 x 128 workgroup against 0.3 ms in two
/// 64 x 64 ones, while 64 x 576 x 128, one tile in two splits of K, took 0.8 ms against
/// 1.0-1.1). Tuned on lavapipe: a real GPU may want more.
const MIN_WIDE_WORKGROUPS: u64 = 2;

/// The workgroups of a product of `tiles` output tiles over `k`: the tiles times the splits of
/// K that `conv_gemm` makes for them (before rounding K per split to whole steps).
fn workgroups(tiles: u64, k: u64) -> u64 {
    tiles * splits_of(tiles, k)
}

/// How many ranges `conv_gemm` splits a K of `k` into over `tiles` output tiles: enough to
/// reach [`TARGET_WORKGROUPS`] where each range keeps [`MIN_K_PER_SPLIT`], and enough that none
/// exceeds [`MAX_K_PER_SPLIT`].
fn splits_of(tiles: u64, k: u64) -> u64 {
    let wanted = TARGET_WORKGROUPS.div_ceil(tiles).min(k.div_ceil(MIN_K_PER_SPLIT));
    k.div_ceil(MAX_K_PER_SPLIT).max(wanted).max(1)
}

/// Most of K one conv workgroup walks (per split): bounded loops (see `LOOP_BUDGET` in
/// gpu/kernels.rs) and enough splits to occupy a GPU when the output is a few tiles.
const MAX_K_PER_SPLIT: u64 = 4096;
const MIN_K_PER_SPLIT: u64 = 512;
/// Aim for at least this many conv workgroups, splitting K when the output is small.
const TARGET_WORKGROUPS: u64 = 64;

/// Must stay in sync with `Config` in shaders/conv_gemm.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct ConvConfig {
    pub(crate) batch: u32,
    pub(crate) in_channels: u32,
    pub(crate) out_channels: u32,
    pub(crate) in_h: u32,
    pub(crate) in_w: u32,
    pub(crate) out_h: u32,
    pub(crate) out_w: u32,
    pub(crate) kernel_h: u32,
    pub(crate) kernel_w: u32,
    pub(crate) stride: u32,
    pub(crate) pad: u32,
    pub(crate) m: u32,
    pub(crate) n: u32,
    pub(crate) k: u32,
    pub(crate) k_split: u32,
    pub(crate) splits: u32,
    pub(crate) m_tiles: u32,
    pub(crate) n_tiles: u32,
    pub(crate) flags: u32,
    /// Grad input: the phase, `y % stride | (x % stride) << 16`.
    pub(crate) phase: u32,
}

/// Must stay in sync with `Config` in shaders/conv_reduce.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct ConvReduceConfig {
    pub(crate) total: u32,
    pub(crate) splits: u32,
    pub(crate) channel_stride: u32,
    pub(crate) channels: u32,
    pub(crate) flags: u32,
    /// [`REDUCE_PHASE`]: `ry | rx << 8 | stride << 16`.
    pub(crate) phase: u32,
    /// [`REDUCE_PHASE`]: the phase's `rows | cols << 16`.
    pub(crate) phase_rows_cols: u32,
    /// [`REDUCE_PHASE`]: the input's `in_h | in_w << 16`.
    pub(crate) phase_in_hw: u32,
}

/// conv_reduce.wgsl's flag: the partials are one grad-input phase's pixels, placed on the input.
const REDUCE_PHASE: u32 = 2;

/// A grad-input phase as conv_reduce.wgsl places its sums (the three words of
/// [`ConvReduceConfig`] after `flags`), or `None` when the sizes do not fit its 16-bit fields
/// (or the stride its 8-bit one): such a phase then runs without split-K.
fn reduce_phase(ry: usize, rx: usize, stride: usize, rows: usize, cols: usize, input: Shape) -> Option<[u32; 3]> {
    let small = |v: usize| v < 1 << 16;
    (stride < 1 << 8 && small(rows) && small(cols) && small(input.h) && small(input.w)).then_some([
        (ry | rx << 8 | stride << 16) as u32,
        (rows | cols << 16) as u32,
        (input.h | input.w << 16) as u32,
    ])
}

/// Must stay in sync with `Config` in shaders/channel_sum.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct ChannelSumConfig {
    pub(crate) batch: u32,
    pub(crate) channels: u32,
    pub(crate) plane: u32,
    /// [`ACCUMULATE`]: add to the sums' tensor instead of overwriting it.
    pub(crate) flags: u32,
}

/// conv_gemm.wgsl's, conv_reduce.wgsl's and channel_sum.wgsl's flag: the result is added to
/// what the output holds (`CHANNEL_ACCUMULATE` for channel_sum.wgsl).
const GEMM_ACCUMULATE: u32 = 4;
const CHANNEL_ACCUMULATE: u32 = 1;

impl GpuEngine {
    /// Records a convolution product of conv_gemm.wgsl into `out` (split-K through a scratch
    /// buffer and conv_reduce.wgsl when K is long or the output small). `phase`: a grad-input
    /// phase of a strided convolution, which writes only its own pixels of `out`: its partials
    /// are packed and the reduction places them (`Some(None)`: sizes it cannot describe, so no
    /// split-K). `accumulate`: the product is added to what `out` holds (not with a phase).
    #[allow(clippy::too_many_arguments)]
    fn conv_gemm(
        &mut self,
        kernel: Kernel,
        base: ConvConfig,
        a: &GpuTensor,
        b: &GpuTensor,
        bias: Option<&GpuTensor>,
        out: &GpuTensor,
        channel_stride: usize,
        phase: Option<Option<[u32; 3]>>,
        accumulate: bool,
    ) -> Result<()> {
        debug_assert!(!(accumulate && phase.is_some()), "a grad-input phase never accumulates");
        let add = if accumulate { GEMM_ACCUMULATE } else { 0 };
        let (m, n, k) = (u64::from(base.m), u64::from(base.n), u64::from(base.k));
        debug_assert!(matches!(
            kernel,
            Kernel::ConvForward | Kernel::ConvGradInput | Kernel::ConvGradWeight
        ));
        let (kernel, tile_m, tile_n) = tiled(kernel, m, n, k);
        // The product's multiply-adds, for the context's per-kernel work (whatever the splits).
        let work = KernelWork {
            flops: 2 * m * n * k,
            ..KernelWork::default()
        };
        self.context().count_kernel_work(kernel, work);
        let m_tiles = m.div_ceil(tile_m);
        let n_tiles = n.div_ceil(tile_n);
        let tiles = m_tiles * n_tiles;
        let splits = if phase == Some(None) { 1 } else { splits_of(tiles, k) };
        // (K may be 0: a phase no tap reaches writes zeros.)
        let k_split = (k.div_ceil(splits).div_ceil(TILE_K) * TILE_K).max(TILE_K);
        let splits = k.div_ceil(k_split).max(1);
        let config = ConvConfig {
            k_split: k_split as u32,
            splits: splits as u32,
            m_tiles: m_tiles as u32,
            n_tiles: n_tiles as u32,
            flags: u32::from(bias.is_some()) | if splits > 1 { 2 } else { add },
            ..base
        };
        let spare;
        let bias_binding = match bias {
            Some(b) => b.binding(),
            None => {
                spare = self.alloc("conv2d", Shape::new(1, 1, 1, 1))?;
                spare.binding()
            }
        };
        if splits == 1 {
            return self.run(
                kernel,
                &config,
                binds![
                    a_src = a.binding(),
                    b_src = b.binding(),
                    bias = bias_binding,
                    out = out.binding(),
                ],
                tiles,
            );
        }
        let total = m * n;
        let partial = self.alloc("conv2d", Shape::new(1, 1, splits as usize, total as usize))?;
        self.run(
            kernel,
            &config,
            binds![
                a_src = a.binding(),
                b_src = b.binding(),
                bias = bias_binding.clone(),
                out = partial.binding(),
            ],
            tiles * splits,
        )?;
        let reduce = ConvReduceConfig {
            total: total as u32,
            splits: splits as u32,
            channel_stride: channel_stride as u32,
            channels: base.out_channels,
            flags: u32::from(bias.is_some())
                | if matches!(phase, Some(Some(_))) {
                    REDUCE_PHASE
                } else {
                    add
                },
            phase: phase.flatten().map_or(0, |p| p[0]),
            phase_rows_cols: phase.flatten().map_or(0, |p| p[1]),
            phase_in_hw: phase.flatten().map_or(0, |p| p[2]),
        };
        self.run(
            Kernel::ConvReduce,
            &reduce,
            binds![partial = partial.binding(), bias = bias_binding, out = out.binding(),],
            total.div_ceil(WG_SIZE),
        )
    }

    /// [`Engine::conv2d`]: one implicit GEMM, weights times the input's patches.
    pub(super) fn conv2d_forward(
        &mut self,
        c: &Conv2d,
        x: &GpuTensor,
        weight: &GpuTensor,
        bias: Option<&GpuTensor>,
    ) -> Result<GpuTensor> {
        let out = c.output_shape(x.shape)?;
        check_same("conv2d weights", weight.shape, c.weight_shape())?;
        if let Some(b) = bias {
            check_same("conv2d bias", b.shape, c.bias_shape())?;
            self.check_tensors("conv2d", &[b])?;
        }
        self.check_tensors("conv2d", &[x, weight])?;
        let y = self.alloc("conv2d", out)?;
        if out.is_empty() {
            // A batch of no images: nothing to dispatch.
            return Ok(y);
        }
        let base = ConvConfig {
            m: u32_of("conv2d output channels", out.c)?,
            n: u32_of("conv2d output pixels", out.n * out.plane())?,
            k: u32_of("conv2d fan-in", c.fan_in())?,
            ..conv_base(c, x.shape, out)?
        };
        self.conv_gemm(Kernel::ConvForward, base, weight, x, bias, &y, out.plane(), None, false)?;
        Ok(y)
    }

    /// [`Engine::conv2d_backward`]: the weight gradient (output gradient times the input's
    /// patches), the bias gradient (a sum per channel) and, if asked, the input gradient (the
    /// transposed convolution of the output gradient).
    pub(super) fn conv2d_grads(
        &mut self,
        c: &Conv2d,
        x: &GpuTensor,
        weight: &GpuTensor,
        grad_out: &GpuTensor,
        input_grad: bool,
    ) -> Result<ConvGrads<GpuTensor>> {
        let dw = self.alloc("conv2d backward", c.weight_shape())?;
        let db = self.alloc("conv2d backward", c.bias_shape())?;
        let input = self.conv2d_grads_into(c, x, weight, grad_out, input_grad, &dw, Some(&db), false)?;
        Ok(ConvGrads {
            input,
            weight: dw,
            bias: db,
        })
    }

    /// [`Engine::conv2d_backward_acc`] (`accumulate`) or the writes of
    /// [`Engine::conv2d_backward`]: the weight and bias gradients written into, or added to,
    /// `dw` and `db` by the kernels that compute them (no bias gradient without `db`); returns
    /// the input gradient when asked.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn conv2d_grads_into(
        &mut self,
        c: &Conv2d,
        x: &GpuTensor,
        weight: &GpuTensor,
        grad_out: &GpuTensor,
        input_grad: bool,
        dw: &GpuTensor,
        db: Option<&GpuTensor>,
        accumulate: bool,
    ) -> Result<Option<GpuTensor>> {
        let out = c.output_shape(x.shape)?;
        check_same("conv2d weights", weight.shape, c.weight_shape())?;
        check_same("conv2d output gradient", grad_out.shape, out)?;
        check_same("conv2d weight gradient", dw.shape, c.weight_shape())?;
        self.check_tensors("conv2d backward", &[x, weight, grad_out, dw])?;
        if let Some(db) = db {
            check_same("conv2d bias gradient", db.shape, c.bias_shape())?;
            self.check_tensors("conv2d backward", &[db])?;
        }
        if out.is_empty() {
            // A batch of no images: no gradient flows to the weights or the bias.
            if !accumulate {
                for t in [Some(dw), db].into_iter().flatten() {
                    self.clear(t);
                }
            }
            return input_grad.then(|| self.alloc("conv2d backward", x.shape)).transpose();
        }
        let base = conv_base(c, x.shape, out)?;
        let weight_gemm = ConvConfig {
            m: u32_of("conv2d output channels", out.c)?,
            n: u32_of("conv2d fan-in", c.fan_in())?,
            k: u32_of("conv2d output pixels", out.n * out.plane())?,
            ..base
        };
        self.conv_gemm(
            Kernel::ConvGradWeight,
            weight_gemm,
            grad_out,
            x,
            None,
            dw,
            1,
            None,
            accumulate,
        )?;
        if let Some(db) = db {
            let sums = ChannelSumConfig {
                batch: out.n as u32,
                channels: out.c as u32,
                plane: out.plane() as u32,
                flags: if accumulate { CHANNEL_ACCUMULATE } else { 0 },
            };
            self.run(
                Kernel::ChannelSum,
                &sums,
                binds![input = grad_out.binding(), sums = db.binding(),],
                out.c as u64,
            )?;
        }
        if !input_grad {
            return Ok(None);
        }
        let dx = self.alloc("conv2d backward", x.shape)?;
        // One GEMM per phase (y mod s, x mod s) of the input, over the taps that reach it
        // (see conv_gemm.wgsl); stride 1 has one phase, every tap.
        let s = c.stride;
        let taps = |size: usize, r: usize| {
            let first = (r + c.padding) % s;
            size.saturating_sub(first).div_ceil(s)
        };
        for ry in 0..s.min(x.shape.h) {
            for rx in 0..s.min(x.shape.w) {
                let (rows, cols) = ((x.shape.h - ry).div_ceil(s), (x.shape.w - rx).div_ceil(s));
                let pixels = rows * cols;
                let input_gemm = ConvConfig {
                    m: u32_of("conv2d input channels", x.shape.c)?,
                    n: u32_of("conv2d input pixels", x.shape.n * pixels)?,
                    k: u32_of(
                        "conv2d transposed fan-in",
                        out.c * taps(c.kernel.0, ry) * taps(c.kernel.1, rx),
                    )?,
                    phase: (ry | rx << 16) as u32,
                    ..base
                };
                self.conv_gemm(
                    Kernel::ConvGradInput,
                    input_gemm,
                    weight,
                    grad_out,
                    None,
                    &dx,
                    x.shape.plane(),
                    (s > 1).then(|| reduce_phase(ry, rx, s, rows, cols, x.shape)),
                    false,
                )?;
            }
        }
        Ok(Some(dx))
    }
}

fn conv_base(c: &Conv2d, input: Shape, out: Shape) -> Result<ConvConfig> {
    Ok(ConvConfig {
        batch: u32_of("conv2d batch", input.n)?,
        in_channels: u32_of("conv2d input channels", c.in_channels)?,
        out_channels: u32_of("conv2d output channels", c.out_channels)?,
        in_h: u32_of("conv2d input height", input.h)?,
        in_w: u32_of("conv2d input width", input.w)?,
        out_h: u32_of("conv2d output height", out.h)?,
        out_w: u32_of("conv2d output width", out.w)?,
        kernel_h: u32_of("conv2d kernel height", c.kernel.0)?,
        kernel_w: u32_of("conv2d kernel width", c.kernel.1)?,
        stride: u32_of("conv2d stride", c.stride)?,
        pad: u32_of("conv2d padding", c.padding)?,
        ..Default::default()
    })
}
