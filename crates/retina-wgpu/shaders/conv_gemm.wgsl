// 2-D convolution as an implicit GEMM, one kernel for the three products of training:
//   forward      Y[co, (b,oy,ox)]    = sum over (ci,ky,kx) of W[co, ci,ky,kx] * X[b, ci, oy*s-p+ky, ox*s-p+kx]
//   grad input   dX[ci, (b,y,x)]     = sum over (co,ky,kx) of W[co, ci,ky,kx] * dY[b, co, (y+p-ky)/s, (x+p-kx)/s]
//                                      (only where the division is exact and in range: no scatter, no atomics)
//                one dispatch per phase (y mod s, x mod s) of the input: only the taps
//                ky = (y + p) mod s + j s (likewise kx) divide exactly, so each phase is a dense
//                GEMM over its own taps (K = Cout * ceil(kh / s) * ceil(kw / s) at most) instead
//                of one over every tap, s^2 - 1 of s^2 of them zero (a stride-2 3x3 layer: 4x
//                less work)
//   grad weight  dW[co, (ci,ky,kx)]  = sum over (b,oy,ox) of dY[b, co, oy,ox] * X[b, ci, oy*s-p+ky, ox*s-p+kx]
// The im2col matrix is never stored: tiles of it are gathered straight from NCHW tensors.
//
// Tiling: a workgroup computes a BM x BN tile of the output, each invocation a TM x TN block in
// registers (8 x 8 in the 64 x 64 tile, as four 4 x 4 quarters 4 GM rows and 4 GN columns
// apart; 8 x 16 in the 64 x 128 and 32 x 128 tiles, eight quarters); the K dimension advances
// BK at a time through two workgroup-memory tiles (A: BK x BM, B: BK x BN, sized by the shape's
// overrides: with the index table below 12.25 KiB for 64 x 128, 8.25 KiB for 64 x 64, 10.25 KiB
// for 32 x 128, 9.25 KiB for 16 x 128, 8.75 KiB for 128 x 8 and 8.5 KiB for 4 x 128, of
// WebGPU's guaranteed 16 KiB; 5.25-6.25 KiB for the 16- and 32-wide tiles, which leaves a real
// GPU room for more workgroups at once). Both tiles hold vec4s of 4 consecutive rows (A) or
// columns (B): per k an invocation loads TM / 4 + TN / 4 vec4s for TM TN multiply-adds (4 loads
// for 64; 6 for 128, so products of more than 32 rows over more than 64 columns in at least two
// workgroups take the 64 x 128 tile, 1.37x faster than 64 x 64 on lavapipe at 720 x 576 x
// 2048), and neighbouring invocations load neighbouring vec4s. Each invocation stages whole
// vec4s (4 gathers, one store), always the same rows of A and columns of B, so it keeps its
// columns' index terms in registers. The accumulators and index terms are indexed by literals
// only, never by a loop counter, so that no driver keeps them in memory. The count of loads
// matters most on CPU adapters (llvmpipe, SwiftShader), where each load at an address that
// varies by invocation is a loop over the vector's lanes: against the previous layout (4 x 4
// scalars per invocation, 256 invocations, 8 scalar loads per 16 multiply-adds, accumulators in
// a loop-indexed array) the small RetinaNet's convolutions run 2.4x faster on lavapipe
// (docs/PERFORMANCE.md). All shapes need nothing beyond the default limits. Products with few
// columns (N <= 32: the small pyramid levels' pixels, the first layer's 27 weight columns) take
// 64 x 16 or 64 x 32 tiles (128 x 8 of 8 x 4 blocks for N <= 8 over more than 64 rows: a head
// at its 1 x 1 level), and products with few rows (M <= 32: layers of 3-32 channels) 16 x 64 or
// 32 x 64 tiles: a 64-wide tile over 2-32 columns or rows computed 2-32x the product, most of
// it on padding. Products of at most 16 rows and more than 64 columns (the first layers'
// thousands of pixels) take 16 x 128 tiles of 4 x 16 blocks: 5 vec4 loads per 64 multiply-adds,
// where 4 x 4 blocks load 2 per 16; those of at most 4 rows (a first layer's input gradient
// over RGB) 4 x 128 tiles, and those of 17-32 rows 32 x 128 tiles of 8 x 16 blocks.
// Split-K: workgroups with different `split`
// cover different K ranges and write partial outputs that conv_reduce.wgsl adds (grad weight
// sums over the whole batch, so its K is large); without splits the output is written directly,
// with the bias in the forward pass. src/cpu/conv.rs computes the same with im2col and GEMM.

