// Subgroup version of shared/workgroup_reduce.wgsl (same interface). Sums: one subgroupAdd per
// subgroup, then invocation 0 adds the per-subgroup totals in subgroup order, so the result is
// deterministic run to run. Maxima: one subgroupMax per subgroup, then one workgroup atomic per
// subgroup instead of one per invocation. (wgpu enables subgroup operations with the device
// feature SUBGROUP; naga does not take an `enable subgroups;` directive.)

struct LocalIds {
    @builtin(local_invocation_index) index: u32,
    @builtin(subgroup_id) subgroup: u32,
    @builtin(num_subgroups) subgroups: u32,
    @builtin(subgroup_invocation_id) lane: u32,
}

// One slot per subgroup; WG_SIZE slots cover any subgroup size, even 1.
var<workgroup> sh_sum: array<f32, WG_SIZE>;

// Returns the workgroup's total in invocation 0 (other invocations get 0).
// Must be called in uniform control flow by every invocation of the workgroup.
fn workgroup_sum(value: f32, ids: LocalIds) -> f32 {
    let subgroup_total = subgroupAdd(value);
    if ids.lane == 0u {
        sh_sum[ids.subgroup] = subgroup_total;
    }
    workgroupBarrier();
    var total = 0.0;
    if ids.index == 0u {
        for (var i = 0u; i < ids.subgroups; i = i + 1u) {
            total = total + sh_sum[i];
        }
    }
    return total;
}

// Per-slot maxima that kernels fill with `workgroup_max_into` (and zero themselves).
var<workgroup> sh_max: array<atomic<u32>, WG_SIZE>;

// atomicMax of every invocation's `value` into `sh_max[slot]`.
// Must be called in uniform control flow by every invocation of the workgroup.
fn workgroup_max_into(slot: u32, value: u32, ids: LocalIds) {
    let subgroup_max = subgroupMax(value);
    if ids.lane == 0u {
        atomicMax(&sh_max[slot], subgroup_max);
    }
}
