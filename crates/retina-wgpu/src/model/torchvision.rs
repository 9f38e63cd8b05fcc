//! torchvision's RetinaNet (`retinanet_resnet50_fpn`, v1, and `retinanet_resnet50_fpn_v2`) as
//! torchvision computes it in `eval()` mode, from its own state dict.
//!
//! A model directory holds `config.json` ([`TorchvisionConfig`], `"architecture":
//! "torchvision_retinanet"`) and `model.safetensors`: the state dict under torchvision's key
//! names (`backbone.body.*`, `backbone.fpn.*`, `head.classification_head.*`,
//! `head.regression_head.*`), as `safetensors.torch.save_file(model.state_dict(), ...)` writes
//! it (`scripts/import_torchvision.py` makes one from a `.pth` file, old v1 key names included).
//! The layers come from the weights' shapes (a model with another number of classes loads);
//! every tensor is checked by name and shape before the data is read, and a missing, extra or
//! mis-shaped tensor is an error naming it.
//!
//! The network (over [`Engine`], both backends): ResNet-50 (7x7/2 stem, 3x3/2 max-pool,
//! bottlenecks with the stride on the 3x3 convolution) with every BatchNorm folded into the
//! convolution before it (inference form, the config's epsilon), an FPN on C3-C5 (nearest
//! top-down resizing; P6 from P5 in v1, from C5 in v2; P7 from ReLU(P6)), and the two heads of
//! four 3x3 convolutions with ReLU (v2: no bias, GroupNorm(32) before the ReLU), outputs in
//! torchvision's (level, row, column, anchor, class) order.
//!
//! [`TorchvisionRetinaNet::detect`] (one image) and [`TorchvisionRetinaNet::detect_batch`]
//! (several, padded to one canvas as torchvision batches them) add torchvision's
//! `GeneralizedRCNNTransform` and
//! `postprocess_detections` on the host: the image scaled by `min(min_size / short side,
//! max_size / long side)` with PyTorch's bilinear interpolation (`align_corners=False`, output
//! size `floor(side * scale)`), normalised by the ImageNet mean and deviation and zero-padded to a
//! multiple of 32; anchors of sizes `int(s * 2^(k/3))` and ratios 0.5, 1, 2, rounded half to
//! even, shifted by `arange * stride` with `stride = padded size // feature size`; per level the
//! sigmoid scores above the threshold, the best `topk_candidates`, boxes decoded with weights
//! (1, 1, 1, 1) and `dw, dh` clamped at `log(1000 / 16)`, clipped to the resized image; then
//! class-aware NMS as `torchvision.ops.batched_nms` runs it on the CPU (the coordinate-offset
//! trick up to 1,000 boxes, one NMS per class above), the best `detections_per_image`, and the
//! boxes scaled back to the original image.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use safetensors::SafeTensors;
use safetensors::tensor::Dtype;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::checkpoint::{MAX_CONFIG_BYTES, MAX_HEADER_BYTES, ModelDir, read_limited, read_safetensors_header};
use crate::model::{MAX_INPUT_SIZE, ParamSpec};
use crate::nn::{Conv2d, Engine, GroupNorm, Init, MaxPool2d, Shape};
use crate::ops::nms::Nms;
use crate::ops::postprocess::Detection;

/// The value of `architecture` in a torchvision RetinaNet's `config.json`.
pub const ARCHITECTURE: &str = "torchvision_retinanet";
/// Anchors per feature-map cell (three sizes x three ratios).
pub const ANCHORS_PER_CELL: usize = 9;
/// The largest side of an image [`TorchvisionRetinaNet::transform`] takes before resizing.
pub const MAX_IMAGE_SIDE: usize = 1 << 16;
/// Bottleneck blocks per ResNet-50 stage.
pub const RESNET50_BLOCKS: [usize; 4] = [3, 4, 6, 3];
/// The base anchor size of P3; P4-P7 double it.
const BASE_SIZE: usize = 32;
/// The most classes a model may have (its classification head's outputs, 9 per class, must stay
/// within the crate's channel limit).
pub const MAX_CLASSES: usize = MAX_HEAD_OUTPUTS / ANCHORS_PER_CELL;
/// The most outputs of a convolution read from a state dict.
const MAX_HEAD_OUTPUTS: usize = 4 * crate::model::MAX_CHANNELS;
/// Pyramid levels (P3-P7).
pub const LEVELS: usize = 5;
/// GroupNorm groups of the v2 heads.
const HEAD_GROUPS: usize = 32;

/// Which of torchvision's two RetinaNets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Variant {
    /// `retinanet_resnet50_fpn`: P6 from P5, heads with bias and no normalisation.
    #[serde(rename = "v1")]
    V1,
    /// `retinanet_resnet50_fpn_v2`: P6 from C5, heads with GroupNorm(32) and no bias.
    #[serde(rename = "v2")]
    V2,
}

/// A torchvision RetinaNet's `config.json`: the architecture and the pipeline's numbers, with
/// torchvision's defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TorchvisionConfig {
    /// `"torchvision_retinanet"`.
    pub architecture: String,
    /// `"v1"` or `"v2"`.
    pub variant: Variant,
    /// Classes of the classification head, background index included as torchvision counts
    /// them (91 for COCO: labels are COCO category ids).
    pub num_classes: usize,
    /// The name of each label (`categories[label]`), as torchvision's weights' `meta`; may be
    /// empty.
    #[serde(default)]
    pub categories: Vec<String>,
    /// The short side is scaled towards this (800).
    #[serde(default = "default_min_size")]
    pub min_size: usize,
    /// ... unless the long side would exceed this (1333).
    #[serde(default = "default_max_size")]
    pub max_size: usize,
    /// Subtracted from each RGB channel in [0, 1] (ImageNet's mean).
    #[serde(default = "default_mean")]
    pub image_mean: [f32; 3],
    /// Each channel is divided by this (ImageNet's deviation).
    #[serde(default = "default_std")]
    pub image_std: [f32; 3],
    /// The batch is zero-padded to a multiple of this (32).
    #[serde(default = "default_divisible")]
    pub size_divisible: usize,
    /// Scores must exceed this (0.05).
    #[serde(default = "default_score")]
    pub score_threshold: f32,
    /// IoU of class-aware NMS (0.5).
    #[serde(default = "default_nms")]
    pub nms_threshold: f32,
    /// Detections kept per image (300).
    #[serde(default = "default_detections")]
    pub detections_per_image: usize,
    /// Candidates kept per level before NMS (1000).
    #[serde(default = "default_topk")]
    pub topk_candidates: usize,
    /// The BatchNorm layers' epsilon (1e-5, PyTorch's default and torchvision's
    /// `FrozenBatchNorm2d`'s).
    #[serde(default = "default_eps")]
    pub batch_norm_eps: f32,
    /// Where the weights came from (free-form).
    #[serde(default)]
    pub source: serde_json::Value,
}

fn default_min_size() -> usize {
    800
}
fn default_max_size() -> usize {
    1333
}
fn default_mean() -> [f32; 3] {
    [0.485, 0.456, 0.406]
}
fn default_std() -> [f32; 3] {
    [0.229, 0.224, 0.225]
}
fn default_divisible() -> usize {
    32
}
fn default_score() -> f32 {
    0.05
}
fn default_nms() -> f32 {
    0.5
}
fn default_detections() -> usize {
    300
}
fn default_topk() -> usize {
    1000
}
fn default_eps() -> f32 {
    1e-5
}

