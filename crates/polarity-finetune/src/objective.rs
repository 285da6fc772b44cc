//! Training a causal LM as a classifier with polarity's trainer: the answer-only objective.
//!
//! It lives here, above both the model crate and the trainer, so that polarity-llama knows nothing of
//! training loops.
//!
//! The prompt ends in the answer cue and the answer is one label word, so the loss is the next-token
//! cross-entropy (over the whole vocabulary, as a causal LM is trained) of the gold label word at the
//! prompt's last real token: exactly what a causal-LM loss with every prompt and padding position
//! labelled `-100` computes on `prompt + answer`, but without running the answer token through the
//! model and with the LM head applied to one position per row instead of all of them.
//!
//! Evaluation scores the two label words at that same position ([`LabelWords::select`]).

use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use polarity_llama::{LabelWords, Llama};
use polarity_tokenize::{PaddingBatcher, TokenIds, TokenizedExample};
use polarity_train::{BatchScorer, Objective, TrainError};

/// The answer-only causal-LM objective for [`Llama`] with [`polarity_train::Trainer`].
///
/// The training examples' tokens are prompts (see [`PromptEncoder`](polarity_llama::PromptEncoder)); the gold
/// answer is the label word of each example's label.
#[derive(Clone, Copy, Debug)]
pub struct CausalLmObjective {
    label_words: LabelWords,
    pad_id: u32,
}

impl CausalLmObjective {
    /// Answers are `label_words`; batches are right-padded with `pad_id`.
    pub fn new(label_words: LabelWords, pad_id: u32) -> Self {
        Self { label_words, pad_id }
    }

    /// The label words.
    pub fn label_words(&self) -> LabelWords {
        self.label_words
    }

    fn next_token_logits<B: Backend>(
        &self,
        model: &Llama<B>,
        batch: &[&TokenizedExample],
        device: &B::Device,
    ) -> Result<Tensor<B, 2>, TrainError> {
        let rows: Vec<&TokenIds> = batch.iter().map(|item| &item.tokens).collect();
        next_token_logits(model, &rows, self.pad_id, device)
    }
}

/// The next-token logits `[rows, vocab]` after each prompt (right-padded into one batch).
fn next_token_logits<B: Backend>(
    model: &Llama<B>,
    prompts: &[&TokenIds],
    pad_id: u32,
    device: &B::Device,
) -> Result<Tensor<B, 2>, TrainError> {
    if prompts.is_empty() {
        return Err(TrainError::Model("empty batch".into()));
    }
    if let Some(position) = prompts.iter().position(|prompt| prompt.is_empty()) {
        return Err(TrainError::Model(format!("prompt {position} of the batch has no tokens")));
    }
    let batch = PaddingBatcher::new(pad_id).pad::<B>(prompts, device);
    Ok(model.last_token_logits(batch.input_ids, batch.attention_mask))
}

/// The mean next-token cross-entropy of `answers[i]` right after `prompts[i]`: the causal-LM loss of
/// `prompt + answer` with only the answer token labelled.
pub fn answer_loss<B: Backend>(
    model: &Llama<B>,
    prompts: &[&[u32]],
    answers: &[u32],
    pad_id: u32,
    device: &B::Device,
) -> Result<Tensor<B, 1>, TrainError> {
    let rows: Vec<TokenIds> = prompts.iter().map(|ids| TokenIds::new(ids.to_vec())).collect();
    answer_loss_of(model, &rows.iter().collect::<Vec<_>>(), answers, pad_id, device)
}

fn answer_loss_of<B: Backend>(
    model: &Llama<B>,
    prompts: &[&TokenIds],
    answers: &[u32],
    pad_id: u32,
    device: &B::Device,
) -> Result<Tensor<B, 1>, TrainError> {
    if prompts.len() != answers.len() {
        return Err(TrainError::Model(format!("{} prompts but {} answers", prompts.len(), answers.len())));
    }
    let vocab = model.vocab_size();
    if let Some(&answer) = answers.iter().find(|&&answer| answer as usize >= vocab) {
        return Err(TrainError::Model(format!("answer token {answer} is outside the vocabulary of {vocab}")));
    }
    let logits = next_token_logits(model, prompts, pad_id, device)?;
    let targets = answers.iter().map(|&id| i64::from(id)).collect::<Vec<_>>();
    let targets = Tensor::<B, 1, Int>::from_data(TensorData::new(targets, [answers.len()]), device);
    Ok(CrossEntropyLossConfig::new().init(device).forward(logits, targets))
}

impl<B: Backend> BatchScorer<B, Llama<B>> for CausalLmObjective {
    /// `[batch, 2]` next-token logits of `[negative, positive]` label words.
    fn class_scores(
        &self,
        model: &Llama<B>,
        batch: &[&TokenizedExample],
        device: &B::Device,
    ) -> Result<Tensor<B, 2>, TrainError> {
        Ok(self.label_words.select(self.next_token_logits(model, batch, device)?))
    }
}

impl<B: AutodiffBackend> Objective<B, Llama<B>> for CausalLmObjective {
    fn loss(
        &self,
        model: &Llama<B>,
        batch: &[&TokenizedExample],
        device: &B::Device,
    ) -> Result<Tensor<B, 1>, TrainError> {
        let ids = self.label_words.ids();
        let answers: Vec<u32> = batch.iter().map(|item| ids[item.label.index()]).collect();
        let prompts: Vec<&TokenIds> = batch.iter().map(|item| &item.tokens).collect();
        answer_loss_of(model, &prompts, &answers, self.pad_id, device)
    }
}
