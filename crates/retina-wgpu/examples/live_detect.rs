//! The detector inside a render loop, all on one device with no readback in the frame: a small
//! wgpu scene renders moving shapes of the synthetic classes over a textured background
//! offscreen; the trained small RetinaNet runs on each frame (a kernel turns the rendered
//! texture into the network's normalised input, then the forward pass and the post-processing
//! are recorded into the frame's encoder by a `PreparedDetector`); a render pass draws the
//! detected boxes over the frame straight from the detections buffer (indirect draw arguments
//! written by the post-processing). It saves a few frames as PNG and prints each frame's GPU time
//! (timestamp queries when the adapter has them, else wall time) and what the frame created.
//!
//! Run: `cargo run --release --example live_detect -- [--model DIR] [--frames N] [--size PX]
//! [--out DIR]`. `--model` is a checkpoint directory (`retina demo` writes one to `demo-out/model/`,
//! which is used when present); without one, a small model is trained for a few hundred steps
//! on the CPU first (`--train-steps N`, 0 for random weights), with a message saying so.
//!
//! `--model` may also be a torchvision RetinaNet's directory (scripts/import_torchvision.py):
//! then a `PreparedTorchvision` records torchvision's transform (on the device, from the frame
//! texture), its ResNet-50-FPN and its post-processing into the same frame encoder, and the boxes
//! it finds on the synthetic scene (it was not trained on it) are drawn and listed by COCO name.

use std::time::Instant;

use retina_wgpu::coco::Normalize;
use retina_wgpu::data::SceneConfig;
use retina_wgpu::gpu::DetectionOutput;
use retina_wgpu::gpu::{GpuDetection, OutputOptions, frame_scale};
use retina_wgpu::model::torchvision::is_model_dir;
use retina_wgpu::model::{
    PreparedDetector, PreparedTorchvision, RetinaNet, RetinaNetConfig, TorchvisionRetinaNet, checkpoint,
};
use retina_wgpu::nn::CpuEngine;
use retina_wgpu::train::{SyntheticData, TrainOptions, Trainer, synthetic_categories};
use retina_wgpu::{Error, GpuContext, GpuOptions, Result, wgpu};

/// Most objects in the scene (the shader's uniform arrays).
const MAX_OBJECTS: usize = 8;
/// Detections drawn from this score up.
const DRAW_SCORE: f32 = 0.3;

const SCENE: &str = r#"
struct Scene {
    size: vec4<f32>,                   // frame width, height, object count, time
    objects: array<vec4<f32>, 8>,      // centre x, centre y, side, class
    colours: array<vec4<f32>, 8>,      // rgb
    turns: array<vec4<f32>, 8>,        // cos, sin of the shape's direction
}
@group(0) @binding(0) var<uniform> scene: Scene;

@vertex
fn vs(@builtin(vertex_index) v: u32) -> @builtin(position) vec4<f32> {
    let p = vec2(f32((v << 1u) & 2u), f32(v & 2u));
    return vec4(p * 2.0 - 1.0, 0.0, 1.0);
}

fn inside_triangle(p: vec2<f32>, a: vec2<f32>, b: vec2<f32>, c: vec2<f32>) -> bool {
    let d0 = (b.x - a.x) * (p.y - a.y) - (b.y - a.y) * (p.x - a.x);
    let d1 = (c.x - b.x) * (p.y - b.y) - (c.y - b.y) * (p.x - b.x);
    let d2 = (a.x - c.x) * (p.y - c.y) - (a.y - c.y) * (p.x - c.x);
    return (d0 >= 0.0 && d1 >= 0.0 && d2 >= 0.0) || (d0 <= 0.0 && d1 <= 0.0 && d2 <= 0.0);
}

fn rotate(v: vec2<f32>, d: vec2<f32>) -> vec2<f32> {
    return vec2(v.x * d.x - v.y * d.y, v.x * d.y + v.y * d.x);
}