impl TorchvisionConfig {
    /// torchvision's defaults for `variant` with `num_classes` classes.
    pub fn new(variant: Variant, num_classes: usize) -> Self {
        Self {
            architecture: ARCHITECTURE.into(),
            variant,
            num_classes,
            categories: Vec::new(),
            min_size: default_min_size(),
            max_size: default_max_size(),
            image_mean: default_mean(),
            image_std: default_std(),
            size_divisible: default_divisible(),
            score_threshold: default_score(),
            nms_threshold: default_nms(),
            detections_per_image: default_detections(),
            topk_candidates: default_topk(),
            batch_norm_eps: default_eps(),
            source: serde_json::Value::Null,
        }
    }

    /// Checks the configuration's numbers.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::invalid(format!("torchvision RetinaNet config: {msg}")));
        if self.architecture != ARCHITECTURE {
            return bad(format!("architecture is `{}`, not `{ARCHITECTURE}`", self.architecture));
        }
        if self.num_classes == 0 || self.num_classes > MAX_CLASSES {
            return bad(format!("num_classes {} is not in 1..={MAX_CLASSES}", self.num_classes));
        }
        if !self.categories.is_empty() && self.categories.len() != self.num_classes {
            return bad(format!(
                "{} category names for {} classes",
                self.categories.len(),
                self.num_classes
            ));
        }
        if self.min_size == 0 || self.max_size == 0 || self.min_size > MAX_INPUT_SIZE || self.max_size > MAX_INPUT_SIZE
        {
            return bad(format!(
                "min_size {} and max_size {} must be in 1..={MAX_INPUT_SIZE}",
                self.min_size, self.max_size
            ));
        }
        if self.size_divisible == 0 || self.size_divisible > 1024 {
            return bad(format!("size_divisible {} is not in 1..=1024", self.size_divisible));
        }
        if self.image_mean.iter().any(|v| !v.is_finite()) || self.image_std.iter().any(|v| !v.is_finite() || *v <= 0.0)
        {
            return bad("image_mean must be finite and image_std positive".into());
        }
        if !self.batch_norm_eps.is_finite() || self.batch_norm_eps < 0.0 {
            return bad(format!("batch_norm_eps {} must be >= 0", self.batch_norm_eps));
        }
        self.default_params().check()
    }

    /// The config's thresholds.
    pub fn default_params(&self) -> Params {
        Params {
            score_threshold: self.score_threshold,
            nms_threshold: self.nms_threshold,
            detections_per_image: self.detections_per_image,
            topk_candidates: self.topk_candidates,
        }
    }

    /// The name of `label`, or its number when the config has no names.
    pub fn category_name(&self, label: u32) -> String {
        self.categories
            .get(label as usize)
            .cloned()
            .unwrap_or_else(|| format!("class {label}"))
    }
}

/// The post-processing's thresholds (the config's by default).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Params {
    /// Scores must exceed this.
    pub score_threshold: f32,
    /// IoU of class-aware NMS.
    pub nms_threshold: f32,
    /// Detections kept per image.
    pub detections_per_image: usize,
    /// Candidates kept per level before NMS.
    pub topk_candidates: usize,
}

impl Params {
    /// Checks the thresholds' ranges.
    pub fn check(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::invalid(format!("torchvision RetinaNet: {msg}")));
        if !(0.0..1.0).contains(&self.score_threshold) {
            return bad(format!("score threshold {} is not in [0, 1)", self.score_threshold));
        }
        if !(0.0..=1.0).contains(&self.nms_threshold) {
            return bad(format!("NMS threshold {} is not in [0, 1]", self.nms_threshold));
        }
        let limit = 1usize << 20;
        if !(1..=limit).contains(&self.detections_per_image) || !(1..=limit).contains(&self.topk_candidates) {
            return bad(format!(
                "detections_per_image {} and topk_candidates {} must be in 1..={limit}",
                self.detections_per_image, self.topk_candidates
            ));
        }
        Ok(())
    }
}

/// How one of the engine's parameters is made from the state dict.
#[derive(Clone, Debug)]
enum Recipe {
    /// The tensor as it is.
    Copy(String),
    /// A convolution's weights times its BatchNorm's `gamma / sqrt(var + eps)` per output.
    FoldWeight { conv: String, bn: String },
    /// The bias a BatchNorm leaves: `beta - mean * gamma / sqrt(var + eps)`.
    FoldBias { bn: String },
}

/// A convolution with the indices of its weight and bias in [`TorchvisionRetinaNet::params`],
/// and, in v2's heads, the GroupNorm that follows it.
#[derive(Clone, Copy, Debug)]
struct Layer {
    conv: Conv2d,
    weight: usize,
    bias: Option<usize>,
    /// `(gamma, beta)` of a GroupNorm(32) before the ReLU.
    norm: Option<(usize, usize)>,
}

/// A bottleneck block: 1x1, 3x3 (the stride), 1x1, and the 1x1 projection of the first block.
#[derive(Clone, Copy, Debug)]
struct Bottleneck {
    conv1: Layer,
    conv2: Layer,
    conv3: Layer,
    downsample: Option<Layer>,
}

/// A tensor of the state dict: its name and shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateTensor {
    /// torchvision's key.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
}

/// The network's outputs for a batch: anchor rows `[N, 1, R, C]` in torchvision's order
/// (level, row, column, anchor), and each level's feature size.
#[derive(Debug)]
pub struct TvOutputs<T> {
    /// `num_classes` logits per anchor.
    pub logits: T,
    /// Four box deltas per anchor.
    pub boxes: T,
    /// `(height, width)` of P3-P7.
    pub levels: Vec<(usize, usize)>,
}

/// An image as the network takes it: [`TorchvisionRetinaNet::transform`]'s output.
#[derive(Clone, Debug)]
pub struct Transformed {
    /// `3 x padded.0 x padded.1` values, CHW.
    pub data: Vec<f32>,
    /// `(height, width)` after padding (multiples of `size_divisible`).
    pub padded: (usize, usize),
    /// `(height, width)` after resizing, before padding.
    pub resized: (usize, usize),
    /// `(height, width)` of the original image.
    pub original: (usize, usize),
}

/// torchvision's RetinaNet: configuration, layers, the state dict's tensors and the engine's
/// parameters (BatchNorm folded).
#[derive(Clone, Debug)]
pub struct TorchvisionRetinaNet {
    config: TorchvisionConfig,
    state: Vec<StateTensor>,
    params: Vec<ParamSpec>,
    recipes: Vec<Recipe>,
    stem: Layer,
    stages: Vec<Vec<Bottleneck>>,
    inner: [Layer; 3],
    outer: [Layer; 3],
    p6: Layer,
    p7: Layer,
    cls_convs: Vec<Layer>,
    cls_logits: Layer,
    box_convs: Vec<Layer>,
    bbox_reg: Layer,
}

/// Builds the layer list from the weights' shapes, checking each against the layer before it.
struct Builder<'a> {
    shapes: &'a dyn Fn(&str) -> Result<Vec<usize>>,
    state: Vec<StateTensor>,
    params: Vec<ParamSpec>,
    recipes: Vec<Recipe>,
}

