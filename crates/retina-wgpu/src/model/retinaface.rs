//! RetinaFace (Deng et al., "RetinaFace: Single-stage Dense Face Localisation in the Wild",
//! 2019) with the MobileNet-0.25 body of biubug6/Pytorch_Retinaface, as its ONNX export
//! computes it (BatchNorm folded into the convolutions): a stride-2 stem and 13 depthwise +
//! pointwise blocks with LeakyReLU, three levels (strides 8, 16, 32) merged by an FPN with
//! nearest resizing to the finer level's size, an SSH context module per level (3x3, 5x5 and
//! 7x7 receptive fields by stacked 3x3 convolutions, concatenated, ReLU) and 1x1 heads for two
//! class logits, four box deltas and ten landmark deltas per anchor (two anchors per cell).
//!
//! A model directory (`scripts/import_retinaface.py` writes one from the ONNX file) holds
//! `config.json` ([`RetinaFaceConfig`], `"architecture": "retinaface"`) and `model.safetensors`
//! with the tensor names of [`RetinaFace::params`]; the channel counts come from the weights'
//! shapes, checked layer by layer against each other before anything is read.
//!
//! The network runs over [`Engine`] on either backend ([`RetinaFace::forward`]);
//! [`RetinaFace::detect`] adds the package's pre- and post-processing on the host: BGR minus the
//! mean, anchors at `(i + 0.5) * stride` of `ceil(size / stride)` cells, box and landmark
//! decoding with variances (0.1, 0.2), a strict score threshold, top-k and OpenCV's
//! `cv2.dnn.NMSBoxes` ([`nms_boxes`]).

use std::collections::HashMap;
use std::path::Path;

use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::checkpoint::{
    MAX_CONFIG_BYTES, MAX_HEADER_BYTES, ModelDir, read_limited, read_safetensors_header, read_tensors,
};
use crate::model::{MAX_CHANNELS, MAX_INPUT_SIZE, ParamSpec};
use crate::nn::{Conv2d, Engine, Init, Shape};

/// The value of `architecture` in a RetinaFace model's `config.json`.
pub const ARCHITECTURE: &str = "retinaface";
/// Landmarks per face (eyes, nose, mouth corners).
pub const LANDMARKS: usize = 5;
/// The largest image side [`RetinaFace::detect`] takes (the network runs at the image's own
/// size): [`MAX_INPUT_SIZE`].
pub const MAX_IMAGE_SIDE: usize = MAX_INPUT_SIZE;

/// A RetinaFace model's `config.json`: the architecture and the pipeline's numbers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetinaFaceConfig {
    /// `"retinaface"`.
    pub architecture: String,
    /// `"mobilenet0.25"`.
    pub backbone: String,
    /// The depthwise convolution's stride in each body block.
    pub block_strides: Vec<usize>,
    /// The body block whose output feeds each FPN level, finest first (three).
    pub levels: Vec<usize>,
    /// LeakyReLU's negative slope (0.1).
    pub leaky_slope: f32,
    /// `"bgr"`: the network takes blue, green, red.
    pub channel_order: String,
    /// Subtracted from each input channel, in `channel_order` (104, 117, 127).
    pub mean: [f32; 3],
    /// Stride of each level (8, 16, 32).
    pub strides: Vec<usize>,
    /// Anchor sides in pixels per level (two per cell).
    pub anchor_sizes: Vec<Vec<f32>>,
    /// Box coding variances: centre and size (0.1, 0.2).
    pub variances: [f32; 2],
    /// Faces need a score above this (0.9).
    pub score_threshold: f32,
    /// Candidates kept before NMS (10,000).
    pub top_k: usize,
    /// NMS IoU threshold (0.4).
    pub nms_threshold: f32,
    /// Where the weights came from (free-form).
    #[serde(default)]
    pub source: serde_json::Value,
}

