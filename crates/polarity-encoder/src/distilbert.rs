//! DistilBERT (Sanh et al., 2019) as transformers' `modeling_distilbert.py` computes it.
//!
//! Module and field names follow transformers' parameter names (`embeddings.word_embeddings`,
//! `transformer.layer.N.attention.q_lin`, `sa_layer_norm`, `ffn.lin1`, ...); only the embeddings'
//! `LayerNorm` is spelled `layer_norm`. [`DistilBertForSequenceClassification`] adds transformers'
//! head on the `[CLS]` hidden state: pre_classifier -> ReLU -> dropout -> classifier.

use burn::module::Param;
use burn::nn::{Dropout, DropoutConfig, Embedding, Linear};
use burn::prelude::*;

use polarity_core::{ClassScorer, TokenBatch};
use polarity_kernels::{AttentionHeads, AttentionMask, LayerNorm, attention, linear, linear_residual};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::common::{Activation, add_positions, first_token, init_embedding, init_linear, parameter_count, run_layers};
use crate::hf_config::{HfConfig, HfConfigJson, limits};
use crate::pretrained::{HfModel, ParameterNaming};
use crate::{EncoderError, EncoderOutput, validate_batch};

/// transformers hard-codes this epsilon for every DistilBERT layer norm (it is not in the config).
const LAYER_NORM_EPS: f64 = 1e-12;

/// The hyper-parameters of a DistilBERT checkpoint, named as in transformers' `DistilBertConfig`.
#[derive(Config, Debug)]
pub struct DistilBertConfig {
    /// Size of the WordPiece vocabulary.
    pub vocab_size: usize,
    /// Width of every hidden state.
    pub dim: usize,
    /// Number of transformer layers.
    pub n_layers: usize,
    /// Attention heads per layer (`dim` must be a multiple).
    pub n_heads: usize,
    /// Width of the feed-forward layer.
    pub hidden_dim: usize,
    /// The longest sequence the position embeddings cover.
    pub max_position_embeddings: usize,
    /// The feed-forward activation (`activation`).
    #[config(default = "Activation::Gelu")]
    pub activation: Activation,
    /// Dropout on embeddings and feed-forward outputs (training only).
    #[config(default = 0.1)]
    pub dropout: f64,
    /// Dropout on attention probabilities (training only).
    #[config(default = 0.1)]
    pub attention_dropout: f64,
    /// Dropout between pre_classifier and classifier (training only).
    #[config(default = 0.2)]
    pub seq_classif_dropout: f64,
    /// Standard deviation of freshly initialised weights.
    #[config(default = 0.02)]
    pub initializer_range: f64,
    /// Whether the position embeddings are the fixed sinusoids (when freshly initialised).
    #[config(default = false)]
    pub sinusoidal_pos_embds: bool,
    /// The padding token id (its embedding row is zero when freshly initialised).
    #[config(default = 0)]
    pub pad_token_id: usize,
    /// Number of classes of the sequence-classification head.
    #[config(default = 2)]
    pub num_labels: usize,
}

impl DistilBertConfig {
    /// The same architecture with every dropout probability set to zero, so an autodiff backend
    /// computes transformers' eval-mode outputs (reference gradients are computed that way).
    pub fn without_dropout(&self) -> Self {
        self.clone().with_dropout(0.0).with_attention_dropout(0.0).with_seq_classif_dropout(0.0)
    }

