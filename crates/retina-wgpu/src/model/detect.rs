//! Inference: the network's forward pass, then RetinaNet's post-processing ([`PostProcess`]:
//! score threshold, top-k per level, decoding, class-aware NMS, at most 100 per image). On the
//! GPU the post-processing is recorded into the engine's encoder behind the forward pass, over
//! the network's own output tensors; the detections are the one readback of a batch.

use crate::backend::Backend;
use crate::cpu::nn::{CpuEngine, CpuTensor};
use crate::error::{Error, Result};
use crate::gpu::postprocess::unpack_detections;
use crate::gpu::{DetectionBuffers, DetectionOutput, GpuBuffer, GpuContext, OutputOptions};
use crate::model::{AnchorSet, RetinaNet};
use crate::nn::{Engine, GpuEngine, GpuTensor, Shape};
use crate::ops::postprocess::{Detection, DetectionInput, PostProcess};
use crate::progress::{Finish, Progress};

/// An engine that turns the network's row outputs into detections.
pub trait DetectEngine: Engine {
    /// Detections per image from `class_rows` `[B, 1, R, K]` and `box_rows` `[B, 1, R, 4]`.
    fn postprocess(
        &mut self,
        pp: &PostProcess,
        anchors: &AnchorSet,
        level_offsets: &[usize],
        class_rows: &Self::Tensor,
        box_rows: &Self::Tensor,
    ) -> Result<Vec<Vec<Detection>>>;
}

fn rows_shape(class_rows: Shape, box_rows: Shape, anchors: &AnchorSet) -> Result<(usize, usize)> {
    let r = anchors.boxes.len();
    if class_rows.h != r || box_rows.h != r || box_rows.w != 4 || class_rows.n != box_rows.n {
        return Err(Error::shape(
            "detection",
            format!("class rows {class_rows} and box rows {box_rows} for {r} anchors"),
        ));
    }
    Ok((class_rows.n, class_rows.w))
}

impl DetectEngine for CpuEngine<f32> {
    fn postprocess(
        &mut self,
        pp: &PostProcess,
        anchors: &AnchorSet,
        level_offsets: &[usize],
        class_rows: &CpuTensor<f32>,
        box_rows: &CpuTensor<f32>,
    ) -> Result<Vec<Vec<Detection>>> {
        let (_, k) = rows_shape(class_rows.shape(), box_rows.shape(), anchors)?;
        pp.run(
            &Backend::Cpu,
            &DetectionInput {
                logits: class_rows.data(),
                deltas: bytemuck::cast_slice(box_rows.data()),
                anchors: &anchors.boxes,
                level_offsets,
                num_classes: k,
                image_size: (anchors.height, anchors.width),
            },
        )
    }
}

impl DetectEngine for GpuEngine {
    fn postprocess(
        &mut self,
        pp: &PostProcess,
        anchors: &AnchorSet,
        level_offsets: &[usize],
        class_rows: &GpuTensor,
        box_rows: &GpuTensor,
    ) -> Result<Vec<Vec<Detection>>> {
        let (batch, _) = rows_shape(class_rows.shape(), box_rows.shape(), anchors)?;
        let ctx = self.context().clone();
        let anchor_buf = ctx.anchors(&anchors.config, anchors.height, anchors.width)?;
        let out = ctx.detection_output(batch, pp.max_detections)?;
        let rows = (class_rows, box_rows);
        record_detections(
            self,
            pp,
            &anchor_buf,
            level_offsets,
            (anchors.height, anchors.width),
            rows,
            &out,
        )?;
        self.sync()?;
        let detections = ctx.download(&out.detections)?;
        let counts = ctx.download(&out.counts)?;
        Ok(unpack_detections(&detections, &counts, pp.max_detections))
    }
}

/// Records the post-processing of the network's rows `(class_rows [B, 1, R, K], box_rows
/// [B, 1, R, 4])` into `engine`'s encoder, behind the forward pass, with the detections in `out`.
pub(crate) fn record_detections(
    engine: &mut GpuEngine,
    pp: &PostProcess,
    anchors: &GpuBuffer<[f32; 4]>,
    level_offsets: &[usize],
    image_size: (u32, u32),
    (class_rows, box_rows): (&GpuTensor, &GpuTensor),
    out: &DetectionOutput,
) -> Result<()> {
    let logits = class_rows.view::<f32>(class_rows.shape().len())?;
    let deltas = box_rows.view::<[f32; 4]>(box_rows.shape().len() / 4)?;
    let ctx = engine.context().clone();
    ctx.record_postprocess(
        engine.encoder(),
        pp,
        &DetectionBuffers {
            logits: &logits,
            deltas: &deltas,
            anchors,
            level_offsets,
            num_classes: class_rows.shape().w,
            image_size,
        },
        out,
    )
}

