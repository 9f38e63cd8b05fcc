//! Dispatch of NMS (`shaders/nms_*.wgsl`, `keep_compact.wgsl`, `keep_map.wgsl`): on boxes
//! already sorted by score into per-segment regions, and end to end from unsorted boxes.

use crate::error::{Error, Result};
use crate::gpu::boxes::check_whole_binding;
use crate::gpu::buffer::{GpuBuffer, Readback};
use crate::gpu::context::GpuContext;
use crate::gpu::dispatch::{Dispatches, binds, whole};
use crate::gpu::kernels::{Kernel, LOOP_BUDGET, WG_SIZE};
use crate::gpu::postprocess::GpuDetection;
use crate::gpu::sort::{SortEntry, sort_len};
use crate::ops::nms::{Nms, NmsKind, NmsOutput};

const FLAG_GAUSSIAN: u32 = 2;
const FLAG_FROM_ENTRIES: u32 = 4;
/// Most bytes of suppression mask held at once; larger inputs take several row passes.
const MASK_BUDGET: u64 = 256 << 20;
/// Most rows of the suppression mask per pass: each pass's mask skips the rows and columns the
/// passes before it suppressed, so shorter passes skip more of a large input's pairs, for two
/// dispatches a pass.
const BAND_ROWS: u64 = 1024;
/// Greedy NMS takes the spatial path (`nms_spatial_*.wgsl`, `nms_mask_spatial.wgsl`) from
/// regions of this size: below it, the extra sort costs more than the IoUs it saves.
const SPATIAL_MIN_REGION: usize = 2048;
/// Loop iterations `nms_mask_spatial.wgsl` spends on one block of 256 boxes at most: its
/// bounds, 8 tiles' bounds and 256 boxes.
const SPATIAL_BLOCK_ITERATIONS: u64 = 1 + 8 + 256;

/// Whether greedy NMS over regions of `region` slots takes the spatial path: from
/// [`SPATIAL_MIN_REGION`], while a row's words leave room in the loop budget.
fn spatial_for(region: usize) -> bool {
    region >= SPATIAL_MIN_REGION && (region as u64 / 32) * 2 < LOOP_BUDGET
}

/// The spatial path's device data (see [`GpuContext::record_spatial_tiles`]).
struct SpatialTiles {
    /// Each segment's boxes in class and Z order.
    tiled: GpuBuffer<TiledBox>,
    /// Bounds of every 32 of them, then of every 256.
    bounds: GpuBuffer<[f32; 4]>,
    /// The rows of each pass in class and Z order.
    rows_order: GpuBuffer<SortEntry>,
}

/// How greedy NMS finds its suppression mask.
enum MaskPath {
    /// Every later box of each row (`nms_mask.wgsl`), on a grid per band that
    /// `nms_mask_args.wgsl` sizes from the counts: `args` holds each band's indirect dispatch
    /// arguments, `layout` its workgroups per segment and words.
    Dense {
        args: GpuBuffer<u32>,
        layout: GpuBuffer<[u32; 2]>,
    },
    /// The boxes near each row's box (`nms_mask_spatial.wgsl`).
    Spatial(SpatialTiles),
}

/// A box in the spatial path's tile order: `Tiled` in `shaders/nms_spatial_tiles.wgsl`
/// (the box, its slot in score order, its class, padding).
type TiledBox = [u32; 8];

/// Must stay in sync with `Config` in shaders/shared/nms_common.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct NmsConfig {
    pub(crate) region: u32,
    pub(crate) words: u32,
    pub(crate) row_begin: u32,
    pub(crate) row_end: u32,
    pub(crate) num_segments: u32,
    pub(crate) groups_per_segment: u32,
    pub(crate) max_out: u32,
    pub(crate) flags: u32,
    pub(crate) iou_threshold: f32,
    pub(crate) score_threshold: f32,
    pub(crate) sigma: f32,
    pub(crate) block_begin: u32,
    pub(crate) block_end: u32,
    pub(crate) band_rows: u32,
    pub(crate) grid_width: u32,
    pub(crate) _pad2: u32,
}

