//! Evaluation: class scores over a dataset in order, metrics and throughput.

use std::time::Instant;

use burn::prelude::*;
use polarity_core::{Prediction, Sentiment};
use polarity_metrics::{ClassificationReport, ConfusionMatrix};
use polarity_tokenize::{BatchOrder, InOrder, TokenizedExample};
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::distributed::{Collective, SingleProcess, all_reduce_counts, shard_range};
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
///
/// A NaN or infinite score is [`TrainError::NonFiniteScore`]: an argmax over it would be a label picked by
/// the comparison's NaN rules, not by the model.
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
        if let Some((position, &value)) = values.iter().enumerate().find(|(_, value)| !value.is_finite()) {
            return Err(TrainError::NonFiniteScore { example: predictions.len() + position / 2, value });
        }
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
    evaluate_sharded(&SingleProcess, scorer, model, data, batch_size, device)
}

/// [`evaluate`] in a data-parallel group: each rank scores its contiguous shard of `data`, and the
/// confusion matrices are summed over the ranks, so every rank returns the metrics of the whole set.
/// The seconds are this rank's, up to the merge (which waits for the slowest rank).
pub fn evaluate_sharded<B, M, S>(
    collective: &dyn Collective,
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
    let shard = &data[shard_range(data.len(), collective.rank(), collective.world_size())];
    let mut matrix = ConfusionMatrix::default();
    if !shard.is_empty() {
        let predictions = predict(scorer, model, shard, batch_size, device)?;
        let gold: Vec<Sentiment> = shard.iter().map(|item| item.label).collect();
        let predicted: Vec<Sentiment> = predictions.iter().map(|p| p.label).collect();
        matrix.update(&gold, &predicted)?;
    }
    all_reduce_counts(collective, matrix.counts.as_flattened_mut())?;
    let seconds = start.elapsed().as_secs_f64();
    Ok(Evaluation {
        report: matrix.report(),
        seconds,
        samples_per_second: data.len() as f64 / seconds.max(f64::MIN_POSITIVE),
    })
}

#[cfg(test)]
mod tests {
    use burn::backend::NdArray;
    use polarity_tokenize::TokenIds;

    use super::*;

    /// Scores every example `[0, value]`.
    struct Constant(f32);

    impl BatchScorer<NdArray, ()> for Constant {
        fn class_scores(
            &self,
            _: &(),
            batch: &[&TokenizedExample],
            device: &burn::backend::ndarray::NdArrayDevice,
        ) -> Result<Tensor<NdArray, 2>, TrainError> {
            let values: Vec<f32> = batch.iter().flat_map(|_| [0.0, self.0]).collect();
            Ok(Tensor::from_data(TensorData::new(values, [batch.len(), 2]), device))
        }
    }

    #[test]
    fn non_finite_scores_are_refused_not_counted() {
        let data: Vec<TokenizedExample> = (0..5)
            .map(|i| TokenizedExample { tokens: TokenIds::new(vec![1, 2]), label: Sentiment::ALL[i % 2] })
            .collect();
        let device = Default::default();
        let report = evaluate(&Constant(1.0), &(), &data, 2, &device).unwrap().report;
        assert_eq!(report.total, 5);
        for value in [f32::NAN, f32::INFINITY] {
            let error = evaluate(&Constant(value), &(), &data, 2, &device).unwrap_err();
            assert!(matches!(error, TrainError::NonFiniteScore { example: 0, .. }), "{error}");
        }
    }
}
