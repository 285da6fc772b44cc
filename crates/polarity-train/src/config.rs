//! The trainer's settings, with Hugging Face `TrainingArguments`' names and defaults where they exist.

use std::path::PathBuf;

use polarity_core::Precision;
use polarity_tokenize::{BatchOrder, InOrder, LengthBucketed, Shuffled, TokenizeError};
use serde::{Deserialize, Serialize};

use crate::TrainError;

/// The largest [`TrainerConfig::batch_size`] and [`TrainerConfig::eval_batch_size`] accepted (2^20 examples).
pub const MAX_BATCH_SIZE: usize = 1 << 20;
/// The largest [`TrainerConfig::grad_accum`] accepted (2^20 micro-batches).
pub const MAX_GRAD_ACCUM: usize = 1 << 20;
/// The largest [`TrainerConfig::epochs`] accepted.
pub const MAX_EPOCHS: usize = 1_000_000;
/// The largest [`TrainOrder::LengthBucketed`] `chunk_batches` accepted (2^20).
pub const MAX_CHUNK_BATCHES: usize = 1 << 20;

/// How long the learning rate warms up linearly from 0 (HF `warmup_steps` / `warmup_ratio`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Warmup {
    /// A fixed number of optimiser steps.
    Steps(usize),
    /// A fraction of all optimiser steps, rounded up (`ceil(total * ratio)`, as HF's `get_warmup_steps`).
    Ratio(f64),
}

impl Warmup {
    /// The number of warmup steps in a run of `total_steps` optimiser steps (at most `total_steps`).
    ///
    /// ```
    /// use polarity_train::Warmup;
    /// assert_eq!(Warmup::Ratio(0.1).steps(125), 13);
    /// assert_eq!(Warmup::Steps(500).steps(125), 125);
    /// ```
    pub fn steps(self, total_steps: usize) -> usize {
        let steps = match self {
            Warmup::Steps(steps) => steps,
            Warmup::Ratio(ratio) => (total_steps as f64 * ratio).ceil() as usize,
        };
        steps.min(total_steps)
    }
}

/// Which examples form each training batch, per epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainOrder {
    /// [`LengthBucketed`] with the epoch's seed: little padding, random enough for SGD (the default).
    LengthBucketed {
        /// Batches per length-sorted chunk.
        chunk_batches: usize,
    },
    /// A plain seeded shuffle every epoch ([`Shuffled`]).
    Shuffled,
    /// The given order every epoch ([`InOrder`]); for tests and ablations.
    InOrder,
}

impl Default for TrainOrder {
    fn default() -> Self {
        TrainOrder::LengthBucketed { chunk_batches: 50 }
    }
}

impl TrainOrder {
    /// The batches (indices into `lengths`) of 0-based `epoch` in a run seeded with `seed`.
    ///
    /// The order is a pure function of `(seed, epoch)`, which is what lets a resumed run continue
    /// mid-epoch with exactly the batches an uninterrupted one would have seen.
    pub fn batches(
        self,
        lengths: &[usize],
        batch_size: usize,
        seed: u64,
        epoch: usize,
    ) -> Result<Vec<Vec<usize>>, TokenizeError> {
        let seed = seed.wrapping_add(epoch as u64);
        match self {
            TrainOrder::LengthBucketed { chunk_batches } => {
                LengthBucketed { seed, chunk_batches }.batches(lengths, batch_size)
            }
            TrainOrder::Shuffled => Shuffled { seed }.batches(lengths, batch_size),
            TrainOrder::InOrder => InOrder.batches(lengths, batch_size),
        }
    }
}

/// The evaluation metric that picks the best epoch (HF `metric_for_best_model`, greater is better).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BestMetric {
    /// Accuracy on the evaluation set.
    Accuracy,
    /// Macro-averaged F1 on the evaluation set.
    MacroF1,
}

/// Where and how often to write resumable checkpoints (HF `output_dir` / `save_steps` / `save_total_limit`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointConfig {
    /// The directory holding `checkpoint-<step>/` folders, `latest` and the best model.
    pub dir: PathBuf,
    /// Save every this many optimiser steps (0: only at the end of each epoch).
    pub every_steps: usize,
    /// How many `checkpoint-<step>/` folders to keep (at least 1).
    pub keep_last: usize,
    /// Continue from `dir/latest` when it exists (a missing checkpoint starts afresh). Without it, a directory
    /// that already holds a checkpoint is refused ([`TrainError::Checkpoint`](crate::TrainError::Checkpoint)),
    /// so that a new run never prunes an earlier run's checkpoints.
    pub resume: bool,
}

