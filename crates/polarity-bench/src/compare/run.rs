//! Running one row: the recipe's experiment, then the inference benchmark on the trained model.

use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use polarity_core::backend::{TrainBackend, default_backend_name, default_device};
use polarity_data::{ImdbDataset, Split, hub};
use polarity_finetune::{ExperimentData, RecipeConfig};
use polarity_tokenize::Encode;
use polarity_train::{BatchScorer, TextClassifier};

use super::plan::RowSpec;
use super::report::{RowReport, RowReviews};
use crate::workload::review_ids;
use crate::{BenchError, InferenceBench, InferenceMeasurement, Selection};

/// Runs `spec` on the default backend (the CPU, or CUDA with `--features cuda`): loads its data, runs its
/// recipe's experiment (training, then evaluation on the test subset), and benchmarks inference on the
/// trained model.
pub fn run_row(spec: &RowSpec) -> Result<RowReport, BenchError> {
    let device = default_device().map_err(polarity_finetune::FinetuneError::from)?;
    run_row_on::<TrainBackend>(spec, &device, default_backend_name())
}

/// [`run_row`] on any autodiff backend and device; `backend` names it in the report.
pub fn run_row_on<B: AutodiffBackend>(
    spec: &RowSpec,
    device: &B::Device,
    backend: &str,
) -> Result<RowReport, BenchError> {
    let started = Instant::now();
    spec.validate()?;
    let data = spec.data.load()?;
    let reviews = row_reviews(&data)?;
    let inference_reviews = first_reviews(&data.test, spec.inference.reviews)?;
    let bench = InferenceBench::new(spec.inference.batch_size)
        .with_warmup_batches(spec.inference.warmup_batches)
        .with_repeats(spec.inference.repeats);
    let (run, inference, generation) = match &spec.recipe {
        RecipeConfig::Encoder(recipe) => {
            let experiment = recipe.run_on::<B>(device, backend, &data)?;
            let inference = measure(&bench, &experiment.classifier, &inference_reviews)?;
            (experiment.report, inference, None)
        }
        RecipeConfig::Lora(recipe) => {
            let experiment = recipe.run_on::<B>(device, backend, &data)?;
            let classifier = &experiment.classifier;
            let inference = measure(&bench, classifier, &inference_reviews)?;
            let generation = match spec.inference.generation {
                Some(generation) => {
                    let prompts = polarity_train::tokenize_examples(
                        &classifier.tokenizer,
                        &first_reviews(&inference_reviews, generation.reviews)?,
                    )?;
                    let bench = InferenceBench::new(generation.batch_size).with_warmup_batches(0);
                    Some(bench.measure_generation(
                        &classifier.model,
                        classifier.tokenizer.tokenizer(),
                        &prompts,
                        generation.max_new_tokens,
                        device,
                    )?)
                }
                None => None,
            };
            (experiment.report, inference, generation)
        }
    };
    Ok(RowReport::new(spec.clone(), run, inference, generation, reviews, started.elapsed().as_secs_f64()))
}

/// The trained classifier's scores on `reviews`, tokenized by its own tokenizer first (not timed).
fn measure<B, M, T, S>(
    bench: &InferenceBench,
    classifier: &TextClassifier<B, M, T, S>,
    reviews: &ImdbDataset,
) -> Result<InferenceMeasurement, BenchError>
where
    B: burn::prelude::Backend,
    T: Encode,
    S: BatchScorer<B, M>,
{
    let examples = polarity_train::tokenize_examples(&classifier.tokenizer, reviews)?;
    bench.measure_scorer(&classifier.scorer, &classifier.model, &examples, &classifier.device)
}

/// The first `n` reviews of `set` (a balanced subset is shuffled, so its head mixes both labels).
fn first_reviews(set: &ImdbDataset, n: usize) -> Result<ImdbDataset, BenchError> {
    let examples = set.examples().get(..n).ok_or(BenchError::InvalidSetting {
        field: "inference.reviews",
        value: n.to_string(),
        reason: "more reviews than the test subset holds",
    })?;
    ImdbDataset::new(format!("{}[..{n}]", set.name()), examples.to_vec())
        .map_err(|source| BenchError::Data { dataset: set.name().to_string(), source: Box::new(source) })
}

/// Where the row's subsets sit in IMDB's splits.
fn row_reviews(data: &ExperimentData) -> Result<RowReviews, BenchError> {
    let config = &data.config;
    let selection = Selection::Balanced { seed: config.seed };
    let split = |split| {
        hub::load_split(&config.dataset, split)
            .map_err(|source| BenchError::Data { dataset: config.dataset.clone(), source: Box::new(source) })
    };
    Ok(RowReviews {
        train: review_ids(&split(Split::Train)?, selection, data.train.examples()),
        test: review_ids(&split(Split::Test)?, selection, data.test.examples()),
    })
}
