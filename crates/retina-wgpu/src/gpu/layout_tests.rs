//! The host structs that mirror WGSL structs (the uniform configs, the per-level tables, the
//! detection record) checked against the shaders as naga lays them out: the same size, and
//! every member at the same offset with the same size and scalar type, matched by name (members
//! named `_pad*` are padding on either side and only count towards the size). Runs on any
//! machine, GPU or not.
//!
//! Every struct documented as "Must stay in sync with `X` in shaders/..." must be listed in
//! [`mirrors`]; the list must name every field of the Rust struct (a missing one fails to
//! compile).

use std::any::type_name;
use std::collections::BTreeSet;
use std::mem::size_of;

use naga::proc::Layouter;

use crate::gpu::kernels::Kernel;
use crate::gpu::shader::{ShaderFeatures, compose};

/// One field of a host struct.
#[derive(Debug)]
struct HostField {
    /// The WGSL member it mirrors (the Rust name unless mapped with `as`).
    name: &'static str,
    offset: usize,
    size: usize,
    /// The scalar type of the field or of its elements: `u32`, `i32`, `f32`.
    scalar: String,
}

/// A host struct and the WGSL struct it mirrors.
struct Mirror {
    /// `module::RustName`, for messages and for matching the doc comments.
    host: &'static str,
    size: usize,
    fields: Vec<HostField>,
    /// The WGSL struct's name.
    wgsl: &'static str,
    /// Kernel files that declare it (composed with their includes).
    kernels: &'static [&'static str],
}

/// The scalar type of `F` or of its array elements, from its type name.
fn scalar_of<F>() -> String {
    let name = type_name::<F>();
    let element = name.trim_start_matches('[').split(';').next().unwrap_or(name);
    element.rsplit("::").next().unwrap_or(element).to_string()
}

/// Size and scalar type of the field that `get` reaches.
fn field_info<T, F>(_get: fn(&T) -> &F) -> (usize, String) {
    (size_of::<F>(), scalar_of::<F>())
}

/// `mirror!(module::Type as "WgslName" in ["kernel.wgsl", ...] { field, rust_field as wgsl_member, ... })`.
macro_rules! mirror {
    ($module:ident :: $ty:ident as $wgsl:literal in [$($kernel:literal),+] { $($field:ident $(as $member:ident)?),* $(,)? }) => {{
        // Naming every field: a field added to the Rust struct and not here fails to compile.
        let _exhaustive = |v: crate::gpu::$module::$ty| {
            let crate::gpu::$module::$ty { $($field: _),* } = v;
        };
        Mirror {
            host: concat!(stringify!($module), "::", stringify!($ty)),
            size: size_of::<crate::gpu::$module::$ty>(),
            fields: vec![$({
                let (size, scalar) = field_info(|v: &crate::gpu::$module::$ty| &v.$field);
                HostField {
                    name: mirror!(@name $field $($member)?),
                    offset: std::mem::offset_of!(crate::gpu::$module::$ty, $field),
                    size,
                    scalar,
                }
            }),*],
            wgsl: $wgsl,
            kernels: &[$($kernel),+],
        }
    }};
    (@name $field:ident) => { stringify!($field) };
    (@name $field:ident $member:ident) => { stringify!($member) };
}

