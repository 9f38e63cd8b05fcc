//! The web page's module (`web/index.html`): the small RetinaNet, RetinaFace and a
//! torchvision RetinaNet on the browser's WebGPU device. The page fetches a model from a folder
//! beside it; for each image (a file the user picks, a sample photo, or a synthetic scene made
//! here by the crate's own generator) this module records the model's prepared object (the same
//! forward pass and post-processing as natively; the small RetinaNet's input is fitted on the
//! CPU, torchvision's transform runs on the device) and reads the detections back with an
//! awaited map. Built for wasm32 only; natively it compiles to nothing.
//!
//! Build: `web/build.sh` (a wasm32 release build of this crate, then `wasm-bindgen --target
//! web` into `web/pkg/`); serve `web/` over HTTP and open `index.html` in a browser with WebGPU.

#![cfg(target_arch = "wasm32")]

use std::cell::RefCell;
use std::rc::Rc;

use retina_wgpu::data::SceneConfig;
use retina_wgpu::gpu::{DetectionOutput, FaceOutput, GpuBuffer, OutputOptions};
use retina_wgpu::model::{
    PreparedDetector, PreparedFaces, PreparedTorchvision, RetinaFace, RetinaNet, RetinaNetConfig, TorchvisionRetinaNet,
    checkpoint,
};
use retina_wgpu::ops::image::Normalize;
use retina_wgpu::{GpuContext, GpuOptions};
use wasm_bindgen::prelude::*;

fn js(e: retina_wgpu::Error) -> JsError {
    JsError::new(&e.to_string())
}

struct Inner {
    ctx: GpuContext,
    detector: PreparedDetector,
    input: GpuBuffer<f32>,
    out: DetectionOutput,
    names: Vec<String>,
    chw: Vec<f32>,
}

/// A detector on the page's WebGPU device.
#[wasm_bindgen]
pub struct WebDetector {
    inner: Rc<RefCell<Inner>>,
    adapter: String,
    side: usize,
}

#[wasm_bindgen]
impl WebDetector {
    /// Makes the WebGPU context and the detector of `config_json` (a model's `config.json`)
    /// with `weights` (its `model.safetensors`).
    pub async fn load(config_json: String, weights: Vec<u8>) -> Result<WebDetector, JsError> {
        let config: RetinaNetConfig = serde_json::from_str(&config_json)
            .map_err(|e| JsError::new(&format!("config.json: invalid configuration: {e}")))?;
        let net = RetinaNet::new(config).map_err(js)?;
        let values = checkpoint::from_safetensors(&net, &weights, "model.safetensors")
            .map_err(js)?
            .values;
        let ctx = GpuContext::new_async(GpuOptions::default()).await.map_err(js)?;
        let names = net.config().categories.iter().map(|c| c.name.clone()).collect();
        let side = net.config().input_size;
        let detector = PreparedDetector::new(&ctx, net, &values).map_err(js)?;
        let input = ctx.zeros::<f32>(3 * side * side).map_err(js)?;
        let out = detector.output(1, &OutputOptions::default()).map_err(js)?;
        let adapter = ctx.adapter_name();
        Ok(WebDetector {
            inner: Rc::new(RefCell::new(Inner {
                ctx,
                detector,
                input,
                out,
                names,
                chw: vec![0.0; 3 * side * side],
            })),
            adapter,
            side,
        })
    }

    /// The adapter's name and backend.
    pub fn adapter(&self) -> String {
        self.adapter.clone()
    }

    /// The side of the network's square input, in pixels.
    pub fn input_size(&self) -> u32 {
        self.side as u32
    }

    /// The name of class `class`.
    pub fn class_name(&self, class: u32) -> String {
        self.inner
            .borrow()
            .names
            .get(class as usize)
            .cloned()
            .unwrap_or_else(|| format!("class {class}"))
    }

