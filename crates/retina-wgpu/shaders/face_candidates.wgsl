// RetinaFace post-processing, candidates: for every (image, rank) slot filled by the top-k over
// the face scores, the anchor's box and landmarks decoded as the reference does (centre =
// anchor centre + anchor size * delta * variance, size = anchor size * exp(delta * variance),
// relative to the image, then in pixels), a record of the box (x1, y1, x2, y2) and score, and a
// sort entry (image, descending score key, slot within the image, slot in the batch). Unfilled
// slots get padding entries. src/model/retinaface.rs (`RetinaFace::faces`) is the twin.

//#include "shared/sort_keys.wgsl"
//#include "shared/detection.wgsl"

// Must stay in sync with `FaceCandidateConfig` in src/gpu/faces.rs.
struct Config {
    batch: u32,
    topk: u32,
    region: u32,
    rows: u32,
    // Sort entries in all (a power of two): slots past batch * region are padding.
    total: u32,
    _pad0: u32,
    // (width, height) in pixels.
    image_size: vec2<f32>,
    // (centre, size).
    variances: vec2<f32>,
    _pad1: u32,
    _pad2: u32,
}

const WG_SIZE: u32 = 256u;

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read> selected: array<u32>;
@group(0) @binding(2) var<storage, read> candidates: array<vec2<u32>>;
@group(0) @binding(3) var<storage, read> deltas: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> landmarks: array<f32>;
// Per anchor row: (cx, cy, w, h) relative to the image.
@group(0) @binding(5) var<storage, read> anchors: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> records: array<Detection>;
@group(0) @binding(7) var<storage, read_write> marks: array<f32>;
@group(0) @binding(8) var<storage, read_write> entries: array<vec4<u32>>;

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wg.x + wg.y * num_wg.x) * WG_SIZE + lid;
    if i >= cfg.total {
        return;
    }
    if i >= cfg.batch * cfg.region {
        entries[i] = vec4(0xffffffffu);
        return;
    }
    let image = i / cfg.region;
    let slot = i % cfg.region;
    if slot >= cfg.topk || slot >= selected[image] {
        entries[i] = vec4(image, 0xffffffffu, 0xffffffffu, 0xffffffffu);
        return;
    }
    let cand = candidates[image * cfg.topk + slot];
    let row = image * cfg.rows + cand.y;
    let a = anchors[cand.y];
    let d = deltas[row];
    let centre = a.xy + a.zw * d.xy * cfg.variances.x;
    let size = a.zw * exp(d.zw * cfg.variances.y);
    let corner = centre - size / 2.0;
    let xy = corner * cfg.image_size;
    let wh = size * cfg.image_size;
    records[i] = Detection(vec4(xy, xy + wh), key_to_float(cand.x), 0, 0u, 0u);
    for (var p = 0u; p < 5u; p = p + 1u) {
        let m = vec2(landmarks[row * 10u + 2u * p], landmarks[row * 10u + 2u * p + 1u]);
        let at = (a.xy + a.zw * m * cfg.variances.x) * cfg.image_size;
        marks[i * 10u + 2u * p] = at.x;
        marks[i * 10u + 2u * p + 1u] = at.y;
    }
    entries[i] = vec4(image, ~cand.x, slot, i);
}
