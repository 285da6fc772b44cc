//! The tokenizer of a Llama model: a [`tokenizers::Tokenizer`] with the model's special token ids,
//! read from a `tokenizer.json` (a directory or hub id) or rebuilt from GGUF `tokenizer.ggml.*` metadata.

use std::path::Path;

use polarity_hub::RepoSource;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::LlamaError;
use crate::gguf::GgufFile;

/// llama.cpp's token type of control (special) tokens in `tokenizer.ggml.token_type`.
const CONTROL_TOKEN_TYPE: i64 = 3;

/// The Llama-3 split regex: llama.cpp's `LLAMA_VOCAB_PRE_TYPE_LLAMA3` expression, which is the `Split`
/// pattern of Meta-Llama-3's `tokenizer.json` (contractions case-insensitive, letters with one leading
/// non-letter, digits in groups of at most three, punctuation runs with trailing newlines).
pub const LLAMA3_SPLIT_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizers of GGUF byte-level BPE vocabularies that polarity rebuilds, named by the GGUF
/// `tokenizer.ggml.pre` value, each splitting text as llama.cpp does for that value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgufPreTokenizer {
    /// `gpt-2`, and files without `tokenizer.ggml.pre`: GPT-2's byte-level split regex.
    Gpt2,
    /// `smollm` (SmolLM/SmolLM2): every numeric character on its own (llama.cpp's first expression
    /// `\p{N}`, the `Digits` step of SmolLM2's own `tokenizer.json`), then GPT-2's split.
    /// transformers' GGUF converter skips the first step; the two differ only where a space precedes
    /// a numeric character that the vocabulary can merge with it, such as `½` (24 of IMDB's 50,000
    /// prompts; SmolLM2 has no merges involving digits).
    SmolLm,
    /// `llama-bpe` (also spelled `llama3`, `llama-v3`): [`LLAMA3_SPLIT_REGEX`], and BPE emits a
    /// pre-token that is itself in the vocabulary without applying merges (llama.cpp's
    /// `ignore_merges`, the `tokenizer.json`'s `"ignore_merges": true`).
    Llama3,
}

impl GgufPreTokenizer {
    /// Every `tokenizer.ggml.pre` value that is implemented.
    pub const KNOWN: [&str; 5] = ["gpt-2", "smollm", "llama-bpe", "llama3", "llama-v3"];

    /// The pre-tokenizer llama.cpp uses for a `tokenizer.ggml.pre` value, if polarity implements it.
    pub fn from_name(pre: &str) -> Option<Self> {
        match pre {
            "gpt-2" => Some(Self::Gpt2),
            "smollm" => Some(Self::SmolLm),
            "llama-bpe" | "llama3" | "llama-v3" => Some(Self::Llama3),
            _ => None,
        }
    }

    /// The pre-tokenizer of `gguf`: its `tokenizer.ggml.pre`, GPT-2's when the key is absent (as
    /// llama.cpp and transformers do for old files), and [`LlamaError::GgufUnknownPreTokenizer`] for
    /// any other value.
    pub fn of(gguf: &GgufFile) -> Result<Self, LlamaError> {
        let Some(value) = gguf.get("tokenizer.ggml.pre") else { return Ok(Self::Gpt2) };
        let pre = value.as_str().ok_or_else(|| gguf.wrong_type("tokenizer.ggml.pre", "a string", value))?;
        Self::from_name(pre).ok_or_else(|| LlamaError::GgufUnknownPreTokenizer {
            file: gguf.display_name(),
            pre: pre.to_string(),
            known: Self::KNOWN.join(", "),
        })
    }

    /// The `tokenizers` pre-tokenizer that splits as llama.cpp does, then maps bytes to the byte-level
    /// alphabet.
    fn build(self) -> Result<PreTokenizerWrapper, LlamaError> {
        let split = |regex: &str| {
            Split::new(SplitPattern::Regex(regex.into()), SplitDelimiterBehavior::Isolated, false)
                .map(PreTokenizerWrapper::Split)
                .map_err(|e| LlamaError::Tokenizer(format!("split regex {regex:?}: {e}")))
        };
        Ok(match self {
            Self::Gpt2 => ByteLevel::new(false, false, true).into(),
            Self::SmolLm => {
                PreTokenizerSequence::new(vec![split(r"\p{N}")?, ByteLevel::new(false, false, true).into()]).into()
            }
            // As in Meta-Llama-3's tokenizer.json: the split, then ByteLevel without its own regex.
            Self::Llama3 => {
                PreTokenizerSequence::new(vec![split(LLAMA3_SPLIT_REGEX)?, ByteLevel::new(false, true, false).into()])
                    .into()
            }
        })
    }

