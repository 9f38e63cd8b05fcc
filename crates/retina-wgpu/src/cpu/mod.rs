//! The CPU backend: every GPU kernel's twin, with the same name and meaning, parallel with
//! rayon and vectorised where it matters. GPU results are tested against it and timed against it.
//!
//! Not part of the supported API: a user reaches the CPU backend through each operation with
//! `Backend::Cpu` and through `nn::CpuEngine`, which validate their inputs. This module is
//! public (and hidden from the documentation) only so that the crate's own tests and benchmarks
//! can compare and time a single twin without the operation around it; its items may change
//! without notice.

pub mod anchors;
pub mod box_loss;
pub mod boxes;
pub mod conv;
pub(crate) mod depthwise;
#[cfg(target_arch = "x86_64")]
pub(crate) mod direct;
pub mod focal;
pub(crate) mod group_norm;
pub mod matcher;
pub mod math;
pub mod nms;
pub mod nn;
pub mod ohem;
#[cfg(target_arch = "x86_64")]
pub(crate) mod pointwise;
pub mod postprocess;
pub mod sort;

/// Runs `f` with the rayon pool's other worker threads polling for work (and running it) until
/// `f` returns, instead of going to sleep between parallel regions. A network's forward pass is
/// dozens of parallel regions with short serial gaps between them (allocating the next
/// output, packing weights); an idle rayon worker sleeps after a few microseconds, and waking it
/// again cost 20-60 us on the project's VM, about 50 times per RetinaFace pass at 2 threads.
/// Keeping the workers busy-waiting for the pass, as onnxruntime's and OpenMP's thread pools do
/// by default, made the 640 x 480 RetinaFace pipeline 8-11% faster there. The workers burn CPU
/// while `f` runs, and only then.
///
/// Called from a worker of the pool (the `retina` binary's main thread is one), the other
/// `threads - 1` workers poll; called from outside, all of them do.
pub(crate) fn with_busy_workers<R>(f: impl FnOnce() -> R) -> R {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let threads = rayon::current_num_threads();
    if threads < 2 {
        return f();
    }
    /// Sets the flag when dropped: when `f` returns or unwinds.
    struct Done(Arc<AtomicBool>);
    impl Drop for Done {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    let done = Done(Arc::new(AtomicBool::new(false)));
    let me = rayon::current_thread_index();
    for _ in 0..threads - usize::from(me.is_some()) {
        let done = Arc::clone(&done.0);
        rayon::spawn(move || {
            // On the caller's own thread (it ran this job while waiting in a join) polling
            // would never return to the caller: leave that thread to it.
            if me.is_some() && rayon::current_thread_index() == me {
                return;
            }
            while !done.load(Ordering::Acquire) {
                if rayon::yield_now() != Some(rayon::Yield::Executed) {
                    std::hint::spin_loop();
                }
            }
        });
    }
    f()
}

#[cfg(test)]
mod tests {
    use rayon::prelude::*;

    /// `f`'s result, with parallel work inside it, from a worker of the pool and from outside
    /// it; afterwards every worker is free again (a broadcast reaches all of them, which it
    /// could not while one still polled).
    #[test]
    fn busy_workers_run_the_pass_and_return() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        let sum = |n: u64| super::with_busy_workers(|| (0..n).into_par_iter().map(|i| i * i).sum::<u64>());
        let want = |n: u64| (0..n).map(|i| i * i).sum::<u64>();
        assert_eq!(pool.install(|| sum(100_000)), want(100_000));
        assert_eq!(pool.install(|| (0..4).map(|_| sum(1000)).sum::<u64>()), 4 * want(1000));
        assert_eq!(pool.broadcast(|ctx| ctx.index()).len(), 3);
        assert_eq!(super::with_busy_workers(|| 7), 7);
    }
}
