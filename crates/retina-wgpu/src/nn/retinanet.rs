//! The convolutions of the small RetinaNet (docs/ARCHITECTURE.md; every number configurable), as a list:
//! what `retina bench conv` measures.

use crate::error::Result;
use crate::nn::{Conv2d, Shape};

/// One convolution of the network, applied `count` times per training step at `input`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvUse {
    /// Where it sits ("backbone C1", "FPN P3 output", "class head", ...).
    pub name: &'static str,
    /// The convolution.
    pub conv: Conv2d,
    /// Its input.
    pub input: Shape,
    /// Times it runs per step (heads run once per pyramid level and share weights).
    pub count: usize,
}

/// The small RetinaNet's convolutions for a batch of `batch` images of `size x size`, with
/// `anchors` anchors per cell and `classes` classes: backbone (five stages of a stride-2 and a
/// stride-1 3x3 convolution, 16-128 channels), FPN (64 channels: 1x1 laterals on C3-C5, 3x3
/// outputs, P6 and P7 by stride-2 convolutions) and the two heads on P3-P7.
pub fn small_retinanet_convs(batch: usize, size: usize, anchors: usize, classes: usize) -> Vec<ConvUse> {
    let mut out = Vec::new();
    let channels = [3, 16, 32, 64, 96, 128];
    let names = [
        "backbone C1",
        "backbone C2",
        "backbone C3",
        "backbone C4",
        "backbone C5",
    ];
    let mut s = size;
    let mut sizes = Vec::new();
    for stage in 0..5 {
        let (cin, cout) = (channels[stage], channels[stage + 1]);
        out.push(ConvUse {
            name: names[stage],
            conv: Conv2d::new(cin, cout, 3, 2),
            input: Shape::new(batch, cin, s, s),
            count: 1,
        });
        s = s.div_ceil(2);
        out.push(ConvUse {
            name: names[stage],
            conv: Conv2d::new(cout, cout, 3, 1),
            input: Shape::new(batch, cout, s, s),
            count: 1,
        });
        sizes.push(s);
    }
    // C3, C4, C5 are the outputs of stages 3-5.
    let (c3, c4, c5) = (sizes[2], sizes[3], sizes[4]);
    for (name, cin, at) in [
        ("FPN lateral C3", 64, c3),
        ("FPN lateral C4", 96, c4),
        ("FPN lateral C5", 128, c5),
    ] {
        out.push(ConvUse {
            name,
            conv: Conv2d::new(cin, 64, 1, 1),
            input: Shape::new(batch, cin, at, at),
            count: 1,
        });
    }
    for (name, at) in [("FPN P3 output", c3), ("FPN P4 output", c4), ("FPN P5 output", c5)] {
        out.push(ConvUse {
            name,
            conv: Conv2d::new(64, 64, 3, 1),
            input: Shape::new(batch, 64, at, at),
            count: 1,
        });
    }
    let p6 = c5.div_ceil(2);
    out.push(ConvUse {
        name: "FPN P6",
        conv: Conv2d::new(128, 64, 3, 2),
        input: Shape::new(batch, 128, c5, c5),
        count: 1,
    });
    out.push(ConvUse {
        name: "FPN P7",
        conv: Conv2d::new(64, 64, 3, 2),
        input: Shape::new(batch, 64, p6, p6),
        count: 1,
    });
    let levels = [c3, c4, c5, p6, p6.div_ceil(2)];
    for at in levels {
        let input = Shape::new(batch, 64, at, at);
        out.push(ConvUse {
            name: "heads 64->64 (x4)",
            conv: Conv2d::new(64, 64, 3, 1),
            input,
            count: 4,
        });
        out.push(ConvUse {
            name: "class head output",
            // Saturating: an impossible width is refused by `Conv2d::output_shape`.
            conv: Conv2d::new(64, anchors.saturating_mul(classes), 3, 1),
            input,
            count: 1,
        });
        out.push(ConvUse {
            name: "box head output",
            conv: Conv2d::new(64, anchors.saturating_mul(4), 3, 1),
            input,
            count: 1,
        });
    }
    out
}

/// A matrix product `M x K` times `K x N`: one of the implicit GEMMs a convolution runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GemmShape {
    /// Rows of the product.
    pub m: usize,
    /// The reduced dimension.
    pub k: usize,
    /// Columns of the product.
    pub n: usize,
}

impl GemmShape {
    /// The benchmark's name for it: `gemm[MxKxN]`.
    pub fn op(&self) -> String {
        format!("gemm[{}x{}x{}]", self.m, self.k, self.n)
    }

    /// Multiply-adds x 2.
    pub fn flops(&self) -> u64 {
        2 * self.m as u64 * self.k as u64 * self.n as u64
    }
}

/// The distinct implicit GEMMs of `convs` (sorted): per convolution, the forward pass
/// (out channels x fan-in x output pixels of the batch), the weight gradient (out channels x
/// output pixels x fan-in) and the input gradient (in channels x out channels * kernel area x
/// input pixels), as the GPU's convolution runs them for stride 1. (A strided convolution's
/// input gradient runs as `stride^2` smaller GEMMs, one per phase of the input, each over the
/// taps that reach it; the shape listed is their union, an upper bound.) What `retina bench
/// gemm` times as plain matrix products, the kernels' speed apart from the convolution's index
/// arithmetic.
pub fn gemm_shapes(convs: &[ConvUse]) -> Result<Vec<GemmShape>> {
    let mut out = Vec::new();
    for u in convs {
        let c = u.conv;
        let y = c.output_shape(u.input)?;
        let kernel_area = c.kernel.0 * c.kernel.1;
        out.push(GemmShape {
            m: c.out_channels,
            k: c.fan_in(),
            n: y.n * y.plane(),
        });
        out.push(GemmShape {
            m: c.out_channels,
            k: y.n * y.plane(),
            n: c.fan_in(),
        });
        out.push(GemmShape {
            m: c.in_channels,
            k: c.out_channels * kernel_area,
            n: u.input.n * u.input.plane(),
        });
    }
    out.sort();
    out.dedup();
    Ok(out)
}
