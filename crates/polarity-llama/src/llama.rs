//! Llama (`LlamaForCausalLM`) in burn, in one flat file.
//!
//! The structure and field names mirror Hugging Face's parameter names, so a checkpoint key like
//! `model.layers.3.self_attn.q_proj.weight` is the path of the same tensor here (every projection is a
//! [`LoraLinear`], whose frozen base weight lives at `…q_proj.base_layer.weight`, PEFT's spelling):
//!
//! ```text
//! Llama
//! ├── model: LlamaModel
//! │   ├── embed_tokens: TokenEmbedding       [vocab, hidden] (dense, or NF4 in a random QLoRA build)
//! │   ├── layers: Vec<LlamaDecoderLayer>
//! │   │   ├── input_layernorm: RmsNorm
//! │   │   ├── self_attn: LlamaAttention        q_proj, k_proj, v_proj, o_proj (grouped-query)
//! │   │   ├── post_attention_layernorm: RmsNorm
//! │   │   └── mlp: LlamaMlp                    gate_proj, up_proj, down_proj (SwiGLU)
//! │   ├── norm: RmsNorm
//! │   └── rotary_emb: RotaryEmbedding          inverse frequencies (default or `llama3` scaling)
//! └── lm_head: Option<BaseLinear>              None = tied to embed_tokens (dense, or NF4 in a random QLoRA build)
//! ```
//!
//! Batches are right-padded: the attention of every query combines the causal mask with the padding
//! mask of the keys, and positions are `0..seq_len` for every row, as transformers does when it is
//! given an attention mask and no position ids.
//!
//! Read top to bottom: the configuration (from `config.json`), the modules, their forward passes,
//! LoRA on the projections ([`Llama::with_lora`], [`Llama::merge_lora`]), QLoRA's quantised frozen
//! base ([`Llama::quantize_frozen_base`], or built 4-bit with random weights by
//! [`LlamaConfig::init_quantized_random`]), greedy generation and the causal-LM loss. Checkpoints
//! (safetensors, GGUF, PEFT adapters) are read and written by `crate::checkpoint`.

use std::path::Path;