/// A trained network ready to detect: its parameters on an engine, the anchors of its input
/// size and the post-processing.
pub struct Detector<E: DetectEngine> {
    net: RetinaNet,
    engine: E,
    params: Vec<E::Tensor>,
    anchors: AnchorSet,
    /// The post-processing (torchvision's RetinaNet defaults).
    pub postprocess: PostProcess,
}

impl<E: DetectEngine> Detector<E> {
    /// A detector of `net` with `values` (in [`RetinaNet::params`] order) on `engine`.
    pub fn new(mut engine: E, net: RetinaNet, values: &[Vec<f32>]) -> Result<Self> {
        let params = net.upload(&mut engine, values)?;
        let s = net.config().input_size as u32;
        let anchors = AnchorSet::new(net.config().anchors(), s, s)?;
        Ok(Self {
            net,
            engine,
            params,
            anchors,
            postprocess: PostProcess::default(),
        })
    }

    /// The network.
    pub fn net(&self) -> &RetinaNet {
        &self.net
    }

    /// Detections in network pixels for a batch of normalised CHW images (`batch * 3 * S * S`
    /// values), per image in decreasing score order.
    pub fn detect(&mut self, images: &[f32]) -> Result<Vec<Vec<Detection>>> {
        let s = self.net.config().input_size;
        let plane = 3 * s * s;
        if images.is_empty() || !images.len().is_multiple_of(plane) {
            return Err(Error::shape(
                "detector",
                format!("{} input values are not whole images of 3 x {s} x {s}", images.len()),
            ));
        }
        let x = self.engine.tensor(Shape::new(images.len() / plane, 3, s, s), images)?;
        let tape = self.net.forward(&mut self.engine, &self.params, x)?;
        let offsets = self.net.level_offsets().to_vec();
        self.engine.postprocess(
            &self.postprocess,
            &self.anchors,
            &offsets,
            &tape.class_rows,
            &tape.box_rows,
        )
    }
}

/// A trained detector prepared for a GPU frame loop: the forward pass and the post-processing of
/// a batch of images already on the device, recorded into the host's encoder with nothing
/// created, queued or waited on after the first frame (see [`crate::gpu::PreparedPostProcess`]
/// for the contract). The images come from the host (for example a rendered frame turned into
/// the network's input by [`GpuContext::record_image_to_tensor`]); the detections land in a
/// [`DetectionOutput`] the host can bind.
pub struct PreparedDetector {
    net: RetinaNet,
    /// The context the detector was made on (the engine holds a frame context of it, whose
    /// buffers are recycled frame to frame: outputs are made here instead).
    ctx: GpuContext,
    engine: GpuEngine,
    params: Vec<GpuTensor>,
    anchors: std::sync::Arc<GpuBuffer<[f32; 4]>>,
    /// The post-processing (torchvision's RetinaNet defaults unless changed).
    pub postprocess: PostProcess,
    spare: Option<wgpu::CommandEncoder>,
}

impl PreparedDetector {
    /// Uploads `net`'s parameters `values` (in [`RetinaNet::params`] order) to `ctx`, makes its
    /// anchors and compiles every kernel of inference.
    pub fn new(ctx: &GpuContext, net: RetinaNet, values: &[Vec<f32>]) -> Result<Self> {
        let mut engine = GpuEngine::new(ctx)?;
        let params = net.upload(&mut engine, values)?;
        engine.sync()?;
        engine.use_frame_context();
        for kernels in crate::gpu::prepared::inference_kernels() {
            ctx.precompile(kernels)?;
        }
        let s = net.config().input_size as u32;
        let anchors = ctx.anchors(&net.config().anchors(), s, s)?;
        Ok(Self {
            net,
            ctx: ctx.clone(),
            engine,
            params,
            anchors,
            postprocess: PostProcess::default(),
            spare: None,
        })
    }

    /// The network.
    pub fn net(&self) -> &RetinaNet {
        &self.net
    }

    /// The side of the square input images, in pixels.
    pub fn input_size(&self) -> usize {
        self.net.config().input_size
    }

    /// A detection output for `batch` images, with `options` (extra usages, draw arguments).
    pub fn output(&self, batch: usize, options: &OutputOptions) -> Result<DetectionOutput> {
        self.ctx
            .detection_output_with(batch, self.postprocess.max_detections, options)
    }

