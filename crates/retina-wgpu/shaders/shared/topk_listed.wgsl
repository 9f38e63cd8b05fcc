// For top-k kernels that read the window's list of live tiles (topk_count.wgsl,
// topk_gather.wgsl): the tile of the dispatch's `local`-th workgroup, first_tile + local, or with
// FLAG_LISTED the local-th tile of the list (an indirect dispatch sized by
// topk_list_args.wgsl); NO_TILE past the end. Needs the including kernel's `cfg` and a
// `live: array<u32>` binding (the list's count at list_offset, its tiles after it).

fn tile_of(local: u32) -> u32 {
    if (cfg.flags & FLAG_LISTED) != 0u {
        if local >= live[cfg.list_offset] {
            return NO_TILE;
        }
        return live[cfg.list_offset + 1u + local];
    }
    if local >= cfg.n_tiles {
        return NO_TILE;
    }
    return cfg.first_tile + local;
}