    /// Detects in an RGBA image of `width` x `height` pixels (a canvas's `ImageData`):
    /// resolves to a `Float32Array` of `[x1, y1, x2, y2, score, class]` per detection in image
    /// pixels, best first.
    // The borrow is held across the readback on purpose: it is taken with `try_borrow_mut`, so a
    // second call while one runs is refused with an error, never a panic.
    #[allow(clippy::await_holding_refcell_ref)]
    pub fn detect(&self, rgba: Vec<u8>, width: u32, height: u32) -> js_sys::Promise {
        let inner = Rc::clone(&self.inner);
        let side = self.side;
        wasm_bindgen_futures::future_to_promise(async move {
            let mut guard = exclusive(&inner)?;
            let this = &mut *guard;
            let scale = fit(&rgba, width, height, side, &mut this.chw).map_err(js)?;
            this.ctx.write(&this.input, &this.chw).map_err(js)?;
            let mut encoder = this.ctx.device().create_command_encoder(&Default::default());
            this.detector.record(&mut encoder, &this.input, &this.out).map_err(js)?;
            this.ctx.queue().submit([encoder.finish()]);
            let counts = this.ctx.download_async(&this.out.counts).await.map_err(js)?;
            let detections = this.ctx.download_async(&this.out.detections).await.map_err(js)?;
            let n = counts[0] as usize;
            let mut flat = Vec::with_capacity(6 * n);
            for d in &detections[..n] {
                flat.extend(d.bbox.map(|v| v * scale));
                flat.push(d.score);
                flat.push(d.class as f32);
            }
            Ok(js_sys::Float32Array::from(flat.as_slice()).into())
        })
    }

    /// Times the network alone `runs` times on the last image's input, as the browser peer
    /// (`web/ort.html`, onnxruntime-web) times its forward pass: the input written, the forward
    /// pass recorded and submitted, its raw outputs (class logits and box deltas) read back.
    /// Resolves to a `Float64Array` of milliseconds per run.
    #[allow(clippy::await_holding_refcell_ref)]
    pub fn forward_times(&self, runs: u32) -> js_sys::Promise {
        let inner = Rc::clone(&self.inner);
        wasm_bindgen_futures::future_to_promise(async move {
            if runs > MAX_TIMED_RUNS {
                return Err(
                    JsError::new(&format!("forward timing: {runs} runs asked; at most {MAX_TIMED_RUNS}")).into(),
                );
            }
            let mut guard = exclusive(&inner)?;
            let this = &mut *guard;
            let (per_logits, per_deltas) = this.detector.raw_output_lens().map_err(js)?;
            let logits = this.ctx.zeros::<f32>(per_logits).map_err(js)?;
            let deltas = this.ctx.zeros::<f32>(per_deltas).map_err(js)?;
            let clock = Clock::new()?;
            let mut times = Vec::with_capacity(runs as usize);
            for _ in 0..runs {
                let start = clock.now();
                this.ctx.write(&this.input, &this.chw).map_err(js)?;
                let mut encoder = this.ctx.device().create_command_encoder(&Default::default());
                this.detector
                    .record_forward(&mut encoder, &this.input, &logits, &deltas)
                    .map_err(js)?;
                this.ctx.queue().submit([encoder.finish()]);
                this.ctx.download_async(&logits).await.map_err(js)?;
                this.ctx.download_async(&deltas).await.map_err(js)?;
                times.push(clock.now() - start);
            }
            Ok(js_sys::Float64Array::from(times.as_slice()).into())
        })
    }
}

/// The most boxes [`nms_times`] generates (24 bytes each on the host, more on the device), and
/// the most timed runs it or [`WebDetector::forward_times`] takes.
pub const MAX_TIMED_BOXES: u32 = 1_000_000;
/// See [`MAX_TIMED_BOXES`].
pub const MAX_TIMED_RUNS: u32 = 1_000;

/// The page's `performance.now()`, through `js_sys` (the crate has no `web-sys`).
struct Clock {
    performance: JsValue,
    now: js_sys::Function,
}

impl Clock {
    fn new() -> Result<Clock, JsError> {
        let missing = || JsError::new("this browser has no performance.now()");
        let performance = js_sys::Reflect::get(&js_sys::global(), &"performance".into()).map_err(|_| missing())?;
        let now = js_sys::Reflect::get(&performance, &"now".into()).map_err(|_| missing())?;
        let now = now.dyn_into::<js_sys::Function>().map_err(|_| missing())?;
        Ok(Clock { performance, now })
    }

    /// Milliseconds.
    fn now(&self) -> f64 {
        self.now
            .call0(&self.performance)
            .ok()
            .and_then(|v| v.as_f64())
            .unwrap_or(0.0)
    }
}

