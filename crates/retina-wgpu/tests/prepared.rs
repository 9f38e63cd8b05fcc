//! Prepared objects in a frame loop: recorded ten times into host-made encoders, frames 2-10
//! create no buffer or bind group and queue no write (the context's counters prove it), and
//! every frame's results equal the one-shot path's.

mod common;

use common::cases::{Outputs, detections_from, small_net};
use common::{Rng, gpu, gpu_with};
use retina_wgpu::coco::Normalize;
use retina_wgpu::gpu::{OutputOptions, PreparedNms, PreparedPostProcess, PreparedTopK, TopkSegment};
use retina_wgpu::model::{Detector, PreparedDetector};
use retina_wgpu::nn::{Engine, GpuEngine};
use retina_wgpu::{Backend, Detection, GpuContext, GpuOptions, Nms, PostProcess, wgpu};

fn same_detections(a: &[Vec<Detection>], b: &[Vec<Detection>], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: images");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.len(), y.len(), "{what}: image {i} count");
        for (d, e) in x.iter().zip(y) {
            assert_eq!(d.class, e.class, "{what}: image {i}");
            assert!((d.score - e.score).abs() <= 1e-5, "{what}: image {i} {d:?} vs {e:?}");
            for k in 0..4 {
                assert!(
                    (d.bbox[k] - e.bbox[k]).abs() <= 1e-3,
                    "{what}: image {i} {d:?} vs {e:?}"
                );
            }
        }
    }
}

fn read_detections(ctx: &GpuContext, out: &retina_wgpu::gpu::DetectionOutput) -> Vec<Vec<Detection>> {
    let dets = ctx.download(&out.detections).unwrap();
    let counts = ctx.download(&out.counts).unwrap();
    detections_from(&dets, &counts, out.max_detections)
}

#[test]
fn prepared_postprocess_frames_two_to_ten_create_nothing_and_match_the_cpu() {
    // A context of its own: the counters are per context, and other tests share `gpu()`'s.
    let Some(ctx) = gpu_with(GpuOptions::default()) else {
        return;
    };
    let batch = 2;
    let o = Outputs::sparse(&mut Rng::new(11), batch);
    let device = o.upload(&ctx);
    let input = o.buffers(&device);
    let pp = PostProcess::default();
    let expected = pp.run(&Backend::Cpu, &o.input()).unwrap();
    assert!(expected.iter().all(|d| !d.is_empty()), "the scene must give detections");

    let mut prepared = PreparedPostProcess::new(&ctx, &pp).unwrap();
    let out = ctx.detection_output(batch, pp.max_detections).unwrap();
    let compiled = ctx.resource_stats().pipelines_compiled;
    let mut after_first = None;
    for frame in 1..=10 {
        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        let before = ctx.resource_stats();
        prepared.record(&mut encoder, &input, &out).unwrap();
        let after = ctx.resource_stats();
        assert_eq!(after.pipelines_compiled, compiled, "frame {frame} compiled a pipeline");
        if frame == 1 {
            after_first = Some(after);
            assert!(
                after.buffers_created > before.buffers_created,
                "frame 1 makes its buffers"
            );
        } else {
            assert_eq!(
                after.buffers_created, before.buffers_created,
                "frame {frame} created buffers"
            );
            assert_eq!(
                after.bind_groups_created, before.bind_groups_created,
                "frame {frame} created bind groups"
            );
            assert_eq!(after.queue_writes, before.queue_writes, "frame {frame} queued writes");
        }
        ctx.queue().submit([encoder.finish()]);
        same_detections(&read_detections(&ctx, &out), &expected, &format!("frame {frame}"));
    }
    assert!(after_first.is_some());

    // New parameters: the frame updates uniforms (queued writes) but creates no buffer.
    let strict = PostProcess {
        score_threshold: 0.5,
        ..pp
    };
    prepared.set_postprocess(&strict).unwrap();
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    let before = ctx.resource_stats();
    prepared.record(&mut encoder, &input, &out).unwrap();
    let after = ctx.resource_stats();
    assert_eq!(after.buffers_created, before.buffers_created);
    assert!(after.queue_writes > before.queue_writes, "changed uniforms are written");
    ctx.queue().submit([encoder.finish()]);
    let strict_expected = strict.run(&Backend::Cpu, &o.input()).unwrap();
    same_detections(&read_detections(&ctx, &out), &strict_expected, "score threshold 0.5");
}

