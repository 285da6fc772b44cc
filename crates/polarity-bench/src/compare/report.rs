//! What a comparison measured: one [`RowReport`] per row, gathered into a [`ComparisonReport`].

use std::collections::BTreeMap;

use polarity_finetune::{EvalMethod, RecipeConfig, RunReport, WeightInit};
use serde::{Deserialize, Serialize};

use super::plan::{REFERENCE_TEST_REVIEWS, REFERENCE_TRAIN_REVIEWS, RowSpec};
use crate::{GenerationMeasurement, HardwareRecord, InferenceMeasurement, ReviewIds};

/// One number of the report, with its unit and how it was obtained; `value` is `None` where it was not
/// measured, and `how` then says why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Quantity {
    /// The number, in `unit`.
    pub value: Option<f64>,
    /// `fraction`, `s`, `samples/s`, `tokens/s`, `bytes`, `parameters`.
    pub unit: String,
    /// How it was measured, or why it was not.
    pub how: String,
}

impl Quantity {
    /// A measured number.
    pub fn measured(value: f64, unit: &str, how: impl Into<String>) -> Self {
        Self { value: Some(value), unit: unit.into(), how: how.into() }
    }

    /// A number not measured, and why.
    pub fn not_measured(unit: &str, reason: impl Into<String>) -> Self {
        Self { value: None, unit: unit.into(), how: reason.into() }
    }
}

/// The reason a random-weight row's accuracy cell is empty.
pub const NO_WEIGHTS: &str = "not measured: no weights";

/// The estimated time of the reference setup's full size from a row's measured throughput.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FullSetupEstimate {
    /// Training reviews of the full setup (25,000).
    pub train_reviews: usize,
    /// Epochs of the full setup (3 for encoders, 1 for the causal LM).
    pub epochs: usize,
    /// Test reviews of the full setup (25,000).
    pub test_reviews: usize,
    /// `train_reviews x epochs / training samples/s`.
    pub train_seconds: f64,
    /// `test_reviews / inference samples/s`.
    pub test_seconds: f64,
    /// The two summed.
    pub total_seconds: f64,
    /// The formula with the row's numbers, and the shape they were measured at.
    pub formula: String,
}

impl FullSetupEstimate {
    /// The estimate for `spec`'s family from its training and inference throughputs (samples/s); `None`
    /// when a throughput is not a positive number.
    pub fn from_throughput(spec: &RowSpec, train_per_second: f64, test_per_second: f64) -> Option<Self> {
        if !(train_per_second > 0.0 && test_per_second > 0.0) {
            return None;
        }
        let epochs = spec.reference_epochs();
        let train_seconds = (REFERENCE_TRAIN_REVIEWS * epochs) as f64 / train_per_second;
        let test_seconds = REFERENCE_TEST_REVIEWS as f64 / test_per_second;
        let formula = format!(
            "{REFERENCE_TRAIN_REVIEWS} x {epochs} / {train_per_second:.3} train samples/s + {REFERENCE_TEST_REVIEWS} / \
             {test_per_second:.3} inference samples/s, at max length {} as measured",
            spec.max_length()
        );
        Some(Self {
            train_reviews: REFERENCE_TRAIN_REVIEWS,
            epochs,
            test_reviews: REFERENCE_TEST_REVIEWS,
            train_seconds,
            test_seconds,
            total_seconds: train_seconds + test_seconds,
            formula,
        })
    }
}

/// The reviews a row used, as row numbers of IMDB's splits, so another program (the PyTorch script) can
/// take the same ones.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowReviews {
    /// The training subset, in training-set order (the trainer shuffles it with the recipe's seed).
    pub train: ReviewIds,
    /// The test subset (its first reviews are the inference benchmark's).
    pub test: ReviewIds,
}

