//! The model contract: what the trainer asks of a model.
//!
//! The trainer never calls a model directly. It hands micro-batches of [`TokenizedExample`]s to an
//! [`Objective`], which turns them into tensors, runs the model and returns a scalar loss; for
//! evaluation and prediction a [`BatchScorer`] returns class scores `[batch, 2]`. Batching lives in
//! the objective because model families batch differently: an encoder pads token ids, a causal LM
//! appends the answer's label word to the prompt and masks the loss to it.
//!
//! [`CrossEntropyObjective`] covers every [`ClassScorer`] (the BERT and DistilBERT classifiers, a
//! causal LM's label-word scorer): right-padded batches and cross-entropy over the two class scores.

use burn::module::AutodiffModule;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use polarity_core::ClassScorer;
use polarity_tokenize::{PaddingBatcher, TokenIds, TokenizedExample};

use crate::TrainError;

/// Class scores for a batch of tokenized examples: the evaluation half of the model contract.
pub trait BatchScorer<B: Backend, M> {
    /// `[batch.len(), 2]` scores (`[negative, positive]`, higher meaning more likely) of `model`.
    fn class_scores(
        &self,
        model: &M,
        batch: &[&TokenizedExample],
        device: &B::Device,
    ) -> Result<Tensor<B, 2>, TrainError>;
}

/// What the trainer optimises: a scalar loss for a micro-batch, plus class scores for evaluation
/// (on the model without autodiff, [`AutodiffModule::valid`]).
///
/// Implement it for a new model family in the crate that uses the trainer (the objective is a value,
/// so no orphan rule gets in the way): for instance a causal LM's objective holds the label words'
/// token ids, builds `prompt + answer` sequences and takes the next-token cross-entropy on the answer.
pub trait Objective<B: AutodiffBackend, M: AutodiffModule<B>>: BatchScorer<B::InnerBackend, M::InnerModule> {
    /// The mean loss of `batch`, shape `[1]`, with the autodiff graph to back-propagate through.
    fn loss(&self, model: &M, batch: &[&TokenizedExample], device: &B::Device) -> Result<Tensor<B, 1>, TrainError>;
}

/// Cross-entropy over the two class scores of any [`ClassScorer`], on right-padded batches.
///
/// This is what transformers' `*ForSequenceClassification` computes with `labels` given.
#[derive(Clone, Copy, Debug)]
pub struct CrossEntropyObjective {
    batcher: PaddingBatcher,
}

impl CrossEntropyObjective {
    /// Pads with `pad_id` (the tokenizer's [`pad_id`](polarity_tokenize::Encode::pad_id)).
    pub fn new(pad_id: u32) -> Self {
        Self { batcher: PaddingBatcher::new(pad_id) }
    }

    /// The batcher.
    pub fn batcher(&self) -> PaddingBatcher {
        self.batcher
    }

    fn scores<B: Backend, M: ClassScorer<B>>(
        &self,
        model: &M,
        batch: &[&TokenizedExample],
        device: &B::Device,
    ) -> Result<Tensor<B, 2>, TrainError> {
        if batch.is_empty() {
            return Err(TrainError::Model("empty batch".into()));
        }
        if let Some(position) = batch.iter().position(|item| item.tokens.is_empty()) {
            return Err(TrainError::Model(format!("example {position} of the batch has no tokens")));
        }
        let rows: Vec<&TokenIds> = batch.iter().map(|item| &item.tokens).collect();
        let scores = model.class_scores(self.batcher.pad::<B>(&rows, device));
        check_scores(&scores, batch.len())?;
        Ok(scores)
    }
}

/// An error unless `scores` is `[rows, 2]`.
pub(crate) fn check_scores<B: Backend>(scores: &Tensor<B, 2>, rows: usize) -> Result<(), TrainError> {
    let dims = scores.dims();
    if dims != [rows, 2] {
        return Err(TrainError::Model(format!("expected class scores of shape [{rows}, 2], the model gave {dims:?}")));
    }
    Ok(())
}

/// The `[batch]` tensor of class indices of `batch`.
pub fn label_tensor<B: Backend>(batch: &[&TokenizedExample], device: &B::Device) -> Tensor<B, 1, Int> {
    let labels: Vec<i64> = batch.iter().map(|item| item.label.index() as i64).collect();
    Tensor::from_data(TensorData::new(labels, [batch.len()]), device)
}

impl<B: Backend, M: ClassScorer<B>> BatchScorer<B, M> for CrossEntropyObjective {
    fn class_scores(
        &self,
        model: &M,
        batch: &[&TokenizedExample],
        device: &B::Device,
    ) -> Result<Tensor<B, 2>, TrainError> {
        self.scores(model, batch, device)
    }
}

impl<B, M> Objective<B, M> for CrossEntropyObjective
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + ClassScorer<B>,
    M::InnerModule: ClassScorer<B::InnerBackend>,
{
    fn loss(&self, model: &M, batch: &[&TokenizedExample], device: &B::Device) -> Result<Tensor<B, 1>, TrainError> {
        let scores = self.scores(model, batch, device)?;
        let labels = label_tensor::<B>(batch, device);
        Ok(CrossEntropyLossConfig::new().init(device).forward(scores, labels))
    }
}