    /// Whether llama.cpp adds the beginning-of-sequence token when the file has no
    /// `tokenizer.ggml.add_bos_token`.
    fn default_add_bos(self) -> bool {
        matches!(self, Self::Llama3)
    }
}

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
    /// Where it was read from, for messages.
    name: String,
}

impl LlamaTokenizer {
    /// Wraps a tokenizer; [`encode`](Self::encode) adds no special tokens of its own.
    pub fn new(
        tokenizer: Tokenizer,
        bos_token_id: Option<u32>,
        eos_token_id: Option<u32>,
        pad_token_id: Option<u32>,
    ) -> Self {
        Self { tokenizer, bos_token_id, eos_token_id, pad_token_id, add_bos_token: false, name: "tokenizer".into() }
    }

    /// Reads a `tokenizer.json`; special tokens are looked up by their usual Llama spellings.
    ///
    /// [`encode`](Self::encode) adds the beginning-of-sequence token exactly when the file's
    /// post-processor does (Llama 3's prepends `<|begin_of_text|>`), so that it gives the ids of
    /// transformers' `tokenizer(text)`; [`encode_with`](Self::encode_with)`(text, false)` leaves it out.
    ///
    /// The path must be a regular file: a FIFO or a directory is an error, not a hang.
    pub fn from_file(path: &Path) -> Result<Self, LlamaError> {
        let tokenizer =
            polarity_tokenize::read_tokenizer_json(path).map_err(|e| LlamaError::Tokenizer(e.to_string()))?;
        let find = |names: &[&str]| names.iter().find_map(|name| tokenizer.token_to_id(name));
        let bos = find(&["<|begin_of_text|>", "<s>", "<|endoftext|>"]);
        let eos = find(&["<|eot_id|>", "<|end_of_text|>", "</s>", "<|im_end|>", "<|endoftext|>"]);
        // The post-processor is the file's own statement of whether sequences start with BOS.
        let with_special = tokenizer
            .encode("", true)
            .map_err(|e| LlamaError::Tokenizer(format!("{}: encoding with special tokens: {e}", path.display())))?;
        let add_bos_token = bos.is_some() && with_special.get_ids().first() == bos.as_ref();
        Ok(Self { add_bos_token, name: path.display().to_string(), ..Self::new(tokenizer, bos, eos, None) })
    }

