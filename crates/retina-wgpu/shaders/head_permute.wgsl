// A head's output [B, A*C, H, W] as rows [B, H*W*A, C] in the crate's anchor order (row,
// column, anchor within the cell), so that row (h*W + w)*A + a of image b holds the C values
// of anchor a at cell (h, w) and matches the anchors and the matcher's labels without a gather.
// BACKWARD maps row gradients back to the head's layout. src/cpu/nn.rs is the twin.

override BACKWARD: bool = false;

// Must stay in sync with `PermuteHeadConfig` in src/gpu/nn.rs.
struct Config {
    batch: u32,
    anchors: u32,
    values: u32,
    plane: u32,
    // Rows per image in the destination when it holds several levels, and where this level's
    // rows start: the levels of a pyramid are written into one [B, total rows, C] tensor.
    rows_per_image: u32,
    row_offset: u32,
    _pad0: u32,
    _pad1: u32,
}

const WG_SIZE: u32 = 256u;

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wg.x + wg.y * num_wg.x) * WG_SIZE + lid;
    let per_image = cfg.anchors * cfg.values * cfg.plane;
    if i >= cfg.batch * per_image {
        return;
    }
    // i indexes the head layout: (b, a, c, pixel).
    let b = i / per_image;
    let rest = i % per_image;
    let channel = rest / cfg.plane;
    let pixel = rest % cfg.plane;
    let a = channel / cfg.values;
    let c = channel % cfg.values;
    let row = cfg.row_offset + pixel * cfg.anchors + a;
    let r = (b * cfg.rows_per_image + row) * cfg.values + c;
    if BACKWARD {
        dst[i] = src[r];
    } else {
        dst[r] = src[i];
    }
}
