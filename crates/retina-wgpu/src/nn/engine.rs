//! The layer operations, written once for both backends.

use crate::error::{Error, Result};
use crate::nn::{Conv2d, GroupNorm, MaxPool2d, Sgd, Shape};

/// Gradients of a convolution.
#[derive(Debug)]
pub struct ConvGrads<T> {
    /// d(loss)/d(input), when asked for (the first layer does not need it).
    pub input: Option<T>,
    /// d(loss)/d(weights), `[out, in, kh, kw]`.
    pub weight: T,
    /// d(loss)/d(bias), `[1, out, 1, 1]`.
    pub bias: T,
}

/// The outputs of [`Engine::group_norm`].
#[derive(Debug)]
pub struct GroupNormOut<T> {
    /// The normalised and scaled output, shaped like the input.
    pub y: T,
    /// The statistics the backward pass needs, [`GroupNorm::stats_shape`] `[N, groups, 1, 2]`:
    /// mean and 1/sqrt(var + eps) per image and group.
    pub stats: T,
}

/// Gradients of a GroupNorm.
#[derive(Debug)]
pub struct GroupNormGrads<T> {
    /// d(loss)/d(input), shaped like the input.
    pub input: T,
    /// d(loss)/d(gamma), `[1, channels, 1, 1]`.
    pub gamma: T,
    /// d(loss)/d(beta), `[1, channels, 1, 1]`.
    pub beta: T,
}

/// How a tensor pool has served requests: after the first training step, `allocations` stops
/// growing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Tensors created because the pool had none of that size.
    pub allocations: usize,
    /// Tensors served from the pool.
    pub reuses: usize,
    /// Scratch buffers (the CPU's im2col matrices) created: one per size and per worker thread
    /// that needed one at the same time, so it settles once every thread has had its own.
    pub scratch_allocations: usize,
}

/// A backend for the network's layers. Every operation checks shapes and returns an error that
/// names the layer and the shapes; on the GPU, operations are recorded and run at [`Engine::sync`]
/// (or when a result is read).
pub trait Engine {
    /// The backend's NCHW tensor.
    type Tensor;

    /// The tensor's shape.
    fn shape(tensor: &Self::Tensor) -> Shape;

    /// A tensor holding `data` (`shape.len()` values).
    fn tensor(&mut self, shape: Shape, data: &[f32]) -> Result<Self::Tensor>;

    /// A tensor of `shape` whose `shape.len()` values `fill` writes: on the CPU straight into
    /// the engine's own buffer (no zero fill, no copy; for a network's input image, 3.7 MB a
    /// frame at 640 x 480). `fill` must write every value: the CPU engine's buffer comes from
    /// its pool and may hold an earlier tensor's values. The default fills a zeroed host vector
    /// and uploads it with [`Engine::tensor`].
    fn tensor_with(&mut self, shape: Shape, fill: impl FnOnce(&mut [f32])) -> Result<Self::Tensor>
    where
        Self: Sized,
    {
        let len = shape
            .checked_len()
            .map_err(|_| Error::invalid(format!("tensor: {shape} holds more than usize::MAX elements")))?;
        let mut data = crate::nn::host_vec(len, 0.0, &format!("tensor: the host copy of {shape}"))?;
        fill(&mut data);
        self.tensor(shape, &data)
    }

    /// A zero-filled tensor.
    fn zeros(&mut self, shape: Shape) -> Result<Self::Tensor>;

    /// The tensor's values (runs pending work first).
    fn read(&mut self, tensor: &Self::Tensor) -> Result<Vec<f32>>;

    /// Zero-filled tensors of `shapes`, packed into as few allocations as the engine can: on the
    /// GPU, views at aligned offsets of one buffer (a few when they exceed the device's binding
    /// limit), so that a pass over all of them (the optimiser's step, the gradient norm) is one
    /// dispatch instead of one per tensor; [`Engine::sgd_step`] finds such runs by itself. The
    /// default allocates each tensor on its own. WebGPU tracks a buffer's use as a whole: one
    /// operation must not read a tensor of a pack while it writes another of the same pack
    /// (`accumulate(&mut pack[0], &pack[1])`, parameters and their gradients in one pack), so
    /// pack together only tensors that are used alike, as the trainer packs parameters,
    /// gradients and momentum separately.
    fn zeros_packed(&mut self, shapes: &[Shape]) -> Result<Vec<Self::Tensor>> {
        shapes.iter().map(|&s| self.zeros(s)).collect()
    }

