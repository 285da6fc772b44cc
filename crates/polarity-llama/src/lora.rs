//! LoRA adapters as PEFT defines them.
//!
//! A [`LoraLinear`] is a frozen linear layer (`base_layer`) plus an optional low-rank update:
//!
//! ```text
//! y = base_layer(x) + lora_B(lora_A(dropout(x))) * scaling,   scaling = lora_alpha / r
//! ```
//!
//! `lora_A` (`[r, in]` in PyTorch layout) starts kaiming-uniform like `nn.Linear` (bound
//! `1 / sqrt(in)`), `lora_B` (`[out, r]`) starts at zero, so a fresh adapter leaves the model unchanged.
//! [`Llama::with_lora`] freezes every base parameter and attaches adapters to the target modules
//! (PEFT names: `q_proj`, `k_proj`, `v_proj`, `o_proj`, `gate_proj`, `up_proj`, `down_proj`); only
//! adapter weights then receive gradients. Adapters are saved and loaded in PEFT's format
//! (`adapter_config.json` and `adapter_model.safetensors` with keys such as
//! `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`), and can be merged into the
//! base weights ([`Llama::merge_lora`]).
//!
//! QLoRA: the frozen base of a projection ([`BaseLinear`]) is either a dense [`Linear`] or a
//! [`QuantizedLinear`] (NF4 from [`Llama::quantize_frozen_base`], GGUF blocks from
//! [`Llama::from_gguf_quantized`]); adapters attach, train, save and load the same way on both. The
//! base's checkpoint keys are the same for both kinds (`…q_proj.base_layer.weight`): burn-store is
//! told to leave enum variant names out of module paths.

use std::path::Path;

use burn::config::Config;
use burn::module::{Initializer, Module, Param};
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn_store::{BurnToPyTorchAdapter, KeyRemapper, ModuleSnapshot, SafetensorsStore};
use polarity_hub::RepoSource;
use serde::Deserialize;

use polarity_kernels::on_rows;

use crate::LlamaError;
use crate::llama::{Llama, LlamaModel};
use crate::load::{Checkpoint, Part, apply_checkpoint, read_safetensors};
use crate::quant::QuantizedLinear;

/// The projections of a Llama layer that can carry an adapter, as PEFT names them.
pub const LLAMA_TARGET_MODULES: [&str; 7] =
    ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