impl RetinaFaceConfig {
    /// Checks the configuration's numbers.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::invalid(format!("RetinaFace config: {msg}")));
        if self.architecture != ARCHITECTURE {
            return bad(format!("architecture is `{}`, not `{ARCHITECTURE}`", self.architecture));
        }
        if self.backbone != "mobilenet0.25" {
            return bad(format!(
                "backbone `{}` is not supported (mobilenet0.25 is)",
                self.backbone
            ));
        }
        if self.channel_order != "bgr" && self.channel_order != "rgb" {
            return bad(format!("channel_order `{}` is neither bgr nor rgb", self.channel_order));
        }
        if self.block_strides.is_empty()
            || self.block_strides.len() > 64
            || self.block_strides.iter().any(|&s| !(1..=2).contains(&s))
        {
            return bad(format!(
                "block_strides {:?}: 1 to 64 blocks of stride 1 or 2",
                self.block_strides
            ));
        }
        if self.levels.len() != 3
            || self.levels.windows(2).any(|w| w[0] >= w[1])
            || self.levels[2] >= self.block_strides.len()
        {
            return bad(format!("levels {:?}: three increasing block indices", self.levels));
        }
        if self.strides.len() != 3 || self.anchor_sizes.len() != 3 {
            return bad("three strides and three anchor size lists, one per level".into());
        }
        // The strides must be those the body gives at each level: 2 (the stem) times the
        // product of the block strides up to the level.
        for (k, &level) in self.levels.iter().enumerate() {
            let stride = 2 * self.block_strides[..=level].iter().product::<usize>();
            if self.strides[k] != stride {
                return bad(format!(
                    "level {k} has stride {stride} in the body, the config says {}",
                    self.strides[k]
                ));
            }
        }
        let sizes_ok = self
            .anchor_sizes
            .iter()
            .all(|s| !s.is_empty() && s.len() <= 16 && s.iter().all(|v| v.is_finite() && *v > 0.0 && *v <= 1e6));
        if !sizes_ok || self.anchor_sizes.iter().any(|s| s.len() != self.anchor_sizes[0].len()) {
            return bad(format!(
                "anchor_sizes {:?}: the same number (1 to 16) of positive sizes per level",
                self.anchor_sizes
            ));
        }
        if !self.leaky_slope.is_finite() || self.mean.iter().any(|m| !m.is_finite()) {
            return bad("leaky_slope and mean must be finite".into());
        }
        if self.variances.iter().any(|v| !v.is_finite() || *v <= 0.0) {
            return bad(format!("variances {:?} must be positive", self.variances));
        }
        Params::check(self.score_threshold, self.top_k, self.nms_threshold)
    }

    /// Anchors per cell.
    pub fn anchors_per_cell(&self) -> usize {
        self.anchor_sizes[0].len()
    }
}

/// The post-processing's thresholds (the config's by default).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Params {
    /// Faces need a score above this.
    pub score_threshold: f32,
    /// Candidates kept before NMS.
    pub top_k: usize,
    /// NMS IoU threshold.
    pub nms_threshold: f32,
}

/// Checks post-processing thresholds (both backends).
pub(crate) fn check_params(p: Params) -> Result<()> {
    Params::check(p.score_threshold, p.top_k, p.nms_threshold)
}

impl Params {
    fn check(score: f32, top_k: usize, nms: f32) -> Result<()> {
        if !(0.0..=1.0).contains(&score) {
            return Err(Error::invalid(format!(
                "RetinaFace: score threshold {score} is not in [0, 1]"
            )));
        }
        if !(0.0..=1.0).contains(&nms) {
            return Err(Error::invalid(format!(
                "RetinaFace: NMS threshold {nms} is not in [0, 1]"
            )));
        }
        if top_k == 0 {
            return Err(Error::invalid("RetinaFace: top_k must be at least 1"));
        }
        Ok(())
    }
}

/// A face: its box, score and five landmarks, in image pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Face {
    /// `[x1, y1, x2, y2]`.
    pub bbox: [f32; 4],
    /// Probability of a face (the softmax of the two class logits).
    pub score: f32,
    /// Left eye, right eye, nose, left and right mouth corner (as the model was trained:
    /// biubug6's order), `[x, y]` each.
    pub landmarks: [[f32; 2]; LANDMARKS],
}

/// One convolution of a profiled forward pass ([`RetinaFace::forward_profiled`]).
#[derive(Clone, Debug)]
pub struct LayerTime {
    /// The layer's parameter name without `.weight` (`body.blocks.3.dw`, `ssh1.conv3x3`).
    pub name: String,
    /// Its geometry.
    pub conv: Conv2d,
    /// Whether it is depthwise (one filter per channel).
    pub depthwise: bool,
    /// Its input's shape.
    pub input: Shape,
    /// The engine call's wall time.
    pub seconds: f64,
}

/// What one forward pass carries through its layers: the parameters and, when profiling,
/// where each convolution's time goes.
struct Pass<'a, E: Engine> {
    params: &'a [E::Tensor],
    profile: Option<&'a mut Vec<LayerTime>>,
}

