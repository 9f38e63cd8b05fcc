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
// Tiling: a workgroup computes a BM x BN tile of the output with WG invocations, each a
// TM x TN = 4 x 4 block in registers; the K dimension advances BK at a time through two
// workgroup-memory tiles (A: BK x BM, B: BK x BN; with the index tables below 9.25 KiB, sized
// for the largest tile whatever the shape, of WebGPU's guaranteed 16 KiB).
// 64 x 64 tiles give 16 multiply-adds per shared-memory load and still leave several
// workgroups per multiprocessor; they need 256 invocations per workgroup (WebGPU's default
// limit) and nothing beyond the default limits. Products with few columns (N <= 32: the
// small pyramid levels' pixels, the first layer's 27 weight columns) take 64 x 16 tiles of 64
// invocations (SHAPE 1), and products with few rows (M <= 32: layers of 3-32 channels) 16 x 64
// tiles (SHAPE 2): a 64-wide tile over 2-32 columns or rows computed 2-32x the product, most of
// it on padding. Split-K: workgroups with different `split`
// cover different K ranges and write partial outputs that conv_reduce.wgsl adds (grad weight
// sums over the whole batch, so its K is large); without splits the output is written directly,
// with the bias in the forward pass. src/cpu/conv.rs computes the same with im2col and GEMM.

// Which product; a pipeline-overridable constant, so each mode compiles to its own pipeline
// with the other two branches folded away.
override MODE: u32 = 0u;
// The output tile: 0 = 64 x 64 (256 invocations), 1 = 64 x 16 (64), 2 = 16 x 64 (64); src/gpu/conv.rs
// picks 1 for N <= 32, else 2 for M <= 32.
override SHAPE: u32 = 0u;

// Must stay in sync with `ConvConfig` in src/gpu/nn.rs.
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

const BK: u32 = 16u;
const TM: u32 = 4u;
const TN: u32 = 4u;
// The largest tile's rows and columns (they size the workgroup memory of every shape).
const BM_MAX: u32 = 64u;
const BN_MAX: u32 = 64u;
override BM: u32 = select(BM_MAX, 16u, SHAPE == 2u);
override BN: u32 = select(BN_MAX, 16u, SHAPE == 1u);
override WG: u32 = (BM / TM) * (BN / TN);

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

var<workgroup> sh_a: array<f32, BK * BM_MAX>;
var<workgroup> sh_b: array<f32, BK * BN_MAX>;

// The gathers' index arithmetic, split by what it depends on. Each K step, BK invocations
// write the terms of its BK values of k into `sh_k`; once per tile, BN invocations write the
// terms of its BN columns into `sh_n`; the staging loads then only add and compare. (Per
// element, the decompositions cost up to six integer divisions by uniform values, which no
// GPU has in hardware and a CPU adapter cannot vectorise.)
var<workgroup> sh_k: array<vec4<u32>, BK>;
var<workgroup> sh_n: array<vec4<u32>, BN_MAX>;

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

// Where output element (m, n) lives in its NCHW (or row-major weight) tensor.
fn out_index(m: u32, n: u32) -> u32 {
    switch MODE {
        case MODE_FORWARD: {
            let hw = cfg.out_h * cfg.out_w;
            return ((n / hw) * cfg.out_channels + m) * hw + n % hw;
        }
        case MODE_GRAD_INPUT: {
            // n = (b, yy, xx) of the phase: input pixel (ry + yy s, rx + xx s).
            let hw = ph.rows * ph.cols;
            let y = ph.ry + ((n % hw) / ph.cols) * cfg.stride;
            let x = ph.rx + (n % ph.cols) * cfg.stride;
            return (((n / hw) * cfg.in_channels + m) * cfg.in_h + y) * cfg.in_w + x;
        }
        default: {
            return m * cfg.n + n;
        }
    }
}

// Where split `split`'s partial of element (m, n) (at `o` in the output) goes, less the split's
// offset: `o` itself, but a grad-input phase's pixels packed as (b, ci, yy, xx) (the same as `o`
// for stride 1), which conv_reduce.wgsl places.
fn partial_index(m: u32, n: u32, o: u32) -> u32 {
    if MODE == MODE_GRAD_INPUT {
        let hw = ph.rows * ph.cols;
        return ((n / hw) * cfg.in_channels + m) * hw + n % hw;
    }
    return o;
}

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
    // This invocation's 4 x 4 block of the tile.
    let tm = (lid / (BN / TN)) * TM;
    let tn = (lid % (BN / TN)) * TN;
    var acc: array<f32, 16>;
    if lid < BN && n0 + lid < cfg.n {
        sh_n[lid] = n_terms(n0 + lid);
    }
    for (var k0 = k_begin; k0 < k_end; k0 = k0 + BK) {
        if lid < BK && k0 + lid < k_end {
            sh_k[lid] = k_terms(k0 + lid);
        }
        workgroupBarrier();
        // Each invocation stages BK BM / WG elements of A and BK BN / WG of B (4 each; 16 of
        // the longer side with SHAPE 1 or 2); consecutive invocations take consecutive k of A
        // (contiguous weights) and consecutive n of B (contiguous pixels). Past the matrix (or
        // this split's K) they stage zeros.
        for (var e = lid; e < BK * BM; e = e + WG) {
            let ak = e % BK;
            let am = e / BK;
            var v = 0.0;
            if m0 + am < cfg.m && k0 + ak < k_end {
                v = load_a(m0 + am, sh_k[ak]);
            }
            sh_a[ak * BM + am] = v;
        }
        for (var e = lid; e < BK * BN; e = e + WG) {
            let bk = e / BN;
            let bn = e % BN;
            var v = 0.0;
            if n0 + bn < cfg.n && k0 + bk < k_end {
                v = load_b(sh_k[bk], sh_n[bn]);
            }
            sh_b[bk * BN + bn] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk = kk + 1u) {
            let a = vec4(sh_a[kk * BM + tm], sh_a[kk * BM + tm + 1u], sh_a[kk * BM + tm + 2u], sh_a[kk * BM + tm + 3u]);
            let b = vec4(sh_b[kk * BN + tn], sh_b[kk * BN + tn + 1u], sh_b[kk * BN + tn + 2u], sh_b[kk * BN + tn + 3u]);
            for (var i = 0u; i < TM; i = i + 1u) {
                acc[i * TN] = acc[i * TN] + a[i] * b.x;
                acc[i * TN + 1u] = acc[i * TN + 1u] + a[i] * b.y;
                acc[i * TN + 2u] = acc[i * TN + 2u] + a[i] * b.z;
                acc[i * TN + 3u] = acc[i * TN + 3u] + a[i] * b.w;
            }
        }
        workgroupBarrier();
    }
    let partial = (cfg.flags & FLAG_PARTIAL) != 0u;
    let total = cfg.m * cfg.n;
    for (var i = 0u; i < TM; i = i + 1u) {
        let m = m0 + tm + i;
        if m >= cfg.m {
            continue;
        }
        var b = 0.0;
        if !partial && (cfg.flags & FLAG_BIAS) != 0u {
            b = bias[m];
        }
        for (var j = 0u; j < TN; j = j + 1u) {
            let n = n0 + tn + j;
            if n < cfg.n {
                let o = out_index(m, n);
                if partial {
                    out[split * total + partial_index(m, n, o)] = acc[i * TN + j];
                } else if (cfg.flags & FLAG_ACCUMULATE) != 0u {
                    out[o] = out[o] + (acc[i * TN + j] + b);
                } else {
                    out[o] = acc[i * TN + j] + b;
                }
            }
        }
    }
}
