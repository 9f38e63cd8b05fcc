//! RetinaFace recorded on the device: the network and its post-processing
//! ([`GpuContext::record_faces`]) in one encoder, the faces left in a buffer.

use crate::error::{Error, Result};
use crate::gpu::{FaceBuffers, FaceOutput, GpuBuffer, GpuContext};
use crate::model::retinaface::{Face, Params, RetinaFace};
use crate::nn::{Engine, GpuEngine, GpuTensor, Shape};

/// Anchors on the device for one image size `(height, width)`.
type SizedAnchors = ((usize, usize), GpuBuffer<[f32; 4]>);

/// A RetinaFace with its weights on the device, recorded into a host's encoder with nothing
/// created after the first frame of a size (the prepared objects' contract, see
/// [`crate::gpu::PreparedPostProcess`]): the input is the preprocessed image
/// ([`RetinaFace::input`], or a host's own kernel writing the same values), the faces land in a
/// [`FaceOutput`] the host can read or bind.
pub struct PreparedFaces {
    net: RetinaFace,
    ctx: GpuContext,
    engine: GpuEngine,
    params: Vec<GpuTensor>,
    /// The anchors of the last image size.
    anchors: Option<SizedAnchors>,
    /// The post-processing's thresholds (the model's by default).
    pub post: Params,
    spare: Option<wgpu::CommandEncoder>,
}

impl PreparedFaces {
    /// Uploads the network's parameters `values` (in [`RetinaFace::params`] order) to `ctx`.
    pub fn new(ctx: &GpuContext, net: RetinaFace, values: &[Vec<f32>]) -> Result<Self> {
        if values.len() != net.params().len() {
            return Err(Error::shape(
                "PreparedFaces",
                format!(
                    "{} parameter tensors for a network of {}",
                    values.len(),
                    net.params().len()
                ),
            ));
        }
        let mut engine = GpuEngine::new(ctx)?;
        let params = net
            .params()
            .iter()
            .zip(values)
            .map(|(spec, v)| engine.tensor(spec.shape, v))
            .collect::<Result<Vec<_>>>()?;
        engine.sync()?;
        engine.use_frame_context();
        let post = net.default_params();
        Ok(Self {
            net,
            ctx: ctx.clone(),
            engine,
            params,
            anchors: None,
            post,
            spare: None,
        })
    }

    /// The network.
    pub fn net(&self) -> &RetinaFace {
        &self.net
    }

    /// An output for `batch` images of at most `max_faces` faces each.
    pub fn output(&self, batch: usize, max_faces: usize) -> Result<FaceOutput> {
        self.ctx.face_output(batch, max_faces)
    }

    /// Records face detection over `images` (`batch * 3 * height * width` preprocessed values)
    /// into `encoder`; the faces, in image pixels, land in `out`.
    pub fn record(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        images: &GpuBuffer<f32>,
        (height, width): (usize, usize),
        out: &FaceOutput,
    ) -> Result<()> {
        let plane = 3usize
            .checked_mul(height)
            .and_then(|v| v.checked_mul(width))
            .filter(|&p| p > 0)
            .ok_or_else(|| Error::invalid(format!("PreparedFaces: an image of {width} x {height}")))?;
        if images.is_empty() || !images.len().is_multiple_of(plane) || images.len() / plane != out.counts.len() {
            return Err(Error::shape(
                "PreparedFaces::record",
                format!(
                    "{} input values are not {} images of 3 x {height} x {width}",
                    images.len(),
                    out.counts.len()
                ),
            ));
        }
        let batch = images.len() / plane;
        if self.anchors.as_ref().is_none_or(|(size, _)| *size != (height, width)) {
            let anchors: Vec<[f32; 4]> = self
                .net
                .anchors(height, width)
                .iter()
                .map(|a| a.map(|v| v as f32))
                .collect();
            self.anchors = Some(((height, width), self.ctx.upload(&anchors)?));
        }
        let (net, params, post) = (&self.net, &self.params, self.post);
        let anchors = &self.anchors.as_ref().expect("made above").1;
        let variances = net.config().variances;
        let ctx = self.engine.context().clone();
        let (engine, spare) = (&mut self.engine, &mut self.spare);
        ctx.frame(encoder, |encoder| {
            engine.record_into(encoder, spare, |engine| {
                let x = engine.tensor_from_buffer(Shape::new(batch, 3, height, width), images)?;
                let o = net.forward(engine, params, &x)?;
                let logits = o.logits.view::<f32>(o.logits.shape().len())?;
                let boxes = o.boxes.view::<[f32; 4]>(o.boxes.shape().len() / 4)?;
                let landmarks = o.landmarks.view::<f32>(o.landmarks.shape().len())?;
                let ctx = engine.context().clone();
                let input = FaceBuffers {
                    logits: &logits,
                    boxes: &boxes,
                    landmarks: &landmarks,
                    anchors,
                    image_size: (height, width),
                    variances,
                };
                ctx.record_faces(engine.encoder(), post, &input, out)
            })
        })
    }

    /// Faces in an RGB image (`3 * width * height` bytes): preprocessing on the host, the
    /// network and the post-processing on the device, one submission, one readback (at most
    /// `max_faces` faces). Blocks: for native code (a page records and reads back itself).
    pub fn detect(&mut self, rgb: &[u8], width: usize, height: usize, max_faces: usize) -> Result<Vec<Face>> {
        let input = self.net.input(rgb, width, height)?;
        let images = self.ctx.upload(&input)?;
        let out = self.output(1, max_faces)?;
        let mut encoder = self.ctx.encoder("retinaface");
        self.record(&mut encoder, &images, (height, width), &out)?;
        self.ctx.submit(encoder);
        let count = self.ctx.download(&out.counts)?[0] as usize;
        let faces = self.ctx.download(&out.faces)?;
        Ok(faces[..count.min(faces.len())].iter().map(|&f| f.into()).collect())
    }
}
