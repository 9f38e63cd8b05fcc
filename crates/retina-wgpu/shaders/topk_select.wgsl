// Top-k by radix select, select pass: one workgroup per segment reads its 256-bin histogram
// (and clears it for the next pass), and finds the digit that holds the k-th largest key:
// bins above it are all selected, the search continues inside it. When the keys that match the
// prefix are no more than those still needed, all of them are selected and the segment is done;
// after the last digit the k-th key is known exactly, with how many of its ties to take.

//#include "shared/sort_keys.wgsl"
//#include "shared/topk_common.wgsl"

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read_write> states: array<SelectState>;
@group(0) @binding(2) var<storage, read_write> histogram: array<u32>;

// Suffix sums: sh_above[d] = keys in bins > d.
var<workgroup> sh_suffix: array<u32, 256>;
// The segment's `done` flag, read once for the whole workgroup (a value every invocation
// provably shares, as the barriers below require).
var<workgroup> sh_done: u32;

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let seg = wg.x + wg.y * num_wg.x;
    if seg >= cfg.num_segments {
        return;
    }
    let state = states[seg];
    if lid == 0u {
        sh_done = state.done;
    }
    if workgroupUniformLoad(&sh_done) != 0u {
        return;
    }
    let count = histogram[seg * 256u + lid];
    histogram[seg * 256u + lid] = 0u;
    // Inclusive scan over bins from the top: sh_suffix[d] = keys in bins >= d.
    sh_suffix[255u - lid] = count;
    workgroupBarrier();
    for (var offset = 1u; offset < 256u; offset = offset * 2u) {
        var add = 0u;
        if lid >= offset {
            add = sh_suffix[lid - offset];
        }
        workgroupBarrier();
        sh_suffix[lid] = sh_suffix[lid] + add;
        workgroupBarrier();
    }
    let at_or_above = sh_suffix[255u - lid];
    let above = at_or_above - count;
    let total = sh_suffix[255u];
    let last = cfg.shift == 0u;
    if total <= state.remaining {
        // Everything that matches the prefix is in: select keys >= prefix (key 0 never).
        if lid == 0u {
            var s = state;
            s.greater = state.greater + total;
            s.threshold = max(state.prefix, 1u) - 1u;
            s.need_eq = 0u;
            s.done = 1u;
            states[seg] = s;
        }
    } else if above < state.remaining && at_or_above >= state.remaining {
        var s = state;
        s.prefix = state.prefix | (lid << cfg.shift);
        s.mask = state.mask | (255u << cfg.shift);
        s.greater = state.greater + above;
        s.remaining = state.remaining - above;
        if last {
            s.threshold = s.prefix;
            s.need_eq = s.remaining;
            s.done = 1u;
        }
        states[seg] = s;
    }
}