use burn::config::Config;
use burn::module::{AutodiffModule, Initializer, Module, Param};
use burn::nn::{EmbeddingConfig, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::AutodiffBackend;
use polarity_kernels::autocast::{compute_dtype, matmul};
use polarity_kernels::linear_with;
use polarity_kernels::{AttentionHeads, AttentionMask, PackedSequences, attention};
use polarity_tokenize::PaddingBatcher;
use serde::Deserialize;

use crate::LlamaError;
use crate::layers::random::RandomStream;
use crate::layers::{
    BaseLinear, LoraAdapter, LoraConfig, LoraLinear, QuantizedEmbedding, QuantizedLinear, QuantizedMatrix,
    TokenEmbedding, WeightMemory,
};

/// The standard deviation of random weights: transformers' default `initializer_range`.
const INITIALIZER_STD: f64 = 0.02;

/// The label value that [`causal_lm_loss`] ignores, as PyTorch's `CrossEntropyLoss` does.
pub const IGNORE_INDEX: i64 = -100;

/// The projections of a Llama layer that can carry a LoRA adapter, as PEFT names them.
pub const LLAMA_TARGET_MODULES: [&str; 7] =
    ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// The projections that get adapters when a [`LoraConfig`] names none: PEFT's default for Llama.
pub const LLAMA_DEFAULT_TARGET_MODULES: [&str; 2] = ["q_proj", "v_proj"];

/// The `llama3` RoPE frequency scaling (Llama 3.1 and later): low frequencies are divided by `factor`,
/// high ones kept, and the band between smoothly interpolated.
#[derive(Config, Debug, PartialEq)]
pub struct Llama3RopeScaling {
    /// How much longer the extended context is than the original one.
    pub factor: f64,
    /// Wavelengths above `original_max_position_embeddings / low_freq_factor` are scaled fully.
    pub low_freq_factor: f64,
    /// Wavelengths below `original_max_position_embeddings / high_freq_factor` are not scaled.
    pub high_freq_factor: f64,
    /// The context length the model was pre-trained with.
    pub original_max_position_embeddings: usize,
}

/// The hyper-parameters of a Llama model, named as in Hugging Face's `config.json`.
///
/// Read a `config.json` with [`LlamaConfig::from_hf_json`] (both the `rope_scaling` spelling and the
/// newer `rope_parameters` one are accepted), or build one in code:
///
/// ```
/// use polarity_llama::LlamaConfig;
///
/// let config = LlamaConfig::llama3_8b_instruct().with_num_hidden_layers(2);
/// assert_eq!(config.resolved_head_dim(), 128);
/// assert_eq!(config.num_key_value_groups(), 4);
/// ```
#[derive(Config, Debug, PartialEq)]
pub struct LlamaConfig {
    /// Number of token embeddings.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of key/value heads: 1 (multi-query) up to `num_attention_heads` (multi-head).
    pub num_key_value_heads: usize,
    /// Width of one head; `hidden_size / num_attention_heads` when absent.
    pub head_dim: Option<usize>,
    /// RMSNorm epsilon.
    #[config(default = 1e-6)]
    pub rms_norm_eps: f64,
    /// RoPE base.
    #[config(default = 10000.0)]
    pub rope_theta: f64,
    /// `llama3` RoPE scaling, if any.
    pub rope_scaling: Option<Llama3RopeScaling>,
    /// The longest context the model is meant for (informational; RoPE is computed on the fly).
    #[config(default = 2048)]
    pub max_position_embeddings: usize,
    /// Whether the output projection reuses the token embeddings.
    #[config(default = false)]
    pub tie_word_embeddings: bool,
    /// Whether q/k/v/o projections have biases.
    #[config(default = false)]
    pub attention_bias: bool,
    /// Whether the MLP projections have biases.
    #[config(default = false)]
    pub mlp_bias: bool,
}

/// The most decoder layers a config may ask for (Llama 3.1 405B has 126).
pub const MAX_LAYERS: usize = 1024;
/// The widest residual stream (Llama 3.1 405B: 16,384).
pub const MAX_HIDDEN_SIZE: usize = 1 << 16;
/// The widest MLP (Llama 3.1 405B: 53,248).
pub const MAX_INTERMEDIATE_SIZE: usize = 1 << 20;
/// The largest vocabulary (Gemma 3: 262,144).
pub const MAX_VOCAB_SIZE: usize = 1 << 24;
/// The most query or key/value heads (Llama 3.1 405B: 128).
pub const MAX_HEADS: usize = 1 << 14;
/// The widest attention head (real ones: 64 to 256).
pub const MAX_HEAD_DIM: usize = 1 << 13;
/// The longest context (Llama 4 Scout: 10 million).
pub const MAX_POSITION_EMBEDDINGS: usize = 1 << 24;

/// What [`LlamaConfig::check`] found wrong, before the loader names its file.
struct ConfigProblem {
    field: &'static str,
    value: String,
    reason: String,
}

/// `config.json` as transformers writes it, before defaults are resolved.
#[derive(Deserialize)]
struct HfLlamaConfig {
    model_type: Option<String>,
    hidden_act: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<HfRopeParameters>,
    rope_parameters: Option<HfRopeParameters>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
}

/// `rope_scaling` (transformers 4) or `rope_parameters` (transformers 5, which also holds `rope_theta`).
#[derive(Deserialize)]
struct HfRopeParameters {
    rope_type: Option<String>,
    /// The legacy spelling of `rope_type`.
    #[serde(rename = "type")]
    legacy_type: Option<String>,
    rope_theta: Option<f64>,
    factor: Option<f64>,
    low_freq_factor: Option<f64>,
    high_freq_factor: Option<f64>,
    original_max_position_embeddings: Option<usize>,
}

impl HfRopeParameters {
    fn scaling(&self) -> Result<Option<Llama3RopeScaling>, LlamaError> {
        let rope_type = self.rope_type.as_deref().or(self.legacy_type.as_deref()).unwrap_or("default");
        match rope_type {
            "default" => Ok(None),
            "llama3" => {
                let field = |value: Option<f64>, name: &str| {
                    value.ok_or_else(|| LlamaError::InvalidConfig(format!("llama3 RoPE scaling without {name}")))
                };
                Ok(Some(Llama3RopeScaling {
                    factor: field(self.factor, "factor")?,
                    low_freq_factor: field(self.low_freq_factor, "low_freq_factor")?,
                    high_freq_factor: field(self.high_freq_factor, "high_freq_factor")?,
                    original_max_position_embeddings: self.original_max_position_embeddings.ok_or_else(|| {
                        LlamaError::InvalidConfig("llama3 RoPE scaling without original_max_position_embeddings".into())
                    })?,
                }))
            }
            other => {
                Err(LlamaError::Unsupported(format!("RoPE type {other:?} (only default and llama3 are implemented)")))
            }
        }
    }
}

impl LlamaConfig {
    /// Parses a Hugging Face `config.json`, resolving transformers' defaults, and
    /// [validates](Self::validate) it.
    pub fn from_hf_json(json: &str) -> Result<Self, LlamaError> {
        Self::from_hf_json_named(json, "config.json")
    }

    fn from_hf_json_named(json: &str, source_name: &str) -> Result<Self, LlamaError> {
        let hf: HfLlamaConfig =
            serde_json::from_str(json).map_err(|e| LlamaError::InvalidConfig(format!("{source_name}: {e}")))?;
        if let Some(model_type) = hf.model_type.as_deref().filter(|t| *t != "llama") {
            return Err(LlamaError::Unsupported(format!("model_type {model_type:?} (expected \"llama\")")));
        }
        if let Some(act) = hf.hidden_act.as_deref().filter(|a| *a != "silu") {
            return Err(LlamaError::Unsupported(format!("hidden_act {act:?} (Llama uses silu)")));
        }
        // transformers 5 moved rope_theta into rope_parameters; older configs keep it at the top.
        let rope = hf.rope_parameters.as_ref().or(hf.rope_scaling.as_ref());
        let rope_theta = rope.and_then(|r| r.rope_theta).or(hf.rope_theta).unwrap_or(10000.0);
        let rope_scaling = match rope {
            Some(rope) => rope.scaling()?,
            None => None,
        };
        let config = LlamaConfig {
            vocab_size: hf.vocab_size,
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_hidden_layers: hf.num_hidden_layers,
            num_attention_heads: hf.num_attention_heads,
            num_key_value_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
            head_dim: hf.head_dim,
            rms_norm_eps: hf.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings: hf.max_position_embeddings.unwrap_or(2048),
            tie_word_embeddings: hf.tie_word_embeddings.unwrap_or(false),
            attention_bias: hf.attention_bias.unwrap_or(false),
            mlp_bias: hf.mlp_bias.unwrap_or(false),
        };
        config.validate_named(source_name, |field| field.to_string())?;
        Ok(config)
    }

    /// Reads and parses a Hugging Face `config.json` file (a regular file: a FIFO is an error, not a
    /// hang); errors name the file.
    pub fn from_hf_file(path: &Path) -> Result<Self, LlamaError> {
        let json = polarity_hub::files::read_regular_to_string(path).map_err(|e| LlamaError::io(path, e))?;
        let name = path.display().to_string();
        Self::from_hf_json_named(&json, &name).map_err(|e| match e {
            LlamaError::InvalidConfig(what) if !what.starts_with(&name) => {
                LlamaError::InvalidConfig(format!("{name}: {what}"))
            }
            other => other,
        })
    }

    /// `meta-llama/Meta-Llama-3-8B-Instruct`'s architecture (32 layers; benches shrink it with
    /// [`with_num_hidden_layers`](Self::with_num_hidden_layers)). Meta ships it with
    /// `rope_type: default`; the `llama3` scaling here is Llama 3.1's (factor 8, low 1, high 4,
    /// original context 8192), so benches exercise the full RoPE path.
    pub fn llama3_8b_instruct() -> Self {
        LlamaConfig::new(128_256, 4096, 14_336, 32, 32, 8)
            .with_rms_norm_eps(1e-5)
            .with_rope_theta(500_000.0)
            .with_rope_scaling(Some(Llama3RopeScaling::new(8.0, 1.0, 4.0, 8192)))
            .with_max_position_embeddings(8192)
    }

    /// The same configuration with `num_hidden_layers` layers (benches shrink large models this way;
    /// `#[derive(Config)]` only generates `with_*` for optional fields).
    pub fn with_num_hidden_layers(mut self, num_hidden_layers: usize) -> Self {
        self.num_hidden_layers = num_hidden_layers;
        self
    }

    /// The width of one attention head.
    pub fn resolved_head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// How many query heads share one key/value head.
    pub fn num_key_value_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads.max(1)
    }

    /// Checks every size and value against its bounds and the others (what `init` would otherwise trip
    /// over, or compute garbage with): [`LlamaError::InvalidConfigValue`] naming the field and value, in
    /// a config built in code (`config`). The loaders ([`from_hf_file`](Self::from_hf_file),
    /// [`from_gguf`](Self::from_gguf)) run the same checks naming their file and its spelling of the field.
    ///
    /// Bounds, generous against real models (Llama 3.1 405B: 126 layers, hidden 16,384, 128 heads,
    /// FFN 53,248; vocabularies up to 262,144): see [`MAX_LAYERS`], [`MAX_HIDDEN_SIZE`],
    /// [`MAX_INTERMEDIATE_SIZE`], [`MAX_VOCAB_SIZE`], [`MAX_HEADS`], [`MAX_HEAD_DIM`] and
    /// [`MAX_POSITION_EMBEDDINGS`]; `rms_norm_eps` in (0, 1], `rope_theta` > 0, both finite in `f32`;
    /// llama3 RoPE scaling with finite factors, `high_freq_factor > low_freq_factor > 0`, `factor > 0`
    /// and an original context of 1 to [`MAX_POSITION_EMBEDDINGS`].
    pub fn validate(&self) -> Result<(), LlamaError> {
        self.validate_named("config", |field| field.to_string())
    }

    /// [`validate`](Self::validate), naming `source_name` and each field as `field_name` spells it.
    pub(crate) fn validate_named(
        &self,
        source_name: &str,
        field_name: impl Fn(&str) -> String,
    ) -> Result<(), LlamaError> {
        self.check().map_err(|problem| LlamaError::InvalidConfigValue {
            source_name: source_name.to_string(),
            field: field_name(problem.field),
            value: problem.value,
            reason: problem.reason,
        })
    }

    fn check(&self) -> Result<(), ConfigProblem> {
        let problem = |field: &'static str, value: &dyn std::fmt::Display, reason: String| {
            Err(ConfigProblem { field, value: value.to_string(), reason })
        };
        for (field, value, min, max) in [
            ("vocab_size", self.vocab_size, 1, MAX_VOCAB_SIZE),
            ("hidden_size", self.hidden_size, 1, MAX_HIDDEN_SIZE),
            ("intermediate_size", self.intermediate_size, 1, MAX_INTERMEDIATE_SIZE),
            ("num_hidden_layers", self.num_hidden_layers, 0, MAX_LAYERS),
            ("num_attention_heads", self.num_attention_heads, 1, MAX_HEADS),
            ("num_key_value_heads", self.num_key_value_heads, 1, MAX_HEADS),
            ("max_position_embeddings", self.max_position_embeddings, 1, MAX_POSITION_EMBEDDINGS),
        ] {
            if !(min..=max).contains(&value) {
                return problem(field, &value, format!("must be between {min} and {max}"));
            }
        }
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return problem(
                "num_key_value_heads",
                &self.num_key_value_heads,
                format!("num_attention_heads {} is not a multiple of it", self.num_attention_heads),
            );
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return problem(
                "num_attention_heads",
                &self.num_attention_heads,
                format!("hidden_size {} is not a multiple of it (and head_dim is not given)", self.hidden_size),
            );
        }
        let head_dim = self.resolved_head_dim();
        if head_dim == 0 || !head_dim.is_multiple_of(2) || head_dim > MAX_HEAD_DIM {
            return problem(
                "head_dim",
                &head_dim,
                format!("must be even, positive and at most {MAX_HEAD_DIM} for RoPE"),
            );
        }
        // f32 is what RoPE and RMSNorm compute in: a value finite in f64 may not be in f32.
        let finite_f32 = |value: f64| value.is_finite() && (value as f32).is_finite();
        if !(finite_f32(self.rms_norm_eps) && (self.rms_norm_eps as f32) > 0.0 && self.rms_norm_eps <= 1.0) {
            return problem(
                "rms_norm_eps",
                &self.rms_norm_eps,
                "must be finite, positive (in f32) and at most 1".into(),
            );
        }
        if !(finite_f32(self.rope_theta) && self.rope_theta > 0.0) {
            return problem("rope_theta", &self.rope_theta, "must be finite and positive".into());
        }
        if let Some(s) = &self.rope_scaling {
            for (field, value) in [
                ("rope_scaling.factor", s.factor),
                ("rope_scaling.low_freq_factor", s.low_freq_factor),
                ("rope_scaling.high_freq_factor", s.high_freq_factor),
            ] {
                if !(finite_f32(value) && value > 0.0) {
                    return problem(field, &value, "must be finite and positive".into());
                }
            }
            if s.high_freq_factor <= s.low_freq_factor {
                return problem(
                    "rope_scaling.high_freq_factor",
                    &s.high_freq_factor,
                    format!("must be above low_freq_factor {}", s.low_freq_factor),
                );
            }
            let context = s.original_max_position_embeddings;
            if !(1..=MAX_POSITION_EMBEDDINGS).contains(&context) {
                return problem(
                    "rope_scaling.original_max_position_embeddings",
                    &context,
                    format!("must be between 1 and {MAX_POSITION_EMBEDDINGS} (the wavelength bands divide it)"),
                );
            }
        }
        Ok(())
    }

    /// The RoPE inverse frequencies, `[head_dim / 2]`, computed in `f32` as transformers does
    /// (`_compute_default_rope_parameters`, then `_compute_llama3_parameters` when scaled).
    pub fn rope_inverse_frequencies(&self) -> Vec<f32> {
        let head_dim = self.resolved_head_dim();
        let base = self.rope_theta as f32;
        let default = (0..head_dim).step_by(2).map(|i| 1.0 / base.powf(i as f32 / head_dim as f32));
        let Some(scaling) = &self.rope_scaling else {
            return default.collect();
        };
        let factor = scaling.factor as f32;
        let (low, high) = (scaling.low_freq_factor as f32, scaling.high_freq_factor as f32);
        let old_context = scaling.original_max_position_embeddings as f32;
        let (low_freq_wavelen, high_freq_wavelen) = (old_context / low, old_context / high);
        default
            .map(|inv_freq| {
                let wavelen = 2.0 * std::f32::consts::PI / inv_freq;
                if wavelen < high_freq_wavelen {
                    inv_freq
                } else if wavelen > low_freq_wavelen {
                    inv_freq / factor
                } else {
                    let smooth = (old_context / wavelen - low) / (high - low);
                    (1.0 - smooth) * inv_freq / factor + smooth * inv_freq
                }
            })
            .collect()
    }

    /// A model with random weights (N(0, 0.02) like transformers, norms at 1), lazily initialised: a
    /// parameter is only drawn when first used, so loading a checkpoint over it costs no sampling.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<Llama<B>, LlamaError> {
        self.validate()?;
        let normal = Initializer::Normal { mean: 0.0, std: INITIALIZER_STD };
        let linear = |d_input: usize, d_output: usize, bias: bool| {
            LinearConfig::new(d_input, d_output).with_bias(bias).with_initializer(normal.clone()).init(device)
        };
        let projection = |d_input, d_output, bias| LoraLinear::new(linear(d_input, d_output, bias));
        let rms_norm = || RmsNorm::new(self.hidden_size, self.rms_norm_eps, device);
        let head_dim = self.resolved_head_dim();
        let (hidden, heads, kv_heads) = (self.hidden_size, self.num_attention_heads, self.num_key_value_heads);
        let layers = (0..self.num_hidden_layers)
            .map(|_| LlamaDecoderLayer {
                input_layernorm: rms_norm(),
                self_attn: LlamaAttention {
                    q_proj: projection(hidden, heads * head_dim, self.attention_bias),
                    k_proj: projection(hidden, kv_heads * head_dim, self.attention_bias),
                    v_proj: projection(hidden, kv_heads * head_dim, self.attention_bias),
                    o_proj: projection(heads * head_dim, hidden, self.attention_bias),
                    num_heads: heads,
                    num_key_value_heads: kv_heads,
                    head_dim,
                },
                post_attention_layernorm: rms_norm(),
                mlp: LlamaMlp {
                    gate_proj: projection(hidden, self.intermediate_size, self.mlp_bias),
                    up_proj: projection(hidden, self.intermediate_size, self.mlp_bias),
                    down_proj: projection(self.intermediate_size, hidden, self.mlp_bias),
                },
            })
            .collect();
        let inverse_frequencies = self.rope_inverse_frequencies();
        let inv_freq_len = inverse_frequencies.len();
        Ok(Llama {
            model: LlamaModel {
                embed_tokens: EmbeddingConfig::new(self.vocab_size, hidden)
                    .with_initializer(normal.clone())
                    .init(device)
                    .into(),
                layers,
                norm: rms_norm(),
                rotary_emb: RotaryEmbedding {
                    inv_freq: Tensor::from_data(TensorData::new(inverse_frequencies, [inv_freq_len]), device),
                },
            },
            lm_head: (!self.tie_word_embeddings).then(|| linear(hidden, self.vocab_size, false).into()),
        })
    }
}

