use std::path::PathBuf;

use burn::data::dataset::Dataset;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{Example, Prediction, TokenBatch};

/// A source of labelled examples: any burn [`Dataset`] of [`Example`]s.
///
/// Being a burn dataset, every source works with burn's own tooling (`ShuffledDataset`,
/// `PartialDataset`, the data loaders).
pub trait ExampleSource: Dataset<Example> {}

impl<D: Dataset<Example> + ?Sized> ExampleSource for D {}

/// The tensor-level contract of a model family: class scores for a token batch.
///
/// Encoders return their classification logits; a causal LM returns the next-token logits of the
/// two label words after the prompt. Either way the result is `[batch, 2]` in class-index order
/// (`[negative, positive]`), so metrics and predictions treat all families alike.
pub trait ClassScorer<B: Backend> {
    /// `[batch, 2]` scores, higher meaning more likely.
    fn class_scores(&self, batch: TokenBatch<B>) -> Tensor<B, 2>;
}

/// Predicts the sentiment of a batch of texts (tokenization included).
pub trait Classifier {
    /// Why a prediction failed (a tokenizer error, an input too long, ...).
    type Error: std::error::Error + Send + Sync + 'static;

    /// One prediction per text, in order.
    fn predict(&self, texts: &[&str]) -> Result<Vec<Prediction>, Self::Error>;
}

/// What a fine-tuning run reports after each epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochReport {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean training loss over the epoch's optimiser steps.
    pub train_loss: f64,
    /// Accuracy on the evaluation set, where one was given.
    pub eval_accuracy: Option<f64>,
    /// Macro-averaged F1 on the evaluation set, where one was given.
    pub eval_macro_f1: Option<f64>,
    /// Wall-clock seconds spent training in this epoch (evaluation excluded).
    pub train_seconds: f64,
    /// Training examples processed per second.
    pub train_samples_per_second: f64,
}

/// What a fine-tuning run did, beside the model it returns: the numbers a report prints.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainingSummary {
    /// One report per completed epoch (also those completed before a resume).
    pub history: Vec<EpochReport>,
    /// The 1-based epoch whose model was returned, when the fine-tuner kept the best one.
    pub best_epoch: Option<usize>,
    /// Optimiser steps taken in the whole run.
    pub global_steps: usize,
    /// f16 mixed precision: the dynamic loss scale at the end of the run.
    pub loss_scale: Option<f64>,
    /// f16 mixed precision: steps skipped because their scaled gradients overflowed.
    pub skipped_steps: usize,
    /// The checkpoint the run resumed from, if any.
    pub resumed_from: Option<PathBuf>,
    /// Data-parallel runs: what synchronising the gradients cost.
    #[serde(default)]
    pub communication: Option<CommunicationReport>,
}

/// What a data-parallel run spent synchronising gradients: one all-reduce per optimiser step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CommunicationReport {
    /// The ranks of the group.
    pub world_size: usize,
    /// Bytes each rank puts into the reduction per optimiser step: the trainable parameters' f32 gradients,
    /// one flag per trainable parameter and the step's loss.
    pub bytes_per_step: u64,
    /// Optimiser steps that reduced in this process (since the resume, after one).
    pub steps: usize,
    /// Seconds in the reductions (flattening, staging through the host, the all-reduce, unflattening),
    /// waiting for the slowest rank included, summed over the steps.
    pub seconds: f64,
}

impl CommunicationReport {
    /// Mean seconds per reducing step.
    pub fn seconds_per_step(&self) -> f64 {
        self.seconds / self.steps.max(1) as f64
    }
}

impl TrainingSummary {
    /// Seconds spent training (evaluation and checkpointing excluded), summed over epochs.
    pub fn train_seconds(&self) -> f64 {
        self.history.iter().map(|r| r.train_seconds).sum()
    }

    /// Training examples per second over the whole run.
    pub fn train_samples_per_second(&self) -> f64 {
        let samples: f64 = self.history.iter().map(|r| r.train_seconds * r.train_samples_per_second).sum();
        samples / self.train_seconds().max(f64::MIN_POSITIVE)
    }
}

/// The result of a fine-tuning run: the trained classifier and what the run did.
pub struct FineTuned<C> {
    /// The trained model (the best epoch's, where the fine-tuner keeps the best).
    pub classifier: C,
    /// Epochs, steps, best epoch, loss scale.
    pub summary: TrainingSummary,
}

/// Trains a classifier on labelled examples (linfa's `Fit`, for sentiment): user code is
/// `recipe.fine_tune(&train, Some(&eval))?.classifier.predict(&texts)?`.
pub trait FineTuner {
    /// What training produces.
    type Classifier: Classifier;
    /// Why training failed (a non-finite loss, an empty dataset, ...).
    type Error: std::error::Error + Send + Sync + 'static;

    /// Trains on `train`, evaluating on `eval` (where given) after every epoch; the fine-tuner may use
    /// those evaluations to keep the best epoch.
    fn fine_tune(
        &self,
        train: &dyn ExampleSource,
        eval: Option<&dyn ExampleSource>,
    ) -> Result<FineTuned<Self::Classifier>, Self::Error>;
}
