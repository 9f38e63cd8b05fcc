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

/// Every WGSL file of the crate: (path relative to `shaders/`, contents), embedded by build.rs.
pub const SHADER_FILES: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/shader_files.rs"));

/// The kernels (files with an entry point `main`), in `shaders/`.
pub const KERNEL_FILES: &[&str] = &[
    "focal_loss.wgsl",
    "reduce_sum.wgsl",
    "count_labels.wgsl",
    "anchors.wgsl",
    "box_iou.wgsl",
    "box_coder.wgsl",
    "match_gt_max.wgsl",
    "match_assign.wgsl",
    "box_loss.wgsl",
    "bitonic_local.wgsl",
    "bitonic_global.wgsl",
    "topk_histogram.wgsl",
    "topk_select.wgsl",
    "topk_count.wgsl",
    "topk_scan.wgsl",
    "topk_gather.wgsl",
    "sort_permute.wgsl",
    "nms_mask.wgsl",
    "nms_gather.wgsl",
    "nms_soft.wgsl",
    "nms_max_iou.wgsl",
    "nms_matrix.wgsl",
    "keep_compact.wgsl",
    "detect_candidates.wgsl",
    "detect_output.wgsl",
    "sort_entries_init.wgsl",
    "keep_map.wgsl",
    "conv_gemm.wgsl",
    "conv_reduce.wgsl",
    "channel_sum.wgsl",
    "elementwise.wgsl",
    "upsample_nearest.wgsl",
    "head_permute.wgsl",
    "sgd.wgsl",
    "sum_squares.wgsl",
    "group_norm_stats.wgsl",
    "group_norm_apply.wgsl",
    "group_norm_grad_sums.wgsl",
    "group_norm_grad_coef.wgsl",
    "ohem_row_loss.wgsl",
    "ohem_entries.wgsl",
    "ohem_select.wgsl",
    "ohem_scale.wgsl",
];

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
