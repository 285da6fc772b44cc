//! PEFT LoRA adapters: `adapter_config.json` and `adapter_model.safetensors` with PEFT's keys
//! (`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`) and PyTorch layouts.

use std::path::Path;

use burn::prelude::*;
use burn_store::{BurnToPyTorchAdapter, KeyRemapper, ModuleSnapshot, SafetensorsStore};
use polarity_checkpoint::{Checkpoint, CheckpointError};
use polarity_hub::RepoSource;
use serde::Deserialize;

use super::{LlamaKeys, load};
use crate::LlamaError;
use crate::layers::LoraConfig;
use crate::llama::{LLAMA_DEFAULT_TARGET_MODULES, LLAMA_TARGET_MODULES, Llama};

/// PEFT's adapter configuration file.
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
/// PEFT's adapter weights file.
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// The largest `adapter_config.json` read, in bytes (PEFT writes about 1 KiB).
pub const MAX_ADAPTER_CONFIG_BYTES: u64 = 1 << 20;

/// The fields of PEFT's `adapter_config.json` that change what a LoRA adapter computes.
#[derive(Deserialize)]
struct PeftLoraConfig {
    peft_type: Option<String>,
    r: usize,
    lora_alpha: f64,
    lora_dropout: Option<f64>,
    target_modules: Option<serde_json::Value>,
    use_rslora: Option<bool>,
    use_dora: Option<bool>,
    bias: Option<String>,
    fan_in_fan_out: Option<bool>,
    rank_pattern: Option<serde_json::Map<String, serde_json::Value>>,
    alpha_pattern: Option<serde_json::Map<String, serde_json::Value>>,
    layers_to_transform: Option<serde_json::Value>,
    modules_to_save: Option<Vec<String>>,
}

