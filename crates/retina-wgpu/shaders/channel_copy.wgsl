// Copies channels between NCHW tensors of the same batch and plane, one invocation per copied
// element: the concatenation along channels (src, `src_c` channels, into dst's channels
// `offset..offset + src_c` of `dst_c`) and its gradient, the slice (dst, `dst_c` channels, from
// src's channels `offset..offset + dst_c` of `src_c`). src/cpu/nn.rs is the twin.

override SLICE: bool = false;

// Must stay in sync with `ChannelCopyConfig` in src/gpu/nn.rs.
struct Config {
    batch: u32,
    src_c: u32,
    dst_c: u32,
    offset: u32,
    plane: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
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
    // The copied tensor: src when concatenating, dst when slicing.
    let channels = select(cfg.src_c, cfg.dst_c, SLICE);
    let per_image = channels * cfg.plane;
    if i >= cfg.batch * per_image {
        return;
    }
    let n = i / per_image;
    let rest = i % per_image;
    if SLICE {
        dst[i] = src[(n * cfg.src_c + cfg.offset) * cfg.plane + rest];
    } else {
        dst[(n * cfg.dst_c + cfg.offset) * cfg.plane + rest] = src[i];
    }
}
