// Greedy NMS, the mask's grid from the device's counts: for each band of `band_rows` rows, the
// workgroups nms_mask.wgsl needs for the rows and columns that hold boxes in some segment
// (counts[] is written on the device: post-processing regions are capacities, mostly empty,
// and a grid sized by the capacity costs a detector's frame more than its NMS does). Writes the
// band's indirect dispatch arguments (x, y, 1, the grid folded at grid_width) and its layout:
// (workgroups per segment, words of 32 columns per row tile). One workgroup.

//#include "shared/nms_common.wgsl"

const WG_SIZE: u32 = 256u;

struct Layout {
    groups_per_segment: u32,
    words: u32,
}

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read> counts: array<u32>;
@group(0) @binding(2) var<storage, read_write> args: array<u32>;
@group(0) @binding(3) var<storage, read_write> band_layout: array<Layout>;

var<workgroup> sh_most: atomic<u32>;

@compute @workgroup_size(WG_SIZE)
fn main(@builtin(local_invocation_index) lid: u32) {
    if lid == 0u {
        atomicStore(&sh_most, 0u);
    }
    workgroupBarrier();
    var most = 0u;
    for (var s = lid; s < cfg.num_segments; s = s + WG_SIZE) {
        most = max(most, min(counts[s], cfg.region));
    }
    atomicMax(&sh_most, most);
    let n = workgroupUniformLoad(&sh_most);
    let words = (n + 31u) / 32u;
    let bands = (cfg.region + cfg.band_rows - 1u) / cfg.band_rows;
    for (var b = lid; b < bands; b = b + WG_SIZE) {
        let begin = b * cfg.band_rows;
        let end = min(min(begin + cfg.band_rows, cfg.region), n);
        var groups = 0u;
        if end > begin {
            groups = ((end - begin + WG_SIZE - 1u) / WG_SIZE) * words;
        }
        // Below 2^32 in all: the host checked the capacity's grid (segments x region / 256 x
        // words), which bounds this one.
        let total = cfg.num_segments * groups;
        let x = min(total, cfg.grid_width);
        var y = 0u;
        if x > 0u {
            y = (total + x - 1u) / x;
        }
        args[3u * b] = x;
        args[3u * b + 1u] = y;
        args[3u * b + 2u] = 1u;
        band_layout[b] = Layout(groups, words);
    }
}
