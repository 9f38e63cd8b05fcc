//! Rendered frames into network input on the device (`image_to_tensor.wgsl`): the first step of
//! a detector inside a render loop, with no readback.

use crate::error::{Error, Result};
use crate::gpu::buffer::GpuBuffer;
use crate::gpu::context::GpuContext;
use crate::gpu::dispatch::{binds, whole};
use crate::gpu::kernels::{Kernel, WG_SIZE};
use crate::ops::image::Normalize;

/// Must stay in sync with `Config` in shaders/image_to_tensor.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct ImageConfig {
    pub(crate) side: u32,
    pub(crate) frame_w: u32,
    pub(crate) frame_h: u32,
    pub(crate) offset: u32,
    pub(crate) scale: f32,
    pub(crate) _pad0: u32,
    pub(crate) _pad1: u32,
    pub(crate) _pad2: u32,
    pub(crate) mean: [f32; 4],
    pub(crate) inv_std: [f32; 4],
}

/// Must stay in sync with `Config` in shaders/resize_normalize.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct ResizeConfig {
    pub(crate) src_w: u32,
    pub(crate) src_h: u32,
    pub(crate) out_w: u32,
    pub(crate) out_h: u32,
    pub(crate) pad_w: u32,
    pub(crate) pad_h: u32,
    pub(crate) offset: u32,
    pub(crate) _pad0: u32,
    pub(crate) scale_x: f32,
    pub(crate) scale_y: f32,
    pub(crate) _pad1: u32,
    pub(crate) _pad2: u32,
    pub(crate) mean: [f32; 4],
    pub(crate) deviation: [f32; 4],
}

/// Where [`GpuContext::record_resize_normalize`] puts an image: the sizes of torchvision's
/// transform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResizeTarget {
    /// `(height, width)` after resizing.
    pub resized: (usize, usize),
    /// `(height, width)` after padding (the tensor's planes).
    pub padded: (usize, usize),
}

/// Frame pixels per input pixel when a `width` x `height` frame is fitted into a square input of
/// `side` pixels with its aspect kept: multiply detections in input pixels by it to get frame
/// pixels.
pub fn frame_scale(width: u32, height: u32, side: usize) -> f32 {
    width.max(height) as f32 / side.max(1) as f32
}

impl GpuContext {
    /// Records torchvision's transform of `frame` (a view of a float-sampleable 2-D texture of
    /// `width` x `height`, read with `textureLoad`: the size must be the texture's, or the
    /// loads past it read unspecified texels; a non-sRGB view of 8-bit images gives the
    /// stored bytes / 255 as torchvision's `to_tensor`) into image `image` of `out`, a batch of
    /// `[3, padded.0, padded.1]` tensors: normalised by `mean` and `std`, resized to `resized`
    /// with PyTorch's bilinear interpolation (`align_corners=False`), zero past it.
    #[allow(clippy::too_many_arguments)]
    pub fn record_resize_normalize(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        frame: &wgpu::TextureView,
        (width, height): (u32, u32),
        target: ResizeTarget,
        (mean, std): ([f32; 3], [f32; 3]),
        image: usize,
        out: &GpuBuffer<f32>,
    ) -> Result<()> {
        self.check_buffer("GpuContext::record_resize_normalize", "out", out)?;
        let ((rh, rw), (ph, pw)) = (target.resized, target.padded);
        if width == 0 || height == 0 || rh == 0 || rw == 0 || rh > ph || rw > pw {
            return Err(Error::invalid(format!(
                "resize: a {width} x {height} frame to {rw} x {rh} padded to {pw} x {ph}: every size must be positive and the padding at least the resized size"
            )));
        }
        let plane = ph.checked_mul(pw).filter(|&p| p <= u32::MAX as usize / 3);
        let end = plane.and_then(|p| (image.checked_add(1)?).checked_mul(3 * p).map(|end| (end, p)));
        let Some((end, plane)) = end.filter(|&(end, _)| u32::try_from(end).is_ok()) else {
            return Err(Error::invalid(format!(
                "resize: image {image} of 3 x {ph} x {pw} does not fit the GPU's 32-bit indices"
            )));
        };
        if end > out.len() {
            return Err(Error::shape(
                "resize",
                format!(
                    "image {image} of 3 x {ph} x {pw} needs {end} values, the output holds {}",
                    out.len()
                ),
            ));
        }
        if std.iter().any(|s| !s.is_finite() || *s <= 0.0) || mean.iter().any(|m| !m.is_finite()) {
            return Err(Error::invalid(
                "resize: the mean must be finite and the deviation positive",
            ));
        }
        let config = ResizeConfig {
            src_w: width,
            src_h: height,
            out_w: rw as u32,
            out_h: rh as u32,
            pad_w: pw as u32,
            pad_h: ph as u32,
            offset: (end - 3 * plane) as u32,
            _pad0: 0,
            scale_x: width as f32 / rw as f32,
            scale_y: height as f32 / rh as f32,
            _pad1: 0,
            _pad2: 0,
            mean: [mean[0], mean[1], mean[2], 0.0],
            deviation: [std[0], std[1], std[2], 1.0],
        };
        self.record_dispatch(
            encoder,
            Kernel::ResizeNormalize,
            &config,
            binds![frame = wgpu::BindingResource::TextureView(frame), dst = whole(out),],
            (plane as u64).div_ceil(WG_SIZE),
        )
    }