impl Builder<'_> {
    fn shape(&mut self, name: &str, expect: Option<&[usize]>) -> Result<Vec<usize>> {
        let s = (self.shapes)(name)?;
        if let Some(e) = expect.filter(|e| s != *e) {
            return Err(Error::invalid(format!(
                "tensor `{name}` is {s:?}, {e:?} is expected here"
            )));
        }
        self.state.push(StateTensor {
            name: name.to_string(),
            shape: s.clone(),
        });
        Ok(s)
    }

    fn param(&mut self, name: String, shape: Shape, recipe: Recipe) -> usize {
        let fan_in = shape.c * shape.h * shape.w;
        self.params.push(ParamSpec {
            name,
            shape,
            init: Init::Kaiming { fan_in },
            decay: false,
        });
        self.recipes.push(recipe);
        self.params.len() - 1
    }

    /// The convolution `{name}.weight` taking `in_channels` with a square kernel of `kernel`.
    fn conv_weight(&mut self, name: &str, in_channels: usize, kernel: usize, stride: usize) -> Result<Conv2d> {
        let key = format!("{name}.weight");
        let w = self.shape(&key, None)?;
        let ok = matches!(w.as_slice(), [o, i, kh, kw] if *o > 0 && *o <= MAX_HEAD_OUTPUTS
            && *i == in_channels && *kh == kernel && *kw == kernel);
        if !ok {
            return Err(Error::invalid(format!(
                "tensor `{key}` is {w:?}: [out, {in_channels}, {kernel}, {kernel}] with 1 to {MAX_HEAD_OUTPUTS} outputs is expected (the layer before gives {in_channels} channels)"
            )));
        }
        Ok(Conv2d {
            in_channels,
            out_channels: w[0],
            kernel: (kernel, kernel),
            stride,
            padding: kernel / 2,
        })
    }

    /// A bias-free convolution followed by the BatchNorm `bn`, folded into one layer.
    fn conv_bn(&mut self, name: &str, bn: &str, in_channels: usize, kernel: usize, stride: usize) -> Result<Layer> {
        let conv = self.conv_weight(name, in_channels, kernel, stride)?;
        let c = conv.out_channels;
        for part in ["weight", "bias", "running_mean", "running_var"] {
            self.shape(&format!("{bn}.{part}"), Some(&[c]))?;
        }
        let weight = self.param(
            format!("{name}.weight"),
            conv.weight_shape(),
            Recipe::FoldWeight {
                conv: format!("{name}.weight"),
                bn: bn.to_string(),
            },
        );
        let bias = self.param(
            format!("{name}.bias"),
            conv.bias_shape(),
            Recipe::FoldBias { bn: bn.to_string() },
        );
        Ok(Layer {
            conv,
            weight,
            bias: Some(bias),
            norm: None,
        })
    }

    /// A convolution `{name}.weight` + `{name}.bias`.
    fn conv_bias(&mut self, name: &str, in_channels: usize, kernel: usize, stride: usize) -> Result<Layer> {
        let conv = self.conv_weight(name, in_channels, kernel, stride)?;
        self.shape(&format!("{name}.bias"), Some(&[conv.out_channels]))?;
        let weight = self.param(
            format!("{name}.weight"),
            conv.weight_shape(),
            Recipe::Copy(format!("{name}.weight")),
        );
        let bias = self.param(
            format!("{name}.bias"),
            conv.bias_shape(),
            Recipe::Copy(format!("{name}.bias")),
        );
        Ok(Layer {
            conv,
            weight,
            bias: Some(bias),
            norm: None,
        })
    }

    /// A bias-free 3x3 convolution `{name}.0` and the GroupNorm `{name}.1` (v2's heads).
    fn conv_gn(&mut self, name: &str, in_channels: usize) -> Result<Layer> {
        let conv = self.conv_weight(&format!("{name}.0"), in_channels, 3, 1)?;
        let c = conv.out_channels;
        if c % HEAD_GROUPS != 0 {
            return Err(Error::invalid(format!(
                "`{name}.0.weight` has {c} outputs, not a multiple of GroupNorm's {HEAD_GROUPS} groups"
            )));
        }
        let weight = self.param(
            format!("{name}.0.weight"),
            conv.weight_shape(),
            Recipe::Copy(format!("{name}.0.weight")),
        );
        let mut norm = [0; 2];
        for (k, part) in ["weight", "bias"].iter().enumerate() {
            let key = format!("{name}.1.{part}");
            self.shape(&key, Some(&[c]))?;
            norm[k] = self.param(key.clone(), conv.bias_shape(), Recipe::Copy(key));
        }
        Ok(Layer {
            conv,
            weight,
            bias: None,
            norm: Some((norm[0], norm[1])),
        })
    }
}

impl TorchvisionRetinaNet {
    /// The network of `config` with the channel counts of the state dict whose shapes `shapes`
    /// gives by key (an error for a missing tensor).
    pub fn new(config: TorchvisionConfig, shapes: &dyn Fn(&str) -> Result<Vec<usize>>) -> Result<Self> {
        config.validate()?;
        let mut b = Builder {
            shapes,
            state: Vec::new(),
            params: Vec::new(),
            recipes: Vec::new(),
        };
        let body = "backbone.body";
        let stem = b.conv_bn(&format!("{body}.conv1"), &format!("{body}.bn1"), 3, 7, 2)?;
        let mut channels = stem.conv.out_channels;
        let mut stages = Vec::new();
        let mut returned = Vec::new();
        for (s, &blocks) in RESNET50_BLOCKS.iter().enumerate() {
            let mut stage = Vec::new();
            for k in 0..blocks {
                let p = format!("{body}.layer{}.{k}", s + 1);
                let stride = if s > 0 && k == 0 { 2 } else { 1 };
                let conv1 = b.conv_bn(&format!("{p}.conv1"), &format!("{p}.bn1"), channels, 1, 1)?;
                let conv2 = b.conv_bn(
                    &format!("{p}.conv2"),
                    &format!("{p}.bn2"),
                    conv1.conv.out_channels,
                    3,
                    stride,
                )?;
                let conv3 = b.conv_bn(
                    &format!("{p}.conv3"),
                    &format!("{p}.bn3"),
                    conv2.conv.out_channels,
                    1,
                    1,
                )?;
                let out = conv3.conv.out_channels;
                let downsample = if k == 0 {
                    Some(b.conv_bn(
                        &format!("{p}.downsample.0"),
                        &format!("{p}.downsample.1"),
                        channels,
                        1,
                        stride,
                    )?)
                } else {
                    None
                };
                if let Some(d) = &downsample {
                    if d.conv.out_channels != out {
                        return Err(Error::invalid(format!(
                            "`{p}.downsample.0.weight` gives {} channels, the block's `conv3` {out}",
                            d.conv.out_channels
                        )));
                    }
                } else if out != channels {
                    return Err(Error::invalid(format!(
                        "`{p}.conv3.weight` gives {out} channels, the identity path {channels}"
                    )));
                }
                channels = out;
                stage.push(Bottleneck {
                    conv1,
                    conv2,
                    conv3,
                    downsample,
                });
            }
            if s > 0 {
                returned.push(channels);
            }
            stages.push(stage);
        }
        let fpn = "backbone.fpn";
        let mut inner = Vec::new();
        let mut outer = Vec::new();
        for (i, &c) in returned.iter().enumerate() {
            inner.push(b.conv_bias(&format!("{fpn}.inner_blocks.{i}.0"), c, 1, 1)?);
            let width = inner[i].conv.out_channels;
            outer.push(b.conv_bias(&format!("{fpn}.layer_blocks.{i}.0"), width, 3, 1)?);
        }
        let width = inner[0].conv.out_channels;
        for (i, l) in inner.iter().chain(&outer).enumerate() {
            if l.conv.out_channels != width {
                let (kind, k) = if i < 3 {
                    ("inner_blocks", i)
                } else {
                    ("layer_blocks", i - 3)
                };
                return Err(Error::invalid(format!(
                    "`{fpn}.{kind}.{k}.0.weight` gives {} channels, `{fpn}.inner_blocks.0.0.weight` {width}: the FPN's blocks must agree",
                    l.conv.out_channels
                )));
            }
        }
        let p6_in = match config.variant {
            Variant::V1 => width,
            Variant::V2 => returned[2],
        };
        let p6 = b
            .conv_bias(&format!("{fpn}.extra_blocks.p6"), p6_in, 3, 2)
            .map_err(|e| {
                let other = if config.variant == Variant::V1 {
                    "v2 (P6 from C5)"
                } else {
                    "v1 (P6 from P5)"
                };
                Error::invalid(format!("{e}; is the model {other}? check `variant` in config.json"))
            })?;
        let p7 = b.conv_bias(&format!("{fpn}.extra_blocks.p7"), p6.conv.out_channels, 3, 2)?;
        if p6.conv.out_channels != width || p7.conv.out_channels != width {
            return Err(Error::invalid(format!(
                "`{fpn}.extra_blocks.p6.weight` and `p7.weight` give {} and {} channels, the FPN {width}",
                p6.conv.out_channels, p7.conv.out_channels
            )));
        }
        let head = |name: &str, b: &mut Builder| -> Result<Vec<Layer>> {
            (0..4)
                .map(|i| match config.variant {
                    Variant::V1 => b.conv_bias(&format!("head.{name}.conv.{i}.0"), width, 3, 1),
                    Variant::V2 => b.conv_gn(&format!("head.{name}.conv.{i}"), width),
                })
                .collect()
        };
        let cls_convs = head("classification_head", &mut b)?;
        let cls_logits = b.conv_bias("head.classification_head.cls_logits", width, 3, 1)?;
        if cls_logits.conv.out_channels != ANCHORS_PER_CELL * config.num_classes {
            return Err(Error::invalid(format!(
                "`head.classification_head.cls_logits.weight` has {} outputs: {ANCHORS_PER_CELL} anchors x {} classes (the config's num_classes) are expected",
                cls_logits.conv.out_channels, config.num_classes
            )));
        }
        let box_convs = head("regression_head", &mut b)?;
        let bbox_reg = b.conv_bias("head.regression_head.bbox_reg", width, 3, 1)?;
        if bbox_reg.conv.out_channels != ANCHORS_PER_CELL * 4 {
            return Err(Error::invalid(format!(
                "`head.regression_head.bbox_reg.weight` has {} outputs, {} are expected",
                bbox_reg.conv.out_channels,
                ANCHORS_PER_CELL * 4
            )));
        }
        let three = |v: Vec<Layer>| [v[0], v[1], v[2]];
        Ok(Self {
            config,
            state: b.state,
            params: b.params,
            recipes: b.recipes,
            stem,
            stages,
            inner: three(inner),
            outer: three(outer),
            p6,
            p7,
            cls_convs,
            cls_logits,
            box_convs,
            bbox_reg,
        })
    }

