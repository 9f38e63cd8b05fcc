// Order-preserving maps between f32 and u32, shared by the sort, top-k and NMS kernels.
// src/cpu/sort.rs is the CPU twin.

// Maps a float to a u32 whose unsigned order is the float order (-inf lowest, +inf highest),
// and NaN to 0, below every number, so that "larger key" means "better score" and NaN is
// never selected.
fn ordered_key(x: f32) -> u32 {
    let u = bitcast<u32>(x);
    if (u & 0x7fffffffu) > 0x7f800000u {
        return 0u;
    }
    return select(u | 0x80000000u, ~u, (u & 0x80000000u) != 0u);
}

// Inverse of ordered_key for non-NaN keys (key 0 comes back as NaN).
fn key_to_float(k: u32) -> f32 {
    if k == 0u {
        // `k | ...` rather than the literal: WebGPU compilers (Tint) reject a constant
        // expression whose value is NaN; here k is 0, so this is the quiet NaN 0x7fc00000.
        return bitcast<f32>(k | 0x7fc00000u);
    }
    return bitcast<f32>(select(~k, k & 0x7fffffffu, (k & 0x80000000u) != 0u));
}

// A sort entry: (segment, descending key, tie-break, payload), ordered lexicographically on the
// first three. The descending key is ~ordered_key(score), so the best score comes first and NaN
// last; padding entries carry 0xffffffff keys and sort after everything in their segment.
fn entry_less(a: vec4<u32>, b: vec4<u32>) -> bool {
    if a.x != b.x {
        return a.x < b.x;
    }
    if a.y != b.y {
        return a.y < b.y;
    }
    return a.z < b.z;
}