fn inside(i: u32, p: vec2<f32>) -> bool {
    let o = scene.objects[i];
    let h = o.z * 0.5;
    let q = p - o.xy;
    let d = scene.turns[i].xy;
    switch u32(o.w) {
        case 0u: { return dot(q, q) <= h * h; }
        case 1u: { return abs(q.x) <= h && abs(q.y) <= h; }
        case 2u: {
            let r = o.z / sqrt(3.0);
            let turn = vec2(-0.5, sqrt(3.0) / 2.0);
            let v0 = r * d;
            let v1 = rotate(v0, turn);
            let v2 = rotate(v1, turn);
            return inside_triangle(q, v0, v1, v2);
        }
        default: {
            // Two bars a third of the side thick, turned by d.
            let u = rotate(q, vec2(d.x, -d.y));
            let t = o.z / 6.0;
            return (abs(u.x) <= h && abs(u.y) <= t) || (abs(u.x) <= t && abs(u.y) <= h);
        }
    }
}

@fragment
fn fs(@builtin(position) pos: vec4<f32>) -> @location(0) vec4<f32> {
    let p = pos.xy;
    let uv = p / scene.size.xy;
    // A two-colour gradient with a patch of stripes, as the synthetic scenes' backgrounds.
    var c = mix(vec3(0.55, 0.45, 0.30), vec3(0.25, 0.40, 0.55), clamp(0.6 * uv.x + 0.4 * uv.y, 0.0, 1.0));
    if uv.x > 0.55 && uv.y > 0.5 && fract((p.x + p.y) / 12.0) < 0.5 {
        c = c * 0.75;
    }
    for (var i = 0u; i < u32(scene.size.z); i++) {
        if inside(i, p) {
            c = scene.colours[i].rgb;
        }
    }
    return vec4(c, 1.0);
}
"#;

const BOXES: &str = r#"
struct View {
    frame: vec2<f32>,      // frame width, height
    scale: f32,            // frame pixels per network pixel
    min_score: f32,
}
@group(0) @binding(0) var<uniform> view: View;

struct Out {
    @builtin(position) pos: vec4<f32>,
    @location(0) colour: vec4<f32>,
}

@vertex
fn vs(@builtin(vertex_index) v: u32, @location(0) bbox: vec4<f32>, @location(1) score: f32, @location(2) label: i32) -> Out {
    // Four lines of two vertices: top, right, bottom, left.
    let corners = array(vec2(0u, 1u), vec2(2u, 1u), vec2(2u, 1u), vec2(2u, 3u),
                        vec2(2u, 3u), vec2(0u, 3u), vec2(0u, 3u), vec2(0u, 1u));
    let c = corners[v];
    let b = bbox * view.scale;
    let p = vec2(select(b.x, b.z, c.x == 2u), select(b.y, b.w, c.y == 3u));
    var out: Out;
    out.pos = vec4(p.x / view.frame.x * 2.0 - 1.0, 1.0 - p.y / view.frame.y * 2.0, 0.0, 1.0);
    if score < view.min_score {
        out.pos = vec4(2.0, 2.0, 0.0, 1.0); // outside the frame: not drawn
    }
    let palette = array(vec3(1.0, 0.2, 0.2), vec3(0.2, 1.0, 0.3), vec3(0.3, 0.5, 1.0), vec3(1.0, 0.9, 0.1));
    out.colour = vec4(palette[u32(label) % 4u], 1.0);
    return out;
}

@fragment
fn fs(in: Out) -> @location(0) vec4<f32> {
    return in.colour;
}
"#;

/// One object of the scene: class 0-3 (circle, square, triangle, cross), centre and side in
/// frame pixels, colour, direction (cos, sin) for triangles and crosses.
#[derive(Clone, Copy, Debug)]
struct Object {
    class: u32,
    centre: [f32; 2],
    side: f32,
    colour: [f32; 3],
    direction: [f32; 2],
}

