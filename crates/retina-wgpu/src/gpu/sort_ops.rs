//! Host-slice paths of [`crate::ops::sort`] on the GPU.

use crate::error::{Error, Result};
use crate::gpu::buffer::Readback;
use crate::gpu::context::GpuContext;
use crate::gpu::sort::{SortEntry, padding, sort_len};
use crate::gpu::topk::TopkSegment;
use crate::ops::sort::ordered_key;

/// Indices of `keys` in decreasing key order (ties by index, NaN last), sorted on the device.
pub(crate) fn argsort_desc_host(ctx: &GpuContext, keys: &[f32]) -> Result<Vec<u32>> {
    if u32::try_from(keys.len()).is_err() || keys.len() > 1 << 31 {
        return Err(Error::invalid(format!(
            "sort: {} keys exceed the GPU sort's 2^31 entries",
            keys.len()
        )));
    }
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let mut entries: Vec<SortEntry> = keys
        .iter()
        .enumerate()
        .map(|(i, &k)| [0, !ordered_key(k), i as u32, i as u32])
        .collect();
    entries.resize(sort_len(keys.len()), padding(0));
    let buffer = ctx.upload(&entries)?;
    let mut encoder = ctx.encoder("sort");
    ctx.record_sort_entries(&mut encoder, &buffer)?;
    let mut readback = Readback::default();
    let slot = readback.add(&buffer);
    let sorted = readback.run(ctx, encoder)?.take(slot);
    Ok(sorted[..keys.len()].iter().map(|e| e[3]).collect())
}

/// The top-k of `values` selected on the device, as `(key, index)` in index order.
pub(crate) fn top_k_host(ctx: &GpuContext, values: &[f32], k: usize) -> Result<Vec<(u32, u32)>> {
    if values.is_empty() || k == 0 {
        return Ok(Vec::new());
    }
    let buffer = ctx.upload(values)?;
    let mut encoder = ctx.encoder("top-k");
    let out = ctx.record_top_k(
        &mut encoder,
        &buffer,
        &[TopkSegment {
            start: 0,
            len: values.len(),
            k,
        }],
        None,
    )?;
    let mut readback = Readback::default();
    let (candidates, selected) = (readback.add(&out.candidates), readback.add(&out.selected));
    let mut results = readback.run(ctx, encoder)?;
    let n = results.take(selected)[0] as usize;
    let candidates = results.take(candidates);
    Ok(candidates[..n.min(candidates.len())]
        .iter()
        .map(|c| (c[0], c[1]))
        .collect())
}
