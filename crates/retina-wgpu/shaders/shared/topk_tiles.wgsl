// For top-k kernels that run one workgroup per tile: which segment a tile belongs to. Needs the
// including kernel's `cfg` and `segments` bindings (shared/topk_common.wgsl).

// The segment that owns `tile` (binary search over first_tile).
fn find_segment(tile: u32) -> u32 {
    var lo = 0u;
    var hi = cfg.num_segments - 1u;
    while lo < hi {
        let mid = (lo + hi + 1u) / 2u;
        if segments[mid].first_tile <= tile {
            lo = mid;
        } else {
            hi = mid - 1u;
        }
    }
    return lo;
}