    /// Records detection over `images` (normalised CHW images, `batch * 3 * S * S` values, as
    /// [`crate::ops::image::Normalize`] makes them) into `encoder`, leaving the detections in network
    /// pixels in `out`.
    pub fn record(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        images: &GpuBuffer<f32>,
        out: &DetectionOutput,
    ) -> Result<()> {
        let batch = self.check(images.len(), out)?;
        let ctx = self.engine.context().clone();
        ctx.frame(encoder, |encoder| self.record_images(encoder, batch, images, out))
    }

    /// Records detection over one rendered frame into `encoder`: `frame` (a `width` x
    /// `height` view, see [`GpuContext::record_image_to_tensor`]) becomes the network's input
    /// on the device, fitted with its aspect kept, and the detections land in `out` (one image)
    /// in network pixels: multiply by [`crate::gpu::frame_scale`] for frame pixels.
    pub fn record_frame(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        frame: &wgpu::TextureView,
        (width, height): (u32, u32),
        normalize: &crate::ops::image::Normalize,
        out: &DetectionOutput,
    ) -> Result<()> {
        let s = self.input_size();
        self.check(3 * s * s, out)?;
        if width == 0 || height == 0 {
            return Err(Error::invalid("PreparedDetector::record_frame: the frame is empty"));
        }
        let ctx = self.engine.context().clone();
        ctx.frame(encoder, |encoder| {
            let input = ctx.zeros::<f32>(3 * s * s)?;
            ctx.record_image_to_tensor(encoder, frame, (width, height), normalize, s, 0, &input)?;
            self.record_images(encoder, 1, &input, out)
        })
    }

    /// Values per image of the network's raw outputs: class logits (`R * K`) and box deltas
    /// (`R * 4`), `R` anchor rows in the crate's order (see [`RetinaNet::forward`]).
    pub fn raw_output_lens(&self) -> Result<(usize, usize)> {
        let rows = self.net.config().num_anchors()?;
        Ok((rows * self.net.config().num_classes, rows * 4))
    }

    /// Records the network alone over `images` (as [`PreparedDetector::record`] takes them)
    /// into `encoder` and copies its raw outputs into `logits` and `deltas` (at least `batch`
    /// times [`PreparedDetector::raw_output_lens`] values each, image after image): for a host
    /// that runs its own post-processing, and to time the forward pass apart from it.
    pub fn record_forward(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        images: &GpuBuffer<f32>,
        logits: &GpuBuffer<f32>,
        deltas: &GpuBuffer<f32>,
    ) -> Result<()> {
        let s = self.input_size();
        let batch = self.image_batch("PreparedDetector::record_forward", images.len())?;
        let (per_logits, per_deltas) = self.raw_output_lens()?;
        for (name, buffer, per) in [("logits", logits, per_logits), ("deltas", deltas, per_deltas)] {
            self.ctx
                .check_buffer("PreparedDetector::record_forward", name, buffer)?;
            if buffer.len() < batch * per {
                return Err(Error::shape(
                    "PreparedDetector::record_forward",
                    format!(
                        "`{name}` holds {} values; {batch} images need {}",
                        buffer.len(),
                        batch * per
                    ),
                ));
            }
        }
        let ctx = self.engine.context().clone();
        let net = &self.net;
        let params = &self.params;
        ctx.frame(encoder, |encoder| {
            self.engine.record_into(encoder, &mut self.spare, |engine| {
                let x = engine.tensor_from_buffer(Shape::new(batch, 3, s, s), images)?;
                let tape = net.forward(engine, params, x)?;
                let encoder = engine.encoder();
                for (rows, dst, per) in [
                    (&tape.class_rows, logits, per_logits),
                    (&tape.box_rows, deltas, per_deltas),
                ] {
                    encoder.copy_buffer_to_buffer(rows.buffer(), 0, dst.buffer(), 0, (batch * per * 4) as u64);
                }
                Ok(())
            })
        })
    }

    /// The batch of `values` input values, after checking them and `out`.
    fn check(&self, values: usize, out: &DetectionOutput) -> Result<usize> {
        let batch = self.image_batch("PreparedDetector::record", values)?;
        if out.counts.len() != batch || out.max_detections != self.postprocess.max_detections {
            return Err(Error::shape(
                "PreparedDetector::record",
                format!(
                    "the output holds {} images x {} detections; {batch} x {} needed",
                    out.counts.len(),
                    out.max_detections,
                    self.postprocess.max_detections
                ),
            ));
        }
        self.postprocess.validate()?;
        Ok(batch)
    }

