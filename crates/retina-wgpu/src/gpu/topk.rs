//! Dispatch of the segmented top-k (`shaders/topk_*.wgsl`): radix select of each segment's k-th
//! largest key in four 8-bit passes, then an ordered compaction that writes the selected
//! elements in index order (ties at the k-th key resolved towards lower indices).

use crate::error::{Error, Result};
use crate::gpu::buffer::GpuBuffer;
use crate::gpu::context::{DeviceLimits, GpuContext};
use crate::gpu::dispatch::{Bind, Dispatches, binds, storage_window, whole};
use crate::gpu::kernels::Kernel;

/// Elements per tile (`TILE` in shaders/shared/topk_common.wgsl).
const TILE: u64 = 1024;
const FLAG_THRESHOLD: u32 = 1;
/// The dispatch takes the tiles of its window's list of live tiles (indirect).
const FLAG_LISTED: u32 = 2;
/// The first histogram pass: live tiles append themselves to their window's list.
const FLAG_APPEND: u32 = 4;

/// Must stay in sync with `Config` in shaders/shared/topk_common.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct TopkConfig {
    pub(crate) first_tile: u32,
    pub(crate) n_tiles: u32,
    pub(crate) num_segments: u32,
    pub(crate) key_offset: u32,
    pub(crate) shift: u32,
    pub(crate) flags: u32,
    pub(crate) threshold: f32,
    pub(crate) list_offset: u32,
    pub(crate) args_index: u32,
    pub(crate) grid_width: u32,
    pub(crate) _pad0: u32,
    pub(crate) _pad1: u32,
}

/// Must stay in sync with `Segment` in shaders/shared/topk_common.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct SegmentGpu {
    pub(crate) start: u32,
    pub(crate) len: u32,
    pub(crate) k: u32,
    pub(crate) first_tile: u32,
    pub(crate) out_offset: u32,
    pub(crate) _pad: [u32; 3],
}

/// Must stay in sync with `SelectState` in shaders/shared/topk_common.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct SelectState {
    pub(crate) prefix: u32,
    pub(crate) mask: u32,
    pub(crate) remaining: u32,
    pub(crate) greater: u32,
    pub(crate) done: u32,
    pub(crate) threshold: u32,
    pub(crate) need_eq: u32,
    pub(crate) selected: u32,
}

/// One segment of a top-k: `len` elements from `start`, of which the `k` largest are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopkSegment {
    /// First element.
    pub start: usize,
    /// Number of elements.
    pub len: usize,
    /// How many to select (at most `len`; fewer when fewer pass the threshold).
    pub k: usize,
}

/// Where [`GpuContext::record_top_k`] writes.
#[derive(Debug)]
pub struct TopkOutput {
    /// Segment `s`'s selected elements at `s * stride ..`, as `[ordered key, index within the
    /// segment]`, in index order (not sorted by value).
    pub candidates: GpuBuffer<[u32; 2]>,
    /// How many each segment selected.
    pub selected: GpuBuffer<u32>,
    /// Slots reserved per segment in `candidates` (the largest k).
    pub stride: usize,
}

/// Segments grouped into dispatches whose key range fits one binding.
struct TopkChunk {
    first_tile: u32,
    n_tiles: u32,
    key_start: u64,
    key_len: u64,
}

/// The device's per-segment table and the radix selection's initial states, and the number of
/// key tiles in all; checks that every segment fits `values_len` values and 2^32 indices.
fn segment_table(
    values_len: usize,
    segments: &[TopkSegment],
    stride: usize,
) -> Result<(Vec<SegmentGpu>, Vec<SelectState>, u64)> {
    if u32::try_from(segments.len()).is_err() {
        return Err(Error::invalid(format!(
            "top-k: {} segments exceed 2^32",
            segments.len()
        )));
    }
    let mut table = Vec::with_capacity(segments.len());
    let mut states = Vec::with_capacity(segments.len());
    let mut tiles = 0u64;
    for (i, s) in segments.iter().enumerate() {
        let end = s.start.checked_add(s.len);
        if s.k > s.len || end.is_none_or(|end| end > values_len) {
            return Err(Error::shape(
                "top-k",
                format!("segment {i} ({s:?}) does not fit {values_len} values, or k > len"),
            ));
        }
        let out_end = i.checked_mul(stride).and_then(|o| o.checked_add(stride));
        if u32::try_from(s.start + s.len).is_err() || out_end.is_none_or(|e| u32::try_from(e).is_err()) {
            return Err(Error::invalid(format!(
                "top-k: segment {i} ({s:?}) reaches past 2^32 elements (input or output)"
            )));
        }
        table.push(SegmentGpu {
            start: s.start as u32,
            len: s.len as u32,
            k: s.k as u32,
            first_tile: tiles as u32,
            out_offset: (i * stride) as u32,
            _pad: [0; 3],
        });
        states.push(SelectState {
            prefix: 0,
            mask: 0,
            remaining: s.k as u32,
            greater: 0,
            done: u32::from(s.k == 0),
            threshold: if s.k == 0 { u32::MAX } else { 0 },
            need_eq: 0,
            selected: 0,
        });
        tiles += (s.len as u64).div_ceil(TILE).max(1);
    }
    Ok((table, states, tiles))
}

