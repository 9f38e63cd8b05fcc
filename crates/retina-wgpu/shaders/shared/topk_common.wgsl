// Declarations shared by the top-k kernels (radix select + ordered compaction over contiguous
// segments of an f32 array). src/gpu/topk.rs fills the tables; the structs must stay in sync
// with `TopkConfig`, `SegmentGpu` and `SelectState` there. Kernels over tiles also include
// shared/topk_tiles.wgsl.
//
// A segment is a contiguous range of the key array with its own k; it is cut into tiles of TILE
// elements, numbered consecutively over all segments (`first_tile`). Keys are
// ordered_key(value) (shared/sort_keys.wgsl), or 0 for values excluded by the threshold and for
// NaN: key 0 is never selected.

struct Config {
    // Tiles of this dispatch: first_tile .. first_tile + n_tiles.
    first_tile: u32,
    n_tiles: u32,
    num_segments: u32,
    // Element `e` of the key array is keys[e - key_offset] in this dispatch's binding.
    key_offset: u32,
    // Radix pass: the digit is (key >> shift) & 255.
    shift: u32,
    flags: u32,
    threshold: f32,
    // FLAG_LISTED, FLAG_APPEND: where this dispatch's window keeps its list of live tiles in
    // `live` (the count, then the tiles), and (topk_list_args.wgsl) which indirect arguments
    // it sizes, folded at grid_width workgroups per dimension.
    list_offset: u32,
    args_index: u32,
    grid_width: u32,
    _pad0: u32,
    _pad1: u32,
}

struct Segment {
    start: u32,
    len: u32,
    k: u32,
    first_tile: u32,
    out_offset: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

struct SelectState {
    // Known high bits of the k-th largest key, and which bits are known.
    prefix: u32,
    mask: u32,
    // How many of the k remain to be found among keys matching the prefix.
    remaining: u32,
    // Keys above the prefix range, already counted.
    greater: u32,
    done: u32,
    // Once done: select keys > threshold, plus the first need_eq keys == threshold.
    threshold: u32,
    need_eq: u32,
    selected: u32,
}

const WG_SIZE: u32 = 256u;
const ELEMS_PER_THREAD: u32 = 4u;
const TILE: u32 = WG_SIZE * ELEMS_PER_THREAD;
const FLAG_THRESHOLD: u32 = 1u;
// The workgroups take the tiles of the window's list of live tiles (an indirect dispatch), not
// first_tile + their index.
const FLAG_LISTED: u32 = 2u;
// The first histogram pass: each tile with a key at or above the (empty) prefix's range
// appends itself to the window's list.
const FLAG_APPEND: u32 = 4u;
// No tile: a listed workgroup past the list's end.
const NO_TILE: u32 = 0xffffffffu;

fn key_of(value: f32) -> u32 {
    if (cfg.flags & FLAG_THRESHOLD) != 0u && !(value > cfg.threshold) {
        return 0u;
    }
    return ordered_key(value);
}