/// Must stay in sync with `Config` in shaders/sort_permute.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct PermuteConfig {
    pub(crate) total: u32,
    pub(crate) region: u32,
    pub(crate) _pad: [u32; 2],
}

/// Must stay in sync with `Config` in shaders/sort_entries_init.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct EntriesConfig {
    pub(crate) n: u32,
    pub(crate) total: u32,
    pub(crate) _pad: [u32; 2],
}

/// Must stay in sync with `Config` in shaders/keep_map.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct MapConfig {
    pub(crate) num_segments: u32,
    pub(crate) region: u32,
    pub(crate) max_out: u32,
    pub(crate) _pad: u32,
}

/// Boxes sorted by decreasing score into `segments` regions of `region` slots (a power of two,
/// at least 256); `counts[s]` valid boxes lead region `s`.
pub(crate) struct SortedBoxes {
    pub boxes: GpuBuffer<[f32; 4]>,
    pub classes: GpuBuffer<i32>,
    pub scores: GpuBuffer<f32>,
    pub payload: GpuBuffer<u32>,
    pub counts: GpuBuffer<u32>,
    pub region: usize,
    pub segments: usize,
}

/// What NMS kept, per segment: `keep[s * max_out + d]` is the slot (in score order) of the
/// d-th kept box, `keep_scores` its (decayed) score, `kept[s]` how many (max_out as passed to
/// `record_nms_sorted`).
pub(crate) struct KeptSlots {
    pub keep: GpuBuffer<u32>,
    pub keep_scores: GpuBuffer<f32>,
    pub kept: GpuBuffer<u32>,
}

/// The region size for segments of up to `n` boxes.
pub(crate) fn region_for(n: usize) -> usize {
    n.next_power_of_two().max(WG_SIZE as usize)
}

impl GpuContext {
    /// Gathers boxes, classes and scores into sorted order from sorted `entries` (one region of
    /// `region` entries per segment; payloads index `records`) and counts each segment's valid
    /// entries.
    pub(crate) fn record_permute(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        entries: &GpuBuffer<SortEntry>,
        records: &GpuBuffer<GpuDetection>,
        region: usize,
        segments: usize,
    ) -> Result<SortedBoxes> {
        let total = region * segments;
        let sorted = SortedBoxes {
            boxes: self.zeros(total)?,
            classes: self.zeros(total)?,
            scores: self.zeros(total)?,
            payload: self.zeros(total)?,
            counts: self.zeros(segments)?,
            region,
            segments,
        };
        for (what, bytes) in [("boxes", sorted.boxes.byte_len()), ("sort entries", entries.byte_len())] {
            check_whole_binding(self, what, bytes)?;
        }
        let config = PermuteConfig {
            total: total as u32,
            region: region as u32,
            _pad: [0; 2],
        };
        let bindings = binds![
            entries = whole(entries),
            records = whole(records),
            sorted_boxes = whole(&sorted.boxes),
            sorted_classes = whole(&sorted.classes),
            sorted_scores = whole(&sorted.scores),
            sorted_payload = whole(&sorted.payload),
            counts = whole(&sorted.counts),
        ];
        self.record_dispatch(
            encoder,
            Kernel::SortPermute,
            &config,
            bindings,
            (total as u64).div_ceil(WG_SIZE),
        )?;
        Ok(sorted)
    }