/// Groups consecutive segments into dispatches whose keys fit one storage binding (less the
/// offset alignment a window may add) and whose tiles fit the folded grid.
fn key_windows(limits: &DeviceLimits, segments: &[TopkSegment], table: &[SegmentGpu]) -> Result<Vec<TopkChunk>> {
    let room = limits
        .max_storage_binding
        .saturating_sub(limits.storage_offset_alignment)
        / 4;
    let max_tiles = u64::from(limits.max_workgroups_per_dim).pow(2);
    let mut chunks: Vec<TopkChunk> = Vec::new();
    for (s, seg) in segments.iter().zip(table) {
        let seg_tiles = (s.len as u64).div_ceil(TILE).max(1);
        if s.len as u64 > room || seg_tiles > max_tiles {
            return Err(Error::invalid(format!(
                "top-k: a segment of {} values exceeds the device's storage binding limit",
                s.len
            )));
        }
        let extend = chunks.last().is_some_and(|c| {
            c.key_start + room >= (s.start + s.len) as u64
                && (s.start as u64) >= c.key_start
                && u64::from(c.n_tiles) + seg_tiles <= max_tiles
        });
        if extend {
            let c = chunks.last_mut().expect("checked above");
            c.n_tiles += seg_tiles as u32;
            c.key_len = c.key_len.max((s.start + s.len) as u64 - c.key_start);
        } else {
            chunks.push(TopkChunk {
                first_tile: seg.first_tile,
                n_tiles: seg_tiles as u32,
                key_start: s.start as u64,
                key_len: s.len as u64,
            });
        }
    }
    Ok(chunks)
}

/// The device buffers of one top-k recording.
struct TopkState<'a> {
    values: &'a GpuBuffer<f32>,
    table: GpuBuffer<SegmentGpu>,
    states: GpuBuffer<SelectState>,
    histogram: GpuBuffer<u32>,
    tile_counts: GpuBuffer<[u32; 2]>,
    /// Per tile, 1 once a histogram pass found every key of the tile below its segment's
    /// prefix range (or excluded): no later pass can select from it, and they skip it.
    tile_dead: GpuBuffer<u32>,
    /// Per key window, its list of live tiles after the first histogram pass: the count at the
    /// window's first tile + its index, then the tiles (see `topk_list_args.wgsl`).
    live: GpuBuffer<u32>,
    /// Per key window, the indirect dispatch arguments of its later passes (x, y, z).
    args: GpuBuffer<u32>,
}

impl GpuContext {
    /// Records the top-k of every segment of `values`: the `k` largest values of each segment
    /// that are not NaN and, with `threshold`, greater than it. Values are compared through
    /// their order-preserving u32 keys (see `shaders/shared/sort_keys.wgsl`), so `-0.0 < 0.0`.
    /// Segments must each fit one storage binding.
    pub fn record_top_k(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        values: &GpuBuffer<f32>,
        segments: &[TopkSegment],
        threshold: Option<f32>,
    ) -> Result<TopkOutput> {
        self.check_buffer("GpuContext::record_top_k", "values", values)?;
        let limits = self.limits();
        let stride = segments.iter().map(|s| s.k).max().unwrap_or(0).max(1);
        let (table, states, tiles) = segment_table(values.len(), segments, stride)?;
        let out = TopkOutput {
            candidates: self.zeros::<[u32; 2]>(segments.len() * stride)?,
            selected: self.zeros::<u32>(segments.len())?,
            stride,
        };
        if segments.is_empty() {
            return Ok(out);
        }
        let chunks = key_windows(limits, segments, &table)?;
        let (flags, threshold) = match threshold {
            Some(t) => (FLAG_THRESHOLD, t),
            None => (0, 0.0),
        };
        let base = TopkConfig {
            num_segments: segments.len() as u32,
            flags,
            threshold,
            ..Default::default()
        };
        self.scoped(|| {
            // The kernels write the selection's states: they start each recording from a copy
            // of the initial states, never from the uploaded buffer itself (on a prepared
            // object's context an upload is a constant the next frame reuses as it is).
            let initial = self.upload(&states)?;
            let working = self.zeros::<SelectState>(states.len())?;
            encoder.copy_buffer_to_buffer(
                initial.buffer(),
                0,
                working.buffer(),
                0,
                (states.len() * std::mem::size_of::<SelectState>()) as u64,
            );
            let state = TopkState {
                values,
                table: self.upload(&table)?,
                states: working,
                histogram: self.zeros::<u32>(segments.len() * 256)?,
                tile_counts: self.zeros::<[u32; 2]>(tiles as usize)?,
                tile_dead: self.zeros::<u32>(tiles as usize)?,
                live: self.zeros::<u32>(tiles as usize + chunks.len())?,
                args: self.zeros_with_usage::<u32>(LIST_ARGS_WORDS * chunks.len(), wgpu::BufferUsages::INDIRECT)?,
            };
            self.record_topk_steps(encoder, &state, &chunks, base, &out)
        })?;
        Ok(out)
    }

