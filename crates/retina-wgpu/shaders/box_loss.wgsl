// Box regression losses over positive anchors (label >= 0), forward and backward in one pass:
// smooth L1 on the deltas (beta; beta = 0 is plain L1), or GIoU loss on the boxes the deltas
// decode to (torchvision's generalized_box_iou_loss, eps 1e-7), differentiated through the
// decode (zero past the dw/dh clamp). Writes d(loss)/d(pred deltas), divided by the normaliser,
// and one partial sum per workgroup for reduce_sum.wgsl. src/cpu/box_loss.rs is the twin.

//#include "shared/boxes.wgsl"
//#include "shared/workgroup_reduce.wgsl"

// Must stay in sync with `BoxLossConfig` in src/gpu/box_loss.rs.
struct Config {
    n_rows: u32,
    anchors_per_image: u32,
    first_row: u32,
    flags: u32,
    beta: f32,
    clamp: f32,
    norm_index: u32,
    norm_value: f32,
    weights: vec4<f32>,
}

const WG_SIZE: u32 = 256u;
const FLAG_GIOU: u32 = 1u;
const FLAG_GRAD: u32 = 2u;
const FLAG_NORM_FROM_COUNTS: u32 = 4u;
const EPS: f32 = 1e-7;

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read> pred: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> target_deltas: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> labels: array<i32>;
@group(0) @binding(4) var<storage, read> anchors: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> counts: array<u32>;
@group(0) @binding(6) var<storage, read_write> grad: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> partials: array<f32>;

struct LossGrad {
    loss: f32,
    grad: vec4<f32>,
}

fn smooth_l1(d: vec4<f32>) -> LossGrad {
    let n = abs(d);
    let quadratic = n < vec4(cfg.beta);
    let l = select(n - 0.5 * cfg.beta, 0.5 * n * n / cfg.beta, quadratic);
    let g = select(sign(d), d / cfg.beta, quadratic);
    return LossGrad(l.x + l.y + l.z + l.w, g);
}

// 1 - GIoU(p, t) and its gradient with respect to p (both boxes x1, y1, x2, y2).
fn giou(p: vec4<f32>, t: vec4<f32>) -> LossGrad {
    let lt = max(p.xy, t.xy);
    let rb = min(p.zw, t.zw);
    let overlap = rb - lt;
    let has_inter = overlap.x > 0.0 && overlap.y > 0.0;
    let inter = select(0.0, overlap.x * overlap.y, has_inter);
    let union_area = box_area(p) + box_area(t) - inter;
    let iou = inter / (union_area + EPS);
    let c_lt = min(p.xy, t.xy);
    let c_rb = max(p.zw, t.zw);
    let c_wh = c_rb - c_lt;
    let area_c = c_wh.x * c_wh.y;
    let loss = 1.0 - (iou - (area_c - union_area) / (area_c + EPS));

    // Partial derivatives of the loss with respect to the intersection, union and enclosure.
    let d_inter = -1.0 / (union_area + EPS);
    let d_union = inter / ((union_area + EPS) * (union_area + EPS)) - 1.0 / (area_c + EPS);
    let d_c = 1.0 / (area_c + EPS) - (area_c - union_area) / ((area_c + EPS) * (area_c + EPS));
    // d inter / d p: through max(x1) / min(x2) of the overlap, only where p is the binding side.
    var di = vec4(0.0);
    if has_inter {
        di = vec4(
            -overlap.y * select(0.0, 1.0, p.x >= t.x),
            -overlap.x * select(0.0, 1.0, p.y >= t.y),
            overlap.y * select(0.0, 1.0, p.z <= t.z),
            overlap.x * select(0.0, 1.0, p.w <= t.w),
        );
    }
    let pw = p.z - p.x;
    let ph = p.w - p.y;
    let da = vec4(-ph, -pw, ph, pw);
    let dc = vec4(
        -c_wh.y * select(0.0, 1.0, p.x <= t.x),
        -c_wh.x * select(0.0, 1.0, p.y <= t.y),
        c_wh.y * select(0.0, 1.0, p.z >= t.z),
        c_wh.x * select(0.0, 1.0, p.w >= t.w),
    );
    // union_area = area_p + area_t - inter.
    let g = d_inter * di + d_union * (da - di) + d_c * dc;
    return LossGrad(loss, g);
}

