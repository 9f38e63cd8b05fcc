//! Per-kernel GPU time from the device's timestamps: while a profile is open
//! ([`GpuContext::start_profile`]), every dispatch the crate records gets a compute pass of its
//! own whose beginning and end write a timestamp; [`GpuContext::finish_profile_async`] resolves
//! them and sums the time per kernel. What the host's clock cannot tell (a whole frame is one
//! submission), this does: which kernels a pipeline's time goes to, on the device itself.

use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::gpu::context::GpuContext;
use crate::gpu::kernels::Kernel;

/// Timestamps per query set: wgpu's limit on a set's size.
const QUERIES_PER_SET: u32 = wgpu::QUERY_SET_MAX_QUERIES;

/// The most dispatches one profile times (16 query sets of 2,048); later ones run untimed and
/// are counted in [`Profile::untimed`].
pub const MAX_PROFILED_DISPATCHES: usize = 16 * (QUERIES_PER_SET as usize / 2);

/// One kernel's share of a profile.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelTime {
    /// The kernel, named as in [`GpuContext::kernel_work`] (e.g. `ConvGradInput`).
    pub kernel: &'static str,
    /// Its dispatches timed.
    pub dispatches: u64,
    /// Their device time, summed, in seconds.
    pub seconds: f64,
}

/// What a profile measured: per kernel, its timed dispatches and their device time, the
/// kernels with the most time first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Profile {
    /// One entry per kernel with a timed dispatch while the profile was open.
    pub kernels: Vec<KernelTime>,
    /// Dispatches past [`MAX_PROFILED_DISPATCHES`], run but not timed.
    pub untimed: u64,
}

impl Profile {
    /// The device time of every timed dispatch, in seconds.
    pub fn total_seconds(&self) -> f64 {
        self.kernels.iter().map(|k| k.seconds).sum()
    }
}

/// The open profile of a context: its query sets and which kernel each pair of queries timed.
#[derive(Default)]
pub(crate) struct Profiler {
    sets: Vec<wgpu::QuerySet>,
    /// The kernel of each timed pass, in recording order: pass `i` wrote queries `2i`, `2i + 1`.
    passes: Vec<Kernel>,
    untimed: u64,
}

/// A context's profiler slot: `None` while no profile is open.
pub(crate) type ProfilerSlot = Mutex<Option<Profiler>>;

impl GpuContext {
    /// Opens a profile: from now until [`GpuContext::finish_profile_async`], every dispatch of
    /// this context (and its clones) is recorded in a compute pass of its own with timestamps
    /// at its beginning and end. Slower than a plain recording (one pass per dispatch), so the
    /// total is an upper bound on the unprofiled time; the shares per kernel are what it is for.
    ///
    /// An error if the device was created without `TIMESTAMP_QUERY` (the crate asks for it
    /// where the adapter has it; browsers may withhold it) or a profile is already open.
    pub fn start_profile(&self) -> Result<()> {
        if !self.inner.features.contains(wgpu::Features::TIMESTAMP_QUERY) {
            return Err(Error::invalid(format!(
                "profiling needs the TIMESTAMP_QUERY feature, which the device on {} was created without",
                self.inner.info.name
            )));
        }
        let mut slot = self.inner.profiler.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_some() {
            return Err(Error::invalid("a profile is already open on this context"));
        }
        *slot = Some(Profiler::default());
        Ok(())
    }

    /// The timestamp writes for a pass that runs one dispatch of `kernel`, when a profile is
    /// open and has room; `None` otherwise (the pass is recorded without timestamps).
    pub(crate) fn profile_pass(&self, kernel: Kernel) -> Option<(wgpu::QuerySet, u32)> {
        let mut slot = self.inner.profiler.lock().unwrap_or_else(|e| e.into_inner());
        let profiler = slot.as_mut()?;
        if profiler.passes.len() >= MAX_PROFILED_DISPATCHES {
            profiler.untimed += 1;
            return None;
        }
        let query = 2 * profiler.passes.len() as u32;
        let set = (query / QUERIES_PER_SET) as usize;
        if set == profiler.sets.len() {
            let queries = self.inner.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("retina-wgpu profile"),
                ty: wgpu::QueryType::Timestamp,
                count: QUERIES_PER_SET,
            });
            profiler.sets.push(queries);
        }
        profiler.passes.push(kernel);
        Some((profiler.sets[set].clone(), query % QUERIES_PER_SET))
    }

    /// Whether a profile is open (each dispatch then needs a pass of its own).
    pub(crate) fn profiling(&self) -> bool {
        self.inner.profiler.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// Closes the profile opened by [`GpuContext::start_profile`]: resolves its timestamps
    /// (one submit, one readback, after the work it timed has been submitted) and sums the
    /// device time per kernel. An error if no profile is open.
    pub async fn finish_profile_async(&self) -> Result<Profile> {
        let profiler = self
            .inner
            .profiler
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| Error::invalid("finish_profile: no profile is open on this context"))?;
        if profiler.passes.is_empty() {
            return Ok(Profile {
                kernels: Vec::new(),
                untimed: profiler.untimed,
            });
        }
        let queries = 2 * profiler.passes.len();
        let stamps = self.zeros_with_usage::<u64>(queries, wgpu::BufferUsages::QUERY_RESOLVE)?;
        let mut encoder = self.encoder("retina-wgpu profile");
        for (i, set) in profiler.sets.iter().enumerate() {
            let first = i * QUERIES_PER_SET as usize;
            let count = (queries - first).min(QUERIES_PER_SET as usize);
            // Each set's results start at a multiple of 4,096 x 8 bytes: aligned to the 256
            // bytes resolve_query_set asks for.
            encoder.resolve_query_set(set, 0..count as u32, stamps.buffer(), 8 * first as u64);
        }
        self.submit(encoder);
        let stamps = self.download_async(&stamps).await?;
        let period = f64::from(self.inner.queue.get_timestamp_period());
        let mut kernels: Vec<KernelTime> = Vec::new();
        for (kernel, pair) in profiler.passes.iter().zip(stamps.chunks_exact(2)) {
            // A device whose counter went backwards (or did not run the pass) gives 0, not a
            // wrapped u64.
            let seconds = pair[1].saturating_sub(pair[0]) as f64 * period * 1e-9;
            match kernels.iter_mut().find(|k| k.kernel == kernel.name()) {
                Some(k) => {
                    k.dispatches += 1;
                    k.seconds += seconds;
                }
                None => kernels.push(KernelTime {
                    kernel: kernel.name(),
                    dispatches: 1,
                    seconds,
                }),
            }
        }
        kernels.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        Ok(Profile {
            kernels,
            untimed: profiler.untimed,
        })
    }

    /// [`GpuContext::finish_profile_async`], blocking; in a browser (wasm32), where nothing may
    /// block, it is an error.
    pub fn finish_profile(&self) -> Result<Profile> {
        if cfg!(target_arch = "wasm32") {
            return Err(Error::invalid(
                "finish_profile blocks; in a browser, await GpuContext::finish_profile_async",
            ));
        }
        pollster::block_on(self.finish_profile_async())
    }
}
