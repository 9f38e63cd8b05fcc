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
//!     cargo test --target wasm32-unknown-unknown --no-default-features --test web
//! ```
//!
//! `wasm-bindgen-test-runner` finds `chromedriver` on the PATH (or at `CHROMEDRIVER`); its
//! default limit of 20 s is for the whole run, which takes about a minute on a software adapter.
//!
//! Natively this file compiles to nothing.
#![cfg(target_arch = "wasm32")]

mod common;

use common::{Rng, assert_close, flat_f32, i32s};
use retina_wgpu::gpu::{
    AssignBuffers, DetectionBuffers, DetectionOutput, FocalBuffers, GroundTruthBuffers, LogitsBuffer, OutputOptions,
    PreparedNms, PreparedPostProcess, TargetsBuffer,
};
use retina_wgpu::model::{Detector, PreparedDetector, RetinaNet, RetinaNetConfig};
use retina_wgpu::nn::CpuEngine;
use retina_wgpu::{
    AnchorConfig, AssignedTargets, Backend, BoxCoder, Detection, DetectionInput, FocalInput, FocalLoss, FocalOutput,
    GpuContext, GpuOptions, GroundTruth, Matcher, Nms, NmsKind, NmsOutput, PostProcess, Reduction, TargetAssigner,
    box_iou, f16, wgpu,
};
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

// ---- helpers ----

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

/// A golden file compiled into the test (a page has no file system).
fn golden(text: &str) -> serde_json::Value {
    serde_json::from_str(text).expect("golden JSON")
}

fn boxes(v: &serde_json::Value) -> Vec<[f32; 4]> {
    flat_f32(v).chunks(4).map(|c| [c[0], c[1], c[2], c[3]]).collect()
}

