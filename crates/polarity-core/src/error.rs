use std::path::PathBuf;

use thiserror::Error;

/// Errors of the shared vocabulary: invalid labels and unavailable backends.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum CoreError {
    /// A label that is neither 0 (negative) nor 1 (positive).
    #[error("label {0} is not a sentiment: expected 0 (negative) or 1 (positive)")]
    InvalidLabel(i64),
    /// A label word that is neither `negative` nor `positive`.
    #[error("{0:?} is not a sentiment word: expected \"negative\" or \"positive\"")]
    InvalidLabelWord(String),
    /// The CUDA backend was asked for where no usable NVIDIA driver or device exists.
    #[error("no CUDA device available: {0}")]
    CudaUnavailable(String),
    /// The crate was built without the backend that was asked for.
    #[error("backend {0:?} is not compiled in: rebuild with `--features {0}`")]
    BackendNotCompiled(&'static str),
    /// A reference fixture directory that cannot be read or lacks what was asked of it.
    #[error("fixture {dir}: {what}")]
    Fixture {
        /// The fixture directory.
        dir: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// An unknown backend name.
    #[error("unknown backend {0:?}: expected one of ndarray, flex, cuda")]
    UnknownBackend(String),
}