    /// Overwrites `tensor`'s values with `data` (`shape.len()` values), in place: a packed
    /// tensor stays in its pack. The default replaces the tensor with a new one.
    fn write(&mut self, tensor: &mut Self::Tensor, data: &[f32]) -> Result<()> {
        *tensor = self.tensor(Self::shape(tensor), data)?;
        Ok(())
    }

    /// Runs `f`, a whole pass of work on this engine (a network's forward pass and the reads
    /// of its outputs), the way the engine runs such passes best: the CPU engine keeps its
    /// worker threads polling for work until `f` returns instead of letting them sleep between
    /// layers (see [`crate::nn::CpuEngine`]); the default just calls `f`.
    fn pass<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> R
    where
        Self: Sized,
    {
        f(self)
    }

    /// Max pooling ([`MaxPool2d`]), forward only (inference: ResNet's stem).
    fn max_pool2d(&mut self, pool: &MaxPool2d, x: &Self::Tensor) -> Result<Self::Tensor>;

    /// `conv(x) + bias`.
    fn conv2d(
        &mut self,
        conv: &Conv2d,
        x: &Self::Tensor,
        weight: &Self::Tensor,
        bias: Option<&Self::Tensor>,
    ) -> Result<Self::Tensor>;

    /// Gradients of a convolution with respect to its weights, bias and (if `input_grad`) input.
    fn conv2d_backward(
        &mut self,
        conv: &Conv2d,
        x: &Self::Tensor,
        weight: &Self::Tensor,
        grad_out: &Self::Tensor,
        input_grad: bool,
    ) -> Result<ConvGrads<Self::Tensor>>;

    /// [`Engine::conv2d_backward`] adding the weight gradient into `weight_grad` and the bias
    /// gradient into `bias_grad` (`None`: a layer without bias, whose bias gradient is not
    /// computed) instead of returning them: a layer used several times (RetinaNet's heads, once
    /// per pyramid level) sums its gradients where they are kept. Returns the input gradient
    /// when `input_grad`. The default computes the gradients and accumulates them; an engine
    /// may add them in place as it writes them (no tensor and no pass of its own).
    #[allow(clippy::too_many_arguments)]
    fn conv2d_backward_acc(
        &mut self,
        conv: &Conv2d,
        x: &Self::Tensor,
        weight: &Self::Tensor,
        grad_out: &Self::Tensor,
        input_grad: bool,
        weight_grad: &mut Self::Tensor,
        bias_grad: Option<&mut Self::Tensor>,
    ) -> Result<Option<Self::Tensor>> {
        let g = self.conv2d_backward(conv, x, weight, grad_out, input_grad)?;
        self.accumulate(weight_grad, &g.weight)?;
        if let Some(db) = bias_grad {
            self.accumulate(db, &g.bias)?;
        }
        Ok(g.input)
    }

    /// GroupNorm (PyTorch's `nn.GroupNorm`: biased variance, eps inside the square root, a
    /// per-channel affine map): `y = gamma[c] * (x - mean) / sqrt(var + eps) + beta[c]`, with the
    /// mean and variance of each image's group of channels. `gamma` and `beta` are
    /// [`GroupNorm::param_shape`]. An empty batch gives empty tensors.
    fn group_norm(
        &mut self,
        gn: &GroupNorm,
        x: &Self::Tensor,
        gamma: &Self::Tensor,
        beta: &Self::Tensor,
    ) -> Result<GroupNormOut<Self::Tensor>>;

    /// Gradients of [`Engine::group_norm`] with respect to its input, `gamma` and `beta`, from the
    /// input, `gamma`, the statistics the forward pass saved and the output gradient.
    fn group_norm_backward(
        &mut self,
        gn: &GroupNorm,
        x: &Self::Tensor,
        gamma: &Self::Tensor,
        stats: &Self::Tensor,
        grad_out: &Self::Tensor,
    ) -> Result<GroupNormGrads<Self::Tensor>>;