/// Everything one row measured.
///
/// The table's cells are the [`Quantity`] fields; `run`, `inference` and `generation` hold every detail
/// (per-epoch history, confusion matrix, per-batch latency percentiles).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RowReport {
    /// The row as it ran.
    pub spec: RowSpec,
    /// `encoder classifier` or `causal LM`.
    pub model_type: String,
    /// `bert`, `distilbert` or `llama`.
    pub architecture: String,
    /// Where the weights came from.
    pub init: WeightInit,
    /// What the weights really were, in words.
    pub weights: String,
    /// The tuning method with its hyper-parameters.
    pub tuning: String,
    /// All parameters, counted on the built model.
    pub parameters: Quantity,
    /// Parameters the optimiser updated.
    pub trainable_parameters: Quantity,
    /// Accuracy on the test subset (not measured with random weights).
    pub accuracy: Quantity,
    /// Macro-F1 on the test subset (not measured with random weights).
    pub macro_f1: Quantity,
    /// Wall-clock seconds of the optimiser steps (evaluation excluded).
    pub train_seconds: Quantity,
    /// Training samples per second.
    pub train_samples_per_second: Quantity,
    /// Inference samples per second (the inference benchmark, tokenization excluded).
    pub inference_samples_per_second: Quantity,
    /// Inference prompt/input tokens per second (padding excluded).
    pub inference_tokens_per_second: Quantity,
    /// Median latency of one inference batch, in milliseconds.
    pub inference_batch_p50_ms: Quantity,
    /// The row process's peak resident memory.
    pub peak_rss_bytes: Quantity,
    /// For a row not run at the reference setup's full size: the full setup's estimated time.
    pub full_setup_estimate: Option<FullSetupEstimate>,
    /// The reviews used.
    pub reviews: RowReviews,
    /// The recipe's own report (settings, data, model facts, evaluation, training history, timings).
    pub run: RunReport,
    /// The inference benchmark.
    pub inference: InferenceMeasurement,
    /// Causal LMs: the generation benchmark, where run.
    pub generation: Option<GenerationMeasurement>,
    /// Wall-clock seconds of the whole row.
    pub wall_seconds: f64,
}

impl RowReport {
    /// The row's report from the recipe's run and the inference benchmark.
    pub fn new(
        spec: RowSpec,
        run: RunReport,
        inference: InferenceMeasurement,
        generation: Option<GenerationMeasurement>,
        reviews: RowReviews,
        wall_seconds: f64,
    ) -> Self {
        let init = run.model.init;
        let (accuracy, macro_f1) = match init {
            WeightInit::Pretrained => {
                let how = format!(
                    "{} test reviews, {}",
                    run.evaluation.report.total,
                    match run.evaluation.method {
                        EvalMethod::ClassScores => "argmax of the two class logits",
                        EvalMethod::LabelWords => "argmax of the two label words' next-token logits",
                        EvalMethod::Generation => "greedy generation, answer parsed (unparseable counted wrong)",
                    }
                );
                (
                    Quantity::measured(run.evaluation.accuracy(), "fraction", how.clone()),
                    Quantity::measured(run.evaluation.macro_f1(), "fraction", how),
                )
            }
            WeightInit::Random => {
                (Quantity::not_measured("fraction", NO_WEIGHTS), Quantity::not_measured("fraction", NO_WEIGHTS))
            }
        };
        let weights = match init {
            WeightInit::Pretrained => format!("{} (checkpoint)", run.model.source),
            WeightInit::Random => format!(
                "random, seeded, shaped by {}'s config.json (its weights are not on this machine)",
                run.model.source
            ),
        };
        let training = &run.training;
        let train_samples = training.history.iter().map(|epoch| epoch.train_seconds * epoch.train_samples_per_second);
        let train_samples = train_samples.sum::<f64>().round();
        let train_how = format!(
            "{train_samples} training samples over {} optimiser steps, {} epoch(s), max length {}",
            training.global_steps,
            training.history.len(),
            spec.max_length()
        );
        let inference_how = format!(
            "{} test reviews in batches of {}, {} warm-up batch(es), {} timed pass(es), {}",
            inference.samples,
            inference.batch_size,
            inference.warmup_batches,
            inference.repeats,
            match &spec.recipe {
                RecipeConfig::Encoder(_) => "class logits",
                RecipeConfig::Lora(_) => "label-word scores after the prompt",
            }
        );
        let train_per_second = training.train_samples_per_second();
        let full_setup_estimate = (!spec.is_full_size())
            .then(|| {
                FullSetupEstimate::from_throughput(&spec, train_per_second, inference.throughput.samples_per_second)
            })
            .flatten();
        Self {
            model_type: spec.model_type().to_string(),
            architecture: run.model.architecture.clone(),
            init,
            weights,
            tuning: spec.tuning(),
            parameters: Quantity::measured(run.model.parameters as f64, "parameters", "counted on the built model"),
            trainable_parameters: Quantity::measured(
                run.model.trainable_parameters as f64,
                "parameters",
                "updated by the optimiser",
            ),
            accuracy,
            macro_f1,
            train_seconds: Quantity::measured(training.train_seconds(), "s", train_how.clone()),
            train_samples_per_second: Quantity::measured(train_per_second, "samples/s", train_how),
            inference_samples_per_second: Quantity::measured(
                inference.throughput.samples_per_second,
                "samples/s",
                inference_how.clone(),
            ),
            inference_tokens_per_second: match inference.throughput.tokens_per_second {
                Some(rate) => Quantity::measured(rate, "tokens/s", inference_how.clone()),
                None => Quantity::not_measured("tokens/s", "the measured path does not see tokens"),
            },
            inference_batch_p50_ms: Quantity::measured(inference.latency.p50_ms, "ms", inference_how),
            peak_rss_bytes: match run.peak_rss_bytes.max(inference.peak_rss_bytes) {
                Some(bytes) => Quantity::measured(
                    bytes as f64,
                    "bytes",
                    "VmHWM of the process that ran only this row (loading, training, evaluation, benchmark)",
                ),
                None => Quantity::not_measured("bytes", "the OS does not report peak RSS (/proc/self/status)"),
            },
            full_setup_estimate,
            reviews,
            run,
            inference,
            generation,
            spec,
            wall_seconds,
        }
    }
}