// Which product; a pipeline-overridable constant, so each mode compiles to its own pipeline
// with the other two branches folded away.
override MODE: u32 = 0u;
// The output tile: 0 = 64 x 64 (8 x 8 per invocation, 64 invocations), 1 = 64 x 16 and 2 =
// 16 x 64 (4 x 4, 64), 3 = 64 x 32 and 4 = 32 x 64 (8 x 8, 32), 5 = 16 x 128 (4 x 16, 32),
// 6 = 128 x 8 (8 x 4, 32), 7 = 4 x 128 (4 x 4, 32), 8 = 64 x 128 (8 x 16, 64), 9 = 32 x 128
// (8 x 16, 32); src/gpu/conv.rs picks 6, 1 or 3 for N <= 8 (and M > 64), 16 or 32 (when M is
// larger, or equal), else 7 or 5 for M <= 4 or 16 and N > 64, 2 for M <= 16, 9 or 4 for M <=
// 32 (N > 64 or not), else 8 or 0 (likewise); the 128-wide tiles of 8 x 16 blocks only where
// they leave at least two workgroups.
override SHAPE: u32 = 0u;

const BK: u32 = 16u;
// Per SHAPE (the same table as `SHAPES` in src/gpu/conv.rs): the tile's rows and columns, and
// an invocation's (8 or 4 rows, 16, 8 or 4 columns).
const SHAPE_BM = array(64u, 64u, 16u, 64u, 32u, 16u, 128u, 4u, 64u, 32u);
const SHAPE_BN = array(64u, 16u, 64u, 32u, 64u, 128u, 8u, 128u, 128u, 128u);
const SHAPE_TM = array(8u, 4u, 4u, 8u, 8u, 4u, 8u, 4u, 8u, 8u);
const SHAPE_TN = array(8u, 4u, 4u, 8u, 8u, 16u, 4u, 4u, 16u, 16u);
override BM: u32 = SHAPE_BM[SHAPE];
override BN: u32 = SHAPE_BN[SHAPE];
override TM: u32 = SHAPE_TM[SHAPE];
override TN: u32 = SHAPE_TN[SHAPE];
// The invocations' grid (GM x GN = WG).
override GM: u32 = BM / TM;
override GN: u32 = BN / TN;
override WG: u32 = GM * GN;

// Must stay in sync with `ConvConfig` in src/gpu/conv.rs.
struct Config {
    batch: u32,
    in_channels: u32,
    out_channels: u32,
    in_h: u32,
    in_w: u32,
    out_h: u32,
    out_w: u32,
    kernel_h: u32,
    kernel_w: u32,
    stride: u32,
    pad: u32,
    m: u32,
    n: u32,
    k: u32,
    // K per split, a multiple of BK.
    k_split: u32,
    splits: u32,
    m_tiles: u32,
    n_tiles: u32,
    flags: u32,
    // grad input: the phase, y mod stride | (x mod stride) << 16.
    phase: u32,
}

const MODE_FORWARD: u32 = 0u;
const MODE_GRAD_INPUT: u32 = 1u;
const MODE_GRAD_WEIGHT: u32 = 2u;
const FLAG_BIAS: u32 = 1u;
const FLAG_PARTIAL: u32 = 2u;
// Without FLAG_PARTIAL: add the product to what `out` holds (a layer used several times sums
// its weight gradients in place).
const FLAG_ACCUMULATE: u32 = 4u;