/// Every host struct that mirrors a WGSL struct.
fn mirrors() -> Vec<Mirror> {
    vec![
        mirror!(reduce::ReduceConfig as "Config" in ["reduce_sum.wgsl"] { n, flags, norm_index, norm_value }),
        mirror!(matcher::MatchConfig as "Config" in ["matcher_gt_max.wgsl", "matcher_assign.wgsl"] {
            anchors_per_image, anchor_base, chunk_anchors, tiles_per_image, image_first, num_images, batch,
            flags, out_base4, out_base16, high, low, num_boxes, _pad, weights,
        }),
        mirror!(boxes::IouConfig as "Config" in ["box_iou.wgsl"] { n_elements, cols, _pad }),
        mirror!(boxes::CoderConfig as "Config" in ["box_coder.wgsl"] { n, decode, clamp, _pad, weights }),
        mirror!(nms::NmsConfig as "Config" in ["nms_mask.wgsl", "nms_gather.wgsl", "nms_soft.wgsl", "nms_max_iou.wgsl", "nms_matrix.wgsl", "keep_compact.wgsl", "nms_spatial_keys.wgsl", "nms_spatial_tiles.wgsl", "nms_mask_spatial.wgsl", "nms_mask_args.wgsl"] {
            region, words, row_begin, row_end, num_segments, groups_per_segment, max_out, flags,
            iou_threshold, score_threshold, sigma, block_begin, block_end, band_rows, grid_width, _pad2,
        }),
        mirror!(nms::PermuteConfig as "Config" in ["sort_permute.wgsl"] { total, region, _pad }),
        mirror!(nms::EntriesConfig as "Config" in ["sort_entries_init.wgsl"] { n, total, _pad }),
        mirror!(nms::MapConfig as "Config" in ["keep_map.wgsl"] { num_segments, region, max_out, _pad }),
        mirror!(box_loss::BoxLossConfig as "Config" in ["box_loss.wgsl"] {
            n_rows, anchors_per_image, first_row, flags, beta, clamp, norm_index, norm_value, weights,
        }),
        mirror!(sort::BitonicConfig as "Config" in ["bitonic_local.wgsl", "bitonic_global.wgsl"] { n, k, j, _pad }),
        mirror!(conv::ConvConfig as "Config" in ["conv_gemm.wgsl"] {
            batch, in_channels, out_channels, in_h, in_w, out_h, out_w, kernel_h, kernel_w, stride, pad,
            m, n, k, k_split, splits, m_tiles, n_tiles, flags, phase,
        }),
        mirror!(conv::ConvReduceConfig as "Config" in ["conv_reduce.wgsl"] {
            total, splits, channel_stride, channels, flags, phase, phase_rows_cols, phase_in_hw,
        }),
        mirror!(conv::ChannelSumConfig as "Config" in ["channel_sum.wgsl"] { batch, channels, plane, flags }),
        mirror!(nn::ElementwiseConfig as "Config" in ["elementwise.wgsl"] { n, scale, _pad }),
        mirror!(nn::UpsampleConfig as "Config" in ["upsample_nearest.wgsl"] { planes, in_h, in_w, out_h, out_w, _pad }),
        mirror!(image::ResizeConfig as "Config" in ["resize_normalize.wgsl"] {
            src_w, src_h, out_w, out_h, pad_w, pad_h, offset, _pad0, scale_x, scale_y, _pad1, _pad2, mean, deviation,
        }),
        mirror!(nn::MaxPoolConfig as "Config" in ["max_pool.wgsl"] { planes, in_h, in_w, out_h, out_w, kernel, stride, padding }),
        mirror!(faces::FaceScoresConfig as "Config" in ["face_scores.wgsl"] { rows, _pad }),
        mirror!(faces::FaceCandidateConfig as "Config" in ["face_candidates.wgsl"] {
            batch, topk, region, rows, total, _pad0, image_size, variances, _pad1,
        }),
        mirror!(faces::FaceOutputConfig as "Config" in ["face_output.wgsl"] { batch, region, max_out, _pad }),
        mirror!(faces::GpuFace as "Face" in ["face_output.wgsl"] { bbox, score, _pad, landmarks, _pad2 }),
        mirror!(nn::DepthwiseConfig as "Config" in ["depthwise_conv.wgsl"] {
            batch, channels, in_h, in_w, out_h, out_w, kernel_h, kernel_w, stride, pad, has_bias, _pad,
        }),
        mirror!(nn::ChannelCopyConfig as "Config" in ["channel_copy.wgsl"] { batch, src_c, dst_c, offset, plane, _pad }),
        mirror!(nn::PermuteHeadConfig as "Config" in ["head_permute.wgsl"] {
            batch, anchors, values, plane, rows_per_image, row_offset, _pad,
        }),
        mirror!(nn::SgdConfig as "Config" in ["sgd.wgsl"] { n, flags, lr, momentum, weight_decay, max_norm, _pad }),
        mirror!(nn::SumSquaresConfig as "Config" in ["sum_squares.wgsl"] { n, flags, _pad }),
        mirror!(focal::FocalConfig as "Config" in ["focal_loss.wgsl"] {
            n_elements, num_classes, flags, norm_index, alpha, gamma, beta, norm_value,
        }),
        mirror!(focal::CountConfig as "Config" in ["count_labels.wgsl"] { n_rows, num_classes, _pad }),
        mirror!(topk::TopkConfig as "Config" in ["topk_histogram.wgsl", "topk_select.wgsl", "topk_count.wgsl", "topk_scan.wgsl", "topk_gather.wgsl", "topk_list_args.wgsl"] {
            first_tile, n_tiles, num_segments, key_offset, shift, flags, threshold, list_offset, args_index,
            grid_width, _pad0, _pad1,
        }),
        mirror!(topk::SegmentGpu as "Segment" in ["topk_histogram.wgsl", "topk_select.wgsl"] { start, len, k, first_tile, out_offset, _pad }),
        mirror!(topk::SelectState as "SelectState" in ["topk_select.wgsl"] {
            prefix, mask, remaining, greater, done, threshold, need_eq, selected,
        }),
        mirror!(ohem::RowLossConfig as "Config" in ["ohem_row_loss.wgsl"] { n_rows, num_classes, _pad }),
        mirror!(ohem::OhemEntriesConfig as "Config" in ["ohem_entries.wgsl"] {
            n_entries, region, anchors_per_image, group_images, row_offset, _pad,
        }),
        mirror!(ohem::SelectConfig as "Config" in ["ohem_select.wgsl"] {
            group_images, stride, anchors_per_image, first_image, per_image, positive_quota, flags, begin, end,
            total_index, _pad,
        }),
        mirror!(ohem::ScaleConfig as "Config" in ["ohem_scale.wgsl"] { n_elements, num_classes, _pad }),
        mirror!(anchors::AnchorConfigGpu as "Config" in ["anchors.wgsl"] {
            n_anchors, first, num_levels, anchors_per_cell, offset, _pad,
        }),
        mirror!(anchors::LevelGpu as "Level" in ["anchors.wgsl"] { first_anchor, grid_w, grid_h, stride }),
        mirror!(group_norm::GroupNormConfig as "Config" in [
            "group_norm_forward.wgsl", "group_norm_backward.wgsl", "group_norm_param_grads.wgsl",
            "group_norm_stats.wgsl", "group_norm_apply.wgsl", "group_norm_grad_sums.wgsl", "group_norm_grad_coef.wgsl"
        ] {
            batch, channels, groups, group_channels, plane, eps, flags, _pad,
        }),
        mirror!(postprocess::GpuDetection as "Detection" in ["postprocess_candidates.wgsl", "postprocess_output.wgsl"] {
            bbox, score, class as label, _pad,
        }),
        mirror!(postprocess::CandidateConfig as "Config" in ["postprocess_candidates.wgsl"] {
            batch, levels, topk, region, anchors_per_image, num_classes, clip, total, image_size, clamp, _pad,
            weights,
        }),
        mirror!(postprocess::LevelInfo as "Level" in ["postprocess_candidates.wgsl"] { first_anchor, _pad }),
        mirror!(postprocess::OutputConfig as "Config" in ["postprocess_output.wgsl"] { batch, region, max_out, draw_vertices }),
        mirror!(image::ImageConfig as "Config" in ["image_to_tensor.wgsl"] {
            side, frame_w, frame_h, offset, scale, _pad0, _pad1, _pad2, mean, inv_std,
        }),
    ]
}

