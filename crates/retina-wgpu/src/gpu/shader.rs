//! WGSL sources and the small preprocessor that assembles them.
//!
//! WGSL has no `#include`. A kernel in `shaders/` names the helpers it needs with lines of the
//! form `//#include "shared/numerics.wgsl"` (a comment, so editors still treat the file as
//! WGSL); [`compose`] pastes each helper once, in order. When the device has subgroups, an include of
//! `shared/x.wgsl` resolves to `shared/x_subgroup.wgsl` if that file exists: the two declare the
//! same functions, so the kernel is written once.
//!
//! Every file is embedded in the binary, so the crate needs no files at run time; the test
//! `tests/shaders.rs` validates every composition with naga on any machine, GPU or not.

use crate::gpu::kernels::Kernel;

/// Every WGSL file of the crate: (path relative to `shaders/`, contents), embedded by build.rs.
pub const SHADER_FILES: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/shader_files.rs"));

/// The kernel files (those with an entry point `main`) in `shaders/`, each once, in the order of
/// the kernel table (`Kernel` in src/gpu/kernels.rs), which names the file of every kernel.
pub fn kernel_files() -> Vec<&'static str> {
    let mut files: Vec<&'static str> = Vec::new();
    for kernel in Kernel::ALL {
        if !files.contains(&kernel.file()) {
            files.push(kernel.file());
        }
    }
    files
}

/// Device capabilities that select between variants of the shared helpers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShaderFeatures {
    /// Use `shared/*_subgroup.wgsl` variants (needs `wgpu::Features::SUBGROUP`).
    pub subgroups: bool,
}

const INCLUDE: &str = "//#include";

fn file(path: &str) -> Option<&'static str> {
    SHADER_FILES
        .iter()
        .find(|(name, _)| *name == path)
        .map(|(_, text)| *text)
}

/// The path an include resolves to under `features`.
fn resolve(path: &str, features: ShaderFeatures) -> String {
    if features.subgroups
        && let Some(stem) = path.strip_suffix(".wgsl")
    {
        let variant = format!("{stem}_subgroup.wgsl");
        if file(&variant).is_some() {
            return variant;
        }
    }
    path.to_string()
}

/// The complete WGSL module for the file `path` (relative to `shaders/`), its includes pasted in
/// once each. Errors name a missing file or a malformed include.
pub fn compose(path: &str, features: ShaderFeatures) -> Result<String, String> {
    let mut body = String::new();
    append(path, features, &mut body, &mut Vec::new())?;
    Ok(body)
}

fn append(path: &str, features: ShaderFeatures, body: &mut String, seen: &mut Vec<String>) -> Result<(), String> {
    let resolved = resolve(path, features);
    if seen.contains(&resolved) {
        return Ok(());
    }
    seen.push(resolved.clone());
    let text = file(&resolved).ok_or_else(|| format!("shader file `{resolved}` is not embedded"))?;
    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(rest) = trimmed.strip_prefix(INCLUDE) {
            let target = rest.trim().trim_matches('"');
            if target.is_empty() {
                return Err(format!("{resolved}: empty include"));
            }
            append(target, features, body, seen)?;
        } else {
            body.push_str(line);
            body.push('\n');
        }
    }
    Ok(())
}

/// The files that `path` pulls in under `features`, itself included.
pub fn files_used(path: &str, features: ShaderFeatures) -> Result<Vec<String>, String> {
    let mut seen = Vec::new();
    append(path, features, &mut String::new(), &mut seen)?;
    Ok(seen)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::gpu::kernels::WG_SIZE;

    /// The kernel table and `shaders/` agree: every top-level `.wgsl` file (helpers live in
    /// `shaders/shared/`) is some kernel's file, and every kernel's file exists.
    #[test]
    fn every_kernel_file_exists_and_every_top_level_shader_is_a_kernel() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
        let on_disk: BTreeSet<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "wgsl"))
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        let in_table: BTreeSet<String> = Kernel::ALL.iter().map(|k| k.file().to_string()).collect();
        let missing: Vec<_> = in_table.difference(&on_disk).collect();
        assert!(missing.is_empty(), "kernels whose file is not in shaders/: {missing:?}");
        let unused: Vec<_> = on_disk.difference(&in_table).collect();
        assert!(
            unused.is_empty(),
            "files in shaders/ that no kernel compiles: {unused:?}"
        );
        assert_eq!(kernel_files().len(), in_table.len());
    }

    /// `Kernel as usize` indexes the pipeline table: the enum's order is `ALL`'s.
    #[test]
    fn kernel_all_is_in_declaration_order() {
        assert_eq!(Kernel::ALL.len(), Kernel::COUNT);
        for (i, kernel) in Kernel::ALL.iter().enumerate() {
            assert_eq!(*kernel as usize, i, "{kernel:?}");
        }
    }

    /// Every kernel runs the invocations per workgroup that the host sizes its grid by:
    /// `WG_SIZE`, or for the convolution's tiles what `conv::gemm_invocations` says, with the
    /// kernel's override constants applied as its pipeline applies them.
    #[test]
    fn every_kernel_has_the_hosts_workgroup_size() {
        for &kernel in Kernel::ALL {
            let source = compose(kernel.file(), ShaderFeatures::default()).unwrap();
            let module = naga::front::wgsl::parse_str(&source).unwrap();
            let info =
                naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
                    .validate(&module)
                    .unwrap();
            let mut constants = naga::back::PipelineConstants::default();
            for &(name, value) in kernel.constants() {
                constants.insert(name.to_string(), value);
            }
            let (module, _) = naga::back::pipeline_constants::process_overrides(
                &module,
                &info,
                Some((naga::ShaderStage::Compute, "main")),
                &constants,
            )
            .unwrap();
            let main = module.entry_points.iter().find(|e| e.name == "main").unwrap();
            let expected = crate::gpu::conv::gemm_invocations(kernel).unwrap_or(WG_SIZE);
            assert_eq!(main.workgroup_size, [expected as u32, 1, 1], "{kernel:?}");
        }
    }
}
