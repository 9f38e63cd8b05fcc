// GroupNorm forward in one dispatch, for groups small enough that one workgroup writes them
// (src/gpu/group_norm.rs decides): one workgroup per (image, group) takes the mean and rstd of
// the group's contiguous channels_per_group * plane values (shared/group_norm_moments.wgsl),
// writes (mean, rstd) to `stats` for the backward pass, then walks the group a third time:
//   y = (rstd * gamma[c]) * (x - mean) + beta[c],   clamped at 0 with FLAG_RELU_OUT,
// the map group_norm_stats.wgsl + group_norm_apply.wgsl compute in two dispatches (the same
// statistics bit for bit; the map may round differently where a compiler fuses a multiply-add).
// No atomics; each loop runs ceil(count / WG_SIZE) times (the host checks the budget).
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
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

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
    let base = slot * count;
    let moments = group_moments(base, count, ids);
    let mean = moments.x;
    let rstd = moments.y;
    if ids.index == 0u {
        stats[2u * slot] = mean;
        stats[2u * slot + 1u] = rstd;
    }

    let first = (slot % cfg.groups) * cfg.group_channels;
    let relu = (cfg.flags & FLAG_RELU_OUT) != 0u;
    for (var e = ids.index; e < count; e = e + WG_SIZE) {
        let c = first + e / cfg.plane;
        let value = (rstd * gamma[c]) * (x[base + e] - mean) + beta[c];
        y[base + e] = select(value, relu_value(value), relu);
    }
}