impl LlamaConfig {
    /// A QLoRA-ready model with seeded random weights, built straight into 4 bits layer by layer: the
    /// seven projections of every layer are drawn directly as NF4 [`QuantizedMatrix`]es
    /// ([`QuantizedMatrix::random_nf4`]: random codes, block scales giving the initializer's standard
    /// deviation 0.02), so no f32 copy of a projection ever exists; an 8B model's 7 billion projection
    /// weights become 3.9 GB of codes and scales in seconds instead of 28 GB of f32. This measures
    /// speed and memory at a model's real shape where its weights are not available (no such model
    /// knows anything: its accuracy is chance).
    ///
    /// Norms (at 1) and the rotary frequencies are built as [`init`](Self::init) builds them. Every
    /// random value is drawn from `seed` ([`RandomStream`], one stream per tensor, in parallel), so the
    /// model is the same for a seed on any number of threads and burn's random generator is left
    /// alone. Biases, where the config asks for them, start at zero as in transformers.
    ///
    /// **Embeddings and head.** With an untied head, the `[vocab, hidden]` token embedding table
    /// ([`QuantizedEmbedding`]) and `lm_head` ([`QuantizedLinear`]) are NF4 as well. Llama 3's are 525
    /// million values each, 2.1 GB each in f32. Measured on Llama-3-8B (2 vCPUs, one 128-token IMDB
    /// prompt, LoRA r 16 on q/v): with both in f32 the weights alone would be 8.1 GB; with the table in
    /// NF4 and the head in f32 they were 6.3 GB and a LoRA step peaked at 7.9 GB of RSS; with both in
    /// NF4 they are 4.5 GB and the step peaks at 6.1 GB. The table costs no time in NF4, since a lookup
    /// decodes only the input's rows. The head is a product with the whole matrix, decoded for each
    /// forward pass (and again in the backward pass) in bands of at most 256 MB of f32 (see
    /// [`QuantizedLinear::forward`]): about 2.5 s of CPU per pass and as much again in the backward
    /// pass, against 75 s of CPU for the forward pass of the layers over 128 tokens and 150 s for a
    /// training step. The trade-off is precision: bitsandbytes' QLoRA keeps both in bf16, llama.cpp's
    /// 4-bit files keep the head at 6 bits or more; with random weights nothing measured changes but
    /// memory and that decoding time. A tied table is also the head, so it stays dense f32.
    ///
    /// Errors: an invalid config, or an `in_features` (hidden size, heads x head width, intermediate
    /// size) that is not a multiple of NF4's block of 64 ([`LlamaError::QuantBlockSize`]).
    pub fn init_quantized_random<B: Backend>(&self, device: &B::Device, seed: u64) -> Result<Llama<B>, LlamaError> {
        // The dense structure, lazily: none of its random parameters is drawn, and the ones replaced
        // below never are.
        let Llama { model, lm_head } = self.init::<B>(device)?;
        let std = INITIALIZER_STD as f32;
        let (vocab, hidden) = (self.vocab_size, self.hidden_size);
        let layers = model
            .layers
            .into_iter()
            .enumerate()
            .map(|(index, layer)| {
                layer.try_map_projections(|name, projection| {
                    let [d_input, d_output] = projection.dims();
                    let stream = RandomStream::new(seed, projection_stream(index, name));
                    let matrix = QuantizedMatrix::random_nf4(d_output, d_input, std, &stream)?;
                    let bias = projection
                        .base_layer
                        .bias()
                        .map(|_| Param::from_tensor(Tensor::zeros([d_output], device)).set_require_grad(false));
                    Ok::<_, LlamaError>(LoraLinear::new(QuantizedLinear::new(matrix, bias)?))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let embeddings = RandomStream::new(seed, EMBEDDING_STREAM);
        let (embed_tokens, lm_head) = match lm_head {
            Some(_) => {
                let table = QuantizedMatrix::random_nf4(vocab, hidden, std, &embeddings)?;
                let head = QuantizedMatrix::random_nf4(vocab, hidden, std, &RandomStream::new(seed, LM_HEAD_STREAM))?;
                (QuantizedEmbedding::new(table).into(), Some(QuantizedLinear::new(head, None)?.into()))
            }
            None => {
                let values = embeddings.normal(vocab * hidden, std);
                let weight = Param::from_data(TensorData::new(values, [vocab, hidden]), device);
                (burn::nn::Embedding { weight }.into(), None)
            }
        };
        Ok(Llama { model: LlamaModel { embed_tokens, layers, ..model }, lm_head })
    }
}

/// The [`RandomStream`] of the token embeddings in [`LlamaConfig::init_quantized_random`].
const EMBEDDING_STREAM: u64 = 0;
/// The [`RandomStream`] of `lm_head`.
const LM_HEAD_STREAM: u64 = 1;

/// The [`RandomStream`] of projection `name` (`self_attn.q_proj`, ...) of layer `index`: one per matrix.
fn projection_stream(index: usize, name: &str) -> u64 {
    let module = name.rsplit('.').next().unwrap_or(name);
    let position = LLAMA_TARGET_MODULES.iter().position(|m| *m == module).unwrap_or(LLAMA_TARGET_MODULES.len());
    2 + (index * (LLAMA_TARGET_MODULES.len() + 1) + position) as u64
}

/// `LlamaForCausalLM`: the decoder stack and the language-model head.
#[derive(Module, Debug)]
pub struct Llama<B: Backend> {
    /// The decoder stack (`model.*` in checkpoints).
    pub model: LlamaModel<B>,
    /// The output projection (checkpoint key `lm_head.weight`): dense, or quantised in a random QLoRA
    /// build ([`LlamaConfig::init_quantized_random`]); `None` when tied to `model.embed_tokens`.
    pub lm_head: Option<BaseLinear<B>>,
}

/// `LlamaModel`: embeddings, decoder layers and the final norm.
#[derive(Module, Debug)]
pub struct LlamaModel<B: Backend> {
    /// Token embeddings `[vocab, hidden]`: dense, or quantised in a random QLoRA build
    /// ([`LlamaConfig::init_quantized_random`]).
    pub embed_tokens: TokenEmbedding<B>,
    /// The decoder layers.
    pub layers: Vec<LlamaDecoderLayer<B>>,
    /// The norm after the last layer.
    pub norm: RmsNorm<B>,
    /// Rotary position embedding frequencies (not a checkpoint tensor).
    pub rotary_emb: RotaryEmbedding<B>,
}

/// One pre-norm decoder layer: `x + attn(norm(x))`, then `x + mlp(norm(x))`.
#[derive(Module, Debug)]
pub struct LlamaDecoderLayer<B: Backend> {
    /// The norm before attention.
    pub input_layernorm: RmsNorm<B>,
    /// Grouped-query self-attention.
    pub self_attn: LlamaAttention<B>,
    /// The norm before the MLP.
    pub post_attention_layernorm: RmsNorm<B>,
    /// The SwiGLU MLP.
    pub mlp: LlamaMlp<B>,
}

/// Grouped-query self-attention with rotary position embeddings.
#[derive(Module, Debug)]
pub struct LlamaAttention<B: Backend> {
    /// `[hidden] -> [num_heads * head_dim]`.
    pub q_proj: LoraLinear<B>,
    /// `[hidden] -> [num_key_value_heads * head_dim]`.
    pub k_proj: LoraLinear<B>,
    /// `[hidden] -> [num_key_value_heads * head_dim]`.
    pub v_proj: LoraLinear<B>,
    /// `[num_heads * head_dim] -> [hidden]`.
    pub o_proj: LoraLinear<B>,
    /// Number of query heads.
    pub num_heads: usize,
    /// Number of key/value heads (each shared by `num_heads / num_key_value_heads` query heads).
    pub num_key_value_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
}

/// The SwiGLU MLP: `down(silu(gate(x)) * up(x))`.
#[derive(Module, Debug)]
pub struct LlamaMlp<B: Backend> {
    /// `[hidden] -> [intermediate]`, through SiLU.
    pub gate_proj: LoraLinear<B>,
    /// `[hidden] -> [intermediate]`.
    pub up_proj: LoraLinear<B>,
    /// `[intermediate] -> [hidden]`.
    pub down_proj: LoraLinear<B>,
}

/// Root-mean-square layer norm with a learned scale (no bias, no mean subtraction).
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    /// The scale, `[hidden]`.
    pub weight: Param<Tensor<B, 1>>,
    /// Added to the mean square before the square root.
    pub eps: f64,
}

/// The RoPE inverse frequencies; the angles are computed per forward pass for the positions used.
#[derive(Module, Debug)]
pub struct RotaryEmbedding<B: Backend> {
    /// `[head_dim / 2]`, see [`LlamaConfig::rope_inverse_frequencies`].
    pub inv_freq: Tensor<B, 1>,
}

/// The cosines and sines of the rotary angles of positions `0..seq_len`, `[seq_len, head_dim]`.
#[derive(Clone, Debug)]
pub struct RopeTables<B: Backend> {
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
}

impl<B: Backend> Llama<B> {
    /// Next-token logits `[batch, seq_len, vocab]` for right-padded `input_ids` (`[batch, seq_len]`);
    /// `attention_mask` is 1 on real tokens and 0 on padding (`None`: no padding).
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>, attention_mask: Option<Tensor<B, 2, Int>>) -> Tensor<B, 3> {
        self.logits(self.model.forward(input_ids, attention_mask))
    }

    /// The language-model head: logits from final hidden states `[..., hidden]`.
    pub fn logits<const D: usize>(&self, hidden: Tensor<B, D>) -> Tensor<B, D> {
        match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => self.tied_logits(hidden),
        }
    }

    /// Tied head: the embedding matrix `E` (`[vocab, hidden]`) doubles as the output projection,
    /// `logits = h Eᵀ`. CPU backends copy a transposed operand before multiplying, so for a few rows
    /// (scoring, generation) `(E hᵀ)ᵀ` is computed instead, transposing the small matrices rather than `E`;
    /// under autocast `h Eᵀ` is the linear layer's product, which on the CPU default packs `E` in bf16
    /// once instead of casting it on every call.
    fn tied_logits<const D: usize>(&self, hidden: Tensor<B, D>) -> Tensor<B, D> {
        let embeddings = self.model.embed_tokens.weight(&hidden.device());
        let [vocab, width] = embeddings.dims();
        let mut dims = hidden.dims();
        let rows = dims[..D - 1].iter().product::<usize>();
        if rows >= width || compute_dtype().is_some() {
            return linear_with(hidden, embeddings.transpose(), None);
        }
        dims[D - 1] = vocab;
        let flat = hidden.reshape([rows, width]);
        matmul(embeddings, flat.transpose()).transpose().reshape(dims)
    }

    /// The next-token logits after the last real token of each row, `[batch, vocab]`: one forward
    /// pass, and the head only runs on the rows' last positions. Every row needs at least one real
    /// token (an all-padding row reads position 0).
    ///
    /// For inference on the CPU default a right-padded batch runs on its real tokens alone
    /// ([`PackedSequences`]): the same logits without the padding's work.
    pub fn last_token_logits(&self, input_ids: Tensor<B, 2, Int>, attention_mask: Tensor<B, 2, Int>) -> Tensor<B, 2> {
        let [batch, _] = input_ids.dims();
        let embeddings = self.model.embed_tokens.forward(input_ids);
        if let Some(packed) = PackedSequences::for_inference(&attention_mask, &embeddings) {
            let rope = self.model.rotary_emb.tables_at(packed.positions());
            let hidden = self.model.decode(packed.pack(embeddings), &rope, &packed.causal_attention_mask());
            let [_, total, width] = hidden.dims();
            return self.logits(hidden.reshape([total, width]).select(0, packed.last_tokens()));
        }
        let hidden = self.model.forward_embeddings(embeddings, Some(attention_mask.clone()));
        let [_, _, width] = hidden.dims();
        let last_position = (attention_mask.sum_dim(1) - 1).clamp_min(0); // [batch, 1]
        let index = last_position.reshape([batch, 1, 1]).expand([batch, 1, width]);
        self.logits(hidden.gather(1, index).reshape([batch, width]))
    }

    /// The number of decoder layers.
    pub fn num_layers(&self) -> usize {
        self.model.layers.len()
    }

    /// The vocabulary size (rows of the embedding matrix).
    pub fn vocab_size(&self) -> usize {
        self.model.embed_tokens.dims()[0]
    }
}

impl<B: Backend> LlamaModel<B> {
    /// The final hidden states `[batch, seq_len, hidden]` (after `norm`).
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>, attention_mask: Option<Tensor<B, 2, Int>>) -> Tensor<B, 3> {
        self.forward_embeddings(self.embed_tokens.forward(input_ids), attention_mask)
    }