/// A WGSL struct member as naga lays it out.
#[derive(Debug)]
struct WgslMember {
    name: String,
    offset: usize,
    size: usize,
    scalar: Option<String>,
}

/// The scalar type of a WGSL type or of its elements (`None` for structs and the like).
fn wgsl_scalar(module: &naga::Module, ty: naga::Handle<naga::Type>) -> Option<String> {
    use naga::{Scalar, ScalarKind, TypeInner};
    let name = |Scalar { kind, width }: Scalar| {
        let prefix = match kind {
            ScalarKind::Sint => "i",
            ScalarKind::Uint => "u",
            ScalarKind::Float => "f",
            _ => return None,
        };
        Some(format!("{prefix}{}", width * 8))
    };
    match module.types[ty].inner {
        TypeInner::Scalar(s) | TypeInner::Atomic(s) => name(s),
        TypeInner::Vector { scalar, .. } | TypeInner::Matrix { scalar, .. } => name(scalar),
        TypeInner::Array { base, .. } => wgsl_scalar(module, base),
        _ => None,
    }
}

/// The struct `name` of the kernel `kernel` (composed with its includes): its size and members.
fn wgsl_struct(kernel: &str, name: &str) -> (usize, Vec<WgslMember>) {
    let source = compose(kernel, ShaderFeatures::default()).unwrap_or_else(|e| panic!("{kernel}: {e}"));
    let module =
        naga::front::wgsl::parse_str(&source).unwrap_or_else(|e| panic!("{kernel}: {}", e.emit_to_string(&source)));
    let mut layouter = Layouter::default();
    layouter.update(module.to_ctx()).unwrap();
    let (handle, ty) = module
        .types
        .iter()
        .find(|(_, t)| t.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("{kernel} declares no struct `{name}`"));
    let naga::TypeInner::Struct { members, span } = &ty.inner else {
        panic!("{kernel}: `{name}` is not a struct");
    };
    assert_eq!(layouter[handle].size, *span);
    let members = members
        .iter()
        .map(|m| WgslMember {
            name: m.name.clone().unwrap_or_default(),
            offset: m.offset as usize,
            size: layouter[m.ty].size as usize,
            scalar: wgsl_scalar(&module, m.ty),
        })
        .collect();
    (*span as usize, members)
}