/// PEFT's adapter configuration file.
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
/// PEFT's adapter weights file.
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// A LoRA configuration, with PEFT's field names.
///
/// ```
/// use polarity_llama::LoraConfig;
///
/// let config = LoraConfig::new(8, 16.0).with_target_modules(vec!["q_proj".into(), "v_proj".into()]);
/// assert_eq!(config.scaling(), 2.0);
/// assert!(config.targets("self_attn.q_proj") && !config.targets("mlp.up_proj"));
/// ```
#[derive(Config, Debug, PartialEq)]
pub struct LoraConfig {
    /// The rank of the update.
    pub r: usize,
    /// The update is scaled by `lora_alpha / r` (or `lora_alpha / sqrt(r)` with `use_rslora`).
    pub lora_alpha: f64,
    /// Dropout on the adapter's input (active only while training, i.e. on an autodiff backend).
    #[config(default = 0.0)]
    pub lora_dropout: f64,
    /// The projections that get adapters (see [`LLAMA_TARGET_MODULES`]).
    #[config(default = "vec![\"q_proj\".to_string(), \"v_proj\".to_string()]")]
    pub target_modules: Vec<String>,
    /// Rank-stabilised scaling, `lora_alpha / sqrt(r)`.
    #[config(default = false)]
    pub use_rslora: bool,
}

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
    /// The factor applied to the low-rank update.
    pub fn scaling(&self) -> f64 {
        if self.use_rslora { self.lora_alpha / (self.r as f64).sqrt() } else { self.lora_alpha / self.r as f64 }
    }

    /// Whether the projection `name` (`self_attn.q_proj` or `q_proj`) is a target.
    pub fn targets(&self, name: &str) -> bool {
        let module = name.rsplit('.').next().unwrap_or(name);
        self.target_modules.iter().any(|target| target == module)
    }

    /// Checks the rank, dropout and target names.
    pub fn validate(&self) -> Result<(), LlamaError> {
        if self.r == 0 {
            return Err(LlamaError::InvalidConfig("LoRA rank r must be positive".into()));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(LlamaError::InvalidConfig(format!("lora_dropout {} is not in [0, 1)", self.lora_dropout)));
        }
        if self.target_modules.is_empty() {
            return Err(LlamaError::InvalidConfig("LoRA target_modules is empty".into()));
        }
        if let Some(unknown) = self.target_modules.iter().find(|t| !LLAMA_TARGET_MODULES.contains(&t.as_str())) {
            return Err(LlamaError::InvalidConfig(format!(
                "LoRA target module {unknown:?} is not a Llama projection ({})",
                LLAMA_TARGET_MODULES.join(", ")
            )));
        }
        Ok(())
    }

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
            None | Some(serde_json::Value::Null) => vec!["q_proj".to_string(), "v_proj".to_string()],
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
        config.validate()?;
        Ok(config)
    }

    /// Reads PEFT's `adapter_config.json`.
    pub fn from_peft_file(path: &Path) -> Result<Self, LlamaError> {
        let json = std::fs::read_to_string(path).map_err(|e| LlamaError::io(path, e))?;
        Self::from_peft_json(&json)
    }

    /// The `adapter_config.json` PEFT writes for this configuration.
    pub fn to_peft_json(&self, base_model_name_or_path: Option<&str>) -> serde_json::Value {
        serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model_name_or_path,
            "r": self.r,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": self.lora_dropout,
            "target_modules": self.target_modules,
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

/// A linear layer with an optional LoRA update; the base layer is frozen once an adapter is attached.
#[derive(Module, Debug)]
pub struct LoraLinear<B: Backend> {
    /// The pre-trained projection, dense or quantised.
    pub base_layer: BaseLinear<B>,
    /// The low-rank update, if any.
    pub adapter: Option<LoraAdapter<B>>,
}

/// The pre-trained projection under a LoRA adapter: dense f32 (trainable until an adapter freezes it)
/// or quantised (always frozen: QLoRA).
///
/// Module paths name the variant (`base_layer.Dense.weight`) for burn's own visitors; this crate's
/// checkpoint code leaves variant names out (burn-store's `skip_enum_variants`), so the keys stay
/// Hugging Face's and PEFT's (`q_proj.weight` ↔ `q_proj.base_layer.weight`).
#[derive(Module, Debug)]
pub enum BaseLinear<B: Backend> {
    /// A dense [`Linear`] (burn layout, weight `[in, out]`).
    Dense(Linear<B>),
    /// A quantised weight dequantised on use.
    Quantized(QuantizedLinear<B>),
}

impl<B: Backend> From<Linear<B>> for BaseLinear<B> {
    fn from(layer: Linear<B>) -> Self {
        BaseLinear::Dense(layer)
    }
}

impl<B: Backend> From<QuantizedLinear<B>> for BaseLinear<B> {
    fn from(layer: QuantizedLinear<B>) -> Self {
        BaseLinear::Quantized(layer)
    }
}

impl<B: Backend> BaseLinear<B> {
    /// `[..., in] -> [..., out]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            BaseLinear::Dense(layer) => polarity_kernels::linear(layer, x),
            BaseLinear::Quantized(layer) => layer.forward(x),
        }
    }

    /// `[in_features, out_features]` (burn's layout of a linear weight).
    pub fn dims(&self) -> [usize; 2] {
        match self {
            BaseLinear::Dense(layer) => layer.weight.lazy_shape().dims(),
            BaseLinear::Quantized(layer) => layer.dims(),
        }
    }

    /// The dense layer, if the base is not quantised.
    pub fn as_dense(&self) -> Option<&Linear<B>> {
        match self {
            BaseLinear::Dense(layer) => Some(layer),
            BaseLinear::Quantized(_) => None,
        }
    }

    /// The quantised layer, if the base is quantised.
    pub fn as_quantized(&self) -> Option<&QuantizedLinear<B>> {
        match self {
            BaseLinear::Dense(_) => None,
            BaseLinear::Quantized(layer) => Some(layer),
        }
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&Param<Tensor<B, 1>>> {
        match self {
            BaseLinear::Dense(layer) => layer.bias.as_ref(),
            BaseLinear::Quantized(layer) => layer.bias.as_ref(),
        }
    }
}

/// The low-rank update `lora_B(lora_A(dropout(x))) * scaling`.
#[derive(Module, Debug)]
pub struct LoraAdapter<B: Backend> {
    /// `[in] -> [r]`, kaiming-uniform at start.
    pub lora_a: Linear<B>,
    /// `[r] -> [out]`, zero at start.
    pub lora_b: Linear<B>,
    /// Dropout on the adapter input.
    pub dropout: Dropout,
    /// `lora_alpha / r`.
    pub scaling: f64,
}

impl<B: Backend> LoraLinear<B> {
    /// A layer without adapter, over a dense [`Linear`] or a [`QuantizedLinear`].
    pub fn new(base_layer: impl Into<BaseLinear<B>>) -> Self {
        Self { base_layer: base_layer.into(), adapter: None }
    }

