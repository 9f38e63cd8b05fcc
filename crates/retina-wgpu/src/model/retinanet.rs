//! The small RetinaNet (docs/ARCHITECTURE.md), written once over [`Engine`]: backbone (five stages of a
//! stride-2 and a stride-1 3x3 convolution, GroupNorm and ReLU after each), FPN (1x1 laterals on
//! C3-C5, nearest x2 top-down additions, 3x3 outputs; P6 by a stride-2 convolution on C5, P7 on
//! ReLU(P6)) and the class and box heads shared over P3-P7, whose outputs are permuted into
//! anchor rows in the crate's anchor order (level, row, column, anchor).
//!
//! [`RetinaNet::forward`] keeps every activation the backward pass needs in a [`Tape`];
//! [`RetinaNet::backward`] takes the gradients of the two row tensors and returns the gradient of
//! every parameter, in [`RetinaNet::params`] order.

use serde::{Deserialize, Serialize};

use crate::coco::Category;
use crate::error::{Error, Result};
use crate::nn::{Conv2d, Engine, GroupNorm, Init, SeededRng, Shape};
use crate::ops::anchors::AnchorConfig;

/// The largest input side a [`RetinaNetConfig`] may ask for (4096 px): a config file downloaded
/// from elsewhere cannot make the network, or the letterboxing of its input, allocate without
/// bound.
pub const MAX_INPUT_SIZE: usize = 4096;
/// The most classes a [`RetinaNetConfig`] may have (10,000; COCO has 80, LVIS 1,203).
pub const MAX_CLASSES: usize = 10_000;
/// The most channels of any layer of a [`RetinaNetConfig`] (4096).
pub const MAX_CHANNELS: usize = 4096;
/// The most intermediate convolutions per head (16; the paper's 4).
pub const MAX_HEAD_CONVS: usize = 16;
/// The most parameters (scalars) a network may have: 2^30 (4 GiB of f32).
pub const MAX_PARAMETERS: usize = 1 << 30;

/// The network's shape: every number of the small RetinaNet (docs/ARCHITECTURE.md), configurable.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RetinaNetConfig {
    /// Square input side in pixels: a multiple of 32 (128).
    pub input_size: usize,
    /// Object classes `K` (4 for the synthetic shapes).
    pub num_classes: usize,
    /// Channels of the five backbone stages C1-C5 (16, 32, 64, 96, 128).
    pub backbone_channels: [usize; 5],
    /// FPN channels (64).
    pub fpn_channels: usize,
    /// Intermediate 3x3 convolutions per head (2; the paper's 4).
    pub head_convs: usize,
    /// Channels of the heads' intermediate convolutions (64; the paper's 256).
    pub head_channels: usize,
    /// GroupNorm after every backbone convolution and every intermediate head convolution
    /// (true); false gives the plain network.
    pub group_norm: bool,
    /// Prior probability of the class output's bias, `-ln((1 - pi) / pi)` (0.01).
    pub prior: f32,
    /// Base anchor size on P3 (16); doubles per level, 3 scales x 3 ratios.
    pub anchor_base: f32,
    /// The categories the classes stand for, in class order (COCO's ids and names); empty
    /// means ids 1..=K named `class 0`, `class 1`, ...
    pub categories: Vec<Category>,
}

impl Default for RetinaNetConfig {
    fn default() -> Self {
        Self {
            input_size: 128,
            num_classes: 4,
            backbone_channels: [16, 32, 64, 96, 128],
            fpn_channels: 64,
            head_convs: 2,
            head_channels: 64,
            group_norm: true,
            prior: 0.01,
            anchor_base: 16.0,
            categories: Vec::new(),
        }
    }
}

