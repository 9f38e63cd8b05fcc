//! The application of retina-wgpu: the `retina` command line (`src/main.rs`) and what only it
//! needs. Not a library API: it is a library target so that the criterion benches
//! (`benches/`) measure the same inputs as `retina bench`.
//!
//! - [`cli`]: argument parsing and the commands (demo, synth, train, detect, eval, ablate,
//!   bench, info), with progress bars.
//! - [`ablate`]: the paper's experiment (focal loss against cross entropy, FL* and OHEM) as
//!   tables and plots.
//! - [`plot`]: the line charts of training curves and of the experiment.
//! - [`workloads`] (the library's `data::workloads`, re-exported) and [`coco_workload`]: the
//!   deterministic inputs of the benchmarks.

#![warn(missing_docs)]

pub mod ablate;
pub mod cli;
pub mod coco_workload;
pub mod plot;
pub use retina_wgpu::data::workloads;