#[test]
fn draw_arguments_count_each_images_detections() {
    let Some(ctx) = gpu() else { return };
    let batch = 3;
    let o = Outputs::sparse(&mut Rng::new(5), batch);
    let device = o.upload(&ctx);
    let pp = PostProcess::default();
    let out = ctx
        .detection_output_with(
            batch,
            pp.max_detections,
            &OutputOptions {
                extra_usage: wgpu::BufferUsages::VERTEX,
                draw_vertices: Some(8),
            },
        )
        .unwrap();
    assert!(out.detections.buffer().usage().contains(wgpu::BufferUsages::VERTEX));
    let args = out.draw_args.as_ref().unwrap();
    assert!(args.buffer.buffer().usage().contains(wgpu::BufferUsages::INDIRECT));
    let mut prepared = PreparedPostProcess::new(&ctx, &pp).unwrap();
    prepared.submit(&o.buffers(&device), &out).unwrap();
    let counts = ctx.download(&out.counts).unwrap();
    let draw = ctx.download(&args.buffer).unwrap();
    for (image, &n) in counts.iter().enumerate() {
        assert!(n > 0);
        assert_eq!(draw[image], [8, n, 0, 0], "image {image}");
    }
    assert!(
        ctx.detection_output_with(
            1,
            100,
            &OutputOptions {
                draw_vertices: Some(0),
                ..Default::default()
            }
        )
        .is_err()
    );
}

/// A frame loop whose scores change every frame (written into the same buffer, as a renderer
/// does): each frame's top-k is the CPU's of that frame's scores, without a threshold, with one
/// that most scores pass and with one that leaves fewer than k, in an order that changes with
/// the frame; a segment with k = 0 and a block of whole tiles below every threshold (tiles that
/// die in the first pass and are never listed). The radix selection's per-segment states are
/// written by the kernels: a recording must start from the initial states, not from the last.
#[test]
fn prepared_top_k_follows_scores_that_change_every_frame() {
    let Some(ctx) = gpu_with(GpuOptions::default()) else {
        return;
    };
    let mut rng = Rng::new(5);
    let n = 6000;
    let segments = [
        TopkSegment {
            start: 0,
            len: 2500,
            k: 40,
        },
        TopkSegment {
            start: 2500,
            len: 3000,
            k: 300,
        },
        TopkSegment {
            start: 5500,
            len: 500,
            k: 0,
        },
    ];
    let scores_buf = ctx.zeros::<f32>(n).unwrap();
    let mut prepared = PreparedTopK::new(&ctx).unwrap();
    for frame in 1..=6 {
        // Each frame a different spread, so that a stale threshold selects too many or too few.
        let spread = frame as f32;
        let mut scores: Vec<f32> = (0..n).map(|_| rng.normal() * spread).collect();
        // Tile 1 of the second segment (its scores 1,024..2,048) below every threshold.
        scores[2500 + 1024..2500 + 2 * 1024].fill(-1e6);
        ctx.write(&scores_buf, &scores).unwrap();
        let mut thresholds = [None, Some(0.5 * spread), Some(2.5 * spread)];
        thresholds.rotate_left(frame % 3);
        for threshold in thresholds {
            let mut encoder = ctx.device().create_command_encoder(&Default::default());
            let top = prepared
                .record(&mut encoder, &scores_buf, &segments, threshold)
                .unwrap();
            ctx.queue().submit([encoder.finish()]);
            let selected = ctx.download(&top.selected).unwrap();
            let candidates = ctx.download(&top.candidates).unwrap();
            for (s, seg) in segments.iter().enumerate() {
                let want =
                    retina_wgpu::cpu::sort::top_k_segment(&scores[seg.start..seg.start + seg.len], seg.k, threshold);
                let got: Vec<(u32, u32)> = candidates[s * top.stride..s * top.stride + selected[s] as usize]
                    .iter()
                    .map(|c| (c[0], c[1]))
                    .collect();
                assert!(
                    got == want,
                    "frame {frame} threshold {threshold:?} segment {s}: {} selected, {} expected",
                    got.len(),
                    want.len()
                );
            }
        }
    }
}