fn is_padding(name: &str) -> bool {
    name.starts_with("_pad")
}

/// The differences between a host struct and one kernel's declaration of its WGSL struct.
fn mismatches(mirror: &Mirror, kernel: &str) -> Vec<String> {
    let (size, members) = wgsl_struct(kernel, mirror.wgsl);
    let what = format!("{} vs `{}` in {kernel}", mirror.host, mirror.wgsl);
    let mut errors = Vec::new();
    if size != mirror.size {
        errors.push(format!("{what}: {} bytes on the host, {size} in WGSL", mirror.size));
    }
    for member in members.iter().filter(|m| !is_padding(&m.name)) {
        let Some(field) = mirror.fields.iter().find(|f| f.name == member.name) else {
            errors.push(format!("{what}: WGSL member `{}` has no host field", member.name));
            continue;
        };
        if (field.offset, field.size) != (member.offset, member.size) {
            errors.push(format!(
                "{what}: `{}` at offset {} ({} bytes) on the host, {} ({} bytes) in WGSL",
                member.name, field.offset, field.size, member.offset, member.size
            ));
        }
        if let Some(scalar) = &member.scalar
            && *scalar != field.scalar
        {
            errors.push(format!(
                "{what}: `{}` is {} on the host, {scalar} in WGSL",
                member.name, field.scalar
            ));
        }
    }
    for field in mirror.fields.iter().filter(|f| !is_padding(f.name)) {
        if !members.iter().any(|m| m.name == field.name) {
            errors.push(format!("{what}: host field `{}` has no WGSL member", field.name));
        }
    }
    errors
}

#[test]
fn host_structs_match_their_wgsl_layouts() {
    let mut errors = Vec::new();
    for mirror in mirrors() {
        for kernel in mirror.kernels {
            errors.extend(mismatches(&mirror, kernel));
        }
    }
    assert!(errors.is_empty(), "host/WGSL layout mismatches:\n{}", errors.join("\n"));
}

/// The structs whose doc comment says "Must stay in sync with `X` in shaders/..." in
/// `src/gpu/*.rs`, as (`module::RustName`, `X`).
fn documented_mirrors() -> BTreeSet<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/gpu");
    let mut found = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let module = path.file_stem().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        // The doc comment, joined over its lines, then the struct it documents.
        let mut doc = String::new();
        for line in text.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("///") {
                doc.push_str(rest);
                doc.push(' ');
                continue;
            }
            if line.starts_with("#[") {
                continue;
            }
            let sync = doc
                .split("stay in sync with `")
                .nth(1)
                .and_then(|s| s.split('`').next());
            let words: Vec<&str> = line.split_whitespace().collect();
            let name = words
                .iter()
                .position(|w| *w == "struct")
                .and_then(|i| words.get(i + 1))
                .map(|n| n.trim_end_matches(['{', ';']));
            if let (Some(wgsl), Some(name)) = (sync, name)
                && doc.contains("shaders/")
            {
                found.insert((format!("{module}::{name}"), wgsl.to_string()));
            }
            doc.clear();
        }
    }
    found
}

#[test]
fn every_documented_mirror_is_checked() {
    let checked: BTreeSet<(String, String)> = mirrors()
        .iter()
        .map(|m| (m.host.to_string(), m.wgsl.to_string()))
        .collect();
    let documented = documented_mirrors();
    assert!(
        documented.len() >= 30,
        "found only {} documented mirrors",
        documented.len()
    );
    let unchecked: Vec<_> = documented.difference(&checked).collect();
    assert!(
        unchecked.is_empty(),
        "structs that must stay in sync with WGSL but are not in mirrors(): {unchecked:?}"
    );
}

