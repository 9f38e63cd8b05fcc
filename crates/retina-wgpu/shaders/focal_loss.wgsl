// Sigmoid focal loss (Lin et al. 2017), forward and backward fused in one pass.
//
// Each invocation reads ELEMS_PER_THREAD logits (f32, or f16 packed two to a word) and their
// targets, and writes d(loss)/d(logit), already divided by the normaliser, and on request the
// per-element loss. The workgroup adds its losses (shared/workgroup_reduce.wgsl) and writes one
// partial sum; reduce_sum.wgsl adds the partials. No float atomics: the sum is a tree, so its
// error grows with log2 of the element count.
//
// Targets are either dense f32 in [0, 1] (torchvision's semantics, soft targets allowed) or
// one i32 label per row of `num_classes` logits: k >= 0 is class k, -1 background, -2 ignored.
// The label form reads 4 / num_classes bytes of target per element.
//
// Hard targets (t = 0 or 1) go through z = +-x, where 1 - p_t = sigmoid(-z) and both logs are
// softplus terms: finite loss and gradient for every finite logit and every gamma >= 0, with no
// (1 - p_t)^(gamma - 1) factor that divides by zero when gamma < 1. src/cpu/focal.rs is the twin.
//
// Non-finite logits or targets, and labels outside [-2, num_classes), give NaN for that element
// (and so a NaN sum). Ignored anchors give exactly 0, whatever their logits hold.

//#include "shared/numerics.wgsl"
//#include "shared/workgroup_reduce.wgsl"

// Must stay in sync with `FocalConfig` in src/gpu/focal.rs.
struct Config {
    n_elements: u32,
    num_classes: u32,
    flags: u32,
    // With FLAG_NORM_FROM_COUNTS: normaliser = max(1, counts[norm_index] * norm_value).
    norm_index: u32,
    alpha: f32,
    gamma: f32,
    beta: f32,
    // Without FLAG_NORM_FROM_COUNTS: the normaliser itself.
    norm_value: f32,
}

const WG_SIZE: u32 = 256u;
const ELEMS_PER_THREAD: u32 = 4u;
const TILE: u32 = WG_SIZE * ELEMS_PER_THREAD;

const FLAG_LABELS: u32 = 1u;
const FLAG_F16: u32 = 2u;
const FLAG_ALPHA: u32 = 4u;
const FLAG_STAR: u32 = 8u;
const FLAG_GRAD: u32 = 16u;
const FLAG_ELEMENTWISE: u32 = 32u;
const FLAG_NORM_FROM_COUNTS: u32 = 64u;

const LABEL_IGNORE: i32 = -2;
const LABEL_BACKGROUND: i32 = -1;

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read> logits: array<u32>;
@group(0) @binding(2) var<storage, read> targets: array<u32>;
@group(0) @binding(3) var<storage, read> counts: array<u32>;
@group(0) @binding(4) var<storage, read_write> grad: array<f32>;
@group(0) @binding(5) var<storage, read_write> elementwise: array<f32>;
@group(0) @binding(6) var<storage, read_write> partials: array<f32>;

fn has_flag(flag: u32) -> bool {
    return (cfg.flags & flag) != 0u;
}

fn load_logit(i: u32) -> f32 {
    if has_flag(FLAG_F16) {
        let pair = unpack2x16float(logits[i >> 1u]);
        return select(pair.x, pair.y, (i & 1u) == 1u);
    }
    return bitcast<f32>(logits[i]);
}

// (target, weight): weight 0 marks an ignored anchor.
fn load_target(i: u32) -> vec2<f32> {
    if !has_flag(FLAG_LABELS) {
        return vec2(bitcast<f32>(targets[i]), 1.0);
    }
    let label = bitcast<i32>(targets[i / cfg.num_classes]);
    let cls = i32(i % cfg.num_classes);
    if label == LABEL_IGNORE {
        return vec2(0.0, 0.0);
    }
    if label < LABEL_BACKGROUND || label >= i32(cfg.num_classes) {
        return vec2(nan_f32(), 1.0);
    }
    return vec2(select(0.0, 1.0, label == cls), 1.0);
}

fn normaliser() -> f32 {
    if has_flag(FLAG_NORM_FROM_COUNTS) {
        return max(1.0, f32(counts[cfg.norm_index]) * cfg.norm_value);
    }
    return cfg.norm_value;
}

