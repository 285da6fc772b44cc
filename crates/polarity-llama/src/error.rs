use std::path::PathBuf;

use polarity_checkpoint::summarize_tensors;
use thiserror::Error;

/// Everything that can go wrong in polarity-llama: configs, checkpoints (safetensors, GGUF, PEFT
/// adapters), tokenizers and reference fixtures.
///
/// Shapes in messages are in checkpoint (PyTorch) layout, `[out_features, in_features]` for linear
/// weights, so they can be compared with what `safetensors` or `gguf-dump` print.
#[derive(Debug, Error)]
pub enum LlamaError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A JSON file (`config.json`, `adapter_config.json`, an index) is not what was expected.
    #[error("{path}: invalid JSON: {reason}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What serde said.
        reason: String,
    },
    /// A hub file could not be resolved (not cached offline, download failed, missing locally); a model
    /// whose config.json is there but whose weights are not is
    /// [`HubError::NoWeights`](polarity_hub::HubError::NoWeights), naming the files and where they were
    /// looked for. Nothing falls back to random weights; build those explicitly
    /// ([`LlamaConfig::init`](crate::LlamaConfig::init),
    /// [`LlamaConfig::init_quantized_random`](crate::LlamaConfig::init_quantized_random)).
    #[error(transparent)]
    Hub(#[from] polarity_hub::HubError),
    /// A reference fixture could not be read.
    #[error(transparent)]
    Core(#[from] polarity_core::CoreError),
    /// A model configuration that is inconsistent or asks for something this crate does not implement.
    #[error("invalid Llama config: {0}")]
    InvalidConfig(String),
    /// A feature of a checkpoint or config that is understood but not implemented.
    #[error("unsupported: {0}")]
    Unsupported(String),

    /// A checkpoint could not be read, applied to the model or written: missing, unexpected or
    /// mis-shaped tensors, unreadable safetensors files, failed saves (each naming the file and tensor).
    #[error(transparent)]
    Checkpoint(#[from] polarity_checkpoint::CheckpointError),

    /// A GGUF file ends before a value that its header announces.
    #[error("{file}: GGUF truncated: {what} needs {needed} byte(s) at offset {offset}, the file has {len}")]
    GgufTruncated {
        /// The GGUF file (or `<GGUF bytes>`).
        file: String,
        /// What was being read.
        what: String,
        /// Where it starts.
        offset: u64,
        /// How many bytes it needs.
        needed: u64,
        /// The file length.
        len: u64,
    },
    /// The file does not start with the `GGUF` magic.
    #[error("{file}: not a GGUF file: magic is {magic:02x?}, expected \"GGUF\"")]
    GgufBadMagic {
        /// The file (or `<GGUF bytes>`).
        file: String,
        /// Its first four bytes.
        magic: [u8; 4],
    },
    /// A GGUF version this reader does not handle (v1 used 32-bit counts).
    #[error("{file}: GGUF version {version} is not supported (expected 2 or 3)")]
    GgufUnsupportedVersion {
        /// The GGUF file (or `<GGUF bytes>`).
        file: String,
        /// The version in the file.
        version: u32,
    },
    /// A metadata value type id outside the GGUF specification.
    #[error("{file}: GGUF metadata {key:?}: unknown value type {type_id}")]
    GgufUnknownValueType {
        /// The GGUF file (or `<GGUF bytes>`).
        file: String,
        /// The metadata key.
        key: String,
        /// The type id in the file.
        type_id: u32,
    },
    /// A tensor type id that is not a ggml type this reader knows the layout of.
    #[error("{file}: GGUF tensor {tensor:?}: unknown ggml type {type_id}")]
    GgufUnknownTensorType {
        /// The GGUF file (or `<GGUF bytes>`).
        file: String,
        /// The tensor name.
        tensor: String,
        /// The type id in the file.
        type_id: u32,
    },
    /// A known ggml type whose dequantisation is not implemented.
    #[error("GGUF tensor {tensor:?}: dequantising ggml type {ggml_type} is not implemented")]
    GgufUnsupportedTensorType {
        /// The tensor name.
        tensor: String,
        /// The ggml type name.
        ggml_type: String,
    },
    /// A metadata key the model or tokenizer needs is absent.
    #[error("{file}: GGUF metadata key {key:?} is missing")]
    GgufMissingKey {
        /// The GGUF file (or `<GGUF bytes>`).
        file: String,
        /// The key.
        key: String,
    },
    /// A metadata value of the wrong type.
    #[error("{file}: GGUF metadata {key:?}: expected {expected}, found {found}")]
    GgufWrongType {
        /// The GGUF file (or `<GGUF bytes>`).
        file: String,
        /// The metadata key.
        key: String,
        /// The expected type.
        expected: &'static str,
        /// What the file has.
        found: String,
    },
    /// A GGUF tokenizer whose pre-tokenizer (`tokenizer.ggml.pre`) polarity does not implement. It is
    /// refused rather than split with some other regex, which would give plausible but wrong ids.
    #[error("{file}: GGUF tokenizer.ggml.pre = {pre:?} is not a pre-tokenizer polarity implements (known: {known})")]
    GgufUnknownPreTokenizer {
        /// The GGUF file (or `<GGUF bytes>`).
        file: String,
        /// The value of `tokenizer.ggml.pre`.
        pre: String,
        /// The values that are implemented, comma-separated.
        known: String,
    },
    /// A structurally invalid GGUF file: a count or size beyond its bound or beyond the file, a bad
    /// offset or alignment, a string that is not UTF-8, a duplicate key or tensor.
    #[error("{file}: invalid GGUF file: {what}")]
    GgufInvalid {
        /// The GGUF file (or `<GGUF bytes>`).
        file: String,
        /// What is wrong, naming the key or tensor.
        what: String,
    },
    /// Quantised tensor data inconsistent with its shape or layout (sizes that are not whole blocks, rows
    /// that cannot be split into rotary heads).
    #[error("invalid GGUF tensor data: {0}")]
    GgufTensorData(String),
    /// A GGUF file with no tensors at all where a model was expected (llama.cpp ships vocabulary-only
    /// GGUF files for its tokenizer tests): it can give a tokenizer, not a model.
    #[error("{file}: the GGUF file has no tensors (a vocabulary-only file?); a model needs its weights")]
    GgufNoTensors {
        /// The GGUF file (or `<GGUF bytes>`).
        file: String,
    },
    /// Layer tensors (`blk.N.*`) for layers the file's `llama.block_count` does not declare: loading
    /// would silently run a model without them.
    #[error("{file}: {} belong to layers beyond llama.block_count = {block_count}", summarize_tensors(tensors))]
    GgufLayersBeyondBlockCount {
        /// The GGUF file (or `<GGUF bytes>`).
        file: String,
        /// The declared number of layers.
        block_count: usize,
        /// The llama.cpp names of the tensors.
        tensors: Vec<String>,
    },
    /// A Llama configuration value out of range or inconsistent with another one.
    #[error("{source_name}: invalid Llama config: {field} = {value}: {reason}")]
    InvalidConfigValue {
        /// The file the value came from (`config.json`, a GGUF file), or `config` for one built in code.
        source_name: String,
        /// The field, as the file spells it (`rms_norm_eps`, `llama.attention.layer_norm_rms_epsilon`).
        field: String,
        /// The value.
        value: String,
        /// Why it is refused, with the bound where there is one.
        reason: String,
    },
    /// A tokenizer that produces token ids the model has no embedding for (added tokens past
    /// `vocab_size`, a GGUF vocabulary larger than its embedding table): refused when the two are
    /// paired, before any id could index past the table.
    #[error(
        "tokenizer {tokenizer} has {token_ids} token ids (up to id {max_id}) but the model {model} embeds only {vocab_size}"
    )]
    TokenizerBeyondEmbedding {
        /// The tokenizer file.
        tokenizer: String,
        /// The model (file, directory or hub id).
        model: String,
        /// How many ids the tokenizer can produce (its largest id + 1).
        token_ids: usize,
        /// Its largest id.
        max_id: u32,
        /// The rows of the model's embedding table.
        vocab_size: usize,
    },
    /// Token ids given to a model (a fixture's inputs, prompts) outside its embedding table.
    #[error("{what}: token id {id} is outside the model's vocabulary of {vocab_size}")]
    TokenIdOutOfRange {
        /// Where the ids came from.
        what: String,
        /// The first offending id.
        id: i64,
        /// The rows of the model's embedding table.
        vocab_size: usize,
    },

    /// A matrix whose rows are not a whole number of quantisation blocks (NF4 blocks of 64 values, or
    /// the GGUF type's blocks): blocks must not straddle rows, so rows can be permuted and dequantised
    /// independently.
    #[error(
        "cannot store a [{rows}, {cols}] matrix as {format}: in_features {cols} is not a multiple of the block size {block_size}"
    )]
    QuantBlockSize {
        /// The storage format (`NF4`, `Q4_1`, ...).
        format: String,
        /// Output features (rows).
        rows: usize,
        /// Input features (values per row).
        cols: usize,
        /// Values per block.
        block_size: usize,
    },
    /// Quantised data whose length does not match the matrix shape.
    #[error("a [{rows}, {cols}] {format} matrix needs {expected} {unit}, got {found}")]
    QuantDataLength {
        /// The storage format (`NF4`, `Q4_1`, ...).
        format: String,
        /// Output features (rows).
        rows: usize,
        /// Input features (values per row).
        cols: usize,
        /// `bytes` or `values`.
        unit: &'static str,
        /// How many the shape needs.
        expected: usize,
        /// How many were given.
        found: usize,
    },
    /// A NaN or infinite weight, which has no NF4 code (its block's absmax scale would be meaningless).
    #[error("cannot quantise a non-finite weight: value {index} is {value}")]
    QuantNonFinite {
        /// The row-major index of the value.
        index: usize,
        /// The value.
        value: f32,
    },

    /// An NF4 block scale that is negative, NaN or infinite (scales are absolute maxima).
    #[error("invalid NF4 absmax scale of block {block}: {value} (must be finite and not negative)")]
    QuantInvalidScale {
        /// The row-major index of the block.
        block: usize,
        /// The scale.
        value: f32,
    },

    /// Building or running a tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A review could not be turned into a prompt (template too long for the maximum length, ...).
    #[error("prompt: {0}")]
    Prompt(#[from] polarity_tokenize::TokenizeError),
    /// A label word that is not a single token of the tokenizer.
    #[error("label word {word:?} is {count} tokens ({ids:?}); label-word scoring needs exactly one")]
    LabelWordNotSingleToken {
        /// The word, with its leading space.
        word: String,
        /// How many tokens it encodes to.
        count: usize,
        /// The ids.
        ids: Vec<u32>,
    },
    /// A reference fixture of a kind this crate does not verify, or with inconsistent contents.
    #[error("fixture {dir}: {what}")]
    Fixture {
        /// The fixture directory.
        dir: PathBuf,
        /// What is wrong.
        what: String,
    },
}

impl LlamaError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LlamaError::Io { path: path.into(), source }
    }

    pub(crate) fn json(path: impl Into<PathBuf>, error: impl std::fmt::Display) -> Self {
        LlamaError::Json { path: path.into(), reason: error.to_string() }
    }
}
