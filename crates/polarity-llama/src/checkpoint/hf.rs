//! Hugging Face checkpoints: `config.json` and safetensors, one file or sharded.

use std::path::PathBuf;

use burn::prelude::*;
use polarity_hub::RepoSource;

use polarity_checkpoint::Checkpoint;

use super::{LlamaKeys, load};
use crate::LlamaError;
use crate::llama::{Llama, LlamaConfig};

impl<B: Backend> Llama<B> {
    /// Loads a Hugging Face Llama checkpoint (`config.json` and safetensors, one file or sharded) from
    /// a hub id or a local directory, resolving hub files cache-first (see [`polarity_hub`]).
    ///
    /// Errors: without `config.json`, [`LlamaError::Hub`]; with it but without weights,
    /// [`HubError::NoWeights`](polarity_hub::HubError::NoWeights) (as [`LlamaError::Hub`]), naming the
    /// model and the files looked for (never a model with random weights in their place).
    pub fn from_pretrained(source: &RepoSource, device: &B::Device) -> Result<Self, LlamaError> {
        let config = LlamaConfig::from_hf_file(&source.file("config.json")?)?;
        let files = source.safetensors_files()?;
        config.init(device)?.load_safetensors(&files, &source.to_string())
    }

    /// Loads Hugging Face-named safetensors `files` into this model (all its non-adapter parameters
    /// must be present with matching shapes). `source_name` is used in error messages.
    pub fn load_safetensors(self, files: &[PathBuf], source_name: &str) -> Result<Self, LlamaError> {
        load(self, Checkpoint::from_safetensors(files)?.named(source_name), LlamaKeys::Base)
    }
}
