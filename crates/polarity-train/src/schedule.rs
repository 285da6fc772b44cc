//! Linear warmup then linear decay to 0: Hugging Face's `get_linear_schedule_with_warmup`.
//!
//! burn 0.21 has a linear scheduler (one ramp, then constant) and a composer that combines
//! schedulers *concurrently* (sum, product, mean), but no warmup-then-decay sequence, so this module
//! implements one as a burn [`LrScheduler`].

use burn::lr_scheduler::LrScheduler;
use burn::optim::LearningRate;
use burn::tensor::backend::Backend;

/// HF's linear schedule with warmup, as a burn [`LrScheduler`].
///
/// The learning rate of optimiser step `s` (0-based) is `base * s / warmup` during the warmup and
/// `base * (total - s) / (total - warmup)` after it, never below 0. With a warmup, the very first step
/// therefore uses a learning rate of 0, exactly as in transformers.
///
/// ```
/// use burn::lr_scheduler::LrScheduler;
/// use polarity_train::LinearWarmupDecay;
///
/// let mut schedule = LinearWarmupDecay::new(1e-3, 2, 6);
/// let lrs: Vec<f64> = (0..7).map(|_| schedule.step()).collect();
/// let expected = [0.0, 5e-4, 1e-3, 7.5e-4, 5e-4, 2.5e-4, 0.0];
/// assert!(lrs.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-12));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinearWarmupDecay {
    base_lr: LearningRate,
    warmup_steps: usize,
    total_steps: usize,
    step: usize,
}

impl LinearWarmupDecay {
    /// A schedule peaking at `base_lr` after `warmup_steps`, reaching 0 at `total_steps`.
    pub fn new(base_lr: LearningRate, warmup_steps: usize, total_steps: usize) -> Self {
        Self { base_lr, warmup_steps, total_steps, step: 0 }
    }

    /// The learning rate of 0-based optimiser step `step`.
    pub fn lr_at(&self, step: usize) -> LearningRate {
        let factor = if step < self.warmup_steps {
            step as f64 / self.warmup_steps.max(1) as f64
        } else {
            let remaining = self.total_steps.saturating_sub(step) as f64;
            (remaining / self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64).max(0.0)
        };
        self.base_lr * factor
    }

    /// The number of steps taken so far (the 0-based index of the next step).
    pub fn current_step(&self) -> usize {
        self.step
    }

    /// The schedule positioned at 0-based step `step` (for resuming).
    pub fn at_step(mut self, step: usize) -> Self {
        self.step = step;
        self
    }

    /// The number of warmup steps.
    pub fn warmup_steps(&self) -> usize {
        self.warmup_steps
    }

    /// The total number of steps.
    pub fn total_steps(&self) -> usize {
        self.total_steps
    }
}

impl LrScheduler for LinearWarmupDecay {
    /// The step counter.
    type Record<B: Backend> = usize;

    fn step(&mut self) -> LearningRate {
        let lr = self.lr_at(self.step);
        self.step += 1;
        lr
    }

    fn to_record<B: Backend>(&self) -> Self::Record<B> {
        self.step
    }

    fn load_record<B: Backend>(self, record: Self::Record<B>) -> Self {
        self.at_step(record)
    }
}
