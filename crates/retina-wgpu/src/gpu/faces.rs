//! RetinaFace's post-processing on the device (`face_scores.wgsl`, the top-k,
//! `face_candidates.wgsl`, the sort, hard NMS, `face_output.wgsl`), recorded into one encoder
//! with no readback: the twin of [`crate::model::RetinaFace::faces`].

use crate::error::{Error, Result};
use crate::gpu::buffer::GpuBuffer;
use crate::gpu::context::GpuContext;
use crate::gpu::dispatch::{binds, whole};
use crate::gpu::kernels::{Kernel, WG_SIZE};
use crate::gpu::nms::region_for;
use crate::gpu::postprocess::GpuDetection;
use crate::gpu::sort::{SortEntry, sort_len};
use crate::gpu::topk::TopkSegment;
use crate::model::retinaface::{Face, LANDMARKS, Params};
use crate::ops::nms::Nms;

/// One face as the device stores it (80 bytes). Must stay in sync with `Face` in
/// shaders/face_output.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct GpuFace {
    /// `[x1, y1, x2, y2]` in pixels.
    pub bbox: [f32; 4],
    /// The face probability.
    pub score: f32,
    /// Padding.
    pub _pad: [u32; 3],
    /// Five `(x, y)` landmarks in pixels.
    pub landmarks: [f32; 2 * LANDMARKS],
    /// Padding to 80 bytes.
    pub _pad2: [u32; 2],
}

impl From<GpuFace> for Face {
    fn from(f: GpuFace) -> Self {
        let mut landmarks = [[0.0; 2]; LANDMARKS];
        for (p, m) in landmarks.iter_mut().enumerate() {
            *m = [f.landmarks[2 * p], f.landmarks[2 * p + 1]];
        }
        Face {
            bbox: f.bbox,
            score: f.score,
            landmarks,
        }
    }
}

/// Must stay in sync with `Config` in shaders/face_scores.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct FaceScoresConfig {
    pub(crate) rows: u32,
    pub(crate) _pad: [u32; 3],
}

/// Must stay in sync with `Config` in shaders/face_candidates.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct FaceCandidateConfig {
    pub(crate) batch: u32,
    pub(crate) topk: u32,
    pub(crate) region: u32,
    pub(crate) rows: u32,
    pub(crate) total: u32,
    pub(crate) _pad0: u32,
    pub(crate) image_size: [f32; 2],
    pub(crate) variances: [f32; 2],
    pub(crate) _pad1: [u32; 2],
}

/// Must stay in sync with `Config` in shaders/face_output.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct FaceOutputConfig {
    pub(crate) batch: u32,
    pub(crate) region: u32,
    pub(crate) max_out: u32,
    pub(crate) _pad: u32,
}

/// A RetinaFace's outputs for a batch on the device (the engine's row tensors' buffers).
#[derive(Clone, Copy, Debug)]
pub struct FaceBuffers<'a> {
    /// Two class logits per anchor row, `[batch, rows, 2]`.
    pub logits: &'a GpuBuffer<f32>,
    /// Four box deltas per row, `[batch, rows]`.
    pub boxes: &'a GpuBuffer<[f32; 4]>,
    /// Ten landmark deltas per row, `[batch, rows, 10]`.
    pub landmarks: &'a GpuBuffer<f32>,
    /// The anchors of one image, `[cx, cy, w, h]` relative to the image size
    /// ([`crate::model::RetinaFace::anchors`]).
    pub anchors: &'a GpuBuffer<[f32; 4]>,
    /// `(height, width)` of the images in pixels.
    pub image_size: (usize, usize),
    /// Box and landmark coding variances (centre, size).
    pub variances: [f32; 2],
}

/// Where [`GpuContext::record_faces`] writes: `faces[b * max_faces ..][..counts[b]]` are image
/// `b`'s faces, best first.
#[derive(Debug)]
pub struct FaceOutput {
    /// `batch * max_faces` faces.
    pub faces: GpuBuffer<GpuFace>,
    /// Faces per image.
    pub counts: GpuBuffer<u32>,
    /// Slots per image.
    pub max_faces: usize,
}

impl GpuContext {
    /// An output for `batch` images of at most `max_faces` faces each.
    pub fn face_output(&self, batch: usize, max_faces: usize) -> Result<FaceOutput> {
        let len = batch
            .checked_mul(max_faces)
            .ok_or_else(|| Error::invalid("face output: batch x max_faces overflows"))?;
        Ok(FaceOutput {
            faces: self.zeros(len)?,
            counts: self.zeros(batch)?,
            max_faces,
        })
    }