    /// Records `nms` over boxes already sorted into regions; returns the kept slots. Boxes
    /// interact only within a class; class-agnostic callers pass all-zero classes. `filled`
    /// says that the regions are (nearly) full of boxes, as when every input box is valid: then
    /// greedy NMS over large regions takes the spatial path, whose sorts cost as much for an
    /// empty slot as for a box. Callers whose regions are capacities that a score threshold
    /// leaves mostly empty (the detectors' post-processing) pass false: the dense mask stops
    /// at each region's count.
    pub(crate) fn record_nms_sorted(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        nms: &Nms,
        sorted: &SortedBoxes,
        max_out: usize,
        filled: bool,
    ) -> Result<KeptSlots> {
        let (region, segments) = (sorted.region, sorted.segments);
        let out = KeptSlots {
            keep: self.zeros(segments * max_out)?,
            keep_scores: self.zeros(segments * max_out)?,
            kept: self.zeros(segments)?,
        };
        let base = NmsConfig {
            region: region as u32,
            words: (region / 32) as u32,
            row_begin: 0,
            row_end: region as u32,
            num_segments: segments as u32,
            groups_per_segment: (region as u64).div_ceil(WG_SIZE) as u32,
            max_out: max_out as u32,
            flags: 0,
            iou_threshold: nms.iou_threshold,
            score_threshold: nms.score_threshold,
            sigma: 1.0,
            block_begin: 0,
            block_end: 0,
            band_rows: 0,
            grid_width: self.limits().max_workgroups_per_dim,
            _pad2: 0,
        };
        self.scoped(|| match nms.kind {
            NmsKind::Hard => {
                let spatial = filled && spatial_for(sorted.region);
                self.record_hard_nms(encoder, sorted, base, &out, spatial)
            }
            NmsKind::SoftLinear => self.record_soft_nms(encoder, sorted, base, &out),
            NmsKind::SoftGaussian { sigma } => {
                let base = NmsConfig {
                    flags: FLAG_GAUSSIAN,
                    sigma,
                    ..base
                };
                self.record_soft_nms(encoder, sorted, base, &out)
            }
            NmsKind::Fast => self.record_fast_matrix_nms(encoder, sorted, base, false, &out),
            NmsKind::Matrix { gaussian_sigma } => {
                let base = match gaussian_sigma {
                    Some(sigma) => NmsConfig {
                        flags: FLAG_GAUSSIAN,
                        sigma,
                        ..base
                    },
                    None => base,
                };
                self.record_fast_matrix_nms(encoder, sorted, base, true, &out)
            }
        })?;
        Ok(out)
    }

