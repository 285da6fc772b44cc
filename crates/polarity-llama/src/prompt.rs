//! Reviews as prompts: the [`Encode`] stage of a causal-LM classifier.
//!
//! A causal LM classifies a review by reading it inside an instruction that ends in the answer cue
//! (`Answer (positive or negative):`) and then scoring the label word that follows. [`PromptEncoder`]
//! turns reviews into those prompts' token ids, shortening only the review when a prompt would exceed
//! the maximum length (the instruction and the answer cue are never cut), so that every other stage of
//! polarity (batching, the trainer, evaluation) sees ordinary [`TokenIds`].

use polarity_tokenize::{Encode, PromptTemplate, TokenIds, TokenizeError};

use crate::{LlamaError, LlamaTokenizer};

/// Encodes reviews as classification prompts of at most `max_length` tokens.
///
/// ```
/// use polarity_llama::{LlamaTokenizer, PromptEncoder};
/// use polarity_tokenize::{Encode, PromptTemplate};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let path = std::path::Path::new("../../../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf");
/// # if !path.exists() { return Ok(()); }
/// let gguf = polarity_llama::gguf::GgufFile::open(path)?;
/// let tokenizer = LlamaTokenizer::from_gguf(&gguf)?;
/// let encoder = PromptEncoder::new(tokenizer, PromptTemplate::default(), 64)?;
/// let prompts = encoder.encode_batch(&["A quiet, moving film.", &"Far too long. ".repeat(100)])?;
/// assert!(prompts.iter().all(|p| p.len() <= 64));
/// assert_eq!(prompts[1].len(), 64); // the long review was shortened, the answer cue kept
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct PromptEncoder {
    tokenizer: LlamaTokenizer,
    template: PromptTemplate,
    max_length: usize,
}

impl PromptEncoder {
    /// Prompts from `template` in at most `max_length` tokens (a beginning-of-sequence token included
    /// when the tokenizer adds one). An error if the template alone does not leave room for a review.
    pub fn new(tokenizer: LlamaTokenizer, template: PromptTemplate, max_length: usize) -> Result<Self, LlamaError> {
        let encoder = Self { tokenizer, template, max_length };
        // Fail now, not in the middle of a dataset, when the template cannot fit.
        let empty = encoder.encode_one("")?;
        if empty.len() >= max_length {
            return Err(LlamaError::Prompt(TokenizeError::PromptTooLong { template_tokens: empty.len(), max_length }));
        }
        Ok(encoder)
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &LlamaTokenizer {
        &self.tokenizer
    }

    /// The template.
    pub fn template(&self) -> &PromptTemplate {
        &self.template
    }

    /// The maximum prompt length in tokens.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    fn bos(&self) -> Option<u32> {
        self.tokenizer.bos_token_id.filter(|_| self.tokenizer.add_bos_token)
    }

    fn encode_one(&self, review: &str) -> Result<Vec<u32>, TokenizeError> {
        let bos = self.bos();
        let budget = self.max_length.saturating_sub(usize::from(bos.is_some()));
        let prompt = self.template.encode(self.tokenizer.inner(), review, budget, false)?;
        Ok(bos.into_iter().chain(prompt.ids).collect())
    }

    /// How many of `reviews` do not fit whole and get shortened.
    pub fn count_shortened(&self, reviews: &[&str]) -> Result<usize, LlamaError> {
        let budget = self.max_length.saturating_sub(usize::from(self.bos().is_some()));
        let prompts = self.template.encode_batch(self.tokenizer.inner(), reviews, budget, false)?;
        Ok(prompts.iter().filter(|p| p.truncated).count())
    }
}

impl Encode for PromptEncoder {
    fn encode_batch(&self, texts: &[&str]) -> Result<Vec<TokenIds>, TokenizeError> {
        use rayon::prelude::*;
        texts
            .par_iter()
            .map(|review| {
                let ids = self.encode_one(review)?;
                Ok(TokenIds { type_ids: vec![0; ids.len()], ids })
            })
            .collect()
    }

    /// The tokenizer's padding token, else its end-of-sequence token, else 0: padded positions are
    /// masked out, so the id only has to exist in the vocabulary.
    fn pad_id(&self) -> u32 {
        self.tokenizer.pad_token_id.or(self.tokenizer.eos_token_id).unwrap_or(0)
    }
}