    /// [`Engine::group_norm`] followed by ReLU: `y` is `max(group_norm(x), 0)`. The default runs
    /// the two; an engine may fuse them (one pass over the activations instead of two).
    fn group_norm_relu(
        &mut self,
        gn: &GroupNorm,
        x: &Self::Tensor,
        gamma: &Self::Tensor,
        beta: &Self::Tensor,
    ) -> Result<GroupNormOut<Self::Tensor>> {
        let out = self.group_norm(gn, x, gamma, beta)?;
        let y = self.relu(&out.y)?;
        Ok(GroupNormOut { y, stats: out.stats })
    }

    /// Gradients of [`Engine::group_norm_relu`], from its input `x`, `gamma`, the statistics and
    /// the output `y` it returned (the ReLU passed the gradient where `y > 0`) and the output
    /// gradient. The default runs [`Engine::relu_backward`] then [`Engine::group_norm_backward`].
    fn group_norm_relu_backward(
        &mut self,
        gn: &GroupNorm,
        x: &Self::Tensor,
        gamma: &Self::Tensor,
        stats: &Self::Tensor,
        y: &Self::Tensor,
        grad_out: &Self::Tensor,
    ) -> Result<GroupNormGrads<Self::Tensor>> {
        let g = self.relu_backward(y, grad_out)?;
        self.group_norm_backward(gn, x, gamma, stats, &g)
    }

    /// [`Engine::group_norm_backward`] (`relu_out: None`) or
    /// [`Engine::group_norm_relu_backward`] (`Some(y)`, the output the fused forward returned)
    /// adding the `gamma` and `beta` gradients into `gamma_grad` and `beta_grad` (see
    /// [`Engine::conv2d_backward_acc`]); returns the input gradient.
    #[allow(clippy::too_many_arguments)]
    fn group_norm_backward_acc(
        &mut self,
        gn: &GroupNorm,
        x: &Self::Tensor,
        gamma: &Self::Tensor,
        stats: &Self::Tensor,
        relu_out: Option<&Self::Tensor>,
        grad_out: &Self::Tensor,
        gamma_grad: &mut Self::Tensor,
        beta_grad: &mut Self::Tensor,
    ) -> Result<Self::Tensor> {
        let g = match relu_out {
            Some(y) => self.group_norm_relu_backward(gn, x, gamma, stats, y, grad_out)?,
            None => self.group_norm_backward(gn, x, gamma, stats, grad_out)?,
        };
        self.accumulate(gamma_grad, &g.gamma)?;
        self.accumulate(beta_grad, &g.beta)?;
        Ok(g.input)
    }

    /// `max(x, 0)`.
    fn relu(&mut self, x: &Self::Tensor) -> Result<Self::Tensor>;

    /// The gradient of ReLU at `x`: `grad_out` where `x > 0`, else 0.
    fn relu_backward(&mut self, x: &Self::Tensor, grad_out: &Self::Tensor) -> Result<Self::Tensor>;

    /// LeakyReLU: `x` where `x > 0`, else `slope * x` (PyTorch's `nn.LeakyReLU`, ONNX's
    /// `LeakyRelu`; a NaN stays NaN). `slope` must be finite.
    fn leaky_relu(&mut self, x: &Self::Tensor, slope: f32) -> Result<Self::Tensor>;

    /// The gradient of [`Engine::leaky_relu`] at `x`: `grad_out` where `x > 0`, else
    /// `slope * grad_out`.
    fn leaky_relu_backward(&mut self, x: &Self::Tensor, grad_out: &Self::Tensor, slope: f32) -> Result<Self::Tensor>;

    /// A depthwise convolution (`groups == channels`: one `kh x kw` filter per channel, as in
    /// MobileNet) plus bias: `conv` has `in_channels == out_channels`, the weights are
    /// [`Conv2d::depthwise_weight_shape`] `[C, 1, kh, kw]`, the bias `[1, C, 1, 1]`.
    fn depthwise_conv2d(
        &mut self,
        conv: &Conv2d,
        x: &Self::Tensor,
        weight: &Self::Tensor,
        bias: Option<&Self::Tensor>,
    ) -> Result<Self::Tensor>;