/// A row that could not finish, and why.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RowFailure {
    /// The row as planned.
    pub spec: RowSpec,
    /// The error with its causes, or how the row's process ended.
    pub error: String,
}

/// How a row ended.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum RowOutcome {
    /// Every number measured.
    Finished(Box<RowReport>),
    /// Stopped with an error; a resumed comparison runs it again.
    Failed(Box<RowFailure>),
}

impl RowOutcome {
    /// `spec`'s row failed with `error`.
    pub fn failed(spec: &RowSpec, error: impl Into<String>) -> Self {
        RowOutcome::Failed(Box::new(RowFailure { spec: spec.clone(), error: error.into() }))
    }

    /// The row as planned.
    pub fn spec(&self) -> &RowSpec {
        match self {
            RowOutcome::Finished(report) => &report.spec,
            RowOutcome::Failed(failure) => &failure.spec,
        }
    }

    /// The report, if the row finished.
    pub fn finished(&self) -> Option<&RowReport> {
        match self {
            RowOutcome::Finished(report) => Some(report),
            RowOutcome::Failed(_) => None,
        }
    }
}

/// The same rows measured by another implementation (`scripts/reference_hf.py`: transformers + PEFT on
/// PyTorch), read by `compare --reference FILE` to put a column and the ratio beside each number.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReferenceResults {
    /// What produced them (`transformers 4.x / torch 2.x, 2 threads`).
    pub tool: String,
    /// The machine, as the script saw it.
    #[serde(default)]
    pub hardware: BTreeMap<String, serde_json::Value>,
    /// By row name.
    pub rows: BTreeMap<String, ReferenceRow>,
}

/// One row's numbers from the reference implementation; what it did not measure is absent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReferenceRow {
    /// Accuracy on the same test reviews.
    pub accuracy: Option<f64>,
    /// Macro-F1 on the same test reviews.
    pub macro_f1: Option<f64>,
    /// Seconds of the optimiser steps.
    pub train_seconds: Option<f64>,
    /// Training samples per second.
    pub train_samples_per_second: Option<f64>,
    /// Inference samples per second on the same inference reviews and batch size.
    pub inference_samples_per_second: Option<f64>,
    /// Peak resident memory of the reference process, in bytes.
    pub peak_rss_bytes: Option<f64>,
    /// Anything the script wants to say about the row (an error, a skipped measurement).
    #[serde(default)]
    pub note: Option<String>,
}

/// The whole comparison: the hardware and software record, and every row's outcome in plan order.
///
/// This is the schema of `report.json`: numbers are [`Quantity`]s (value, unit, how measured); memory in
/// bytes, times in seconds, rates per second of wall-clock time.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ComparisonReport {
    /// The preset or `custom`.
    pub preset: String,
    /// The machine and software the rows ran on (backend, precision, CPU, SIMD, burn version, git commit).
    pub hardware: HardwareRecord,
    /// Every planned row, finished or failed, in plan order.
    pub rows: Vec<RowOutcome>,
    /// The reference implementation's numbers, where given.
    pub reference: Option<ReferenceResults>,
}
