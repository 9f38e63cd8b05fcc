// Greedy NMS, suppression bitmask: bit t of mask[row i][word w] says that box i (higher score)
// suppresses box j = 32 w + t: j > i, same class if class-aware, IoU > threshold. A workgroup
// takes 256 rows against one word of 32 columns staged in workgroup memory; words left of a
// row's own word are never read by nms_gather.wgsl and are skipped (upper triangle only).
// Rows are processed in passes of row_begin..row_end so that the mask of a large input need not
// fit in memory at once; segments already done (max_out kept) are skipped.
// Work that cannot change the result is skipped, using `removed` as the earlier passes left it
// (boxes already suppressed): a removed row is never kept, so nms_gather.wgsl never reads its mask
// row (not written); a removed column is already suppressed, so its bit is left 0 without an IoU;
// a word whose 32 columns are all removed is not written at all (its stale bits can only be ORed
// into a word of `removed` that has every bit set already). With score-ordered passes this skips
// most of the pairs a dense detector's overlapping candidates would cost.
// The grid is indirect: nms_mask_args.wgsl sized each band's from the counts (only the row tiles
// and words that hold boxes in some segment) and wrote its layout, read here.

//#include "shared/boxes.wgsl"
//#include "shared/nms_common.wgsl"

const WG_SIZE: u32 = 256u;

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read> boxes: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> classes: array<i32>;
@group(0) @binding(3) var<storage, read> counts: array<u32>;
@group(0) @binding(4) var<storage, read> done: array<u32>;
@group(0) @binding(5) var<storage, read_write> mask: array<u32>;
@group(0) @binding(6) var<storage, read> removed: array<u32>;
// Per band: (workgroups per segment, words of 32 columns per row tile), from nms_mask_args.wgsl.
@group(0) @binding(7) var<storage, read> band_layout: array<vec2<u32>>;

var<workgroup> sh_boxes: array<vec4<f32>, 32>;
var<workgroup> sh_classes: array<i32, 32>;
var<workgroup> sh_removed: u32;

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let index = wg.x + wg.y * num_wg.x;
    let band = band_layout[cfg.row_begin / cfg.band_rows];
    if band.x == 0u {
        return;
    }
    let seg = index / band.x;
    if seg >= cfg.num_segments || done[seg] != 0u {
        return;
    }
    let within = index % band.x;
    let w = within % band.y;
    let row0 = cfg.row_begin + (within / band.y) * WG_SIZE;
    let n = counts[seg];
    let row_end = min(cfg.row_end, n);
    if row0 >= row_end || (w + 1u) * 32u <= row0 || w * 32u >= n {
        return;
    }
    let base = seg * cfg.region;
    let removed_base = seg * cfg.words;
    if lid == 0u {
        sh_removed = removed[removed_base + w];
    }
    if workgroupUniformLoad(&sh_removed) == 0xffffffffu {
        return;
    }
    if lid < 32u && w * 32u + lid < n {
        sh_boxes[lid] = boxes[base + w * 32u + lid];
        sh_classes[lid] = classes[base + w * 32u + lid];
    }
    workgroupBarrier();
    let i = row0 + lid;
    if i >= row_end || ((removed[removed_base + i / 32u] >> (i % 32u)) & 1u) != 0u {
        return;
    }
    let b = boxes[base + i];
    let c = classes[base + i];
    let live = ~sh_removed;
    var bits = 0u;
    for (var t = 0u; t < 32u; t = t + 1u) {
        let j = w * 32u + t;
        if ((live >> t) & 1u) != 0u && j > i && j < n && same_class(c, sh_classes[t])
            && box_iou(b, sh_boxes[t]) > cfg.iou_threshold {
            bits = bits | (1u << t);
        }
    }
    let rows = cfg.row_end - cfg.row_begin;
    mask[(seg * rows + i - cfg.row_begin) * cfg.words + w] = bits;
}
