//! Checkpoint I/O for [`Llama`]: Hugging Face safetensors (one file or sharded), llama.cpp GGUF
//! files, and PEFT LoRA adapters (load and save).
//!
//! - [`hf`]: [`Llama::from_pretrained`], [`Llama::load_safetensors`];
//! - [`gguf`]: [`Llama::from_gguf`], [`Llama::from_gguf_quantized`] and [`LlamaConfig::from_gguf`]
//!   (the file format itself is parsed by [`crate::gguf`]);
//! - [`peft`]: [`Llama::load_lora`], [`Llama::save_lora`] and PEFT's `adapter_config.json`.
//!
//! Every path produces burn-store [`TensorSnapshot`]s named by module path and in PyTorch layout; one
//! function checks them against the model's parameters (missing tensors and shape mismatches are typed
//! errors naming the tensor) and applies them with burn-store's [`PyTorchToBurnAdapter`], which
//! transposes linear weights to burn's `[in, out]`.
//!
//! This module sits above the model: it depends on [`crate::llama`] and [`crate::layers`], never the
//! other way round.

pub mod gguf;
pub mod hf;
pub mod peft;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::DType;
use burn_store::{
    ApplyError, KeyRemapper, ModuleSnapshot, ModuleStore, PyTorchToBurnAdapter, SafetensorsStore, TensorSnapshot,
};
use polarity_core::params::{EnumVariants, float_params};

use crate::LlamaError;
#[cfg(doc)]
use crate::llama::{Llama, LlamaConfig};

pub use gguf::hf_name_of_gguf_tensor;
pub use peft::{ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};

/// Which parameters of a model a checkpoint provides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    /// Everything except LoRA adapters (a base model checkpoint).
    Base,
    /// Only the LoRA adapters (a PEFT adapter checkpoint).
    Adapters,
}

impl Part {
    fn covers(self, module_path: &str) -> bool {
        let is_adapter = module_path.contains(".adapter.");
        match self {
            Part::Base => !is_adapter,
            Part::Adapters => is_adapter,
        }
    }
}

/// Tensors read from a checkpoint, named by module path, in PyTorch layout.
pub(crate) struct Checkpoint {
    /// The file or directory, for messages.
    pub name: String,
    /// The tensors.
    pub tensors: Vec<TensorSnapshot>,
    /// How a module path is spelled in the checkpoint (for messages).
    pub checkpoint_name: fn(&str) -> String,
}

/// Hugging Face keys to module paths: a projection's own weight is the frozen `base_layer` of its
/// [`LoraLinear`](crate::LoraLinear), PEFT's spelling (`q_proj.weight` -> `q_proj.base_layer.weight`).
pub(crate) fn hf_key_remapper() -> KeyRemapper {
    KeyRemapper::new()
        .add_pattern(r"^(.+_proj)\.(weight|bias)$", "${1}.base_layer.${2}")
        // A constant, valid pattern: this cannot fail.
        .unwrap_or_default()
}

/// The Hugging Face key of a module path (the inverse of [`hf_key_remapper`]).
pub(crate) fn hf_key(module_path: &str) -> String {
    module_path.replace(".base_layer.", ".")
}

/// Checks `checkpoint` against the parameters of `module` that `part` covers, then loads them.
///
/// Returns the checkpoint tensors that match no parameter (for a base model they are only logged:
/// transformers' checkpoints may carry buffers such as `rotary_emb.inv_freq`; for adapters they are an
/// error, since dropping adapter weights would silently change the model).
pub(crate) fn apply_checkpoint<B: Backend, M: Module<B>>(
    mut module: M,
    checkpoint: Checkpoint,
    part: Part,
) -> Result<(M, Vec<String>), LlamaError> {
    let Checkpoint { name: source_name, tensors, checkpoint_name } = checkpoint;
    // Enum variants (`BaseLinear::Dense`) are not part of checkpoint paths.
    let expected: BTreeMap<String, Vec<usize>> = float_params::<B, M>(&module, EnumVariants::Skip)
        .into_iter()
        .map(|param| (param.name(), param.pytorch_shape()))
        .filter(|(path, _)| part.covers(path))
        .collect();

    let mut found: BTreeMap<String, TensorSnapshot> = BTreeMap::new();
    let mut unused = Vec::new();
    for snapshot in tensors {
        let path = snapshot.full_path();
        if expected.contains_key(&path) {
            found.insert(path, snapshot);
        } else {
            unused.push(checkpoint_name(&path));
        }
    }
    unused.sort();

    let missing: Vec<String> =
        expected.keys().filter(|path| !found.contains_key(*path)).map(|path| checkpoint_name(path)).collect();
    if !missing.is_empty() {
        return Err(LlamaError::MissingTensors { source_name, tensors: missing });
    }
    for (path, shape) in &expected {
        let snapshot = &found[path];
        if snapshot.shape.as_slice() != shape.as_slice() {
            return Err(LlamaError::ShapeMismatch {
                source_name,
                tensor: checkpoint_name(path),
                expected: shape.clone(),
                found: snapshot.shape.to_vec(),
            });
        }
    }
    if part == Part::Adapters && !unused.is_empty() {
        return Err(LlamaError::UnexpectedTensors { source_name, tensors: unused });
    }
    for tensor in &unused {
        tracing::warn!(checkpoint = %source_name, tensor, "checkpoint tensor matches no model parameter; ignored");
    }

    let snapshots = found.into_values().map(as_f32).collect();
    // skip_enum_variants: `…q_proj.base_layer.weight` reaches `BaseLinear::Dense`'s weight.
    let result = module.apply(snapshots, None, Some(Box::new(PyTorchToBurnAdapter)), true);
    if let Some(error) = result.errors.first() {
        let path = match error {
            ApplyError::ShapeMismatch { path, .. }
            | ApplyError::DTypeMismatch { path, .. }
            | ApplyError::AdapterError { path, .. }
            | ApplyError::LoadError { path, .. } => path,
        };
        return Err(LlamaError::TensorLoad { source_name, tensor: checkpoint_name(path), reason: error.to_string() });
    }
    if let Some((path, _)) = result.missing.iter().find(|(path, _)| part.covers(path)) {
        return Err(LlamaError::MissingTensors { source_name, tensors: vec![checkpoint_name(path)] });
    }
    Ok((module, unused))
}

/// A snapshot whose data is converted to `f32` when read (checkpoints may be f16, bf16 or f64; the
/// models here compute in f32).
fn as_f32(snapshot: TensorSnapshot) -> TensorSnapshot {
    if snapshot.dtype == DType::F32 || !snapshot.dtype.is_float() {
        return snapshot;
    }
    let read = snapshot.clone_data_fn();
    TensorSnapshot::from_closure(
        Rc::new(move || read().map(|data| data.convert::<f32>())),
        DType::F32,
        snapshot.shape.clone(),
        snapshot.path_stack.clone().unwrap_or_default(),
        snapshot.container_stack.clone().unwrap_or_default(),
        snapshot.tensor_id.unwrap_or_default(),
    )
}

/// Reads safetensors files through burn-store, renaming keys with `remapper`.
pub(crate) fn read_safetensors(files: &[PathBuf], remapper: &KeyRemapper) -> Result<Vec<TensorSnapshot>, LlamaError> {
    let mut tensors = Vec::new();
    for file in files {
        let mut store = SafetensorsStore::from_file(file.clone()).remap(remapper.clone());
        let snapshots = store
            .get_all_snapshots()
            .map_err(|e| LlamaError::Safetensors { path: file.clone(), reason: e.to_string() })?;
        tensors.extend(snapshots.values().cloned());
    }
    Ok(tensors)
}
