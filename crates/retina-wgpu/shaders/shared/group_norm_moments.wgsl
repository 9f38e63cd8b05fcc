// The moments of one (image, group) slot of GroupNorm's input, shared by
// group_norm_stats.wgsl and group_norm_forward.wgsl. The including kernel declares `cfg`
// (shared/group_norm_config.wgsl), `x` (the input), WG_SIZE, and includes
// shared/workgroup_reduce.wgsl.
//
// The workgroup walks the slot's values twice, each walk strided over its invocations and
// finished by a tree sum in workgroup memory: first the mean, then the sum of squared
// deviations from it. Two passes give the biased variance without the cancellation of
// E[x^2] - E[x]^2 when |mean| >> std. The deviations are scaled by 2^-e before squaring, with
// 2^e >= 1 the power of two above the group's sum of |x| (added in the first walk), so that no
// square overflows f32 for inputs up to f32::MAX (the CPU sums in f64); scaling by a power of
// two is exact, so for e = 0 (and without underflow for any e) rstd is bit for bit the
// unscaled one. Each loop runs ceil(count / WG_SIZE) times.

// Invocation 0's totals, shared with the workgroup.
var<workgroup> sh_mean: f32;
var<workgroup> sh_rstd: f32;
var<workgroup> sh_inv_scale: f32;

// (mean, rstd = 1 / sqrt(var + eps)) of the `count` values of `x` from `base`, in every
// invocation. Must be called in uniform control flow by every invocation of the workgroup.
fn group_moments(base: u32, count: u32, ids: LocalIds) -> vec2<f32> {
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
        sh_rstd = inv_scale / sqrt(total_squares / f32(count) + cfg.eps * inv_scale * inv_scale);
    }
    workgroupBarrier();
    return vec2<f32>(mean, sh_rstd);
}