    /// torchvision's greedy NMS: the suppression bitmask over the upper triangle, a band of
    /// rows at a time (at most [`BAND_ROWS`]; its bytes and the walk's loop budget bound it
    /// too), each band followed by the walk that keeps boxes in score order until `max_out`.
    /// A band's mask skips the rows and columns the bands before it removed. With `spatial`,
    /// the mask is found from the boxes near each row's box instead of from every later box
    /// ([`Self::record_spatial_tiles`]): the same keep list, far fewer IoUs at large N.
    fn record_hard_nms(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        sorted: &SortedBoxes,
        base: NmsConfig,
        out: &KeptSlots,
        spatial: bool,
    ) -> Result<()> {
        let limits = self.limits();
        let (region, segments) = (sorted.region as u64, sorted.segments as u64);
        let words = u64::from(base.words);
        let row_bytes = segments * words * 4;
        let budget = limits.max_storage_binding.min(MASK_BUDGET);
        // The walk's iterations per 32 rows: 32 diagonal steps, then per later word slice
        // (words / 256 per invocation) one step per kept row (at most 32) + 1.
        let walk_rows = LOOP_BUDGET * 32 / (32 + words.div_ceil(WG_SIZE) * 33);
        let rows = ((budget / row_bytes).min(walk_rows).min(BAND_ROWS) / WG_SIZE * WG_SIZE)
            .max(WG_SIZE)
            .min(region);
        if rows * row_bytes > limits.max_storage_binding {
            return Err(Error::invalid(format!(
                "NMS: 256 rows of suppression mask ({row_bytes} bytes each) exceed the binding limit"
            )));
        }
        // Blocks of 256 boxes one spatial dispatch visits: the first also zeroes its rows.
        let blocks_per_dispatch = (LOOP_BUDGET.saturating_sub(words) / SPATIAL_BLOCK_ITERATIONS).max(1);
        let mask = self.zeros::<u32>((rows * row_bytes / 4) as usize)?;
        let removed = self.zeros::<u32>((segments * words) as usize)?;
        let done = self.zeros::<u32>(segments as usize)?;
        let bands = region.div_ceil(rows);
        let base = NmsConfig {
            band_rows: rows as u32,
            ..base
        };
        // The dense mask's grid, per band, from the counts on the device (nms_mask_args.wgsl):
        // a region is a capacity that a detector's candidates mostly leave empty.
        let path = if spatial {
            MaskPath::Spatial(self.record_spatial_tiles(encoder, sorted, base)?)
        } else {
            let capacity = segments * (rows / WG_SIZE) * words;
            if u32::try_from(capacity).is_err() {
                return Err(Error::invalid(format!(
                    "NMS: {segments} segments of {region} boxes need a grid of {capacity} workgroups per \
                     band (more than 2^32); split the input"
                )));
            }
            let args = self.zeros_with_usage::<u32>(3 * bands as usize, wgpu::BufferUsages::INDIRECT)?;
            let layout = self.zeros::<[u32; 2]>(bands as usize)?;
            MaskPath::Dense { args, layout }
        };
        let mut list = Dispatches::new(self, "nms");
        if let MaskPath::Dense { args, layout } = &path {
            let bindings = binds![
                counts = whole(&sorted.counts),
                args = whole(args),
                band_layout = whole(layout),
            ];
            list.push(Kernel::NmsMaskArgs, &base, bindings, 1)?;
        }
        let mut begin = 0u64;
        while begin < region {
            let end = (begin + rows).min(region);
            let row_tiles = (end - begin).div_ceil(WG_SIZE);
            let config = NmsConfig {
                row_begin: begin as u32,
                row_end: end as u32,
                ..base
            };
            match &path {
                MaskPath::Dense { args, layout } => {
                    let bindings = binds![
                        boxes = whole(&sorted.boxes),
                        classes = whole(&sorted.classes),
                        counts = whole(&sorted.counts),
                        done = whole(&done),
                        mask = whole(&mask),
                        removed = whole(&removed),
                        band_layout = whole(layout),
                    ];
                    list.push_indirect(Kernel::NmsMask, &config, bindings, args.buffer(), 12 * (begin / rows))?;
                }
                MaskPath::Spatial(SpatialTiles {
                    tiled,
                    bounds,
                    rows_order,
                }) => {
                    let blocks = region / WG_SIZE;
                    let mut block = 0;
                    while block < blocks {
                        let block_end = (block + blocks_per_dispatch).min(blocks);
                        let config = NmsConfig {
                            groups_per_segment: row_tiles as u32,
                            block_begin: block as u32,
                            block_end: block_end as u32,
                            ..config
                        };
                        let bindings = binds![
                            boxes = whole(&sorted.boxes),
                            rows_order = whole(rows_order),
                            counts = whole(&sorted.counts),
                            done = whole(&done),
                            removed = whole(&removed),
                            tiled = whole(tiled),
                            bounds = whole(bounds),
                            mask = whole(&mask),
                        ];
                        list.push(Kernel::NmsMaskSpatial, &config, bindings, segments * row_tiles)?;
                        block = block_end;
                    }
                }
            }
            let bindings = binds![
                mask = whole(&mask),
                counts = whole(&sorted.counts),
                removed = whole(&removed),
                kept = whole(&out.kept),
                done = whole(&done),
                keep = whole(&out.keep),
                scores = whole(&sorted.scores),
                keep_scores = whole(&out.keep_scores),
            ];
            list.push(Kernel::NmsGather, &config, bindings, segments)?;
            begin = end;
        }
        list.record(self, encoder)
    }