    /// `[..., in] -> [..., out]`.
    ///
    /// The leading dimensions are folded into one first, so a batch of sequences is one large matrix
    /// product rather than one per sequence (CPU backends re-pack the weight for each).
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        on_rows(x, |x| match &self.adapter {
            None => self.base_layer.forward(x),
            Some(adapter) => self.base_layer.forward(x.clone()) + adapter.forward(x),
        })
    }

    /// `[in_features, out_features]`.
    pub fn dims(&self) -> [usize; 2] {
        self.base_layer.dims()
    }

    /// Freezes the base layer and attaches a fresh adapter (`lora_A` random, `lora_B` zero) on
    /// `device` (the model's device: a quantised base lives on the host and has none of its own).
    pub fn with_new_adapter(self, config: &LoraConfig, device: &B::Device) -> Self {
        let [d_input, d_output] = self.dims();
        let adapter = LoraAdapter {
            // nn.Linear's (and PEFT's) kaiming_uniform(a = sqrt(5)) is burn's default Linear init.
            lora_a: LinearConfig::new(d_input, config.r).with_bias(false).init(device),
            lora_b: LinearConfig::new(config.r, d_output)
                .with_bias(false)
                .with_initializer(Initializer::Zeros)
                .init(device),
            dropout: DropoutConfig::new(config.lora_dropout).init(),
            scaling: config.scaling(),
        };
        Self { base_layer: self.base_layer.no_grad(), adapter: Some(adapter) }
    }

    /// The layer with its adapter folded into the base weight (`W + scaling * B A`), without adapter.
    ///
    /// A quantised base is dequantised and merged into a **dense f32** base, exactly (the merged layer
    /// computes what base + adapter computed). It is not re-quantised: rounding the merged weight back
    /// to 4 bits would mostly round the small LoRA update away (PEFT warns about this when it merges
    /// into bitsandbytes 4-bit layers); call [`Llama::quantize_frozen_base`] afterwards to trade that
    /// accuracy for memory explicitly. A quantised base without adapter stays quantised.
    pub fn merged(self) -> Self {
        let Some(adapter) = self.adapter else { return self };
        let delta = adapter.delta_weight().detach();
        let base_layer = match self.base_layer {
            BaseLinear::Dense(layer) => Linear {
                weight: layer.weight.map(|weight| {
                    let require_grad = weight.is_require_grad();
                    (weight + delta).detach().set_require_grad(require_grad)
                }),
                bias: layer.bias,
            },
            BaseLinear::Quantized(layer) => {
                let weight = layer.dequantized_weight(&delta.device()) + delta;
                Linear { weight: Param::from_tensor(weight.detach()).set_require_grad(false), bias: layer.bias }
            }
        };
        Self { base_layer: BaseLinear::Dense(base_layer), adapter: None }
    }
}

impl<B: Backend> LoraAdapter<B> {
    /// `[..., in] -> [..., out]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let x = polarity_kernels::dropout(&self.dropout, x);
        polarity_kernels::linear(&self.lora_b, polarity_kernels::linear(&self.lora_a, x)).mul_scalar(self.scaling)
    }

    /// The update of the base weight in burn's `[in, out]` layout: `scaling * A B`.
    pub fn delta_weight(&self) -> Tensor<B, 2> {
        self.lora_a.weight.val().matmul(self.lora_b.weight.val()).mul_scalar(self.scaling)
    }
}

/// PEFT adapter keys to module paths (`base_model.model.X.lora_A.weight` -> `X.adapter.lora_a.weight`).
fn peft_to_module_remapper() -> KeyRemapper {
    KeyRemapper::from_patterns(vec![
        (r"^base_model\.model\.", ""),
        (r"\.lora_A\.weight$", ".adapter.lora_a.weight"),
        (r"\.lora_B\.weight$", ".adapter.lora_b.weight"),
    ])
    // Constant, valid patterns: this cannot fail.
    .unwrap_or_default()
}

/// Module paths to PEFT adapter keys (the inverse of [`peft_to_module_remapper`]).
fn module_to_peft_remapper() -> KeyRemapper {
    KeyRemapper::from_patterns(vec![
        (r"\.adapter\.lora_a\.weight$", ".lora_A.weight"),
        (r"\.adapter\.lora_b\.weight$", ".lora_B.weight"),
        (r"^(.*)$", "base_model.model.${1}"),
    ])
    .unwrap_or_default()
}

/// The PEFT key of an adapter parameter's module path.
fn peft_key(module_path: &str) -> String {
    let key = module_path.replace(".adapter.lora_a.", ".lora_A.").replace(".adapter.lora_b.", ".lora_B.");
    format!("base_model.model.{key}")
}