/// Faces the page reads back per image at most (the network's own cap is its top-k).
const PAGE_MAX_FACES: usize = 256;

struct FacesInner {
    ctx: GpuContext,
    faces: PreparedFaces,
    /// The input and output of the last image size.
    buffers: Option<((usize, usize), GpuBuffer<f32>, FaceOutput)>,
}

/// RetinaFace on the page's WebGPU device: the network and its post-processing recorded in one
/// encoder, the faces read back.
#[wasm_bindgen]
pub struct WebFaces {
    inner: Rc<RefCell<FacesInner>>,
}

#[wasm_bindgen]
impl WebFaces {
    /// Makes the WebGPU context and the face detector of `config_json` (the model's
    /// `config.json`, `"architecture": "retinaface"`) with `weights` (its `model.safetensors`).
    pub async fn load(config_json: String, weights: Vec<u8>) -> Result<WebFaces, JsError> {
        let (net, values) = RetinaFace::from_bytes(config_json.as_bytes(), &weights).map_err(js)?;
        let ctx = GpuContext::new_async(GpuOptions::default()).await.map_err(js)?;
        let faces = PreparedFaces::new(&ctx, net, &values).map_err(js)?;
        Ok(WebFaces {
            inner: Rc::new(RefCell::new(FacesInner {
                ctx,
                faces,
                buffers: None,
            })),
        })
    }

    /// Finds faces in an RGBA image of `width` x `height` pixels (a canvas's `ImageData`; the
    /// network runs at that size): resolves to a `Float32Array` of 15 values per face, best
    /// first: `[x1, y1, x2, y2, score]` and five landmarks `(x, y)`, in image pixels (at most
    /// 256 faces).
    // The borrow is held across the readback on purpose (see `WebDetector::detect`).
    #[allow(clippy::await_holding_refcell_ref)]
    pub fn detect(&self, rgba: Vec<u8>, width: u32, height: u32) -> js_sys::Promise {
        let inner = Rc::clone(&self.inner);
        wasm_bindgen_futures::future_to_promise(async move {
            let mut guard = exclusive(&inner)?;
            let this = &mut *guard;
            let (w, h) = (width as usize, height as usize);
            let bytes = w.checked_mul(h).and_then(|n| n.checked_mul(4));
            if w == 0 || h == 0 || bytes != Some(rgba.len()) {
                return Err(JsError::new(&format!(
                    "{} bytes are not an RGBA image of {width} x {height}",
                    rgba.len()
                ))
                .into());
            }
            let rgb: Vec<u8> = rgba.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
            let input = this.faces.net().input(&rgb, w, h).map_err(js)?;
            if this.buffers.as_ref().is_none_or(|(size, _, _)| *size != (h, w)) {
                let images = this.ctx.zeros::<f32>(input.len()).map_err(js)?;
                let out = this.faces.output(1, PAGE_MAX_FACES).map_err(js)?;
                this.buffers = Some(((h, w), images, out));
            }
            let (_, images, out) = this.buffers.as_ref().expect("made above");
            this.ctx.write(images, &input).map_err(js)?;
            let mut encoder = this.ctx.device().create_command_encoder(&Default::default());
            this.faces.record(&mut encoder, images, (h, w), out).map_err(js)?;
            this.ctx.queue().submit([encoder.finish()]);
            let counts = this.ctx.download_async(&out.counts).await.map_err(js)?;
            let faces = this.ctx.download_async(&out.faces).await.map_err(js)?;
            let n = (counts[0] as usize).min(faces.len());
            let mut flat = Vec::with_capacity(15 * n);
            for f in &faces[..n] {
                flat.extend(f.bbox);
                flat.push(f.score);
                flat.extend(f.landmarks);
            }
            Ok(js_sys::Float32Array::from(flat.as_slice()).into())
        })
    }
}

/// A torchvision RetinaNet (a model directory of scripts/import_torchvision.py) on the page's
/// WebGPU device: torchvision's transform, the network and the post-processing recorded in one
/// encoder (`model::PreparedTorchvision`), the detections read back.
#[wasm_bindgen]
pub struct WebTorchvision {
    inner: Rc<RefCell<PreparedTorchvision>>,
    names: Vec<String>,
}