    /// Records RetinaFace's post-processing of `input` into `out`: the softmax scores, the
    /// `params.top_k` best above `params.score_threshold` (strictly), their boxes and landmarks
    /// decoded, a sort per image (equal scores: the lower anchor first), hard NMS at
    /// `params.nms_threshold` (torchvision's IoU in f32; OpenCV's `NMSBoxes`, which the CPU
    /// path follows, computes it in f64: they differ only for an IoU within rounding of the
    /// threshold) keeping at most `out.max_faces`. No readback.
    pub fn record_faces(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        params: Params,
        input: &FaceBuffers<'_>,
        out: &FaceOutput,
    ) -> Result<()> {
        crate::model::retinaface::check_params(params)?;
        let op = "GpuContext::record_faces";
        for (name, b) in [("logits", input.logits), ("landmarks", input.landmarks)] {
            self.check_buffer(op, name, b)?;
        }
        self.check_buffer(op, "boxes", input.boxes)?;
        self.check_buffer(op, "anchors", input.anchors)?;
        self.check_buffer(op, "out.faces", &out.faces)?;
        self.check_buffer(op, "out.counts", &out.counts)?;
        let rows = input.anchors.len();
        let batch = out.counts.len();
        if rows == 0
            || input.logits.len() != batch * rows * 2
            || input.boxes.len() != batch * rows
            || input.landmarks.len() != batch * rows * 2 * LANDMARKS
            || out.faces.len() != batch * out.max_faces
        {
            return Err(Error::shape(
                "face post-processing",
                format!(
                    "{} logits, {} boxes, {} landmark values for {batch} images of {rows} anchors into {} x {} faces",
                    input.logits.len(),
                    input.boxes.len(),
                    input.landmarks.len(),
                    out.counts.len(),
                    out.max_faces
                ),
            ));
        }
        let (h, w) = input.image_size;
        if batch == 0 || out.max_faces == 0 {
            return Ok(());
        }
        let top = params.top_k.min(rows);
        let region = region_for(top);
        let total = sort_len(region * batch);
        if u32::try_from(batch * rows * 2 * LANDMARKS).is_err()
            || total > 1 << 31
            || u32::try_from(batch * out.max_faces).is_err()
        {
            return Err(Error::invalid(format!(
                "face post-processing: {batch} images of {rows} anchors exceed the GPU's 32-bit indices; split the batch"
            )));
        }
        let scores = self.zeros::<f32>(batch * rows)?;
        let config = FaceScoresConfig {
            rows: (batch * rows) as u32,
            _pad: [0; 3],
        };
        self.record_dispatch(
            encoder,
            Kernel::FaceScores,
            &config,
            binds![logits = whole(input.logits), scores = whole(&scores),],
            ((batch * rows) as u64).div_ceil(WG_SIZE),
        )?;
        let segments: Vec<TopkSegment> = (0..batch)
            .map(|b| TopkSegment {
                start: b * rows,
                len: rows,
                k: top,
            })
            .collect();
        let topk = self.record_top_k(encoder, &scores, &segments, Some(params.score_threshold))?;
        let records = self.zeros::<GpuDetection>(region * batch)?;
        let marks = self.zeros::<f32>(region * batch * 2 * LANDMARKS)?;
        let entries = self.zeros::<SortEntry>(total)?;
        let config = FaceCandidateConfig {
            batch: batch as u32,
            topk: topk.stride as u32,
            region: region as u32,
            rows: rows as u32,
            total: total as u32,
            _pad0: 0,
            image_size: [w as f32, h as f32],
            variances: input.variances,
            _pad1: [0; 2],
        };
        let bindings = binds![
            selected = whole(&topk.selected),
            candidates = whole(&topk.candidates),
            deltas = whole(input.boxes),
            landmarks = whole(input.landmarks),
            anchors = whole(input.anchors),
            records = whole(&records),
            marks = whole(&marks),
            entries = whole(&entries),
        ];
        self.record_dispatch(
            encoder,
            Kernel::FaceCandidates,
            &config,
            bindings,
            (total as u64).div_ceil(WG_SIZE),
        )?;
        self.record_sort_entries(encoder, &entries)?;
        let sorted = self.record_permute(encoder, &entries, &records, region, batch)?;
        let nms = Nms::hard(params.nms_threshold);
        let kept = self.record_nms_sorted(encoder, &nms, &sorted, out.max_faces, false)?;
        let config = FaceOutputConfig {
            batch: batch as u32,
            region: region as u32,
            max_out: out.max_faces as u32,
            _pad: 0,
        };
        let bindings = binds![
            payload = whole(&sorted.payload),
            kept = whole(&kept.kept),
            keep = whole(&kept.keep),
            records = whole(&records),
            marks = whole(&marks),
            faces = whole(&out.faces),
            counts = whole(&out.counts),
        ];
        self.record_dispatch(
            encoder,
            Kernel::FaceOutput,
            &config,
            bindings,
            ((batch * out.max_faces) as u64).div_ceil(WG_SIZE),
        )
    }
}
