//! `retina info`: what wgpu sees and what the crate would use.

use retina_wgpu::gpu::enumerate_adapters;
use retina_wgpu::{GpuContext, Result};

pub fn run() -> Result<()> {
    let adapters = enumerate_adapters(retina_wgpu::wgpu::Backends::all());
    println!("Adapters wgpu sees ({}):", adapters.len());
    for adapter in &adapters {
        let info = adapter.get_info();
        println!(
            "  - {} [{:?}, {:?}, driver {} {}]",
            info.name, info.backend, info.device_type, info.driver, info.driver_info
        );
    }
    let ctx = GpuContext::new()?;
    let info = ctx.adapter_info();
    println!("\nChosen: {} ({:?}, {:?})", info.name, info.backend, info.device_type);
    println!(
        "  subgroup size {}..{}, kernels use subgroups: {}",
        info.subgroup_min_size,
        info.subgroup_max_size,
        ctx.uses_subgroups()
    );
    let l = ctx.limits();
    let raw = ctx.device().limits();
    println!("\nLimits the kernels honour:");
    println!(
        "  max_storage_buffer_binding_size     {:>14} bytes",
        l.max_storage_binding
    );
    println!("  max_buffer_size                     {:>14} bytes", l.max_buffer_size);
    println!(
        "  max_compute_workgroups_per_dimension {:>13}",
        l.max_workgroups_per_dim
    );
    println!(
        "  min_storage_buffer_offset_alignment {:>14}",
        l.storage_offset_alignment
    );
    println!(
        "  min_uniform_buffer_offset_alignment {:>14}",
        l.uniform_offset_alignment
    );
    println!(
        "  max_compute_workgroup_storage_size  {:>14} bytes",
        raw.max_compute_workgroup_storage_size
    );
    println!(
        "  max_compute_invocations_per_workgroup {:>12}",
        raw.max_compute_invocations_per_workgroup
    );
    println!(
        "  max_storage_buffers_per_shader_stage {:>13}",
        raw.max_storage_buffers_per_shader_stage
    );
    println!("\nFeatures:");
    for (name, _) in ctx.features().iter_names() {
        println!("  {name}");
    }
    Ok(())
}