@group(0) @binding(0) var<uniform> cfg: Config;
// forward, grad input: weights; grad weight: dY.
@group(0) @binding(1) var<storage, read> a_src: array<f32>;
// forward, grad weight: X; grad input: dY.
@group(0) @binding(2) var<storage, read> b_src: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

// The grad-input phase's geometry, derived once per invocation from `cfg` (see `phase_of`).
struct Phase {
    // Its input pixels: (ry + yy stride, rx + xx stride) for yy < rows, xx < cols.
    ry: u32,
    rx: u32,
    rows: u32,
    cols: u32,
    // Its taps: (ky0 + j stride, kx0 + i stride) for j < taps_h, i < taps_w.
    ky0: u32,
    kx0: u32,
    taps_h: u32,
    taps_w: u32,
    // Input pixel (yy, xx) and tap (j, i) read dY at (yy + dy - j, xx + dx - i).
    dy: u32,
    dx: u32,
}

var<private> ph: Phase;

fn phase_of() -> Phase {
    let s = cfg.stride;
    var p: Phase;
    p.ry = cfg.phase & 0xffffu;
    p.rx = cfg.phase >> 16u;
    p.rows = (cfg.in_h - p.ry + s - 1u) / s;
    p.cols = (cfg.in_w - p.rx + s - 1u) / s;
    p.ky0 = (p.ry + cfg.pad) % s;
    p.kx0 = (p.rx + cfg.pad) % s;
    p.taps_h = select(0u, (cfg.kernel_h - p.ky0 + s - 1u) / s, cfg.kernel_h > p.ky0);
    p.taps_w = select(0u, (cfg.kernel_w - p.kx0 + s - 1u) / s, cfg.kernel_w > p.kx0);
    p.dy = (p.ry + cfg.pad - p.ky0) / s;
    p.dx = (p.rx + cfg.pad - p.kx0) / s;
    return p;
}

// The terms of row k of the right matrix (column k of the left one), for k < cfg.k.
fn k_terms(k: u32) -> vec4<u32> {
    let khw = cfg.kernel_h * cfg.kernel_w;
    switch MODE {
        case MODE_FORWARD: {
            // k = (ci, ky, kx): (offset of channel ci in an image of X, ky, kx, k).
            let ci = k / khw;
            let r = k % khw;
            return vec4(ci * cfg.in_h * cfg.in_w, r / cfg.kernel_w, r % cfg.kernel_w, k);
        }
        case MODE_GRAD_INPUT: {
            // k = (co, j, i), tap (ky0 + j s, kx0 + i s) of the phase: (offset of channel co in
            // an image of dY, j, i, offset of W[co, 0, ky, kx]).
            let taps = ph.taps_h * ph.taps_w;
            let co = k / taps;
            let r = k % taps;
            let j = r / ph.taps_w;
            let i = r % ph.taps_w;
            let ky = ph.ky0 + j * cfg.stride;
            let kx = ph.kx0 + i * cfg.stride;
            return vec4(co * cfg.out_h * cfg.out_w, j, i, (co * cfg.in_channels * cfg.kernel_h + ky) * cfg.kernel_w + kx);
        }
        default: {
            // k = (b, oy, ox): (offset of dY[b, 0, oy, ox], offset of image b of X,
            // oy s - p, ox s - p), the last two wrapping below zero (see `input_at`).
            let hw = cfg.out_h * cfg.out_w;
            let b = k / hw;
            let p = k % hw;
            return vec4(
                b * cfg.out_channels * hw + p,
                b * cfg.in_channels * cfg.in_h * cfg.in_w,
                (p / cfg.out_w) * cfg.stride - cfg.pad,
                (p % cfg.out_w) * cfg.stride - cfg.pad,
            );
        }
    }
}