#[wasm_bindgen]
impl WebTorchvision {
    /// Makes the WebGPU context and the model of `config_json` (its `config.json`,
    /// `"architecture": "torchvision_retinanet"`) with `weights` (its `model.safetensors`).
    pub async fn load(config_json: String, weights: Vec<u8>) -> Result<WebTorchvision, JsError> {
        let (net, values) = TorchvisionRetinaNet::from_bytes(config_json.as_bytes(), &weights).map_err(js)?;
        drop(weights);
        let names = (0..net.config().num_classes as u32)
            .map(|c| net.config().category_name(c))
            .collect();
        let ctx = GpuContext::new_async(GpuOptions::default()).await.map_err(js)?;
        let prepared = PreparedTorchvision::new(&ctx, net, &values).map_err(js)?;
        Ok(WebTorchvision {
            inner: Rc::new(RefCell::new(prepared)),
            names,
        })
    }

    /// The name of label `label`.
    pub fn class_name(&self, label: u32) -> String {
        self.names
            .get(label as usize)
            .cloned()
            .unwrap_or_else(|| format!("class {label}"))
    }

    /// Detects in an RGBA image of `width` x `height` pixels (a canvas's `ImageData`):
    /// resolves to a `Float32Array` of `[x1, y1, x2, y2, score, label]` per detection in image
    /// pixels, best first.
    // The borrow is held across the readback on purpose (see `WebDetector::detect`).
    #[allow(clippy::await_holding_refcell_ref)]
    pub fn detect(&self, rgba: Vec<u8>, width: u32, height: u32) -> js_sys::Promise {
        let inner = Rc::clone(&self.inner);
        wasm_bindgen_futures::future_to_promise(async move {
            let mut guard = exclusive(&inner)?;
            let (w, h) = (width as usize, height as usize);
            let bytes = w.checked_mul(h).and_then(|n| n.checked_mul(4));
            if w == 0 || h == 0 || bytes != Some(rgba.len()) {
                return Err(JsError::new(&format!(
                    "{} bytes are not an RGBA image of {width} x {height}",
                    rgba.len()
                ))
                .into());
            }
            let rgb: Vec<u8> = rgba.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
            let found = guard.detect_async(&rgb, w, h).await.map_err(js)?;
            let mut flat = Vec::with_capacity(6 * found.len());
            for d in &found {
                flat.extend(d.bbox);
                flat.push(d.score);
                flat.push(d.class as f32);
            }
            Ok(js_sys::Float32Array::from(flat.as_slice()).into())
        })
    }
}

/// Fits an RGBA image into the network's `[3, side, side]` input (nearest neighbour, aspect
/// kept, at the top left, normalised as in training); returns image pixels per input pixel.
fn fit(rgba: &[u8], width: u32, height: u32, side: usize, out: &mut [f32]) -> retina_wgpu::Result<f32> {
    let (w, h) = (width as usize, height as usize);
    // Checked: on wasm32 `usize` is 32 bits, and 4 x 65,536 x 65,536 would wrap.
    let bytes = w.checked_mul(h).and_then(|n| n.checked_mul(4));
    if w == 0 || h == 0 || bytes != Some(rgba.len()) {
        return Err(retina_wgpu::Error::InvalidParameter(format!(
            "{} bytes are not an RGBA image of {width} x {height}",
            rgba.len()
        )));
    }
    let scale = w.max(h) as f32 / side as f32;
    let source = |i: usize| ((i as f32 + 0.5) * scale).floor() as usize;
    let cols = (0..side).take_while(|&x| source(x) < w).count();
    let rows = (0..side).take_while(|&y| source(y) < h).count();
    let mut rgb = Vec::with_capacity(3 * cols * rows);
    for y in 0..rows {
        for x in 0..cols {
            let p = 4 * (source(y) * w + source(x));
            rgb.extend_from_slice(&rgba[p..p + 3]);
        }
    }
    Normalize::IMAGENET.write_chw(&rgb, cols, side, out)?;
    Ok(scale)
}

/// The state behind a page object, borrowed for one call: a second call while one runs (its
/// borrow is held across the readback) is refused with an error, never a panic.
fn exclusive<T>(inner: &RefCell<T>) -> Result<std::cell::RefMut<'_, T>, JsError> {
    inner
        .try_borrow_mut()
        .map_err(|_| JsError::new("a detection is already running"))
}