/// What activation follows a convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Act {
    None,
    Leaky,
}

/// A convolution of the network with the indices of its weight and bias in
/// [`RetinaFace::params`].
#[derive(Clone, Copy, Debug)]
struct Layer {
    conv: Conv2d,
    depthwise: bool,
    act: Act,
    weight: usize,
    bias: usize,
}

/// The network's three head outputs, as anchor rows `[N, 1, R, C]` in level, row, column,
/// anchor order.
#[derive(Debug)]
pub struct FaceOutputs<T> {
    /// Two class logits (background, face) per anchor.
    pub logits: T,
    /// Four box deltas per anchor.
    pub boxes: T,
    /// Ten landmark deltas per anchor.
    pub landmarks: T,
}

/// A RetinaFace network: its configuration, layers and parameter list.
#[derive(Clone, Debug)]
pub struct RetinaFace {
    config: RetinaFaceConfig,
    params: Vec<ParamSpec>,
    stem: Layer,
    blocks: Vec<(Layer, Layer)>,
    fpn_out: [Layer; 3],
    fpn_merge: [Layer; 2],
    ssh: [[Layer; 5]; 3],
    heads: [[Layer; 3]; 3],
}

/// Builds the layer list from the weights' shapes, checking each against the layer before it.
struct Builder<'a> {
    shapes: &'a dyn Fn(&str) -> Result<Vec<usize>>,
    params: Vec<ParamSpec>,
}

impl Builder<'_> {
    /// A convolution named `name` taking `in_channels`, its kernel and output channels read
    /// from the weights.
    fn layer(&mut self, name: &str, in_channels: usize, stride: usize, depthwise: bool, act: Act) -> Result<Layer> {
        let w = (self.shapes)(&format!("{name}.weight"))?;
        let bad = |msg: String| Error::invalid(format!("RetinaFace weights: `{name}.weight` is {w:?}: {msg}"));
        let [out, per_group, kh, kw] = <[usize; 4]>::try_from(w.as_slice()).map_err(|_| bad("not 4-D".into()))?;
        if out == 0 || out > MAX_CHANNELS || kh == 0 || kw == 0 || kh > 7 || kw > 7 || kh != kw || kh % 2 == 0 {
            return Err(bad(format!(
                "1 to {MAX_CHANNELS} outputs of an odd square kernel up to 7 are expected"
            )));
        }
        let expected_in = if depthwise { 1 } else { in_channels };
        if per_group != expected_in || (depthwise && out != in_channels) {
            return Err(bad(format!(
                "the layer before gives {in_channels} channels{}",
                if depthwise {
                    " (a depthwise layer keeps them)"
                } else {
                    ""
                }
            )));
        }
        let b = (self.shapes)(&format!("{name}.bias"))?;
        if b != [out] {
            return Err(Error::invalid(format!(
                "RetinaFace weights: `{name}.bias` is {b:?}, [{out}] is expected"
            )));
        }
        let conv = Conv2d {
            in_channels,
            out_channels: out,
            kernel: (kh, kw),
            stride,
            padding: kh / 2,
        };
        let weight = self.params.len();
        let weight_shape = if depthwise {
            conv.depthwise_weight_shape()
        } else {
            conv.weight_shape()
        };
        let fan_in = per_group * kh * kw;
        self.params.push(ParamSpec {
            name: format!("{name}.weight"),
            shape: weight_shape,
            init: Init::Kaiming { fan_in },
            decay: true,
        });
        self.params.push(ParamSpec {
            name: format!("{name}.bias"),
            shape: conv.bias_shape(),
            init: Init::Constant(0.0),
            decay: false,
        });
        Ok(Layer {
            conv,
            depthwise,
            act,
            weight,
            bias: weight + 1,
        })
    }
}

