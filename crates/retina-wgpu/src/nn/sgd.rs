//! SGD with momentum and weight decay, a learning-rate schedule and gradient-norm clipping.

use crate::error::{Error, Result};

/// SGD with momentum and weight decay (PyTorch's semantics: `g = grad + wd * w`,
/// `v = momentum * v + g`, `w -= lr * v`), gradients first scaled so that their global L2 norm
/// is at most `max_grad_norm` (PyTorch's `clip_grad_norm_`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sgd {
    /// Momentum (0.9).
    pub momentum: f32,
    /// Weight decay (1e-4).
    pub weight_decay: f32,
    /// Clip the global gradient norm to this, if set.
    pub max_grad_norm: Option<f32>,
}

impl Default for Sgd {
    fn default() -> Self {
        Self {
            momentum: 0.9,
            weight_decay: 1e-4,
            max_grad_norm: None,
        }
    }
}

impl Sgd {
    /// Checks the ranges.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(Error::invalid(format!(
                "SGD momentum must be in [0, 1), got {}",
                self.momentum
            )));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(Error::invalid(format!(
                "SGD weight decay must be finite and >= 0, got {}",
                self.weight_decay
            )));
        }
        if let Some(m) = self.max_grad_norm
            && !(m > 0.0 && m.is_finite())
        {
            return Err(Error::invalid(format!(
                "the gradient-norm limit must be finite and > 0, got {m}"
            )));
        }
        Ok(())
    }

    /// Checks a step's learning rate: finite and >= 0 (a NaN or infinite rate would turn every
    /// parameter into NaN). Both engines' `sgd_step` call it.
    pub fn check_lr(lr: f32) -> Result<()> {
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(Error::invalid(format!(
                "SGD learning rate must be finite and >= 0, got {lr}"
            )));
        }
        Ok(())
    }
}

/// Learning rate by step: linear warmup from `base * warmup_factor` to `base` over
/// `warmup_steps`, then multiplied by `gamma` at each of `decay_steps` (Detectron's schedule).
#[derive(Clone, Debug, PartialEq)]
pub struct LrSchedule {
    /// The learning rate after warmup (0.01).
    pub base: f32,
    /// Steps of linear warmup.
    pub warmup_steps: usize,
    /// Fraction of `base` at step 0 of the warmup (1/3 in Detectron).
    pub warmup_factor: f32,
    /// Steps after which the rate is multiplied by `gamma`.
    pub decay_steps: Vec<usize>,
    /// The decay factor (0.1).
    pub gamma: f32,
}

impl LrSchedule {
    /// A constant rate.
    pub fn constant(base: f32) -> Self {
        Self {
            base,
            warmup_steps: 0,
            warmup_factor: 1.0,
            decay_steps: Vec::new(),
            gamma: 1.0,
        }
    }

    /// The learning rate at `step` (0-based).
    pub fn at(&self, step: usize) -> f32 {
        let warmup = if step < self.warmup_steps {
            let alpha = step as f32 / self.warmup_steps as f32;
            self.warmup_factor * (1.0 - alpha) + alpha
        } else {
            1.0
        };
        let decays = self.decay_steps.iter().filter(|&&s| step >= s).count();
        self.base * warmup * self.gamma.powi(decays as i32)
    }
}
