use std::fmt;
use std::path::PathBuf;

use burn::tensor::DType;
use thiserror::Error;

/// A tensor named as the checkpoint (or the model, for missing ones) spells it, with its shape in
/// checkpoint (PyTorch) layout: linear weights are `[out_features, in_features]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// The checkpoint key (`bert.encoder.layer.0.output.dense.weight`).
    pub name: String,
    /// The shape.
    pub shape: Vec<usize>,
}

impl fmt::Display for TensorInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}", self.name, self.shape)
    }
}

/// How many tensors an error message names; the rest are counted (the error's fields keep them all).
pub const LISTED_TENSORS: usize = 5;

/// `count` tensors, the first [`LISTED_TENSORS`] named (`24 tensors: a, b, c, d, e and 19 more`): a checkpoint of
/// another model can miss hundreds, and one line naming them all is unreadable. Every loader's list of tensors
/// in an error goes through it.
pub fn summarize_tensors<T: fmt::Display>(tensors: &[T]) -> String {
    let named = tensors.iter().take(LISTED_TENSORS).map(T::to_string).collect::<Vec<_>>().join(", ");
    match tensors.len() {
        n if n > LISTED_TENSORS => format!("{n} tensors: {named} and {} more", n - LISTED_TENSORS),
        1 => format!("1 tensor: {named}"),
        n => format!("{n} tensors: {named}"),
    }
}

/// Why a checkpoint could not be read, applied to a model, or written.
///
/// `checkpoint` is the file a tensor is in (a shard, for a sharded checkpoint) or, for errors about
/// the checkpoint as a whole, the file or the shards' directory (or the name the caller gave it).
/// Tensor names are the checkpoint's keys and shapes are in its (PyTorch) layout, so an error can be
/// checked against the file with any safetensors or GGUF viewer.
#[derive(Debug, Error)]
pub enum CheckpointError {
    /// A checkpoint file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file is not a readable safetensors file.
    #[error("{path} is not a valid safetensors file: {reason}")]
    InvalidSafetensors {
        /// The file.
        path: PathBuf,
        /// What the reader said.
        reason: String,
    },
    /// No checkpoint file was given.
    #[error("no checkpoint file to load")]
    NoFiles,
    /// Parameters of the model that the checkpoint lacks (and that may not keep their initialisation).
    #[error("{checkpoint}: missing {} (shapes the model expects)", summarize_tensors(tensors))]
    MissingTensors {
        /// The checkpoint.
        checkpoint: String,
        /// The tensors, with the shapes the model expects.
        tensors: Vec<TensorInfo>,
    },
    /// Checkpoint tensors that match no parameter of the model, where dropping them would silently
    /// change the model (a 13th layer when the config says 12, an adapter for a module not targeted).
    #[error("{checkpoint}: {} match no parameter of the model", summarize_tensors(tensors))]
    UnexpectedTensors {
        /// The checkpoint.
        checkpoint: String,
        /// The tensors, with their shapes in the checkpoint.
        tensors: Vec<TensorInfo>,
    },
    /// A tensor whose shape differs from the model's parameter.
    #[error("{checkpoint}: tensor {tensor} has shape {found:?}, the model expects {expected:?}")]
    ShapeMismatch {
        /// The file holding the tensor.
        checkpoint: String,
        /// The checkpoint key.
        tensor: String,
        /// The shape the model expects.
        expected: Vec<usize>,
        /// The shape in the checkpoint.
        found: Vec<usize>,
    },
    /// A tensor whose dtype cannot become the model's parameter (an integer tensor for a float weight).
    #[error("{checkpoint}: tensor {tensor} has dtype {found:?}, the model expects a floating-point tensor")]
    DTypeMismatch {
        /// The file holding the tensor.
        checkpoint: String,
        /// The checkpoint key.
        tensor: String,
        /// The dtype in the checkpoint.
        found: DType,
    },
    /// Two checkpoint keys name the same parameter (`LayerNorm.gamma` beside `LayerNorm.weight`).
    #[error("{checkpoint}: tensors {tensor} and {duplicate} are the same parameter of the model")]
    DuplicateTensor {
        /// The file holding the second tensor.
        checkpoint: String,
        /// The first key.
        tensor: String,
        /// The second key.
        duplicate: String,
    },
    /// The checkpoint holds no tensors at all (a vocabulary-only GGUF file, an empty safetensors file),
    /// where the model expects some: said once rather than as every parameter missing.
    #[error("{checkpoint} holds no tensors; the model expects {expected} (is it a weights file?)")]
    NoTensors {
        /// The checkpoint.
        checkpoint: String,
        /// How many tensors the model expects from it.
        expected: usize,
    },
    /// A floating-point tensor holds NaN or infinite values (checked as its data is read, after the
    /// conversion to the model's float type, so a finite f64 beyond f32's range counts too).
    #[error(
        "{checkpoint}: tensor {tensor} has {count} non-finite value(s) (the first, at flat index {first_index}, \
         is {first_value})"
    )]
    NonFinite {
        /// The file holding the tensor.
        checkpoint: String,
        /// The checkpoint key.
        tensor: String,
        /// How many values are NaN or infinite.
        count: usize,
        /// The flat (row-major, checkpoint layout) index of the first one.
        first_index: usize,
        /// The first one (NaN, inf or -inf).
        first_value: f64,
    },
    /// A tensor that passed the checks could not be read or applied.
    #[error("{checkpoint}: cannot load tensor {tensor}: {reason}")]
    TensorLoad {
        /// The file holding the tensor.
        checkpoint: String,
        /// The checkpoint key.
        tensor: String,
        /// Why.
        reason: String,
    },
    /// Writing a checkpoint (weights, config, copied files) failed.
    #[error("cannot save the model to {path}: {reason}")]
    Save {
        /// The file or directory being written.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}