// The terms of column n of the right matrix, for n < cfg.n.
fn n_terms(n: u32) -> vec4<u32> {
    switch MODE {
        case MODE_FORWARD: {
            // n = (b, oy, ox): (offset of image b of X, oy s - p, ox s - p, 0).
            let hw = cfg.out_h * cfg.out_w;
            let b = n / hw;
            let p = n % hw;
            return vec4(
                b * cfg.in_channels * cfg.in_h * cfg.in_w,
                (p / cfg.out_w) * cfg.stride - cfg.pad,
                (p % cfg.out_w) * cfg.stride - cfg.pad,
                0u,
            );
        }
        case MODE_GRAD_INPUT: {
            // n = (b, yy, xx): input pixel (ry + yy s, rx + xx s), which tap (j, i) reads
            // from dY at (ty - j, tx - i): (offset of image b of dY, ty, tx, 0).
            let hw = ph.rows * ph.cols;
            let b = n / hw;
            let p = n % hw;
            return vec4(b * cfg.out_channels * cfg.out_h * cfg.out_w, p / ph.cols + ph.dy, p % ph.cols + ph.dx, 0u);
        }
        default: {
            // n = (ci, ky, kx): (offset of channel ci in an image of X, ky, kx, 0).
            let khw = cfg.kernel_h * cfg.kernel_w;
            let r = n % khw;
            return vec4((n / khw) * cfg.in_h * cfg.in_w, r / cfg.kernel_w, r % cfg.kernel_w, 0u);
        }
    }
}

// Element (m, k) of the left matrix, k's terms `kt`; m < cfg.m and k < cfg.k.
fn load_a(m: u32, kt: vec4<u32>) -> f32 {
    switch MODE {
        case MODE_FORWARD: {
            // W[m = co, k].
            return a_src[m * cfg.k + kt.w];
        }
        case MODE_GRAD_INPUT: {
            // W[co, m = ci, ky, kx].
            return a_src[kt.w + m * cfg.kernel_h * cfg.kernel_w];
        }
        default: {
            // dY[b, m = co, oy, ox].
            return a_src[kt.x + m * cfg.out_h * cfg.out_w];
        }
    }
}

// X at row y, column x of the image and channel at `offset`, zero outside the image (y and x
// "below zero" have wrapped to large u32 values).
fn input_at(offset: u32, y: u32, x: u32) -> f32 {
    if y >= cfg.in_h || x >= cfg.in_w {
        return 0.0;
    }
    return b_src[offset + y * cfg.in_w + x];
}

// Element (k, n) of the right matrix from their terms; k < cfg.k and n < cfg.n.
fn load_b(kt: vec4<u32>, nt: vec4<u32>) -> f32 {
    switch MODE {
        case MODE_FORWARD: {
            // X[b, ci, oy s - p + ky, ox s - p + kx].
            return input_at(nt.x + kt.x, nt.y + kt.y, nt.z + kt.z);
        }
        case MODE_GRAD_INPUT: {
            // dY[b, co, ty - j, tx - i], zero where that is outside dY (or "below zero").
            let oy = nt.y - kt.y;
            let ox = nt.z - kt.z;
            if oy >= cfg.out_h || ox >= cfg.out_w {
                return 0.0;
            }
            return b_src[nt.x + kt.x + oy * cfg.out_w + ox];
        }
        default: {
            // X[b, ci, oy s - p + ky, ox s - p + kx].
            return input_at(kt.y + nt.x, kt.z + nt.y, kt.w + nt.z);
        }
    }
}

// Where column n of the output lives: element (m, n) is at `x + m * row_strides().x` in its
// NCHW (or row-major weight) tensor, and split `split`'s partial of it at `split * M * N + y +
// m * row_strides().y` (the same place, but a grad-input phase's pixels packed as (b, ci, yy,
// xx), which conv_reduce.wgsl places). An invocation computes this once per column of its
// block, not per element: the divisions by the plane's size are the epilogue's costliest part.
fn column_base(n: u32) -> vec2<u32> {
    switch MODE {
        case MODE_FORWARD: {
            let hw = cfg.out_h * cfg.out_w;
            let o = (n / hw) * cfg.out_channels * hw + n % hw;
            return vec2(o, o);
        }
        case MODE_GRAD_INPUT: {
            // n = (b, yy, xx) of the phase: input pixel (ry + yy s, rx + xx s).
            let hw = ph.rows * ph.cols;
            let b = n / hw;
            let p = n % hw;
            let y = ph.ry + (p / ph.cols) * cfg.stride;
            let x = ph.rx + (p % ph.cols) * cfg.stride;
            return vec2((b * cfg.in_channels * cfg.in_h + y) * cfg.in_w + x, b * cfg.in_channels * hw + p);
        }
        default: {
            return vec2(n, n);
        }
    }
}

