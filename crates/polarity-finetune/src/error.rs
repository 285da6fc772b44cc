use std::path::PathBuf;

use thiserror::Error;

/// Why a recipe could not run. Each variant wraps the error of the crate that failed, which names the
/// file, tensor or value; the recipe adds which model or dataset it was working on.
#[derive(Debug, Error)]
pub enum FinetuneError {
    /// The dataset could not be read or subset.
    #[error("dataset {dataset}")]
    Data {
        /// The hub id or directory of the dataset.
        dataset: String,
        /// The cause.
        #[source]
        source: Box<polarity_data::DataError>,
    },
    /// A model's files could not be resolved in the hub cache or a directory.
    #[error("model {model}")]
    Hub {
        /// The hub id, directory or file of the model.
        model: String,
        /// The cause.
        #[source]
        source: Box<polarity_hub::HubError>,
    },
    /// A model to fine-tune from its pretrained weights has none (no `model.safetensors` or sharded index
    /// where it was looked for). Recipes never fall back to random weights; a run at the model's shape
    /// without them asks for [`WeightInit::Random`](crate::WeightInit::Random).
    #[error(
        "model {model} has no pretrained weights; init: random (WeightInit::Random) builds it from its config.json \
         with seeded random weights instead, for speed and memory measurements only"
    )]
    NoWeights {
        /// The hub id or directory of the model, as the recipe names it.
        model: String,
        /// Where the weights were looked for ([`HubError::NoWeights`](polarity_hub::HubError::NoWeights)).
        #[source]
        source: Box<polarity_hub::HubError>,
    },
    /// The tokenizer could not be loaded, or a text could not be encoded.
    #[error(transparent)]
    Tokenize(Box<polarity_tokenize::TokenizeError>),
    /// An encoder checkpoint could not be loaded or exported.
    #[error("encoder {model}")]
    Encoder {
        /// The hub id or directory of the model.
        model: String,
        /// The cause.
        #[source]
        source: Box<polarity_encoder::EncoderError>,
    },
    /// A causal LM, its tokenizer or its adapter could not be loaded, built or saved.
    #[error("causal LM {model}")]
    Llama {
        /// The hub id, directory or GGUF file of the model.
        model: String,
        /// The cause.
        #[source]
        source: Box<polarity_llama::LlamaError>,
    },
    /// Training or evaluation failed (a non-finite loss, an empty set, a bad batch, ...).
    #[error(transparent)]
    Train(Box<polarity_train::TrainError>),
    /// The metrics could not be computed.
    #[error(transparent)]
    Metrics(#[from] polarity_metrics::MetricsError),
    /// The device could not be chosen (no CUDA driver with `--features cuda`).
    #[error(transparent)]
    Device(#[from] polarity_core::CoreError),
    /// A recipe setting is out of range.
    #[error("invalid setting {field} = {value}: {reason}")]
    InvalidSetting {
        /// The setting's name.
        field: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A GGUF model path does not name a file.
    #[error("GGUF file {0} does not exist")]
    MissingGguf(PathBuf),
    /// A report could not be written.
    #[error("writing {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl From<polarity_train::TrainError> for FinetuneError {
    fn from(error: polarity_train::TrainError) -> Self {
        Self::Train(Box::new(error))
    }
}

impl From<polarity_tokenize::TokenizeError> for FinetuneError {
    fn from(error: polarity_tokenize::TokenizeError) -> Self {
        Self::Tokenize(Box::new(error))
    }
}