    /// Reads a model directory: `config.json`, the shapes in `model.safetensors`' header (before
    /// the data is read), then the weights. Returns the network and its parameter values in
    /// [`TorchvisionRetinaNet::params`] order (BatchNorm folded).
    pub fn load(dir: impl AsRef<Path>) -> Result<(Self, Vec<Vec<f32>>)> {
        let dir = ModelDir(dir.as_ref().to_path_buf());
        let config_path = dir.config();
        let text = read_limited(&config_path, MAX_CONFIG_BYTES, "a model configuration")?;
        let config = parse_config(&text, &config_path.display().to_string())?;
        let weights = dir.weights();
        let source = weights.display().to_string();
        let header = read_safetensors_header(&weights)?;
        let mut shapes = HashMap::new();
        if let Some(tensors) = header.as_object() {
            for (name, t) in tensors.iter().filter(|(name, _)| *name != "__metadata__") {
                let shape = t.get("shape").and_then(|s| s.as_array()).and_then(|dims| {
                    dims.iter()
                        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                        .collect::<Option<Vec<usize>>>()
                });
                let shape = shape.ok_or_else(|| {
                    Error::format(&source, format!("tensor `{name}` has no readable shape in the header"))
                })?;
                shapes.insert(name.clone(), shape);
            }
        }
        let net = Self::with_shapes(config, &shapes, &source)?;
        // The file's size is bounded by what the network needs (plus the BatchNorm counters).
        let counters = 8 * net.batch_norms().len() as u64;
        let max = 4 * net.state_scalars() as u64 + counters + 8 + MAX_HEADER_BYTES;
        let bytes = read_limited(&weights, max, "this network's weights")?;
        let values = net.read_state(&bytes, &source)?;
        Ok((net, values))
    }

    /// A model from the bytes of its `config.json` and `model.safetensors`.
    pub fn from_bytes(config_json: &[u8], weights: &[u8]) -> Result<(Self, Vec<Vec<f32>>)> {
        let config = parse_config(config_json, "config.json")?;
        let source = "model.safetensors";
        let (_, header) = SafeTensors::read_metadata(weights)
            .map_err(|e| Error::format(source, format!("not a readable safetensors file: {e}")))?;
        let shapes: HashMap<String, Vec<usize>> = header
            .tensors()
            .into_iter()
            .map(|(name, info)| (name, info.shape.clone()))
            .collect();
        let net = Self::with_shapes(config, &shapes, source)?;
        let values = net.read_state(weights, source)?;
        Ok((net, values))
    }

    fn with_shapes(config: TorchvisionConfig, shapes: &HashMap<String, Vec<usize>>, source: &str) -> Result<Self> {
        let lookup = |name: &str| -> Result<Vec<usize>> {
            shapes.get(name).cloned().ok_or_else(|| {
                let mut msg = format!("tensor `{name}` is missing");
                if let Some(hint) = architecture_hint(shapes.keys()) {
                    msg.push_str(&format!(": {hint}"));
                }
                Error::invalid(msg)
            })
        };
        let net = Self::new(config, &lookup).map_err(|e| Error::format(source, e.to_string()))?;
        // Every tensor of the file must be one of the network's (BatchNorm's counters aside).
        let known: BTreeSet<&str> = net.state.iter().map(|t| t.name.as_str()).collect();
        let mut extra: Vec<&String> = shapes
            .keys()
            .filter(|k| !known.contains(k.as_str()) && !k.ends_with(".num_batches_tracked"))
            .collect();
        if !extra.is_empty() {
            extra.sort();
            let hint = architecture_hint(shapes.keys())
                .map(|h| format!(" ({h})"))
                .unwrap_or_default();
            return Err(Error::format(
                source,
                format!(
                    "{} tensors this network does not have, e.g. `{}`{hint}",
                    extra.len(),
                    extra[0]
                ),
            ));
        }
        Ok(net)
    }

    /// Reads every state tensor (F32, finite) from safetensors bytes and folds them.
    fn read_state(&self, bytes: &[u8], source: &str) -> Result<Vec<Vec<f32>>> {
        let file = SafeTensors::deserialize(bytes)
            .map_err(|e| Error::format(source, format!("not a readable safetensors file: {e}")))?;
        for t in &self.state {
            let view = file
                .tensor(&t.name)
                .map_err(|_| Error::format(source, format!("tensor `{}` is missing", t.name)))?;
            if view.dtype() != Dtype::F32 || view.shape() != t.shape.as_slice() {
                return Err(Error::format(
                    source,
                    format!(
                        "tensor `{}` is {:?} {:?}, F32 {:?} is expected",
                        t.name,
                        view.dtype(),
                        view.shape(),
                        t.shape
                    ),
                ));
            }
        }
        // BatchNorm's counters: int64 scalars beside a BatchNorm the network has.
        let norms = self.batch_norms();
        for (name, view) in file.tensors() {
            if let Some(bn) = name.strip_suffix(".num_batches_tracked") {
                let scalar = view.shape().iter().product::<usize>() == 1;
                if view.dtype() != Dtype::I64 || !scalar || !norms.contains(bn) {
                    return Err(Error::format(
                        source,
                        format!(
                            "tensor `{name}` is {:?} {:?}: a BatchNorm counter is one int64 beside a BatchNorm of the network",
                            view.dtype(),
                            view.shape()
                        ),
                    ));
                }
            }
        }
        // Each tensor is converted when its recipe needs it: the file and the folded values
        // are the only full copies held.
        self.fold_with(&|name| {
            let view = file
                .tensor(name)
                .map_err(|_| Error::format(source, format!("tensor `{name}` is missing")))?;
            Ok(Cow::Owned(
                view.data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            ))
        })
        .map_err(|e| match e {
            Error::InvalidParameter(msg) => Error::format(source, msg),
            e => e,
        })
    }