// The largest centre coordinate and half-size the GIoU loss uses (`GIOU_LIMIT` in
// src/cpu/box_loss.rs): beyond it a decoded box saturates, so that the enclosing box's area
// (at most (4e18)^2) stays finite, and the saturated part gets no gradient.
const GIOU_LIMIT: f32 = 1e18;

// A decoded box with its centre and half-size saturated at GIOU_LIMIT, and which of the
// centre's and half-size's components were not.
struct Saturated {
    b: vec4<f32>,
    centre_free: vec2<bool>,
    half_free: vec2<bool>,
}

fn saturated_box(deltas: vec4<f32>, anchor: vec4<f32>) -> Saturated {
    let q = decode_parts(deltas, anchor, cfg.weights, cfg.clamp);
    let centre = clamp(q.centre, vec2(-GIOU_LIMIT), vec2(GIOU_LIMIT));
    let half_size = min(q.half_size, vec2(GIOU_LIMIT));
    return Saturated(
        vec4(centre - half_size, centre + half_size),
        abs(q.centre) <= vec2(GIOU_LIMIT),
        q.half_size <= vec2(GIOU_LIMIT),
    );
}

// GIoU loss of decoded boxes, with the gradient carried back to the deltas. NaN deltas give a
// NaN loss and gradient; finite deltas of any size a finite loss (see GIOU_LIMIT).
fn giou_deltas(deltas: vec4<f32>, target_d: vec4<f32>, anchor: vec4<f32>) -> LossGrad {
    if box_has_nan(deltas) || box_has_nan(target_d) {
        let nan = nan_box();
        return LossGrad(nan.x, nan);
    }
    let sp = saturated_box(deltas, anchor);
    let p = sp.b;
    let t = saturated_box(target_d, anchor).b;
    let r = giou(p, t);
    let aw = anchor.z - anchor.x;
    let ah = anchor.w - anchor.y;
    let d = deltas / cfg.weights;
    let half_w = 0.5 * (p.z - p.x);
    let half_h = 0.5 * (p.w - p.y);
    let gx = select(0.0, (r.grad.x + r.grad.z) * aw / cfg.weights.x, sp.centre_free.x);
    let gy = select(0.0, (r.grad.y + r.grad.w) * ah / cfg.weights.y, sp.centre_free.y);
    let gw = select(0.0, (r.grad.z - r.grad.x) * half_w / cfg.weights.z, d.z <= cfg.clamp && sp.half_free.x);
    let gh = select(0.0, (r.grad.w - r.grad.y) * half_h / cfg.weights.w, d.w <= cfg.clamp && sp.half_free.y);
    return LossGrad(r.loss, vec4(gx, gy, gw, gh));
}

fn normaliser() -> f32 {
    if (cfg.flags & FLAG_NORM_FROM_COUNTS) != 0u {
        return max(1.0, f32(counts[cfg.norm_index]) * cfg.norm_value);
    }
    return cfg.norm_value;
}

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    ids: LocalIds,
) {
    let wg_index = wg.x + wg.y * num_wg.x;
    if wg_index * WG_SIZE >= cfg.n_rows {
        return;
    }
    let i = wg_index * WG_SIZE + ids.index;
    var r = LossGrad(0.0, vec4(0.0));
    if i < cfg.n_rows && labels[i] >= 0 {
        if (cfg.flags & FLAG_GIOU) != 0u {
            let anchor = anchors[(cfg.first_row + i) % cfg.anchors_per_image];
            r = giou_deltas(pred[i], target_deltas[i], anchor);
        } else {
            r = smooth_l1(pred[i] - target_deltas[i]);
        }
    }
    if i < cfg.n_rows && (cfg.flags & FLAG_GRAD) != 0u {
        grad[i] = r.grad / normaliser();
    }
    let total = workgroup_sum(r.loss, ids);
    if ids.index == 0u {
        partials[wg_index] = total;
    }
}