impl Object {
    /// Its exact box `[x1, y1, x2, y2]` in frame pixels.
    fn bbox(&self) -> [f32; 4] {
        let h = self.side / 2.0;
        let rotate = |v: [f32; 2], d: [f32; 2]| [v[0] * d[0] - v[1] * d[1], v[0] * d[1] + v[1] * d[0]];
        let points: Vec<[f32; 2]> = match self.class {
            0 | 1 => vec![[-h, -h], [h, h]],
            2 => {
                let r = self.side / 3f32.sqrt();
                let turn = [-0.5, 3f32.sqrt() / 2.0];
                let v0 = [r * self.direction[0], r * self.direction[1]];
                let v1 = rotate(v0, turn);
                vec![v0, v1, rotate(v1, turn)]
            }
            _ => {
                let t = self.side / 6.0;
                let d = self.direction;
                [[h, t], [h, -t], [-h, t], [-h, -t], [t, h], [-t, h], [t, -h], [-t, -h]]
                    .iter()
                    .map(|&v| rotate(v, d))
                    .collect()
            }
        };
        let [cx, cy] = self.centre;
        let xs = points.iter().map(|p| p[0] + cx);
        let ys = points.iter().map(|p| p[1] + cy);
        [
            xs.clone().fold(f32::MAX, f32::min),
            ys.clone().fold(f32::MAX, f32::min),
            xs.fold(f32::MIN, f32::max),
            ys.fold(f32::MIN, f32::max),
        ]
    }
}

/// The scene at frame `t`: four shapes on Lissajous paths, one per class.
fn objects(t: f32, size: f32) -> Vec<Object> {
    let colours = [[0.95, 0.95, 0.9], [0.1, 0.1, 0.1], [0.9, 0.15, 0.2], [0.1, 0.8, 0.3]];
    (0..4)
        .map(|i| {
            let f = i as f32;
            let phase = t * 0.12 + f * 1.7;
            let side = size * (0.18 + 0.05 * f);
            let margin = side * 0.75;
            let span = size - 2.0 * margin;
            Object {
                class: i,
                centre: [
                    margin + span * (0.5 + 0.5 * (phase * (1.0 + 0.3 * f)).sin()),
                    margin + span * (0.5 + 0.5 * (phase * 0.8 + f).cos()),
                ],
                side,
                colour: colours[i as usize],
                direction: [(0.3 * t + f).cos(), (0.3 * t + f).sin()],
            }
        })
        .collect()
}

struct Args {
    model: Option<String>,
    frames: usize,
    size: u32,
    out: String,
    train_steps: usize,
}

fn args() -> Result<Args> {
    let mut args = Args {
        model: None,
        frames: 8,
        size: 256,
        out: "live-out".into(),
        train_steps: 300,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| Error::InvalidParameter(format!("{flag} needs a value")))
        };
        let number = |v: String| {
            v.parse::<usize>()
                .map_err(|_| Error::InvalidParameter(format!("{flag}: {v:?} is not a number")))
        };
        match flag.as_str() {
            "--model" => args.model = Some(value()?),
            "--frames" => args.frames = number(value()?)?.max(1),
            "--size" => args.size = number(value()?)?.clamp(32, 4096) as u32,
            "--out" => args.out = value()?,
            "--train-steps" => args.train_steps = number(value()?)?,
            other => {
                return Err(Error::InvalidParameter(format!(
                    "unknown argument {other:?}; use --model DIR, --frames N, --size PX, --out DIR, --train-steps N"
                )));
            }
        }
    }
    Ok(args)
}

/// The detector recorded into each frame: the crate's small RetinaNet or a torchvision one.
enum Detector {
    Shapes(Box<PreparedDetector>),
    Torchvision(Box<PreparedTorchvision>),
}

impl Detector {
    /// The detector of `--model` (a torchvision model directory), else [`model`]'s.
    fn new(ctx: &GpuContext, args: &Args) -> Result<Self> {
        let torchvision = args
            .model
            .as_deref()
            .filter(|dir| is_model_dir(std::path::Path::new(dir)));
        if let Some(dir) = torchvision {
            println!("model: {dir} (torchvision RetinaNet)");
            let (net, values) = TorchvisionRetinaNet::load(dir)?;
            return Ok(Self::Torchvision(Box::new(PreparedTorchvision::new(
                ctx, net, &values,
            )?)));
        }
        let (net, values) = model(args)?;
        Ok(Self::Shapes(Box::new(PreparedDetector::new(ctx, net, &values)?)))
    }

