//! Sorting and top-k over f32 keys with u32 payloads, on either backend. Descending order; ties
//! keep the lower index first; NaN keys sort last and are never selected by top-k.

use crate::backend::Backend;
use crate::error::{Error, Result};

/// The sort key of both backends (`ordered_key` in shaders/shared/sort_keys.wgsl): unsigned
/// order = float order, NaN -> 0 (never selected).
#[inline(always)]
pub(crate) fn ordered_key(x: f32) -> u32 {
    let u = x.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        return 0;
    }
    if u & 0x8000_0000 != 0 { !u } else { u | 0x8000_0000 }
}

/// Inverse of [`ordered_key`] (key 0 gives NaN).
#[inline(always)]
pub(crate) fn key_to_float(k: u32) -> f32 {
    if k == 0 {
        return f32::NAN;
    }
    f32::from_bits(if k & 0x8000_0000 != 0 { k & 0x7fff_ffff } else { !k })
}

/// Indices are u32: at most `u32::MAX` values.
fn check_len(op: &str, n: usize) -> Result<()> {
    if u32::try_from(n).is_err() {
        return Err(Error::invalid(format!(
            "{op}: {n} values exceed the u32 indices (at most 2^32 - 1)"
        )));
    }
    Ok(())
}

/// `keys` sorted in decreasing order with their `payloads` (ties: lower input index first; NaN
/// keys last).
pub fn sort_desc(backend: &Backend, keys: &[f32], payloads: &[u32]) -> Result<(Vec<f32>, Vec<u32>)> {
    if keys.len() != payloads.len() {
        return Err(Error::shape(
            "sort",
            format!("{} keys but {} payloads", keys.len(), payloads.len()),
        ));
    }
    check_len("sort", keys.len())?;
    if keys.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let order = match backend {
        Backend::Cpu => crate::cpu::sort::argsort_desc(keys),
        Backend::Gpu(ctx) => crate::gpu::sort_ops::argsort_desc_host(ctx, keys)?,
    };
    Ok(order
        .iter()
        .filter_map(|&i| Some((*keys.get(i as usize)?, *payloads.get(i as usize)?)))
        .unzip())
}

/// The `k` largest values (NaN never; fewer if fewer are not NaN) in decreasing order, with
/// their indices (ties: lower index first). Radix select on the GPU, then a sort of the k.
pub fn top_k(backend: &Backend, values: &[f32], k: usize) -> Result<(Vec<f32>, Vec<u32>)> {
    check_len("top-k", values.len())?;
    let k = k.min(values.len());
    if k == 0 {
        return Ok((Vec::new(), Vec::new()));
    }
    let mut selected: Vec<(u32, u32)> = match backend {
        Backend::Cpu => crate::cpu::sort::top_k_segment(values, k, None),
        Backend::Gpu(ctx) => crate::gpu::sort_ops::top_k_host(ctx, values, k)?,
    };
    selected.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    Ok(selected
        .iter()
        .filter_map(|&(_, i)| Some((*values.get(i as usize)?, i)))
        .unzip())
}
