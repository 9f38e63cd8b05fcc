//! torchvision's RetinaNet recorded on the device: its transform
//! ([`GpuContext::record_resize_normalize`]), the network and the post-processing
//! ([`GpuContext::record_postprocess`]) in one encoder, the detections left in a buffer a render
//! pass can bind.

use crate::error::{Error, Result};
use crate::gpu::postprocess::unpack_detections;
use crate::gpu::{DetectionOutput, GpuBuffer, GpuContext, OutputOptions, ResizeTarget};
use crate::model::detect::record_detections;
use crate::model::torchvision::{ANCHORS_PER_CELL, TorchvisionRetinaNet};
use crate::nn::{Engine, GpuEngine, GpuTensor, Shape};
use crate::ops::nms::Nms;
use crate::ops::postprocess::{Detection, PostProcess};

/// Anchors on the device for one padded input size, with the levels' first anchors.
struct SizedAnchors {
    padded: (usize, usize),
    buffer: GpuBuffer<[f32; 4]>,
    level_offsets: Vec<usize>,
}

/// A torchvision RetinaNet with its weights on the device, recorded into a host's encoder with
/// nothing created after the first frame of a size (the prepared objects' contract, see
/// [`crate::gpu::PreparedPostProcess`]). A frame (a texture) goes through torchvision's
/// transform, the network and torchvision's post-processing on the device; the detections land
/// in a [`DetectionOutput`] in the resized image's pixels ([`PreparedTorchvision::frame_scale`]
/// maps them to the frame's).
///
/// The post-processing is the crate's [`PostProcess`] with the model's thresholds: the same
/// selection, decoding and class-aware NMS as torchvision's, with two documented differences at
/// ties: the score threshold is compared in logit space, and NMS runs per class (torchvision's
/// CPU `batched_nms` offsets the boxes of up to 1,000 candidates instead, which rounds their
/// IoU differently). [`TorchvisionRetinaNet::detect`] is the host twin that follows torchvision
/// to the last detail.
pub struct PreparedTorchvision {
    net: TorchvisionRetinaNet,
    ctx: GpuContext,
    engine: GpuEngine,
    params: Vec<GpuTensor>,
    anchors: Option<SizedAnchors>,
    /// The post-processing (the model's thresholds unless changed; `max_detections` sizes the
    /// outputs).
    pub postprocess: PostProcess,
    spare: Option<wgpu::CommandEncoder>,
}

impl PreparedTorchvision {
    /// Uploads the network's parameters `values` (in [`TorchvisionRetinaNet::params`] order) to
    /// `ctx` and compiles the kernels of inference.
    pub fn new(ctx: &GpuContext, net: TorchvisionRetinaNet, values: &[Vec<f32>]) -> Result<Self> {
        let mut engine = GpuEngine::new(ctx)?;
        let params = net.upload(&mut engine, values)?;
        engine.sync()?;
        engine.use_frame_context();
        for kernels in crate::gpu::prepared::inference_kernels() {
            ctx.precompile(kernels)?;
        }
        let c = net.config();
        let postprocess = PostProcess {
            score_threshold: c.score_threshold,
            topk_per_level: c.topk_candidates,
            nms: Nms::hard(c.nms_threshold),
            max_detections: c.detections_per_image,
            ..PostProcess::default()
        };
        postprocess.validate()?;
        Ok(Self {
            net,
            ctx: ctx.clone(),
            engine,
            params,
            anchors: None,
            postprocess,
            spare: None,
        })
    }

    /// The network.
    pub fn net(&self) -> &TorchvisionRetinaNet {
        &self.net
    }

    /// An output for one image, with `options` (extra usages, draw arguments).
    pub fn output(&self, options: &OutputOptions) -> Result<DetectionOutput> {
        self.ctx
            .detection_output_with(1, self.postprocess.max_detections, options)
    }

    /// Where torchvision's transform puts a `width` x `height` frame.
    pub fn target(&self, width: usize, height: usize) -> Result<ResizeTarget> {
        let (resized, padded) = self.net.sizes(width, height)?;
        Ok(ResizeTarget { resized, padded })
    }

