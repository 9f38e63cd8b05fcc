//! Every WGSL file in shaders/ parses and validates with naga, in every variant the crate
//! composes (with and without subgroups). Needs no GPU.

use std::collections::BTreeSet;
use std::path::Path;

use retina_wgpu::gpu::shader::{SHADER_FILES, ShaderFeatures, compose, files_used, kernel_files};

const VARIANTS: [ShaderFeatures; 2] = [ShaderFeatures { subgroups: false }, ShaderFeatures { subgroups: true }];

/// The naga capabilities wgpu grants a device: for the plain variants, only what every
/// WebGPU-compliant adapter has (SHADER_FLOAT16_IN_FLOAT32, the downlevel flag behind
/// `unpack2x16float`), as a device made with no optional features gets; SUBGROUP in addition
/// for the subgroup variants.
fn capabilities(features: ShaderFeatures) -> naga::valid::Capabilities {
    let base = naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32;
    if features.subgroups {
        base | naga::valid::Capabilities::SUBGROUP
    } else {
        base
    }
}

fn validate(name: &str, source: &str, caps: naga::valid::Capabilities) {
    let module = naga::front::wgsl::parse_str(source)
        .unwrap_or_else(|e| panic!("{name} does not parse:\n{}", e.emit_to_string(source)));
    naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
        .validate(&module)
        .unwrap_or_else(|e| panic!("{name} does not validate:\n{}", e.emit_to_string(source)));
    let storage = module
        .global_variables
        .iter()
        .filter(|(_, v)| matches!(v.space, naga::AddressSpace::Storage { .. }))
        .count();
    assert!(
        storage <= 8,
        "{name}: {storage} storage buffers; WebGPU's default limit per stage is 8"
    );
    let entry_points: Vec<_> = module.entry_points.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(entry_points, ["main"], "{name}: a kernel has one entry point, `main`");
}

#[test]
fn every_kernel_validates_in_every_variant() {
    for kernel in kernel_files() {
        for features in VARIANTS {
            let source = compose(kernel, features).unwrap();
            validate(&format!("{kernel} ({features:?})"), &source, capabilities(features));
        }
    }
}

#[test]
fn every_file_in_shaders_is_embedded_and_used() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut on_disk = BTreeSet::new();
    for entry in walk(&dir) {
        let rel = entry.strip_prefix(&dir).unwrap().to_string_lossy().replace('\\', "/");
        on_disk.insert(rel);
    }
    let embedded: BTreeSet<String> = SHADER_FILES.iter().map(|(name, _)| name.to_string()).collect();
    assert_eq!(on_disk, embedded, "shaders/ and SHADER_FILES differ");
    for (name, text) in SHADER_FILES {
        let disk = std::fs::read_to_string(dir.join(name)).unwrap();
        assert_eq!(&disk, text, "{name}: embedded copy is stale");
    }
    let mut used = BTreeSet::new();
    for kernel in kernel_files() {
        for features in VARIANTS {
            used.extend(files_used(kernel, features).unwrap());
        }
    }
    assert_eq!(
        used, embedded,
        "a file in shaders/ is never part of a kernel, so never validated"
    );
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else if path.extension().is_some_and(|e| e == "wgsl") {
            out.push(path);
        }
    }
    out
}
