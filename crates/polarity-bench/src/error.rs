use std::path::PathBuf;

use thiserror::Error;

/// Why a benchmark could not run or be recorded.
#[derive(Debug, Error)]
pub enum BenchError {
    /// Nothing to measure (no examples, no texts, no durations).
    #[error("nothing to measure: {what} is empty")]
    EmptyInput {
        /// What was empty.
        what: &'static str,
    },
    /// A setting is out of range.
    #[error("invalid setting {field} = {value}: {reason}")]
    InvalidSetting {
        /// The setting's name.
        field: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The model or its scorer failed, or returned scores that cannot be read.
    #[error(transparent)]
    Train(Box<polarity_train::TrainError>),
    /// A model returned class scores of the wrong shape, or scores that cannot be read back.
    #[error("class scores: {0}")]
    Scores(String),
    /// A causal LM failed to generate or decode.
    #[error(transparent)]
    Llama(Box<polarity_llama::LlamaError>),
    /// A classifier's `predict` failed.
    #[error("classifier: {0}")]
    Classifier(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
    /// A classifier returned a different number of predictions than texts.
    #[error("the classifier returned {predictions} predictions for {texts} texts")]
    PredictionCount {
        /// Texts given.
        texts: usize,
        /// Predictions returned.
        predictions: usize,
    },
    /// The dataset of a workload could not be read or subset.
    #[error("dataset {dataset}")]
    Data {
        /// The hub id or directory of the dataset.
        dataset: String,
        /// The cause.
        #[source]
        source: Box<polarity_data::DataError>,
    },
    /// The metrics could not be computed.
    #[error(transparent)]
    Metrics(#[from] polarity_metrics::MetricsError),
    /// A recipe could not run (loading, tokenizing, training or evaluating a model).
    #[error(transparent)]
    Recipe(Box<polarity_finetune::FinetuneError>),
    /// A row name that cannot be a file name.
    #[error("invalid row name {0:?}: use letters, digits, '-', '_' and '.'")]
    InvalidRowName(String),
    /// A model `compare` cannot make a row of.
    #[error("model {model} cannot be a row: {reason}")]
    UnsupportedModel {
        /// The hub id, directory or file.
        model: String,
        /// Why.
        reason: String,
    },
    /// A results file could not be read or does not hold what it should.
    #[error("reading {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A point of the comparison chart cannot be drawn (a speed that is not finite and positive, an accuracy
    /// outside `[0, 1]`).
    #[error("chart point {label:?}: {field} = {value}: {reason}")]
    InvalidChartPoint {
        /// The point's label.
        label: String,
        /// The field at fault.
        field: &'static str,
        /// Its value.
        value: f64,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The comparison chart could not be drawn or encoded.
    #[error("drawing the {format} chart: {message}")]
    Chart {
        /// What was being drawn: "SVG", "PNG" or "font".
        format: &'static str,
        /// plotters' or the PNG encoder's message.
        message: String,
    },
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

impl From<polarity_train::TrainError> for BenchError {
    fn from(error: polarity_train::TrainError) -> Self {
        Self::Train(Box::new(error))
    }
}

impl From<polarity_finetune::FinetuneError> for BenchError {
    fn from(error: polarity_finetune::FinetuneError) -> Self {
        Self::Recipe(Box::new(error))
    }
}

impl From<polarity_llama::LlamaError> for BenchError {
    fn from(error: polarity_llama::LlamaError) -> Self {
        Self::Llama(Box::new(error))
    }
}

/// Writes `value` as pretty JSON to `path`, creating its folder.
pub(crate) fn write_json<T: serde::Serialize>(value: &T, path: &std::path::Path) -> Result<(), BenchError> {
    let json = serde_json::to_string_pretty(value)
        .map_err(|e| BenchError::Write { path: path.to_path_buf(), source: e.into() })?;
    write_file(path, (json + "\n").as_bytes())
}

/// Writes `contents` to `path`, creating its folder.
pub(crate) fn write_file(path: &std::path::Path, contents: &[u8]) -> Result<(), BenchError> {
    let write_error = |source| BenchError::Write { path: path.to_path_buf(), source };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(write_error)?;
    }
    std::fs::write(path, contents).map_err(write_error)
}
