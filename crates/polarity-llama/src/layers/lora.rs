//! LoRA adapters as PEFT defines them, on any linear layer.
//!
//! A [`LoraLinear`] is a frozen linear layer (`base_layer`) plus an optional low-rank update:
//!
//! ```text
//! y = base_layer(x) + lora_B(lora_A(dropout(x))) * scaling,   scaling = lora_alpha / r
//! ```
//!
//! `lora_A` (`[r, in]` in PyTorch layout) starts kaiming-uniform like `nn.Linear` (bound
//! `1 / sqrt(in)`), `lora_B` (`[out, r]`) starts at zero, so a fresh adapter leaves the model unchanged.
//! The frozen base ([`BaseLinear`]) is either a dense [`Linear`] or a
//! [`QuantizedLinear`](crate::layers::quant::QuantizedLinear) (QLoRA); adapters attach, train and merge
//! the same way on both.
//!
//! This module knows no model: [`LoraConfig`] names its target modules, and the model decides which of
//! its projections those names are and which names exist (checked with [`LoraConfig::validate`]).

use burn::config::Config;
use burn::module::{Initializer, Module, Param};
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::prelude::*;
use polarity_kernels::on_rows;

use crate::LlamaError;
use crate::layers::linear::BaseLinear;

/// A LoRA configuration, with PEFT's field names.
///
/// ```
/// use polarity_llama::LoraConfig;
///
/// let config = LoraConfig::new(8, 16.0).with_target_modules(vec!["q_proj".into(), "v_proj".into()]);
/// assert_eq!(config.scaling(), 2.0);
/// assert!(config.targets("self_attn.q_proj") && !config.targets("mlp.up_proj"));
/// assert!(config.validate(&["q_proj", "k_proj", "v_proj"]).is_ok());
/// assert!(config.validate(&["query", "value"]).is_err());
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
    /// The modules that get adapters, by their last name (`q_proj`). Empty: the model's default
    /// targets, as PEFT's `target_modules=None` (see [`with_default_targets`](Self::with_default_targets)).
    #[config(default = "Vec::new()")]
    pub target_modules: Vec<String>,
    /// Rank-stabilised scaling, `lora_alpha / sqrt(r)`.
    #[config(default = false)]
    pub use_rslora: bool,
}

/// The largest LoRA rank accepted (PEFT's adapters use 4 to 256; a rank from a flag or a file above this
/// would allocate adapters as large as the model).
pub const MAX_LORA_RANK: usize = 4096;
/// The largest scaling `lora_alpha / r` accepted (alpha is typically r to 2r: a scaling of 0.5 to 2).
pub const MAX_LORA_SCALING: f64 = 1e4;

impl LoraConfig {
    /// The factor applied to the low-rank update.
    pub fn scaling(&self) -> f64 {
        if self.use_rslora { self.lora_alpha / (self.r as f64).sqrt() } else { self.lora_alpha / self.r as f64 }
    }

    /// Whether the module `name` (`self_attn.q_proj` or `q_proj`) is a target.
    pub fn targets(&self, name: &str) -> bool {
        let module = name.rsplit('.').next().unwrap_or(name);
        self.target_modules.iter().any(|target| target == module)
    }

    /// The same configuration with `defaults` as targets when none are named (the model's defaults).
    pub fn with_default_targets(mut self, defaults: &[&str]) -> Self {
        if self.target_modules.is_empty() {
            self.target_modules = defaults.iter().map(|name| name.to_string()).collect();
        }
        self
    }

    /// Checks the rank (1 to [`MAX_LORA_RANK`]), `lora_alpha` (finite, above 0, with a scaling of at most
    /// [`MAX_LORA_SCALING`]: 0 or a negative alpha would load an adapter that silently does nothing or the
    /// opposite) and dropout (in `[0, 1)`), and that the targets are among `known_modules` (the names of
    /// the model's adaptable projections) and not empty.
    pub fn validate(&self, known_modules: &[&str]) -> Result<(), LlamaError> {
        if !(1..=MAX_LORA_RANK).contains(&self.r) {
            return Err(LlamaError::InvalidConfig(format!("LoRA rank r {} is not in 1 to {MAX_LORA_RANK}", self.r)));
        }
        if !(self.lora_alpha.is_finite() && self.lora_alpha > 0.0) {
            return Err(LlamaError::InvalidConfig(format!(
                "lora_alpha {} is not a finite number above 0",
                self.lora_alpha
            )));
        }
        if self.scaling() > MAX_LORA_SCALING {
            return Err(LlamaError::InvalidConfig(format!(
                "lora_alpha {} with r {} scales the update by {}, more than {MAX_LORA_SCALING}",
                self.lora_alpha,
                self.r,
                self.scaling()
            )));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(LlamaError::InvalidConfig(format!("lora_dropout {} is not in [0, 1)", self.lora_dropout)));
        }
        if self.target_modules.is_empty() {
            return Err(LlamaError::InvalidConfig("LoRA target_modules is empty".into()));
        }
        if let Some(unknown) = self.target_modules.iter().find(|t| !known_modules.contains(&t.as_str())) {
            return Err(LlamaError::InvalidConfig(format!(
                "LoRA target module {unknown:?} is not an adaptable projection of the model ({})",
                known_modules.join(", ")
            )));
        }
        Ok(())
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
    /// A layer without adapter, over a dense [`Linear`] or a
    /// [`QuantizedLinear`](crate::layers::quant::QuantizedLinear).
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
    /// into bitsandbytes 4-bit layers); quantise the base again afterwards to trade that accuracy for
    /// memory explicitly. A quantised base without adapter stays quantised.
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
