//! Stage 1: text to token ids.

use std::path::Path;

use std::str::FromStr;

use polarity_hub::{RepoKind, RepoSource};
use tokenizers::{PostProcessor, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

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

/// The largest `tokenizer.json` read, in bytes (Llama 3's is 9 MB, the largest published ones ~35 MB).
pub const MAX_TOKENIZER_BYTES: u64 = 512 << 20;

/// What a model can take as input, to check a tokenizer against it ([`HfTokenizer::check_model`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelLimits {
    /// The model, for messages (its hub id or directory).
    pub model: String,
    /// Rows of the token embedding: every id the tokenizer can produce must be below it.
    pub vocab_size: usize,
    /// Position embeddings: the truncation length may not exceed it.
    pub max_positions: usize,
    /// Rows of the segment embedding, if the model reads token type ids.
    pub type_vocab_size: Option<usize>,
    /// Whether the model classifies from its first token (BERT's `[CLS]`): then the tokenizer must put a
    /// special token there, or the first word of every text would be pooled.
    pub pools_first_token: bool,
}

/// A Hugging Face `tokenizer.json` with truncation to `max_length` and padding switched off.
///
/// Loading checks what the tokenizers crate would silently get wrong: a truncation length that leaves no
/// room for text beside the special tokens the post-processor adds (the crate then switches truncation
/// off, or panics in debug builds). [`check_model`](Self::check_model) checks the pairing with a model:
/// ids inside its embedding, the length inside its positions, a leading special token for a classifier
/// that pools the first one.
#[derive(Clone)]
pub struct HfTokenizer {
    tokenizer: Tokenizer,
    max_length: Option<usize>,
    pad_id: u32,
    source: String,
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
        Ok(Self::new(Self::read(&path)?, None)?.named(path.display().to_string()))
    }

    /// A `tokenizer.json` file, truncating to `max_length`.
    pub fn from_file(path: impl AsRef<Path>, max_length: usize) -> Result<Self, TokenizeError> {
        let path = path.as_ref();
        Ok(Self::new(Self::read(path)?, Some(max_length))?.named(path.display().to_string()))
    }

    fn read(path: &Path) -> Result<Tokenizer, TokenizeError> {
        read_tokenizer_json(path)
    }

    /// The same tokenizer, called `source` in messages (its file).
    fn named(self, source: String) -> Self {
        Self { source, ..self }
    }

    /// Wraps an existing tokenizer (for example one rebuilt from GGUF metadata); `None` disables truncation.
    ///
    /// A `max_length` must leave room for one token of text beside the special tokens the post-processor
    /// adds (`[CLS]` and `[SEP]` for BERT: at least 3), else [`TokenizeError::Truncation`].
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
        // tokenizers subtracts the special tokens from the limit unchecked: below them it panics (debug)
        // or wraps around and stops truncating (release); equal to them it keeps no text at all.
        let special = tokenizer.get_post_processor().map_or(0, |processor| processor.added_tokens(false));
        if let Some(max_length) = max_length.filter(|&max_length| max_length <= special) {
            return Err(TokenizeError::Truncation {
                max_length,
                reason: format!(
                    "must be at least {}: the tokenizer adds {special} special token(s) and needs room for one of text",
                    special + 1
                ),
            });
        }
        tokenizer
            .with_truncation(truncation)
            .map_err(|e| TokenizeError::Truncation { max_length: max_length.unwrap_or(0), reason: e.to_string() })?;
        Ok(Self { tokenizer, max_length, pad_id, source: "the tokenizer".into() })
    }

    /// Checks that this tokenizer's output fits `model`: every id it can produce (added tokens included)
    /// is a row of the model's embedding, every token type id of its template a row of the segment
    /// embedding, the truncation length within the position embeddings, and, for a model that pools the
    /// first token, a special token first. A text encoded by a tokenizer that passes can never index
    /// outside the model's tables.
    pub fn check_model(&self, model: &ModelLimits) -> Result<(), TokenizeError> {
        let mismatch = |problem: String| TokenizeError::ModelMismatch {
            tokenizer: self.source.clone(),
            model: model.model.clone(),
            problem,
        };
        let vocab = self.tokenizer.get_vocab(true);
        if let Some((token, &id)) = vocab.iter().max_by_key(|(_, id)| **id)
            && id as usize >= model.vocab_size
        {
            return Err(mismatch(format!(
                "token {token:?} has id {id}, outside the model's vocab_size {} (the tokenizer has {} tokens with \
                 its added ones)",
                model.vocab_size,
                vocab.len()
            )));
        }
        match self.max_length {
            None => return Err(mismatch("the tokenizer does not truncate; the model needs a maximum length".into())),
            Some(max_length) if max_length > model.max_positions => {
                return Err(mismatch(format!(
                    "max_length {max_length} exceeds the model's max_position_embeddings {}",
                    model.max_positions
                )));
            }
            Some(_) => {}
        }
        // One probe word shows the template: its special tokens and token type ids.
        let probe = self.tokenizer.encode("a", true).map_err(|e| TokenizeError::Encode(e.to_string()))?;
        if model.pools_first_token && probe.get_special_tokens_mask().first() != Some(&1) {
            return Err(mismatch(
                "the tokenizer adds no special token in front (no post-processor adding [CLS]), so the classifier \
                 would pool the first word of each text"
                    .into(),
            ));
        }
        if let Some(types) = model.type_vocab_size
            && let Some(&type_id) = probe.get_type_ids().iter().find(|&&t| t as usize >= types)
        {
            return Err(mismatch(format!("token type id {type_id} is outside the model's type_vocab_size {types}")));
        }
        Ok(())
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

/// Reads `path`, a `tokenizer.json`: a regular file (a FIFO is an error, not a hang) of at most
/// [`MAX_TOKENIZER_BYTES`], parsed by [`parse_tokenizer_json`].
pub fn read_tokenizer_json(path: &Path) -> Result<Tokenizer, TokenizeError> {
    let text = polarity_hub::files::read_regular_to_string_within(path, MAX_TOKENIZER_BYTES)
        .map_err(|e| TokenizeError::Load { path: path.to_path_buf(), reason: e.to_string() })?;
    parse_tokenizer_json(&text, path)
}

/// Parses the text of a `tokenizer.json` (`path` names it in errors): valid JSON that the tokenizers crate
/// accepts, else [`TokenizeError::Load`]. The JSON's syntax is checked first because tokenizers 0.22 panics,
/// rather than failing, on some malformed files (a decoder with a non-string key); a panic inside tokenizers is
/// caught and reported as an error as well.
pub fn parse_tokenizer_json(text: &str, path: &Path) -> Result<Tokenizer, TokenizeError> {
    let load_error = |reason: String| TokenizeError::Load { path: path.to_path_buf(), reason };
    serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(|e| load_error(format!("not valid JSON: {e}")))?;
    match std::panic::catch_unwind(|| Tokenizer::from_str(text)) {
        Ok(parsed) => parsed.map_err(|e| load_error(e.to_string())),
        Err(_) => Err(load_error("the tokenizers crate could not parse it (it panicked)".into())),
    }
}