fn flatten(b: &[[f32; 4]]) -> Vec<f32> {
    b.iter().flatten().copied().collect()
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

/// One focal loss recorded on the device: `[loss, sum, normaliser]`, the gradient and the
/// per-element losses (when the loss asks for them).
struct Recorded {
    loss: Vec<f32>,
    grad: Vec<f32>,
    elementwise: Option<Vec<f32>>,
}

async fn record_focal(
    ctx: &GpuContext,
    loss: &FocalLoss,
    logits: LogitsBuffer<'_>,
    targets: TargetsBuffer<'_>,
    n: usize,
    k: usize,
) -> Recorded {
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
    Recorded {
        loss: read(ctx, &loss_buf).await,
        grad: read(ctx, &grad).await,
        elementwise,
    }
}

fn assert_agrees(what: &str, g: &Recorded, c: &FocalOutput) {
    assert!(
        (g.loss[0] - c.loss).abs() <= 1e-5 * c.loss.abs() + 1e-6,
        "{what}: loss gpu {} cpu {}",
        g.loss[0],
        c.loss
    );
    assert_eq!(g.loss[2], c.normaliser, "{what}: normaliser");
    assert_close(&format!("{what} grad"), &g.grad, c.grad.as_ref().unwrap(), 1e-5, 1e-7);
    if let (Some(ge), Some(ce)) = (&g.elementwise, &c.elementwise) {
        assert_close(&format!("{what} elementwise"), ge, ce, 1e-5, 1e-7);
    }
}

#[wasm_bindgen_test]
async fn focal_loss_matches_torchvision_vectors() {
    let ctx = gpu().await;
    let file = golden(FOCAL_GOLDEN);
    for (i, case) in file["cases"].as_array().unwrap().iter().enumerate() {
        let logits = flat_f32(&case["logits"]);
        let targets = flat_f32(&case["targets"]);
        let alpha = case["alpha"].as_f64().unwrap();
        let loss = FocalLoss::new(
            (alpha >= 0.0).then_some(alpha as f32),
            case["gamma"].as_f64().unwrap() as f32,
        );
        let n = logits.len();
        let logits_buf = ctx.upload(&logits).unwrap();
        let targets_buf = ctx.upload(&targets).unwrap();
        let what = format!("case {i}");

        let none = record_focal(
            &ctx,
            &loss.with_reduction(Reduction::None),
            LogitsBuffer::F32(&logits_buf),
            TargetsBuffer::Dense(&targets_buf),
            n,
            1,
        )
        .await;
        let want_loss = flat_f32(&case["loss"]);
        let want_grad = flat_f32(&case["grad"]);
        assert_close(
            &format!("{what} loss"),
            none.elementwise.as_ref().unwrap(),
            &want_loss,
            1e-5,
            1e-6,
        );
        assert_close(&format!("{what} grad"), &none.grad, &want_grad, 1e-5, 1e-6);
        // The CPU backend in the page gives the same numbers.
        let cpu = loss
            .with_reduction(Reduction::None)
            .compute(&Backend::Cpu, &FocalInput::dense(&logits[..], &targets, 1))
            .unwrap();
        assert_close(
            &format!("{what} cpu grad"),
            cpu.grad.as_ref().unwrap(),
            &want_grad,
            1e-5,
            1e-6,
        );

        let sum = record_focal(
            &ctx,
            &loss.with_reduction(Reduction::Sum),
            LogitsBuffer::F32(&logits_buf),
            TargetsBuffer::Dense(&targets_buf),
            n,
            1,
        )
        .await;
        let want_sum = case["loss_sum"].as_f64().unwrap();
        assert!(
            (f64::from(sum.loss[0]) - want_sum).abs() <= 1e-5 * want_sum,
            "{what}: sum {} vs {want_sum}",
            sum.loss[0]
        );
        let mean = record_focal(
            &ctx,
            &loss.with_reduction(Reduction::Mean),
            LogitsBuffer::F32(&logits_buf),
            TargetsBuffer::Dense(&targets_buf),
            n,
            1,
        )
        .await;
        let want_mean = case["loss_mean"].as_f64().unwrap();
        assert!(
            (f64::from(mean.loss[0]) - want_mean).abs() <= 1e-5 * want_mean,
            "{what}: mean {} vs {want_mean}",
            mean.loss[0]
        );
        let mean_grad: Vec<f32> = want_grad.iter().map(|g| g / n as f32).collect();
        assert_close(&format!("{what} mean grad"), &mean.grad, &mean_grad, 1e-5, 1e-6);
    }
}

/// Random logits and RetinaNet-like labels: mostly background, some positives, some ignored.
fn random_problem(rng: &mut Rng, rows: usize, k: usize) -> (Vec<f32>, Vec<i32>) {
    let logits = (0..rows * k).map(|_| 3.0 * rng.normal()).collect();
    let labels = (0..rows)
        .map(|_| match rng.below(10) {
            0 => -2,
            1 | 2 => rng.below(k as u64) as i32,
            _ => -1,
        })
        .collect();
    (logits, labels)
}

fn dense_from_labels(labels: &[i32], k: usize) -> Vec<f32> {
    let mut t = vec![0.0; labels.len() * k];
    for (r, &l) in labels.iter().enumerate() {
        if l >= 0 {
            t[r * k + l as usize] = 1.0;
        }
    }
    t
}

#[wasm_bindgen_test]
async fn focal_loss_forward_and_backward_match_the_cpu() {
    let ctx = gpu().await;
    let mut rng = Rng::new(3);
    for (rows, k) in [(1, 1), (7, 3), (1000, 80), (4097, 91), (3, 1000)] {
        let (logits, labels) = random_problem(&mut rng, rows, k);
        let dense = dense_from_labels(&labels, k);
        let soft: Vec<f32> = (0..rows * k).map(|_| rng.uniform()).collect();
        let half: Vec<f16> = logits.iter().map(|&x| f16::from_f32(x)).collect();
        let logits_buf = ctx.upload(&logits).unwrap();
        let half_buf = ctx.upload(&half).unwrap();
        let labels_buf = ctx.upload(&labels).unwrap();
        let dense_buf = ctx.upload(&dense).unwrap();
        let soft_buf = ctx.upload(&soft).unwrap();
        let losses = [
            FocalLoss::retinanet(),
            FocalLoss::new(None, 0.5).with_reduction(Reduction::Mean),
            FocalLoss::cross_entropy(Some(0.75)).with_reduction(Reduction::Normalized(17.0)),
            FocalLoss::new(Some(0.25), 3.3).with_reduction(Reduction::None),
            FocalLoss::star(4.0, 0.0)
                .with_reduction(Reduction::Sum)
                .with_elementwise(true),
        ];
        for loss in losses {
            let cases = [
                (
                    "labels",
                    LogitsBuffer::F32(&logits_buf),
                    TargetsBuffer::Labels(&labels_buf),
                    FocalInput::labels(&logits[..], &labels, k),
                ),
                (
                    "dense",
                    LogitsBuffer::F32(&logits_buf),
                    TargetsBuffer::Dense(&dense_buf),
                    FocalInput::dense(&logits[..], &dense, k),
                ),
                (
                    "soft",
                    LogitsBuffer::F32(&logits_buf),
                    TargetsBuffer::Dense(&soft_buf),
                    FocalInput::dense(&logits[..], &soft, k),
                ),
                (
                    "f16 labels",
                    LogitsBuffer::F16(&half_buf),
                    TargetsBuffer::Labels(&labels_buf),
                    FocalInput::labels(&half[..], &labels, k),
                ),
            ];
            for (name, logits_gpu, targets_gpu, input) in cases {
                // Dense targets cannot count positives on the device.
                if loss.reduction == Reduction::PerPositive && matches!(targets_gpu, TargetsBuffer::Dense(_)) {
                    continue;
                }
                let what = format!("{rows}x{k} {name} {loss:?}");
                let g = record_focal(&ctx, &loss, logits_gpu, targets_gpu, rows * k, k).await;
                let c = loss.compute(&Backend::Cpu, &input).unwrap();
                assert_agrees(&what, &g, &c);
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
    let file = golden(BOX_GOLDEN);
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

    // Random boxes with degenerate ones, against the CPU backend.
    let mut rng = Rng::new(12);
    let random = |rng: &mut Rng, n: usize| -> Vec<[f32; 4]> {
        (0..n)
            .map(|i| {
                let (x, y) = (rng.range(-50.0, 900.0), rng.range(-50.0, 900.0));
                if i % 7 == 0 {
                    [x, y, x, y + 10.0]
                } else {
                    [x, y, x + rng.range(10.0, 300.0), y + rng.range(10.0, 300.0)]
                }
            })
            .collect()
    };
    let a = random(&mut rng, 1001);
    let mut b = random(&mut rng, 67);
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
    let mut all_boxes = Vec::new();
    let mut all_classes = Vec::new();
    let mut offsets = vec![0u32];
    for image in images {
        all_boxes.extend_from_slice(image.boxes);
        all_classes.extend_from_slice(image.classes);
        offsets.push(all_boxes.len() as u32);
    }
    let gt_boxes = ctx.upload(&all_boxes).unwrap();
    let gt_classes = ctx.upload(&all_classes).unwrap();
    let gt_offsets = ctx.upload(&offsets).unwrap();
    let total = images.len() * anchors.len();
    let matches = ctx.zeros::<i32>(total).unwrap();
    let labels = ctx.zeros::<i32>(total).unwrap();
    let box_targets = ctx.zeros::<[f32; 4]>(total).unwrap();
    let positives = ctx.zeros::<u32>(images.len() + 1).unwrap();
    let mut enc = encoder(ctx);
    ctx.record_assign_targets(
        &mut enc,
        assigner,
        anchors,
        &GroundTruthBuffers {
            boxes: &gt_boxes,
            classes: &gt_classes,
            offsets: &gt_offsets,
        },
        &AssignBuffers {
            matches: &matches,
            labels: &labels,
            box_targets: &box_targets,
            positives: &positives,
        },
    )
    .unwrap();
    ctx.queue().submit([enc.finish()]);
    let mut positives = read(ctx, &positives).await;
    positives.truncate(images.len());
    AssignedTargets {
        anchors_per_image: anchors.len(),
        matches: read(ctx, &matches).await,
        labels: read(ctx, &labels).await,
        box_targets: read(ctx, &box_targets).await,
        positives,
    }
}

#[wasm_bindgen_test]
async fn matcher_matches_torchvision_exactly() {
    let ctx = gpu().await;
    let file = golden(MATCHER_GOLDEN);
    for (i, case) in file["cases"].as_array().unwrap().iter().enumerate() {
        let anchors = boxes(&case["anchors"]);
        let gt = boxes(&case["gt"]);
        let classes = vec![0; gt.len()];
        let assigner = TargetAssigner {
            matcher: Matcher {
                allow_low_quality_matches: case["allow_low_quality_matches"].as_bool().unwrap(),
                ..Matcher::default()
            },
            ..TargetAssigner::new(1)
        };
        let image = [GroundTruth {
            boxes: &gt,
            classes: &classes,
        }];
        let anchor_buf = ctx.upload(&anchors).unwrap();
        let want = i32s(&case["matches"]);
        let positives = want.iter().filter(|&&m| m >= 0).count() as u32;
        for (what, out) in [
            ("gpu", gpu_assign(&ctx, &assigner, &anchor_buf, &image).await),
            ("cpu", assigner.assign(&Backend::Cpu, &anchors, &image).unwrap()),
        ] {
            let differ = (0..want.len()).filter(|&k| out.matches[k] != want[k]).count();
            assert_eq!(differ, 0, "{what} case {i}: {differ} matches differ");
            assert_eq!(out.positives, vec![positives], "{what} case {i}: positives");
        }
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
    let fs = size as f32;
    let mut batch = Vec::new();
    for count in [0usize, 1, 200, 17, 5] {
        let mut b: Vec<[f32; 4]> = (0..count)
            .map(|_| {
                let (x, y) = (rng.range(-20.0, fs), rng.range(-20.0, fs));
                let (w, h) = (rng.range(4.0, fs / 2.0), rng.range(4.0, fs / 2.0));
                [x, y, x + w, y + h]
            })
            .collect();
        if count == 17 {
            b[1] = b[0];
            b[2] = [10.0, 10.0, 10.0, 40.0];
            b[3] = [fs + 50.0, fs + 50.0, fs + 90.0, fs + 90.0];
            b[4] = [-100.0, -100.0, -60.0, -60.0];
            b[5] = [24.0, 24.0, 40.0, 40.0];
        }
        let classes: Vec<i32> = (0..b.len()).map(|_| rng.below(7) as i32).collect();
        batch.push((b, classes));
    }
    let images: Vec<GroundTruth> = batch
        .iter()
        .map(|(b, c)| GroundTruth { boxes: b, classes: c })
        .collect();
    for allow in [true, false] {
        let assigner = TargetAssigner {
            matcher: Matcher {
                allow_low_quality_matches: allow,
                ..Matcher::default()
            },
            ..TargetAssigner::new(7)
        };
        let c = assigner.assign(&Backend::Cpu, &anchors, &images).unwrap();
        let g = gpu_assign(&ctx, &assigner, &device_anchors, &images).await;
        let what = format!("low quality {allow}");
        let differ = (0..c.matches.len()).filter(|&k| g.matches[k] != c.matches[k]).count();
        assert_eq!(differ, 0, "{what}: {differ} matches differ");
        assert_eq!(g.labels, c.labels, "{what}: labels");
        assert_eq!(g.positives, c.positives, "{what}: positives");
        assert_close(
            &format!("{what} box targets"),
            &flatten(&g.box_targets),
            &flatten(&c.box_targets),
            1e-5,
            1e-5,
        );
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

fn u32s(v: &serde_json::Value) -> Vec<u32> {
    i32s(v).into_iter().map(|x| x as u32).collect()
}

#[wasm_bindgen_test]
async fn nms_matches_torchvisions_keep_lists_exactly() {
    let ctx = gpu().await;
    let file = golden(NMS_GOLDEN);
    for (i, case) in file["cases"].as_array().unwrap().iter().enumerate() {
        let b = boxes(&case["boxes"]);
        let s = flat_f32(&case["scores"]);
        let c = i32s(&case["classes"]);
        let nms = Nms::hard(case["iou_threshold"].as_f64().unwrap() as f32);
        let (keep, keep_batched) = (u32s(&case["keep"]), u32s(&case["keep_batched"]));
        assert_eq!(gpu_nms(&ctx, &nms, &b, &s, None).await.keep, keep, "gpu case {i}: keep");
        assert_eq!(
            gpu_nms(&ctx, &nms, &b, &s, Some(&c)).await.keep,
            keep_batched,
            "gpu case {i}: keep_batched"
        );
        assert_eq!(
            nms.run(&Backend::Cpu, &b, &s, None).unwrap().keep,
            keep,
            "cpu case {i}: keep"
        );
        assert_eq!(
            nms.run(&Backend::Cpu, &b, &s, Some(&c)).unwrap().keep,
            keep_batched,
            "cpu case {i}: keep_batched"
        );
    }
}

/// Random boxes in a 1000 x 1000 image, 10-100 px, clustered so that many overlap.
fn clustered_boxes(rng: &mut Rng, n: usize) -> Vec<[f32; 4]> {
    let centres: Vec<(f32, f32)> = (0..(n / 20).max(1))
        .map(|_| (rng.range(0.0, 1000.0), rng.range(0.0, 1000.0)))
        .collect();
    (0..n)
        .map(|_| {
            let (cx, cy) = centres[rng.below(centres.len() as u64) as usize];
            let (x, y) = (cx + 30.0 * rng.normal(), cy + 30.0 * rng.normal());
            let (w, h) = (rng.range(10.0, 100.0), rng.range(10.0, 100.0));
            [x, y, x + w, y + h]
        })
        .collect()
}

fn assert_same_nms(what: &str, g: &NmsOutput, c: &NmsOutput) {
    let first = g.keep.iter().zip(&c.keep).position(|(a, b)| a != b);
    assert!(
        g.keep == c.keep,
        "{what}: {} vs {} kept, first difference at {first:?}",
        g.keep.len(),
        c.keep.len()
    );
    for (a, b) in g.scores.iter().zip(&c.scores) {
        assert!((a - b).abs() <= 1e-5 * b.abs() + 1e-7, "{what}: score {a} vs {b}");
    }
}

#[wasm_bindgen_test]
async fn every_nms_kind_matches_the_cpu() {
    let ctx = gpu().await;
    let mut rng = Rng::new(5);
    let base = Nms::hard(0.5);
    let kinds = [
        base,
        base.with_max_output(100),
        base.with_kind(NmsKind::Fast),
        base.with_kind(NmsKind::SoftLinear)
            .with_score_threshold(0.05)
            .with_max_output(300),
        base.with_kind(NmsKind::Matrix { gaussian_sigma: None })
            .with_score_threshold(0.05),
        base.with_kind(NmsKind::Matrix {
            gaussian_sigma: Some(2.0),
        })
        .with_score_threshold(0.05)
        .with_max_output(200),
    ];
    for n in [1usize, 2, 31, 257, 2000] {
        let b = clustered_boxes(&mut rng, n);
        let s: Vec<f32> = (0..n).map(|_| rng.uniform()).collect();
        let c: Vec<i32> = (0..n).map(|_| rng.below(80) as i32).collect();
        for kind in kinds {
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
    let b = clustered_boxes(&mut rng, n);
    let s: Vec<f32> = (0..n).map(|_| rng.uniform()).collect();
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

/// Network outputs with clusters of confident detections over a background of low scores.
struct Outputs {
    logits: Vec<f32>,
    deltas: Vec<[f32; 4]>,
    anchors: Vec<[f32; 4]>,
    offsets: Vec<usize>,
    k: usize,
    size: u32,
}

impl Outputs {
    fn new(rng: &mut Rng, images: usize, size: u32, k: usize) -> Self {
        let config = AnchorConfig::retinanet();
        let anchors = config.generate(&Backend::Cpu, size, size).unwrap();
        let offsets = config.level_offsets(size, size).unwrap();
        let a = anchors.len();
        let mut logits: Vec<f32> = (0..images * a * k).map(|_| rng.normal() - 5.0).collect();
        for _ in 0..images * 40 {
            let (image, anchor, class) = (
                rng.below(images as u64) as usize,
                rng.below(a as u64) as usize,
                rng.below(k as u64) as usize,
            );
            for d in 0..9 {
                let neighbour = (anchor + d * 9).min(a - 1);
                logits[(image * a + neighbour) * k + class] = rng.range(-1.0, 4.0);
            }
        }
        let deltas = (0..images * a)
            .map(|_| {
                [
                    0.3 * rng.normal(),
                    0.3 * rng.normal(),
                    0.2 * rng.normal(),
                    0.2 * rng.normal(),
                ]
            })
            .collect();
        Self {
            logits,
            deltas,
            anchors,
            offsets,
            k,
            size,
        }
    }

    fn input(&self) -> DetectionInput<'_> {
        DetectionInput {
            logits: &self.logits,
            deltas: &self.deltas,
            anchors: &self.anchors,
            level_offsets: &self.offsets,
            num_classes: self.k,
            image_size: (self.size, self.size),
        }
    }
}

async fn read_detections(ctx: &GpuContext, out: &DetectionOutput) -> Vec<Vec<Detection>> {
    let dets = read(ctx, &out.detections).await;
    let counts = read(ctx, &out.counts).await;
    counts
        .iter()
        .enumerate()
        .map(|(image, &n)| {
            dets[image * out.max_detections..][..n as usize]
                .iter()
                .map(|d| Detection {
                    bbox: d.bbox,
                    score: d.score,
                    class: d.class as u32,
                })
                .collect()
        })
        .collect()
}

fn assert_same_detections(what: &str, got: &[Vec<Detection>], want: &[Vec<Detection>]) {
    assert_eq!(got.len(), want.len(), "{what}: images");
    for (image, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.len(), w.len(), "{what}: image {image} count");
        for (d, (x, y)) in g.iter().zip(w).enumerate() {
            let close = |p: f32, q: f32| (p - q).abs() <= 1e-4 * q.abs().max(1.0);
            assert!(
                x.class == y.class && close(x.score, y.score) && x.bbox.iter().zip(&y.bbox).all(|(&p, &q)| close(p, q)),
                "{what}: image {image} detection {d}: {x:?} vs {y:?}"
            );
        }
    }
}

#[wasm_bindgen_test]
async fn postprocess_matches_the_cpu_for_every_nms_kind() {
    let ctx = gpu().await;
    let mut rng = Rng::new(2);
    let o = Outputs::new(&mut rng, 2, 256, 20);
    let logits = ctx.upload(&o.logits).unwrap();
    let deltas = ctx.upload(&o.deltas).unwrap();
    let anchors = ctx.upload(&o.anchors).unwrap();
    let input = DetectionBuffers {
        logits: &logits,
        deltas: &deltas,
        anchors: &anchors,
        level_offsets: &o.offsets,
        num_classes: o.k,
        image_size: (o.size, o.size),
    };
    let kinds = [
        NmsKind::Hard,
        NmsKind::Fast,
        NmsKind::SoftLinear,
        NmsKind::SoftGaussian { sigma: 0.5 },
        NmsKind::Matrix { gaussian_sigma: None },
    ];
    for kind in kinds {
        for pp in [
            PostProcess {
                nms: Nms::hard(0.5).with_kind(kind).with_score_threshold(0.05),
                ..Default::default()
            },
            PostProcess {
                topk_per_level: 50,
                max_detections: 10,
                clip_to_image: false,
                nms: Nms::hard(0.4).with_kind(kind).with_score_threshold(0.1),
                ..Default::default()
            },
        ] {
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
    let o = Outputs::new(&mut rng, 2, 128, 4);
    let logits = ctx.upload(&o.logits).unwrap();
    let deltas = ctx.upload(&o.deltas).unwrap();
    // Anchors made on the device, as a page would.
    let anchors = ctx.anchors(&AnchorConfig::retinanet(), o.size, o.size).unwrap();
    let input = DetectionBuffers {
        logits: &logits,
        deltas: &deltas,
        anchors: &anchors,
        level_offsets: &o.offsets,
        num_classes: o.k,
        image_size: (o.size, o.size),
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
    let net = RetinaNet::new(RetinaNetConfig {
        input_size: 64,
        num_classes: 3,
        ..RetinaNetConfig::default()
    })
    .unwrap();
    let values = net.init(7);
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
