//! The text-level API: polarity-core's [`FineTuner`] and [`Classifier`] on top of the trainer.

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use polarity_core::{Classifier, Example, ExampleSource, FineTuned, FineTuner, Prediction, Sentiment};
use polarity_tokenize::{Encode, TokenizedExample};

use crate::eval::predict;
use crate::objective::BatchScorer;
use crate::{Objective, TrainError, Trainer};

/// Texts are encoded in chunks of this many (bounded memory on large sets).
const ENCODE_CHUNK: usize = 4096;

/// Tokenizes every example of `source` (in order) with `tokenizer`.
pub fn tokenize_examples<T: Encode + ?Sized>(
    tokenizer: &T,
    source: &dyn ExampleSource,
) -> Result<Vec<TokenizedExample>, TrainError> {
    let examples: Vec<Example> = (0..source.len()).filter_map(|i| source.get(i)).collect();
    let mut tokenized = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(ENCODE_CHUNK) {
        let texts: Vec<&str> = chunk.iter().map(|e| e.text.as_str()).collect();
        let encoded = tokenizer.encode_batch(&texts)?;
        tokenized.extend(encoded.into_iter().zip(chunk).map(|(tokens, e)| TokenizedExample { tokens, label: e.label }));
    }
    Ok(tokenized)
}

/// A trained model with its tokenizer: a text [`Classifier`].
#[derive(Clone, Debug)]
pub struct TextClassifier<B: Backend, M, T, S> {
    /// The model (without autodiff).
    pub model: M,
    /// The tokenizer that produced the training data.
    pub tokenizer: T,
    /// How the model scores a batch.
    pub scorer: S,
    /// The device the model lives on.
    pub device: B::Device,
    /// Texts per forward pass.
    pub batch_size: usize,
}

impl<B, M, T, S> Classifier for TextClassifier<B, M, T, S>
where
    B: Backend,
    T: Encode,
    S: BatchScorer<B, M>,
{
    type Error = TrainError;

    fn predict(&self, texts: &[&str]) -> Result<Vec<Prediction>, TrainError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        // The label is not read when scoring.
        let examples: Vec<TokenizedExample> = self
            .tokenizer
            .encode_batch(texts)?
            .into_iter()
            .map(|tokens| TokenizedExample { tokens, label: Sentiment::Negative })
            .collect();
        predict(&self.scorer, &self.model, &examples, self.batch_size.max(1), &self.device)
    }
}

/// [`FineTuner`] for any model, tokenizer and objective: tokenizes the examples, runs the
/// [`Trainer`] (evaluating on `eval`, where given, every epoch) and wraps the result as a [`TextClassifier`].
///
/// `fine_tune` takes `&self`, so every call starts from a clone of [`model`](Self::model).
#[derive(Clone, Debug)]
pub struct TextFineTuner<B: AutodiffBackend, M, T, O> {
    /// The trainer (configuration and device).
    pub trainer: Trainer<B>,
    /// The initial model.
    pub model: M,
    /// The tokenizer.
    pub tokenizer: T,
    /// The training objective, also used to score for prediction.
    pub objective: O,
}

impl<B, M, T, O> FineTuner for TextFineTuner<B, M, T, O>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    T: Encode + Clone,
    O: Objective<B, M> + Clone,
{
    type Classifier = TextClassifier<B::InnerBackend, M::InnerModule, T, O>;
    type Error = TrainError;

    fn fine_tune(
        &self,
        train: &dyn ExampleSource,
        eval: Option<&dyn ExampleSource>,
    ) -> Result<FineTuned<Self::Classifier>, TrainError> {
        let train = tokenize_examples(&self.tokenizer, train)?;
        let eval = eval.map(|eval| tokenize_examples(&self.tokenizer, eval)).transpose()?;
        let outcome = self.trainer.fit(self.model.clone(), &self.objective, &train, eval.as_deref())?;
        Ok(FineTuned {
            classifier: TextClassifier {
                model: outcome.model.valid(),
                tokenizer: self.tokenizer.clone(),
                scorer: self.objective.clone(),
                device: self.trainer.device().clone(),
                batch_size: self.trainer.config().eval_batch_size,
            },
            summary: outcome.summary(),
        })
    }
}