/// Scene `index` of the synthetic stream `seed` (the training data's generator), as RGBA
/// pixels of the default 128 x 128 scenes.
#[wasm_bindgen]
pub fn synthetic_scene(seed: u32, index: u32) -> Result<Vec<u8>, JsError> {
    let scene = SceneConfig::default()
        .scene(u64::from(seed), u64::from(index))
        .map_err(js)?;
    Ok(scene.pixels.chunks(3).flat_map(|p| [p[0], p[1], p[2], 255]).collect())
}

/// Times greedy NMS (IoU 0.5) on WebGPU (a device of its own, from the browser's default
/// adapter, the one the page's detector uses) and on the CPU twin in this module, as
/// `retina bench nms` times it natively: the `n` boxes of `data::workloads::random_boxes` (the
/// bench's boxes), class-aware over `classes` classes when `classes > 0`, uploaded once; each of
/// `runs` GPU runs records the NMS, submits it and waits for it with an awaited readback of
/// the kept count (4 bytes; natively the bench polls the device instead). An untimed first run
/// warms the device up and its keep list is checked against the CPU twin's: a mismatch is an
/// error, not a time. Resolves to `{kept, gpu: Float64Array, cpu: Float64Array}` (the number of
/// boxes kept, milliseconds per run). At most [`MAX_TIMED_BOXES`] boxes and [`MAX_TIMED_RUNS`]
/// runs.
#[wasm_bindgen]
pub async fn nms_times(n: u32, classes: u32, runs: u32) -> Result<JsValue, JsError> {
    use retina_wgpu::{Backend, Nms};
    if n > MAX_TIMED_BOXES || runs > MAX_TIMED_RUNS {
        return Err(JsError::new(&format!(
            "NMS timing: {n} boxes and {runs} runs asked; at most {MAX_TIMED_BOXES} boxes and {MAX_TIMED_RUNS} runs"
        )));
    }
    let n = n as usize;
    let (boxes, scores, labels) = retina_wgpu::data::workloads::random_boxes(n, classes.max(1) as usize);
    let labels = (classes > 0).then_some(&labels[..]);
    let nms = Nms::hard(0.5);
    let ctx = GpuContext::new_async(GpuOptions::default()).await.map_err(js)?;
    let (boxes_buf, scores_buf) = (ctx.upload(&boxes).map_err(js)?, ctx.upload(&scores).map_err(js)?);
    let labels_buf = labels.map(|l| ctx.upload(l)).transpose().map_err(js)?;
    let clock = Clock::new()?;
    let mut gpu = Vec::with_capacity(runs as usize);
    let mut first = None;
    for run in 0..=runs {
        let start = clock.now();
        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        let (keep, _, count) = ctx
            .record_nms(&mut encoder, &nms, &boxes_buf, &scores_buf, labels_buf.as_ref())
            .map_err(js)?;
        ctx.queue().submit([encoder.finish()]);
        let kept = ctx
            .download_async(&count)
            .await
            .map_err(js)?
            .first()
            .copied()
            .unwrap_or(0);
        if run == 0 {
            let keep = ctx.download_async(&keep).await.map_err(js)?;
            first = Some(keep[..(kept as usize).min(keep.len())].to_vec());
        } else {
            gpu.push(clock.now() - start);
        }
    }
    let mut cpu = Vec::with_capacity(runs as usize);
    let mut reference = Vec::new();
    for _ in 0..runs.max(1) {
        let start = clock.now();
        reference = nms.run(&Backend::Cpu, &boxes, &scores, labels).map_err(js)?.keep;
        cpu.push(clock.now() - start);
    }
    if first.as_ref() != Some(&reference) {
        return Err(JsError::new(&format!(
            "NMS of {n} boxes: the GPU kept {} boxes, the CPU twin {}: the keep lists differ",
            first.map_or(0, |k| k.len()),
            reference.len()
        )));
    }
    let result = js_sys::Object::new();
    let set = |key: &str, value: JsValue| {
        js_sys::Reflect::set(&result, &key.into(), &value).map_err(|_| JsError::new("cannot build the result object"))
    };
    set("kept", (reference.len() as u32).into())?;
    set("gpu", js_sys::Float64Array::from(gpu.as_slice()).into())?;
    set("cpu", js_sys::Float64Array::from(cpu.as_slice()).into())?;
    Ok(result.into())
}