    fn output(&self, options: &OutputOptions) -> Result<DetectionOutput> {
        match self {
            Self::Shapes(d) => d.output(1, options),
            Self::Torchvision(d) => d.output(options),
        }
    }

    /// Frame pixels per detection pixel for a square frame of `size`.
    fn scale(&self, size: u32) -> Result<f32> {
        match self {
            Self::Shapes(d) => Ok(frame_scale(size, size, d.input_size())),
            Self::Torchvision(d) => Ok(d.frame_scale(size as usize, size as usize)?.0),
        }
    }

    /// What the network sees of a square frame of `size`.
    fn input(&self, size: u32) -> Result<String> {
        match self {
            Self::Shapes(d) => Ok(format!("{0} x {0}", d.input_size())),
            Self::Torchvision(d) => {
                let t = d.target(size as usize, size as usize)?;
                Ok(format!(
                    "{} x {} (padded {} x {})",
                    t.resized.1, t.resized.0, t.padded.1, t.padded.0
                ))
            }
        }
    }

    fn record(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        frame: &wgpu::TextureView,
        size: u32,
        out: &DetectionOutput,
    ) -> Result<()> {
        match self {
            Self::Shapes(d) => d.record_frame(encoder, frame, (size, size), &Normalize::IMAGENET, out),
            Self::Torchvision(d) => d.record_frame(encoder, frame, (size, size), out),
        }
    }

    fn class_name(&self, class: i32) -> String {
        match self {
            Self::Shapes(_) => ["circle", "square", "triangle", "cross"]
                .get(class as usize)
                .unwrap_or(&"?")
                .to_string(),
            Self::Torchvision(d) => d.net().config().category_name(class as u32),
        }
    }
}

/// The checkpoint to run: `--model`, else `demo-out/model/` if `retina demo` left one, else a small
/// model trained here on the CPU (or random weights with `--train-steps 0`).
fn model(args: &Args) -> Result<(RetinaNet, Vec<Vec<f32>>)> {
    let dir = args.model.clone().or_else(|| {
        std::path::Path::new("demo-out/model/config.json")
            .exists()
            .then(|| "demo-out/model".to_string())
    });
    if let Some(dir) = dir {
        println!("model: {dir}");
        return checkpoint::load_model(&dir);
    }
    let scenes = SceneConfig::default();
    let net = RetinaNet::new(RetinaNetConfig {
        num_classes: scenes.num_classes(),
        categories: synthetic_categories(&scenes),
        ..RetinaNetConfig::default()
    })?;
    if args.train_steps == 0 {
        println!("model: none given and no demo-out/model/: random weights (expect few or no boxes)");
        return Ok((net.clone(), net.init(0)));
    }
    println!(
        "model: none given and no demo-out/model/ (run `cargo run --release -- demo` for a trained one); \
         training {} steps on the CPU first, a weak detector",
        args.train_steps
    );
    let data = SyntheticData {
        config: scenes,
        seed: 0,
        normalize: Normalize::IMAGENET,
    };
    let options = TrainOptions {
        steps: args.train_steps,
        warmup_steps: (args.train_steps / 10).max(1),
        ..TrainOptions::default()
    };
    let mut trainer = Trainer::new(CpuEngine::new(), net.clone(), &net.init(0), options)?;
    for _ in 0..args.train_steps {
        trainer.step(&data, false)?;
    }
    Ok((net, trainer.param_values()?))
}

