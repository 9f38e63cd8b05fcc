//! A host application's device, end to end on the GPU: the application creates its own wgpu
//! device (as a renderer would), records RetinaNet's post-processing into its own command
//! encoder with a prepared post-processing, and draws the detections as rectangles straight
//! from the crate's buffers: the detections buffer is the instance-rate vertex buffer and the
//! post-processing writes the indirect draw arguments itself, so there is no copy and no
//! readback between the network outputs and the picture. It reads back once, at the end, only
//! to print what it drew.
//!
//! Run: `cargo run --release --example host_device`

use retina_wgpu::gpu::{DetectionBuffers, GpuDetection, OutputOptions, PreparedPostProcess};
use retina_wgpu::wgpu;
use retina_wgpu::{AnchorConfig, Backend, BoxCoder, GpuContext, GpuOptions, GroundTruth, PostProcess, TargetAssigner};

const SIZE: u32 = 320;
const CLASSES: usize = 3;

/// Draws every detection as a rectangle outline: 8 vertices (4 lines) per instance.
const DRAW_BOXES: &str = r#"
struct Out { @builtin(position) position: vec4<f32>, @location(0) color: vec3<f32> }

@vertex
fn vs(@builtin(vertex_index) v: u32, @location(0) bbox: vec4<f32>, @location(1) score: f32, @location(2) label: i32) -> Out {
    // Corners in line-list order: top, right, bottom, left edges.
    var corners = array<vec2<u32>, 8>(vec2(0u, 1u), vec2(2u, 1u), vec2(2u, 1u), vec2(2u, 3u),
                                      vec2(2u, 3u), vec2(0u, 3u), vec2(0u, 3u), vec2(0u, 1u));
    let c = corners[v];
    let p = vec2(bbox[c.x], bbox[c.y]) / 320.0;
    var colors = array<vec3<f32>, 3>(vec3(1.0, 0.2, 0.2), vec3(0.2, 1.0, 0.2), vec3(0.3, 0.5, 1.0));
    return Out(vec4(p.x * 2.0 - 1.0, 1.0 - p.y * 2.0, 0.0, 1.0), colors[u32(label) % 3u] * score);
}

@fragment
fn fs(in: Out) -> @location(0) vec4<f32> {
    return vec4(in.color, 1.0);
}
"#;

/// What a trained RetinaNet could output for three objects.
struct NetworkOutputs {
    logits: Vec<f32>,
    deltas: Vec<[f32; 4]>,
    objects: Vec<[f32; 4]>,
}

/// Confident logits and exact regression deltas on the anchors that match three objects,
/// background elsewhere.
fn network_outputs(anchors: &[[f32; 4]]) -> retina_wgpu::Result<NetworkOutputs> {
    let objects = [
        [30.0, 40.0, 130.0, 200.0],
        [150.0, 120.0, 300.0, 210.0],
        [200.0, 230.0, 260.0, 300.0],
    ];
    let classes = [0, 1, 2];
    let targets = TargetAssigner::new(CLASSES).assign(
        &Backend::Cpu,
        anchors,
        &[GroundTruth {
            boxes: &objects,
            classes: &classes,
        }],
    )?;
    let mut logits = vec![-6.0f32; anchors.len() * CLASSES];
    for (anchor, &label) in targets.labels.iter().enumerate() {
        if label >= 0 {
            logits[anchor * CLASSES + label as usize] = 2.0 + (anchor % 7) as f32 * 0.1;
        }
    }
    Ok(NetworkOutputs {
        logits,
        deltas: targets.box_targets,
        objects: objects.to_vec(),
    })
}