    /// A bare encoder with this config, freshly initialised.
    pub fn init<B: Backend>(&self, device: &B::Device) -> DistilBertModel<B> {
        let std = self.initializer_range;
        let dim = self.dim;
        let layer_norm = || LayerNorm::new(dim, LAYER_NORM_EPS, device);
        let dropout = || DropoutConfig::new(self.dropout).init();
        let block = || TransformerBlock {
            attention: MultiHeadSelfAttention {
                q_lin: init_linear(dim, dim, std, device),
                k_lin: init_linear(dim, dim, std, device),
                v_lin: init_linear(dim, dim, std, device),
                out_lin: init_linear(dim, dim, std, device),
                dropout: DropoutConfig::new(self.attention_dropout).init(),
                n_heads: self.n_heads,
            },
            sa_layer_norm: layer_norm(),
            ffn: Ffn {
                lin1: init_linear(dim, self.hidden_dim, std, device),
                lin2: init_linear(self.hidden_dim, dim, std, device),
                activation: self.activation,
                dropout: dropout(),
            },
            output_layer_norm: layer_norm(),
        };
        let position_embeddings = if self.sinusoidal_pos_embds {
            Embedding { weight: Param::from_tensor(sinusoidal_table(self.max_position_embeddings, dim, device)) }
        } else {
            init_embedding(self.max_position_embeddings, dim, std, None, device)
        };
        DistilBertModel {
            embeddings: DistilBertEmbeddings {
                word_embeddings: init_embedding(self.vocab_size, dim, std, Some(self.pad_token_id), device),
                position_embeddings,
                layer_norm: layer_norm(),
                dropout: dropout(),
            },
            transformer: Transformer { layer: (0..self.n_layers).map(|_| block()).collect() },
            config: self.clone(),
        }
    }

    /// A sequence classifier with this config, freshly initialised.
    pub fn init_classifier<B: Backend>(&self, device: &B::Device) -> DistilBertForSequenceClassification<B> {
        let std = self.initializer_range;
        DistilBertForSequenceClassification {
            distilbert: self.init(device),
            pre_classifier: init_linear(self.dim, self.dim, std, device),
            classifier: init_linear(self.dim, self.num_labels, std, device),
            dropout: DropoutConfig::new(self.seq_classif_dropout).init(),
        }
    }
}

/// transformers' `create_sinusoidal_embeddings`: sin on even columns, cos on odd ones.
fn sinusoidal_table<B: Backend>(positions: usize, dim: usize, device: &B::Device) -> Tensor<B, 2> {
    let values: Vec<f32> = (0..positions)
        .flat_map(|pos| {
            (0..dim).map(move |j| {
                let angle = pos as f64 / 10_000f64.powf((2 * (j / 2)) as f64 / dim as f64);
                (if j % 2 == 0 { angle.sin() } else { angle.cos() }) as f32
            })
        })
        .collect();
    Tensor::from_data(TensorData::new(values, [positions, dim]), device)
}

/// transformers' `DistilBertConfig` as `config.json` spells it. The sizes are required (a checkpoint
/// without them is not one this crate should guess); the rest default as in transformers.
#[derive(Deserialize)]
struct HfDistilBertConfig {
    vocab_size: usize,
    dim: usize,
    n_layers: usize,
    n_heads: usize,
    hidden_dim: usize,
    max_position_embeddings: usize,
    #[serde(default = "defaults::gelu")]
    activation: String,
    #[serde(default = "defaults::dropout")]
    dropout: f64,
    #[serde(default = "defaults::dropout")]
    attention_dropout: f64,
    #[serde(default = "defaults::seq_classif_dropout")]
    seq_classif_dropout: f64,
    #[serde(default = "defaults::initializer_range")]
    initializer_range: f64,
    #[serde(default)]
    sinusoidal_pos_embds: bool,
    #[serde(default)]
    pad_token_id: usize,
}

/// transformers' `DistilBertConfig` defaults.
mod defaults {
    pub(super) fn gelu() -> String {
        "gelu".into()
    }
    pub(super) fn dropout() -> f64 {
        0.1
    }
    pub(super) fn seq_classif_dropout() -> f64 {
        0.2
    }
    pub(super) fn initializer_range() -> f64 {
        0.02
    }
}

impl HfConfig for DistilBertConfig {
    const MODEL_TYPE: &'static str = "distilbert";

