//! Hugging Face checkpoints: `config.json` and safetensors, one file or sharded.

use std::path::PathBuf;

use burn::prelude::*;
use polarity_hub::{HubError, RepoSource, SAFETENSORS_FILE, SAFETENSORS_INDEX_FILE};

use polarity_checkpoint::Checkpoint;

use super::{LlamaKeys, load};
use crate::LlamaError;
use crate::llama::{Llama, LlamaConfig};

impl<B: Backend> Llama<B> {
    /// Loads a Hugging Face Llama checkpoint (`config.json` and safetensors, one file or sharded) from
    /// a hub id or a local directory, resolving hub files cache-first (see [`polarity_hub`]).
    ///
    /// Errors: without `config.json`, [`LlamaError::Hub`]; with it but without weights,
    /// [`LlamaError::MissingWeights`], naming the model and the files looked for (never a model with
    /// random weights in their place).
    pub fn from_pretrained(source: &RepoSource, device: &B::Device) -> Result<Self, LlamaError> {
        let config = LlamaConfig::from_hf_file(&source.file("config.json")?)?;
        let files = weight_files(source)?;
        config.init(device)?.load_safetensors(&files, &source.to_string())
    }

    /// Loads Hugging Face-named safetensors `files` into this model (all its non-adapter parameters
    /// must be present with matching shapes). `source_name` is used in error messages.
    pub fn load_safetensors(self, files: &[PathBuf], source_name: &str) -> Result<Self, LlamaError> {
        load(self, Checkpoint::from_safetensors(files)?.named(source_name), LlamaKeys::Base)
    }
}

/// The safetensors files of `source` ([`RepoSource::safetensors_files`]), with a missing checkpoint
/// reported as [`LlamaError::MissingWeights`]. A malformed index stays what it is.
fn weight_files(source: &RepoSource) -> Result<Vec<PathBuf>, LlamaError> {
    let error = match source.safetensors_files() {
        Ok(files) => return Ok(files),
        Err(HubError::InvalidIndex(invalid)) => return Err(HubError::InvalidIndex(invalid).into()),
        Err(error) => error,
    };
    let (file, location) = match &error {
        HubError::MissingLocalFile { dir, file } => (file, format!("directory {}", dir.display())),
        HubError::NotCached { file, cache, .. } => {
            (file, format!("the hub cache at {} (HF_HUB_OFFLINE is set: nothing is downloaded)", cache.display()))
        }
        HubError::Download { file, cache, reason, .. } => {
            (file, format!("the hub cache at {}, and downloading failed ({reason})", cache.display()))
        }
        HubError::InvalidIndex(_) => return Err(error.into()),
    };
    // A shard that the index names is missing: the index was found, the shard was looked for.
    let looked_for = if file == SAFETENSORS_FILE || file == SAFETENSORS_INDEX_FILE {
        vec![SAFETENSORS_FILE.to_string(), SAFETENSORS_INDEX_FILE.to_string()]
    } else {
        vec![format!("{file} (a shard listed in {SAFETENSORS_INDEX_FILE})")]
    };
    Err(LlamaError::MissingWeights { model: source.to_string(), looked_for, location, source: Box::new(error) })
}
