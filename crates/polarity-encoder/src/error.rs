use std::path::PathBuf;

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

    /// The weights file is not a readable safetensors file.
    #[error("{path} is not a valid safetensors file: {reason}")]
    InvalidSafetensors {
        /// The weights file.
        path: PathBuf,
        /// What the reader said.
        reason: String,
    },

    /// The checkpoint lacks a tensor the model needs (and cannot freshly initialise).
    #[error("{path} has no tensor {name:?} (the model expects shape {expected:?})")]
    MissingTensor {
        /// The weights file.
        path: PathBuf,
        /// The Hugging Face name of the tensor.
        name: String,
        /// The shape the model expects, in Hugging Face layout.
        expected: Vec<usize>,
    },

    /// A tensor of the checkpoint has a different shape than the config implies.
    #[error("tensor {name:?} in {path} has shape {found:?}, but the model expects {expected:?}")]
    ShapeMismatch {
        /// The weights file.
        path: PathBuf,
        /// The Hugging Face name of the tensor.
        name: String,
        /// The shape the model expects, in Hugging Face layout.
        expected: Vec<usize>,
        /// The shape stored in the checkpoint.
        found: Vec<usize>,
    },

    /// The checkpoint has a tensor inside the model's own modules that the model does not have
    /// (for example a 13th layer when the config says 12): the config and the weights disagree.
    #[error(
        "{path} has tensor {name:?} with shape {shape:?}, which the model (as its config.json describes it) does not have"
    )]
    UnexpectedTensor {
        /// The weights file.
        path: PathBuf,
        /// The Hugging Face name of the tensor.
        name: String,
        /// Its shape in the checkpoint.
        shape: Vec<usize>,
    },

    /// A tensor was found but could not be loaded (an unsupported dtype, unreadable data).
    #[error("cannot load tensor {name:?} from {path}: {reason}")]
    TensorLoad {
        /// The weights file.
        path: PathBuf,
        /// The tensor (Hugging Face name where known).
        name: String,
        /// Why.
        reason: String,
    },

    /// Writing a checkpoint failed.
    #[error("cannot save the model to {path}: {reason}")]
    Save {
        /// The file or directory being written.
        path: PathBuf,
        /// Why.
        reason: String,
    },

    /// Inputs the model cannot run on (too long, ids out of the vocabulary, inconsistent shapes).
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// A fixture whose `kind` is not an encoder kind.
    #[error(
        "fixture kind {0:?} is not handled by polarity-encoder (expected \"encoder-hidden-states\" or \"encoder-sequence-classification\")"
    )]
    UnsupportedFixture(String),
}
