use std::path::PathBuf;

use polarity_checkpoint::CheckpointError;
use polarity_core::CoreError;
use polarity_hub::HubError;
use thiserror::Error;

/// Everything that can go wrong when reading, running or writing an encoder checkpoint.
///
/// Tensor names in these errors are the Hugging Face names (as they appear in `model.safetensors`),
/// and shapes are in the Hugging Face layout (`Linear` weights `[out, in]`), so an error can be
/// checked against the checkpoint with any safetensors viewer.
#[derive(Debug, Error)]
pub enum EncoderError {
    /// A file of the model could not be resolved (local directory or hub cache).
    #[error(transparent)]
    Hub(#[from] HubError),

    /// Fixture or backend errors from `polarity-core`.
    #[error(transparent)]
    Core(#[from] CoreError),

    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// `config.json` is not JSON (or not a JSON object).
    #[error("{path} is not a valid config.json: {reason}")]
    InvalidConfig {
        /// The config file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },

    /// A field the architecture cannot do without is absent from `config.json`.
    #[error("{path}: required field {field:?} is missing")]
    MissingConfigField {
        /// The config file.
        path: PathBuf,
        /// The missing field.
        field: &'static str,
    },

    /// A field of `config.json` has the wrong type or an unsupported value.
    #[error("{path}: field {field:?} {problem}")]
    InvalidConfigField {
        /// The config file.
        path: PathBuf,
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },

    /// `config.json` describes an architecture this crate does not implement.
    #[error("{path}: model_type {model_type:?} is not supported (expected \"bert\" or \"distilbert\")")]
    UnsupportedArchitecture {
        /// The config file.
        path: PathBuf,
        /// The `model_type` found.
        model_type: String,
    },

    /// A checkpoint could not be read, applied to the model or written: missing, unexpected or
    /// mis-shaped tensors, unreadable safetensors files, failed saves (each naming the file and tensor).
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),

    /// Inputs the model cannot run on (too long, ids out of the vocabulary, inconsistent shapes).
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// A fixture whose `kind` is not an encoder kind.
    #[error(
        "fixture kind {0:?} is not handled by polarity-encoder (expected \"encoder-hidden-states\" or \"encoder-sequence-classification\")"
    )]
    UnsupportedFixture(String),
}