// The distance between rows m and m + 1 of a column (see `column_base`): in the output, and in
// a split's partials.
fn row_strides() -> vec2<u32> {
    switch MODE {
        case MODE_FORWARD: {
            let hw = cfg.out_h * cfg.out_w;
            return vec2(hw, hw);
        }
        case MODE_GRAD_INPUT: {
            return vec2(cfg.in_h * cfg.in_w, ph.rows * ph.cols);
        }
        default: {
            return vec2(cfg.n, cfg.n);
        }
    }
}

// Writes output element (m, n) at `at` (its places from `column_base` and `row_strides`),
// `value` being its sum over split `split`'s K range (m < cfg.m, n < cfg.n): with FLAG_PARTIAL
// the split's partial, which conv_reduce.wgsl adds up; else the value plus the bias
// (FLAG_BIAS), added to what `out` holds with FLAG_ACCUMULATE.
fn store_output(m: u32, at: vec2<u32>, split: u32, value: f32) {
    if (cfg.flags & FLAG_PARTIAL) != 0u {
        out[split * cfg.m * cfg.n + at.y] = value;
        return;
    }
    var v = value;
    if (cfg.flags & FLAG_BIAS) != 0u {
        v = v + bias[m];
    }
    if (cfg.flags & FLAG_ACCUMULATE) != 0u {
        v = out[at.x] + v;
    }
    out[at.x] = v;
}

// Output elements (m, n .. n + 3) = `v`, those inside the product; `c0` .. `c3` are the four
// columns' `column_base`, `strides` the `row_strides`.
fn store4(m: u32, n: u32, split: u32, v: vec4<f32>, c0: vec2<u32>, c1: vec2<u32>, c2: vec2<u32>, c3: vec2<u32>, strides: vec2<u32>) {
    if m >= cfg.m {
        return;
    }
    let row = m * strides;
    if n < cfg.n {
        store_output(m, c0 + row, split, v.x);
    }
    if n + 1u < cfg.n {
        store_output(m, c1 + row, split, v.y);
    }
    if n + 2u < cfg.n {
        store_output(m, c2 + row, split, v.z);
    }
    if n + 3u < cfg.n {
        store_output(m, c3 + row, split, v.w);
    }
}

// A 4 x 4 quarter of an invocation's block: rows m .. m + 3 (`r0` .. `r3`), columns n .. n + 3.
fn store_quarter(m: u32, n: u32, split: u32, r0: vec4<f32>, r1: vec4<f32>, r2: vec4<f32>, r3: vec4<f32>) {
    if n >= cfg.n || m >= cfg.m {
        return;
    }
    let c0 = column_base(n);
    let c1 = column_base(n + 1u);
    let c2 = column_base(n + 2u);
    let c3 = column_base(n + 3u);
    let strides = row_strides();
    store4(m, n, split, r0, c0, c1, c2, c3, strides);
    store4(m + 1u, n, split, r1, c0, c1, c2, c3, strides);
    store4(m + 2u, n, split, r2, c0, c1, c2, c3, strides);
    store4(m + 3u, n, split, r3, c0, c1, c2, c3, strides);
}

// Column n's index terms (`n_terms`), zeros past the product.
fn column_terms(n: u32) -> vec4<u32> {
    if n < cfg.n {
        return n_terms(n);
    }
    return vec4(0u);
}

// Element (m, k) of the left matrix (`load_a`), zero past its rows.
fn a_or_zero(m: u32, kt: vec4<u32>) -> f32 {
    if m < cfg.m {
        return load_a(m, kt);
    }
    return 0.0;
}