    /// Frame pixels per detection pixel `(x, y)` for a `width` x `height` frame, as torchvision
    /// maps boxes back (`original / resized` in f32).
    pub fn frame_scale(&self, width: usize, height: usize) -> Result<(f32, f32)> {
        let t = self.target(width, height)?;
        Ok((width as f32 / t.resized.1 as f32, height as f32 / t.resized.0 as f32))
    }

    /// Records detection over one frame into `encoder`: `frame` (a `width` x `height` view, as
    /// [`GpuContext::record_resize_normalize`] reads it: `width` and `height` must be the
    /// texture's, and the view not sRGB) through torchvision's transform, the network and the
    /// post-processing, the detections in `out` in the resized image's pixels.
    pub fn record_frame(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        frame: &wgpu::TextureView,
        (width, height): (u32, u32),
        out: &DetectionOutput,
    ) -> Result<()> {
        let target = self.target(width as usize, height as usize)?;
        let (ph, pw) = target.padded;
        let c = self.net.config();
        let norm = (c.image_mean, c.image_std);
        let ctx = self.engine.context().clone();
        ctx.frame(encoder, |encoder| {
            let input = ctx.zeros::<f32>(3 * ph * pw)?;
            ctx.record_resize_normalize(encoder, frame, (width, height), target, norm, 0, &input)?;
            self.record_images(encoder, &input, target, out)
        })
    }

    /// Records detection over an image already transformed (`3 * padded.0 * padded.1` values,
    /// as [`TorchvisionRetinaNet::transform`] makes them) into `encoder`. `target` is the
    /// image's sizes: positive, the resized within the padded, the padded a multiple of
    /// `size_divisible` (as [`PreparedTorchvision::target`] gives them).
    pub fn record(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        image: &GpuBuffer<f32>,
        target: ResizeTarget,
        out: &DetectionOutput,
    ) -> Result<()> {
        let ((rh, rw), (ph, pw)) = (target.resized, target.padded);
        let d = self.net.config().size_divisible;
        let max = crate::model::MAX_INPUT_SIZE;
        if rh == 0 || rw == 0 || rh > ph || rw > pw || ph > max || pw > max || ph % d != 0 || pw % d != 0 {
            return Err(Error::invalid(format!(
                "PreparedTorchvision::record: resized {rw} x {rh} in padded {pw} x {ph}: sizes must be positive, the resized within the padded, the padded a multiple of {d} up to {max}"
            )));
        }
        let ctx = self.engine.context().clone();
        ctx.frame(encoder, |encoder| self.record_images(encoder, image, target, out))
    }

    fn record_images(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        image: &GpuBuffer<f32>,
        target: ResizeTarget,
        out: &DetectionOutput,
    ) -> Result<()> {
        let ((rh, rw), (ph, pw)) = (target.resized, target.padded);
        if image.len() != 3 * ph * pw || out.counts.len() != 1 || out.max_detections != self.postprocess.max_detections
        {
            return Err(Error::shape(
                "PreparedTorchvision::record",
                format!(
                    "{} input values for one image of 3 x {ph} x {pw}; an output of {} images x {} detections for 1 x {}",
                    image.len(),
                    out.counts.len(),
                    out.max_detections,
                    self.postprocess.max_detections
                ),
            ));
        }
        self.postprocess.validate()?;
        if self.anchors.as_ref().is_none_or(|a| a.padded != (ph, pw)) {
            let levels = self.net.level_sizes(ph, pw)?;
            let anchors = self.net.anchors((ph, pw), &levels);
            let mut level_offsets = vec![0];
            for &(h, w) in &levels {
                level_offsets.push(level_offsets.last().copied().unwrap_or(0) + h * w * ANCHORS_PER_CELL);
            }
            self.anchors = Some(SizedAnchors {
                padded: (ph, pw),
                buffer: self.ctx.upload(&anchors)?,
                level_offsets,
            });
        }
        let anchors = self.anchors.as_ref().expect("made above");
        let (net, params, pp) = (&self.net, &self.params, &self.postprocess);
        self.engine.record_into(encoder, &mut self.spare, |engine| {
            let x = engine.tensor_from_buffer(Shape::new(1, 3, ph, pw), image)?;
            let o = net.forward(engine, params, &x)?;
            let size = (rh as u32, rw as u32);
            record_detections(
                engine,
                pp,
                &anchors.buffer,
                &anchors.level_offsets,
                size,
                (&o.logits, &o.boxes),
                out,
            )
        })
    }