fn main() -> Result<()> {
    let args = args()?;

    // The host's device, with timestamp queries when the adapter has them.
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&Default::default())).map_err(|e| {
        Error::NoAdapter(format!(
            " ({e}); install a Vulkan driver (apt-get install mesa-vulkan-drivers)"
        ))
    })?;
    let timestamps = adapter.features().contains(wgpu::Features::TIMESTAMP_QUERY);
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_features: if timestamps {
            wgpu::Features::TIMESTAMP_QUERY
        } else {
            wgpu::Features::empty()
        },
        ..Default::default()
    }))
    .map_err(|e| Error::DeviceLost(e.to_string()))?;
    let ctx = GpuContext::from_device(&device, &queue, &GpuOptions::default())?;
    println!("adapter: {}", ctx.adapter_name());

    let mut detector = Detector::new(&ctx, &args)?;
    let out = detector.output(&OutputOptions {
        extra_usage: wgpu::BufferUsages::VERTEX,
        draw_vertices: Some(8),
    })?;
    let draw_args = out.draw_args.as_ref().expect("asked for draw arguments");
    let size = args.size;
    let scale = detector.scale(size)?;

    // The scene: a frame texture the detector reads, a full-screen pass drawing the shapes.
    let format = wgpu::TextureFormat::Rgba8Unorm;
    let frame = device.create_texture(&wgpu::TextureDescriptor {
        label: Some("frame"),
        size: wgpu::Extent3d {
            width: size,
            height: size,
            depth_or_array_layers: 1,
        },
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format,
        usage: wgpu::TextureUsages::RENDER_ATTACHMENT
            | wgpu::TextureUsages::TEXTURE_BINDING
            | wgpu::TextureUsages::COPY_SRC,
        view_formats: &[],
    });
    let frame_view = frame.create_view(&Default::default());
    let scene_uniform = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("scene"),
        size: 16 + 3 * 16 * MAX_OBJECTS as u64,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let view_uniform = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("box view"),
        size: 16,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    queue.write_buffer(
        &view_uniform,
        0,
        bytemuck::cast_slice(&[size as f32, size as f32, scale, DRAW_SCORE]),
    );
    let pipeline = |source: &str, vertex_buffers: &[Option<wgpu::VertexBufferLayout<'_>>], lines: bool| {
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: None,
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
            label: None,
            layout: None,
            vertex: wgpu::VertexState {
                module: &module,
                entry_point: Some("vs"),
                compilation_options: Default::default(),
                buffers: vertex_buffers,
            },
            fragment: Some(wgpu::FragmentState {
                module: &module,
                entry_point: Some("fs"),
                compilation_options: Default::default(),
                targets: &[Some(format.into())],
            }),
            primitive: wgpu::PrimitiveState {
                topology: if lines {
                    wgpu::PrimitiveTopology::LineList
                } else {
                    wgpu::PrimitiveTopology::TriangleList
                },
                ..Default::default()
            },
            depth_stencil: None,
            multisample: Default::default(),
            multiview_mask: None,
            cache: None,
        })
    };
    let scene_pipeline = pipeline(SCENE, &[], false);
    let box_pipeline = pipeline(
        BOXES,
        &[Some(wgpu::VertexBufferLayout {
            array_stride: size_of::<GpuDetection>() as u64,
            step_mode: wgpu::VertexStepMode::Instance,
            attributes: &wgpu::vertex_attr_array![0 => Float32x4, 1 => Float32, 2 => Sint32],
        })],
        true,
    );
    let bind = |pipeline: &wgpu::RenderPipeline, buffer: &wgpu::Buffer| {
        device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[wgpu::BindGroupEntry {
                binding: 0,
                resource: buffer.as_entire_binding(),
            }],
        })
    };
    let scene_group = bind(&scene_pipeline, &scene_uniform);
    let box_group = bind(&box_pipeline, &view_uniform);

    // Timestamps: the first pass's start and the last pass's end.
    let queries = timestamps.then(|| {
        let set = device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("frame time"),
            ty: wgpu::QueryType::Timestamp,
            count: 2,
        });
        let resolve = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamps"),
            size: 16,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let read = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamps read"),
            size: 16,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        (set, resolve, read)
    });
    let row_bytes = (4 * size).div_ceil(256) * 256;
    let pixels = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("saved frame"),
        size: u64::from(row_bytes * size),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    std::fs::create_dir_all(&args.out).map_err(|e| Error::io(&args.out, e))?;
    let saved: Vec<usize> = [0, args.frames / 2, args.frames - 1].into();

    let mut gpu_ms = Vec::new();
    let mut found_total = (0, 0);
    println!(
        "{size} x {size} frames, network input {}; boxes drawn from score {DRAW_SCORE}",
        detector.input(size)?
    );
    for f in 0..args.frames {
        let scene = objects(f as f32 * 4.0, size as f32);
        let mut data = vec![0f32; 4 + 12 * MAX_OBJECTS];
        data[..4].copy_from_slice(&[size as f32, size as f32, scene.len() as f32, f as f32]);
        for (i, o) in scene.iter().enumerate() {
            data[4 + 4 * i..][..4].copy_from_slice(&[o.centre[0], o.centre[1], o.side, o.class as f32]);
            data[4 + 4 * MAX_OBJECTS + 4 * i..][..3].copy_from_slice(&o.colour);
            data[4 + 8 * MAX_OBJECTS + 4 * i..][..2].copy_from_slice(&o.direction);
        }
        queue.write_buffer(&scene_uniform, 0, bytemuck::cast_slice(&data));

        let start = Instant::now();
        let before = ctx.resource_stats();
        let mut encoder = device.create_command_encoder(&Default::default());
        let pass_target = |load: wgpu::LoadOp<wgpu::Color>| wgpu::RenderPassColorAttachment {
            view: &frame_view,
            depth_slice: None,
            resolve_target: None,
            ops: wgpu::Operations {
                load,
                store: wgpu::StoreOp::Store,
            },
        };
        {
            let mut pass = encoder.begin_render_pass(&wgpu::RenderPassDescriptor {
                label: Some("scene"),
                color_attachments: &[Some(pass_target(wgpu::LoadOp::Clear(wgpu::Color::BLACK)))],
                timestamp_writes: queries.as_ref().map(|(set, _, _)| wgpu::RenderPassTimestampWrites {
                    query_set: set,
                    beginning_of_pass_write_index: Some(0),
                    end_of_pass_write_index: None,
                }),
                ..Default::default()
            });
            pass.set_pipeline(&scene_pipeline);
            pass.set_bind_group(0, &scene_group, &[]);
            pass.draw(0..3, 0..1);
        }
        // The detector: frame -> input tensor -> network -> post-processing, recorded here.
        detector.record(&mut encoder, &frame_view, size, &out)?;
        {
            let mut pass = encoder.begin_render_pass(&wgpu::RenderPassDescriptor {
                label: Some("boxes"),
                color_attachments: &[Some(pass_target(wgpu::LoadOp::Load))],
                timestamp_writes: queries.as_ref().map(|(set, _, _)| wgpu::RenderPassTimestampWrites {
                    query_set: set,
                    beginning_of_pass_write_index: None,
                    end_of_pass_write_index: Some(1),
                }),
                ..Default::default()
            });
            pass.set_pipeline(&box_pipeline);
            pass.set_bind_group(0, &box_group, &[]);
            pass.set_vertex_buffer(0, out.detections.buffer().slice(..));
            pass.draw_indirect(draw_args.buffer.buffer(), 0);
        }
        if let Some((set, resolve, read)) = &queries {
            encoder.resolve_query_set(set, 0..2, resolve, 0);
            encoder.copy_buffer_to_buffer(resolve, 0, read, 0, 16);
        }
        let recorded = ctx.resource_stats();
        queue.submit([encoder.finish()]);
        device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::ReadbackFailed(e.to_string()))?;
        let wall = start.elapsed().as_secs_f64() * 1e3;
        let gpu = match &queries {
            Some((_, _, read)) => {
                let ticks: [u64; 2] = read_back(&device, read)?;
                ticks[1].saturating_sub(ticks[0]) as f64 * f64::from(queue.get_timestamp_period()) / 1e6
            }
            None => wall,
        };
        gpu_ms.push(gpu);

        // What the frame found (a readback for this printout only; the frame itself needs none).
        let dets = ctx.download(&out.detections)?;
        let count = ctx.download(&out.counts)?[0] as usize;
        let shown: Vec<&GpuDetection> = dets[..count].iter().filter(|d| d.score >= DRAW_SCORE).collect();
        let found = scene
            .iter()
            .filter(|o| {
                shown
                    .iter()
                    .any(|d| d.class == o.class as i32 && iou(d.bbox.map(|v| v * scale), o.bbox()) >= 0.5)
            })
            .count();
        found_total = (found_total.0 + found, found_total.1 + scene.len());
        println!(
            "frame {f}: {gpu:6.2} ms {} ({wall:6.2} ms wall), {} boxes, {found}/{} objects found at IoU 0.5; \
             recording created {} buffers, {} bind groups, {} queued writes",
            if queries.is_some() { "GPU" } else { "wall" },
            shown.len(),
            scene.len(),
            recorded.buffers_created - before.buffers_created,
            recorded.bind_groups_created - before.bind_groups_created,
            recorded.queue_writes - before.queue_writes,
        );
        for d in &shown {
            println!(
                "    {:<8} {:.2} [{:.0} {:.0} {:.0} {:.0}]",
                detector.class_name(d.class),
                d.score,
                d.bbox[0] * scale,
                d.bbox[1] * scale,
                d.bbox[2] * scale,
                d.bbox[3] * scale
            );
        }
        if saved.contains(&f) {
            let path = format!("{}/frame-{f:03}.png", args.out);
            save_frame(&device, &queue, &frame, &pixels, row_bytes, &path)?;
            println!("    saved {path}");
        }
    }
    let mut sorted = gpu_ms[1..].to_vec();
    sorted.sort_by(f64::total_cmp);
    if let Some(median) = sorted.get(sorted.len() / 2) {
        println!(
            "median {} time per frame after the first: {median:.2} ms on {}; {}/{} objects found",
            if queries.is_some() { "GPU" } else { "wall" },
            ctx.adapter_name(),
            found_total.0,
            found_total.1
        );
    }
    Ok(())
}

