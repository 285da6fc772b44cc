//! The tokenizer of a Llama model: a [`tokenizers::Tokenizer`] with the model's special token ids,
//! read from a `tokenizer.json` or rebuilt from GGUF `tokenizer.ggml.*` metadata.

use std::path::Path;

use tokenizers::decoders::DecoderWrapper;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use crate::LlamaError;
use crate::gguf::GgufFile;

/// llama.cpp's token type of control (special) tokens in `tokenizer.ggml.token_type`.
const CONTROL_TOKEN_TYPE: i64 = 3;

/// A tokenizer and the special tokens a causal LM needs.
#[derive(Clone, Debug)]
pub struct LlamaTokenizer {
    tokenizer: Tokenizer,
    /// Beginning-of-sequence token.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token (generation stops on it).
    pub eos_token_id: Option<u32>,
    /// Padding token.
    pub pad_token_id: Option<u32>,
    /// Whether [`encode`](Self::encode) prepends `bos_token_id`.
    pub add_bos_token: bool,
}

impl LlamaTokenizer {
    /// Wraps a tokenizer; [`encode`](Self::encode) adds no special tokens of its own.
    pub fn new(
        tokenizer: Tokenizer,
        bos_token_id: Option<u32>,
        eos_token_id: Option<u32>,
        pad_token_id: Option<u32>,
    ) -> Self {
        Self { tokenizer, bos_token_id, eos_token_id, pad_token_id, add_bos_token: false }
    }

    /// Reads a `tokenizer.json`; special tokens are looked up by their usual Llama spellings.
    pub fn from_file(path: &Path) -> Result<Self, LlamaError> {
        let tokenizer =
            Tokenizer::from_file(path).map_err(|e| LlamaError::Tokenizer(format!("{}: {e}", path.display())))?;
        let find = |names: &[&str]| names.iter().find_map(|name| tokenizer.token_to_id(name));
        let bos = find(&["<|begin_of_text|>", "<s>", "<|endoftext|>"]);
        let eos = find(&["<|eot_id|>", "<|end_of_text|>", "</s>", "<|im_end|>", "<|endoftext|>"]);
        Ok(Self::new(tokenizer, bos, eos, None))
    }

    /// Rebuilds the byte-level BPE tokenizer stored in GGUF metadata (`tokenizer.ggml.model` =
    /// `gpt2`), as transformers' GGUF converter does for Llama-architecture files with a GPT-2 style
    /// vocabulary: a BPE model over `tokens` and `merges` (unknown token from `unknown_token_id`), a
    /// byte-level pre-tokenizer with the GPT-2 split regex and no prefix space, the matching
    /// byte-level decoder, and control tokens (`token_type` 3) registered as special tokens.
    ///
    /// Like transformers, the split regex is GPT-2's whatever `tokenizer.ggml.pre` names; the value is
    /// only logged.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self, LlamaError> {
        let model = gguf.str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(LlamaError::Unsupported(format!(
                "GGUF tokenizer model {model:?} (only the byte-level BPE \"gpt2\" model is implemented)"
            )));
        }
        if let Some(pre) = gguf.get("tokenizer.ggml.pre").and_then(|v| v.as_str()) {
            tracing::debug!(pre, "GGUF pre-tokenizer name (the GPT-2 byte-level split is used, as in transformers)");
        }
        let tokens = gguf.strings("tokenizer.ggml.tokens")?;
        let merges = gguf
            .strings("tokenizer.ggml.merges")?
            .into_iter()
            .map(|merge| {
                merge.split_once(' ').map(|(left, right)| (left.to_string(), right.to_string())).ok_or_else(|| {
                    LlamaError::Tokenizer(format!("GGUF merge {merge:?} is not two tokens separated by a space"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let token_id = |key: &str| -> Result<Option<u32>, LlamaError> {
            match gguf.opt_usize(key)? {
                None => Ok(None),
                Some(id) if id < tokens.len() => Ok(u32::try_from(id).ok()),
                Some(id) => {
                    Err(LlamaError::Tokenizer(format!("{key} = {id} is outside the vocabulary of {}", tokens.len())))
                }
            }
        };
        let (bos, eos, pad, unk) = (
            token_id("tokenizer.ggml.bos_token_id")?,
            token_id("tokenizer.ggml.eos_token_id")?,
            token_id("tokenizer.ggml.padding_token_id")?,
            token_id("tokenizer.ggml.unknown_token_id")?,
        );

        let vocab: Vocab = tokens.iter().enumerate().map(|(id, token)| (token.to_string(), id as u32)).collect();
        let mut bpe = BPE::builder().vocab_and_merges(vocab, merges).fuse_unk(true).byte_fallback(true);
        if let Some(unk) = unk {
            bpe = bpe.unk_token(tokens[unk as usize].to_string());
        }
        let bpe = bpe.build().map_err(|e| LlamaError::Tokenizer(format!("building the BPE model: {e}")))?;

        let mut tokenizer = Tokenizer::new(bpe);
        let byte_level = ByteLevel::new(false, false, true);
        tokenizer.with_pre_tokenizer(Some(byte_level));
        tokenizer.with_decoder(Some(DecoderSequence::new(vec![
            DecoderWrapper::ByteFallback(ByteFallback::new()),
            DecoderWrapper::Fuse(Fuse::new()),
            DecoderWrapper::Replace(
                Replace::new("▁", " ").map_err(|e| LlamaError::Tokenizer(format!("decoder: {e}")))?,
            ),
            DecoderWrapper::ByteLevel(byte_level),
        ])));

        if let Some(types) = gguf.get("tokenizer.ggml.token_type").and_then(|v| v.as_array()) {
            let special: Vec<AddedToken> = types
                .iter()
                .zip(&tokens)
                .filter(|(kind, _)| kind.as_i64() == Some(CONTROL_TOKEN_TYPE))
                .map(|(_, token)| AddedToken::from(token.to_string(), true).normalized(false))
                .collect();
            tokenizer.add_special_tokens(&special);
        }

        let add_bos_token = gguf.opt_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(false);
        Ok(Self { tokenizer, bos_token_id: bos, eos_token_id: eos, pad_token_id: pad, add_bos_token })
    }

    /// The underlying tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Token ids of `text` (with `bos_token_id` first when `add_bos_token` is set).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, LlamaError> {
        let encoding = self.tokenizer.encode(text, false).map_err(|e| LlamaError::Tokenizer(e.to_string()))?;
        let mut ids = Vec::with_capacity(encoding.len() + 1);
        if self.add_bos_token {
            ids.extend(self.bos_token_id);
        }
        ids.extend_from_slice(encoding.get_ids());
        Ok(ids)
    }

    /// The text of `ids` (special tokens included).
    pub fn decode(&self, ids: &[u32]) -> Result<String, LlamaError> {
        self.tokenizer.decode(ids, false).map_err(|e| LlamaError::Tokenizer(e.to_string()))
    }

    /// The id of a token string, if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }
}
