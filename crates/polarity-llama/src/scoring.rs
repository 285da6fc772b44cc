//! Zero-shot sentiment classification with a causal LM.
//!
//! Two ways to read a label off a prompt that ends in "Answer (positive or negative):":
//!
//! - **label-word scoring** ([`LabelWords`], [`LabelWordScorer`]): one forward pass per batch; the
//!   class scores are the next-token logits of the label words `" negative"` and `" positive"` (each
//!   a single token, with its leading space) after each row's last real token;
//! - **generation** ([`generate_answers`]): greedy decoding of a few tokens, then [`parse_answer`];
//!   answers naming neither label (or both) are counted as unparseable.

use burn::prelude::*;
use polarity_core::{ClassScorer, Sentiment, TokenBatch};

use crate::{Llama, LlamaError, LlamaTokenizer};

/// The token ids of the label words, in class-index order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LabelWords {
    /// The id of `" negative"`.
    pub negative: u32,
    /// The id of `" positive"`.
    pub positive: u32,
}

impl LabelWords {
    /// The ids of `" negative"` and `" positive"` ([`Sentiment::word`] with the space a word takes
    /// after "Answer (positive or negative):"); each must be a single token.
    pub fn from_tokenizer(tokenizer: &LlamaTokenizer) -> Result<Self, LlamaError> {
        let id = |sentiment: Sentiment| {
            let word = format!(" {}", sentiment.word());
            let encoding =
                tokenizer.inner().encode(word.as_str(), false).map_err(|e| LlamaError::Tokenizer(e.to_string()))?;
            match encoding.get_ids() {
                &[id] => Ok(id),
                ids => Err(LlamaError::LabelWordNotSingleToken { word, count: ids.len(), ids: ids.to_vec() }),
            }
        };
        Ok(Self { negative: id(Sentiment::Negative)?, positive: id(Sentiment::Positive)? })
    }

    /// `[negative, positive]`.
    pub fn ids(&self) -> [u32; 2] {
        [self.negative, self.positive]
    }

    /// The label-word columns of next-token logits: `[batch, vocab] -> [batch, 2]`.
    pub fn select<B: Backend>(&self, next_token_logits: Tensor<B, 2>) -> Tensor<B, 2> {
        let device = next_token_logits.device();
        let ids = Tensor::<B, 1, Int>::from_data(TensorData::new(self.ids().map(i64::from).to_vec(), [2]), &device);
        next_token_logits.select(1, ids)
    }

    /// Class scores `[batch, 2]` of tokenized prompts (right-padded into one batch, one forward pass).
    pub fn scores<B: Backend>(&self, model: &Llama<B>, prompts: &[Vec<u32>], device: &B::Device) -> Tensor<B, 2> {
        let batch = right_padded_batch::<B>(prompts, 0, device);
        self.select(model.last_token_logits(batch.input_ids, batch.attention_mask))
    }
}

/// A causal LM as a sentiment classifier: label-word logits after the prompt.
#[derive(Debug)]
pub struct LabelWordScorer<B: Backend> {
    /// The language model.
    pub model: Llama<B>,
    /// The label-word token ids.
    pub label_words: LabelWords,
}

impl<B: Backend> ClassScorer<B> for LabelWordScorer<B> {
    /// `[batch, 2]` next-token logits of `[" negative", " positive"]` after each row's last real token.
    fn class_scores(&self, batch: TokenBatch<B>) -> Tensor<B, 2> {
        self.label_words.select(self.model.last_token_logits(batch.input_ids, batch.attention_mask))
    }
}

/// Right-pads token id rows with `pad_id` into a [`TokenBatch`] (`[rows, longest row]`).
pub fn right_padded_batch<B: Backend>(rows: &[Vec<u32>], pad_id: u32, device: &B::Device) -> TokenBatch<B> {
    let seq_len = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(rows.len() * seq_len);
    let mut mask = Vec::with_capacity(rows.len() * seq_len);
    for row in rows {
        ids.extend(row.iter().map(|&id| i64::from(id)));
        ids.extend(std::iter::repeat_n(i64::from(pad_id), seq_len - row.len()));
        mask.extend(std::iter::repeat_n(1i64, row.len()));
        mask.extend(std::iter::repeat_n(0i64, seq_len - row.len()));
    }
    let shape = [rows.len(), seq_len];
    TokenBatch {
        input_ids: Tensor::from_data(TensorData::new(ids, shape), device),
        attention_mask: Tensor::from_data(TensorData::new(mask, shape), device),
        token_type_ids: Tensor::zeros(shape, device),
    }
}

/// The sentiment an answer names: the one of "positive"/"negative" that occurs in it (any case),
/// `None` when neither or both occur.
///
/// ```
/// use polarity_core::Sentiment;
/// use polarity_llama::parse_answer;
///
/// assert_eq!(parse_answer(" Positive.\n"), Some(Sentiment::Positive));
/// assert_eq!(parse_answer(" negative"), Some(Sentiment::Negative));
/// assert_eq!(parse_answer(" I cannot tell."), None);
/// assert_eq!(parse_answer(" positive or negative"), None);
/// ```
pub fn parse_answer(answer: &str) -> Option<Sentiment> {
    let answer = answer.to_lowercase();
    let named: Vec<Sentiment> = Sentiment::ALL.into_iter().filter(|s| answer.contains(s.word())).collect();
    match named[..] {
        [sentiment] => Some(sentiment),
        _ => None,
    }
}

/// What greedy generation answered for a set of prompts.
#[derive(Clone, Debug, PartialEq)]
pub struct GeneratedAnswers {
    /// The decoded continuation of each prompt.
    pub texts: Vec<String>,
    /// The parsed label of each continuation.
    pub answers: Vec<Option<Sentiment>>,
    /// How many continuations named no single label.
    pub unparseable: usize,
}

/// Greedily generates up to `max_new_tokens` after each prompt (stopping at the tokenizer's end of
/// sequence) and parses the answers.
pub fn generate_answers<B: Backend>(
    model: &Llama<B>,
    tokenizer: &LlamaTokenizer,
    prompts: &[&str],
    max_new_tokens: usize,
    device: &B::Device,
) -> Result<GeneratedAnswers, LlamaError> {
    let encoded = prompts.iter().map(|prompt| tokenizer.encode(prompt)).collect::<Result<Vec<_>, _>>()?;
    generate_answers_for_ids(model, tokenizer, &encoded, max_new_tokens, device)
}

/// [`generate_answers`] for prompts already tokenized (say by a
/// [`PromptEncoder`](crate::PromptEncoder), which shortens long reviews).
pub fn generate_answers_for_ids<B: Backend>(
    model: &Llama<B>,
    tokenizer: &LlamaTokenizer,
    prompts: &[Vec<u32>],
    max_new_tokens: usize,
    device: &B::Device,
) -> Result<GeneratedAnswers, LlamaError> {
    let generated = model.generate_greedy(prompts, max_new_tokens, tokenizer.eos_token_id, device);
    let mut texts = Vec::with_capacity(generated.len());
    for tokens in &generated {
        let answer: Vec<u32> = tokens.iter().copied().filter(|&t| Some(t) != tokenizer.eos_token_id).collect();
        texts.push(tokenizer.decode(&answer)?);
    }
    let answers: Vec<Option<Sentiment>> = texts.iter().map(|text| parse_answer(text)).collect();
    let unparseable = answers.iter().filter(|answer| answer.is_none()).count();
    Ok(GeneratedAnswers { texts, answers, unparseable })
}
