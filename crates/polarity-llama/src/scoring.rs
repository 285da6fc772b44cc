//! Zero-shot sentiment classification with a causal LM.
//!
//! Two ways to read a label off a prompt that ends in "Answer (positive or negative):":
//!
//! - **label-word scoring** ([`LabelWords`]): one forward pass per batch; the
//!   class scores are the next-token logits of the label words `" negative"` and `" positive"` (each
//!   a single token, with its leading space) after each row's last real token;
//! - **generation** ([`generate_answers`]): greedy decoding of a few tokens, then [`parse_answer`];
//!   answers naming neither label (or both) are counted as unparseable.

use burn::prelude::*;
use polarity_core::Sentiment;
use polarity_tokenize::PaddingBatcher;

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
        let [negative, positive] = polarity_tokenize::label_word_ids(tokenizer.inner(), true)?;
        let single = |sentiment: Sentiment, ids: Vec<u32>| match ids[..] {
            [id] => Ok(id),
            _ => Err(LlamaError::LabelWordNotSingleToken {
                word: format!(" {}", sentiment.word()),
                count: ids.len(),
                ids,
            }),
        };
        Ok(Self { negative: single(Sentiment::Negative, negative)?, positive: single(Sentiment::Positive, positive)? })
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
        let batch = PaddingBatcher::new(0).pad_ids::<B, _>(prompts, device);
        self.select(model.last_token_logits(batch.input_ids, batch.attention_mask))
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
    // Ids past the embedding table would index out of it in the forward pass: refused here.
    let vocab_size = model.vocab_size();
    if let Some(&id) = prompts.iter().flatten().find(|&&id| id as usize >= vocab_size) {
        return Err(LlamaError::TokenIdOutOfRange { what: "prompt".into(), id: i64::from(id), vocab_size });
    }
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