impl CheckpointConfig {
    /// Checkpoints in `dir` every `every_steps` steps, keeping the last 2, not resuming.
    pub fn new(dir: impl Into<PathBuf>, every_steps: usize) -> Self {
        Self { dir: dir.into(), every_steps, keep_last: 2, resume: false }
    }

    /// Whether to resume from `dir/latest`.
    pub fn with_resume(mut self, resume: bool) -> Self {
        self.resume = resume;
        self
    }

    /// How many checkpoints to keep.
    pub fn with_keep_last(mut self, keep_last: usize) -> Self {
        self.keep_last = keep_last;
        self
    }
}

/// Everything a [`Trainer`](crate::Trainer) run is configured by.
///
/// Defaults follow HF `TrainingArguments` (AdamW, lr 2e-5, betas 0.9/0.999, eps 1e-8, clipping at
/// global norm 1.0, 3 epochs, batch size 8, seed 42) except the weight decay, 0.01 (HF: 0.0), the
/// usual choice for BERT fine-tuning.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainerConfig {
    /// Passes over the training set.
    pub epochs: usize,
    /// Examples per micro-batch (HF `per_device_train_batch_size`).
    pub batch_size: usize,
    /// Examples per evaluation batch.
    pub eval_batch_size: usize,
    /// Micro-batches per optimiser step (HF `gradient_accumulation_steps`).
    pub grad_accum: usize,
    /// The peak learning rate.
    pub learning_rate: f64,
    /// AdamW's decoupled weight decay, applied to every parameter except biases and LayerNorm weights.
    pub weight_decay: f64,
    /// AdamW's first-moment decay.
    pub beta1: f64,
    /// AdamW's second-moment decay.
    pub beta2: f64,
    /// AdamW's epsilon.
    pub epsilon: f64,
    /// Linear warmup from 0, then linear decay to 0 at the last step.
    pub warmup: Warmup,
    /// Clip the global gradient norm to this (HF `max_grad_norm`); `None` disables clipping.
    pub max_grad_norm: Option<f64>,
    /// Seeds the batch order (per epoch) and the backend (dropout, per step).
    pub seed: u64,
    /// How training batches are formed.
    pub train_order: TrainOrder,
    /// Keep the best epoch's model by this metric and return it at the end (HF `load_best_model_at_end`);
    /// `None` returns the last model.
    pub best_metric: Option<BestMetric>,
    /// The type of the forward passes' matrix products (mixed precision for bf16/f16, with dynamic
    /// loss scaling for f16); parameters and optimiser state stay f32.
    #[serde(default)]
    pub precision: Precision,
    /// The type of the evaluation passes' products when it differs from [`precision`](Self::precision): for
    /// instance bf16 inference (fast on CPUs with AVX512-BF16) of a model trained in f32. `None` evaluates in
    /// `precision`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_precision: Option<Precision>,
    /// f16 only: the loss scale of the first step (PyTorch's `init_scale`, 2^16); it then halves on
    /// overflow and doubles after 2000 finite steps ([`LossScaler`](crate::LossScaler)).
    #[serde(default = "default_initial_loss_scale")]
    pub initial_loss_scale: f64,
    /// Resumable checkpoints; `None` writes nothing.
    pub checkpoint: Option<CheckpointConfig>,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

fn default_initial_loss_scale() -> f64 {
    65_536.0
}

impl Default for TrainerConfig {
    fn default() -> Self {
        Self {
            epochs: 3,
            batch_size: 8,
            eval_batch_size: 32,
            grad_accum: 1,
            learning_rate: 2e-5,
            weight_decay: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            warmup: Warmup::Steps(0),
            max_grad_norm: Some(1.0),
            seed: 42,
            train_order: TrainOrder::default(),
            best_metric: Some(BestMetric::Accuracy),
            precision: Precision::F32,
            eval_precision: None,
            initial_loss_scale: default_initial_loss_scale(),
            checkpoint: None,
            progress: true,
        }
    }
}

