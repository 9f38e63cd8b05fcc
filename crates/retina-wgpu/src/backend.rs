//! Where an operation runs.

use crate::error::Result;
use crate::gpu::{GpuContext, GpuOptions};

/// The backend an operation runs on: the CPU (rayon) or a GPU context.
#[derive(Clone, Debug)]
pub enum Backend {
    /// The CPU backend: same operations, same results within float rounding.
    Cpu,
    /// A GPU through wgpu.
    Gpu(GpuContext),
}

impl Backend {
    /// A GPU backend on its own device, chosen as [`GpuContext::new`] does.
    pub fn gpu() -> Result<Self> {
        Ok(Backend::Gpu(GpuContext::new()?))
    }

    /// A GPU backend on its own device, chosen and configured by `options`.
    pub fn gpu_with(options: GpuOptions) -> Result<Self> {
        Ok(Backend::Gpu(GpuContext::new_with(options)?))
    }

    /// "cpu" or "gpu".
    pub fn kind(&self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Gpu(_) => "gpu",
        }
    }

    /// A human-readable description: the adapter for a GPU, the thread count for the CPU.
    pub fn describe(&self) -> String {
        match self {
            Backend::Cpu => format!("CPU ({} threads)", rayon::current_num_threads()),
            Backend::Gpu(ctx) => ctx.adapter_name(),
        }
    }
}