#[test]
fn prepared_nms_and_top_k_reuse_everything_after_the_first_frame() {
    let Some(ctx) = gpu_with(GpuOptions::default()) else {
        return;
    };
    let mut rng = Rng::new(3);
    let n = 3000;
    let boxes: Vec<[f32; 4]> = (0..n)
        .map(|_| {
            let (x, y) = (rng.uniform() * 500.0, rng.uniform() * 500.0);
            [x, y, x + 10.0 + rng.uniform() * 60.0, y + 10.0 + rng.uniform() * 60.0]
        })
        .collect();
    let scores: Vec<f32> = (0..n).map(|_| rng.uniform()).collect();
    let nms = Nms::hard(0.5);
    let expected = nms.run(&Backend::Cpu, &boxes, &scores, None).unwrap();
    let (boxes_buf, scores_buf) = (ctx.upload(&boxes).unwrap(), ctx.upload(&scores).unwrap());
    let segments = [
        TopkSegment {
            start: 0,
            len: 1000,
            k: 50,
        },
        TopkSegment {
            start: 1000,
            len: 2000,
            k: 100,
        },
    ];
    let mut prepared_nms = PreparedNms::new(&ctx, &nms).unwrap();
    let mut prepared_topk = PreparedTopK::new(&ctx).unwrap();
    for frame in 1..=10 {
        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        let before = ctx.resource_stats();
        let kept = prepared_nms
            .record(&mut encoder, &boxes_buf, &scores_buf, None)
            .unwrap();
        let top = prepared_topk
            .record(&mut encoder, &scores_buf, &segments, None)
            .unwrap();
        let after = ctx.resource_stats();
        if frame > 1 {
            assert_eq!(after, before, "frame {frame}");
        }
        ctx.queue().submit([encoder.finish()]);
        let count = ctx.download(&kept.count).unwrap()[0] as usize;
        let keep = ctx.download(&kept.keep).unwrap();
        assert_eq!(&keep[..count], expected.keep.as_slice());
        let selected = ctx.download(&top.selected).unwrap();
        assert_eq!(selected, vec![50, 100], "frame {frame}");
    }
}

#[test]
fn prepared_detector_frames_create_nothing_and_match_the_detector() {
    // Every kernel compiled with the context: preparing and recording compile nothing more.
    let Some(ctx) = gpu_with(GpuOptions {
        precompile: true,
        ..GpuOptions::default()
    }) else {
        return;
    };
    let compiled_with_context = ctx.resource_stats().pipelines_compiled;
    assert!(
        compiled_with_context >= 40,
        "{compiled_with_context} pipelines precompiled"
    );
    let (net, values) = small_net();
    let s = net.config().input_size;
    let batch = 2;
    let mut rng = Rng::new(9);
    let images: Vec<f32> = (0..batch * 3 * s * s).map(|_| rng.normal()).collect();
    // The untrained network's scores sit near the prior 0.01: a low threshold keeps candidates.
    let pp = PostProcess {
        score_threshold: 0.005,
        ..PostProcess::default()
    };
    let mut reference = Detector::new(GpuEngine::new(&ctx).unwrap(), net.clone(), &values).unwrap();
    reference.postprocess = pp;
    let expected = reference.detect(&images).unwrap();
    assert!(expected.iter().all(|d| !d.is_empty()));

    let mut prepared = PreparedDetector::new(&ctx, net, &values).unwrap();
    prepared.postprocess = pp;
    assert_eq!(ctx.resource_stats().pipelines_compiled, compiled_with_context);
    let input = ctx.upload(&images).unwrap();
    let out = prepared.output(batch, &OutputOptions::default()).unwrap();
    let compiled = ctx.resource_stats().pipelines_compiled;
    for frame in 1..=10 {
        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        let before = ctx.resource_stats();
        prepared.record(&mut encoder, &input, &out).unwrap();
        let after = ctx.resource_stats();
        assert_eq!(after.pipelines_compiled, compiled, "frame {frame} compiled a pipeline");
        if frame > 1 {
            assert_eq!(after, before, "frame {frame} created or wrote something");
        }
        ctx.queue().submit([encoder.finish()]);
        same_detections(&read_detections(&ctx, &out), &expected, &format!("frame {frame}"));
    }
    // Bad input is refused before anything is recorded.
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    let short = ctx.upload(&images[..100]).unwrap();
    assert!(prepared.record(&mut encoder, &short, &out).is_err());
    let wrong_out = prepared.output(3, &OutputOptions::default()).unwrap();
    assert!(prepared.record(&mut encoder, &input, &wrong_out).is_err());
}