// Focal loss and d/dx against a hard target of sign s (+1 for t = 1, -1 for t = 0).
fn focal_hard(x: f32, s: f32) -> vec2<f32> {
    let z = s * x;
    let e = exp(-abs(x));
    let l1p = log1p_unit(e);
    let sp_pos = max(z, 0.0) + l1p;           // -log(1 - p_t)
    let ce = max(-z, 0.0) + l1p;              // -log(p_t)
    let inv = 1.0 / (1.0 + e);
    let m = select(inv, e * inv, z >= 0.0);   // 1 - p_t
    let pt = select(e * inv, inv, z >= 0.0);  // p_t
    let mg = exp(-cfg.gamma * sp_pos);        // (1 - p_t)^gamma; exactly 1 when gamma = 0
    let dz = -mg * (cfg.gamma * pt * ce + m);
    return vec2(mg * ce, s * dz);
}

// Focal loss and d/dx against a soft target t in (0, 1):
// d/dx = (1-p_t)^g (p - t) + g ce (1-p_t)^(g-1) p (1-p) (1 - 2t), where p (1-p) / (1-p_t) <= 2.
fn focal_soft(x: f32, t: f32) -> vec2<f32> {
    let e = exp(-abs(x));
    let inv = 1.0 / (1.0 + e);
    let p = select(e * inv, inv, x >= 0.0);
    let q = select(inv, e * inv, x >= 0.0);   // 1 - p without cancellation
    let ce = max(x, 0.0) - x * t + log1p_unit(e);
    let m = p * (1.0 - t) + q * t;            // 1 - p_t
    let positive = m > 0.0;
    let zero_pow = select(0.0, 1.0, cfg.gamma == 0.0);
    let mg = select(zero_pow, exp(cfg.gamma * log(m)), positive);
    let ratio = select(0.0, p * q / m, positive);
    // gamma * (ce * ratio), not (gamma * ce) * ratio, which overflows for logits near f32::MAX.
    let g = mg * ((p * (1.0 - t) - q * t) + cfg.gamma * (ce * ratio) * (1.0 - 2.0 * t));
    return vec2(mg * ce, g);
}

// FL* (appendix A): p*_t = sigmoid(gamma x_t + beta), loss = -log(p*_t) / gamma.
fn star_hard(x: f32, s: f32) -> vec2<f32> {
    let zz = cfg.gamma * s * x + cfg.beta;
    let e = exp(-abs(zz));
    let inv = 1.0 / (1.0 + e);
    let sig_neg = select(inv, e * inv, zz >= 0.0);   // sigmoid(-zz)
    return vec2((max(-zz, 0.0) + log1p_unit(e)) / cfg.gamma, -s * sig_neg);
}

fn focal_element(x: f32, tw: vec2<f32>) -> vec2<f32> {
    let t = tw.x;
    if tw.y == 0.0 {
        return vec2(0.0);
    }
    if is_non_finite(x) || is_non_finite(t) {
        return vec2(nan_f32());
    }
    var r: vec2<f32>;
    if has_flag(FLAG_STAR) {
        if t == 1.0 {
            r = star_hard(x, 1.0);
        } else if t == 0.0 {
            r = star_hard(x, -1.0);
        } else {
            r = t * star_hard(x, 1.0) + (1.0 - t) * star_hard(x, -1.0);
        }
    } else if t == 1.0 || t == 0.0 {
        r = focal_hard(x, select(-1.0, 1.0, t == 1.0));
    } else {
        r = focal_soft(x, t);
    }
    if has_flag(FLAG_ALPHA) {
        r = r * (cfg.alpha * t + (1.0 - cfg.alpha) * (1.0 - t));
    }
    return r;
}

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    ids: LocalIds,
) {
    // Grids longer than the device's per-dimension limit are folded into x and y.
    let wg_index = wg.x + wg.y * num_wg.x;
    let tile_start = wg_index * TILE;
    if tile_start >= cfg.n_elements {
        return;
    }
    let inv_norm = 1.0 / normaliser();
    var acc = 0.0;
    for (var j = 0u; j < ELEMS_PER_THREAD; j = j + 1u) {
        let i = tile_start + j * WG_SIZE + ids.index;
        if i < cfg.n_elements {
            let r = focal_element(load_logit(i), load_target(i));
            acc = acc + r.x;
            if has_flag(FLAG_GRAD) {
                grad[i] = r.y * inv_norm;
            }
            if has_flag(FLAG_ELEMENTWISE) {
                elementwise[i] = r.x;
            }
        }
    }
    let total = workgroup_sum(acc, ids);
    if ids.index == 0u {
        partials[wg_index] = total;
    }
}
