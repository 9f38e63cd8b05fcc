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

/// Frame pixels per input pixel when a `width` x `height` frame is fitted into a square input of
/// `side` pixels with its aspect kept: multiply detections in input pixels by it to get frame
/// pixels.
pub fn frame_scale(width: u32, height: u32, side: usize) -> f32 {
    width.max(height) as f32 / side.max(1) as f32
}

impl GpuContext {
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
