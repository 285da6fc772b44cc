//! Dynamic loss scaling for f16 mixed precision (PyTorch's `torch.amp.GradScaler`).
//!
//! f16 cannot represent magnitudes below ~6e-8 (or normal numbers below 6e-5), so many gradients of a
//! transformer's half-precision products would flush to zero. The loss is multiplied by a large
//! scale before the backward pass, and the gradients divided by it before the optimiser step. When a
//! step's scaled gradients overflow (inf/NaN) the step is skipped and the scale halved; after
//! `growth_interval` finite steps in a row it doubles again, so it settles just below overflow.

use serde::{Deserialize, Serialize};

/// The scale and its bookkeeping; saved in checkpoints so that a resumed run continues with it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    scale: f64,
    growth_factor: f64,
    backoff_factor: f64,
    growth_interval: usize,
    finite_steps_in_a_row: usize,
    skipped_steps: usize,
}

impl LossScaler {
    /// A scaler starting at `scale` that doubles after `growth_interval` finite steps.
    ///
    /// ```
    /// use polarity_train::LossScaler;
    ///
    /// let mut scaler = LossScaler::new(1024.0, 2);
    /// assert!(!scaler.update(false)); // overflow: skip the step, halve the scale
    /// assert_eq!(scaler.scale(), 512.0);
    /// assert!(scaler.update(true) && scaler.update(true)); // two finite steps: double it
    /// assert_eq!(scaler.scale(), 1024.0);
    /// assert_eq!(scaler.skipped_steps(), 1);
    /// ```
    pub fn new(scale: f64, growth_interval: usize) -> Self {
        Self {
            scale,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: growth_interval.max(1),
            finite_steps_in_a_row: 0,
            skipped_steps: 0,
        }
    }

    /// The factor the loss is multiplied by (and the gradients divided by).
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Optimiser steps skipped so far because their gradients overflowed.
    pub fn skipped_steps(&self) -> usize {
        self.skipped_steps
    }

    /// Records whether a step's scaled gradients were all finite and returns whether the optimiser
    /// may apply it: on overflow the step is skipped and the scale backs off, otherwise the scale
    /// grows after `growth_interval` finite steps in a row.
    pub fn update(&mut self, finite: bool) -> bool {
        if finite {
            self.finite_steps_in_a_row += 1;
            if self.finite_steps_in_a_row >= self.growth_interval {
                self.scale *= self.growth_factor;
                self.finite_steps_in_a_row = 0;
            }
        } else {
            // Never below the smallest normal f32, so the unscaled gradients stay representable.
            self.scale = (self.scale * self.backoff_factor).max(f64::from(f32::MIN_POSITIVE));
            self.finite_steps_in_a_row = 0;
            self.skipped_steps += 1;
        }
        finite
    }
}