impl RetinaNetConfig {
    /// Checks the ranges, naming the field: `input_size` a positive multiple of 32 up to
    /// [`MAX_INPUT_SIZE`], `num_classes` in 1..=[`MAX_CLASSES`], every channel count in
    /// 1..=[`MAX_CHANNELS`], `head_convs` up to [`MAX_HEAD_CONVS`], a prior in (0, 1), a finite
    /// positive anchor base, and as many categories as classes (or none).
    pub fn validate(&self) -> Result<()> {
        if self.input_size == 0 || !self.input_size.is_multiple_of(32) || self.input_size > MAX_INPUT_SIZE {
            return Err(Error::invalid(format!(
                "RetinaNet input_size must be a positive multiple of 32 up to {MAX_INPUT_SIZE}, got {}",
                self.input_size
            )));
        }
        if self.num_classes == 0 || self.num_classes > MAX_CLASSES {
            return Err(Error::invalid(format!(
                "RetinaNet num_classes must be in 1..={MAX_CLASSES}, got {}",
                self.num_classes
            )));
        }
        for (field, c) in self.backbone_channels.iter().map(|c| ("backbone_channels", *c)).chain([
            ("fpn_channels", self.fpn_channels),
            ("head_channels", self.head_channels),
        ]) {
            if c == 0 || c > MAX_CHANNELS {
                return Err(Error::invalid(format!(
                    "RetinaNet {field} must each be in 1..={MAX_CHANNELS}, got {c}"
                )));
            }
        }
        if self.head_convs > MAX_HEAD_CONVS {
            return Err(Error::invalid(format!(
                "RetinaNet head_convs must be at most {MAX_HEAD_CONVS}, got {}",
                self.head_convs
            )));
        }
        if !(self.prior > 0.0 && self.prior < 1.0) {
            return Err(Error::invalid(format!(
                "RetinaNet prior must be in (0, 1), got {}",
                self.prior
            )));
        }
        if !(self.anchor_base > 0.0 && self.anchor_base.is_finite()) {
            return Err(Error::invalid(format!(
                "RetinaNet anchor_base must be finite and > 0, got {}",
                self.anchor_base
            )));
        }
        if !self.categories.is_empty() && self.categories.len() != self.num_classes {
            return Err(Error::invalid(format!(
                "RetinaNet has {} classes (num_classes) but {} categories",
                self.num_classes,
                self.categories.len()
            )));
        }
        if self.group_norm {
            for c in self.backbone_channels.iter().chain([&self.head_channels]) {
                GroupNorm::small_retinanet(*c).validate()?;
            }
        }
        Ok(())
    }

    /// The categories of the classes: [`RetinaNetConfig::categories`], or ids 1..=K named
    /// `class k` when it is empty.
    pub fn category_list(&self) -> Vec<Category> {
        if !self.categories.is_empty() {
            return self.categories.clone();
        }
        (0..self.num_classes)
            .map(|k| Category {
                id: k as i64 + 1,
                name: format!("class {k}"),
                supercategory: String::new(),
            })
            .collect()
    }

    /// The anchors: P3-P7 (strides 8-128), base sizes `anchor_base * 2^level`.
    pub fn anchors(&self) -> AnchorConfig {
        let mut anchors = AnchorConfig::small();
        anchors.sizes = (0..5).map(|l| self.anchor_base * (1u32 << l) as f32).collect();
        anchors
    }

    /// Anchors per cell `A` (9).
    pub fn anchors_per_cell(&self) -> usize {
        self.anchors().anchors_per_cell()
    }

    /// Anchor rows per image (3069 at 128 x 128); an error for an input size beyond `u32`.
    pub fn num_anchors(&self) -> Result<usize> {
        let s = self.input_side()?;
        self.anchors().num_anchors(s, s)
    }

    /// The input side as the anchors take it.
    fn input_side(&self) -> Result<u32> {
        u32::try_from(self.input_size)
            .map_err(|_| Error::invalid(format!("RetinaNet input size {} exceeds 2^32", self.input_size)))
    }
}

/// One parameter tensor: its name (PyTorch-style, the safetensors key), shape, initialisation
/// and whether weight decay applies (not to biases and GroupNorm parameters).
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    /// `backbone.2.conv1.weight`, `fpn.lateral3.bias`, `head.cls.output.bias`, ...
    pub name: String,
    /// Its shape (biases and GroupNorm parameters are `[1, C, 1, 1]`).
    pub shape: Shape,
    /// How it starts.
    pub init: Init,
    /// Weight decay applies.
    pub decay: bool,
}

