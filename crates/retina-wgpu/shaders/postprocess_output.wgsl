// Detection post-processing, output: image b's detection d is the d-th box NMS kept (boxes in
// score order, their classes, and their scores, decayed for Soft/Matrix NMS), packed as
// (x1, y1, x2, y2, score, class) for a host application to bind; counts[b] is how many. With
// draw_vertices > 0, draw_args[b] also gets image b's indirect draw arguments (draw_vertices
// vertices, one instance per detection), so a host draws the detections with no copy.

//#include "shared/detection.wgsl"

// Must stay in sync with `OutputConfig` in src/gpu/detect.rs.
struct Config {
    batch: u32,
    region: u32,
    max_out: u32,
    draw_vertices: u32,
}


const WG_SIZE: u32 = 256u;

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read> sorted_boxes: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> sorted_classes: array<i32>;
@group(0) @binding(3) var<storage, read> kept: array<u32>;
@group(0) @binding(4) var<storage, read> keep: array<u32>;
@group(0) @binding(5) var<storage, read> keep_scores: array<f32>;
@group(0) @binding(6) var<storage, read_write> detections: array<Detection>;
@group(0) @binding(7) var<storage, read_write> counts: array<u32>;
// (vertex_count, instance_count, first_vertex, first_instance) per image.
@group(0) @binding(8) var<storage, read_write> draw_args: array<vec4<u32>>;

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
    let d = i % cfg.max_out;
    let n = kept[image];
    if d == 0u {
        counts[image] = n;
        if cfg.draw_vertices > 0u {
            draw_args[image] = vec4(cfg.draw_vertices, n, 0u, 0u);
        }
    }
    var det = Detection(vec4(0.0), 0.0, -1, 0u, 0u);
    if d < n {
        let slot = image * cfg.region + keep[i];
        det = Detection(sorted_boxes[slot], keep_scores[i], sorted_classes[slot], 0u, 0u);
    }
    detections[i] = det;
}