    /// Records the conversion of `frame` (a view of a float-sampleable 2-D texture of
    /// `width` x `height`, read with `textureLoad`; use a non-sRGB view of 8-bit frames so that
    /// values are the stored bytes / 255, as in training) into image `image` of `out`, a batch of
    /// `[3, side, side]` network inputs: resized by nearest neighbour with its aspect kept
    /// ([`frame_scale`]), at the top left, normalised by `normalize`, the rest 0.
    #[allow(clippy::too_many_arguments)]
    pub fn record_image_to_tensor(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        frame: &wgpu::TextureView,
        (width, height): (u32, u32),
        normalize: &Normalize,
        side: usize,
        image: usize,
        out: &GpuBuffer<f32>,
    ) -> Result<()> {
        self.check_buffer("GpuContext::record_image_to_tensor", "out", out)?;
        let plane = side.checked_mul(side).filter(|&p| p > 0 && p <= u32::MAX as usize / 3);
        let offset = plane.and_then(|p| (image.checked_add(1)?).checked_mul(3 * p).map(|end| (end, p)));
        let Some((end, plane)) = offset else {
            return Err(Error::invalid(format!(
                "image to tensor: image {image} of side {side} does not fit the GPU's 32-bit indices"
            )));
        };
        if end > out.len() || u32::try_from(end).is_err() {
            return Err(Error::shape(
                "image to tensor",
                format!(
                    "image {image} of 3 x {side} x {side} needs {end} values, the output holds {}",
                    out.len()
                ),
            ));
        }
        if width == 0 || height == 0 {
            return Err(Error::invalid(
                "image to tensor: the frame is empty (0 pixels wide or high)",
            ));
        }
        let (mean, std) = (normalize.mean(), normalize.std());
        let config = ImageConfig {
            side: side as u32,
            frame_w: width,
            frame_h: height,
            offset: (end - 3 * plane) as u32,
            scale: frame_scale(width, height, side),
            _pad0: 0,
            _pad1: 0,
            _pad2: 0,
            mean: [mean[0], mean[1], mean[2], 0.0],
            inv_std: [1.0 / std[0], 1.0 / std[1], 1.0 / std[2], 0.0],
        };
        self.record_dispatch(
            encoder,
            Kernel::ImageToTensor,
            &config,
            binds![frame = wgpu::BindingResource::TextureView(frame), dst = whole(out),],
            (plane as u64).div_ceil(WG_SIZE),
        )
    }
}
