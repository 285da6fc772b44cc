//! The shared vocabulary of polarity.
//!
//! Every other polarity crate speaks these types, so that the three model families (BERT, DistilBERT,
//! a LoRA-tuned causal LM) plug into the same examples, benches and reports:
//!
//! - [`Sentiment`], [`Example`] and [`Prediction`]: what goes in and what comes out;
//! - [`TokenBatch`] and [`LabelledBatch`]: the tensors a tokenizer hands to a model;
//! - three small traits, in the spirit of linfa's `Fit`/`Predict`:
//!   [`ExampleSource`] (a dataset of labelled texts), [`Classifier`] (predicts a batch of texts) and
//!   [`FineTuner`] (trains a classifier on examples and reports per-epoch metrics), plus
//!   [`ClassScorer`], the tensor-level hook every model family implements;
//! - [`backend`]: the default CPU backend, and the CUDA one behind the `cuda` feature, probed before use;
//! - [`Precision`]: the type matrix products run in (f32, or bf16/f16 mixed precision).
//!
//! ```
//! use polarity_core::{Example, Prediction, Sentiment};
//!
//! let example = Example::new("A quiet, moving film.", Sentiment::Positive);
//! let prediction = Prediction::from_logits([-1.0, 2.0]);
//! assert_eq!(prediction.label, example.label);
//! assert!(prediction.probability > 0.95);
//! ```

pub mod backend;
mod batch;
mod error;
mod example;
pub mod params;
mod precision;
pub mod reference;
mod sentiment;
mod traits;

pub use batch::{LabelledBatch, TokenBatch};
pub use error::CoreError;
pub use example::{Example, Prediction};
pub use precision::Precision;
pub use sentiment::Sentiment;
pub use traits::{
    ClassScorer, Classifier, CommunicationReport, EpochReport, ExampleSource, FineTuned, FineTuner, TrainingSummary,
};