    /// The spatial path's tiles: each segment's valid boxes sorted by class and along a
    /// Z-order curve of their centres (`nms_spatial_keys.wgsl`, then the bitonic sort), written
    /// in that order with their score-order slots, and the bounds of every 32 and 256 of them
    /// (`nms_spatial_tiles.wgsl`); and the rows of each pass of `base.band_rows` rows in the
    /// same order, for the mask's invocations.
    fn record_spatial_tiles(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        sorted: &SortedBoxes,
        base: NmsConfig,
    ) -> Result<SpatialTiles> {
        let total = sorted.region * sorted.segments;
        let entries = self.zeros::<SortEntry>(sort_len(total))?;
        let rows_order = self.zeros::<SortEntry>(sort_len(total))?;
        let tiled = self.zeros::<TiledBox>(total)?;
        let bounds = self.zeros::<[f32; 4]>(total / 32 + total / WG_SIZE as usize)?;
        for (what, bytes) in [("sort entries", entries.byte_len()), ("tiled boxes", tiled.byte_len())] {
            check_whole_binding(self, what, bytes)?;
        }
        let bindings = binds![
            boxes = whole(&sorted.boxes),
            classes = whole(&sorted.classes),
            counts = whole(&sorted.counts),
            entries = whole(&entries),
            rows = whole(&rows_order),
        ];
        let workgroups = (entries.len() as u64).div_ceil(WG_SIZE);
        self.record_dispatch(encoder, Kernel::NmsSpatialKeys, &base, bindings, workgroups)?;
        self.record_sort_entries(encoder, &entries)?;
        self.record_sort_entries(encoder, &rows_order)?;
        let bindings = binds![
            entries = whole(&entries),
            boxes = whole(&sorted.boxes),
            classes = whole(&sorted.classes),
            counts = whole(&sorted.counts),
            tiled = whole(&tiled),
            bounds = whole(&bounds),
        ];
        let workgroups = total as u64 / WG_SIZE;
        self.record_dispatch(encoder, Kernel::NmsSpatialTiles, &base, bindings, workgroups)?;
        Ok(SpatialTiles {
            tiled,
            bounds,
            rows_order,
        })
    }

    /// Soft-NMS (linear, or Gaussian with `base.flags`): per pick, the highest remaining score
    /// is kept and the others decay; the picks split into dispatches of bounded work.
    fn record_soft_nms(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        sorted: &SortedBoxes,
        base: NmsConfig,
        out: &KeptSlots,
    ) -> Result<()> {
        let max_out = u64::from(base.max_out);
        // Each pick scans the region twice (argmax, decay) and reduces once.
        let picks = (LOOP_BUDGET / (2 * (sorted.region as u64).div_ceil(WG_SIZE) + 16)).max(1);
        let done = self.zeros::<u32>(sorted.segments)?;
        let mut list = Dispatches::new(self, "soft nms");
        let mut first = 0u64;
        while first < max_out {
            let end = (first + picks).min(max_out);
            let config = NmsConfig {
                row_begin: first as u32,
                row_end: end as u32,
                ..base
            };
            let bindings = binds![
                boxes = whole(&sorted.boxes),
                classes = whole(&sorted.classes),
                counts = whole(&sorted.counts),
                scores = whole(&sorted.scores),
                kept = whole(&out.kept),
                keep = whole(&out.keep),
                keep_scores = whole(&out.keep_scores),
                done = whole(&done),
            ];
            list.push(Kernel::NmsSoft, &config, bindings, sorted.segments as u64)?;
            first = end;
        }
        list.record(self, encoder)
    }