#[test]
fn a_texture_becomes_the_normalised_input_the_cpu_makes() {
    let Some(ctx) = gpu() else { return };
    let (w, h, side) = (50u32, 30u32, 40usize);
    let mut rng = Rng::new(1);
    let rgba: Vec<u8> = (0..w * h * 4).map(|_| rng.below(256) as u8).collect();
    let texture = ctx.device().create_texture(&wgpu::TextureDescriptor {
        label: Some("frame"),
        size: wgpu::Extent3d {
            width: w,
            height: h,
            depth_or_array_layers: 1,
        },
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format: wgpu::TextureFormat::Rgba8Unorm,
        usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
        view_formats: &[],
    });
    ctx.queue().write_texture(
        texture.as_image_copy(),
        &rgba,
        wgpu::TexelCopyBufferLayout {
            offset: 0,
            bytes_per_row: Some(4 * w),
            rows_per_image: None,
        },
        texture.size(),
    );
    let view = texture.create_view(&Default::default());
    let out = ctx.zeros::<f32>(2 * 3 * side * side).unwrap();
    let normalize = Normalize::IMAGENET;
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    ctx.record_image_to_tensor(&mut encoder, &view, (w, h), &normalize, side, 1, &out)
        .unwrap();
    ctx.queue().submit([encoder.finish()]);
    let got = ctx.download(&out).unwrap();
    // The CPU reference: nearest-neighbour resize by the same scale, then write_chw.
    let scale = retina_wgpu::gpu::frame_scale(w, h, side);
    let source = |i: usize| ((i as f32 + 0.5) * scale).floor() as u32;
    let rw = (0..side).take_while(|&x| source(x) < w).count();
    let rh = (0..side).take_while(|&y| source(y) < h).count();
    let mut rgb = Vec::new();
    let mut rows = 0;
    for y in 0..rh {
        let sy = source(y);
        rows += 1;
        for x in 0..rw {
            let sx = source(x);
            let p = ((sy * w + sx) * 4) as usize;
            rgb.extend_from_slice(&rgba[p..p + 3]);
        }
    }
    assert!(rows > 0);
    let mut expected = vec![0.0; 3 * side * side];
    normalize.write_chw(&rgb, rw, side, &mut expected).unwrap();
    assert!(got[..3 * side * side].iter().all(|&v| v == 0.0), "image 0 untouched");
    for (i, (g, e)) in got[3 * side * side..].iter().zip(&expected).enumerate() {
        assert!((g - e).abs() <= 1e-4, "value {i}: {g} vs {e}");
    }
    // Out of range: image 2 of a two-image buffer.
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    assert!(
        ctx.record_image_to_tensor(&mut encoder, &view, (w, h), &normalize, side, 2, &out)
            .is_err()
    );
}

#[test]
fn kernels_compile_through_a_host_pipeline_cache() {
    let Some(ctx) = gpu() else { return };
    if !ctx.features().contains(wgpu::Features::PIPELINE_CACHE) {
        eprintln!("skipping: {} has no PIPELINE_CACHE", ctx.adapter_name());
        return;
    }
    // SAFETY: `data` is None, so the driver loads nothing that a previous
    // `PipelineCache::get_data` of this adapter must have produced.
    let cache = unsafe {
        ctx.device().create_pipeline_cache(&wgpu::PipelineCacheDescriptor {
            label: Some("host cache"),
            data: None,
            fallback: true,
        })
    };
    let cached = GpuContext::from_device(
        ctx.device(),
        ctx.queue(),
        &GpuOptions {
            precompile: true,
            pipeline_cache: Some(cache.clone()),
            ..GpuOptions::default()
        },
    )
    .unwrap();
    assert!(cached.resource_stats().pipelines_compiled >= 40);
    let data = cache
        .get_data()
        .expect("the cache has data after compiling every kernel");
    assert!(!data.is_empty());
}

