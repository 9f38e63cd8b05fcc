//! Progress reports of the library's long operations.

/// Receives the progress of one long operation (decoding a dataset's images, detecting over a
/// dataset, writing synthetic scenes): the library reports progress to the caller instead of
/// drawing it, and has no terminal output of its own. The `retina` command line draws these
/// reports as progress bars; an application forwards them to its own UI, or passes
/// [`NoProgress`].
///
/// [`start`](Progress::start) comes once with the amount of work, [`advance`](Progress::advance)
/// as units of it are done (from worker threads as well as the caller's), and
/// [`finish`](Progress::finish) once when the operation ends, whether it succeeded or failed.
/// Every method does nothing by default.
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use retina_wgpu::Progress;
///
/// /// Counts the units done, for a status line of its own.
/// #[derive(Default)]
/// struct Counter(AtomicU64);
///
/// impl Progress for Counter {
///     fn advance(&self, units: u64) {
///         self.0.fetch_add(units, Ordering::Relaxed);
///     }
/// }
///
/// let counter = Counter::default();
/// retina_wgpu::data::write_coco_with_progress(
///     std::env::temp_dir().join("retina-progress-doc"),
///     &retina_wgpu::data::SceneConfig::default(),
///     3,
///     7,
///     &counter,
/// )?;
/// assert_eq!(counter.0.load(Ordering::Relaxed), 3);
/// # std::fs::remove_dir_all(std::env::temp_dir().join("retina-progress-doc")).ok();
/// # Ok::<(), retina_wgpu::Error>(())
/// ```
pub trait Progress: Sync {
    /// The operation begins: `total` units of work (images, scenes), described by `label`
    /// (e.g. `"decoding images"`).
    fn start(&self, label: &str, total: u64) {
        let _ = (label, total);
    }

    /// `units` more units are done. Called concurrently from several threads.
    fn advance(&self, units: u64) {
        let _ = units;
    }

    /// The operation has ended, successfully or not.
    fn finish(&self) {}
}

/// Reports nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoProgress;

impl Progress for NoProgress {}

/// Calls [`Progress::finish`] when dropped, so that an operation ending in an error (or a
/// panic) still finishes its report.
pub(crate) struct Finish<'a>(&'a dyn Progress);

impl<'a> Finish<'a> {
    /// Starts `progress` and returns the guard that finishes it.
    pub(crate) fn start(progress: &'a dyn Progress, label: &str, total: u64) -> Self {
        progress.start(label, total);
        Self(progress)
    }
}

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        self.0.finish();
    }
}