impl RetinaFace {
    /// The network of `config` with the channel counts of the weights whose shapes `shapes`
    /// gives by tensor name (an error for a missing tensor).
    pub fn new(config: RetinaFaceConfig, shapes: &dyn Fn(&str) -> Result<Vec<usize>>) -> Result<Self> {
        config.validate()?;
        let mut b = Builder {
            shapes,
            params: Vec::new(),
        };
        let stem = b.layer("body.stem", 3, 2, false, Act::Leaky)?;
        let mut channels = stem.conv.out_channels;
        let mut blocks = Vec::with_capacity(config.block_strides.len());
        let mut level_channels = Vec::new();
        for (j, &stride) in config.block_strides.iter().enumerate() {
            let dw = b.layer(&format!("body.blocks.{j}.dw"), channels, stride, true, Act::Leaky)?;
            let pw = b.layer(&format!("body.blocks.{j}.pw"), channels, 1, false, Act::Leaky)?;
            channels = pw.conv.out_channels;
            blocks.push((dw, pw));
            if config.levels.contains(&j) {
                level_channels.push(channels);
            }
        }
        let fpn_out = [
            b.layer("fpn.output1", level_channels[0], 1, false, Act::Leaky)?,
            b.layer("fpn.output2", level_channels[1], 1, false, Act::Leaky)?,
            b.layer("fpn.output3", level_channels[2], 1, false, Act::Leaky)?,
        ];
        let fpn = fpn_out[0].conv.out_channels;
        if fpn_out.iter().any(|l| l.conv.out_channels != fpn) {
            return Err(Error::invalid(
                "RetinaFace weights: the three FPN outputs differ in channels",
            ));
        }
        let fpn_merge = [
            b.layer("fpn.merge1", fpn, 1, false, Act::Leaky)?,
            b.layer("fpn.merge2", fpn, 1, false, Act::Leaky)?,
        ];
        let mut ssh = Vec::new();
        for k in 1..=3 {
            let p = format!("ssh{k}");
            let c3 = b.layer(&format!("{p}.conv3x3"), fpn, 1, false, Act::None)?;
            let c5_1 = b.layer(&format!("{p}.conv5x5_1"), fpn, 1, false, Act::Leaky)?;
            let quarter = c5_1.conv.out_channels;
            let c5_2 = b.layer(&format!("{p}.conv5x5_2"), quarter, 1, false, Act::None)?;
            let c7_2 = b.layer(&format!("{p}.conv7x7_2"), quarter, 1, false, Act::Leaky)?;
            let c7_3 = b.layer(&format!("{p}.conv7x7_3"), c7_2.conv.out_channels, 1, false, Act::None)?;
            let total = c3.conv.out_channels + c5_2.conv.out_channels + c7_3.conv.out_channels;
            if total != fpn {
                return Err(Error::invalid(format!(
                    "RetinaFace weights: {p}'s three branches give {total} channels, the heads take {fpn}"
                )));
            }
            ssh.push([c3, c5_1, c5_2, c7_2, c7_3]);
        }
        let a = config.anchors_per_cell();
        let mut heads = Vec::new();
        for (name, values) in [("class_head", 2), ("bbox_head", 4), ("landmark_head", 2 * LANDMARKS)] {
            let mut level = Vec::new();
            for k in 0..3 {
                let l = b.layer(&format!("{name}.{k}"), fpn, 1, false, Act::None)?;
                if l.conv.out_channels != a * values {
                    return Err(Error::invalid(format!(
                        "RetinaFace weights: `{name}.{k}.weight` has {} outputs, {a} anchors x {values} values are expected",
                        l.conv.out_channels
                    )));
                }
                level.push(l);
            }
            heads.push([level[0], level[1], level[2]]);
        }
        let to3 = |v: Vec<[Layer; 5]>| [v[0], v[1], v[2]];
        Ok(Self {
            config,
            params: b.params,
            stem,
            blocks,
            fpn_out,
            fpn_merge,
            ssh: to3(ssh),
            heads: [heads[0], heads[1], heads[2]],
        })
    }

