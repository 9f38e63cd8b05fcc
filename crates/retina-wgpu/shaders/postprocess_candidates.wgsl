// Detection post-processing, candidates: for every (image, level, rank) slot filled by the
// per-level top-k, the anchor and class of the selected logit, a record of its box (decoded
// from the regression deltas, clipped to the image), score (sigmoid) and class, and a sort entry
// (image, descending score key, slot within the image, slot in the batch). Unfilled slots get
// padding entries, which sort after every candidate of their image; entries past the last image
// sort after everything.

//#include "shared/boxes.wgsl"
//#include "shared/sort_keys.wgsl"
//#include "shared/detection.wgsl"

// Must stay in sync with `CandidateConfig` in src/gpu/detect.rs.
struct Config {
    batch: u32,
    levels: u32,
    topk: u32,
    region: u32,
    anchors_per_image: u32,
    num_classes: u32,
    clip: u32,
    // Sort entries in all (a power of two): slots past batch * region are padding.
    total: u32,
    // (width, height).
    image_size: vec2<f32>,
    clamp: f32,
    _pad1: u32,
    weights: vec4<f32>,
}

// Per level: the first anchor (must stay in sync with `LevelInfo` in src/gpu/detect.rs).
struct Level {
    first_anchor: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const WG_SIZE: u32 = 256u;

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read> levels: array<Level>;
@group(0) @binding(2) var<storage, read> selected: array<u32>;
@group(0) @binding(3) var<storage, read> candidates: array<vec2<u32>>;
@group(0) @binding(4) var<storage, read> deltas: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> anchors: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> records: array<Detection>;
@group(0) @binding(7) var<storage, read_write> entries: array<vec4<u32>>;

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
    let level = slot / cfg.topk;
    let rank = slot % cfg.topk;
    let segment = image * cfg.levels + level;
    if level >= cfg.levels || rank >= selected[segment] {
        entries[i] = vec4(image, 0xffffffffu, 0xffffffffu, 0xffffffffu);
        return;
    }
    let cand = candidates[segment * cfg.topk + rank];
    let anchor = levels[level].first_anchor + cand.y / cfg.num_classes;
    let logit = key_to_float(cand.x);
    let score = 1.0 / (1.0 + exp(-logit));
    let d = deltas[image * cfg.anchors_per_image + anchor];
    var b = decode_box(d, anchors[anchor], cfg.weights, cfg.clamp);
    // An all-NaN box (NaN deltas, or a box past f32) stays all-NaN through the clip (clamp of
    // NaN is undefined in WGSL).
    if cfg.clip != 0u && !box_has_nan(b) {
        b = clamp(b, vec4(0.0), cfg.image_size.xyxy);
    }
    records[i] = Detection(b, score, i32(cand.y % cfg.num_classes), 0u, 0u);
    entries[i] = vec4(image, ~cand.x, slot, i);
}