    fn from_hf(config: &HfConfigJson) -> Result<Self, EncoderError> {
        config.expect_model_type(Self::MODEL_TYPE)?;
        let hf: HfDistilBertConfig = config.deserialize()?;
        let activation = Activation::from_hf_name(&hf.activation).ok_or_else(|| {
            config.invalid("activation", format!("{:?} is not a supported activation", hf.activation))
        })?;
        let vocab_size = config.check_size("vocab_size", hf.vocab_size, 1, limits::MAX_VOCAB_SIZE)?;
        let dim = config.check_size("dim", hf.dim, 1, limits::MAX_HIDDEN_SIZE)?;
        let layers = config.check_size("n_layers", hf.n_layers, 1, limits::MAX_LAYERS)?;
        config.check_heads("n_heads", hf.n_heads, "dim", dim)?;
        let hidden_dim = config.check_size("hidden_dim", hf.hidden_dim, 1, limits::MAX_INTERMEDIATE_SIZE)?;
        let positions =
            config.check_size("max_position_embeddings", hf.max_position_embeddings, 1, limits::MAX_POSITIONS)?;
        let num_labels = config.num_labels()?;
        config.check_parameter_count(
            "dim",
            parameter_count(vocab_size + positions, dim, hidden_dim, layers, num_labels),
        )?;
        if hf.pad_token_id >= vocab_size {
            return Err(
                config.invalid("pad_token_id", format!("is {}, outside vocab_size {vocab_size}", hf.pad_token_id))
            );
        }
        Ok(DistilBertConfig {
            vocab_size,
            dim,
            n_layers: layers,
            n_heads: hf.n_heads,
            hidden_dim,
            max_position_embeddings: positions,
            activation,
            dropout: config.check_probability("dropout", hf.dropout)?,
            attention_dropout: config.check_probability("attention_dropout", hf.attention_dropout)?,
            seq_classif_dropout: config.check_probability("seq_classif_dropout", hf.seq_classif_dropout)?,
            initializer_range: config.check_non_negative("initializer_range", hf.initializer_range)?,
            sinusoidal_pos_embds: hf.sinusoidal_pos_embds,
            pad_token_id: hf.pad_token_id,
            num_labels,
        })
    }

    fn to_hf(&self) -> Map<String, Value> {
        let mut map = Map::new();
        map.insert("vocab_size".into(), self.vocab_size.into());
        map.insert("dim".into(), self.dim.into());
        map.insert("n_layers".into(), self.n_layers.into());
        map.insert("n_heads".into(), self.n_heads.into());
        map.insert("hidden_dim".into(), self.hidden_dim.into());
        map.insert("max_position_embeddings".into(), self.max_position_embeddings.into());
        map.insert("activation".into(), self.activation.hf_name().into());
        map.insert("dropout".into(), self.dropout.into());
        map.insert("attention_dropout".into(), self.attention_dropout.into());
        map.insert("seq_classif_dropout".into(), self.seq_classif_dropout.into());
        map.insert("initializer_range".into(), self.initializer_range.into());
        map.insert("sinusoidal_pos_embds".into(), self.sinusoidal_pos_embds.into());
        map.insert("pad_token_id".into(), self.pad_token_id.into());
        map
    }
}

/// Word + position embeddings, then layer norm and dropout (DistilBERT has no segment embeddings).
#[derive(Module, Debug)]
pub struct DistilBertEmbeddings<B: Backend> {
    /// `[vocab_size, dim]`.
    pub word_embeddings: Embedding<B>,
    /// `[max_position_embeddings, dim]`, indexed by absolute position.
    pub position_embeddings: Embedding<B>,
    /// transformers' `LayerNorm`.
    pub layer_norm: LayerNorm<B>,
    dropout: Dropout,
}

impl<B: Backend> DistilBertEmbeddings<B> {
    /// `[batch, seq]` ids -> `[batch, seq, dim]`.
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [_, seq_len] = input_ids.dims();
        let positions = Tensor::<B, 1, Int>::arange(0..seq_len as i64, &input_ids.device()).reshape([1, seq_len]);
        let embeddings =
            add_positions(self.word_embeddings.forward(input_ids), self.position_embeddings.forward(positions));
        polarity_kernels::dropout(&self.dropout, self.layer_norm.forward(embeddings))
    }
}