fn main() -> retina_wgpu::Result<()> {
    // The host application's device: default limits, no optional features.
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&Default::default()))
        .map_err(|e| retina_wgpu::Error::NoAdapter(format!(" ({e})")))?;
    let (device, queue) = pollster::block_on(adapter.request_device(&Default::default()))
        .map_err(|e| retina_wgpu::Error::DeviceLost(e.to_string()))?;
    let ctx = GpuContext::from_device(&device, &queue, &GpuOptions::default())?;

    // The network's outputs, on the device.
    let config = AnchorConfig::retinanet();
    let anchors = ctx.anchors(&config, SIZE, SIZE)?;
    let outputs = network_outputs(&config.generate(&Backend::Cpu, SIZE, SIZE)?)?;
    let (logits, deltas) = (ctx.upload(&outputs.logits)?, ctx.upload(&outputs.deltas)?);
    let offsets = config.level_offsets(SIZE, SIZE)?;
    let pp = PostProcess {
        coder: BoxCoder::default(),
        ..PostProcess::default()
    };
    // Output buffers the renderer binds as they are: the detections as an instance-rate vertex
    // buffer, and indirect draw arguments (8 vertices per box) written with them.
    let detections = ctx.detection_output_with(
        1,
        pp.max_detections,
        &OutputOptions {
            extra_usage: wgpu::BufferUsages::VERTEX,
            draw_vertices: Some(8),
        },
    )?;
    let draw_args = detections.draw_args.as_ref().expect("asked for draw arguments");
    // Prepared once: pipelines compiled now, buffers and bind groups kept between frames.
    let mut postprocess = PreparedPostProcess::new(&ctx, &pp)?;

    // The application's render resources.
    let target = device.create_texture(&wgpu::TextureDescriptor {
        label: Some("frame"),
        size: wgpu::Extent3d {
            width: SIZE,
            height: SIZE,
            depth_or_array_layers: 1,
        },
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format: wgpu::TextureFormat::Rgba8Unorm,
        usage: wgpu::TextureUsages::RENDER_ATTACHMENT | wgpu::TextureUsages::COPY_SRC,
        view_formats: &[],
    });
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("draw boxes"),
        source: wgpu::ShaderSource::Wgsl(DRAW_BOXES.into()),
    });
    let pipeline = device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
        label: Some("draw boxes"),
        layout: None,
        vertex: wgpu::VertexState {
            module: &module,
            entry_point: Some("vs"),
            compilation_options: Default::default(),
            buffers: &[Some(wgpu::VertexBufferLayout {
                array_stride: size_of::<GpuDetection>() as u64,
                step_mode: wgpu::VertexStepMode::Instance,
                attributes: &wgpu::vertex_attr_array![0 => Float32x4, 1 => Float32, 2 => Sint32],
            })],
        },
        fragment: Some(wgpu::FragmentState {
            module: &module,
            entry_point: Some("fs"),
            compilation_options: Default::default(),
            targets: &[Some(wgpu::TextureFormat::Rgba8Unorm.into())],
        }),
        primitive: wgpu::PrimitiveState {
            topology: wgpu::PrimitiveTopology::LineList,
            ..Default::default()
        },
        depth_stencil: None,
        multisample: Default::default(),
        multiview_mask: None,
        cache: None,
    });

    // One encoder: post-processing, then the draw that consumes its output, with no copy.
    let mut encoder = device.create_command_encoder(&Default::default());
    postprocess.record(
        &mut encoder,
        &DetectionBuffers {
            logits: &logits,
            deltas: &deltas,
            anchors: &anchors,
            level_offsets: &offsets,
            num_classes: CLASSES,
            image_size: (SIZE, SIZE),
        },
        &detections,
    )?;
    {
        let view = target.create_view(&Default::default());
        let mut pass = encoder.begin_render_pass(&wgpu::RenderPassDescriptor {
            label: Some("frame"),
            color_attachments: &[Some(wgpu::RenderPassColorAttachment {
                view: &view,
                depth_slice: None,
                resolve_target: None,
                ops: wgpu::Operations {
                    load: wgpu::LoadOp::Clear(wgpu::Color::BLACK),
                    store: wgpu::StoreOp::Store,
                },
            })],
            ..Default::default()
        });
        pass.set_pipeline(&pipeline);
        pass.set_vertex_buffer(0, detections.detections.buffer().slice(..));
        pass.draw_indirect(draw_args.buffer.buffer(), 0);
    }
    queue.submit([encoder.finish()]);

    // The one readback: what was drawn, and the frame.
    let drawn = ctx.download(&detections.counts)?[0] as usize;
    let boxes = ctx.download(&detections.detections)?;
    println!("drew {drawn} detections (objects placed: {:?}):", outputs.objects);
    for d in &boxes[..drawn] {
        println!(
            "  class {} score {:.3} box [{:.1} {:.1} {:.1} {:.1}]",
            d.class, d.score, d.bbox[0], d.bbox[1], d.bbox[2], d.bbox[3]
        );
    }
    let lit = lit_pixels(&device, &queue, &target)?;
    println!("{lit} pixels of the {SIZE} x {SIZE} frame were drawn");
    Ok(())
}

/// Reads the frame back and counts non-black pixels.
fn lit_pixels(device: &wgpu::Device, queue: &wgpu::Queue, target: &wgpu::Texture) -> retina_wgpu::Result<usize> {
    let row = (SIZE * 4).div_ceil(wgpu::COPY_BYTES_PER_ROW_ALIGNMENT) * wgpu::COPY_BYTES_PER_ROW_ALIGNMENT;
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("frame readback"),
        size: u64::from(row * SIZE),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = device.create_command_encoder(&Default::default());
    encoder.copy_texture_to_buffer(
        target.as_image_copy(),
        wgpu::TexelCopyBufferInfo {
            buffer: &staging,
            layout: wgpu::TexelCopyBufferLayout {
                offset: 0,
                bytes_per_row: Some(row),
                rows_per_image: None,
            },
        },
        target.size(),
    );
    queue.submit([encoder.finish()]);
    staging.map_async(wgpu::MapMode::Read, .., |_| {});
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| retina_wgpu::Error::ReadbackFailed(e.to_string()))?;
    let data = staging
        .get_mapped_range(..)
        .map_err(|e| retina_wgpu::Error::ReadbackFailed(e.to_string()))?;
    Ok(data
        .chunks(row as usize)
        .flat_map(|r| r[..(SIZE * 4) as usize].chunks(4))
        .filter(|p| p[0] > 0 || p[1] > 0 || p[2] > 0)
        .count())
}
