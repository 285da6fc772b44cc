//! Checkpoint I/O for [`Llama`]: Hugging Face safetensors (one file or sharded), llama.cpp GGUF
//! files, and PEFT LoRA adapters (load and save).
//!
//! - [`hf`]: [`Llama::from_pretrained`], [`Llama::load_safetensors`];
//! - [`gguf`]: [`Llama::from_gguf`], [`Llama::from_gguf_quantized`] and [`LlamaConfig::from_gguf`]
//!   (the file format itself is parsed by [`crate::gguf`]);
//! - [`peft`]: [`Llama::load_lora`], [`Llama::save_lora`] and PEFT's `adapter_config.json`.
//!
//! Every path builds a [`polarity_checkpoint::Checkpoint`] (lazy tensors by checkpoint key) and loads
//! it with the workspace's one strict loader: [`LlamaKeys`] says how the model's parameters are spelled
//! (Hugging Face names for the base, PEFT names for adapters); missing, unexpected, mis-shaped or
//! mistyped tensors are [`CheckpointError`](polarity_checkpoint::CheckpointError)s naming the tensor.
//!
//! This module sits above the model: it depends on [`crate::llama`] and [`crate::layers`], never the
//! other way round.

pub mod gguf;
pub mod hf;
pub mod peft;

use burn::module::Module;
use burn::prelude::*;
use polarity_checkpoint::{Checkpoint, KeyMapping};
use polarity_core::params::FloatParam;

use crate::LlamaError;
#[cfg(doc)]
use crate::llama::{Llama, LlamaConfig};

pub use gguf::hf_name_of_gguf_tensor;
pub use peft::{ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};

/// Which parameters of a [`Llama`] a checkpoint provides, and how it spells them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LlamaKeys {
    /// Everything except LoRA adapters, by Hugging Face name (a base model checkpoint).
    Base,
    /// Only the LoRA adapters, by PEFT name (a PEFT adapter checkpoint).
    Adapters,
}

impl KeyMapping for LlamaKeys {
    fn key_of(&self, param: &FloatParam) -> Option<String> {
        let path = param.name();
        let is_adapter = path.contains(".adapter.");
        match self {
            LlamaKeys::Base => (!is_adapter).then(|| hf_key(&path)),
            LlamaKeys::Adapters => is_adapter.then(|| peft::peft_key(&path)),
        }
    }

    /// A base checkpoint's extra tensors are logged and dropped (transformers' checkpoints may carry
    /// buffers such as `rotary_emb.inv_freq`); an adapter tensor that matches no adapter is an error,
    /// since dropping it would silently change the model.
    fn may_be_unused(&self, _key: &str) -> bool {
        *self == LlamaKeys::Base
    }
}

/// The Hugging Face key of a module path: a projection's own weight is the frozen `base_layer` of its
/// [`LoraLinear`](crate::layers::LoraLinear), PEFT's spelling (`q_proj.base_layer.weight` -> `q_proj.weight`).
fn hf_key(module_path: &str) -> String {
    module_path.replace(".base_layer.", ".")
}

/// Checks `checkpoint` against the parameters of `model` that `keys` covers, then loads them; tensors
/// that match no parameter of a base checkpoint are logged.
pub(crate) fn load<B: Backend, M: Module<B>>(
    model: M,
    checkpoint: Checkpoint,
    keys: LlamaKeys,
) -> Result<M, LlamaError> {
    let name = checkpoint.name().to_string();
    let (model, report) = checkpoint.load_into(model, &keys)?;
    for tensor in &report.ignored {
        tracing::warn!(checkpoint = %name, tensor, "checkpoint tensor matches no model parameter; ignored");
    }
    Ok(model)
}