/// A convolution, optionally followed by GroupNorm and ReLU, with the indices of its
/// parameters in [`RetinaNet::params`].
#[derive(Clone, Debug)]
struct Block {
    conv: Conv2d,
    weight: usize,
    bias: Option<usize>,
    norm: Option<(GroupNorm, usize, usize)>,
    relu: bool,
}

/// What a block's forward pass keeps for its backward pass.
struct BlockTape<T> {
    conv: T,
    /// GroupNorm's saved statistics and output: after the block's ReLU, when it has one
    /// ([`Engine::group_norm_relu`]).
    norm: Option<(T, T)>,
    /// The ReLU's output, in a block without GroupNorm.
    relu: Option<T>,
}

impl<T> BlockTape<T> {
    /// The block's output.
    fn out(&self) -> &T {
        self.relu
            .as_ref()
            .or(self.norm.as_ref().map(|(_, y)| y))
            .unwrap_or(&self.conv)
    }
}

/// The tapes of one pyramid level's class branch and box branch.
type HeadTapes<T> = (Vec<BlockTape<T>>, Vec<BlockTape<T>>);

/// Every activation of one forward pass that the backward pass needs, and the network's two
/// outputs as anchor rows.
pub struct Tape<T> {
    input: T,
    backbone: Vec<BlockTape<T>>,
    laterals: [BlockTape<T>; 3],
    /// The top-down sums M3 and M4 (M5 is lateral 5 itself).
    merged: [T; 2],
    outputs: [BlockTape<T>; 3],
    p6: BlockTape<T>,
    p6_relu: T,
    p7: BlockTape<T>,
    /// Per level: the class branch's blocks, then the box branch's.
    heads: Vec<HeadTapes<T>>,
    /// Class logits as anchor rows `[B, 1, R, K]`.
    pub class_rows: T,
    /// Box regression deltas as anchor rows `[B, 1, R, 4]`.
    pub box_rows: T,
}

/// The small RetinaNet: its configuration, parameter list and layer graph. The parameters live
/// outside, as engine tensors in [`RetinaNet::params`] order.
#[derive(Clone, Debug)]
pub struct RetinaNet {
    config: RetinaNetConfig,
    params: Vec<ParamSpec>,
    backbone: Vec<Block>,
    laterals: [Block; 3],
    outputs: [Block; 3],
    p6: Block,
    p7: Block,
    class_head: Vec<Block>,
    box_head: Vec<Block>,
    level_offsets: Vec<usize>,
}

/// Builds the parameter list while the layers are declared.
struct Builder {
    params: Vec<ParamSpec>,
    group_norm: bool,
}

impl Builder {
    fn param(&mut self, name: String, shape: Shape, init: Init, decay: bool) -> usize {
        self.params.push(ParamSpec {
            name,
            shape,
            init,
            decay,
        });
        self.params.len() - 1
    }

    /// A convolution named `name`; `norm` adds GroupNorm (when the config has it) and drops
    /// the convolution's bias, which GroupNorm would cancel.
    fn block(&mut self, name: &str, conv: Conv2d, init: Init, bias: Init, norm: bool, relu: bool) -> Block {
        let norm = norm && self.group_norm;
        let weight = self.param(format!("{name}.conv.weight"), conv.weight_shape(), init, true);
        let bias = (!norm).then(|| self.param(format!("{name}.conv.bias"), conv.bias_shape(), bias, false));
        let norm = norm.then(|| {
            let gn = GroupNorm::small_retinanet(conv.out_channels);
            let shape = conv.bias_shape();
            let gamma = self.param(format!("{name}.norm.weight"), shape, Init::Constant(1.0), false);
            let beta = self.param(format!("{name}.norm.bias"), shape, Init::Constant(0.0), false);
            (gn, gamma, beta)
        });
        Block {
            conv,
            weight,
            bias,
            norm,
            relu,
        }
    }
}

