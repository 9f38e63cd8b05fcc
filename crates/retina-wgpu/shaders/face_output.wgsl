// RetinaFace post-processing, output: the faces NMS kept, per image in score order, with their
// landmarks (gathered by the batch slot each sorted entry carries), and the count per image.
// Slots past the count are zeroed.

//#include "shared/detection.wgsl"

// Must stay in sync with `FaceOutputConfig` in src/gpu/faces.rs.
struct Config {
    batch: u32,
    region: u32,
    max_out: u32,
    _pad: u32,
}

// Must stay in sync with `GpuFace` in src/gpu/faces.rs (80 bytes).
struct Face {
    bbox: vec4<f32>,
    score: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    landmarks: array<f32, 10>,
    _pad3: u32,
    _pad4: u32,
}

const WG_SIZE: u32 = 256u;

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read> payload: array<u32>;
@group(0) @binding(2) var<storage, read> kept: array<u32>;
@group(0) @binding(3) var<storage, read> keep: array<u32>;
@group(0) @binding(4) var<storage, read> records: array<Detection>;
@group(0) @binding(5) var<storage, read> marks: array<f32>;
@group(0) @binding(6) var<storage, read_write> faces: array<Face>;
@group(0) @binding(7) var<storage, read_write> counts: array<u32>;

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wg.x + wg.y * num_wg.x) * WG_SIZE + lid;
    if i >= cfg.batch * cfg.max_out {
        return;
    }
    let image = i / cfg.max_out;
    let rank = i % cfg.max_out;
    if rank == 0u {
        counts[image] = kept[image];
    }
    var face: Face;
    if rank < kept[image] {
        let slot = payload[image * cfg.region + keep[i]];
        let r = records[slot];
        face.bbox = r.bbox;
        face.score = r.score;
        for (var p = 0u; p < 10u; p = p + 1u) {
            face.landmarks[p] = marks[slot * 10u + p];
        }
    }
    faces[i] = face;
}
