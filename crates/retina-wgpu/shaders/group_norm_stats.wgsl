// GroupNorm forward statistics: one workgroup per (image, group). The group's
// channels_per_group * plane values are contiguous (shared/group_norm_config.wgsl); the
// workgroup walks them twice, each walk strided over its invocations and finished by a tree sum
// in workgroup memory (shared/workgroup_reduce.wgsl): first the mean, then the sum of squared
// deviations from it. Two passes give the biased variance without the cancellation of
// E[x^2] - E[x]^2 when |mean| >> std. The deviations are scaled by 2^-e before squaring, with
// 2^e >= 1 the power of two above the group's sum of |x| (added in the first walk), so that no
// square overflows f32 for inputs up to f32::MAX (the CPU sums in f64); scaling by a power of
// two is exact, so for e = 0 (and without underflow for any e) rstd is bit for bit the
// unscaled one. Writes (mean, rstd) to `stats` for the backward pass and,
// for each channel c of the group, the coefficients with which group_norm_apply.wgsl maps x:
//   y = 0 * x + (rstd * gamma[c]) * (x - mean) + beta[c].
// No atomics; each loop runs ceil(count / WG_SIZE) times at most (the host checks the budget).
// The CPU twin is src/cpu/group_norm.rs (`forward`).

//#include "shared/workgroup_reduce.wgsl"
//#include "shared/group_norm_config.wgsl"

const WG_SIZE: u32 = 256u;

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read_write> stats: array<f32>;
@group(0) @binding(5) var<storage, read_write> coef: array<vec4<f32>>;

// Invocation 0's totals, shared with the workgroup.
var<workgroup> sh_mean: f32;
var<workgroup> sh_rstd: f32;
var<workgroup> sh_inv_scale: f32;

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

    var sum = 0.0;
    var abs_sum = 0.0;
    for (var e = ids.index; e < count; e = e + WG_SIZE) {
        let v = x[base + e];
        sum = sum + v;
        abs_sum = abs_sum + abs(v);
    }
    let total = workgroup_sum(sum, ids);
    if ids.index == 0u {
        sh_mean = total / f32(count);
    }
    // Also keeps the next workgroup_sum from overwriting sh_sum before invocation 0 has read it.
    workgroupBarrier();
    let total_abs = workgroup_sum(abs_sum, ids);
    if ids.index == 0u {
        // e = max(0, the exponent of the power of two above total_abs), at most 126.
        let biased = i32((bitcast<u32>(total_abs) >> 23u) & 0xffu);
        let e = clamp(biased - 126, 0, 126);
        sh_inv_scale = bitcast<f32>(u32(127 - e) << 23u);
    }
    workgroupBarrier();
    let mean = sh_mean;
    let inv_scale = sh_inv_scale;

    var squares = 0.0;
    for (var e = ids.index; e < count; e = e + WG_SIZE) {
        let d = (x[base + e] - mean) * inv_scale;
        squares = squares + d * d;
    }
    let total_squares = workgroup_sum(squares, ids);
    if ids.index == 0u {
        // 1 / sqrt(var + eps) with var = 2^2e total_squares / count, without forming 2^2e.
        let rstd = inv_scale / sqrt(total_squares / f32(count) + cfg.eps * inv_scale * inv_scale);
        sh_rstd = rstd;
        stats[2u * slot] = mean;
        stats[2u * slot + 1u] = rstd;
    }
    workgroupBarrier();
    let rstd = sh_rstd;

    let first = (slot % cfg.groups) * cfg.group_channels;
    for (var j = ids.index; j < cfg.group_channels; j = j + WG_SIZE) {
        let c = first + j;
        coef[slot * cfg.group_channels + j] = vec4<f32>(0.0, rstd * gamma[c], mean, beta[c]);
    }
}
