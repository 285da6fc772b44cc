use std::path::PathBuf;

use thiserror::Error;

/// Everything that can go wrong while tokenizing.
#[derive(Debug, Error)]
pub enum TokenizeError {
    /// A tokenizer file that cannot be read or parsed (missing, truncated, not JSON, unknown model).
    #[error("cannot load tokenizer {path}: {reason}")]
    Load {
        /// The tokenizer.json path.
        path: PathBuf,
        /// What the tokenizers crate said.
        reason: String,
    },
    /// The tokenizer could not be resolved by hub id or directory.
    #[error(transparent)]
    Hub(#[from] polarity_hub::HubError),
    /// A truncation length the tokenizer cannot honour (no room for text beside its special tokens).
    #[error("invalid truncation to {max_length} tokens: {reason}")]
    Truncation {
        /// The maximum length asked for.
        max_length: usize,
        /// What the tokenizers crate said.
        reason: String,
    },
    /// Encoding a text failed.
    #[error("cannot encode text: {0}")]
    Encode(String),
    /// The prompt's fixed parts alone are longer than the maximum length.
    #[error(
        "the prompt template alone takes {template_tokens} tokens, leaving no room for a review within {max_length}"
    )]
    PromptTooLong {
        /// Tokens of the template without the review.
        template_tokens: usize,
        /// The maximum length asked for.
        max_length: usize,
    },
    /// A prompt template without the `{text}` placeholder.
    #[error("prompt template has no {{text}} placeholder: {0:?}")]
    NoPlaceholder(String),
    /// A label word that the tokenizer splits into nothing.
    #[error("label word {0:?} encodes to no tokens")]
    EmptyLabelWord(String),
    /// A tokenizer whose output does not fit the model it is paired with.
    #[error("tokenizer {tokenizer} does not fit model {model}: {problem}")]
    ModelMismatch {
        /// The tokenizer (its file).
        tokenizer: String,
        /// The model.
        model: String,
        /// What does not fit, with the values and the limit.
        problem: String,
    },
    /// A batch size of zero.
    #[error("batch size must be at least 1")]
    ZeroBatchSize,
}