/// The context's work counters against a hand count: a convolution with one output tile and a
/// short fan-in is one dispatch and asks for its output's bytes; `sync` submits once; reading
/// the output back is one more submit and one readback.
#[test]
fn wait_time_is_the_hosts_time_blocked_on_the_device() {
    use retina_wgpu::nn::{Conv2d, Engine, Shape};
    // A context of its own: no other test's waits add to its clock.
    let Some(ctx) = gpu_with(GpuOptions::default()) else {
        return;
    };
    let mut engine = GpuEngine::new(&ctx).unwrap();
    let c = Conv2d::new(16, 16, 3, 1);
    let x = engine.zeros(Shape::new(2, 16, 32, 32)).unwrap();
    let w = engine.zeros(c.weight_shape()).unwrap();
    engine.sync().unwrap();
    let (before, start) = (ctx.wait_time(), std::time::Instant::now());
    let _y = engine.conv2d(&c, &x, &w, None).unwrap();
    assert_eq!(ctx.wait_time(), before, "recording waits for nothing");
    engine.sync().unwrap();
    let (waited, elapsed) = (ctx.wait_time() - before, start.elapsed());
    assert!(
        waited > std::time::Duration::ZERO && waited <= elapsed,
        "waited {waited:?} of {elapsed:?}"
    );
}

#[test]
fn work_counters_count_what_was_issued() {
    use retina_wgpu::gpu::WorkStats;
    use retina_wgpu::nn::{Conv2d, Engine, Shape};
    let Some(ctx) = gpu() else { return };
    let mut engine = GpuEngine::new(&ctx).unwrap();
    let c = Conv2d::new(3, 8, 3, 1);
    let x = engine.tensor(Shape::new(1, 3, 8, 8), &[0.5; 192]).unwrap();
    let w = engine
        .tensor(c.weight_shape(), &vec![0.1; c.weight_shape().len()])
        .unwrap();
    let b = engine.zeros(c.bias_shape()).unwrap();
    engine.sync().unwrap();
    let start = ctx.work_stats();
    let y = engine.conv2d(&c, &x, &w, Some(&b)).unwrap();
    let recorded = ctx.work_stats().since(&start);
    let expected = WorkStats {
        dispatches: 1,
        submits: 0,
        readbacks: 0,
        tensor_bytes: 8 * 8 * 8 * 4,
    };
    assert_eq!(recorded, expected, "recording the convolution");
    engine.sync().unwrap();
    assert_eq!(ctx.work_stats().since(&start).submits, 1, "sync submits once");
    let values = engine.read(&y).unwrap();
    let all = ctx.work_stats().since(&start);
    assert_eq!(
        (all.dispatches, all.submits, all.readbacks),
        (1, 2, 1),
        "after the readback"
    );
    // An interior output sums 27 products 0.5 x 0.1.
    assert!((values[8 + 1] - 1.35).abs() < 1e-5, "{}", values[9]);
}

#[test]
fn prepared_forward_gives_the_cpu_networks_raw_outputs() {
    let Some(ctx) = gpu() else { return };
    let (net, values) = small_net();
    let s = net.config().input_size;
    let batch = 2;
    let mut rng = Rng::new(12);
    let images: Vec<f32> = (0..batch * 3 * s * s).map(|_| rng.normal()).collect();
    // The reference: the CPU backend's forward pass of the same network.
    let mut cpu = retina_wgpu::nn::CpuEngine::<f32>::new();
    let params = net.upload(&mut cpu, &values).unwrap();
    let x = cpu
        .tensor(retina_wgpu::nn::Shape::new(batch, 3, s, s), &images)
        .unwrap();
    let tape = net.forward(&mut cpu, &params, x).unwrap();
    let want = [cpu.read(&tape.class_rows).unwrap(), cpu.read(&tape.box_rows).unwrap()];

    let mut prepared = PreparedDetector::new(&ctx, net, &values).unwrap();
    let (per_logits, per_deltas) = prepared.raw_output_lens().unwrap();
    assert_eq!([per_logits * batch, per_deltas * batch], [want[0].len(), want[1].len()]);
    let input = ctx.upload(&images).unwrap();
    let logits = ctx.zeros::<f32>(batch * per_logits).unwrap();
    let deltas = ctx.zeros::<f32>(batch * per_deltas).unwrap();
    for frame in 1..=2 {
        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        prepared.record_forward(&mut encoder, &input, &logits, &deltas).unwrap();
        ctx.queue().submit([encoder.finish()]);
        for (name, buffer, want) in [("logits", &logits, &want[0]), ("deltas", &deltas, &want[1])] {
            let got = ctx.download(buffer).unwrap();
            let worst = got.iter().zip(want).map(|(g, w)| (g - w).abs()).fold(0.0f32, f32::max);
            assert!(worst <= 1e-4, "frame {frame}: {name} differ from the CPU's by {worst}");
        }
    }
    // Too short an output or a partial image is refused before anything is recorded.
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    let short = ctx.zeros::<f32>(per_logits).unwrap();
    assert!(prepared.record_forward(&mut encoder, &input, &short, &deltas).is_err());
    let partial = ctx.upload(&images[..100]).unwrap();
    assert!(
        prepared
            .record_forward(&mut encoder, &partial, &logits, &deltas)
            .is_err()
    );
}

