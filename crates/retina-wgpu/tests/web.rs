//! Browser tests: the kernels and the detector on the page's WebGPU device, against the CPU
//! backend (single-threaded in the page) and torchvision's golden vectors, as the native tests
//! do. Every GPU result is recorded with the `record_*` APIs and read back with
//! [`GpuContext::download_async`]: nothing in a page may block.
//!
//! Run in headless Chromium (see the README's "In the browser"; `webdriver.json` beside
//! Cargo.toml passes the flags that enable WebGPU):
//!
//! ```text
//! CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner WASM_BINDGEN_TEST_TIMEOUT=600 \
//!     cargo test --target wasm32-unknown-unknown -p retina-wgpu --test web
//! ```
//!
//! `wasm-bindgen-test-runner` finds `chromedriver` on the PATH (or at `CHROMEDRIVER`); its
//! default limit of 20 s is for the whole run, which takes about a minute on a software adapter.
//!
//! Natively this file compiles to nothing.
#![cfg(target_arch = "wasm32")]

mod common;

use common::cases::{
    DeviceAssignment, FocalCase, FocalProblem, MatcherCase, NmsCase, Outputs, assert_focal_agree,
    assert_same_detections, assert_same_nms, assert_targets_agree, assigner, detections_from, focal_losses,
    ground_truths, hard_batch, nms_kinds, nms_problem, postprocess_kinds, postprocess_pair, random_boxes, small_net,
};
use common::{Rng, assert_close, boxes, flat_f32, flatten, parse_golden};
use retina_wgpu::gpu::{
    DetectionBuffers, DetectionOutput, FocalBuffers, LogitsBuffer, OutputOptions, PreparedNms, PreparedPostProcess,
    TargetsBuffer,
};
use retina_wgpu::model::{Detector, PreparedDetector};
use retina_wgpu::nn::CpuEngine;
use retina_wgpu::{
    AnchorConfig, AssignedTargets, Backend, BoxCoder, Detection, FocalLoss, FocalOutput, GpuContext, GpuOptions,
    GroundTruth, Nms, NmsOutput, PostProcess, Reduction, TargetAssigner, box_iou, wgpu,
};
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

// ---- helpers ----
//
// The inputs, the golden cases and the comparisons are tests/common/cases.rs's, which the
// native tests use too; what is here is how a page gets a context and reads results back.

/// The page's context on its WebGPU adapter, shared by the tests (as the native tests share
/// theirs) so that each kernel is compiled once.
async fn gpu() -> GpuContext {
    thread_local! {
        static CONTEXT: std::cell::RefCell<Option<GpuContext>> = const { std::cell::RefCell::new(None) };
    }
    if let Some(ctx) = CONTEXT.with_borrow(|c| c.clone()) {
        return ctx;
    }
    let ctx = GpuContext::new_async(GpuOptions::default())
        .await
        .expect("a WebGPU context (is the browser started with --enable-unsafe-webgpu?)");
    CONTEXT.with_borrow_mut(|c| c.get_or_insert(ctx).clone())
}

fn encoder(ctx: &GpuContext) -> wgpu::CommandEncoder {
    ctx.device().create_command_encoder(&Default::default())
}

/// Reads a buffer back without blocking.
async fn read<T: bytemuck::Pod>(ctx: &GpuContext, buffer: &retina_wgpu::GpuBuffer<T>) -> Vec<T> {
    ctx.download_async(buffer).await.expect("download_async")
}

fn log(message: &str) {
    web_sys::console::log_1(&message.into());
}

// ---- the device itself ----