    /// The images in `values` input values, or an error from `op` unless they are whole images.
    fn image_batch(&self, op: &'static str, values: usize) -> Result<usize> {
        let s = self.input_size();
        let plane = 3 * s * s;
        if values == 0 || !values.is_multiple_of(plane) {
            return Err(Error::shape(
                op,
                format!("{values} input values are not whole images of 3 x {s} x {s}"),
            ));
        }
        Ok(values / plane)
    }

    fn record_images(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        batch: usize,
        images: &GpuBuffer<f32>,
        out: &DetectionOutput,
    ) -> Result<()> {
        let s = self.input_size();
        let (net, params, anchors, pp) = (&self.net, &self.params, &self.anchors, &self.postprocess);
        let level_offsets = net.level_offsets();
        self.engine.record_into(encoder, &mut self.spare, |engine| {
            let x = engine.tensor_from_buffer(Shape::new(batch, 3, s, s), images)?;
            let tape = net.forward(engine, params, x)?;
            let rows = (&tape.class_rows, &tape.box_rows);
            record_detections(engine, pp, anchors, level_offsets, (s as u32, s as u32), rows, out)
        })
    }
}

/// Detects every image of `dataset` (in batches of `batch`) and returns the detections as COCO
/// results in the original images' coordinates, with COCO's category ids. Reports to
/// `progress` in images ([`NoProgress`](crate::NoProgress) for none).
pub fn detect_dataset<E: DetectEngine>(
    detector: &mut Detector<E>,
    dataset: &crate::coco::CocoDataset,
    batch: usize,
    progress: &dyn Progress,
) -> Result<Vec<crate::coco::BboxResult>> {
    let s = detector.net().config().input_size;
    if dataset.options().input_size as usize != s {
        return Err(Error::invalid(format!(
            "the dataset was loaded at {} px, the network takes {s} px",
            dataset.options().input_size
        )));
    }
    if dataset.categories().len() != detector.net().config().num_classes {
        return Err(Error::invalid(format!(
            "the dataset has {} categories, the network {} classes",
            dataset.categories().len(),
            detector.net().config().num_classes
        )));
    }
    let batch = batch.max(1);
    let plane = 3 * s * s;
    let _finish = Finish::start(progress, "detecting", dataset.len() as u64);
    let normalize = dataset.options().normalize;
    let mut results = Vec::new();
    let mut images = vec![0f32; batch * plane];
    for samples in dataset.samples().chunks(batch) {
        let images = &mut images[..samples.len() * plane];
        for (sample, out) in samples.iter().zip(images.chunks_exact_mut(plane)) {
            sample.write_chw(&normalize, out)?;
        }
        let detections = detector.detect(images)?;
        for (sample, dets) in samples.iter().zip(&detections) {
            results.extend(crate::coco::detections_to_results(
                dets,
                sample.image_id(),
                sample.letterbox(),
                dataset.categories(),
            )?);
        }
        progress.advance(samples.len() as u64);
    }
    Ok(results)
}

/// Detects every image of `dataset` and evaluates the detections against its ground truth
/// with COCO's bbox evaluation. Images the dataset skipped (unreadable files) are left out of
/// the evaluation, so that their objects do not count as misses. Reports the detection to
/// `progress` as [`detect_dataset`] does.
pub fn evaluate_dataset<E: DetectEngine>(
    detector: &mut Detector<E>,
    dataset: &crate::coco::CocoDataset,
    batch: usize,
    progress: &dyn Progress,
) -> Result<(crate::coco::Evaluation, Vec<crate::coco::BboxResult>)> {
    let results = detect_dataset(detector, dataset, batch, progress)?;
    let instances = dataset.instances();
    let eval = if dataset.report().skipped.is_empty() {
        crate::coco::evaluate(instances, &results)?
    } else {
        let loaded: std::collections::HashSet<i64> = dataset.samples().iter().map(|s| s.image_id()).collect();
        let gt = crate::coco::Instances::new(
            instances
                .images
                .iter()
                .filter(|i| loaded.contains(&i.id))
                .cloned()
                .collect(),
            instances
                .annotations
                .iter()
                .filter(|a| loaded.contains(&a.image_id))
                .cloned()
                .collect(),
            instances.categories.clone(),
            "the loaded images",
        )?;
        crate::coco::evaluate(&gt, &results)?
    };
    Ok((eval, results))
}
