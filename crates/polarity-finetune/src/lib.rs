//! Fine-tuning recipes: the IMDB experiment as a library call.
//!
//! Each model family has one recipe, a serde config that implements polarity-core's
//! [`FineTuner`](polarity_core::FineTuner), so user code is `recipe.fine_tune(&train, Some(&eval))?` and
//! then `tuned.classifier.predict(&texts)?` (linfa's `fit` / `predict`):
//!
//! - [`EncoderFineTune`]: full fine-tuning of a BERT, MiniLM or DistilBERT checkpoint with a
//!   sequence-classification head (argmax of two logits);
//! - [`LoraFineTune`]: LoRA or QLoRA on a Llama-architecture causal LM (GGUF file, hub id or directory),
//!   trained on the answer-only objective ([`CausalLmObjective`]) and classifying by the label word after
//!   `Review: ... Answer (positive or negative):`.
//!
//! `run` does the whole experiment on [`ExperimentData`] (seeded balanced IMDB subsets from a
//! [`DataConfig`]): load, tokenize, train, evaluate (zero-shot too for a causal LM), and returns an
//! [`Experiment`]: the trained classifier and a [`RunReport`] (Serialize + Display: settings, data, model
//! facts, accuracy, macro-F1, confusion matrix, per-class precision/recall, timings, peak memory), which is
//! what the examples print and write as JSON. Evaluation by class scores and by generation (greedy, the
//! answer parsed, unparseable answers counted) are also functions of their own ([`evaluate_by_scores`],
//! [`evaluate_by_generation`]).
//!
//! Fine-tuning and evaluating MiniLM (a real BERT-architecture checkpoint) on 32 + 32 reviews:
//!
//! ```
//! use polarity_core::Classifier;
//! use polarity_finetune::{DataConfig, EncoderFineTune};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let data = DataConfig::imdb(32, 32).load()?;
//! let mut recipe = EncoderFineTune::new("sentence-transformers/all-MiniLM-L6-v2").with_max_length(64);
//! recipe.trainer = recipe.trainer.with_epochs(1).with_learning_rate(5e-5).with_progress(false);
//!
//! let experiment = recipe.run(&data)?;
//! println!("{}", experiment.report);
//! assert_eq!(experiment.report.evaluation.report.total, 32);
//! assert!(experiment.report.training.global_steps == 2);
//!
//! let predictions = experiment.classifier.predict(&["A quiet, moving film.", "Dull and far too long."])?;
//! assert_eq!(predictions.len(), 2);
//! # Ok(())
//! # }
//! ```
//!
//! LoRA on SmolLM2-135M (Llama architecture, 4-bit GGUF), zero-shot then tuned, on 8 + 8 reviews:
//!
//! ```
//! use polarity_core::Classifier;
//! use polarity_finetune::{DataConfig, LoraFineTune};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let data = DataConfig::imdb(8, 8).load()?;
//! let model = "../../../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf";
//! let mut recipe = LoraFineTune::new(model).with_max_length(64).with_qlora(true);
//! recipe.trainer = recipe.trainer.with_grad_accum(4).with_progress(false);
//!
//! let experiment = recipe.run(&data)?;
//! println!("{}", experiment.report);
//! assert!(experiment.report.zero_shot.is_some());
//! assert_eq!(experiment.report.training.global_steps, 2);
//! assert!(experiment.report.model.trainable_parameters > 0);
//!
//! let predictions = experiment.classifier.predict(&["A quiet, moving film."])?;
//! assert_eq!(predictions.len(), 1);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod data;
mod encoder;
mod error;
mod evaluate;
mod lora;
mod objective;
mod report;

use burn::tensor::backend::AutodiffBackend;
use polarity_core::backend::TrainBackend;

pub use data::{DataConfig, ExperimentData};
pub use encoder::{EncoderFineTune, EncoderTextClassifier, MIN_ENCODER_MAX_LENGTH};
pub use error::FinetuneError;
pub use evaluate::{
    AnswerTally, ClassifyBy, EvalMethod, EvaluationReport, REFERENCE_MAX_NEW_TOKENS, evaluate_by_generation,
    evaluate_by_scores,
};
pub use lora::{LoraFineTune, LoraTextClassifier, MAX_NEW_TOKENS};
pub use objective::{CausalLmObjective, answer_loss};
pub use report::{
    DataReport, ModelReport, RecipeConfig, RunReport, Timings, WeightInit, WeightMemoryReport, peak_rss_bytes,
};

/// The backend a recipe's classifier runs inference on by default: [`TrainBackend`] without autodiff.
pub type InferenceBackend = <TrainBackend as AutodiffBackend>::InnerBackend;

/// What a recipe's `run` returns: the trained classifier and the report of the run.
pub struct Experiment<C> {
    /// Settings, data, model facts, training, evaluation, timings and memory.
    pub report: RunReport,
    /// The trained classifier (the best epoch's, where the recipe keeps the best).
    pub classifier: C,
}