impl LoraConfig {
    /// Parses PEFT's `adapter_config.json`, rejecting options that would change the computation in
    /// ways not implemented here (DoRA, biases, per-module ranks, layer subsets, saved modules).
    pub fn from_peft_json(json: &str) -> Result<Self, LlamaError> {
        let peft: PeftLoraConfig =
            serde_json::from_str(json).map_err(|e| LlamaError::InvalidConfig(format!("adapter_config.json: {e}")))?;
        let unsupported = |what: &str| Err(LlamaError::Unsupported(format!("PEFT adapter with {what}")));
        if let Some(kind) = peft.peft_type.as_deref().filter(|t| *t != "LORA") {
            return unsupported(&format!("peft_type {kind:?}"));
        }
        if peft.use_dora == Some(true) {
            return unsupported("use_dora");
        }
        if peft.fan_in_fan_out == Some(true) {
            return unsupported("fan_in_fan_out");
        }
        if let Some(bias) = peft.bias.as_deref().filter(|b| *b != "none") {
            return unsupported(&format!("bias {bias:?}"));
        }
        if peft.rank_pattern.as_ref().is_some_and(|p| !p.is_empty())
            || peft.alpha_pattern.as_ref().is_some_and(|p| !p.is_empty())
        {
            return unsupported("rank_pattern/alpha_pattern");
        }
        if peft.layers_to_transform.as_ref().is_some_and(|l| !l.is_null()) {
            return unsupported("layers_to_transform");
        }
        if peft.modules_to_save.as_ref().is_some_and(|m| !m.is_empty()) {
            return unsupported("modules_to_save");
        }
        let target_modules = match peft.target_modules {
            None | Some(serde_json::Value::Null) => LLAMA_DEFAULT_TARGET_MODULES.map(String::from).to_vec(),
            Some(serde_json::Value::String(s)) if s == "all-linear" => LLAMA_TARGET_MODULES.map(String::from).to_vec(),
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .map(|item| {
                    item.as_str().map(String::from).ok_or_else(|| {
                        LlamaError::InvalidConfig(format!("adapter_config.json: target module {item} is not a string"))
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(other) => return unsupported(&format!("target_modules {other} (a regex)")),
        };
        let config = LoraConfig {
            r: peft.r,
            lora_alpha: peft.lora_alpha,
            lora_dropout: peft.lora_dropout.unwrap_or(0.0),
            target_modules,
            use_rslora: peft.use_rslora.unwrap_or(false),
        };
        // Name the file in what the shared check says.
        config.validate(&LLAMA_TARGET_MODULES).map_err(|error| match error {
            LlamaError::InvalidConfig(reason) => LlamaError::InvalidConfig(format!("adapter_config.json: {reason}")),
            other => other,
        })?;
        Ok(config)
    }

    /// Reads PEFT's `adapter_config.json`: a regular file (a FIFO is an error, not a hang) of at most
    /// [`MAX_ADAPTER_CONFIG_BYTES`].
    pub fn from_peft_file(path: &Path) -> Result<Self, LlamaError> {
        let json = polarity_hub::files::read_regular_to_string_within(path, MAX_ADAPTER_CONFIG_BYTES)
            .map_err(|e| LlamaError::io(path, e))?;
        Self::from_peft_json(&json)
    }

    /// The `adapter_config.json` PEFT writes for this configuration (no target modules are written as
    /// `null`: the model's defaults, as in PEFT).
    pub fn to_peft_json(&self, base_model_name_or_path: Option<&str>) -> serde_json::Value {
        let target_modules = (!self.target_modules.is_empty()).then_some(&self.target_modules);
        serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model_name_or_path,
            "r": self.r,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": self.lora_dropout,
            "target_modules": target_modules,
            "use_rslora": self.use_rslora,
            "use_dora": false,
            "bias": "none",
            "fan_in_fan_out": false,
            "init_lora_weights": true,
            "inference_mode": true,
            "modules_to_save": null,
            "layers_to_transform": null,
            "rank_pattern": {},
            "alpha_pattern": {},
        })
    }
}

/// Module paths to PEFT adapter keys, for saving (what [`peft_key`] does for one path).
fn module_to_peft_remapper() -> KeyRemapper {
    KeyRemapper::from_patterns(vec![
        (r"\.adapter\.lora_a\.weight$", ".lora_A.weight"),
        (r"\.adapter\.lora_b\.weight$", ".lora_B.weight"),
        (r"^(.*)$", "base_model.model.${1}"),
    ])
    .unwrap_or_default()
}

/// The PEFT key of an adapter parameter's module path.
pub(super) fn peft_key(module_path: &str) -> String {
    let key = module_path.replace(".adapter.lora_a.", ".lora_A.").replace(".adapter.lora_b.", ".lora_B.");
    format!("base_model.model.{key}")
}

impl<B: Backend> Llama<B> {
    /// Attaches the PEFT adapter in `source` (a directory or hub id with `adapter_config.json` and
    /// `adapter_model.safetensors`). Every adapter the config implies must be in the file, with PEFT's
    /// shapes and a float dtype, and every tensor in the file must belong to one; a NaN or infinite
    /// value is [`CheckpointError::NonFinite`] naming the tensor. The config's rank, alpha and dropout
    /// are checked first ([`LoraConfig::validate`]), before any adapter is allocated.
    pub fn load_lora(self, source: &RepoSource) -> Result<(Self, LoraConfig), LlamaError> {
        let config = LoraConfig::from_peft_file(&source.file(ADAPTER_CONFIG_FILE)?)?;
        let weights = source.file(ADAPTER_WEIGHTS_FILE)?;
        let model = self.with_lora(&config)?;
        let model = load(model, Checkpoint::from_safetensors(std::slice::from_ref(&weights))?, LlamaKeys::Adapters)?;
        Ok((model, config))
    }

    /// Writes the adapters in PEFT's format to `dir` (created if needed): `adapter_config.json` from
    /// `config` (its targets resolved as [`Llama::with_lora`] resolves them) and
    /// `adapter_model.safetensors` with PEFT's keys and PyTorch layouts.
    pub fn save_lora(
        &self,
        dir: &Path,
        config: &LoraConfig,
        base_model_name_or_path: Option<&str>,
    ) -> Result<(), LlamaError> {
        if self.lora_adapters().is_empty() {
            return Err(LlamaError::InvalidConfig("the model has no LoRA adapters to save".into()));
        }
        std::fs::create_dir_all(dir).map_err(|e| LlamaError::io(dir, e))?;
        let config_path = dir.join(ADAPTER_CONFIG_FILE);
        let config = config.clone().with_default_targets(&LLAMA_DEFAULT_TARGET_MODULES);
        let json = serde_json::to_string_pretty(&config.to_peft_json(base_model_name_or_path))
            .map_err(|e| LlamaError::json(&config_path, e))?;
        std::fs::write(&config_path, json).map_err(|e| LlamaError::io(&config_path, e))?;

        let weights_path = dir.join(ADAPTER_WEIGHTS_FILE);
        let mut store = SafetensorsStore::from_file(weights_path.clone())
            .with_regex(r"\.adapter\.")
            .skip_enum_variants(true)
            .remap(module_to_peft_remapper())
            .with_to_adapter(BurnToPyTorchAdapter)
            .clear_metadata()
            .metadata("format", "pt")
            .overwrite(true);
        self.save_into(&mut store)
            .map_err(|e| CheckpointError::Save { path: weights_path, reason: e.to_string() }.into())
    }
}