/// Every binding of `kernel`'s WGSL (group 0), composed with `features`: binding number, variable
/// name and address space.
fn wgsl_bindings(kernel: Kernel, features: ShaderFeatures) -> Vec<(u32, String, naga::AddressSpace)> {
    let source = compose(kernel.file(), features).unwrap();
    let module = naga::front::wgsl::parse_str(&source)
        .unwrap_or_else(|e| panic!("{}: {}", kernel.file(), e.emit_to_string(&source)));
    let mut bindings: Vec<_> = module
        .global_variables
        .iter()
        .filter_map(|(_, var)| {
            let binding = var.binding.as_ref()?;
            assert_eq!(
                binding.group,
                0,
                "{}: `{:?}` is not in group 0",
                kernel.file(),
                var.name
            );
            Some((binding.binding, var.name.clone().unwrap_or_default(), var.space))
        })
        .collect();
    bindings.sort_by_key(|b| b.0);
    bindings
}

/// The kernel table's binding names (what the dispatch helpers place bindings by) are the WGSL's,
/// in binding order, with binding 0 the `cfg` uniform and every other binding a storage buffer
/// or a texture; so a binding renamed or renumbered in a shader, or misnamed in the table, fails
/// here, and a binding swapped at a Rust call site fails its dispatch by name.
#[test]
fn kernel_table_bindings_match_the_wgsl() {
    let mut errors = Vec::new();
    for &kernel in Kernel::ALL {
        for features in [ShaderFeatures::default(), ShaderFeatures { subgroups: true }] {
            let wgsl = wgsl_bindings(kernel, features);
            let mut expected = vec![(0u32, "cfg")];
            expected.extend(kernel.bindings().iter().enumerate().map(|(i, n)| (i as u32 + 1, *n)));
            let got: Vec<(u32, &str)> = wgsl.iter().map(|(b, n, _)| (*b, n.as_str())).collect();
            if got != expected {
                errors.push(format!(
                    "{kernel:?} ({}): WGSL {got:?}, table {expected:?}",
                    kernel.file()
                ));
            }
            for (binding, name, space) in &wgsl {
                let ok = match binding {
                    0 => matches!(space, naga::AddressSpace::Uniform),
                    _ => matches!(space, naga::AddressSpace::Storage { .. } | naga::AddressSpace::Handle),
                };
                if !ok {
                    errors.push(format!("{kernel:?}: binding {binding} `{name}` is in {space:?}"));
                }
            }
        }
    }
    assert!(
        errors.is_empty(),
        "kernel table and WGSL disagree:\n{}",
        errors.join("\n")
    );
}

/// Bindings are placed by name: order at the call site does not matter, and a wrong, missing or
/// repeated name is an error that names the kernel (checked without a device: an empty buffer
/// array stands in for a buffer).
#[test]
fn bindings_are_placed_by_name_and_checked() {
    use crate::gpu::dispatch::{Bind, entries};
    let none = || wgpu::BindingResource::BufferArray(&[]);
    let bind = |name| Bind { name, resource: none() };
    // Focal loss binds logits, targets, counts, grad, elementwise, partials (1..=6).
    let names = Kernel::FocalLoss.bindings();
    let mut shuffled: Vec<Bind<'_>> = names.iter().rev().map(|n| bind(n)).collect();
    let placed = entries(Kernel::FocalLoss, none(), &shuffled).unwrap();
    assert_eq!(
        placed.iter().map(|e| e.binding).collect::<Vec<_>>(),
        (0..=names.len() as u32).collect::<Vec<_>>()
    );

    shuffled[0].name = "logitz";
    let err = entries(Kernel::FocalLoss, none(), &shuffled).unwrap_err().to_string();
    assert!(err.contains("focal_loss.wgsl") && err.contains("logitz"), "{err}");
    shuffled[0].name = "grad";
    let err = entries(Kernel::FocalLoss, none(), &shuffled).unwrap_err().to_string();
    assert!(err.contains("given twice"), "{err}");
    shuffled.remove(0);
    let err = entries(Kernel::FocalLoss, none(), &shuffled).unwrap_err().to_string();
    assert!(err.contains("not given"), "{err}");
}
