//! Evaluation: class scores over a dataset in order, metrics and throughput.

use std::time::Instant;

use burn::prelude::*;
use polarity_core::{Prediction, Sentiment};
use polarity_metrics::{ClassificationReport, ConfusionMatrix};
use polarity_tokenize::{BatchOrder, InOrder, TokenizedExample};
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::objective::{BatchScorer, check_scores};

/// The outcome of an evaluation pass.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Accuracy, per-class and macro precision/recall/F1, and the confusion matrix.
    pub report: ClassificationReport,
    /// Wall-clock seconds of the pass (batching, forward passes and reading the scores back).
    pub seconds: f64,
    /// Examples per second.
    pub samples_per_second: f64,
}

/// The predictions of `model` for `data`, in order, in batches of `batch_size` (no shuffling).
pub fn predict<B, M, S>(
    scorer: &S,
    model: &M,
    data: &[TokenizedExample],
    batch_size: usize,
    device: &B::Device,
) -> Result<Vec<Prediction>, TrainError>
where
    B: Backend,
    S: BatchScorer<B, M>,
{
    let lengths: Vec<usize> = data.iter().map(|item| item.tokens.len()).collect();
    let mut predictions = Vec::with_capacity(data.len());
    for indices in InOrder.batches(&lengths, batch_size)? {
        let batch: Vec<&TokenizedExample> = indices.iter().map(|&i| &data[i]).collect();
        let scores = scorer.class_scores(model, &batch, device)?;
        check_scores(&scores, batch.len())?;
        let values = scores
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| TrainError::Model(format!("cannot read class scores: {e:?}")))?;
        predictions.extend(values.chunks_exact(2).map(|pair| Prediction::from_logits([pair[0], pair[1]])));
    }
    Ok(predictions)
}

/// Evaluates `model` on `data` (in order, batches of `batch_size`): metrics and throughput.
///
/// An empty `data` is [`TrainError::EmptyDataset`].
pub fn evaluate<B, M, S>(
    scorer: &S,
    model: &M,
    data: &[TokenizedExample],
    batch_size: usize,
    device: &B::Device,
) -> Result<Evaluation, TrainError>
where
    B: Backend,
    S: BatchScorer<B, M>,
{
    if data.is_empty() {
        return Err(TrainError::EmptyDataset { which: "evaluation set" });
    }
    let start = Instant::now();
    let predictions = predict(scorer, model, data, batch_size, device)?;
    let seconds = start.elapsed().as_secs_f64();
    let gold: Vec<Sentiment> = data.iter().map(|item| item.label).collect();
    let predicted: Vec<Sentiment> = predictions.iter().map(|p| p.label).collect();
    let mut matrix = ConfusionMatrix::default();
    matrix.update(&gold, &predicted)?;
    Ok(Evaluation {
        report: matrix.report(),
        seconds,
        samples_per_second: data.len() as f64 / seconds.max(f64::MIN_POSITIVE),
    })
}