    /// Detections in an RGB image (`3 * width * height` bytes) in its pixels: the image as a
    /// texture, then [`PreparedTorchvision::record_frame`], one submission, one readback, the
    /// boxes scaled back as torchvision does. An image larger than the device's textures is
    /// transformed on the host instead. Blocks: for native code
    /// ([`PreparedTorchvision::detect_async`] in a browser).
    pub fn detect(&mut self, rgb: &[u8], width: usize, height: usize) -> Result<Vec<Detection>> {
        let out = self.submit_rgb(rgb, width, height)?;
        let detections = self.ctx.download(&out.detections)?;
        let counts = self.ctx.download(&out.counts)?;
        self.finish(width, height, &detections, &counts)
    }

    /// [`PreparedTorchvision::detect`] with awaited readbacks (a browser's event loop).
    pub async fn detect_async(&mut self, rgb: &[u8], width: usize, height: usize) -> Result<Vec<Detection>> {
        let out = self.submit_rgb(rgb, width, height)?;
        let detections = self.ctx.download_async(&out.detections).await?;
        let counts = self.ctx.download_async(&out.counts).await?;
        self.finish(width, height, &detections, &counts)
    }

    /// Records and submits detection over an RGB image; the output to read back.
    fn submit_rgb(&mut self, rgb: &[u8], width: usize, height: usize) -> Result<DetectionOutput> {
        if rgb.len() != 3usize.saturating_mul(width).saturating_mul(height) {
            return Err(Error::invalid(format!(
                "PreparedTorchvision::detect: {} bytes are not an RGB image of {width} x {height}",
                rgb.len()
            )));
        }
        let target = self.target(width, height)?;
        let out = self.output(&OutputOptions::default())?;
        let mut encoder = self.ctx.encoder("torchvision retinanet");
        let max_side = self.ctx.device().limits().max_texture_dimension_2d as usize;
        if width <= max_side && height <= max_side {
            let texture = self.upload_texture(rgb, width as u32, height as u32);
            let view = texture.create_view(&wgpu::TextureViewDescriptor::default());
            self.record_frame(&mut encoder, &view, (width as u32, height as u32), &out)?;
        } else {
            let image = self.net.transform(rgb, width, height)?;
            let input = self.ctx.upload(&image.data)?;
            self.record(&mut encoder, &input, target, &out)?;
        }
        self.ctx.submit(encoder);
        Ok(out)
    }

    /// The detections read back, in the original image's pixels.
    fn finish(
        &self,
        width: usize,
        height: usize,
        detections: &[crate::gpu::GpuDetection],
        counts: &[u32],
    ) -> Result<Vec<Detection>> {
        let (sx, sy) = self.frame_scale(width, height)?;
        let found = unpack_detections(detections, counts, self.postprocess.max_detections);
        Ok(found
            .into_iter()
            .next()
            .unwrap_or_default()
            .into_iter()
            .map(|d| Detection {
                bbox: [d.bbox[0] * sx, d.bbox[1] * sy, d.bbox[2] * sx, d.bbox[3] * sy],
                ..d
            })
            .collect())
    }

    fn upload_texture(&self, rgb: &[u8], width: u32, height: u32) -> wgpu::Texture {
        let size = wgpu::Extent3d {
            width,
            height,
            depth_or_array_layers: 1,
        };
        let texture = self.ctx.device().create_texture(&wgpu::TextureDescriptor {
            label: Some("retina-wgpu image"),
            size,
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: wgpu::TextureFormat::Rgba8Unorm,
            usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
            view_formats: &[],
        });
        let rgba: Vec<u8> = rgb.chunks_exact(3).flat_map(|p| [p[0], p[1], p[2], 255]).collect();
        self.ctx.queue().write_texture(
            wgpu::TexelCopyTextureInfo {
                texture: &texture,
                mip_level: 0,
                origin: wgpu::Origin3d::ZERO,
                aspect: wgpu::TextureAspect::All,
            },
            &rgba,
            wgpu::TexelCopyBufferLayout {
                offset: 0,
                bytes_per_row: Some(4 * width),
                rows_per_image: Some(height),
            },
            size,
        );
        texture
    }
}
