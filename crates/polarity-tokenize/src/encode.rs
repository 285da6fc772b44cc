//! Stage 1: text to token ids.

use std::path::Path;

use polarity_hub::{RepoKind, RepoSource};
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::TokenizeError;

/// The token ids of one text, unpadded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenIds {
    /// Token ids, special tokens included.
    pub ids: Vec<u32>,
    /// Segment ids, one per token.
    pub type_ids: Vec<u32>,
}

impl TokenIds {
    /// One segment's ids (every type id 0), as a causal LM's prompts are.
    pub fn new(ids: Vec<u32>) -> Self {
        Self { type_ids: vec![0; ids.len()], ids }
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// The encoding stage: texts in, unpadded token ids out.
pub trait Encode: Send + Sync {
    /// Encodes `texts` (in parallel where the implementation can), one [`TokenIds`] per text.
    fn encode_batch(&self, texts: &[&str]) -> Result<Vec<TokenIds>, TokenizeError>;

    /// The id padding positions are filled with.
    fn pad_id(&self) -> u32;

    /// Token counts of `texts`, as [`encode_batch`](Encode::encode_batch) would produce them.
    fn token_lengths(&self, texts: &[&str]) -> Result<Vec<usize>, TokenizeError> {
        Ok(self.encode_batch(texts)?.iter().map(TokenIds::len).collect())
    }
}

/// A Hugging Face `tokenizer.json` with truncation to `max_length` and padding switched off.
#[derive(Clone)]
pub struct HfTokenizer {
    tokenizer: Tokenizer,
    max_length: Option<usize>,
    pad_id: u32,
}

impl std::fmt::Debug for HfTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfTokenizer")
            .field("vocab_size", &self.tokenizer.get_vocab_size(true))
            .field("max_length", &self.max_length)
            .field("pad_id", &self.pad_id)
            .finish()
    }
}

impl HfTokenizer {
    /// `tokenizer.json` of a hub model id or a local model directory, truncating to `max_length`.
    pub fn from_pretrained(model: &str, max_length: usize) -> Result<Self, TokenizeError> {
        let path = RepoSource::parse(model, RepoKind::Model).file("tokenizer.json")?;
        Self::from_file(path, max_length)
    }

    /// `tokenizer.json` of a hub model id or a local model directory, without truncation (for length
    /// statistics).
    pub fn from_pretrained_untruncated(model: &str) -> Result<Self, TokenizeError> {
        let path = RepoSource::parse(model, RepoKind::Model).file("tokenizer.json")?;
        Self::new(Self::read(&path)?, None)
    }

    /// A `tokenizer.json` file, truncating to `max_length`.
    pub fn from_file(path: impl AsRef<Path>, max_length: usize) -> Result<Self, TokenizeError> {
        Self::new(Self::read(path.as_ref())?, Some(max_length))
    }

    fn read(path: &Path) -> Result<Tokenizer, TokenizeError> {
        Tokenizer::from_file(path).map_err(|e| TokenizeError::Load { path: path.to_path_buf(), reason: e.to_string() })
    }

    /// Wraps an existing tokenizer (for example one rebuilt from GGUF metadata); `None` disables truncation.
    pub fn new(mut tokenizer: Tokenizer, max_length: Option<usize>) -> Result<Self, TokenizeError> {
        // The pad id the checkpoint declares, before its padding is switched off.
        let pad_id = tokenizer
            .get_padding()
            .map(|p| p.pad_id)
            .or_else(|| ["[PAD]", "<pad>", "<|pad|>"].iter().find_map(|t| tokenizer.token_to_id(t)))
            .unwrap_or(0);
        tokenizer.with_padding(None);
        let truncation = max_length.map(|max_length| TruncationParams {
            direction: TruncationDirection::Right,
            max_length,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
        });
        if let Some(0) = max_length {
            return Err(TokenizeError::Truncation { max_length: 0, reason: "must be at least 1".into() });
        }
        tokenizer
            .with_truncation(truncation)
            .map_err(|e| TokenizeError::Truncation { max_length: max_length.unwrap_or(0), reason: e.to_string() })?;
        Ok(Self { tokenizer, max_length, pad_id })
    }

    /// The wrapped tokenizer (truncation and padding as configured here).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The truncation length, if any.
    pub fn max_length(&self) -> Option<usize> {
        self.max_length
    }

    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }
}

impl Encode for HfTokenizer {
    fn encode_batch(&self, texts: &[&str]) -> Result<Vec<TokenIds>, TokenizeError> {
        let encodings =
            self.tokenizer.encode_batch(texts.to_vec(), true).map_err(|e| TokenizeError::Encode(e.to_string()))?;
        Ok(encodings
            .into_iter()
            .map(|e| TokenIds { ids: e.get_ids().to_vec(), type_ids: e.get_type_ids().to_vec() })
            .collect())
    }

    fn pad_id(&self) -> u32 {
        self.pad_id
    }
}
