// The matcher's uniform and the bindings its two passes share (matcher_gt_max.wgsl,
// matcher_assign.wgsl).

// Must stay in sync with `MatchConfig` in src/gpu/matcher.rs.
struct Config {
    anchors_per_image: u32,
    anchor_base: u32,
    chunk_anchors: u32,
    tiles_per_image: u32,
    image_first: u32,
    num_images: u32,
    batch: u32,
    flags: u32,
    out_base4: u32,
    out_base16: u32,
    high: f32,
    low: f32,
    num_boxes: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    weights: vec4<f32>,
}

const WG_SIZE: u32 = 256u;

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read> anchors: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> gt_boxes: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> gt_offsets: array<u32>;