/// Intersection over union of two `[x1, y1, x2, y2]` boxes.
fn iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let area = |r: [f32; 4]| (r[2] - r[0]) * (r[3] - r[1]);
    inter / (area(a) + area(b) - inter)
}

/// Maps `buffer` and returns its first bytes as `T`.
fn read_back<T: bytemuck::Pod>(device: &wgpu::Device, buffer: &wgpu::Buffer) -> Result<T> {
    let slice = buffer.slice(..);
    slice.map_async(wgpu::MapMode::Read, |_| {});
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| Error::ReadbackFailed(e.to_string()))?;
    let value = {
        let view = slice
            .get_mapped_range()
            .map_err(|e| Error::ReadbackFailed(e.to_string()))?;
        bytemuck::pod_read_unaligned(&view[..size_of::<T>()])
    };
    buffer.unmap();
    Ok(value)
}

/// Copies `frame` into `pixels` and writes it as a PNG.
fn save_frame(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    frame: &wgpu::Texture,
    pixels: &wgpu::Buffer,
    row_bytes: u32,
    path: &str,
) -> Result<()> {
    let size = frame.size();
    let mut encoder = device.create_command_encoder(&Default::default());
    encoder.copy_texture_to_buffer(
        frame.as_image_copy(),
        wgpu::TexelCopyBufferInfo {
            buffer: pixels,
            layout: wgpu::TexelCopyBufferLayout {
                offset: 0,
                bytes_per_row: Some(row_bytes),
                rows_per_image: None,
            },
        },
        size,
    );
    queue.submit([encoder.finish()]);
    let slice = pixels.slice(..);
    slice.map_async(wgpu::MapMode::Read, |_| {});
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| Error::ReadbackFailed(e.to_string()))?;
    let mut rgba = Vec::with_capacity((4 * size.width * size.height) as usize);
    {
        let view = slice
            .get_mapped_range()
            .map_err(|e| Error::ReadbackFailed(e.to_string()))?;
        for row in view.chunks(row_bytes as usize).take(size.height as usize) {
            rgba.extend_from_slice(&row[..(4 * size.width) as usize]);
        }
    }
    pixels.unmap();
    image::save_buffer(path, &rgba, size.width, size.height, image::ExtendedColorType::Rgba8)
        .map_err(|e| Error::InvalidParameter(format!("writing {path}: {e}")))
}
