// Reductions over the invocations of a workgroup of WG_SIZE invocations (a power of two that
// the including kernel defines), without subgroup operations.
// shared/workgroup_reduce_subgroup.wgsl replaces this file when the device has subgroups; the
// two declare the same `LocalIds`, `workgroup_sum` and `workgroup_max_into`, so kernels are
// written once.

struct LocalIds {
    @builtin(local_invocation_index) index: u32,
}

var<workgroup> sh_sum: array<f32, WG_SIZE>;

// Sum of one f32 per invocation, by a tree in workgroup memory: log2(WG_SIZE) halving steps, so
// the rounding error grows with log2 of the count, not with the count.
// Returns the total in invocation 0 (other invocations get a partial sum).
// Must be called in uniform control flow by every invocation of the workgroup.
fn workgroup_sum(value: f32, ids: LocalIds) -> f32 {
    sh_sum[ids.index] = value;
    for (var stride = WG_SIZE / 2u; stride > 0u; stride = stride / 2u) {
        workgroupBarrier();
        if ids.index < stride {
            sh_sum[ids.index] = sh_sum[ids.index] + sh_sum[ids.index + stride];
        }
    }
    return sh_sum[0];
}

// Per-slot maxima that kernels fill with `workgroup_max_into` (and zero themselves).
var<workgroup> sh_max: array<atomic<u32>, WG_SIZE>;

// atomicMax of every invocation's `value` into `sh_max[slot]`.
// Must be called in uniform control flow by every invocation of the workgroup.
fn workgroup_max_into(slot: u32, value: u32, ids: LocalIds) {
    atomicMax(&sh_max[slot], value);
}