    /// The BatchNorm layers' key prefixes (`backbone.body.bn1`, ...).
    fn batch_norms(&self) -> BTreeSet<&str> {
        self.recipes
            .iter()
            .filter_map(|r| match r {
                Recipe::FoldBias { bn } => Some(bn.as_str()),
                _ => None,
            })
            .collect()
    }

    /// The engine's parameters ([`TorchvisionRetinaNet::params`] order) from the state dict's
    /// values by key: BatchNorm folded into the convolution before it. A non-finite value, or a
    /// BatchNorm whose `running_var + eps` is not positive, is an error naming the tensor.
    pub fn fold<'v>(&self, get: &dyn Fn(&str) -> Result<&'v [f32]>) -> Result<Vec<Vec<f32>>> {
        self.fold_with(&|name| get(name).map(Cow::Borrowed))
    }

    /// [`TorchvisionRetinaNet::fold`] from values that may be converted on demand.
    fn fold_with<'v>(&self, get: &dyn Fn(&str) -> Result<Cow<'v, [f32]>>) -> Result<Vec<Vec<f32>>> {
        for t in &self.state {
            let v = get(&t.name)?;
            if v.len() != t.shape.iter().product::<usize>() {
                return Err(Error::invalid(format!(
                    "tensor `{}` has {} values, its shape {:?} needs {}",
                    t.name,
                    v.len(),
                    t.shape,
                    t.shape.iter().product::<usize>()
                )));
            }
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(Error::invalid(format!(
                    "tensor `{}` holds a non-finite value at {i}",
                    t.name
                )));
            }
        }
        let eps = f64::from(self.config.batch_norm_eps);
        // gamma / sqrt(var + eps) per channel, in f64.
        let scale = |bn: &str| -> Result<Vec<f64>> {
            let gamma = get(&format!("{bn}.weight"))?;
            let var = get(&format!("{bn}.running_var"))?;
            gamma
                .iter()
                .zip(var.iter())
                .enumerate()
                .map(|(c, (&g, &v))| {
                    let d = f64::from(v) + eps;
                    if d > 0.0 {
                        Ok(f64::from(g) / d.sqrt())
                    } else {
                        Err(Error::invalid(format!(
                            "`{bn}.running_var` + eps is {d} at channel {c}: a BatchNorm needs it positive"
                        )))
                    }
                })
                .collect()
        };
        self.recipes
            .iter()
            .map(|r| match r {
                Recipe::Copy(name) => Ok(get(name)?.into_owned()),
                Recipe::FoldWeight { conv, bn } => {
                    let s = scale(bn)?;
                    let w = get(conv)?;
                    let per = w.len() / s.len();
                    Ok(w.iter()
                        .enumerate()
                        .map(|(i, &v)| (f64::from(v) * s[i / per]) as f32)
                        .collect())
                }
                Recipe::FoldBias { bn } => {
                    let s = scale(bn)?;
                    let beta = get(&format!("{bn}.bias"))?;
                    let mean = get(&format!("{bn}.running_mean"))?;
                    Ok(beta
                        .iter()
                        .zip(mean.iter())
                        .zip(&s)
                        .map(|((&b, &m), &s)| (f64::from(b) - f64::from(m) * s) as f32)
                        .collect())
                }
            })
            .collect()
    }

    /// The configuration.
    pub fn config(&self) -> &TorchvisionConfig {
        &self.config
    }

    /// The state dict's tensors the network reads (BatchNorm's `num_batches_tracked` counters
    /// aside, which it ignores), in the order it reads them.
    pub fn state(&self) -> &[StateTensor] {
        &self.state
    }

    /// Scalars over the state dict's tensors.
    pub fn state_scalars(&self) -> usize {
        self.state.iter().map(|t| t.shape.iter().product::<usize>()).sum()
    }

    /// The engine's parameters (folded convolutions, biases, GroupNorm's gamma and beta).
    pub fn params(&self) -> &[ParamSpec] {
        &self.params
    }

    /// Uploads parameter values ([`TorchvisionRetinaNet::fold`]'s output) to engine `e`.
    pub fn upload<E: Engine>(&self, e: &mut E, values: &[Vec<f32>]) -> Result<Vec<E::Tensor>> {
        if values.len() != self.params.len() {
            return Err(Error::shape(
                "torchvision retinanet",
                format!(
                    "{} parameter tensors for a network of {}",
                    values.len(),
                    self.params.len()
                ),
            ));
        }
        self.params
            .iter()
            .zip(values)
            .map(|(s, v)| e.tensor(s.shape, v))
            .collect()
    }

    fn layer<E: Engine>(&self, e: &mut E, p: &[E::Tensor], l: &Layer, x: &E::Tensor, relu: bool) -> Result<E::Tensor> {
        let y = match (relu && l.norm.is_none(), l.bias) {
            (true, b) => e.conv2d_leaky(&l.conv, x, &p[l.weight], b.map(|b| &p[b]), 0.0)?,
            (false, b) => e.conv2d(&l.conv, x, &p[l.weight], b.map(|b| &p[b]))?,
        };
        match l.norm {
            Some((gamma, beta)) => {
                let gn = GroupNorm {
                    channels: l.conv.out_channels,
                    groups: HEAD_GROUPS,
                    eps: GroupNorm::EPS,
                };
                let out = if relu {
                    e.group_norm_relu(&gn, &y, &p[gamma], &p[beta])?
                } else {
                    e.group_norm(&gn, &y, &p[gamma], &p[beta])?
                };
                Ok(out.y)
            }
            None => Ok(y),
        }
    }

    fn bottleneck<E: Engine>(&self, e: &mut E, p: &[E::Tensor], b: &Bottleneck, x: &E::Tensor) -> Result<E::Tensor> {
        let t = self.layer(e, p, &b.conv1, x, true)?;
        let t = self.layer(e, p, &b.conv2, &t, true)?;
        let t = self.layer(e, p, &b.conv3, &t, false)?;
        let sum = match &b.downsample {
            Some(d) => {
                let id = self.layer(e, p, d, x, false)?;
                e.add(&t, &id)?
            }
            None => e.add(&t, x)?,
        };
        e.relu(&sum)
    }

    /// The feature sizes `(height, width)` of P3-P7 for a padded input of `height x width`.
    pub fn level_sizes(&self, height: usize, width: usize) -> Result<Vec<(usize, usize)>> {
        let mut s = Shape::new(1, 3, height, width);
        s = self.stem.conv.output_shape(s)?;
        s = STEM_POOL.output_shape(s)?;
        let mut levels = Vec::with_capacity(LEVELS);
        for (k, stage) in self.stages.iter().enumerate() {
            for block in stage {
                s = block.conv2.conv.output_shape(block.conv1.conv.output_shape(s)?)?;
                s = block.conv3.conv.output_shape(s)?;
            }
            if k > 0 {
                levels.push((s.h, s.w));
            }
        }
        // P6 takes P5 (v1) or C5 (v2): the same size either way.
        let p6_in = Shape::new(1, self.p6.conv.in_channels, s.h, s.w);
        let p6 = self.p6.conv.output_shape(p6_in)?;
        let p7 = self.p7.conv.output_shape(p6)?;
        levels.push((p6.h, p6.w));
        levels.push((p7.h, p7.w));
        Ok(levels)
    }

    /// The network on a batch of transformed images `[N, 3, H, W]`; `params` in
    /// [`TorchvisionRetinaNet::params`] order.
    pub fn forward<E: Engine>(
        &self,
        e: &mut E,
        params: &[E::Tensor],
        images: &E::Tensor,
    ) -> Result<TvOutputs<E::Tensor>> {
        if params.len() != self.params.len() {
            return Err(Error::shape(
                "torchvision retinanet",
                format!(
                    "{} parameter tensors for a network of {}",
                    params.len(),
                    self.params.len()
                ),
            ));
        }
        for (spec, t) in self.params.iter().zip(params) {
            if E::shape(t) != spec.shape {
                return Err(Error::shape(
                    "torchvision retinanet",
                    format!("{} is {}, not {}", spec.name, E::shape(t), spec.shape),
                ));
            }
        }
        let s = E::shape(images);
        if s.c != 3 || s.h == 0 || s.w == 0 || s.h > MAX_INPUT_SIZE || s.w > MAX_INPUT_SIZE {
            return Err(Error::shape(
                "torchvision retinanet",
                format!("images {s}: 3 channels of 1 to {MAX_INPUT_SIZE} pixels a side are expected"),
            ));
        }
        let p = params;
        let x = self.layer(e, p, &self.stem, images, true)?;
        // The stem's output, then each stage's (C2-C5).
        let mut outputs = vec![e.max_pool2d(&STEM_POOL, &x)?];
        drop(x);
        for stage in &self.stages {
            let mut x = self.bottleneck(e, p, &stage[0], outputs.last().expect("the stem"))?;
            for block in &stage[1..] {
                x = self.bottleneck(e, p, block, &x)?;
            }
            outputs.push(x);
        }
        let c = &outputs[2..];
        // FPN, top-down.
        let mut last = self.layer(e, p, &self.inner[2], &c[2], false)?;
        let mut features: Vec<Option<E::Tensor>> =
            vec![None, None, Some(self.layer(e, p, &self.outer[2], &last, false)?)];
        for i in [1, 0] {
            let lateral = self.layer(e, p, &self.inner[i], &c[i], false)?;
            let ls = E::shape(&lateral);
            let up = e.upsample_nearest(&last, ls.h, ls.w)?;
            last = e.add(&lateral, &up)?;
            features[i] = Some(self.layer(e, p, &self.outer[i], &last, false)?);
        }
        let mut features: Vec<E::Tensor> = features.into_iter().map(|f| f.expect("three levels")).collect();
        let p6 = match self.config.variant {
            Variant::V1 => self.layer(e, p, &self.p6, &features[2], false)?,
            Variant::V2 => self.layer(e, p, &self.p6, &c[2], false)?,
        };
        let r = e.relu(&p6)?;
        let p7 = self.layer(e, p, &self.p7, &r, false)?;
        features.push(p6);
        features.push(p7);
        let levels: Vec<(usize, usize)> = features.iter().map(|f| (E::shape(f).h, E::shape(f).w)).collect();
        let rows = levels.iter().map(|&(h, w)| h * w).sum::<usize>() * ANCHORS_PER_CELL;
        let mut outs = Vec::with_capacity(2);
        for (convs, last, values) in [
            (&self.cls_convs, &self.cls_logits, self.config.num_classes),
            (&self.box_convs, &self.bbox_reg, 4),
        ] {
            let mut out = e.zeros(Shape::new(s.n, 1, rows, values))?;
            let mut offset = 0;
            for f in &features {
                let mut h = self.layer(e, p, &convs[0], f, true)?;
                for l in &convs[1..] {
                    h = self.layer(e, p, l, &h, true)?;
                }
                let o = self.layer(e, p, last, &h, false)?;
                e.permute_head(&o, ANCHORS_PER_CELL, &mut out, offset)?;
                offset += E::shape(f).plane() * ANCHORS_PER_CELL;
            }
            outs.push(out);
        }
        let boxes = outs.pop().expect("two heads");
        let logits = outs.pop().expect("two heads");
        Ok(TvOutputs { logits, boxes, levels })
    }
}

