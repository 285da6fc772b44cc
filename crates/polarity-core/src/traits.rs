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

/// The result of a fine-tuning run: the trained classifier and its per-epoch history.
pub struct FineTuned<C> {
    /// The trained model (the best epoch's, where the fine-tuner keeps the best).
    pub classifier: C,
    /// One report per completed epoch.
    pub history: Vec<EpochReport>,
}

/// Trains a classifier on labelled examples (linfa's `Fit`, for sentiment).
pub trait FineTuner {
    /// What training produces.
    type Classifier: Classifier;
    /// Why training failed (a non-finite loss, an empty dataset, ...).
    type Error: std::error::Error + Send + Sync + 'static;

    /// Trains on `train`, evaluating on `eval` after every epoch.
    fn fine_tune(
        &self,
        train: &dyn ExampleSource,
        eval: &dyn ExampleSource,
    ) -> Result<FineTuned<Self::Classifier>, Self::Error>;
}
