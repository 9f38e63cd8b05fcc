//! Parameter initialisation from a seeded generator, so both backends start from the same
//! weights (they are generated on the host and uploaded).

/// SplitMix64 with Box-Muller normals: small, fast, reproducible on every platform.
#[derive(Clone, Debug)]
pub struct SeededRng(u64);

impl SeededRng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A standard normal.
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// How a tensor of parameters starts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Normal with mean 0 and this standard deviation (RetinaNet's heads: 0.01).
    Normal(f32),
    /// He/Kaiming normal for layers followed by ReLU: std `sqrt(2 / fan_in)`.
    Kaiming {
        /// Inputs per output (`in_channels * kernel_h * kernel_w`).
        fan_in: usize,
    },
    /// Every value the same (biases: 0; the classification output: `-ln((1 - pi) / pi)`).
    Constant(f32),
}

impl Init {
    /// The bias of RetinaNet's classification output for a prior probability `pi` (0.01): every
    /// anchor starts as background with probability `1 - pi`, which keeps the focal loss stable
    /// in the first iterations.
    pub fn prior(pi: f32) -> Self {
        Init::Constant(-((1.0 - pi) / pi).ln())
    }

    /// `len` values from `rng`.
    pub fn values(&self, len: usize, rng: &mut SeededRng) -> Vec<f32> {
        match *self {
            Init::Normal(std) => (0..len).map(|_| (rng.normal() * f64::from(std)) as f32).collect(),
            Init::Kaiming { fan_in } => {
                let std = (2.0 / fan_in.max(1) as f64).sqrt();
                (0..len).map(|_| (rng.normal() * std) as f32).collect()
            }
            Init::Constant(v) => vec![v; len],
        }
    }
}