impl<B: Backend> Llama<B> {
    /// Freezes every parameter of the model and attaches fresh adapters to the projections that
    /// `config` targets, in every layer. Only the adapters are trainable afterwards. Works the same on a
    /// quantised base (QLoRA: [`Llama::quantize_frozen_base`], [`Llama::from_gguf_quantized`]); the
    /// adapters are created on the device of the token embeddings.
    pub fn with_lora(self, config: &LoraConfig) -> Result<Self, LlamaError> {
        config.validate()?;
        if !self.lora_adapters().is_empty() {
            return Err(LlamaError::InvalidConfig("the model already has LoRA adapters (merge them first)".into()));
        }
        let device = self.model.embed_tokens.weight.lazy_device();
        let Llama { model, lm_head } = self.no_grad();
        let layers = model
            .layers
            .into_iter()
            .map(|layer| {
                layer.try_map_projections(|name, projection| {
                    Ok::<_, LlamaError>(if config.targets(name) {
                        projection.with_new_adapter(config, &device)
                    } else {
                        projection
                    })
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Llama { model: LlamaModel { layers, ..model }, lm_head })
    }

    /// The model with every adapter merged into its base weights (and removed). A quantised base with
    /// an adapter becomes a dense f32 base (see [`LoraLinear::merged`]).
    pub fn merge_lora(self) -> Self {
        let Llama { model, lm_head } = self;
        let layers = model
            .layers
            .into_iter()
            .map(|layer| {
                match layer.try_map_projections(|_, projection| Ok::<_, std::convert::Infallible>(projection.merged()))
                {
                    Ok(layer) => layer,
                    Err(never) => match never {},
                }
            })
            .collect();
        Llama { model: LlamaModel { layers, ..model }, lm_head }
    }

    /// The adapters of the model with the module names PEFT gives them
    /// (`model.layers.0.self_attn.q_proj`), in layer order.
    pub fn lora_adapters(&self) -> Vec<(String, &LoraAdapter<B>)> {
        let mut adapters = Vec::new();
        for (index, layer) in self.model.layers.iter().enumerate() {
            for (name, projection) in layer.projections() {
                if let Some(adapter) = &projection.adapter {
                    adapters.push((format!("model.layers.{index}.{name}"), adapter));
                }
            }
        }
        adapters
    }

    /// Attaches the PEFT adapter in `source` (a directory or hub id with `adapter_config.json` and
    /// `adapter_model.safetensors`). Every adapter the config implies must be in the file, with PEFT's
    /// shapes, and every tensor in the file must belong to one.
    pub fn load_lora(self, source: &RepoSource) -> Result<(Self, LoraConfig), LlamaError> {
        let config = LoraConfig::from_peft_file(&source.file(ADAPTER_CONFIG_FILE)?)?;
        let weights = source.file(ADAPTER_WEIGHTS_FILE)?;
        let model = self.with_lora(&config)?;
        let tensors = read_safetensors(std::slice::from_ref(&weights), &peft_to_module_remapper())?;
        let checkpoint = Checkpoint { name: weights.display().to_string(), tensors, checkpoint_name: peft_key };
        let (model, _) = apply_checkpoint(model, checkpoint, Part::Adapters)?;
        Ok((model, config))
    }

    /// Writes the adapters in PEFT's format to `dir` (created if needed): `adapter_config.json` from
    /// `config` and `adapter_model.safetensors` with PEFT's keys and PyTorch layouts.
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
        self.save_into(&mut store).map_err(|e| LlamaError::Safetensors { path: weights_path, reason: e.to_string() })
    }
}

impl<B: AutodiffBackend> Llama<B> {
    /// The gradients of the adapter weights after `loss.backward()`, named as PEFT's parameters
    /// without the `base_model.model.` prefix (`model.layers.0.self_attn.q_proj.lora_A.weight`), with
    /// their PyTorch shapes (`[r, in]` for `lora_A`, `[out, r]` for `lora_B`). Adapters that took no
    /// part in the loss have no gradient and are left out.
    pub fn lora_gradients(&self, grads: &B::Gradients) -> Vec<(String, TensorData)> {
        let mut gradients = Vec::new();
        for (name, adapter) in self.lora_adapters() {
            for (matrix, linear) in [("lora_A", &adapter.lora_a), ("lora_B", &adapter.lora_b)] {
                if let Some(grad) = linear.weight.val().grad(grads) {
                    gradients.push((format!("{name}.{matrix}.weight"), grad.transpose().into_data()));
                }
            }
        }
        gradients
    }
}
