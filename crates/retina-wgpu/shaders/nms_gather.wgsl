// Greedy NMS, keep list (slots in score order, and their scores): one workgroup per segment walks the rows of this pass in score order,
// a word (32 boxes) at a time. Invocation 0 resolves the word itself: a box not yet removed is
// kept and removes the later boxes of the word that it suppresses. Then all invocations OR the
// mask rows of the boxes just kept into the later words of `removed`, in parallel. Exactly
// torchvision's greedy order; stops once max_out boxes are kept (the mask pass then skips the
// segment). `removed`, `kept` and `done` carry over between passes.

//#include "shared/nms_common.wgsl"

const WG_SIZE: u32 = 256u;

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read> mask: array<u32>;
@group(0) @binding(2) var<storage, read> counts: array<u32>;
@group(0) @binding(3) var<storage, read_write> removed: array<u32>;
@group(0) @binding(4) var<storage, read_write> kept: array<u32>;
@group(0) @binding(5) var<storage, read_write> done: array<u32>;
@group(0) @binding(6) var<storage, read_write> keep: array<u32>;
@group(0) @binding(7) var<storage, read> scores: array<f32>;
@group(0) @binding(8) var<storage, read_write> keep_scores: array<f32>;

var<workgroup> sh_bits: u32;
var<workgroup> sh_stop: u32;

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let seg = wg.x + wg.y * num_wg.x;
    if seg >= cfg.num_segments {
        return;
    }
    if lid == 0u {
        sh_stop = done[seg];
    }
    if workgroupUniformLoad(&sh_stop) != 0u {
        return;
    }
    let n = counts[seg];
    let row_end = min(cfg.row_end, n);
    if cfg.row_begin >= row_end {
        return;
    }
    let rows = cfg.row_end - cfg.row_begin;
    let row_base = seg * rows;
    let removed_base = seg * cfg.words;
    let words_used = (n + 31u) / 32u;
    for (var w = cfg.row_begin / 32u; w * 32u < row_end; w = w + 1u) {
        if lid == 0u {
            var current = removed[removed_base + w];
            var count = kept[seg];
            var bits = 0u;
            for (var t = 0u; t < 32u; t = t + 1u) {
                let i = w * 32u + t;
                if i >= cfg.row_begin && i < row_end && ((current >> t) & 1u) == 0u && count < cfg.max_out {
                    keep[seg * cfg.max_out + count] = i;
                    keep_scores[seg * cfg.max_out + count] = scores[seg * cfg.region + i];
                    count = count + 1u;
                    bits = bits | (1u << t);
                    current = current | mask[(row_base + i - cfg.row_begin) * cfg.words + w];
                }
            }
            removed[removed_base + w] = current;
            kept[seg] = count;
            sh_bits = bits;
            sh_stop = select(0u, 1u, count >= cfg.max_out);
        }
        let bits = workgroupUniformLoad(&sh_bits);
        for (var w2 = w + 1u + lid; w2 < words_used; w2 = w2 + WG_SIZE) {
            var acc = removed[removed_base + w2];
            var pending = bits;
            while pending != 0u {
                let t = firstTrailingBit(pending);
                acc = acc | mask[(row_base + w * 32u + t - cfg.row_begin) * cfg.words + w2];
                pending = pending & (pending - 1u);
            }
            removed[removed_base + w2] = acc;
        }
        storageBarrier();
        if workgroupUniformLoad(&sh_stop) != 0u {
            if lid == 0u {
                done[seg] = 1u;
            }
            break;
        }
    }
}