/// Multi-head self-attention with its output projection.
#[derive(Module, Debug)]
pub struct MultiHeadSelfAttention<B: Backend> {
    /// Query projection.
    pub q_lin: Linear<B>,
    /// Key projection.
    pub k_lin: Linear<B>,
    /// Value projection.
    pub v_lin: Linear<B>,
    /// Output projection.
    pub out_lin: Linear<B>,
    dropout: Dropout,
    n_heads: usize,
}

impl<B: Backend> MultiHeadSelfAttention<B> {
    /// `[batch, seq, dim]` -> `out_lin(attention(hidden)) + hidden`: the sub-layer with its residual
    /// connection (added inside the output projection's product).
    pub fn forward(&self, hidden: Tensor<B, 3>, mask: &AttentionMask<B>) -> Tensor<B, 3> {
        let query = linear(&self.q_lin, hidden.clone());
        let key = linear(&self.k_lin, hidden.clone());
        let value = linear(&self.v_lin, hidden.clone());
        let [_, _, width] = query.dims();
        let heads = AttentionHeads { heads: self.n_heads, kv_heads: self.n_heads, head_dim: width / self.n_heads };
        let context = attention(query, key, value, heads, mask, Some(&self.dropout));
        linear_residual(&self.out_lin, None, context, hidden)
    }
}

/// The position-wise feed-forward network.
#[derive(Module, Debug)]
pub struct Ffn<B: Backend> {
    /// `dim -> hidden_dim`.
    pub lin1: Linear<B>,
    /// `hidden_dim -> dim`.
    pub lin2: Linear<B>,
    activation: Activation,
    dropout: Dropout,
}

impl<B: Backend> Ffn<B> {
    /// `dropout(lin2(activation(lin1(x)))) + x`: the network with its residual connection.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let activated = self.activation.after_linear(&self.lin1, x.clone());
        linear_residual(&self.lin2, Some(&self.dropout), activated, x)
    }
}

/// One post-norm transformer layer.
#[derive(Module, Debug)]
pub struct TransformerBlock<B: Backend> {
    /// Self-attention.
    pub attention: MultiHeadSelfAttention<B>,
    /// Norm after the attention residual.
    pub sa_layer_norm: LayerNorm<B>,
    /// Feed-forward network.
    pub ffn: Ffn<B>,
    /// Norm after the feed-forward residual.
    pub output_layer_norm: LayerNorm<B>,
}

impl<B: Backend> TransformerBlock<B> {
    /// `[batch, seq, dim]` -> `[batch, seq, dim]`.
    pub fn forward(&self, hidden: Tensor<B, 3>, mask: &AttentionMask<B>) -> Tensor<B, 3> {
        let attended = self.sa_layer_norm.forward(self.attention.forward(hidden, mask));
        self.output_layer_norm.forward(self.ffn.forward(attended))
    }
}

/// The stack of layers (`transformer.layer.N`).
#[derive(Module, Debug)]
pub struct Transformer<B: Backend> {
    /// The layers, in order.
    pub layer: Vec<TransformerBlock<B>>,
}

/// The bare DistilBERT encoder (transformers' `DistilBertModel`; it has no pooler).
#[derive(Module, Debug)]
pub struct DistilBertModel<B: Backend> {
    /// Token and position embeddings.
    pub embeddings: DistilBertEmbeddings<B>,
    /// The transformer layers.
    pub transformer: Transformer<B>,
    config: DistilBertConfig,
}