    /// Reads a model directory: `config.json` and the shapes of `model.safetensors`' tensors
    /// (from its header, before the data is read), then the weights. Returns the network and
    /// its parameter values in [`RetinaFace::params`] order.
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
            for (name, t) in tensors {
                let shape = t.get("shape").and_then(|s| s.as_array()).and_then(|dims| {
                    dims.iter()
                        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                        .collect::<Option<Vec<usize>>>()
                });
                if let Some(shape) = shape {
                    shapes.insert(name.clone(), shape);
                }
            }
        }
        let net = Self::with_shapes(config, &shapes, &source)?;
        let max = 4 * net.num_scalars() as u64 + 8 + MAX_HEADER_BYTES;
        let bytes = read_limited(&weights, max, "this network's weights")?;
        let values = read_tensors(&net.params, &bytes, &source)?.values;
        Ok((net, values))
    }

    /// A model from the bytes of its `config.json` and `model.safetensors` (a page that fetched
    /// them, a model embedded in a binary).
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
        let values = read_tensors(&net.params, weights, source)?.values;
        Ok((net, values))
    }

    fn with_shapes(config: RetinaFaceConfig, shapes: &HashMap<String, Vec<usize>>, source: &str) -> Result<Self> {
        let lookup = |name: &str| -> Result<Vec<usize>> {
            shapes
                .get(name)
                .cloned()
                .ok_or_else(|| Error::format(source, format!("tensor `{name}` is missing")))
        };
        Self::new(config, &lookup).map_err(|e| Error::format(source, e.to_string()))
    }

    /// The configuration.
    pub fn config(&self) -> &RetinaFaceConfig {
        &self.config
    }

    /// Every parameter: name (the safetensors tensor name), shape, initialisation.
    pub fn params(&self) -> &[ParamSpec] {
        &self.params
    }

    /// Number of scalars over all parameters.
    pub fn num_scalars(&self) -> usize {
        self.params.iter().map(|p| p.shape.len()).sum()
    }

    /// Anchor rows of an image of `height x width`: two per cell of `ceil(size / stride)` cells
    /// per level.
    pub fn num_anchors(&self, height: usize, width: usize) -> usize {
        self.config
            .strides
            .iter()
            .map(|&s| height.div_ceil(s) * width.div_ceil(s))
            .sum::<usize>()
            * self.config.anchors_per_cell()
    }

    fn conv<E: Engine>(&self, e: &mut E, p: &mut Pass<'_, E>, l: &Layer, x: &E::Tensor) -> Result<E::Tensor> {
        let (w, b) = (&p.params[l.weight], Some(&p.params[l.bias]));
        let slope = self.config.leaky_slope;
        let start = p.profile.is_some().then(std::time::Instant::now);
        let y = match (l.depthwise, l.act) {
            (true, Act::Leaky) => e.depthwise_conv2d_leaky(&l.conv, x, w, b, slope),
            (true, Act::None) => e.depthwise_conv2d(&l.conv, x, w, b),
            (false, Act::Leaky) => e.conv2d_leaky(&l.conv, x, w, b, slope),
            (false, Act::None) => e.conv2d(&l.conv, x, w, b),
        }?;
        if let (Some(profile), Some(start)) = (p.profile.as_deref_mut(), start) {
            let name = &self.params[l.weight].name;
            profile.push(LayerTime {
                name: name.strip_suffix(".weight").unwrap_or(name).to_string(),
                conv: l.conv,
                depthwise: l.depthwise,
                input: E::shape(x),
                seconds: start.elapsed().as_secs_f64(),
            });
        }
        Ok(y)
    }

    fn ssh<E: Engine>(&self, e: &mut E, p: &mut Pass<'_, E>, k: usize, x: &E::Tensor) -> Result<E::Tensor> {
        let [c3, c5_1, c5_2, c7_2, c7_3] = &self.ssh[k];
        let a = self.conv(e, p, c3, x)?;
        let t = self.conv(e, p, c5_1, x)?;
        let b = self.conv(e, p, c5_2, &t)?;
        let t = self.conv(e, p, c7_2, &t)?;
        let c = self.conv(e, p, c7_3, &t)?;
        let cat = e.concat_channels(&[&a, &b, &c])?;
        e.relu(&cat)
    }

    /// The network on a batch of preprocessed images `[N, 3, H, W]` ([`RetinaFace::input`]);
    /// `params` in [`RetinaFace::params`] order.
    pub fn forward<E: Engine>(
        &self,
        e: &mut E,
        params: &[E::Tensor],
        images: &E::Tensor,
    ) -> Result<FaceOutputs<E::Tensor>> {
        self.forward_pass(e, params, images, None)
    }

    /// [`RetinaFace::forward`], appending to `profile` one [`LayerTime`] per convolution in the
    /// order they run: the wall time of each engine call. On the CPU engine that is the layer's
    /// work; on the GPU engine it is only the recording of its commands (the work runs at
    /// submission), so a GPU profile needs the device's timestamps instead.
    pub fn forward_profiled<E: Engine>(
        &self,
        e: &mut E,
        params: &[E::Tensor],
        images: &E::Tensor,
        profile: &mut Vec<LayerTime>,
    ) -> Result<FaceOutputs<E::Tensor>> {
        self.forward_pass(e, params, images, Some(profile))
    }

    fn forward_pass<E: Engine>(
        &self,
        e: &mut E,
        params: &[E::Tensor],
        images: &E::Tensor,
        profile: Option<&mut Vec<LayerTime>>,
    ) -> Result<FaceOutputs<E::Tensor>> {
        if params.len() != self.params.len() {
            return Err(Error::shape(
                "retinaface",
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
                    "retinaface",
                    format!("{} is {}, not {}", spec.name, E::shape(t), spec.shape),
                ));
            }
        }
        let s = E::shape(images);
        if s.c != 3 || s.h == 0 || s.w == 0 || s.h > MAX_IMAGE_SIDE || s.w > MAX_IMAGE_SIDE {
            return Err(Error::shape(
                "retinaface",
                format!("images {s}: 3 channels of 1 to {MAX_IMAGE_SIDE} pixels a side are expected"),
            ));
        }
        let p = &mut Pass { params, profile };
        let mut x = self.conv(e, p, &self.stem, images)?;
        let mut levels = Vec::with_capacity(3);
        for (j, (dw, pw)) in self.blocks.iter().enumerate() {
            let t = self.conv(e, p, dw, &x)?;
            x = self.conv(e, p, pw, &t)?;
            if self.config.levels.contains(&j) {
                levels.push(self.conv(e, p, &self.fpn_out[levels.len()], &x)?);
            }
            if j == self.config.levels[2] {
                break;
            }
        }
        let (o1, o2, o3) = (&levels[0], &levels[1], &levels[2]);
        let s2 = E::shape(o2);
        let up = e.upsample_nearest(o3, s2.h, s2.w)?;
        let sum = e.add(o2, &up)?;
        let m2 = self.conv(e, p, &self.fpn_merge[1], &sum)?;
        let s1 = E::shape(o1);
        let up = e.upsample_nearest(&m2, s1.h, s1.w)?;
        let sum = e.add(o1, &up)?;
        let m1 = self.conv(e, p, &self.fpn_merge[0], &sum)?;
        let features = [self.ssh(e, p, 0, &m1)?, self.ssh(e, p, 1, &m2)?, self.ssh(e, p, 2, o3)?];
        let a = self.config.anchors_per_cell();
        let rows = features.iter().map(|f| E::shape(f).plane() * a).sum::<usize>();
        let mut outs = Vec::with_capacity(3);
        for (head, values) in self.heads.iter().zip([2, 4, 2 * LANDMARKS]) {
            let mut out = e.zeros(Shape::new(s.n, 1, rows, values))?;
            let mut offset = 0;
            for (layer, f) in head.iter().zip(&features) {
                let h = self.conv(e, p, layer, f)?;
                e.permute_head(&h, a, &mut out, offset)?;
                offset += E::shape(f).plane() * a;
            }
            outs.push(out);
        }
        let landmarks = outs.pop().expect("three heads");
        let boxes = outs.pop().expect("three heads");
        let logits = outs.pop().expect("three heads");
        Ok(FaceOutputs {
            logits,
            boxes,
            landmarks,
        })
    }

    /// The network's input for an RGB image (`3 * width * height` bytes, rows top to bottom):
    /// CHW in the config's channel order minus its mean, as the reference's `preprocess` (no
    /// resizing: the network runs at the image's size).
    pub fn input(&self, rgb: &[u8], width: usize, height: usize) -> Result<Vec<f32>> {
        check_image(rgb.len(), width, height)?;
        let mut out = vec![0.0f32; 3 * width * height];
        self.fill_input(rgb, &mut out);
        Ok(out)
    }

    /// [`RetinaFace::input`] into `out` (three planes of `rgb.len() / 3` values; the caller
    /// has checked the image).
    fn fill_input(&self, rgb: &[u8], out: &mut [f32]) {
        let plane = rgb.len() / 3;
        let order: [usize; 3] = if self.config.channel_order == "bgr" {
            [2, 1, 0]
        } else {
            [0, 1, 2]
        };
        for (c, &src) in order.iter().enumerate() {
            let mean = self.config.mean[c];
            for (o, p) in out[c * plane..(c + 1) * plane].iter_mut().zip(rgb.chunks_exact(3)) {
                *o = f32::from(p[src]) - mean;
            }
        }
    }

    /// The anchors of an image of `height x width` as `[cx, cy, w, h]` relative to the image
    /// size, in f64 as the reference computes them, in row order.
    pub fn anchors(&self, height: usize, width: usize) -> Vec<[f64; 4]> {
        let (w, h) = (width as f64, height as f64);
        let mut out = Vec::with_capacity(self.num_anchors(height, width));
        for (&stride, sizes) in self.config.strides.iter().zip(&self.config.anchor_sizes) {
            let s = stride as f64;
            for y in 0..height.div_ceil(stride) {
                for x in 0..width.div_ceil(stride) {
                    for &size in sizes {
                        out.push([
                            (x as f64 + 0.5) * s / w,
                            (y as f64 + 0.5) * s / h,
                            f64::from(size) / w,
                            f64::from(size) / h,
                        ]);
                    }
                }
            }
        }
        out
    }

    /// Faces from one image's rows of the network's outputs (`logits` 2, `boxes` 4 and
    /// `landmarks` 10 values per anchor row), as the reference's `postprocess`: softmax, boxes
    /// and landmarks decoded against the anchors, scores above the threshold, the best `top_k`,
    /// [`nms_boxes`]. Best first.
    pub fn faces(
        &self,
        height: usize,
        width: usize,
        logits: &[f32],
        boxes: &[f32],
        landmarks: &[f32],
        params: Params,
    ) -> Result<Vec<Face>> {
        Params::check(params.score_threshold, params.top_k, params.nms_threshold)?;
        let rows = self.num_anchors(height, width);
        if logits.len() != 2 * rows || boxes.len() != 4 * rows || landmarks.len() != 2 * LANDMARKS * rows {
            return Err(Error::shape(
                "retinaface faces",
                format!(
                    "{} logits, {} box and {} landmark values for {rows} anchors of a {width} x {height} image",
                    logits.len(),
                    boxes.len(),
                    landmarks.len()
                ),
            ));
        }
        let [vc, vs] = self.config.variances.map(f64::from);
        let (w, h) = (width as f64, height as f64);
        let mut candidates: Vec<(f32, usize)> = Vec::new();
        for (i, l) in logits.chunks_exact(2).enumerate() {
            let score = softmax2(l[0], l[1]);
            if score > params.score_threshold {
                candidates.push((score, i));
            }
        }
        // Best first; among equal scores the lower anchor first, as the GPU's sort (the
        // reference's numpy `argsort()[::-1]` orders ties by its sort kernel: no fixed rule).
        candidates.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        candidates.truncate(params.top_k);
        let anchors = self.anchors(height, width);
        let decoded: Vec<Face> = candidates
            .iter()
            .map(|&(score, i)| {
                let a = anchors[i];
                let d = &boxes[4 * i..4 * i + 4];
                // As the reference: each step rounded to f32 where it stores into its arrays.
                let cx = (a[0] + a[2] * f64::from(d[0]) * vc) as f32;
                let cy = (a[1] + a[3] * f64::from(d[1]) * vc) as f32;
                let bw = (a[2] * f64::from((d[2] * vs as f32).exp())) as f32;
                let bh = (a[3] * f64::from((d[3] * vs as f32).exp())) as f32;
                let x = cx - bw / 2.0;
                let y = cy - bh / 2.0;
                let (x, y, bw, bh) = (
                    (f64::from(x) * w) as f32,
                    (f64::from(y) * h) as f32,
                    (f64::from(bw) * w) as f32,
                    (f64::from(bh) * h) as f32,
                );
                let mut marks = [[0.0f32; 2]; LANDMARKS];
                for (p, m) in marks.iter_mut().enumerate() {
                    let lx = (a[0] + a[2] * f64::from(landmarks[10 * i + 2 * p]) * vc) as f32;
                    let ly = (a[1] + a[3] * f64::from(landmarks[10 * i + 2 * p + 1]) * vc) as f32;
                    *m = [(f64::from(lx) * w) as f32, (f64::from(ly) * h) as f32];
                }
                Face {
                    bbox: [x, y, x + bw, y + bh],
                    score,
                    landmarks: marks,
                }
            })
            .collect();
        let xywh: Vec<[f32; 4]> = decoded
            .iter()
            .map(|f| [f.bbox[0], f.bbox[1], f.bbox[2] - f.bbox[0], f.bbox[3] - f.bbox[1]])
            .collect();
        let scores: Vec<f32> = decoded.iter().map(|f| f.score).collect();
        let keep = nms_boxes(&xywh, &scores, params.score_threshold, params.nms_threshold);
        Ok(keep
            .into_iter()
            .map(|i| {
                let mut f = decoded[i];
                // The box as x, y, w, h was what the reference kept; its corners from those.
                f.bbox = [xywh[i][0], xywh[i][1], xywh[i][0] + xywh[i][2], xywh[i][1] + xywh[i][3]];
                f
            })
            .collect())
    }

    /// Faces in an RGB image on engine `e` with `params` (the network's tensors): preprocessing,
    /// the network, and [`RetinaFace::faces`] with the thresholds of `post`.
    pub fn detect<E: Engine>(
        &self,
        e: &mut E,
        params: &[E::Tensor],
        rgb: &[u8],
        width: usize,
        height: usize,
        post: Params,
    ) -> Result<Vec<Face>> {
        check_image(rgb.len(), width, height)?;
        let (logits, boxes, landmarks) = e.pass(|e| {
            let images = e.tensor_with(Shape::new(1, 3, height, width), |out| self.fill_input(rgb, out))?;
            let out = self.forward(e, params, &images)?;
            Ok::<_, crate::Error>((e.read(&out.logits)?, e.read(&out.boxes)?, e.read(&out.landmarks)?))
        })?;
        self.faces(height, width, &logits, &boxes, &landmarks, post)
    }

    /// The config's thresholds.
    pub fn default_params(&self) -> Params {
        Params {
            score_threshold: self.config.score_threshold,
            top_k: self.config.top_k,
            nms_threshold: self.config.nms_threshold,
        }
    }
}