    /// Reads the `tokenizer.json` of a model directory or hub repository (see [`from_file`](Self::from_file)).
    ///
    /// ```no_run
    /// use polarity_hub::{RepoKind, RepoSource};
    /// use polarity_llama::LlamaTokenizer;
    ///
    /// # fn main() -> Result<(), polarity_llama::LlamaError> {
    /// let source = RepoSource::parse("meta-llama/Meta-Llama-3-8B-Instruct", RepoKind::Model);
    /// let tokenizer = LlamaTokenizer::from_pretrained(&source)?;
    /// assert_eq!(tokenizer.encode("Hello world")?, [128000, 9906, 1917]);
    /// assert_eq!(tokenizer.encode_with("Hello world", false)?, [9906, 1917]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn from_pretrained(source: &RepoSource) -> Result<Self, LlamaError> {
        Self::from_file(&source.file("tokenizer.json")?)
    }

    /// Rebuilds the byte-level BPE tokenizer stored in GGUF metadata (`tokenizer.ggml.model` =
    /// `gpt2`): a BPE model over `tokens` and `merges`, the pre-tokenizer llama.cpp uses for
    /// `tokenizer.ggml.pre` ([`GgufPreTokenizer`]; an unknown value is
    /// [`LlamaError::GgufUnknownPreTokenizer`]), the matching byte-level decoder, and control tokens
    /// (`token_type` 3) registered as special tokens. Only metadata is read, so a vocabulary-only
    /// GGUF without tensors works.
    ///
    /// `gpt-2` and `smollm` BPE models are built as transformers' GGUF converter builds them (unknown
    /// token from `unknown_token_id`, byte fallback); `llama-bpe` ones as Meta-Llama-3's
    /// `tokenizer.json` (no unknown token, merges ignored for whole-vocabulary pre-tokens). [`encode`](Self::encode)
    /// prepends BOS per `tokenizer.ggml.add_bos_token`, else as llama.cpp does by default (for
    /// `llama-bpe` only).
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self, LlamaError> {
        let model = gguf.str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(LlamaError::Unsupported(format!(
                "{}: GGUF tokenizer model {model:?} (only the byte-level BPE \"gpt2\" model is implemented)",
                gguf.display_name()
            )));
        }
        let pre = GgufPreTokenizer::of(gguf)?;
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
                Some(id) => Err(LlamaError::Tokenizer(format!(
                    "{}: {key} = {id} is outside the vocabulary of {}",
                    gguf.display_name(),
                    tokens.len()
                ))),
            }
        };
        let (bos, eos, pad, unk) = (
            token_id("tokenizer.ggml.bos_token_id")?,
            token_id("tokenizer.ggml.eos_token_id")?,
            token_id("tokenizer.ggml.padding_token_id")?,
            token_id("tokenizer.ggml.unknown_token_id")?,
        );

        let vocab: Vocab = tokens.iter().enumerate().map(|(id, token)| (token.to_string(), id as u32)).collect();
        let mut bpe = BPE::builder().vocab_and_merges(vocab, merges);
        let byte_level = ByteLevel::new(false, false, true);
        let decoder = if pre == GgufPreTokenizer::Llama3 {
            bpe = bpe.ignore_merges(true);
            DecoderWrapper::ByteLevel(byte_level)
        } else {
            bpe = bpe.fuse_unk(true).byte_fallback(true);
            if let Some(unk) = unk {
                bpe = bpe.unk_token(tokens[unk as usize].to_string());
            }
            DecoderWrapper::Sequence(DecoderSequence::new(vec![
                DecoderWrapper::ByteFallback(ByteFallback::new()),
                DecoderWrapper::Fuse(Fuse::new()),
                DecoderWrapper::Replace(
                    Replace::new("▁", " ").map_err(|e| LlamaError::Tokenizer(format!("decoder: {e}")))?,
                ),
                DecoderWrapper::ByteLevel(byte_level),
            ]))
        };
        let bpe = bpe
            .build()
            .map_err(|e| LlamaError::Tokenizer(format!("{}: building the BPE model: {e}", gguf.display_name())))?;

        let mut tokenizer = Tokenizer::new(bpe);
        tokenizer.with_pre_tokenizer(Some(pre.build()?));
        tokenizer.with_decoder(Some(decoder));

        if let Some(types) = gguf.get("tokenizer.ggml.token_type").and_then(|v| v.as_array()) {
            let special: Vec<AddedToken> = types
                .iter()
                .zip(&tokens)
                .filter(|(kind, _)| kind.as_i64() == Some(CONTROL_TOKEN_TYPE))
                .map(|(_, token)| AddedToken::from(token.to_string(), true).normalized(false))
                .collect();
            tokenizer.add_special_tokens(&special);
        }

        let add_bos_token = gguf.opt_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(pre.default_add_bos());
        Ok(Self {
            tokenizer,
            bos_token_id: bos,
            eos_token_id: eos,
            pad_token_id: pad,
            add_bos_token,
            name: gguf.display_name(),
        })
    }

    /// Where the tokenizer was read from (its file), or `tokenizer` for one built with [`new`](Self::new).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many token ids the tokenizer can produce: its largest id + 1, over the vocabulary, the added
    /// tokens and the special token ids.
    pub fn id_count(&self) -> usize {
        let vocab = self.tokenizer.get_vocab(true).into_values().max();
        let special = [self.bos_token_id, self.eos_token_id, self.pad_token_id].into_iter().flatten().max();
        vocab.max(special).map_or(0, |max| max as usize + 1)
    }

    /// Checks that every id this tokenizer can produce has a row in the embedding table of `model`
    /// (`vocab_size` rows): [`LlamaError::TokenizerBeyondEmbedding`] naming both sizes otherwise. Run
    /// it where a tokenizer and a model are paired, so that no id can index past the table.
    pub fn check_vocab(&self, vocab_size: usize, model: &str) -> Result<(), LlamaError> {
        let token_ids = self.id_count();
        if token_ids > vocab_size {
            return Err(LlamaError::TokenizerBeyondEmbedding {
                tokenizer: self.name.clone(),
                model: model.to_string(),
                token_ids,
                max_id: (token_ids - 1) as u32,
                vocab_size,
            });
        }
        Ok(())
    }

    /// The underlying tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Token ids of `text` (with `bos_token_id` first when `add_bos_token` is set).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, LlamaError> {
        self.encode_with(text, true)
    }

    /// Token ids of `text`, with `bos_token_id` first only when `add_special_tokens` and
    /// `add_bos_token` are both set: `encode_with(text, false)` gives the ids of llama.cpp's
    /// tokenizer tests and of transformers' `add_special_tokens=False`. Special-token text in `text`
    /// (`<|eot_id|>`) is always recognised.
    pub fn encode_with(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, LlamaError> {
        let encoding = self.tokenizer.encode(text, false).map_err(|e| LlamaError::Tokenizer(e.to_string()))?;
        let mut ids = Vec::with_capacity(encoding.len() + 1);
        if add_special_tokens && self.add_bos_token {
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
