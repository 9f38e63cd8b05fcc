// Declarations shared by the NMS kernels. Boxes are sorted by decreasing score into fixed
// regions of `region` slots, one region per segment (an image, or the whole input); the first
// counts[segment] slots of a region hold its valid boxes. Must stay in sync with `NmsConfig`
// in src/gpu/nms.rs.

struct Config {
    region: u32,
    // Words of 32 columns per mask row: region / 32.
    words: u32,
    // Rows of this pass: row_begin .. row_end (mask rows are stored from row_begin).
    row_begin: u32,
    row_end: u32,
    num_segments: u32,
    // Workgroups per segment (the spatial mask and the per-box kernels; nms_mask.wgsl reads its
    // band's from nms_mask_args.wgsl instead).
    groups_per_segment: u32,
    max_out: u32,
    flags: u32,
    iou_threshold: f32,
    score_threshold: f32,
    // Soft-NMS: Gaussian sigma; Matrix NMS: Gaussian sigma.
    sigma: f32,
    // nms_mask_spatial.wgsl: the blocks of 256 boxes (in tile order) this dispatch visits.
    block_begin: u32,
    block_end: u32,
    // Rows per pass (band) of the greedy mask: nms_spatial_keys.wgsl orders each band's rows,
    // nms_mask_args.wgsl sizes each band's grid, nms_mask.wgsl finds its band's layout.
    band_rows: u32,
    // nms_mask_args.wgsl: the most workgroups per grid dimension (the grid is folded at it).
    grid_width: u32,
    _pad2: u32,
}

const FLAG_GAUSSIAN: u32 = 2u;

// The spatial path's boxes in tile order (nms_spatial_tiles.wgsl writes them, nms_mask_spatial.wgsl
// reads them): the box, its slot in score order, its class. `TiledBox` in src/gpu/nms.rs.
struct Tiled {
    b: vec4<f32>,
    slot: u32,
    label: i32,
    _pad0: u32,
    _pad1: u32,
}

// Boxes interact only within a class; class-agnostic NMS passes all-zero classes.
fn same_class(a: i32, b: i32) -> bool {
    return a == b;
}
