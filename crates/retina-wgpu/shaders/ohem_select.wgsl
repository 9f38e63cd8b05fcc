// OHEM, selection: one workgroup per image walks its survivors (anchors in loss order, after
// NMS if any) and marks the selected ones in `selected`, adds their losses into
// image_loss[image] and their number into the batch total, state[total_index].
//
// Without FLAG_QUOTA the first min(B, survivors) are selected. With it, detectron's sampler
// rule: pos_take = min(positive survivors, quota) highest-loss positives and
// neg_take = min(negative survivors, B - pos_take) highest-loss negatives. A FLAG_COUNT pass
// first counts each image's positive survivors into state[4 image]; the select pass then
// walks 256 survivors at a time, ranks each among the positives or the negatives seen so far
// with a workgroup scan, and stops once both quotas are met.
//
// Each dispatch covers survivor positions begin..end, so that no invocation runs more loop
// iterations than a software device allows; the running counts of positives and negatives
// seen (state[4 image + 1], state[4 image + 2]) carry over between dispatches.
// src/cpu/ohem.rs (`select_image`) is the twin.

// Must stay in sync with `SelectConfig` in src/gpu/ohem.rs.
struct Config {
    group_images: u32,
    // Slots per image in `order`.
    stride: u32,
    anchors_per_image: u32,
    first_image: u32,
    per_image: u32,
    positive_quota: u32,
    flags: u32,
    begin: u32,
    end: u32,
    total_index: u32,
    _pad0: u32,
    _pad1: u32,
}

const WG_SIZE: u32 = 256u;
const FLAG_QUOTA: u32 = 1u;
const FLAG_COUNT: u32 = 2u;

//#include "shared/workgroup_reduce.wgsl"
//#include "shared/workgroup_scan.wgsl"

@group(0) @binding(0) var<uniform> cfg: Config;
// order[s * stride + d]: the d-th survivor of image s of the group, as s * R + anchor.
@group(0) @binding(1) var<storage, read> order: array<u32>;
// Survivors per image of the group.
@group(0) @binding(2) var<storage, read> counts: array<u32>;
@group(0) @binding(3) var<storage, read> labels: array<i32>;
@group(0) @binding(4) var<storage, read> row_loss: array<f32>;
@group(0) @binding(5) var<storage, read_write> selected: array<u32>;
// Per image of the batch: [positive survivors, positives seen, negatives seen, unused]; then
// the batch's selected count at total_index.
@group(0) @binding(6) var<storage, read_write> state: array<atomic<u32>>;
@group(0) @binding(7) var<storage, read_write> image_loss: array<f32>;

var<workgroup> sh_survivors: u32;
var<workgroup> sh_state: vec3<u32>;

fn has_flag(flag: u32) -> bool {
    return (cfg.flags & flag) != 0u;
}

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    ids: LocalIds,
) {
    let s = wg.x + wg.y * num_wg.x;
    if s >= cfg.group_images {
        return;
    }
    let lid = ids.index;
    let image = cfg.first_image + s;
    if lid == 0u {
        sh_survivors = counts[s];
        sh_state = vec3(
            atomicLoad(&state[4u * image]),
            atomicLoad(&state[4u * image + 1u]),
            atomicLoad(&state[4u * image + 2u]),
        );
    }
    let n = workgroupUniformLoad(&sh_survivors);
    let start = workgroupUniformLoad(&sh_state);
    let base = s * cfg.stride;
    let row_offset = cfg.first_image * cfg.anchors_per_image;
    let stop = min(cfg.end, n);

    if has_flag(FLAG_COUNT) {
        var positives = 0u;
        for (var d = cfg.begin + lid; d < stop; d = d + WG_SIZE) {
            if labels[row_offset + order[base + d]] >= 0 {
                positives = positives + 1u;
            }
        }
        if positives > 0u {
            atomicAdd(&state[4u * image], positives);
        }
        return;
    }

    var acc = 0.0;
    if !has_flag(FLAG_QUOTA) {
        let last = min(stop, cfg.per_image);
        for (var d = cfg.begin + lid; d < last; d = d + WG_SIZE) {
            let a = row_offset + order[base + d];
            selected[a] = 1u;
            acc = acc + row_loss[a];
        }
        let sum = workgroup_sum(acc, ids);
        if lid == 0u && last > cfg.begin {
            image_loss[image] = image_loss[image] + sum;
            atomicAdd(&state[cfg.total_index], last - cfg.begin);
        }
        return;
    }

    let pos_take = min(start.x, cfg.positive_quota);
    let neg_take = min(n - start.x, cfg.per_image - pos_take);
    var pos_seen = start.y;
    var neg_seen = start.z;
    for (var c = cfg.begin; c < stop; c = c + WG_SIZE) {
        if pos_seen >= pos_take && neg_seen >= neg_take {
            break;
        }
        let d = c + lid;
        let valid = d < stop;
        var a = 0u;
        var positive = false;
        if valid {
            a = row_offset + order[base + d];
            positive = labels[a] >= 0;
        }
        let mine = vec2(select(0u, 1u, valid && positive), select(0u, 1u, valid && !positive));
        let before = workgroup_scan_exclusive(mine, lid);
        let seen = workgroup_scan_total();
        if valid {
            let take = select(neg_seen + before.y < neg_take, pos_seen + before.x < pos_take, positive);
            if take {
                selected[a] = 1u;
                acc = acc + row_loss[a];
            }
        }
        pos_seen = pos_seen + seen.x;
        neg_seen = neg_seen + seen.y;
    }
    let sum = workgroup_sum(acc, ids);
    if lid == 0u {
        let taken = (min(pos_seen, pos_take) - min(start.y, pos_take))
            + (min(neg_seen, neg_take) - min(start.z, neg_take));
        atomicStore(&state[4u * image + 1u], pos_seen);
        atomicStore(&state[4u * image + 2u], neg_seen);
        image_loss[image] = image_loss[image] + sum;
        if taken > 0u {
            atomicAdd(&state[cfg.total_index], taken);
        }
    }
}