impl RetinaNet {
    /// The network of `config` (checked).
    pub fn new(config: RetinaNetConfig) -> Result<Self> {
        config.validate()?;
        let mut b = Builder {
            params: Vec::new(),
            group_norm: config.group_norm,
        };
        let kaiming = |conv: &Conv2d| Init::Kaiming { fan_in: conv.fan_in() };
        let zero = Init::Constant(0.0);
        let ch = config.backbone_channels;
        let mut backbone = Vec::new();
        let mut cin = 3;
        for (stage, &c) in ch.iter().enumerate() {
            for (i, stride) in [(1, 2), (2, 1)] {
                let conv = Conv2d::new(if i == 1 { cin } else { c }, c, 3, stride);
                let name = format!("backbone.{stage}.{}", if i == 1 { "down" } else { "conv" });
                backbone.push(b.block(&name, conv, kaiming(&conv), zero, true, true));
            }
            cin = c;
        }
        let f = config.fpn_channels;
        let laterals = [2, 3, 4].map(|s| {
            let conv = Conv2d::new(ch[s], f, 1, 1);
            b.block(
                &format!("fpn.lateral{}", s + 1),
                conv,
                kaiming(&conv),
                zero,
                false,
                false,
            )
        });
        let outputs = [3, 4, 5].map(|l| {
            let conv = Conv2d::new(f, f, 3, 1);
            b.block(&format!("fpn.output{l}"), conv, kaiming(&conv), zero, false, false)
        });
        let p6 = Conv2d::new(ch[4], f, 3, 2);
        let p6 = b.block("fpn.p6", p6, kaiming(&p6), zero, false, false);
        let p7 = Conv2d::new(f, f, 3, 2);
        let p7 = b.block("fpn.p7", p7, kaiming(&p7), zero, false, false);
        let a = config.anchors_per_cell();
        let mut head = |branch: &str, outputs: usize, bias: Init| {
            let mut blocks = Vec::new();
            let mut cin = f;
            for i in 0..config.head_convs {
                let conv = Conv2d::new(cin, config.head_channels, 3, 1);
                blocks.push(b.block(
                    &format!("head.{branch}.{i}"),
                    conv,
                    Init::Normal(0.01),
                    zero,
                    true,
                    true,
                ));
                cin = config.head_channels;
            }
            let conv = Conv2d::new(cin, outputs, 3, 1);
            blocks.push(b.block(
                &format!("head.{branch}.output"),
                conv,
                Init::Normal(0.01),
                bias,
                false,
                false,
            ));
            blocks
        };
        let class_head = head("cls", a * config.num_classes, Init::prior(config.prior));
        let box_head = head("box", a * 4, zero);
        let scalars: usize = b.params.iter().map(|p| p.shape.len()).sum();
        if scalars > MAX_PARAMETERS {
            return Err(Error::invalid(format!(
                "RetinaNet: this configuration has {scalars} parameters, more than the limit of {MAX_PARAMETERS}"
            )));
        }
        let s = config.input_side()?;
        let level_offsets = config.anchors().level_offsets(s, s)?;
        Ok(Self {
            config,
            params: b.params,
            backbone,
            laterals,
            outputs,
            p6,
            p7,
            class_head,
            box_head,
            level_offsets,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &RetinaNetConfig {
        &self.config
    }

    /// Every parameter, in the order [`RetinaNet::forward`] and [`RetinaNet::backward`] use.
    pub fn params(&self) -> &[ParamSpec] {
        &self.params
    }

    /// Parameter count (scalars).
    pub fn num_scalars(&self) -> usize {
        self.params.iter().map(|p| p.shape.len()).sum()
    }

    /// Freshly initialised parameters from `seed` (host values, in [`RetinaNet::params`] order).
    pub fn init(&self, seed: u64) -> Vec<Vec<f32>> {
        let mut rng = SeededRng::new(seed);
        self.params
            .iter()
            .map(|p| p.init.values(p.shape.len(), &mut rng))
            .collect()
    }

    /// `values` (in [`RetinaNet::params`] order, e.g. [`RetinaNet::init`] or a checkpoint's) as
    /// tensors of `engine`, each checked against its parameter's shape.
    pub fn upload<E: Engine>(&self, engine: &mut E, values: &[Vec<f32>]) -> Result<Vec<E::Tensor>> {
        if values.len() != self.params.len() {
            return Err(Error::shape(
                "RetinaNet",
                format!(
                    "{} parameter tensors for a network of {}",
                    values.len(),
                    self.params.len()
                ),
            ));
        }
        let mut tensors = self.packed_zeros(engine)?;
        for ((t, p), v) in tensors.iter_mut().zip(&self.params).zip(values) {
            if v.len() != p.shape.len() {
                return Err(Error::shape(
                    "RetinaNet",
                    format!("{} values for parameter {} of {}", v.len(), p.name, p.shape),
                ));
            }
            engine.write(t, v)?;
        }
        Ok(tensors)
    }

    /// Index of the first anchor row of each level, and the total at the end.
    pub fn level_offsets(&self) -> &[usize] {
        &self.level_offsets
    }

    fn check_params<T>(&self, params: &[T], shape_of: impl Fn(&T) -> Shape) -> Result<()> {
        if params.len() != self.params.len() {
            return Err(Error::shape(
                "RetinaNet",
                format!(
                    "{} parameter tensors given, the network has {}",
                    params.len(),
                    self.params.len()
                ),
            ));
        }
        for (p, spec) in params.iter().zip(&self.params) {
            if shape_of(p) != spec.shape {
                return Err(Error::shape(
                    "RetinaNet",
                    format!("parameter {} is {}, expected {}", spec.name, shape_of(p), spec.shape),
                ));
            }
        }
        Ok(())
    }

    fn block_forward<E: Engine>(
        e: &mut E,
        b: &Block,
        params: &[E::Tensor],
        x: &E::Tensor,
    ) -> Result<BlockTape<E::Tensor>> {
        let conv = e.conv2d(&b.conv, x, &params[b.weight], b.bias.map(|i| &params[i]))?;
        let norm = match b.norm {
            Some((gn, gamma, beta)) => {
                let (gamma, beta) = (&params[gamma], &params[beta]);
                let out = if b.relu {
                    e.group_norm_relu(&gn, &conv, gamma, beta)?
                } else {
                    e.group_norm(&gn, &conv, gamma, beta)?
                };
                Some((out.stats, out.y))
            }
            None => None,
        };
        let relu = match &norm {
            None if b.relu => Some(e.relu(&conv)?),
            _ => None,
        };
        Ok(BlockTape { conv, norm, relu })
    }

    /// Backward through one block: adds its parameters' gradients into `grads` and returns the
    /// gradient of its input when asked.
    fn block_backward<E: Engine>(
        e: &mut E,
        b: &Block,
        params: &[E::Tensor],
        (x, tape): (&E::Tensor, &BlockTape<E::Tensor>),
        grad_out: E::Tensor,
        input_grad: bool,
        grads: &mut [E::Tensor],
    ) -> Result<Option<E::Tensor>> {
        let mut g = grad_out;
        if let (Some((gn, gamma, beta)), Some((stats, y))) = (b.norm, &tape.norm) {
            let [dgamma, dbeta] = grads
                .get_disjoint_mut([gamma, beta])
                .map_err(|_| Error::invalid("RetinaNet: a GroupNorm's gamma and beta are one parameter"))?;
            let relu_out = b.relu.then_some(y);
            g = e.group_norm_backward_acc(&gn, &tape.conv, &params[gamma], stats, relu_out, &g, dgamma, dbeta)?;
        } else if b.relu {
            g = e.relu_backward(&tape.conv, &g)?;
        }
        let (dw, db) = match b.bias {
            Some(bias) => {
                let [dw, db] = grads
                    .get_disjoint_mut([b.weight, bias])
                    .map_err(|_| Error::invalid("RetinaNet: a convolution's weight and bias are one parameter"))?;
                (dw, Some(db))
            }
            None => (&mut grads[b.weight], None),
        };
        e.conv2d_backward_acc(&b.conv, x, &params[b.weight], &g, input_grad, dw, db)
    }

    /// The forward pass of a batch `[B, 3, S, S]` with `params` in [`RetinaNet::params`] order.
    pub fn forward<E: Engine>(&self, e: &mut E, params: &[E::Tensor], images: E::Tensor) -> Result<Tape<E::Tensor>> {
        self.check_params(params, E::shape)?;
        let s = self.config.input_size;
        let shape = E::shape(&images);
        if shape.c != 3 || shape.h != s || shape.w != s || shape.n == 0 {
            return Err(Error::shape(
                "RetinaNet",
                format!("input {shape}: expected [B >= 1, 3, {s}, {s}]"),
            ));
        }
        let batch = shape.n;
        let mut backbone: Vec<BlockTape<E::Tensor>> = Vec::with_capacity(self.backbone.len());
        for b in &self.backbone {
            let x = backbone.last().map_or(&images, |t| t.out());
            let t = Self::block_forward(e, b, params, x)?;
            backbone.push(t);
        }
        // C3, C4, C5: the outputs of stages 3-5 (blocks 5, 7, 9).
        let c = |i: usize| backbone[2 * i + 1].out();
        let laterals = [
            Self::block_forward(e, &self.laterals[0], params, c(2))?,
            Self::block_forward(e, &self.laterals[1], params, c(3))?,
            Self::block_forward(e, &self.laterals[2], params, c(4))?,
        ];
        // Top-down: m5 = l5, m4 = l4 + up(m5), m3 = l3 + up(m4).
        let up = |e: &mut E, x: &E::Tensor, to: &E::Tensor| {
            let s = E::shape(to);
            e.upsample_nearest(x, s.h, s.w)
        };
        let up5 = up(e, laterals[2].out(), laterals[1].out())?;
        let m4 = e.add(laterals[1].out(), &up5)?;
        let up4 = up(e, &m4, laterals[0].out())?;
        let m3 = e.add(laterals[0].out(), &up4)?;
        let outputs = [
            Self::block_forward(e, &self.outputs[0], params, &m3)?,
            Self::block_forward(e, &self.outputs[1], params, &m4)?,
            Self::block_forward(e, &self.outputs[2], params, laterals[2].out())?,
        ];
        let p6 = Self::block_forward(e, &self.p6, params, c(4))?;
        let p6_relu = e.relu(p6.out())?;
        let p7 = Self::block_forward(e, &self.p7, params, &p6_relu)?;

        let a = self.config.anchors_per_cell();
        let rows = self.config.num_anchors()?;
        let k = self.config.num_classes;
        let mut class_rows = e.zeros(Shape::new(batch, 1, rows, k))?;
        let mut box_rows = e.zeros(Shape::new(batch, 1, rows, 4))?;
        let mut heads = Vec::with_capacity(5);
        let levels = [outputs[0].out(), outputs[1].out(), outputs[2].out(), p6.out(), p7.out()];
        for (level, p) in levels.into_iter().enumerate() {
            let expected = self.level_offsets[level + 1] - self.level_offsets[level];
            let cells = E::shape(p).plane() * a;
            if cells != expected {
                return Err(Error::shape(
                    "RetinaNet",
                    format!("level P{} has {cells} anchors, the anchor grid {expected}", level + 3),
                ));
            }
            let mut branch = |blocks: &[Block], rows_out: &mut E::Tensor| -> Result<Vec<BlockTape<E::Tensor>>> {
                let mut tapes: Vec<BlockTape<E::Tensor>> = Vec::with_capacity(blocks.len());
                for b in blocks {
                    let x = tapes.last().map_or(p, |t| t.out());
                    let t = Self::block_forward(e, b, params, x)?;
                    tapes.push(t);
                }
                let out = tapes.last().expect("a head has an output convolution").out();
                e.permute_head(out, a, rows_out, self.level_offsets[level])?;
                Ok(tapes)
            };
            let cls = branch(&self.class_head, &mut class_rows)?;
            let bx = branch(&self.box_head, &mut box_rows)?;
            heads.push((cls, bx));
        }
        Ok(Tape {
            input: images,
            backbone,
            laterals,
            merged: [m3, m4],
            outputs,
            p6,
            p6_relu,
            p7,
            heads,
            class_rows,
            box_rows,
        })
    }

    /// The backward pass: from the gradients of the class and box rows to the gradient of
    /// every parameter, in [`RetinaNet::params`] order ([`RetinaNet::backward_into`] into
    /// [`RetinaNet::packed_zeros`]).
    pub fn backward<E: Engine>(
        &self,
        e: &mut E,
        params: &[E::Tensor],
        tape: &Tape<E::Tensor>,
        class_grad: &E::Tensor,
        box_grad: &E::Tensor,
    ) -> Result<Vec<E::Tensor>> {
        let mut grads = self.packed_zeros(e)?;
        self.backward_into(e, params, tape, class_grad, box_grad, &mut grads)?;
        Ok(grads)
    }

    /// The backward pass adding every parameter's gradient into `grads` (in
    /// [`RetinaNet::params`] order, usually zero-filled by [`RetinaNet::packed_zeros`]): the
    /// heads' layers, shared by the five levels, sum their gradients in place, level by level.
    pub fn backward_into<E: Engine>(
        &self,
        e: &mut E,
        params: &[E::Tensor],
        tape: &Tape<E::Tensor>,
        class_grad: &E::Tensor,
        box_grad: &E::Tensor,
        grads: &mut [E::Tensor],
    ) -> Result<()> {
        self.check_params(params, E::shape)?;
        self.check_params(grads, E::shape)?;
        for (what, g, t) in [
            ("class", class_grad, &tape.class_rows),
            ("box", box_grad, &tape.box_rows),
        ] {
            if E::shape(g) != E::shape(t) {
                return Err(Error::shape(
                    "RetinaNet backward",
                    format!("{what} row gradient is {}, the rows are {}", E::shape(g), E::shape(t)),
                ));
            }
        }
        let [d3, d4, d5, d6, d7] = self.heads_backward(e, params, tape, class_grad, box_grad, grads)?;
        let dc = self.fpn_backward(e, params, tape, [d3, d4, d5, d6, d7], grads)?;
        self.backbone_backward(e, params, tape, dc, grads)
    }

    /// Zero-filled tensors of every parameter's shape, in [`RetinaNet::params`] order, packed
    /// ([`Engine::zeros_packed`]) with the weight-decayed parameters first: the layout the
    /// trainer gives the parameters, their gradients and their momentum alike, so that on the
    /// GPU one SGD step is one dispatch per group (decayed or not) instead of one per tensor.
    pub fn packed_zeros<E: Engine>(&self, e: &mut E) -> Result<Vec<E::Tensor>> {
        let mut order: Vec<usize> = (0..self.params.len()).collect();
        order.sort_by_key(|&i| !self.params[i].decay);
        let shapes: Vec<Shape> = order.iter().map(|&i| self.params[i].shape).collect();
        let mut slots: Vec<Option<E::Tensor>> = (0..self.params.len()).map(|_| None).collect();
        for (i, t) in order.into_iter().zip(e.zeros_packed(&shapes)?) {
            slots[i] = Some(t);
        }
        slots
            .into_iter()
            .map(|t| t.ok_or_else(|| Error::invalid("Engine::zeros_packed returned too few tensors")))
            .collect()
    }

    /// [`RetinaNet::block_backward`] of a block whose input gradient is wanted.
    fn through<E: Engine>(
        e: &mut E,
        b: &Block,
        params: &[E::Tensor],
        input: (&E::Tensor, &BlockTape<E::Tensor>),
        grad_out: E::Tensor,
        grads: &mut [E::Tensor],
    ) -> Result<E::Tensor> {
        Ok(Self::block_backward(e, b, params, input, grad_out, true, grads)?.expect("input gradient was asked for"))
    }

    /// The heads, level by level: the gradient of each pyramid level (P3-P7) from both branches.
    fn heads_backward<E: Engine>(
        &self,
        e: &mut E,
        params: &[E::Tensor],
        tape: &Tape<E::Tensor>,
        class_grad: &E::Tensor,
        box_grad: &E::Tensor,
        grads: &mut [E::Tensor],
    ) -> Result<[E::Tensor; 5]> {
        let a = self.config.anchors_per_cell();
        let levels = [
            tape.outputs[0].out(),
            tape.outputs[1].out(),
            tape.outputs[2].out(),
            tape.p6.out(),
            tape.p7.out(),
        ];
        let mut level_grads: Vec<E::Tensor> = Vec::with_capacity(5);
        for (level, (p, (cls, bx))) in levels.into_iter().zip(&tape.heads).enumerate() {
            let mut total: Option<E::Tensor> = None;
            for (blocks, tapes, rows) in [(&self.class_head, cls, class_grad), (&self.box_head, bx, box_grad)] {
                let out_shape = E::shape(tapes.last().expect("a head has an output").out());
                let mut g = e.permute_head_backward(rows, a, self.level_offsets[level], out_shape)?;
                for i in (0..blocks.len()).rev() {
                    let x = if i == 0 { p } else { tapes[i - 1].out() };
                    g = Self::through(e, &blocks[i], params, (x, &tapes[i]), g, grads)?;
                }
                match &mut total {
                    Some(t) => e.accumulate(t, &g)?,
                    None => total = Some(g),
                }
            }
            level_grads.push(total.expect("two branches"));
        }
        let Ok(levels) = <[E::Tensor; 5]>::try_from(level_grads) else {
            unreachable!("the tape holds the heads of five levels");
        };
        Ok(levels)
    }

    /// P7 and P6 back to C5, the FPN outputs back to the merged maps, top-down in reverse, and
    /// the laterals: the gradients of C3, C4 and C5.
    fn fpn_backward<E: Engine>(
        &self,
        e: &mut E,
        params: &[E::Tensor],
        tape: &Tape<E::Tensor>,
        [d3, d4, d5, mut d6, d7]: [E::Tensor; 5],
        grads: &mut [E::Tensor],
    ) -> Result<[E::Tensor; 3]> {
        let c = |i: usize| tape.backbone[2 * i + 1].out();
        let d_p6_relu = Self::through(e, &self.p7, params, (&tape.p6_relu, &tape.p7), d7, grads)?;
        let through_relu = e.relu_backward(tape.p6.out(), &d_p6_relu)?;
        e.accumulate(&mut d6, &through_relu)?;
        let mut dc5 = Self::through(e, &self.p6, params, (c(4), &tape.p6), d6, grads)?;

        let [m3, m4] = &tape.merged;
        let dm3 = Self::through(e, &self.outputs[0], params, (m3, &tape.outputs[0]), d3, grads)?;
        let mut dm4 = Self::through(e, &self.outputs[1], params, (m4, &tape.outputs[1]), d4, grads)?;
        let l5 = tape.laterals[2].out();
        let mut dm5 = Self::through(e, &self.outputs[2], params, (l5, &tape.outputs[2]), d5, grads)?;
        let s4 = E::shape(m4);
        let up = e.upsample_nearest_backward(&dm3, s4.h, s4.w)?;
        e.accumulate(&mut dm4, &up)?;
        let s5 = E::shape(l5);
        let up = e.upsample_nearest_backward(&dm4, s5.h, s5.w)?;
        e.accumulate(&mut dm5, &up)?;
        let dc3 = Self::through(e, &self.laterals[0], params, (c(2), &tape.laterals[0]), dm3, grads)?;
        let dc4 = Self::through(e, &self.laterals[1], params, (c(3), &tape.laterals[1]), dm4, grads)?;
        let dl5 = Self::through(e, &self.laterals[2], params, (c(4), &tape.laterals[2]), dm5, grads)?;
        e.accumulate(&mut dc5, &dl5)?;
        Ok([dc3, dc4, dc5])
    }

    /// The backbone, last block first, from C5's gradient; C3 and C4 receive the laterals'.
    fn backbone_backward<E: Engine>(
        &self,
        e: &mut E,
        params: &[E::Tensor],
        tape: &Tape<E::Tensor>,
        [dc3, dc4, dc5]: [E::Tensor; 3],
        grads: &mut [E::Tensor],
    ) -> Result<()> {
        let mut extra = [None, None, Some(dc3), Some(dc4)];
        let mut g = dc5;
        for i in (0..self.backbone.len()).rev() {
            let x = if i == 0 {
                &tape.input
            } else {
                tape.backbone[i - 1].out()
            };
            let first = i == 0;
            match Self::block_backward(e, &self.backbone[i], params, (x, &tape.backbone[i]), g, !first, grads)? {
                Some(next) => g = next,
                None => break,
            }
            // Block i - 1 is the output of stage (i - 1) / 2 when i - 1 is odd.
            if i >= 2 && (i - 1) % 2 == 1 {
                let stage = (i - 1) / 2;
                if let Some(d) = extra.get_mut(stage).and_then(Option::take) {
                    e.accumulate(&mut g, &d)?;
                }
            }
        }
        Ok(())
    }
}