impl TorchvisionRetinaNet {
    /// torchvision's `GeneralizedRCNNTransform` on one RGB image (`3 * width * height` bytes,
    /// rows top to bottom): values in [0, 1] (`byte / 255`) minus the mean over the deviation,
    /// scaled by `min(min_size / short side, max_size / long side)` to `floor(side * scale)`
    /// with PyTorch's bilinear interpolation (`align_corners=False`), zero-padded at the bottom
    /// and right to a multiple of `size_divisible`.
    pub fn transform(&self, rgb: &[u8], width: usize, height: usize) -> Result<Transformed> {
        let ((rh, rw), (ph, pw)) = self.sizes(width, height)?;
        // Checked: on wasm32 `usize` is 32 bits.
        if width.checked_mul(height).and_then(|p| p.checked_mul(3)) != Some(rgb.len()) {
            return Err(Error::invalid(format!(
                "torchvision RetinaNet: {} bytes are not an RGB image of {width} x {height}",
                rgb.len()
            )));
        }
        let c = &self.config;
        let ys = linear_taps(height, rh);
        let xs = linear_taps(width, rw);
        let plane = width * height;
        let mut data = vec![0.0f32; 3 * ph * pw];
        let mut src = vec![0.0f32; plane];
        for ch in 0..3 {
            let (mean, std) = (c.image_mean[ch], c.image_std[ch]);
            for (v, p) in src.iter_mut().zip(rgb.chunks_exact(3)) {
                *v = (f32::from(p[ch]) / 255.0 - mean) / std;
            }
            let dst = &mut data[ch * ph * pw..(ch + 1) * ph * pw];
            for (y, &(y0, y1, ly0, ly1)) in ys.iter().enumerate() {
                let (r0, r1) = (&src[y0 * width..(y0 + 1) * width], &src[y1 * width..(y1 + 1) * width]);
                for (x, &(x0, x1, lx0, lx1)) in xs.iter().enumerate() {
                    // PyTorch's order: each row interpolated along x, then the rows along y.
                    let t0 = r0[x0] * lx0 + r0[x1] * lx1;
                    let t1 = r1[x0] * lx0 + r1[x1] * lx1;
                    dst[y * pw + x] = t0 * ly0 + t1 * ly1;
                }
            }
        }
        Ok(Transformed {
            data,
            padded: (ph, pw),
            resized: (rh, rw),
            original: (height, width),
        })
    }

    /// torchvision's sizes for a `width` x `height` image: `((height, width) resized,
    /// (height, width) padded)`, the short side scaled towards `min_size` unless the long side
    /// would pass `max_size`, each side `floor(side * scale)`, padded up to `size_divisible`.
    pub fn sizes(&self, width: usize, height: usize) -> Result<((usize, usize), (usize, usize))> {
        if width == 0 || height == 0 || width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE {
            return Err(Error::invalid(format!(
                "torchvision RetinaNet: an image of {width} x {height}; 1 to {MAX_IMAGE_SIDE} pixels a side are supported"
            )));
        }
        let c = &self.config;
        let (short, long) = (width.min(height) as f64, width.max(height) as f64);
        let scale = (c.min_size as f64 / short).min(c.max_size as f64 / long);
        let (rh, rw) = (
            (height as f64 * scale).floor() as usize,
            (width as f64 * scale).floor() as usize,
        );
        if rh == 0 || rw == 0 || rh > MAX_INPUT_SIZE || rw > MAX_INPUT_SIZE {
            return Err(Error::invalid(format!(
                "torchvision RetinaNet: a {width} x {height} image scales to {rw} x {rh}; each side must come to 1 to {MAX_INPUT_SIZE} pixels"
            )));
        }
        let d = c.size_divisible;
        let (ph, pw) = (rh.div_ceil(d) * d, rw.div_ceil(d) * d);
        if ph > MAX_INPUT_SIZE || pw > MAX_INPUT_SIZE {
            return Err(Error::invalid(format!(
                "torchvision RetinaNet: a {width} x {height} image is padded to {pw} x {ph} (size_divisible {d}); at most {MAX_INPUT_SIZE} a side"
            )));
        }
        Ok(((rh, rw), (ph, pw)))
    }

