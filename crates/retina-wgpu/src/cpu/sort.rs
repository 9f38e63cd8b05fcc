//! CPU twins of the sort and top-k kernels: the same keys (`shaders/shared/sort_keys.wgsl`) and
//! the same order, so that both backends select and order exactly the same elements.

use rayon::prelude::*;

pub(crate) use crate::ops::sort::{key_to_float, ordered_key};

/// The key the top-k ranks `value` by: 0 (excluded) for NaN and, with a threshold, for values
/// not above it.
#[inline(always)]
pub fn select_key(value: f32, threshold: Option<f32>) -> u32 {
    match threshold {
        Some(t) if value.is_nan() || value <= t => 0,
        _ => ordered_key(value),
    }
}

/// Indices of `keys` sorted by decreasing key, ties (and equal NaNs) by increasing index, NaN
/// last: the order of the GPU sort.
pub fn argsort_desc(keys: &[f32]) -> Vec<u32> {
    let mut order: Vec<(u32, u32)> = keys
        .iter()
        .enumerate()
        .map(|(i, &k)| (!ordered_key(k), i as u32))
        .collect();
    order.par_sort_unstable();
    order.into_iter().map(|(_, i)| i).collect()
}

/// The top-k of one segment exactly as the GPU selects it: the `k` largest keys (key 0 never),
/// ties at the k-th key towards lower indices, returned as `(key, index)` in index order.
pub fn top_k_segment(values: &[f32], k: usize, threshold: Option<f32>) -> Vec<(u32, u32)> {
    let keyed: Vec<(u32, u32)> = values
        .iter()
        .enumerate()
        .map(|(i, &v)| (select_key(v, threshold), i as u32))
        .filter(|&(key, _)| key != 0)
        .collect();
    if keyed.len() <= k {
        return keyed;
    }
    if k == 0 {
        return Vec::new();
    }
    // The k-th entry in (key descending, index ascending) order decides.
    let mut order = keyed.clone();
    order.select_nth_unstable_by(k - 1, |a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let (kth_key, kth_index) = order[k - 1];
    keyed
        .into_iter()
        .filter(|&(key, i)| key > kth_key || (key == kth_key && i <= kth_index))
        .collect()
}