    /// [`forward`](Self::forward) from the token embeddings `[batch, seq_len, hidden]`.
    fn forward_embeddings(&self, embeddings: Tensor<B, 3>, attention_mask: Option<Tensor<B, 2, Int>>) -> Tensor<B, 3> {
        let [_, seq_len, _] = embeddings.dims();
        let rope = self.rotary_emb.tables(seq_len, &embeddings.device());
        self.decode(embeddings, &rope, &AttentionMask::causal(attention_mask))
    }

    /// The decoder layers and the final norm on embeddings `[batch, seq_len, hidden]`.
    fn decode(&self, embeddings: Tensor<B, 3>, rope: &RopeTables<B>, mask: &AttentionMask<B>) -> Tensor<B, 3> {
        let hidden = self.layers.iter().fold(embeddings, |hidden, layer| layer.forward(hidden, rope, mask));
        self.norm.forward(hidden)
    }
}

impl<B: Backend> LlamaDecoderLayer<B> {
    /// `[batch, seq_len, hidden] -> [batch, seq_len, hidden]`.
    pub fn forward(&self, hidden: Tensor<B, 3>, rope: &RopeTables<B>, mask: &AttentionMask<B>) -> Tensor<B, 3> {
        let hidden = hidden.clone() + self.self_attn.forward(self.input_layernorm.forward(hidden), rope, mask);
        hidden.clone() + self.mlp.forward(self.post_attention_layernorm.forward(hidden))
    }

