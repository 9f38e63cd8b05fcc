//! Dispatch of the bitonic sort (`shaders/bitonic_local.wgsl`, `shaders/bitonic_global.wgsl`)
//! over sort entries `[segment, descending key, tie-break, payload]`.

use crate::error::{Error, Result};
use crate::gpu::boxes::check_whole_binding;
use crate::gpu::buffer::GpuBuffer;
use crate::gpu::context::GpuContext;
use crate::gpu::dispatch::{Dispatches, binds, storage};
use crate::gpu::kernels::{Kernel, WG_SIZE};

/// Entries one workgroup sorts in workgroup memory (`BLOCK` in bitonic_local.wgsl).
pub(crate) const SORT_BLOCK: usize = 512;

/// A sort entry: `[segment, descending key, tie-break, payload]`, ordered lexicographically on
/// the first three (see `shaders/shared/sort_keys.wgsl`).
pub type SortEntry = [u32; 4];

/// The padding entry of `segment`: after every real entry of the segment.
pub(crate) fn padding(segment: u32) -> SortEntry {
    [segment, u32::MAX, u32::MAX, u32::MAX]
}

/// Must stay in sync with `Config` in shaders/bitonic_local.wgsl and bitonic_global.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct BitonicConfig {
    pub(crate) n: u32,
    pub(crate) k: u32,
    pub(crate) j: u32,
    pub(crate) _pad: u32,
}

/// The length a sort needs for `n` entries: a power of two, at least one block.
pub(crate) fn sort_len(n: usize) -> usize {
    n.next_power_of_two().max(SORT_BLOCK)
}

impl GpuContext {
    /// Records an ascending sort of `entries` (length a power of two >= 512, padded with
    /// padding entries) in place: a bitonic network, steps below 512 in workgroup memory.
    pub fn record_sort_entries(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        entries: &GpuBuffer<SortEntry>,
    ) -> Result<()> {
        self.check_buffer("GpuContext::record_sort_entries", "entries", entries)?;
        let n = entries.len();
        if !n.is_power_of_two() || n < SORT_BLOCK {
            return Err(Error::invalid(format!(
                "sort: {n} entries; the length must be a power of two >= {SORT_BLOCK}"
            )));
        }
        if u32::try_from(n).is_err() {
            return Err(Error::invalid(format!("sort: {n} entries exceed 2^32")));
        }
        check_whole_binding(self, "the sort entries", entries.byte_len())?;
        let mut list = Dispatches::new(self, "bitonic sort");
        let mut step = |kernel: Kernel, k: usize, j: usize| {
            let workgroups = match kernel {
                Kernel::BitonicLocal => (n / SORT_BLOCK) as u64,
                _ => (n as u64 / 2).div_ceil(WG_SIZE),
            };
            let config = BitonicConfig {
                n: n as u32,
                k: k as u32,
                j: j as u32,
                _pad: 0,
            };
            let bindings = binds![entries = storage(entries.buffer(), 0, entries.byte_len())];
            list.push(kernel, &config, bindings, workgroups)
        };
        // Blocks sorted in workgroup memory, then each merge: global steps while the partner
        // is a block or more away, the rest of the merge in workgroup memory.
        step(Kernel::BitonicLocal, 0, 0)?;
        let mut k = 2 * SORT_BLOCK;
        while k <= n {
            let mut j = k / 2;
            while j >= SORT_BLOCK {
                step(Kernel::BitonicGlobal, k, j)?;
                j /= 2;
            }
            step(Kernel::BitonicLocal, k, 0)?;
            k *= 2;
        }
        list.record(self, encoder)
    }
}