fn parse_config(text: &[u8], source: &str) -> Result<RetinaFaceConfig> {
    serde_json::from_slice(text).map_err(|e| Error::format(source, format!("invalid RetinaFace configuration: {e}")))
}

fn check_image(bytes: usize, width: usize, height: usize) -> Result<()> {
    if width == 0 || height == 0 || width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE {
        return Err(Error::invalid(format!(
            "RetinaFace: an image of {width} x {height}; 1 to {MAX_IMAGE_SIDE} pixels a side are supported (resize larger photos first)"
        )));
    }
    if bytes != 3 * width * height {
        return Err(Error::invalid(format!(
            "RetinaFace: {bytes} bytes are not an RGB image of {width} x {height}"
        )));
    }
    Ok(())
}

/// The face probability of two class logits as ONNX's Softmax computes it: `exp(x - max)`
/// normalised.
fn softmax2(background: f32, face: f32) -> f32 {
    let m = background.max(face);
    let (a, b) = ((background - m).exp(), (face - m).exp());
    b / (a + b)
}

/// OpenCV's `cv2.dnn.NMSBoxes` for boxes `[x, y, w, h]` (its `Rect2d` overload, which Python's
/// float boxes take): candidates with a score above `score_threshold`, best first (a stable
/// sort: equal scores keep their order), each kept unless its overlap with a kept box, computed
/// in f64 as `|a ∩ b| / (|a| + |b| - |a ∩ b|)` and rounded to f32, exceeds `nms_threshold`.
/// Returns the kept indices, best first.
pub fn nms_boxes(boxes: &[[f32; 4]], scores: &[f32], score_threshold: f32, nms_threshold: f32) -> Vec<usize> {
    let mut order: Vec<usize> = (0..boxes.len().min(scores.len()))
        .filter(|&i| scores[i] > score_threshold)
        .collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut keep: Vec<usize> = Vec::new();
    for i in order {
        if keep.iter().all(|&k| overlap(&boxes[i], &boxes[k]) <= nms_threshold) {
            keep.push(i);
        }
    }
    keep
}

/// `1 - jaccardDistance(a, b)` of OpenCV for `Rect2d`s `[x, y, w, h]`.
fn overlap(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let [ax, ay, aw, ah] = a.map(f64::from);
    let [bx, by, bw, bh] = b.map(f64::from);
    let (area_a, area_b) = (aw * ah, bw * bh);
    if area_a + area_b <= 0.0 {
        return 0.0;
    }
    let x1 = ax.max(bx);
    let y1 = ay.max(by);
    let iw = (ax + aw).min(bx + bw) - x1;
    let ih = (ay + ah).min(by + bh) - y1;
    let inter = if iw <= 0.0 || ih <= 0.0 { 0.0 } else { iw * ih };
    1.0f32 - (1.0 - inter / (area_a + area_b - inter)) as f32
}