    /// The seven projections with their checkpoint names relative to the layer (`self_attn.q_proj`, ...),
    /// in transformers' order.
    pub fn projections(&self) -> [(&'static str, &LoraLinear<B>); 7] {
        [
            ("self_attn.q_proj", &self.self_attn.q_proj),
            ("self_attn.k_proj", &self.self_attn.k_proj),
            ("self_attn.v_proj", &self.self_attn.v_proj),
            ("self_attn.o_proj", &self.self_attn.o_proj),
            ("mlp.gate_proj", &self.mlp.gate_proj),
            ("mlp.up_proj", &self.mlp.up_proj),
            ("mlp.down_proj", &self.mlp.down_proj),
        ]
    }

    /// Rebuilds the layer with `f(name, projection)` applied to each of the seven projections (names as
    /// in [`projections`](Self::projections)); the first error stops the rebuild.
    pub fn try_map_projections<E>(
        self,
        mut f: impl FnMut(&'static str, LoraLinear<B>) -> Result<LoraLinear<B>, E>,
    ) -> Result<Self, E> {
        let LlamaDecoderLayer { input_layernorm, self_attn, post_attention_layernorm, mlp } = self;
        Ok(LlamaDecoderLayer {
            input_layernorm,
            self_attn: LlamaAttention {
                q_proj: f("self_attn.q_proj", self_attn.q_proj)?,
                k_proj: f("self_attn.k_proj", self_attn.k_proj)?,
                v_proj: f("self_attn.v_proj", self_attn.v_proj)?,
                o_proj: f("self_attn.o_proj", self_attn.o_proj)?,
                ..self_attn
            },
            post_attention_layernorm,
            mlp: LlamaMlp {
                gate_proj: f("mlp.gate_proj", mlp.gate_proj)?,
                up_proj: f("mlp.up_proj", mlp.up_proj)?,
                down_proj: f("mlp.down_proj", mlp.down_proj)?,
            },
        })
    }
}

impl<B: Backend> LlamaAttention<B> {
    /// `[batch, seq_len, hidden] -> [batch, seq_len, hidden]`.
    ///
    /// The projections stay in their `[batch, seq, heads * head_dim]` layout: RoPE rotates each head
    /// in place and [`attention`] (a fused kernel on the CPU default, the composed graph elsewhere and
    /// under autodiff) reads the heads from it, sharing each key/value head among its query group.
    pub fn forward(&self, hidden: Tensor<B, 3>, rope: &RopeTables<B>, mask: &AttentionMask<B>) -> Tensor<B, 3> {
        let query = rope.apply(self.q_proj.forward(hidden.clone()), self.head_dim);
        let key = rope.apply(self.k_proj.forward(hidden.clone()), self.head_dim);
        let value = self.v_proj.forward(hidden);
        let heads =
            AttentionHeads { heads: self.num_heads, kv_heads: self.num_key_value_heads, head_dim: self.head_dim };
        self.o_proj.forward(attention(query, key, value, heads, mask, None))
    }
}

impl<B: Backend> LlamaMlp<B> {
    /// `[..., hidden] -> [..., hidden]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        self.down_proj.forward(polarity_kernels::silu_mul(self.gate_proj.forward(x.clone()), self.up_proj.forward(x)))
    }
}

impl<B: Backend> RmsNorm<B> {
    /// A norm of width `size` with unit scale.
    pub fn new(size: usize, eps: f64, device: &B::Device) -> Self {
        Self { weight: Initializer::Ones.init([size], device), eps }
    }