    /// torchvision's anchors for a padded input of `padded` with the levels' feature sizes:
    /// per level, rows then columns then the nine anchors (ratios 0.5, 1, 2, each at three
    /// sizes), `[x1, y1, x2, y2]` in the padded input's pixels. `levels` are
    /// [`TorchvisionRetinaNet::level_sizes`]' (at most the first five are used).
    pub fn anchors(&self, padded: (usize, usize), levels: &[(usize, usize)]) -> Vec<[f32; 4]> {
        let levels = &levels[..levels.len().min(LEVELS)];
        let cells = levels
            .iter()
            .fold(0usize, |n, &(h, w)| n.saturating_add(h.saturating_mul(w)));
        let mut out = Vec::with_capacity(cells.saturating_mul(ANCHORS_PER_CELL).min(1 << 24));
        for (l, &(gh, gw)) in levels.iter().enumerate() {
            let base = base_anchors(BASE_SIZE << l);
            let (sy, sx) = (padded.0 / gh.max(1), padded.1 / gw.max(1));
            for y in 0..gh {
                for x in 0..gw {
                    let (ox, oy) = ((x * sx) as f32, (y * sy) as f32);
                    for b in &base {
                        out.push([ox + b[0], oy + b[1], ox + b[2], oy + b[3]]);
                    }
                }
            }
        }
        out
    }

    /// torchvision's `postprocess_detections` and `transform.postprocess` for one image's rows
    /// of the network's outputs (`num_classes` logits and four deltas per anchor, the levels'
    /// sizes from [`TvOutputs::levels`]): boxes in the original image's pixels, best first.
    pub fn detections(
        &self,
        image: &Transformed,
        levels: &[(usize, usize)],
        logits: &[f32],
        deltas: &[f32],
        params: Params,
    ) -> Result<Vec<Detection>> {
        params.check()?;
        let k = self.config.num_classes;
        if levels != self.level_sizes(image.padded.0, image.padded.1)? {
            return Err(Error::shape(
                "torchvision retinanet detections",
                format!(
                    "levels {levels:?} are not those of a {} x {} input",
                    image.padded.1, image.padded.0
                ),
            ));
        }
        let rows = levels.iter().map(|&(h, w)| h * w).sum::<usize>() * ANCHORS_PER_CELL;
        if Some(logits.len()) != rows.checked_mul(k) || deltas.len() != rows * 4 {
            return Err(Error::shape(
                "torchvision retinanet detections",
                format!(
                    "{} logits and {} deltas for {rows} anchors of {k} classes",
                    logits.len(),
                    deltas.len()
                ),
            ));
        }
        let anchors = self.anchors(image.padded, levels);
        let clip = (1000.0f64 / 16.0).ln() as f32;
        let (rh, rw) = (image.resized.0 as f32, image.resized.1 as f32);
        let mut boxes: Vec<[f32; 4]> = Vec::new();
        let mut scores: Vec<f32> = Vec::new();
        let mut labels: Vec<i32> = Vec::new();
        let mut start = 0;
        for &(h, w) in levels {
            let n = h * w * ANCHORS_PER_CELL;
            let level = &logits[start * k..(start + n) * k];
            // sigmoid(l) > t only where l > logit(t): the exact f32 sigmoid is computed and
            // compared for the logits near or above it (a margin of 1e-3 covers its rounding).
            // The margin covers the f32 sigmoid's rounding, about 6e-8 / (1 - t) in logits.
            let t = f64::from(params.score_threshold);
            let cut = ((t / (1.0 - t)).ln() - 1e-3f64.max(1e-6 / (1.0 - t))) as f32;
            let mut candidates: Vec<(f32, usize)> = level
                .iter()
                .enumerate()
                .filter(|&(_, &l)| l > cut || l.is_nan())
                .filter_map(|(i, &l)| {
                    let s = 1.0 / (1.0 + (-l).exp());
                    (s > params.score_threshold).then_some((s, i))
                })
                .collect();
            // The best `topk_candidates`, best first; equal scores by index (torch.topk
            // promises no order for ties).
            candidates.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            candidates.truncate(params.topk_candidates);
            for (score, i) in candidates {
                let a = start + i / k;
                boxes.push(decode_clip(&deltas[4 * a..4 * a + 4], anchors[a], clip, rw, rh));
                scores.push(score);
                labels.push((i % k) as i32);
            }
            start += n;
        }
        let keep = batched_nms(&boxes, &scores, &labels, params.nms_threshold);
        let (oh, ow) = (image.original.0 as f32, image.original.1 as f32);
        let (ratio_h, ratio_w) = (oh / rh, ow / rw);
        Ok(keep
            .into_iter()
            .take(params.detections_per_image)
            .map(|i| {
                let b = boxes[i];
                Detection {
                    bbox: [b[0] * ratio_w, b[1] * ratio_h, b[2] * ratio_w, b[3] * ratio_h],
                    score: scores[i],
                    class: labels[i] as u32,
                }
            })
            .collect())
    }

    /// Detections in an RGB image on engine `e` with `params` (the network's tensors):
    /// [`TorchvisionRetinaNet::transform`], the network and
    /// [`TorchvisionRetinaNet::detections`] with the thresholds of `post`.
    pub fn detect<E: Engine>(
        &self,
        e: &mut E,
        params: &[E::Tensor],
        rgb: &[u8],
        width: usize,
        height: usize,
        post: Params,
    ) -> Result<Vec<Detection>> {
        post.check()?;
        let image = self.transform(rgb, width, height)?;
        let (ph, pw) = image.padded;
        let (levels, logits, deltas) = e.pass(|e| {
            let input = e.tensor(Shape::new(1, 3, ph, pw), &image.data)?;
            let out = self.forward(e, params, &input)?;
            let (logits, deltas) = (e.read(&out.logits)?, e.read(&out.boxes)?);
            Ok::<_, crate::Error>((out.levels, logits, deltas))
        })?;
        self.detections(&image, &levels, &logits, &deltas, post)
    }
}

impl TorchvisionRetinaNet {
    /// Detections in several RGB images `(bytes, width, height)` run as one batch, as
    /// torchvision runs a list of images: each transformed on its own, all zero-padded to the
    /// largest padded size (so each image's features and anchors are those of the shared
    /// canvas), one forward pass, then each image's post-processing with its own sizes.
    pub fn detect_batch<E: Engine>(
        &self,
        e: &mut E,
        params: &[E::Tensor],
        images: &[(&[u8], usize, usize)],
        post: Params,
    ) -> Result<Vec<Vec<Detection>>> {
        post.check()?;
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let mut batch = images
            .iter()
            .map(|&(rgb, w, h)| self.transform(rgb, w, h))
            .collect::<Result<Vec<_>>>()?;
        let ph = batch.iter().map(|t| t.padded.0).max().unwrap_or(0);
        let pw = batch.iter().map(|t| t.padded.1).max().unwrap_or(0);
        let shape = Shape::new(batch.len(), 3, ph, pw);
        let mut data = vec![0.0f32; shape.checked_len()?];
        for (t, dst) in batch.iter_mut().zip(data.chunks_exact_mut(3 * ph * pw)) {
            let (h, w) = t.padded;
            for (src_plane, dst_plane) in t.data.chunks_exact(h * w).zip(dst.chunks_exact_mut(ph * pw)) {
                for (src_row, dst_row) in src_plane.chunks_exact(w).zip(dst_plane.chunks_exact_mut(pw)) {
                    dst_row[..w].copy_from_slice(src_row);
                }
            }
            t.padded = (ph, pw);
            t.data = Vec::new();
        }
        let (out, logits, deltas) = e.pass(|e| {
            let input = e.tensor(shape, &data)?;
            drop(data);
            let out = self.forward(e, params, &input)?;
            let (logits, deltas) = (e.read(&out.logits)?, e.read(&out.boxes)?);
            Ok::<_, crate::Error>((out, logits, deltas))
        })?;
        let k = self.config.num_classes;
        let rows = logits.len() / (batch.len() * k);
        batch
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let l = &logits[i * rows * k..(i + 1) * rows * k];
                let d = &deltas[i * rows * 4..(i + 1) * rows * 4];
                self.detections(t, &out.levels, l, d, post)
            })
            .collect()
    }
}