    /// Fast NMS (a box survives when its highest IoU with a higher-scoring box is under the
    /// threshold) and Matrix NMS (scores decayed by those IoUs, then re-sorted): the pairwise
    /// loops split into dispatches of bounded work, then one compaction into the kept slots.
    fn record_fast_matrix_nms(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        sorted: &SortedBoxes,
        base: NmsConfig,
        matrix: bool,
        out: &KeptSlots,
    ) -> Result<()> {
        let (region, segments) = (sorted.region, sorted.segments);
        let per_box_groups = segments as u64 * u64::from(base.groups_per_segment);
        let max_iou = self.zeros::<f32>(region * segments)?;
        let decays = self.zeros::<f32>(region * segments)?;
        let entries = self.zeros::<SortEntry>(sort_len(region * segments))?;
        if matrix {
            // Entries past the last region sort after everything: copied in the encoder from a
            // constant buffer (no queued write in a recording).
            let padding = vec![crate::gpu::sort::padding(u32::MAX); entries.len() - region * segments];
            if !padding.is_empty() {
                let constant = self.upload(&padding)?;
                encoder.copy_buffer_to_buffer(
                    constant.buffer(),
                    0,
                    entries.buffer(),
                    (region * segments * 16) as u64,
                    (padding.len() * 16) as u64,
                );
            }
        }
        // Pairwise loops: every invocation visits `span` higher-scoring boxes per dispatch.
        let span = (LOOP_BUDGET / WG_SIZE).max(1) * WG_SIZE;
        let mut ranges = Vec::new();
        let mut first = 0u64;
        while first < region as u64 {
            let end = (first + span).min(region as u64);
            ranges.push(NmsConfig {
                row_begin: first as u32,
                row_end: end as u32,
                ..base
            });
            first = end;
        }
        let mut list = Dispatches::new(self, "fast/matrix nms");
        for config in &ranges {
            let bindings = binds![
                boxes = whole(&sorted.boxes),
                classes = whole(&sorted.classes),
                counts = whole(&sorted.counts),
                max_iou = whole(&max_iou),
            ];
            list.push(Kernel::NmsMaxIou, config, bindings, per_box_groups)?;
        }
        if matrix {
            for config in &ranges {
                let bindings = binds![
                    boxes = whole(&sorted.boxes),
                    classes = whole(&sorted.classes),
                    counts = whole(&sorted.counts),
                    max_iou = whole(&max_iou),
                    scores = whole(&sorted.scores),
                    decays = whole(&decays),
                    entries = whole(&entries),
                ];
                list.push(Kernel::NmsMatrix, config, bindings, per_box_groups)?;
            }
        }
        list.record(self, encoder)?;
        if matrix {
            self.record_sort_entries(encoder, &entries)?;
        }
        let config = NmsConfig {
            flags: base.flags | if matrix { FLAG_FROM_ENTRIES } else { 0 },
            ..base
        };
        let bindings = binds![
            counts = whole(&sorted.counts),
            max_iou = whole(&max_iou),
            entries = whole(&entries),
            scores = whole(&sorted.scores),
            kept = whole(&out.kept),
            keep = whole(&out.keep),
            keep_scores = whole(&out.keep_scores),
        ];
        self.record_dispatch(encoder, Kernel::KeepCompact, &config, bindings, segments as u64)
    }

    /// Records `keep_map.wgsl`: the payloads (original indices) of the kept slots of `segments`
    /// segments, `max_out` per segment, into `out`.
    pub(crate) fn record_keep_map(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        sorted: &SortedBoxes,
        kept: &KeptSlots,
        max_out: usize,
        out: &GpuBuffer<u32>,
    ) -> Result<()> {
        let config = MapConfig {
            num_segments: sorted.segments as u32,
            region: sorted.region as u32,
            max_out: max_out as u32,
            _pad: 0,
        };
        let bindings = binds![
            payload = whole(&sorted.payload),
            kept = whole(&kept.kept),
            keep = whole(&kept.keep),
            out = whole(out),
        ];
        let workgroups = ((sorted.segments * max_out) as u64).div_ceil(WG_SIZE);
        self.record_dispatch(encoder, Kernel::KeepMap, &config, bindings, workgroups)
    }