/// The browser's WebGPU device through wgpu alone: an adapter, a device, one trivial compute.
#[wasm_bindgen_test]
async fn raw_wgpu_compute() {
    use wgpu::util::DeviceExt;
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::BROWSER_WEBGPU,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let adapter = instance
        .request_adapter(&wgpu::RequestAdapterOptions::default())
        .await
        .expect("a WebGPU adapter");
    log(&format!("adapter: {:?}", adapter.get_info()));
    let (device, queue) = adapter
        .request_device(&wgpu::DeviceDescriptor::default())
        .await
        .expect("a device");
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: None,
        source: wgpu::ShaderSource::Wgsl(
            "@group(0) @binding(0) var<storage, read_write> v: array<u32>;
             @compute @workgroup_size(64) fn main(@builtin(global_invocation_id) id: vec3<u32>) {
                 if (id.x < arrayLength(&v)) { v[id.x] = v[id.x] * 2u + 1u; }
             }"
            .into(),
        ),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: None,
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let input: Vec<u32> = (0..1000).collect();
    let storage = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: None,
        contents: bytemuck::cast_slice(&input),
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
    });
    let size = (input.len() * 4) as u64;
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[wgpu::BindGroupEntry {
            binding: 0,
            resource: storage.as_entire_binding(),
        }],
    });
    let mut encoder = device.create_command_encoder(&Default::default());
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups(input.len().div_ceil(64) as u32, 1, 1);
    }
    encoder.copy_buffer_to_buffer(&storage, 0, &staging, 0, size);
    queue.submit([encoder.finish()]);
    // The map's callback comes from the page's event loop: await a promise it resolves.
    let mut resolve = None;
    let promise = js_sys::Promise::new(&mut |res, _rej| resolve = Some(res));
    let resolve = resolve.expect("the promise's executor runs at once");
    staging.slice(..).map_async(wgpu::MapMode::Read, move |result| {
        result.expect("map_async");
        resolve.call0(&wasm_bindgen::JsValue::NULL).unwrap();
    });
    wasm_bindgen_futures::JsFuture::from(promise).await.unwrap();
    let out: Vec<u32> = bytemuck::cast_slice(&staging.slice(..).get_mapped_range().unwrap()).to_vec();
    staging.unmap();
    let want: Vec<u32> = input.iter().map(|x| x * 2 + 1).collect();
    assert_eq!(out, want);
}

#[wasm_bindgen_test]
async fn context_on_the_browsers_webgpu_device() {
    let ctx = gpu().await;
    log(&format!("context: {ctx:?}"));
    assert_eq!(ctx.adapter_info().backend, wgpu::Backend::BrowserWebGpu);
    let data: Vec<f32> = (0..1000).map(|i| i as f32 * 0.5).collect();
    let buffer = ctx.upload(&data).unwrap();
    assert_eq!(read(&ctx, &buffer).await, data);
    // The synchronous forms say to use the async ones instead of blocking the page.
    assert!(GpuContext::new().is_err());
}

