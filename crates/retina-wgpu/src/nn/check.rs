//! Shape checks of the layers that both engines share: each backend's layer calls the same
//! check before it computes anything, so the two refuse the same inputs with the same message.

use crate::error::{Error, Result};
use crate::nn::{Conv2d, Shape};

/// Checks that two tensors an operation pairs element by element have the same shape.
pub(crate) fn check_same(op: &'static str, a: Shape, b: Shape) -> Result<()> {
    if a != b {
        return Err(Error::shape(op, format!("shapes {a} and {b} differ")));
    }
    Ok(())
}

/// `s.checked_len()`, its error naming `op`.
fn checked_len(op: &str, s: Shape) -> Result<usize> {
    s.checked_len()
        .map_err(|_| Error::invalid(format!("{op}: a tensor of {s} holds more than usize::MAX elements")))
}

/// Checks a head permute's shapes (`op`: the forward or the backward pass); returns the values
/// per anchor (C).
pub(crate) fn check_permute(
    op: &'static str,
    head: Shape,
    anchors: usize,
    rows: Shape,
    row_offset: usize,
) -> Result<usize> {
    if anchors == 0 || !head.c.is_multiple_of(anchors) {
        return Err(Error::shape(
            op,
            format!("{head} does not hold {anchors} anchors per cell"),
        ));
    }
    let values = head.c / anchors;
    checked_len(op, head)?;
    checked_len(op, rows)?;
    let end = head
        .h
        .checked_mul(head.w)
        .and_then(|p| p.checked_mul(anchors))
        .and_then(|cells| cells.checked_add(row_offset));
    if rows.n != head.n || rows.c != 1 || rows.w != values || end.is_none_or(|end| end > rows.h) {
        return Err(Error::shape(
            op,
            format!("a head of {head} with {anchors} anchors does not fit rows {rows} at row {row_offset}"),
        ));
    }
    Ok(values)
}

/// Checks a nearest upsampling of `s` to `h x w`: at least the input size, the input not empty
/// in height or width, and an output whose size can be counted.
pub(crate) fn check_upsample(s: Shape, h: usize, w: usize) -> Result<()> {
    if h < s.h || w < s.w || s.h == 0 || s.w == 0 {
        return Err(Error::shape(
            "upsample",
            format!("{s} cannot be resized up to {h} x {w}"),
        ));
    }
    checked_len("upsample", Shape::new(s.n, s.c, h, w))?;
    Ok(())
}

/// Checks the gradient of an upsampling from `h x w` to `s`.
pub(crate) fn check_upsample_backward(s: Shape, h: usize, w: usize) -> Result<()> {
    if h > s.h || w > s.w || h == 0 || w == 0 {
        return Err(Error::shape(
            "upsample backward",
            format!("{s} did not come from {h} x {w}"),
        ));
    }
    checked_len("upsample backward", s)?;
    Ok(())
}

/// Checks that SGD has one gradient and one velocity per parameter.
pub(crate) fn check_sgd(params: usize, grads: usize, velocity: usize, decay: usize) -> Result<()> {
    if params != grads || params != velocity || (decay != 0 && decay != params) {
        return Err(Error::shape(
            "sgd",
            format!("{params} parameters, {grads} gradients, {velocity} velocities and {decay} decay flags"),
        ));
    }
    Ok(())
}

/// Checks a depthwise convolution's layer, input, weights and bias; returns the output shape.
pub(crate) fn check_depthwise(conv: &Conv2d, x: Shape, weight: Shape, bias: Option<Shape>) -> Result<Shape> {
    if conv.in_channels != conv.out_channels {
        return Err(Error::shape(
            "depthwise conv2d",
            format!("{conv} is not depthwise: a depthwise convolution keeps the channel count"),
        ));
    }
    let out = conv.output_shape(x)?;
    check_same("depthwise conv2d weights", weight, conv.depthwise_weight_shape())?;
    if let Some(b) = bias {
        check_same("depthwise conv2d bias", b, conv.bias_shape())?;
    }
    Ok(out)
}

/// Checks the parts of a channel concatenation; returns the output shape.
pub(crate) fn check_concat(parts: &[Shape]) -> Result<Shape> {
    let Some(first) = parts.first() else {
        return Err(Error::shape("concat channels", "no tensor to concatenate".to_string()));
    };
    let mut channels = 0usize;
    for p in parts {
        if (p.n, p.h, p.w) != (first.n, first.h, first.w) {
            return Err(Error::shape(
                "concat channels",
                format!("{p} and {first} differ in batch, height or width"),
            ));
        }
        channels = channels
            .checked_add(p.c)
            .ok_or_else(|| Error::invalid("concat channels: the channel count overflows usize".to_string()))?;
    }
    let out = Shape::new(first.n, channels, first.h, first.w);
    checked_len("concat channels", out)?;
    Ok(out)
}

/// Checks a channel slice `start..start + len` of `x`; returns the output shape.
pub(crate) fn check_slice(x: Shape, start: usize, len: usize) -> Result<Shape> {
    if start.checked_add(len).is_none_or(|end| end > x.c) {
        return Err(Error::shape(
            "slice channels",
            format!("channels {start}..{start}+{len} are not inside {x}"),
        ));
    }
    Ok(Shape::new(x.n, len, x.h, x.w))
}

/// Checks a LeakyReLU slope: any finite value.
pub(crate) fn check_slope(op: &'static str, slope: f32) -> Result<()> {
    if !slope.is_finite() {
        return Err(Error::invalid(format!(
            "{op}: the negative slope must be finite, got {slope}"
        )));
    }
    Ok(())
}
