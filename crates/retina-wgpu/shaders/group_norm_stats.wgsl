// GroupNorm forward statistics: one workgroup per (image, group). The group's
// channels_per_group * plane values are contiguous (shared/group_norm_config.wgsl); their mean
// and rstd come from shared/group_norm_moments.wgsl (two walks, overflow-safe). Writes
// (mean, rstd) to `stats` for the backward pass and, for each channel c of the group, the
// coefficients with which group_norm_apply.wgsl maps x:
//   y = 0 * x + (rstd * gamma[c]) * (x - mean) + beta[c].
// The forward pass of a group small enough for one workgroup to write it runs
// group_norm_forward.wgsl instead (one dispatch); this pair serves large groups, whose
// elementwise map then runs over every workgroup of the device.
// No atomics; each loop runs ceil(count / WG_SIZE) times at most (the host checks the budget).
// The CPU twin is src/cpu/group_norm.rs (`forward`).

//#include "shared/workgroup_reduce.wgsl"
//#include "shared/group_norm_config.wgsl"
//#include "shared/group_norm_moments.wgsl"

const WG_SIZE: u32 = 256u;

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read_write> stats: array<f32>;
@group(0) @binding(5) var<storage, read_write> coef: array<vec4<f32>>;

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
    let count = cfg.group_channels * cfg.plane;
    let moments = group_moments(slot * count, count, ids);
    let mean = moments.x;
    let rstd = moments.y;
    if ids.index == 0u {
        stats[2u * slot] = mean;
        stats[2u * slot + 1u] = rstd;
    }

    let first = (slot % cfg.groups) * cfg.group_channels;
    for (var j = ids.index; j < cfg.group_channels; j = j + WG_SIZE) {
        let c = first + j;
        coef[slot * cfg.group_channels + j] = vec4<f32>(0.0, rstd * gamma[c], mean, beta[c]);
    }
}