    /// `x / sqrt(mean(x²) + eps) * weight` over the last dimension.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        polarity_kernels::rms_norm(x, self.weight.val(), self.eps)
    }
}

impl<B: Backend> RotaryEmbedding<B> {
    /// The rotation tables of positions `0..seq_len`.
    pub fn tables(&self, seq_len: usize, device: &B::Device) -> RopeTables<B> {
        self.tables_at(Tensor::arange(0..seq_len as i64, device))
    }

    /// The rotation tables of the given positions, one row each (packed sequences restart at 0).
    pub fn tables_at(&self, positions: Tensor<B, 1, Int>) -> RopeTables<B> {
        let ([half], [count]) = (self.inv_freq.dims(), positions.dims());
        // [count, head_dim / 2]
        let angles = positions.float().reshape([count, 1]) * self.inv_freq.clone().reshape([1, half]);
        // transformers' layout: the two halves of a head share frequencies (rotate_half convention).
        let angles = Tensor::cat(vec![angles.clone(), angles], 1);
        RopeTables { cos: angles.clone().cos(), sin: angles.sin() }
    }
}

impl<B: Backend> RopeTables<B> {
    /// Rotates the heads of `[batch, seq_len, heads * head_dim]`: `x * cos + rotate_half(x) * sin`.
    pub fn apply(&self, x: Tensor<B, 3>, head_dim: usize) -> Tensor<B, 3> {
        polarity_kernels::rotary(x, self.cos.clone(), self.sin.clone(), head_dim)
    }
}