macro_rules! with {
    ($(#[$doc:meta] $name:ident: $field:ident: $ty:ty),* $(,)?) => {
        $(
            #[$doc]
            pub fn $name(mut self, $field: $ty) -> Self {
                self.$field = $field;
                self
            }
        )*
    };
}

impl TrainerConfig {
    with! {
        /// Sets [`epochs`](Self::epochs).
        with_epochs: epochs: usize,
        /// Sets [`batch_size`](Self::batch_size).
        with_batch_size: batch_size: usize,
        /// Sets [`eval_batch_size`](Self::eval_batch_size).
        with_eval_batch_size: eval_batch_size: usize,
        /// Sets [`grad_accum`](Self::grad_accum).
        with_grad_accum: grad_accum: usize,
        /// Sets [`learning_rate`](Self::learning_rate).
        with_learning_rate: learning_rate: f64,
        /// Sets [`weight_decay`](Self::weight_decay).
        with_weight_decay: weight_decay: f64,
        /// Sets [`warmup`](Self::warmup).
        with_warmup: warmup: Warmup,
        /// Sets [`max_grad_norm`](Self::max_grad_norm).
        with_max_grad_norm: max_grad_norm: Option<f64>,
        /// Sets [`seed`](Self::seed).
        with_seed: seed: u64,
        /// Sets [`train_order`](Self::train_order).
        with_train_order: train_order: TrainOrder,
        /// Sets [`best_metric`](Self::best_metric).
        with_best_metric: best_metric: Option<BestMetric>,
        /// Sets [`precision`](Self::precision).
        with_precision: precision: Precision,
        /// Sets [`eval_precision`](Self::eval_precision).
        with_eval_precision: eval_precision: Option<Precision>,
        /// Sets [`initial_loss_scale`](Self::initial_loss_scale).
        with_initial_loss_scale: initial_loss_scale: f64,
        /// Sets [`checkpoint`](Self::checkpoint).
        with_checkpoint: checkpoint: Option<CheckpointConfig>,
        /// Sets [`progress`](Self::progress).
        with_progress: progress: bool,
    }

    /// The type of the evaluation passes' products: [`eval_precision`](Self::eval_precision), else
    /// [`precision`](Self::precision).
    pub fn evaluation_precision(&self) -> Precision {
        self.eval_precision.unwrap_or(self.precision)
    }

    /// Checks every value's range: counts at least 1 and at most their `MAX_*` bound (so that no product of
    /// them overflows: batches times chunk batches, steps times epochs), rates and probabilities finite and in
    /// range. Each error names the setting and its value.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |what: String| Err(TrainError::InvalidConfig(what));
        let counts = [
            ("epochs", self.epochs, MAX_EPOCHS),
            ("batch_size", self.batch_size, MAX_BATCH_SIZE),
            ("eval_batch_size", self.eval_batch_size, MAX_BATCH_SIZE),
            ("grad_accum", self.grad_accum, MAX_GRAD_ACCUM),
        ];
        for (name, value, max) in counts {
            if !(1..=max).contains(&value) {
                return bad(format!("{name} {value} must be between 1 and {max}"));
            }
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return bad(format!("learning rate {} must be finite and positive", self.learning_rate));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!("weight decay {} must be finite and non-negative", self.weight_decay));
        }
        for (name, beta) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&beta) {
                return bad(format!("{name} {beta} must be in [0, 1)"));
            }
        }
        if !(self.epsilon.is_finite() && self.epsilon > 0.0) {
            return bad(format!("epsilon {} must be finite and positive", self.epsilon));
        }
        if let Warmup::Ratio(ratio) = self.warmup
            && !(0.0..=1.0).contains(&ratio)
        {
            return bad(format!("warmup ratio {ratio} must be in [0, 1]"));
        }
        if let Some(norm) = self.max_grad_norm
            && !(norm.is_finite() && norm > 0.0)
        {
            return bad(format!(
                "max_grad_norm {norm} must be finite and positive (leave it unset to switch clipping off)"
            ));
        }
        if !(self.initial_loss_scale.is_finite() && self.initial_loss_scale > 0.0) {
            return bad(format!("initial loss scale {} must be finite and positive", self.initial_loss_scale));
        }
        if let TrainOrder::LengthBucketed { chunk_batches } = self.train_order
            && !(1..=MAX_CHUNK_BATCHES).contains(&chunk_batches)
        {
            return bad(format!("chunk_batches {chunk_batches} must be between 1 and {MAX_CHUNK_BATCHES}"));
        }
        if let Some(checkpoint) = &self.checkpoint
            && checkpoint.keep_last == 0
        {
            return bad("checkpoint keep_last must be at least 1".into());
        }
        Ok(())
    }

    /// The settings that shape the trajectory (everything but checkpointing and the progress bar);
    /// a resumed run must match the interrupted one on these.
    pub(crate) fn trajectory(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            map.remove("checkpoint");
            map.remove("progress");
            // The evaluation batch size does not change the metrics.
            map.remove("eval_batch_size");
        }
        value
    }
}
