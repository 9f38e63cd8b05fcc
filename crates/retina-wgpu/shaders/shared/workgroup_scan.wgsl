// Exclusive prefix sum of a vec2<u32> over the invocations of a workgroup of WG_SIZE (a power
// of two the including kernel defines), Hillis-Steele in workgroup memory: log2(WG_SIZE)
// steps. Used for ordered compaction: invocation t learns how many selected elements come
// before its own, so the output keeps the input's order.

var<workgroup> sh_scan: array<vec2<u32>, WG_SIZE>;

// Returns the sum of `value` over invocations 0..index (exclusive); `workgroup_scan_total`
// gives the sum over all invocations afterwards. Must be called in uniform control flow.
fn workgroup_scan_exclusive(value: vec2<u32>, index: u32) -> vec2<u32> {
    sh_scan[index] = value;
    workgroupBarrier();
    for (var offset = 1u; offset < WG_SIZE; offset = offset * 2u) {
        var add = vec2(0u);
        if index >= offset {
            add = sh_scan[index - offset];
        }
        workgroupBarrier();
        sh_scan[index] = sh_scan[index] + add;
        workgroupBarrier();
    }
    return sh_scan[index] - value;
}

// The total of the last `workgroup_scan_exclusive` (uniform across the workgroup).
fn workgroup_scan_total() -> vec2<u32> {
    return workgroupUniformLoad(&sh_scan[WG_SIZE - 1u]);
}
