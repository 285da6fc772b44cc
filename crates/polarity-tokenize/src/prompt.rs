//! Stage 4 (causal LMs): the classification prompt and the label words.

use polarity_core::Sentiment;
use rayon::prelude::*;
use tokenizers::Tokenizer;

use crate::TokenizeError;

/// The reference pipeline's prompt; `{text}` is replaced by the review.
pub const DEFAULT_TEMPLATE: &str = "You are a sentiment analysis assistant.\nClassify the following IMDB movie review as positive or negative.\n\nReview:\n{text}\n\nAnswer (positive or negative):";

const PLACEHOLDER: &str = "{text}";

/// A prompt with one `{text}` placeholder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromptTemplate {
    template: String,
}

impl Default for PromptTemplate {
    fn default() -> Self {
        Self { template: DEFAULT_TEMPLATE.to_string() }
    }
}

/// An encoded prompt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromptIds {
    /// The prompt's token ids.
    pub ids: Vec<u32>,
    /// Whether the review was shortened to fit.
    pub truncated: bool,
}

impl PromptTemplate {
    /// A template; it must contain `{text}`.
    pub fn new(template: impl Into<String>) -> Result<Self, TokenizeError> {
        let template = template.into();
        if !template.contains(PLACEHOLDER) {
            return Err(TokenizeError::NoPlaceholder(template));
        }
        Ok(Self { template })
    }

    /// The prompt for `review`.
    ///
    /// ```
    /// let prompt = polarity_tokenize::PromptTemplate::default().render("Loved it.");
    /// assert!(prompt.contains("Review:\nLoved it.\n\nAnswer (positive or negative):"));
    /// ```
    pub fn render(&self, review: &str) -> String {
        self.template.replacen(PLACEHOLDER, review, 1)
    }

    /// Encodes the prompt for `review` in at most `max_length` tokens, shortening the review (at a token
    /// boundary, from the end) and never the instruction or the answer cue.
    ///
    /// `tokenizer` must not truncate by itself (that would cut the answer cue).
    pub fn encode(
        &self,
        tokenizer: &Tokenizer,
        review: &str,
        max_length: usize,
        add_special_tokens: bool,
    ) -> Result<PromptIds, TokenizeError> {
        if tokenizer.get_truncation().is_some() {
            return Err(TokenizeError::Truncation {
                max_length,
                reason: "prompt encoding needs a tokenizer without truncation; it shortens the review itself".into(),
            });
        }
        let encode =
            |text: &str| tokenizer.encode(text, add_special_tokens).map_err(|e| TokenizeError::Encode(e.to_string()));
        let whole = encode(&self.render(review))?;
        if whole.len() <= max_length {
            return Ok(PromptIds { ids: whole.get_ids().to_vec(), truncated: false });
        }
        let template_tokens = encode(&self.render(""))?.len();
        let too_long = || TokenizeError::PromptTooLong { template_tokens, max_length };
        let review_offsets: Vec<(usize, usize)> =
            tokenizer.encode(review, false).map_err(|e| TokenizeError::Encode(e.to_string()))?.get_offsets().to_vec();
        // Tokens can merge across the review's edges, so shrink until the whole prompt fits.
        let mut budget = max_length.checked_sub(template_tokens).ok_or_else(too_long)?.min(review_offsets.len());
        while budget > 0 {
            let mut cut = review_offsets[budget - 1].1.min(review.len());
            while !review.is_char_boundary(cut) {
                cut -= 1;
            }
            let ids = encode(&self.render(&review[..cut]))?;
            if ids.len() <= max_length {
                return Ok(PromptIds { ids: ids.get_ids().to_vec(), truncated: true });
            }
            budget -= 1;
        }
        Err(too_long())
    }

    /// [`encode`](Self::encode) for many reviews, in parallel.
    pub fn encode_batch(
        &self,
        tokenizer: &Tokenizer,
        reviews: &[&str],
        max_length: usize,
        add_special_tokens: bool,
    ) -> Result<Vec<PromptIds>, TokenizeError> {
        reviews.par_iter().map(|review| self.encode(tokenizer, review, max_length, add_special_tokens)).collect()
    }
}

/// The token ids of each label word, `[negative, positive]`, as the model would write them right after
/// the prompt (with a leading space when `leading_space`, as after `Answer (positive or negative):`).
pub fn label_word_ids(tokenizer: &Tokenizer, leading_space: bool) -> Result<[Vec<u32>; 2], TokenizeError> {
    let ids = |sentiment: Sentiment| -> Result<Vec<u32>, TokenizeError> {
        let word = if leading_space { format!(" {}", sentiment.word()) } else { sentiment.word().to_string() };
        let ids = tokenizer.encode(word.as_str(), false).map_err(|e| TokenizeError::Encode(e.to_string()))?;
        if ids.is_empty() {
            return Err(TokenizeError::EmptyLabelWord(word));
        }
        Ok(ids.get_ids().to_vec())
    };
    Ok([ids(Sentiment::Negative)?, ids(Sentiment::Positive)?])
}