// Element (k, n) of the right matrix (`load_b`), zero past its columns.
fn b_or_zero(n: u32, kt: vec4<u32>, nt: vec4<u32>) -> f32 {
    if n < cfg.n {
        return load_b(kt, nt);
    }
    return 0.0;
}

var<workgroup> sh_a: array<vec4<f32>, BK * BM / 4u>;
var<workgroup> sh_b: array<vec4<f32>, BK * BN / 4u>;

// The terms of the current BK values of k (see `k_terms`), written by BK invocations each K
// step: per element, the decomposition costs up to six integer divisions by uniform values,
// which no GPU has in hardware and a CPU adapter cannot vectorise.
var<workgroup> sh_k: array<vec4<u32>, BK>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    if MODE == MODE_GRAD_INPUT {
        ph = phase_of();
    }
    let index = wg.x + wg.y * num_wg.x;
    let tiles = cfg.m_tiles * cfg.n_tiles;
    let split = index / tiles;
    if split >= cfg.splits {
        return;
    }
    let tile = index % tiles;
    let m0 = (tile / cfg.n_tiles) * BM;
    let n0 = (tile % cfg.n_tiles) * BN;
    let k_begin = split * cfg.k_split;
    let k_end = min(cfg.k, k_begin + cfg.k_split);
    // This invocation's place in the grid: its rows are the 4-row groups ty, ty + GM, ... of
    // the tile, its columns the 4-column groups tx, tx + GN, ...
    let ty = lid / GN;
    let tx = lid % GN;
    // The vec4s it stages: rows 4 sa .. 4 sa + 3 of A and columns 4 sb .. 4 sb + 3 of B, at
    // k rows lid / (BM / 4) + j WG / (BM / 4) (A) and likewise for B (WG is a multiple of
    // BM / 4 and of BN / 4, so these never change; and at least BK, for `sh_k`).
    let sa = lid % (BM / 4u);
    let sb = lid % (BN / 4u);
    // Its columns' index terms (literal names, not an array: see `acc`).
    let nb = n0 + sb * 4u;
    let nt0 = column_terms(nb);
    let nt1 = column_terms(nb + 1u);
    let nt2 = column_terms(nb + 2u);
    let nt3 = column_terms(nb + 3u);
    // The accumulators, vec4s of 4 columns: acc[2 row + h] holds the invocation's row `row`
    // (0-3: the rows of its first 4-row group, 4-7: of its second) and its h-th 4-column
    // group; with TN = 16, acc[16 + 2 row + h] its (h + 2)-th. Every index below is a literal:
    // an array indexed only by constants becomes registers, where a loop the driver does not
    // unroll would leave it in memory (on llvmpipe, one gather and one scatter per multiply-add).
    var acc: array<vec4<f32>, 32>;
    for (var k0 = k_begin; k0 < k_end; k0 = k0 + BK) {
        if lid < BK && k0 + lid < k_end {
            sh_k[lid] = k_terms(k0 + lid);
        }
        workgroupBarrier();
        // Past the matrix (or this split's K) the tiles hold zeros.
        for (var e = lid; e < BK * BM / 4u; e = e + WG) {
            let ak = e / (BM / 4u);
            var v = vec4(0.0);
            if k0 + ak < k_end {
                let kt = sh_k[ak];
                let m = m0 + sa * 4u;
                v = vec4(a_or_zero(m, kt), a_or_zero(m + 1u, kt), a_or_zero(m + 2u, kt), a_or_zero(m + 3u, kt));
            }
            sh_a[e] = v;
        }
        for (var e = lid; e < BK * BN / 4u; e = e + WG) {
            let bk = e / (BN / 4u);
            var v = vec4(0.0);
            if k0 + bk < k_end {
                let kt = sh_k[bk];
                v = vec4(b_or_zero(nb, kt, nt0), b_or_zero(nb + 1u, kt, nt1), b_or_zero(nb + 2u, kt, nt2), b_or_zero(nb + 3u, kt, nt3));
            }
            sh_b[e] = v;
        }
        workgroupBarrier();
        // A last block (or a K of fewer than BK) stops at the matrix: the rest of the tiles is
        // zeros. The loop keeps its constant bound (a break, uniform in the workgroup) so that a
        // GPU's compiler can still unroll it.
        let k_len = min(BK, k_end - k0);
        for (var kk = 0u; kk < BK; kk = kk + 1u) {
            if kk >= k_len {
                break;
            }
            let a0 = sh_a[kk * (BM / 4u) + ty];
            let b0 = sh_b[kk * (BN / 4u) + tx];
            acc[0] += a0.x * b0;
            acc[2] += a0.y * b0;
            acc[4] += a0.z * b0;
            acc[6] += a0.w * b0;
            // TM and TN are constants of the pipeline: the branches fold away.
            var b1 = vec4(0.0);
            if TN >= 8u {
                b1 = sh_b[kk * (BN / 4u) + tx + GN];
                acc[1] += a0.x * b1;
                acc[3] += a0.y * b1;
                acc[5] += a0.z * b1;
                acc[7] += a0.w * b1;
            }
            var a1 = vec4(0.0);
            if TM == 8u {
                a1 = sh_a[kk * (BM / 4u) + ty + GM];
                acc[8] += a1.x * b0;
                acc[10] += a1.y * b0;
                acc[12] += a1.z * b0;
                acc[14] += a1.w * b0;
                if TN >= 8u {
                    acc[9] += a1.x * b1;
                    acc[11] += a1.y * b1;
                    acc[13] += a1.z * b1;
                    acc[15] += a1.w * b1;
                }
            }
            // A 4 x 16 or 8 x 16 block: 4-column groups 2 and 3 against the same rows.
            if TN == 16u {
                let b2 = sh_b[kk * (BN / 4u) + tx + 2u * GN];
                let b3 = sh_b[kk * (BN / 4u) + tx + 3u * GN];
                acc[16] += a0.x * b2;
                acc[18] += a0.y * b2;
                acc[20] += a0.z * b2;
                acc[22] += a0.w * b2;
                acc[17] += a0.x * b3;
                acc[19] += a0.y * b3;
                acc[21] += a0.z * b3;
                acc[23] += a0.w * b3;
                if TM == 8u {
                    acc[24] += a1.x * b2;
                    acc[26] += a1.y * b2;
                    acc[28] += a1.z * b2;
                    acc[30] += a1.w * b2;
                    acc[25] += a1.x * b3;
                    acc[27] += a1.y * b3;
                    acc[29] += a1.z * b3;
                    acc[31] += a1.w * b3;
                }
            }
        }
        workgroupBarrier();
    }
    // Rows ty * 4 + i and (ty + GM) * 4 + i of the tile, columns from tx * 4 and (tx + GN) * 4
    // (and (tx + 2 GN) * 4, (tx + 3 GN) * 4 with TN = 16).
    let m_lo = m0 + ty * 4u;
    let m_hi = m0 + (ty + GM) * 4u;
    let n_lo = n0 + tx * 4u;
    let n_hi = n0 + (tx + GN) * 4u;
    store_quarter(m_lo, n_lo, split, acc[0], acc[2], acc[4], acc[6]);
    if TN >= 8u {
        store_quarter(m_lo, n_hi, split, acc[1], acc[3], acc[5], acc[7]);
    }
    if TM == 8u {
        store_quarter(m_hi, n_lo, split, acc[8], acc[10], acc[12], acc[14]);
        if TN >= 8u {
            store_quarter(m_hi, n_hi, split, acc[9], acc[11], acc[13], acc[15]);
        }
    }
    if TN == 16u {
        let n2 = n0 + (tx + 2u * GN) * 4u;
        let n3 = n0 + (tx + 3u * GN) * 4u;
        store_quarter(m_lo, n2, split, acc[16], acc[18], acc[20], acc[22]);
        store_quarter(m_lo, n3, split, acc[17], acc[19], acc[21], acc[23]);
        if TM == 8u {
            store_quarter(m_hi, n2, split, acc[24], acc[26], acc[28], acc[30]);
            store_quarter(m_hi, n3, split, acc[25], acc[27], acc[29], acc[31]);
        }
    }
}