impl<B: Backend> Llama<B> {
    /// Freezes every parameter of the model and attaches fresh adapters to the projections that
    /// `config` targets (PEFT's default, [`LLAMA_DEFAULT_TARGET_MODULES`], when it names none), in every
    /// layer. Only the adapters are trainable afterwards. Works the same on a quantised base (QLoRA:
    /// [`Llama::quantize_frozen_base`], [`Llama::from_gguf_quantized`]); the adapters are created on the
    /// device of the final norm (the model's device: quantised tables live on the host).
    pub fn with_lora(self, config: &LoraConfig) -> Result<Self, LlamaError> {
        let config = config.clone().with_default_targets(&LLAMA_DEFAULT_TARGET_MODULES);
        config.validate(&LLAMA_TARGET_MODULES)?;
        if !self.lora_adapters().is_empty() {
            return Err(LlamaError::InvalidConfig("the model already has LoRA adapters (merge them first)".into()));
        }
        let device = self.model.norm.weight.lazy_device();
        let Llama { model, lm_head } = self.no_grad();
        let layers = model
            .layers
            .into_iter()
            .map(|layer| {
                layer.try_map_projections(|name, projection| {
                    Ok::<_, LlamaError>(if config.targets(name) {
                        projection.with_new_adapter(&config, &device)
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

    /// QLoRA's base: every dense projection (`q/k/v/o_proj`, `gate/up/down_proj`) of every layer
    /// quantised to NF4 and frozen; embeddings, norms and `lm_head` stay f32 (bitsandbytes QLoRA
    /// quantises only the linear layers of the decoder). Projections already quantised are kept,
    /// adapters too. Attach adapters afterwards with [`Llama::with_lora`]; only they train.
    ///
    /// Errors: [`LlamaError::QuantBlockSize`] when a projection's `in_features` is not a multiple of 64.
    pub fn quantize_frozen_base(self) -> Result<Self, LlamaError> {
        let Llama { model, lm_head } = self;
        let layers = model
            .layers
            .into_iter()
            .map(|layer| {
                layer.try_map_projections(|_, mut projection| {
                    projection.base_layer = match projection.base_layer {
                        BaseLinear::Dense(layer) => BaseLinear::Quantized(QuantizedLinear::quantize_nf4(layer)?),
                        quantized => quantized,
                    };
                    Ok::<_, LlamaError>(projection)
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Llama { model: LlamaModel { layers, ..model }, lm_head })
    }

    /// The memory held by the weights: dense parameters, quantised matrices, and what those would take
    /// as f32. Lazily initialised parameters are counted at their shape, without being drawn.
    pub fn weight_memory(&self) -> WeightMemory {
        let mut memory = WeightMemory::of_dense_params(self);
        if let TokenEmbedding::Quantized(embedding) = &self.model.embed_tokens {
            memory.add_quantized(&embedding.matrix);
        }
        if let Some(BaseLinear::Quantized(head)) = &self.lm_head {
            memory.add_quantized(&head.matrix);
        }
        for layer in &self.model.layers {
            for (_, projection) in layer.projections() {
                if let BaseLinear::Quantized(quantized) = &projection.base_layer {
                    memory.add_quantized(&quantized.matrix);
                }
            }
        }
        memory
    }

    /// Whether any projection's frozen base is quantised.
    pub fn has_quantized_base(&self) -> bool {
        self.model
            .layers
            .iter()
            .any(|layer| layer.projections().iter().any(|(_, p)| matches!(p.base_layer, BaseLinear::Quantized(_))))
    }

    /// Greedy decoding of up to `max_new_tokens` tokens after each prompt, batched (one forward pass per
    /// step for all unfinished rows). A row stops after `stop_token`. Returns the new tokens of each row.
    ///
    /// There is no key/value cache: each step recomputes the whole prefix, which is fine for the few
    /// tokens of an answer but quadratic for long generations. Empty prompts generate nothing.
    pub fn generate_greedy(
        &self,
        prompts: &[Vec<u32>],
        max_new_tokens: usize,
        stop_token: Option<u32>,
        device: &B::Device,
    ) -> Vec<Vec<u32>> {
        let mut rows: Vec<Vec<u32>> = prompts.to_vec();
        let mut generated = vec![Vec::new(); prompts.len()];
        let mut active: Vec<usize> = (0..rows.len()).filter(|&i| !rows[i].is_empty()).collect();
        // Right padding with id 0, as label-word scoring pads prompts.
        let batcher = PaddingBatcher::new(0);
        for _ in 0..max_new_tokens {
            if active.is_empty() {
                break;
            }
            let batch_rows: Vec<&[u32]> = active.iter().map(|&i| rows[i].as_slice()).collect();
            let batch = batcher.pad_ids::<B, _>(&batch_rows, device);
            let next = self.last_token_logits(batch.input_ids, batch.attention_mask).argmax(1);
            let next: Vec<i64> = next.into_data().convert::<i64>().into_vec().unwrap_or_default();
            let mut still_active = Vec::with_capacity(active.len());
            for (&row, &token) in active.iter().zip(&next) {
                let token = u32::try_from(token).unwrap_or(0);
                rows[row].push(token);
                generated[row].push(token);
                if Some(token) != stop_token {
                    still_active.push(row);
                }
            }
            active = still_active;
        }
        generated
    }
}

impl<B: AutodiffBackend> Llama<B> {
    /// The same model on the inner backend (no autodiff, dropout off), for evaluation.
    pub fn inference(&self) -> Llama<B::InnerBackend> {
        self.valid()
    }

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

/// The mean next-token cross-entropy of a causal LM, as transformers computes it: the label at
/// position `t` is predicted from the logits at `t - 1`, and labels equal to [`IGNORE_INDEX`] (-100)
/// are left out of the mean. `logits` is `[batch, seq_len, vocab]`, `labels` `[batch, seq_len]`;
/// the result has one element (NaN when no label counts, like PyTorch).
pub fn causal_lm_loss<B: Backend>(logits: Tensor<B, 3>, labels: Tensor<B, 2, Int>) -> Tensor<B, 1> {
    let [batch, seq_len, vocab] = logits.dims();
    let predicted = seq_len.saturating_sub(1);
    let count = batch * predicted;
    let logits = logits.narrow(1, 0, predicted).reshape([count, vocab]);
    let targets = labels.narrow(1, 1, predicted).reshape([count]);
    let counted = targets.clone().not_equal_elem(IGNORE_INDEX);
    // Ignored labels gather class 0 and are then zeroed, so the gather index is always in range.
    let safe_targets = targets.mask_fill(counted.clone().bool_not(), 0).reshape([count, 1]);
    let nll = log_softmax(logits, 1).gather(1, safe_targets).reshape([count]).neg();
    let weights = counted.float();
    (nll * weights.clone()).sum() / weights.sum()
}