/// The work of one convolution's forward pass (no bias), read back: a lookup by kernel name.
fn conv_work(
    ctx: &GpuContext,
    engine: &mut GpuEngine,
    conv: &retina_wgpu::nn::Conv2d,
    x: &<GpuEngine as Engine>::Tensor,
    w: &<GpuEngine as Engine>::Tensor,
) -> impl Fn(&str) -> retina_wgpu::gpu::KernelWork + use<> {
    let before = ctx.kernel_work();
    let y = engine.conv2d(conv, x, w, None).unwrap();
    engine.read(&y).unwrap();
    let after = ctx.kernel_work();
    move |name: &str| {
        let find = |list: &[(&str, retina_wgpu::gpu::KernelWork)]| list.iter().find(|(n, _)| *n == name).unwrap().1;
        find(&after).since(&find(&before))
    }
}

#[test]
fn kernel_work_counts_a_convolutions_flops_and_bytes() {
    let Some(ctx) = gpu() else { return };
    let mut engine = GpuEngine::new(&ctx).unwrap();
    let conv = retina_wgpu::nn::Conv2d::new(6, 10, 3, 2);
    let input = retina_wgpu::nn::Shape::new(2, 6, 9, 7);
    let out = conv.output_shape(input).unwrap();
    let mut rng = Rng::new(3);
    let x = engine
        .tensor(input, &(0..input.len()).map(|_| rng.normal()).collect::<Vec<_>>())
        .unwrap();
    let w_shape = conv.weight_shape();
    let w = engine
        .tensor(w_shape, &(0..w_shape.len()).map(|_| rng.normal()).collect::<Vec<_>>())
        .unwrap();
    engine.sync().unwrap();
    let work = conv_work(&ctx, &mut engine, &conv, &x, &w);
    // 10 output channels (rows) over 40 output pixels (columns): the 16 x 64 tiles.
    let forward = work("ConvForwardFewRows");
    assert_eq!(work("ConvForward"), retina_wgpu::gpu::KernelWork::default());
    // One GEMM: out channels x output pixels x fan-in multiply-adds.
    assert_eq!(forward.flops, 2 * (10 * out.n * out.plane() * conv.fan_in()) as u64);
    assert!(forward.dispatches >= 1 && forward.workgroups >= 1, "{forward:?}");
    // It binds at least the input, the weights and the output (or its split-K partials).
    let least = 4 * (input.len() + w_shape.len() + out.len()) as u64;
    assert!(
        forward.bound_bytes >= least,
        "{} bytes bound, {least} at least",
        forward.bound_bytes
    );
    assert_eq!(work("ConvGradInputFewRows"), retina_wgpu::gpu::KernelWork::default());

    // A product of at most 16 columns (here 2 images x 2 x 2 output pixels) takes the 64 x 16
    // tiles, and only them (the 10 output channels would also ask for 16 x 64 ones).
    let small = retina_wgpu::nn::Shape::new(2, 6, 3, 4);
    let x = engine
        .tensor(small, &(0..small.len()).map(|_| rng.normal()).collect::<Vec<_>>())
        .unwrap();
    let work = conv_work(&ctx, &mut engine, &conv, &x, &w);
    let out = conv.output_shape(small).unwrap();
    assert_eq!(out.n * out.plane(), 8);
    assert_eq!(work("ConvForwardFewColumns").flops, 2 * (10 * 8 * conv.fan_in()) as u64);
    assert_eq!(work("ConvForwardFewRows"), retina_wgpu::gpu::KernelWork::default());
}
