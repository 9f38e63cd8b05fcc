// GroupNorm backward of a group small enough for one workgroup (src/gpu/group_norm.rs
// decides), first of two dispatches: one workgroup per (image, group) does what
// group_norm_grad_sums.wgsl, group_norm_grad_coef.wgsl's per-group half and
// group_norm_apply.wgsl do in three:
//   for each channel c of the group, in order (the same walks and tree sums as grad_sums):
//     sums[2 p] = sum of dy,  sums[2 p + 1] = rstd * sum of dy * (x - mean),  p = n * C + c
//   A = sum over the channels of gamma[c] * sums[2 p],  B = the same of sums[2 p + 1]
//   dx = (rstd * gamma[c]) * dy + (-rstd^2 * B / M) * (x - mean) + (-rstd * A / M),
// M = channels_per_group * plane. group_norm_param_grads.wgsl then adds the sums over images
// into dgamma and dbeta. With FLAG_MASK_GRAD, dy counts only where the forward's output `mask`
// is above 0 (GroupNorm's ReLU, fused). No atomics; the walks run ceil(plane / WG_SIZE) times
// per channel, then ceil(count / WG_SIZE) times.
// The CPU twin is src/cpu/group_norm.rs (`backward`).

//#include "shared/workgroup_reduce.wgsl"
//#include "shared/group_norm_config.wgsl"

const WG_SIZE: u32 = 256u;

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> stats: array<f32>;
@group(0) @binding(4) var<storage, read> grad_out: array<f32>;
// The forward's output (FLAG_MASK_GRAD; any binding otherwise, unread).
@group(0) @binding(5) var<storage, read> mask: array<f32>;
@group(0) @binding(6) var<storage, read_write> sums: array<f32>;
@group(0) @binding(7) var<storage, read_write> dx: array<f32>;

// Invocation 0's coefficients, shared with the workgroup.
var<workgroup> sh_slope: f32;
var<workgroup> sh_offset: f32;

fn masked_dy(i: u32) -> f32 {
    let dy = grad_out[i];
    if (cfg.flags & FLAG_MASK_GRAD) != 0u {
        return select(0.0, dy, mask[i] > 0.0);
    }
    return dy;
}

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    ids: LocalIds,
) {
    let slot = wg.x + wg.y * num_wg.x;
    if slot >= cfg.batch * cfg.groups {
        return;
    }
    let mean = stats[2u * slot];
    let rstd = stats[2u * slot + 1u];
    let first_plane = slot * cfg.group_channels;
    let first_channel = (slot % cfg.groups) * cfg.group_channels;
    var a = 0.0;
    var b = 0.0;
    for (var j = 0u; j < cfg.group_channels; j = j + 1u) {
        let p = first_plane + j;
        let base = p * cfg.plane;
        var dy_sum = 0.0;
        var dy_dev = 0.0;
        for (var e = ids.index; e < cfg.plane; e = e + WG_SIZE) {
            let dy = masked_dy(base + e);
            dy_sum = dy_sum + dy;
            dy_dev = dy_dev + dy * (x[base + e] - mean);
        }
        let total_dy = workgroup_sum(dy_sum, ids);
        // Invocation 0 has read the total before anyone writes sh_sum again.
        workgroupBarrier();
        let total_dev = workgroup_sum(dy_dev, ids) * rstd;
        workgroupBarrier();
        if ids.index == 0u {
            sums[2u * p] = total_dy;
            sums[2u * p + 1u] = total_dev;
            let g = gamma[first_channel + j];
            a = a + g * total_dy;
            b = b + g * total_dev;
        }
    }
    if ids.index == 0u {
        let m = f32(cfg.group_channels * cfg.plane);
        sh_slope = -rstd * rstd * b / m;
        sh_offset = -rstd * a / m;
    }
    workgroupBarrier();
    let slope = sh_slope;
    let offset = sh_offset;
    let count = cfg.group_channels * cfg.plane;
    let base = first_plane * cfg.plane;
    for (var e = ids.index; e < count; e = e + WG_SIZE) {
        let c = first_channel + e / cfg.plane;
        dx[base + e] = (rstd * gamma[c]) * masked_dy(base + e) + slope * (x[base + e] - mean) + offset;
    }
}
