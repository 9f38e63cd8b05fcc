// RetinaFace post-processing, first step: the face probability of every anchor row, the
// softmax of its two class logits as ONNX's Softmax computes it (exp(x - max), normalised).
// A NaN logit gives a NaN score, which the top-k never selects. src/model/retinaface.rs
// (`softmax2`) is the twin.

// Must stay in sync with `FaceScoresConfig` in src/gpu/faces.rs.
struct Config {
    rows: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const WG_SIZE: u32 = 256u;

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read> logits: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read_write> scores: array<f32>;

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wg.x + wg.y * num_wg.x) * WG_SIZE + lid;
    if i >= cfg.rows {
        return;
    }
    let l = logits[i];
    // Not max(): WGSL leaves max with a NaN undefined.
    let m = select(l.y, l.x, l.x > l.y);
    let a = exp(l.x - m);
    let b = exp(l.y - m);
    scores[i] = b / (a + b);
}