    /// Records the radix selection (four 8-bit passes of histogram per key window, then one
    /// select per segment), then the compaction (count per tile, scan, gather) into `out`.
    fn record_topk_steps(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        state: &TopkState<'_>,
        chunks: &[TopkChunk],
        base: TopkConfig,
        out: &TopkOutput,
    ) -> Result<()> {
        let limits = self.limits();
        let windows: Vec<_> = chunks
            .iter()
            .enumerate()
            .map(|(w, c)| {
                let (keys, first) = storage_window(limits, state.values.buffer(), c.key_start, c.key_len, 4);
                let config = TopkConfig {
                    first_tile: c.first_tile,
                    n_tiles: c.n_tiles,
                    key_offset: (c.key_start - u64::from(first)) as u32,
                    list_offset: c.first_tile + w as u32,
                    args_index: w as u32,
                    grid_width: limits.max_workgroups_per_dim,
                    ..base
                };
                (keys, config, u64::from(c.n_tiles))
            })
            .collect();
        let num_segments = u64::from(base.num_segments);
        let mut list = Dispatches::new(self, "top-k");
        // The first pass visits every tile and lists those that stay live; the later passes,
        // the count and the gather visit the list only (one indirect dispatch per window).
        for shift in [24, 16, 8, 0] {
            for (w, (keys, config, tiles)) in windows.iter().enumerate() {
                let config = TopkConfig { shift, ..*config };
                let bindings = binds![
                    keys = keys.clone(),
                    segments = whole(&state.table),
                    states = whole(&state.states),
                    histogram = whole(&state.histogram),
                    tile_dead = whole(&state.tile_dead),
                    live = whole(&state.live),
                ];
                if shift == 24 {
                    let config = TopkConfig {
                        flags: config.flags | FLAG_APPEND,
                        ..config
                    };
                    list.push(Kernel::TopkHistogram, &config, bindings, *tiles)?;
                    let bindings = binds![live = whole(&state.live), args = whole(&state.args)];
                    list.push(Kernel::TopkListArgs, &config, bindings, 1)?;
                } else {
                    push_listed(&mut list, Kernel::TopkHistogram, &config, bindings, &state.args, w)?;
                }
            }
            let bindings = binds![states = whole(&state.states), histogram = whole(&state.histogram)];
            list.push(
                Kernel::TopkSelect,
                &TopkConfig { shift, ..base },
                bindings,
                num_segments,
            )?;
        }
        for (w, (keys, config, _)) in windows.iter().enumerate() {
            let bindings = binds![
                keys = keys.clone(),
                segments = whole(&state.table),
                states = whole(&state.states),
                tile_counts = whole(&state.tile_counts),
                tile_dead = whole(&state.tile_dead),
                live = whole(&state.live),
            ];
            push_listed(&mut list, Kernel::TopkCount, config, bindings, &state.args, w)?;
        }
        let bindings = binds![
            segments = whole(&state.table),
            states = whole(&state.states),
            tile_counts = whole(&state.tile_counts),
            selected = whole(&out.selected),
        ];
        list.push(Kernel::TopkScan, &base, bindings, num_segments)?;
        for (w, (keys, config, _)) in windows.iter().enumerate() {
            let bindings = binds![
                keys = keys.clone(),
                segments = whole(&state.table),
                states = whole(&state.states),
                tile_offsets = whole(&state.tile_counts),
                candidates = whole(&out.candidates),
                tile_dead = whole(&state.tile_dead),
                live = whole(&state.live),
            ];
            push_listed(&mut list, Kernel::TopkGather, config, bindings, &state.args, w)?;
        }
        list.record(self, encoder)
    }
}

/// Words of one window's indirect arguments in the top-k's `args` (x, y, z workgroups), written
/// by `topk_list_args.wgsl` at `3 * args_index`.
const LIST_ARGS_WORDS: usize = 3;

/// Pushes `kernel` over window `window`'s list of live tiles: `config` with [`FLAG_LISTED`], its
/// grid read from that window's arguments in `args`.
fn push_listed<'a>(
    list: &mut Dispatches<'a>,
    kernel: Kernel,
    config: &TopkConfig,
    bindings: Vec<Bind<'a>>,
    args: &'a GpuBuffer<u32>,
    window: usize,
) -> Result<()> {
    let config = TopkConfig {
        flags: config.flags | FLAG_LISTED,
        ..*config
    };
    list.push_indirect(
        kernel,
        &config,
        bindings,
        args.buffer(),
        (4 * LIST_ARGS_WORDS * window) as u64,
    )
}
