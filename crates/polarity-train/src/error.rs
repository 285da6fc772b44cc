use std::path::PathBuf;

use thiserror::Error;

/// Everything that can stop a training run, an evaluation or a prediction.
#[derive(Debug, Error)]
pub enum TrainError {
    /// A dataset without examples (`which` says whether the training or the evaluation set).
    #[error("the {which} is empty: there is nothing to train or evaluate on")]
    EmptyDataset {
        /// `"training set"` or `"evaluation set"`.
        which: &'static str,
    },
    /// A configuration value out of range (a batch size of 0, a negative learning rate, ...).
    #[error("invalid trainer configuration: {0}")]
    InvalidConfig(String),
    /// A model's class score was NaN or infinite: no prediction (and no accuracy) is made from it.
    #[error("non-finite class score {value} for example {example} of the set scored")]
    NonFiniteScore {
        /// The example's position in the set scored.
        example: usize,
        /// The score.
        value: f32,
    },
    /// The loss of a micro-batch was NaN or infinite; the run stops before the optimiser step.
    #[error("non-finite training loss {loss} at optimiser step {step} (epoch {epoch}, micro-batch {micro_batch})")]
    NonFiniteLoss {
        /// 1-based epoch.
        epoch: usize,
        /// 1-based global optimiser step that would have been taken.
        step: usize,
        /// 0-based micro-batch within that step (non-zero only with gradient accumulation).
        micro_batch: usize,
        /// The offending loss value.
        loss: f64,
    },
    /// The global gradient norm was NaN or infinite (with a finite loss); the run stops before the step.
    #[error("non-finite gradient norm {norm} at optimiser step {step} (epoch {epoch})")]
    NonFiniteGradNorm {
        /// 1-based epoch.
        epoch: usize,
        /// 1-based global optimiser step that would have been taken.
        step: usize,
        /// The offending norm.
        norm: f64,
    },
    /// The run was stopped on request after `step` optimiser steps (see
    /// [`Trainer::interrupt_after`](crate::Trainer::interrupt_after)); resume from the latest checkpoint.
    #[error("training interrupted after optimiser step {step}{}", checkpoint.as_ref().map(|c| format!(" (latest checkpoint: {})", c.display())).unwrap_or_default())]
    Interrupted {
        /// Optimiser steps completed.
        step: usize,
        /// The latest checkpoint written, if any.
        checkpoint: Option<PathBuf>,
    },
    /// A checkpoint that cannot be written or read.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The checkpoint file or directory.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A checkpoint written by a run with a different configuration or different data.
    #[error("cannot resume from {path}: {what}")]
    ResumeMismatch {
        /// The checkpoint directory.
        path: PathBuf,
        /// What differs.
        what: String,
    },
    /// A data-parallel group failed: another rank stopped, or the ranks disagree on what to reduce.
    #[error("rank {rank}: the data-parallel group failed: {reason}")]
    Collective {
        /// The rank that reports it.
        rank: usize,
        /// What happened.
        reason: String,
    },
    /// A model or objective that cannot handle its input (a wrong score shape, a sequence too long, ...).
    #[error("model error: {0}")]
    Model(String),
    /// Tokenization failed.
    #[error(transparent)]
    Tokenize(#[from] polarity_tokenize::TokenizeError),
    /// Metric accumulation failed.
    #[error(transparent)]
    Metrics(#[from] polarity_metrics::MetricsError),
}

impl TrainError {
    pub(crate) fn checkpoint(path: impl Into<PathBuf>, reason: impl std::fmt::Display) -> Self {
        TrainError::Checkpoint { path: path.into(), reason: reason.to_string() }
    }
}
