// Box math shared by the matching, coding and loss kernels. Boxes are vec4(x1, y1, x2, y2) in
// pixels. src/cpu/boxes.rs is the CPU twin: same formulas, same order of operations.

fn box_area(b: vec4<f32>) -> f32 {
    return (b.z - b.x) * (b.w - b.y);
}

// torchvision's box_iou for one pair, except that a zero union (two zero-area boxes) gives 0,
// never NaN: a zero-area box has IoU 0 with everything.
fn box_iou(a: vec4<f32>, b: vec4<f32>) -> f32 {
    let lt = max(a.xy, b.xy);
    let rb = min(a.zw, b.zw);
    let wh = max(rb - lt, vec2(0.0));
    let inter = wh.x * wh.y;
    let union_area = box_area(a) + box_area(b) - inter;
    return select(0.0, inter / union_area, union_area > 0.0);
}

// (dx, dy, dw, dh) of `gt` relative to `anchor`, scaled by `weights` (torchvision's
// BoxCoder.encode_single).
fn encode_box(gt: vec4<f32>, anchor: vec4<f32>, weights: vec4<f32>) -> vec4<f32> {
    let aw = anchor.z - anchor.x;
    let ah = anchor.w - anchor.y;
    let acx = anchor.x + 0.5 * aw;
    let acy = anchor.y + 0.5 * ah;
    let gw = gt.z - gt.x;
    let gh = gt.w - gt.y;
    let gcx = gt.x + 0.5 * gw;
    let gcy = gt.y + 0.5 * gh;
    return vec4(
        weights.x * (gcx - acx) / aw,
        weights.y * (gcy - acy) / ah,
        weights.z * log(gw / aw),
        weights.w * log(gh / ah),
    );
}

// True when a component is NaN. Tests the bits: shader compilers may assume that NaNs never
// occur and fold `x != x` to false, but they cannot fold an integer test.
fn box_has_nan(v: vec4<f32>) -> bool {
    return any((bitcast<vec4<u32>>(v) & vec4(0x7fffffffu)) > vec4(0x7f800000u));
}

// Quiet-NaN bits in a variable: WebGPU's compilers (Tint) reject a constant expression whose
// value is NaN, so the bitcast must read something that is not a constant.
var<private> nan_box_bits: u32 = 0x7fc00000u;

// A box of four quiet NaNs, built from bits.
fn nan_box() -> vec4<f32> {
    return bitcast<vec4<f32>>(vec4(nan_box_bits));
}

// True when a component is NaN or infinite (bit test, as box_has_nan).
fn box_not_finite(v: vec4<f32>) -> bool {
    return any((bitcast<vec4<u32>>(v) & vec4(0x7fffffffu)) >= vec4(0x7f800000u));
}

// A decoded box before its sides are formed: centre (cx, cy) and half-sizes (w / 2, h / 2).
struct DecodedBox {
    centre: vec2<f32>,
    half_size: vec2<f32>,
}

// torchvision's BoxCoder.decode_single up to the sides: dw and dh are clamped at `clamp` before
// exp. The deltas must not hold NaN (the callers test it first).
fn decode_parts(deltas: vec4<f32>, anchor: vec4<f32>, weights: vec4<f32>, clamp: f32) -> DecodedBox {
    let aw = anchor.z - anchor.x;
    let ah = anchor.w - anchor.y;
    let acx = anchor.x + 0.5 * aw;
    let acy = anchor.y + 0.5 * ah;
    let d = deltas / weights;
    let cx = d.x * aw + acx;
    let cy = d.y * ah + acy;
    let half_w = 0.5 * (exp(min(d.z, clamp)) * aw);
    let half_h = 0.5 * (exp(min(d.w, clamp)) * ah);
    return DecodedBox(vec2(cx, cy), vec2(half_w, half_h));
}

// The box that `deltas` describe relative to `anchor` (torchvision's BoxCoder.decode_single).
// A NaN anywhere in the deltas, or a box whose coordinates overflow f32, gives an all-NaN box
// (GPU min/max/clamp with NaN are undefined, so the rule is explicit on both backends): never
// an infinite box that looks valid.
fn decode_box(deltas: vec4<f32>, anchor: vec4<f32>, weights: vec4<f32>, clamp: f32) -> vec4<f32> {
    if box_has_nan(deltas) {
        return nan_box();
    }
    let q = decode_parts(deltas, anchor, weights, clamp);
    let b = vec4(q.centre - q.half_size, q.centre + q.half_size);
    if box_not_finite(b) {
        return nan_box();
    }
    return b;
}
