//! Sorting and top-k over f32 keys with u32 payloads, on either backend. Descending order; ties
//! keep the lower index first; NaN keys sort last and are never selected by top-k.

use crate::backend::Backend;
use crate::error::{Error, Result};

/// `keys` sorted in decreasing order with their `payloads` (ties: lower input index first; NaN
/// keys last).
pub fn sort_desc(backend: &Backend, keys: &[f32], payloads: &[u32]) -> Result<(Vec<f32>, Vec<u32>)> {
    if keys.len() != payloads.len() {
        return Err(Error::shape(
            "sort",
            format!("{} keys but {} payloads", keys.len(), payloads.len()),
        ));
    }
    let order = match backend {
        Backend::Cpu => crate::cpu::sort::argsort_desc(keys),
        Backend::Gpu(ctx) => crate::gpu::sort_ops::argsort_desc_host(ctx, keys)?,
    };
    Ok(order.iter().map(|&i| (keys[i as usize], payloads[i as usize])).unzip())
}

/// The `k` largest values (NaN never; fewer if fewer are not NaN) in decreasing order, with
/// their indices (ties: lower index first). Radix select on the GPU, then a sort of the k.
pub fn top_k(backend: &Backend, values: &[f32], k: usize) -> Result<(Vec<f32>, Vec<u32>)> {
    let k = k.min(values.len());
    let mut selected: Vec<(u32, u32)> = match backend {
        Backend::Cpu => crate::cpu::sort::top_k_segment(values, k, None),
        Backend::Gpu(ctx) => crate::gpu::sort_ops::top_k_host(ctx, values, k)?,
    };
    selected.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    Ok(selected.iter().map(|&(_, i)| (values[i as usize], i)).unzip())
}