/// PyTorch's bilinear taps (`align_corners=False`) from `input` to `output` samples: for each
/// output, the two source indices and their weights, in f32 as its CPU kernel computes them.
fn linear_taps(input: usize, output: usize) -> Vec<(usize, usize, f32, f32)> {
    if input == output {
        return (0..output).map(|i| (i, i, 1.0, 0.0)).collect();
    }
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|i| {
            let real = (scale * (i as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (real.floor() as usize).min(input - 1);
            let l1 = (real - i0 as f32).clamp(0.0, 1.0);
            let i1 = if i0 < input - 1 { i0 + 1 } else { i0 };
            (i0, i1, 1.0 - l1, l1)
        })
        .collect()
}

/// torchvision's `AnchorGenerator.generate_anchors` for one level of base size `size`: sizes
/// `size, int(size * 2^(1/3)), int(size * 2^(2/3))`, ratios (h/w) 0.5, 1, 2 (ratio-major),
/// `[-w, -h, w, h] / 2` rounded half to even, in f32.
fn base_anchors(size: usize) -> Vec<[f32; 4]> {
    let scales: Vec<f32> = (0..3)
        .map(|k| ((size as f64) * 2f64.powf(k as f64 / 3.0)).trunc() as f32)
        .collect();
    let mut out = Vec::with_capacity(ANCHORS_PER_CELL);
    for ratio in [0.5f32, 1.0, 2.0] {
        let h_ratio = ratio.sqrt();
        let w_ratio = 1.0 / h_ratio;
        for &s in &scales {
            let (ws, hs) = (w_ratio * s, h_ratio * s);
            out.push([-ws / 2.0, -hs / 2.0, ws / 2.0, hs / 2.0].map(f32::round_ties_even));
        }
    }
    out
}

/// torchvision's `BoxCoder.decode_single` with weights (1, 1, 1, 1) and `clip_boxes_to_image`,
/// in its f32 order of operations.
fn decode_clip(d: &[f32], a: [f32; 4], clip: f32, width: f32, height: f32) -> [f32; 4] {
    let (w, h) = (a[2] - a[0], a[3] - a[1]);
    let (cx, cy) = (a[0] + 0.5 * w, a[1] + 0.5 * h);
    // torch.clamp(max=) keeps NaN.
    let (dw, dh) = (
        if d[2] > clip { clip } else { d[2] },
        if d[3] > clip { clip } else { d[3] },
    );
    let (pcx, pcy) = (d[0] * w + cx, d[1] * h + cy);
    let (pw, ph) = (dw.exp() * w, dh.exp() * h);
    let (hw, hh) = (0.5 * pw, 0.5 * ph);
    let clamp = |v: f32, hi: f32| {
        if v < 0.0 {
            0.0
        } else if v > hi {
            hi
        } else {
            v
        }
    };
    [
        clamp(pcx - hw, width),
        clamp(pcy - hh, height),
        clamp(pcx + hw, width),
        clamp(pcy + hh, height),
    ]
}

/// `torchvision.ops.batched_nms` as it runs on the CPU: up to 1,000 boxes (4,000 coordinates)
/// one NMS over boxes offset by `label * (max coordinate + 1)`, more one NMS per label merged by
/// score. The kept indices, best first (equal scores: lower index first).
fn batched_nms(boxes: &[[f32; 4]], scores: &[f32], labels: &[i32], threshold: f32) -> Vec<usize> {
    if boxes.is_empty() {
        return Vec::new();
    }
    let nms = Nms::hard(threshold);
    let keep = if boxes.len() * 4 > 4000 {
        crate::cpu::nms::nms(&nms, boxes, scores, Some(labels)).keep
    } else {
        // torch's `max` is NaN when a value is: then every offset box is NaN and nothing is
        // suppressed, as there.
        let max = boxes.iter().flatten().fold(f32::NEG_INFINITY, |m, &v| {
            if m.is_nan() || v.is_nan() || v > m {
                if m.is_nan() { m } else { v }
            } else {
                m
            }
        });
        let offset_boxes: Vec<[f32; 4]> = boxes
            .iter()
            .zip(labels)
            .map(|(b, &l)| {
                let o = l as f32 * (max + 1.0);
                b.map(|v| v + o)
            })
            .collect();
        crate::cpu::nms::nms(&nms, &offset_boxes, scores, None).keep
    };
    keep.into_iter().map(|i| i as usize).collect()
}

/// True when `dir/config.json` (read up to the configuration size limit) names this
/// architecture.
pub fn is_model_dir(dir: &Path) -> bool {
    let Ok(text) = read_limited(
        &ModelDir(dir.to_path_buf()).config(),
        MAX_CONFIG_BYTES,
        "a model configuration",
    ) else {
        return false;
    };
    serde_json::from_slice::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| {
            v.get("architecture")
                .and_then(|a| a.as_str())
                .map(|a| a == ARCHITECTURE)
        })
        .unwrap_or(false)
}

/// ResNet's stem pooling.
const STEM_POOL: MaxPool2d = MaxPool2d {
    kernel: 3,
    stride: 2,
    padding: 1,
};

fn parse_config(text: &[u8], source: &str) -> Result<TorchvisionConfig> {
    let config: TorchvisionConfig = serde_json::from_slice(text)
        .map_err(|e| Error::format(source, format!("invalid torchvision RetinaNet configuration: {e}")))?;
    config.validate().map_err(|e| Error::format(source, e.to_string()))?;
    Ok(config)
}

/// What a state dict that is not a ResNet-50 RetinaNet looks like, from its keys.
fn architecture_hint<'a>(keys: impl Iterator<Item = &'a String>) -> Option<String> {
    let keys: Vec<&String> = keys.collect();
    if keys
        .iter()
        .any(|k| k.starts_with("rpn.") || k.starts_with("roi_heads."))
    {
        return Some("the file has `rpn.*` / `roi_heads.*` tensors: a Faster or Mask R-CNN, not a RetinaNet".into());
    }
    if keys.iter().any(|k| {
        k.ends_with("classification_head.conv.0.weight") || k.starts_with("backbone.fpn.inner_blocks.0.weight")
    }) {
        return Some(
            "the file has the key names of older torchvision versions: convert it with scripts/import_torchvision.py"
                .into(),
        );
    }
    if keys.iter().any(|k| k.starts_with("backbone.body.layer3.6.")) {
        return Some("the file has more than six blocks in `layer3`: a ResNet-101 or -152 body, not ResNet-50".into());
    }
    if !keys.iter().any(|k| k.starts_with("backbone.body.")) {
        return Some("no `backbone.body.*` tensor: not a torchvision detection state dict (scripts/import_torchvision.py converts one)".into());
    }
    None
}