    /// [`Engine::conv2d`] followed by [`Engine::leaky_relu`]. The default runs the two; an
    /// engine may fuse them (the CPU applies the slope as it adds the bias).
    fn conv2d_leaky(
        &mut self,
        conv: &Conv2d,
        x: &Self::Tensor,
        weight: &Self::Tensor,
        bias: Option<&Self::Tensor>,
        slope: f32,
    ) -> Result<Self::Tensor> {
        let y = self.conv2d(conv, x, weight, bias)?;
        self.leaky_relu(&y, slope)
    }

    /// [`Engine::depthwise_conv2d`] followed by [`Engine::leaky_relu`] (fused where the engine
    /// can, as [`Engine::conv2d_leaky`]).
    fn depthwise_conv2d_leaky(
        &mut self,
        conv: &Conv2d,
        x: &Self::Tensor,
        weight: &Self::Tensor,
        bias: Option<&Self::Tensor>,
        slope: f32,
    ) -> Result<Self::Tensor> {
        let y = self.depthwise_conv2d(conv, x, weight, bias)?;
        self.leaky_relu(&y, slope)
    }

    /// Gradients of [`Engine::depthwise_conv2d`] with respect to its weights, bias and (if
    /// `input_grad`) input.
    fn depthwise_conv2d_backward(
        &mut self,
        conv: &Conv2d,
        x: &Self::Tensor,
        weight: &Self::Tensor,
        grad_out: &Self::Tensor,
        input_grad: bool,
    ) -> Result<ConvGrads<Self::Tensor>>;

    /// The tensors side by side along the channels (`torch.cat(parts, dim=1)`): every part has
    /// the same batch, height and width; at least one part.
    fn concat_channels(&mut self, parts: &[&Self::Tensor]) -> Result<Self::Tensor>;

    /// Channels `start..start + len` of `x` (the gradient of [`Engine::concat_channels`] for
    /// one part).
    fn slice_channels(&mut self, x: &Self::Tensor, start: usize, len: usize) -> Result<Self::Tensor>;

    /// Nearest-neighbour resize to `h x w` (at least the input size; FPN uses x2).
    fn upsample_nearest(&mut self, x: &Self::Tensor, h: usize, w: usize) -> Result<Self::Tensor>;

    /// The gradient of [`Engine::upsample_nearest`] back to an input of `h x w`.
    fn upsample_nearest_backward(&mut self, grad_out: &Self::Tensor, h: usize, w: usize) -> Result<Self::Tensor>;

    /// `a + b`.
    fn add(&mut self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor>;

    /// `acc += x` (summing gradients).
    fn accumulate(&mut self, acc: &mut Self::Tensor, x: &Self::Tensor) -> Result<()>;

    /// Writes a head's output `[B, A*C, H, W]` into `rows` (`[B, 1, R, C]`) as anchor rows
    /// `row_offset + (h*W + w)*A + a` in the crate's anchor order.
    fn permute_head(
        &mut self,
        head: &Self::Tensor,
        anchors: usize,
        rows: &mut Self::Tensor,
        row_offset: usize,
    ) -> Result<()>;

    /// The gradient of [`Engine::permute_head`]: the rows' gradient back in a head's layout.
    fn permute_head_backward(
        &mut self,
        rows: &Self::Tensor,
        anchors: usize,
        row_offset: usize,
        head: Shape,
    ) -> Result<Self::Tensor>;

    /// One SGD step over every parameter, with the global gradient norm clipped when the
    /// optimiser says so (computed on the device, no readback, scaled so that no square
    /// overflows: the backends agree for norms up to `f32::MAX`). `lr` must be finite and >= 0
    /// ([`Sgd::check_lr`]). `decay[i]` says whether the
    /// optimiser's weight decay applies to parameter `i` (RetinaNet exempts biases and
    /// GroupNorm's scale and shift); empty means every parameter.
    fn sgd_step(
        &mut self,
        sgd: &Sgd,
        lr: f32,
        params: &mut [Self::Tensor],
        grads: &[Self::Tensor],
        velocity: &mut [Self::Tensor],
        decay: &[bool],
    ) -> Result<()>;

    /// Runs the recorded work and waits for it (a no-op on the CPU).
    fn sync(&mut self) -> Result<()>;

    /// How the tensor pool has served requests.
    fn pool_stats(&self) -> PoolStats;
}