/// Every kernel of the crate compiles under the browser's WGSL compiler (Chromium's Tint is
/// stricter than naga, which tests/shaders.rs runs natively) and makes a compute pipeline.
#[wasm_bindgen_test]
async fn every_kernel_compiles_in_the_browser() {
    use retina_wgpu::gpu::shader::{ShaderFeatures, compose, kernel_files};
    let ctx = gpu().await;
    let device = ctx.device();
    let mut failures = Vec::new();
    for file in kernel_files() {
        let source = compose(file, ShaderFeatures::default()).unwrap();
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(file),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        let info = module.get_compilation_info().await;
        for message in &info.messages {
            if message.message_type == wgpu::CompilationMessageType::Error {
                failures.push(format!("{file}: {} at {:?}", message.message, message.location));
            }
        }
        let _pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(file),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        if let Some(error) = scope.pop().await
            && info
                .messages
                .iter()
                .all(|m| m.message_type != wgpu::CompilationMessageType::Error)
        {
            failures.push(format!("{file}: {error}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} kernels fail in the browser:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The CPU backend in the page: rayon falls back to the page's one thread.
#[wasm_bindgen_test]
fn cpu_backend_runs_single_threaded() {
    assert_eq!(rayon::current_num_threads(), 1);
    let sum: u64 = rayon::iter::ParallelIterator::sum(rayon::iter::IntoParallelIterator::into_par_iter(0..10_000u64));
    assert_eq!(sum, 10_000 * 9_999 / 2);
    let (a, b) = rayon::join(|| 1 + 1, || 2 + 2);
    assert_eq!((a, b), (2, 4));
}

// ---- focal loss ----

const FOCAL_GOLDEN: &str = include_str!("golden/focal_loss.json");

/// One focal loss recorded on the device and read back as the CPU backend's output: the loss
/// buffer holds `[loss, sum, normaliser]`, then the gradient and (when the loss asks for them)
/// the per-element losses.
async fn record_focal(
    ctx: &GpuContext,
    loss: &FocalLoss,
    logits: LogitsBuffer<'_>,
    targets: TargetsBuffer<'_>,
    n: usize,
    k: usize,
) -> FocalOutput {
    let loss_buf = ctx.zeros::<f32>(3).unwrap();
    let grad = ctx.zeros::<f32>(n).unwrap();
    let wants_elementwise = loss.elementwise || loss.reduction == Reduction::None;
    let elementwise = wants_elementwise.then(|| ctx.zeros::<f32>(n).unwrap());
    let mut enc = encoder(ctx);
    ctx.record_focal_loss(
        &mut enc,
        loss,
        &FocalBuffers {
            logits,
            targets,
            num_classes: k,
            loss: &loss_buf,
            grad: Some(&grad),
            elementwise: elementwise.as_ref(),
            positives: None,
        },
    )
    .unwrap();
    ctx.queue().submit([enc.finish()]);
    let elementwise = match &elementwise {
        Some(e) => Some(read(ctx, e).await),
        None => None,
    };
    let reduced = read(ctx, &loss_buf).await;
    FocalOutput {
        loss: reduced[0],
        sum: f64::from(reduced[1]),
        normaliser: reduced[2],
        grad: Some(read(ctx, &grad).await),
        elementwise,
    }
}

#[wasm_bindgen_test]
async fn focal_loss_matches_torchvision_vectors() {
    let ctx = gpu().await;
    let cases = FocalCase::all(&parse_golden("focal_loss.json", FOCAL_GOLDEN));
    for (i, case) in cases.iter().enumerate() {
        let n = case.logits.len();
        let logits_buf = ctx.upload(&case.logits).unwrap();
        let targets_buf = ctx.upload(&case.targets).unwrap();
        let (logits, targets) = (LogitsBuffer::F32(&logits_buf), TargetsBuffer::Dense(&targets_buf));
        let what = format!("case {i}");

        let none = record_focal(&ctx, &case.loss.with_reduction(Reduction::None), logits, targets, n, 1).await;
        case.check_none(&what, none.elementwise.as_ref().unwrap(), none.grad.as_ref().unwrap());
        // The CPU backend in the page gives the same numbers.
        let cpu = case
            .loss
            .with_reduction(Reduction::None)
            .compute(&Backend::Cpu, &case.input())
            .unwrap();
        case.check_none(
            &format!("{what} cpu"),
            cpu.elementwise.as_ref().unwrap(),
            cpu.grad.as_ref().unwrap(),
        );

        let sum = record_focal(&ctx, &case.loss.with_reduction(Reduction::Sum), logits, targets, n, 1).await;
        case.check_sum(&what, sum.loss);
        let mean = record_focal(&ctx, &case.loss.with_reduction(Reduction::Mean), logits, targets, n, 1).await;
        case.check_mean(&what, mean.loss, mean.grad.as_ref().unwrap());
    }
}

#[wasm_bindgen_test]
async fn focal_loss_forward_and_backward_match_the_cpu() {
    let ctx = gpu().await;
    let mut rng = Rng::new(3);
    for (rows, k) in [(1, 1), (7, 3), (1000, 80), (4097, 91), (3, 1000)] {
        let problem = FocalProblem::new(&mut rng, rows, k);
        let logits_buf = ctx.upload(&problem.logits).unwrap();
        let half_buf = ctx.upload(&problem.half).unwrap();
        let labels_buf = ctx.upload(&problem.labels).unwrap();
        let dense_buf = ctx.upload(&problem.dense).unwrap();
        let soft_buf = ctx.upload(&problem.soft).unwrap();
        // The device buffers of `problem.inputs()`, in its order.
        let buffers = [
            (LogitsBuffer::F32(&logits_buf), TargetsBuffer::Labels(&labels_buf)),
            (LogitsBuffer::F32(&logits_buf), TargetsBuffer::Dense(&dense_buf)),
            (LogitsBuffer::F32(&logits_buf), TargetsBuffer::Dense(&soft_buf)),
            (LogitsBuffer::F16(&half_buf), TargetsBuffer::Labels(&labels_buf)),
        ];
        for loss in focal_losses() {
            for ((name, input), (logits_gpu, targets_gpu)) in problem.inputs().into_iter().zip(buffers) {
                // Dense targets cannot count positives on the device.
                if loss.reduction == Reduction::PerPositive && matches!(targets_gpu, TargetsBuffer::Dense(_)) {
                    continue;
                }
                let what = format!("{rows}x{k} {name} {loss:?}");
                let g = record_focal(&ctx, &loss, logits_gpu, targets_gpu, rows * k, k).await;
                let c = loss.compute(&Backend::Cpu, &input).unwrap();
                assert_focal_agree(&what, &g, &c);
            }
        }
    }
}

// ---- boxes and matching ----

const BOX_GOLDEN: &str = include_str!("golden/box_ops.json");
const MATCHER_GOLDEN: &str = include_str!("golden/matcher.json");

async fn gpu_iou(ctx: &GpuContext, a: &[[f32; 4]], b: &[[f32; 4]]) -> Vec<f32> {
    let (a_buf, b_buf) = (ctx.upload(a).unwrap(), ctx.upload(b).unwrap());
    let out = ctx.zeros::<f32>(a.len() * b.len()).unwrap();
    let mut enc = encoder(ctx);
    ctx.record_box_iou(&mut enc, &a_buf, &b_buf, &out).unwrap();
    ctx.queue().submit([enc.finish()]);
    read(ctx, &out).await
}

async fn gpu_coder(
    ctx: &GpuContext,
    coder: &BoxCoder,
    decode: bool,
    input: &[[f32; 4]],
    anchors: &[[f32; 4]],
) -> Vec<f32> {
    let (in_buf, anchor_buf) = (ctx.upload(input).unwrap(), ctx.upload(anchors).unwrap());
    let out = ctx.zeros::<[f32; 4]>(input.len()).unwrap();
    let mut enc = encoder(ctx);
    ctx.record_box_coder(&mut enc, coder, decode, &in_buf, &anchor_buf, &out)
        .unwrap();
    ctx.queue().submit([enc.finish()]);
    flatten(&read(ctx, &out).await)
}

#[wasm_bindgen_test]
async fn box_iou_and_coder_match_torchvision_and_the_cpu() {
    let ctx = gpu().await;
    let file = parse_golden("box_ops.json", BOX_GOLDEN);
    let (a, b) = (boxes(&file["boxes_a"]), boxes(&file["boxes_b"]));
    let want_iou = flat_f32(&file["iou"]);
    assert_close("gpu iou", &gpu_iou(&ctx, &a, &b).await, &want_iou, 1e-5, 1e-6);
    assert_close(
        "cpu iou",
        &box_iou(&Backend::Cpu, &a, &b).unwrap(),
        &want_iou,
        1e-5,
        1e-6,
    );
    let coder = BoxCoder::default();
    let anchors = boxes(&file["anchors"]);
    let encoded = gpu_coder(&ctx, &coder, false, &boxes(&file["gt"]), &anchors).await;
    assert_close("encode", &encoded, &flat_f32(&file["encoded"]), 1e-5, 1e-5);
    let decoded = gpu_coder(&ctx, &coder, true, &boxes(&file["deltas"]), &anchors).await;
    assert_close("decode", &decoded, &flat_f32(&file["decoded"]), 1e-5, 1e-4);

    // Random boxes with degenerate ones (as tests/boxes.rs makes them), against the CPU backend.
    let mut rng = Rng::new(12);
    let a = random_boxes(&mut rng, 1001, 7);
    let mut b = random_boxes(&mut rng, 67, 5);
    b.push(a[3]);
    let cpu = box_iou(&Backend::Cpu, &a, &b).unwrap();
    assert_eq!(cpu[3 * b.len() + 67], 1.0);
    assert_close("random iou", &gpu_iou(&ctx, &a, &b).await, &cpu, 1e-6, 1e-7);
}

/// Target assignment recorded on the device for a batch, read back.
async fn gpu_assign(
    ctx: &GpuContext,
    assigner: &TargetAssigner,
    anchors: &retina_wgpu::GpuBuffer<[f32; 4]>,
    images: &[GroundTruth<'_>],
) -> AssignedTargets {
    let device = DeviceAssignment::new(ctx, images, anchors.len());
    let mut enc = encoder(ctx);
    device.record(ctx, &mut enc, assigner, anchors);
    ctx.queue().submit([enc.finish()]);
    let mut positives = read(ctx, &device.positives).await;
    positives.truncate(images.len());
    AssignedTargets {
        anchors_per_image: anchors.len(),
        matches: read(ctx, &device.matches).await,
        labels: read(ctx, &device.labels).await,
        box_targets: read(ctx, &device.box_targets).await,
        positives,
    }
}

#[wasm_bindgen_test]
async fn matcher_matches_torchvision_exactly() {
    let ctx = gpu().await;
    let cases = MatcherCase::all(&parse_golden("matcher.json", MATCHER_GOLDEN));
    for (i, case) in cases.iter().enumerate() {
        let (assigner, images) = (case.assigner(), case.images());
        let anchor_buf = ctx.upload(&case.anchors).unwrap();
        let gpu_out = gpu_assign(&ctx, &assigner, &anchor_buf, &images).await;
        case.check(&format!("gpu case {i}"), &gpu_out);
        let cpu_out = assigner.assign(&Backend::Cpu, &case.anchors, &images).unwrap();
        case.check(&format!("cpu case {i}"), &cpu_out);
    }
}

#[wasm_bindgen_test]
async fn target_assignment_matches_the_cpu_on_a_batch_with_hard_cases() {
    let ctx = gpu().await;
    let mut rng = Rng::new(31);
    let size = 320u32;
    let config = AnchorConfig::retinanet();
    let anchors = config.generate(&Backend::Cpu, size, size).unwrap();
    // The anchors generated on the device are the CPU's.
    let device_anchors = ctx.anchors(&config, size, size).unwrap();
    assert_close(
        "anchors",
        &flatten(&read(&ctx, &device_anchors).await),
        &flatten(&anchors),
        0.0,
        1e-3,
    );
    let batch = hard_batch(&mut rng, size as f32);
    let images = ground_truths(&batch);
    for allow in [true, false] {
        let assigner = assigner(7, allow);
        let c = assigner.assign(&Backend::Cpu, &anchors, &images).unwrap();
        let g = gpu_assign(&ctx, &assigner, &device_anchors, &images).await;
        assert_targets_agree(&format!("low quality {allow}"), &g, &c);
    }
}

// ---- NMS ----

const NMS_GOLDEN: &str = include_str!("golden/nms.json");

/// NMS recorded on the device: the kept indices and their scores.
async fn gpu_nms(ctx: &GpuContext, nms: &Nms, b: &[[f32; 4]], s: &[f32], classes: Option<&[i32]>) -> NmsOutput {
    let boxes_buf = ctx.upload(b).unwrap();
    let scores_buf = ctx.upload(s).unwrap();
    let classes_buf = classes.map(|c| ctx.upload(c).unwrap());
    let mut enc = encoder(ctx);
    let (keep, scores, count) = ctx
        .record_nms(&mut enc, nms, &boxes_buf, &scores_buf, classes_buf.as_ref())
        .unwrap();
    ctx.queue().submit([enc.finish()]);
    let n = read(ctx, &count).await[0] as usize;
    let mut keep = read(ctx, &keep).await;
    let mut scores = read(ctx, &scores).await;
    keep.truncate(n);
    scores.truncate(n);
    NmsOutput { keep, scores }
}

#[wasm_bindgen_test]
async fn nms_matches_torchvisions_keep_lists_exactly() {
    let ctx = gpu().await;
    for (i, case) in NmsCase::all(&parse_golden("nms.json", NMS_GOLDEN)).iter().enumerate() {
        let (b, s, c) = (&case.boxes, &case.scores, &case.classes);
        let nms = Nms::hard(case.iou_threshold);
        case.check(
            &format!("gpu case {i}"),
            &gpu_nms(&ctx, &nms, b, s, None).await.keep,
            &gpu_nms(&ctx, &nms, b, s, Some(c)).await.keep,
        );
        case.check(
            &format!("cpu case {i}"),
            &nms.run(&Backend::Cpu, b, s, None).unwrap().keep,
            &nms.run(&Backend::Cpu, b, s, Some(c)).unwrap().keep,
        );
    }
}

#[wasm_bindgen_test]
async fn every_nms_kind_matches_the_cpu() {
    let ctx = gpu().await;
    let mut rng = Rng::new(5);
    for n in [1usize, 2, 31, 257, 2000] {
        let (b, s, c) = nms_problem(&mut rng, n);
        for kind in nms_kinds() {
            for classes in [None, Some(&c[..])] {
                let what = format!("n {n} {kind:?} classes {}", classes.is_some());
                let g = gpu_nms(&ctx, &kind, &b, &s, classes).await;
                let cpu = kind.run(&Backend::Cpu, &b, &s, classes).unwrap();
                assert_same_nms(&what, &g, &cpu);
            }
        }
    }
}

#[wasm_bindgen_test]
async fn prepared_nms_frames_match_the_cpu() {
    let ctx = gpu().await;
    let mut rng = Rng::new(7);
    let n = 500;
    let (b, s, _) = nms_problem(&mut rng, n);
    let (boxes_buf, scores_buf) = (ctx.upload(&b).unwrap(), ctx.upload(&s).unwrap());
    let nms = Nms::hard(0.5).with_max_output(100);
    let expected = nms.run(&Backend::Cpu, &b, &s, None).unwrap();
    let mut prepared = PreparedNms::new(&ctx, &nms).unwrap();
    for frame in 1..=3 {
        let mut enc = encoder(&ctx);
        let kept = prepared.record(&mut enc, &boxes_buf, &scores_buf, None).unwrap();
        ctx.queue().submit([enc.finish()]);
        let count = read(&ctx, &kept.count).await[0] as usize;
        let keep = read(&ctx, &kept.keep).await;
        assert_eq!(&keep[..count], expected.keep.as_slice(), "frame {frame}");
    }
}

// ---- detection post-processing ----

async fn read_detections(ctx: &GpuContext, out: &DetectionOutput) -> Vec<Vec<Detection>> {
    let dets = read(ctx, &out.detections).await;
    let counts = read(ctx, &out.counts).await;
    detections_from(&dets, &counts, out.max_detections)
}

#[wasm_bindgen_test]
async fn postprocess_matches_the_cpu_for_every_nms_kind() {
    let ctx = gpu().await;
    let mut rng = Rng::new(2);
    let o = Outputs::clustered(&mut rng, 2, 256, 20);
    let device = o.upload(&ctx);
    let input = o.buffers(&device);
    for kind in postprocess_kinds() {
        for pp in postprocess_pair(kind) {
            let what = format!("{kind:?} topk {}", pp.topk_per_level);
            let c = pp.run(&Backend::Cpu, &o.input()).unwrap();
            assert!(
                c.iter().map(Vec::len).sum::<usize>() > 10,
                "{what}: the batch gives detections"
            );
            let out = ctx.detection_output(2, pp.max_detections).unwrap();
            let mut enc = encoder(&ctx);
            ctx.record_postprocess(&mut enc, &pp, &input, &out).unwrap();
            ctx.queue().submit([enc.finish()]);
            assert_same_detections(&what, &read_detections(&ctx, &out).await, &c);
        }
    }
}

#[wasm_bindgen_test]
async fn prepared_postprocess_frames_match_the_cpu() {
    let ctx = gpu().await;
    let mut rng = Rng::new(11);
    let o = Outputs::clustered(&mut rng, 2, 128, 4);
    let device = o.upload(&ctx);
    // Anchors made on the device, as a page would.
    let anchors = ctx.anchors(&AnchorConfig::retinanet(), o.size, o.size).unwrap();
    let input = DetectionBuffers {
        anchors: &anchors,
        ..o.buffers(&device)
    };
    let pp = PostProcess::default();
    let expected = pp.run(&Backend::Cpu, &o.input()).unwrap();
    assert!(expected.iter().all(|d| !d.is_empty()), "the scene must give detections");
    let mut prepared = PreparedPostProcess::new(&ctx, &pp).unwrap();
    let out = ctx
        .detection_output_with(
            2,
            pp.max_detections,
            &OutputOptions {
                draw_vertices: Some(6),
                ..Default::default()
            },
        )
        .unwrap();
    for frame in 1..=3 {
        let mut enc = encoder(&ctx);
        prepared.record(&mut enc, &input, &out).unwrap();
        ctx.queue().submit([enc.finish()]);
        assert_same_detections(&format!("frame {frame}"), &read_detections(&ctx, &out).await, &expected);
    }
    // The indirect draw arguments count each image's detections.
    let args = read(&ctx, &out.draw_args.as_ref().unwrap().buffer).await;
    for (image, dets) in expected.iter().enumerate() {
        assert_eq!(args[image][..2], [6, dets.len() as u32], "image {image} draw arguments");
    }
}

// ---- the detector ----

/// The small RetinaNet, seeded, on the page's WebGPU device (a prepared detector, recorded as a
/// page records it) against the same network on the CPU backend in the page (rayon on one
/// thread, gemm's convolution).
#[wasm_bindgen_test]
async fn prepared_detector_matches_the_cpu_detector() {
    let ctx = gpu().await;
    let (net, values) = small_net();
    let s = net.config().input_size;
    let mut rng = Rng::new(9);
    let images: Vec<f32> = (0..3 * s * s).map(|_| rng.normal()).collect();
    // The untrained network's scores sit near the prior 0.01: a low threshold keeps candidates,
    // and a high NMS threshold keeps near-ties from deciding which box survives.
    let pp = PostProcess {
        score_threshold: 0.005,
        max_detections: 20,
        ..PostProcess::default()
    };
    let mut cpu = Detector::new(CpuEngine::<f32>::new(), net.clone(), &values).unwrap();
    cpu.postprocess = pp;
    let expected = cpu.detect(&images).unwrap();
    assert!(!expected[0].is_empty(), "the CPU detector finds candidates");

    let mut prepared = PreparedDetector::new(&ctx, net, &values).unwrap();
    prepared.postprocess = pp;
    let input = ctx.upload(&images).unwrap();
    let out = prepared.output(1, &OutputOptions::default()).unwrap();
    for frame in 1..=2 {
        let mut enc = encoder(&ctx);
        prepared.record(&mut enc, &input, &out).unwrap();
        ctx.queue().submit([enc.finish()]);
        let got = read_detections(&ctx, &out).await;
        assert_detections_close(&format!("frame {frame}"), &got[0], &expected[0]);
    }
}

/// The network alone on the page's device ([`PreparedDetector::record_forward`], what the page
/// times beside onnxruntime-web) gives the CPU backend's raw outputs.
#[wasm_bindgen_test]
async fn prepared_forward_matches_the_cpu_network() {
    use retina_wgpu::nn::{Engine, Shape};
    let ctx = gpu().await;
    let (net, values) = small_net();
    let s = net.config().input_size;
    let mut rng = Rng::new(12);
    let images: Vec<f32> = (0..3 * s * s).map(|_| rng.normal()).collect();
    let mut cpu = CpuEngine::<f32>::new();
    let params = net.upload(&mut cpu, &values).unwrap();
    let x = cpu.tensor(Shape::new(1, 3, s, s), &images).unwrap();
    let tape = net.forward(&mut cpu, &params, x).unwrap();
    let want = [cpu.read(&tape.class_rows).unwrap(), cpu.read(&tape.box_rows).unwrap()];
    let mut prepared = PreparedDetector::new(&ctx, net, &values).unwrap();
    let (per_logits, per_deltas) = prepared.raw_output_lens().unwrap();
    let input = ctx.upload(&images).unwrap();
    let logits = ctx.zeros::<f32>(per_logits).unwrap();
    let deltas = ctx.zeros::<f32>(per_deltas).unwrap();
    let mut enc = encoder(&ctx);
    prepared.record_forward(&mut enc, &input, &logits, &deltas).unwrap();
    ctx.queue().submit([enc.finish()]);
    for (name, buffer, want) in [("logits", &logits, &want[0]), ("deltas", &deltas, &want[1])] {
        let got = ctx.download_async(buffer).await.unwrap();
        assert_eq!(got.len(), want.len(), "{name}");
        let worst = got.iter().zip(want).map(|(g, w)| (g - w).abs()).fold(0.0f32, f32::max);
        assert!(worst <= 1e-4, "{name} differ from the CPU's by {worst}");
    }
}

/// Detections of two backends over the same network: every detection of one has a detection
/// of the other with its class, a score within 1e-4 and a box within 0.05 px. Scores of an
/// untrained network are close together, so ranks may swap where they differ by less than the
/// backends' rounding: a match is searched in the whole list, not at the same rank.
fn assert_detections_close(what: &str, got: &[Detection], want: &[Detection]) {
    assert_eq!(got.len(), want.len(), "{what}: count");
    let near = |x: &Detection, y: &Detection| {
        x.class == y.class
            && (x.score - y.score).abs() <= 1e-4
            && x.bbox.iter().zip(&y.bbox).all(|(p, q)| (p - q).abs() <= 0.05)
    };
    for (d, x) in got.iter().enumerate() {
        assert!(
            want.iter().any(|y| near(x, y)),
            "{what}: detection {d} {x:?} has no match in {want:?}"
        );
    }
}

// ---- torchvision's RetinaNet ----

const TV_GOLDEN: &str = include_str!("golden/torchvision_retinanet.json");
const CHELSEA: &[u8] = include_bytes!("../../../photos/chelsea.png");

/// torchvision's ResNet-50-FPN v2 RetinaNet (the small golden model: weights by the formula of
/// tests/common/tv_formula.rs, min_size 64) wholly on the page's device: the transform from a
/// texture, the network and the post-processing, read back without blocking; the detections of
/// `photos/chelsea.png` are torchvision's own.
#[wasm_bindgen_test]
async fn torchvision_retinanet_v2_matches_torchvision_in_the_browser() {
    use common::tv_formula::{compare, model_tensors};
    use retina_wgpu::model::PreparedTorchvision;
    use retina_wgpu::model::torchvision::{TorchvisionConfig, TorchvisionRetinaNet, Variant};
    let file = parse_golden("torchvision_retinanet.json", TV_GOLDEN);
    let m = file["small"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["variant"] == "v2")
        .expect("the small v2 model");
    let case = &m["cases"][0];
    assert_eq!(case["photo"], "chelsea.png");
    let tensors = model_tensors(&file, m);
    let mut config = TorchvisionConfig::new(Variant::V2, 91);
    config.min_size = case["min_size"].as_u64().unwrap() as usize;
    config.max_size = case["max_size"].as_u64().unwrap() as usize;
    let find = |name: &str| tensors.iter().find(|t| t.0 == name);
    let net = TorchvisionRetinaNet::new(config, &|name| {
        find(name)
            .map(|t| t.1.clone())
            .ok_or_else(|| retina_wgpu::Error::invalid(format!("{name} missing")))
    })
    .unwrap();
    let values = net
        .fold(&|name| Ok(find(name).expect("every tensor").2.as_slice()))
        .unwrap();
    drop(tensors);
    let photo = image::load_from_memory(CHELSEA).unwrap().into_rgb8();
    let (w, h) = (photo.width() as usize, photo.height() as usize);
    let ctx = gpu().await;
    let mut prepared = PreparedTorchvision::new(&ctx, net, &values).unwrap();
    let found = prepared.detect_async(photo.as_raw(), w, h).await.unwrap();
    compare("browser v2 chelsea.png", &found, case, 0.05);
    log(&format!(
        "torchvision v2 in the browser: {} detections equal to torchvision's",
        found.len()
    ));
}