    /// Records NMS over `boxes` and `scores` on the device (class-aware with `classes`): sorts
    /// by score, suppresses, and writes the kept boxes' indices (decreasing score) and scores.
    /// Returns `(keep, keep_scores, count)`: `keep[..count[0]]` are the kept indices. No boxes
    /// (or `max_output` 0) give empty `keep` and `keep_scores` and a zero count, with no
    /// dispatch. Boxes are not validated on the device (see [`crate::ops::nms`] for the valid
    /// range); a box with a NaN coordinate has IoU 0 with everything.
    pub fn record_nms(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        nms: &Nms,
        boxes: &GpuBuffer<[f32; 4]>,
        scores: &GpuBuffer<f32>,
        classes: Option<&GpuBuffer<i32>>,
    ) -> Result<(GpuBuffer<u32>, GpuBuffer<f32>, GpuBuffer<u32>)> {
        nms.validate()?;
        let op = "GpuContext::record_nms";
        self.check_buffer(op, "boxes", boxes)?;
        self.check_buffer(op, "scores", scores)?;
        if let Some(c) = classes {
            self.check_buffer(op, "classes", c)?;
        }
        let n = boxes.len();
        if scores.len() != n || classes.is_some_and(|c| c.len() != n) {
            return Err(Error::shape(
                "NMS",
                format!("{n} boxes but {} scores (or classes of another length)", scores.len()),
            ));
        }
        if u32::try_from(n).is_err() || u32::try_from(sort_len(region_for(n))).is_err() {
            return Err(Error::invalid(format!(
                "NMS: {n} boxes exceed the GPU's 32-bit indices"
            )));
        }
        if n == 0 || nms.max_output == Some(0) {
            return Ok((self.zeros(0)?, self.zeros(0)?, self.zeros(1)?));
        }
        let region = region_for(n);
        let max_out = nms.max_output.unwrap_or(n).min(n).max(1);
        let no_classes;
        let classes = match classes {
            Some(c) => c,
            None => {
                no_classes = self.zeros::<i32>(n)?;
                &no_classes
            }
        };
        let entries = self.zeros::<SortEntry>(sort_len(region))?;
        let records = self.zeros::<GpuDetection>(n)?;
        let config = EntriesConfig {
            n: n as u32,
            total: entries.len() as u32,
            _pad: [0; 2],
        };
        let bindings = binds![
            scores = whole(scores),
            boxes = whole(boxes),
            classes = whole(classes),
            entries = whole(&entries),
            records = whole(&records),
        ];
        self.record_dispatch(
            encoder,
            Kernel::SortEntriesInit,
            &config,
            bindings,
            (entries.len() as u64).div_ceil(WG_SIZE),
        )?;
        self.record_sort_entries(encoder, &entries)?;
        let sorted = self.record_permute(encoder, &entries, &records, region, 1)?;
        let kept = self.record_nms_sorted(encoder, nms, &sorted, max_out, true)?;
        let out = self.zeros::<u32>(max_out)?;
        self.record_keep_map(encoder, &sorted, &kept, max_out, &out)?;
        Ok((out, kept.keep_scores, kept.kept))
    }
}

/// Host-slice NMS on the GPU.
pub(crate) fn nms_host(
    ctx: &GpuContext,
    nms: &Nms,
    boxes: &[[f32; 4]],
    scores: &[f32],
    classes: Option<&[i32]>,
) -> Result<NmsOutput> {
    let boxes_buf = ctx.upload(boxes)?;
    let scores_buf = ctx.upload(scores)?;
    let classes_buf = classes.map(|c| ctx.upload(c)).transpose()?;
    let mut encoder = ctx.encoder("nms");
    let (keep, keep_scores, count) =
        ctx.record_nms(&mut encoder, nms, &boxes_buf, &scores_buf, classes_buf.as_ref())?;
    let mut readback = Readback::default();
    let slots = (readback.add(&keep), readback.add(&keep_scores), readback.add(&count));
    let mut results = readback.run(ctx, encoder)?;
    let n = results.take(slots.2)[0] as usize;
    let mut keep = results.take(slots.0);
    let mut scores = results.take(slots.1);
    keep.truncate(n);
    scores.truncate(n);
    Ok(NmsOutput { keep, scores })
}
