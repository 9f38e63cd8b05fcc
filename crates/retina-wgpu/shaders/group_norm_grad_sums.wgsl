// GroupNorm backward, first step: the sums over each (image, channel) plane that every gradient
// needs, one workgroup per plane:
//   sums[2 p]      = sum of dy
//   sums[2 p + 1]  = sum of dy * xhat,   xhat = (x - mean) * rstd
// with p = image * channels + channel and (mean, rstd) of the plane's (image, group) from
// group_norm_stats.wgsl. Each is a strided walk then a tree sum in workgroup memory
// (shared/workgroup_reduce.wgsl); group_norm_grad_coef.wgsl adds them up over images (for
// gamma and beta) and over each group's channels (for the input). Per plane rather than per
// group so that the dispatch has batch * channels workgroups, not batch * groups. No atomics;
// the loop runs ceil(plane / WG_SIZE) times at most. With FLAG_MASK_GRAD, dy counts only where
// the forward's output `mask` is above 0 (GroupNorm's ReLU, fused).
// The CPU twin is src/cpu/group_norm.rs (`backward`).

//#include "shared/workgroup_reduce.wgsl"
//#include "shared/group_norm_config.wgsl"

const WG_SIZE: u32 = 256u;

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> stats: array<f32>;
@group(0) @binding(3) var<storage, read> grad_out: array<f32>;
// The forward's output (FLAG_MASK_GRAD; any binding otherwise, unread).
@group(0) @binding(4) var<storage, read> mask: array<f32>;
@group(0) @binding(5) var<storage, read_write> sums: array<f32>;

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    ids: LocalIds,
) {
    let p = wg.x + wg.y * num_wg.x;
    if p >= cfg.batch * cfg.channels {
        return;
    }
    let slot = p / cfg.group_channels;
    let mean = stats[2u * slot];
    let rstd = stats[2u * slot + 1u];
    let base = p * cfg.plane;

    var dy_sum = 0.0;
    var dy_dev = 0.0;
    let masked = (cfg.flags & FLAG_MASK_GRAD) != 0u;
    for (var e = ids.index; e < cfg.plane; e = e + WG_SIZE) {
        var dy = grad_out[base + e];
        if masked {
            dy = select(0.0, dy, mask[base + e] > 0.0);
        }
        dy_sum = dy_sum + dy;
        dy_dev = dy_dev + dy * (x[base + e] - mean);
    }
    let total_dy = workgroup_sum(dy_sum, ids);
    if ids.index == 0u {
        sums[2u * p] = total_dy;
    }
    // Invocation 0 has read the first total before anyone writes sh_sum again.
    workgroupBarrier();
    let total_dev = workgroup_sum(dy_dev, ids);
    if ids.index == 0u {
        sums[2u * p + 1u] = total_dev * rstd;
    }
}