impl<B: Backend> DistilBertModel<B> {
    /// Runs the encoder (`token_type_ids` are ignored: DistilBERT has no segments). Padded
    /// positions are masked out as keys; their own hidden states carry no meaning (zeros where
    /// inference on the CPU default skips right padding).
    ///
    /// # Panics
    ///
    /// When the sequence is longer than `max_position_embeddings` or an id is outside its
    /// vocabulary; [`validate`](Self::validate) checks the length up front.
    pub fn forward(&self, batch: TokenBatch<B>) -> EncoderOutput<B> {
        EncoderOutput { last_hidden_state: self.encode(batch), pooler_output: None }
    }

    /// The last hidden state `[batch, seq, dim]`.
    pub fn encode(&self, batch: TokenBatch<B>) -> Tensor<B, 3> {
        let embeddings = self.embeddings.forward(batch.input_ids);
        run_layers(embeddings, batch.attention_mask, |hidden, mask| {
            self.transformer.layer.iter().fold(hidden, |hidden, layer| layer.forward(hidden, mask))
        })
    }

    /// Checks that the batch's tensors agree in shape and fit `max_position_embeddings`.
    pub fn validate(&self, batch: &TokenBatch<B>) -> Result<(), EncoderError> {
        validate_batch(batch, self.config.max_position_embeddings)
    }
}

impl<B: Backend> HfModel<B> for DistilBertModel<B> {
    type Config = DistilBertConfig;
    const ARCHITECTURE: &'static str = "DistilBertModel";

    fn naming() -> ParameterNaming {
        ParameterNaming { nested: false, optional_modules: &[], ..NAMING }
    }

    fn from_config(config: &DistilBertConfig, device: &B::Device) -> Self {
        config.init(device)
    }

    fn config(&self) -> &DistilBertConfig {
        &self.config
    }
}

/// DistilBERT with transformers' sequence-classification head on the `[CLS]` hidden state:
/// pre_classifier -> ReLU -> dropout -> classifier.
#[derive(Module, Debug)]
pub struct DistilBertForSequenceClassification<B: Backend> {
    /// The encoder.
    pub distilbert: DistilBertModel<B>,
    /// `dim -> dim`.
    pub pre_classifier: Linear<B>,
    /// `dim -> num_labels`.
    pub classifier: Linear<B>,
    dropout: Dropout,
}

impl<B: Backend> DistilBertForSequenceClassification<B> {
    /// `[batch, num_labels]` logits.
    pub fn forward(&self, batch: TokenBatch<B>) -> Tensor<B, 2> {
        let cls = first_token(self.distilbert.encode(batch));
        let pooled = burn::tensor::activation::relu(linear(&self.pre_classifier, cls));
        linear(&self.classifier, polarity_kernels::dropout(&self.dropout, pooled))
    }

    /// See [`DistilBertModel::validate`].
    pub fn validate(&self, batch: &TokenBatch<B>) -> Result<(), EncoderError> {
        self.distilbert.validate(batch)
    }
}

impl<B: Backend> HfModel<B> for DistilBertForSequenceClassification<B> {
    type Config = DistilBertConfig;
    const ARCHITECTURE: &'static str = "DistilBertForSequenceClassification";

    fn naming() -> ParameterNaming {
        NAMING
    }

    fn from_config(config: &DistilBertConfig, device: &B::Device) -> Self {
        config.init_classifier(device)
    }

    fn config(&self) -> &DistilBertConfig {
        &self.distilbert.config
    }

    fn num_labels(&self) -> Option<usize> {
        Some(self.distilbert.config.num_labels)
    }
}

impl<B: Backend> ClassScorer<B> for DistilBertForSequenceClassification<B> {
    fn class_scores(&self, batch: TokenBatch<B>) -> Tensor<B, 2> {
        self.forward(batch)
    }
}

/// transformers' names for `DistilBertForSequenceClassification`; `DistilBertModel` is the same, un-nested.
const NAMING: ParameterNaming = ParameterNaming {
    renamed_segments: &[("layer_norm", "LayerNorm")],
    backbone_prefix: "distilbert",
    backbone_modules: &["embeddings", "transformer"],
    nested: true,
    optional_modules: &["pre_classifier", "classifier"],
};
