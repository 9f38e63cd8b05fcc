// A box with its score and class, as candidates are gathered for sorting and as detections are
// handed to the host (32 bytes). Must stay in sync with `GpuDetection` in src/gpu/detect.rs.
struct Detection {
    bbox: vec4<f32>,
    score: f32,
    label: i32,
    _pad0: u32,
    _pad1: u32,
}
