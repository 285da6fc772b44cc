//! Evaluation of a trained (or zero-shot) model on a tokenized test set: by class scores, or, for a
//! causal LM, by generating the answer and parsing it.

use std::time::Instant;

use burn::prelude::*;
use polarity_core::{Precision, Sentiment};
use polarity_kernels::autocast::autocast;
use polarity_llama::{GeneratedAnswers, Llama, LlamaTokenizer, generate_answers_for_ids};
use polarity_metrics::{ClassificationReport, ConfusionMatrix};
use polarity_tokenize::TokenizedExample;
use polarity_train::{BatchScorer, Collective, all_reduce_counts, shard_range};
use serde::{Deserialize, Serialize};

use crate::FinetuneError;

/// The number of new tokens the reference setup lets a causal LM write before its answer is parsed.
pub const REFERENCE_MAX_NEW_TOKENS: usize = 4;

/// How a causal LM's answer is read off the prompt `Review: ... Answer (positive or negative):`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "kebab-case")]
pub enum ClassifyBy {
    /// The next-token logits of `" negative"` and `" positive"` after the prompt (one batched forward
    /// pass; every prompt gets a label).
    #[default]
    LabelWords,
    /// Greedy decoding of at most `max_new_tokens` tokens, then [`polarity_llama::parse_answer`];
    /// answers naming no single label count as wrong and are reported as unparseable.
    Generation {
        /// Tokens written before the answer is parsed.
        max_new_tokens: usize,
    },
}

/// How an evaluation read the model's answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EvalMethod {
    /// The argmax of a classifier's two logits.
    ClassScores,
    /// The argmax of the two label words' next-token logits.
    LabelWords,
    /// Greedy generation and answer parsing.
    Generation,
}

/// One evaluation pass over a test set: metrics and throughput.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvaluationReport {
    /// How the answers were read.
    pub method: EvalMethod,
    /// Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix (rows gold
    /// negative/positive, columns predicted).
    pub report: ClassificationReport,
    /// Wall-clock seconds of the pass (batching, forward passes, reading results; tokenization excluded).
    pub seconds: f64,
    /// Test examples per second.
    pub samples_per_second: f64,
    /// Input tokens (padding excluded) per second.
    pub tokens_per_second: f64,
    /// Generation only: answers naming neither label, or both (counted as wrong).
    pub unparseable: Option<usize>,
}

impl EvaluationReport {
    fn new(method: EvalMethod, report: ClassificationReport, data: &[TokenizedExample], seconds: f64) -> Self {
        let tokens: usize = data.iter().map(|item| item.tokens.len()).sum();
        let seconds_or_tiny = seconds.max(f64::MIN_POSITIVE);
        Self {
            method,
            report,
            seconds,
            samples_per_second: data.len() as f64 / seconds_or_tiny,
            tokens_per_second: tokens as f64 / seconds_or_tiny,
            unparseable: None,
        }
    }

    /// Accuracy.
    pub fn accuracy(&self) -> f64 {
        self.report.accuracy
    }

    /// Macro-averaged F1.
    pub fn macro_f1(&self) -> f64 {
        self.report.macro_f1
    }
}

/// Evaluates `model` on `data` by the class scores `scorer` gives (in order, `batch_size` per forward
/// pass, products in `precision`). In a data-parallel group each rank scores its shard and every rank
/// returns the metrics of the whole set ([`polarity_train::evaluate_sharded`]); pass
/// [`SingleProcess`](polarity_train::SingleProcess) otherwise.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_by_scores<B, M, S>(
    scorer: &S,
    model: &M,
    data: &[TokenizedExample],
    batch_size: usize,
    precision: Precision,
    method: EvalMethod,
    device: &B::Device,
    collective: &dyn Collective,
) -> Result<EvaluationReport, FinetuneError>
where
    B: Backend,
    S: BatchScorer<B, M>,
{
    let evaluation = autocast(precision.compute_dtype(), || {
        polarity_train::evaluate_sharded(collective, scorer, model, data, batch_size, device)
    })?;
    Ok(EvaluationReport::new(method, evaluation.report, data, evaluation.seconds))
}

/// Evaluates a causal LM on prompts `data` by greedy generation of at most `max_new_tokens` tokens
/// (`batch_size` prompts per step) and answer parsing; an answer naming no single label counts as
/// wrong, never as one of the classes. In a data-parallel group each rank generates for its shard and
/// the tallies are summed, as [`evaluate_by_scores`] does.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_by_generation<B: Backend>(
    model: &Llama<B>,
    tokenizer: &LlamaTokenizer,
    data: &[TokenizedExample],
    batch_size: usize,
    max_new_tokens: usize,
    precision: Precision,
    device: &B::Device,
    collective: &dyn Collective,
) -> Result<EvaluationReport, FinetuneError> {
    if data.is_empty() {
        return Err(polarity_train::TrainError::EmptyDataset { which: "evaluation set" }.into());
    }
    let llama_error = |source| FinetuneError::Llama { model: "generation".into(), source: Box::new(source) };
    let started = Instant::now();
    let mut tally = AnswerTally::default();
    let shard = &data[shard_range(data.len(), collective.rank(), collective.world_size())];
    autocast(precision.compute_dtype(), || -> Result<(), FinetuneError> {
        for chunk in shard.chunks(batch_size.max(1)) {
            let prompts: Vec<Vec<u32>> = chunk.iter().map(|item| item.tokens.ids.clone()).collect();
            let answers =
                generate_answers_for_ids(model, tokenizer, &prompts, max_new_tokens, device).map_err(llama_error)?;
            tally.add(chunk, &answers);
        }
        Ok(())
    })?;
    tally.merge_over(collective)?;
    let mut evaluation =
        EvaluationReport::new(EvalMethod::Generation, tally.matrix.report(), data, started.elapsed().as_secs_f64());
    evaluation.unparseable = Some(tally.unparseable);
    Ok(evaluation)
}

/// Generated answers scored against their prompts' gold labels: an answer naming no single label counts as
/// wrong, never as one of the classes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AnswerTally {
    /// Gold labels against the parsed answers (unparseable ones as the wrong label).
    pub matrix: ConfusionMatrix,
    /// Answers naming neither label, or both.
    pub unparseable: usize,
}

impl AnswerTally {
    /// Adds the `answers` generated for `prompts` (in the same order).
    pub fn add(&mut self, prompts: &[TokenizedExample], answers: &GeneratedAnswers) {
        self.unparseable += answers.unparseable;
        for (item, answer) in prompts.iter().zip(&answers.answers) {
            let wrong = match item.label {
                Sentiment::Positive => Sentiment::Negative,
                Sentiment::Negative => Sentiment::Positive,
            };
            self.matrix.push(item.label, answer.unwrap_or(wrong));
        }
    }

    /// Replaces this rank's tally by the sum of all ranks'.
    fn merge_over(&mut self, collective: &dyn Collective) -> Result<(), FinetuneError> {
        let mut counts = [0u64; 5];
        counts[..4].copy_from_slice(self.matrix.counts.as_flattened());
        counts[4] = self.unparseable as u64;
        all_reduce_counts(collective, &mut counts)?;
        self.matrix.counts.as_flattened_mut().copy_from_slice(&counts[..4]);
        self.unparseable = counts[4] as usize;
        Ok(())
    }
}
