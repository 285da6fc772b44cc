//! BERT (Devlin et al., 2019) as transformers' `modeling_bert.py` computes it.
//!
//! Module and field names follow transformers' parameter names (`embeddings.word_embeddings`,
//! `encoder.layer.N.attention.self.query`, ...), with two spellings Rust needs: `self` is
//! `self_attention` and `LayerNorm` is `layer_norm`. [`BertModel`] is the bare encoder (what
//! `sentence-transformers/all-MiniLM-L6-v2` ships); [`BertForSequenceClassification`] adds
//! transformers' head: pooler (dense + tanh on `[CLS]`) -> dropout -> classifier.

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

/// The hyper-parameters of a BERT checkpoint, named as in transformers' `BertConfig`.
#[derive(Config, Debug)]
pub struct BertConfig {
    /// Size of the WordPiece vocabulary.
    pub vocab_size: usize,
    /// Width of every hidden state.
    pub hidden_size: usize,
    /// Number of transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer (`hidden_size` must be a multiple).
    pub num_attention_heads: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// The longest sequence the position embeddings cover.
    pub max_position_embeddings: usize,
    /// Number of segment (token type) ids.
    #[config(default = 2)]
    pub type_vocab_size: usize,
    /// The feed-forward activation (`hidden_act`).
    #[config(default = "Activation::Gelu")]
    pub hidden_act: Activation,
    /// Epsilon of every layer norm.
    #[config(default = 1e-12)]
    pub layer_norm_eps: f64,
    /// Dropout on embeddings and sub-layer outputs (training only).
    #[config(default = 0.1)]
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities (training only).
    #[config(default = 0.1)]
    pub attention_probs_dropout_prob: f64,
    /// Dropout before the classifier; `None` uses `hidden_dropout_prob`, as transformers.
    #[config(default = "None")]
    pub classifier_dropout: Option<f64>,
    /// Standard deviation of freshly initialised weights.
    #[config(default = 0.02)]
    pub initializer_range: f64,
    /// The padding token id (its embedding row is zero when freshly initialised).
    #[config(default = 0)]
    pub pad_token_id: usize,
    /// Number of classes of the sequence-classification head.
    #[config(default = 2)]
    pub num_labels: usize,
}

impl BertConfig {
    /// The same architecture with every dropout probability set to zero, so an autodiff backend
    /// computes transformers' eval-mode outputs (reference gradients are computed that way).
    pub fn without_dropout(&self) -> Self {
        self.clone()
            .with_hidden_dropout_prob(0.0)
            .with_attention_probs_dropout_prob(0.0)
            .with_classifier_dropout(Some(0.0))
    }

    /// A bare encoder with this config, freshly initialised.
    pub fn init<B: Backend>(&self, device: &B::Device) -> BertModel<B> {
        let std = self.initializer_range;
        let hidden = self.hidden_size;
        let layer_norm = || LayerNorm::new(hidden, self.layer_norm_eps, device);
        let hidden_dropout = || DropoutConfig::new(self.hidden_dropout_prob).init();
        let layer = || BertLayer {
            attention: BertAttention {
                self_attention: BertSelfAttention {
                    query: init_linear(hidden, hidden, std, device),
                    key: init_linear(hidden, hidden, std, device),
                    value: init_linear(hidden, hidden, std, device),
                    dropout: DropoutConfig::new(self.attention_probs_dropout_prob).init(),
                    num_attention_heads: self.num_attention_heads,
                },
                output: BertSelfOutput {
                    dense: init_linear(hidden, hidden, std, device),
                    layer_norm: layer_norm(),
                    dropout: hidden_dropout(),
                },
            },
            intermediate: BertIntermediate {
                dense: init_linear(hidden, self.intermediate_size, std, device),
                activation: self.hidden_act,
            },
            output: BertOutput {
                dense: init_linear(self.intermediate_size, hidden, std, device),
                layer_norm: layer_norm(),
                dropout: hidden_dropout(),
            },
        };
        BertModel {
            embeddings: BertEmbeddings {
                word_embeddings: init_embedding(self.vocab_size, hidden, std, Some(self.pad_token_id), device),
                position_embeddings: init_embedding(self.max_position_embeddings, hidden, std, None, device),
                token_type_embeddings: init_embedding(self.type_vocab_size, hidden, std, None, device),
                layer_norm: layer_norm(),
                dropout: hidden_dropout(),
            },
            encoder: BertEncoder { layer: (0..self.num_hidden_layers).map(|_| layer()).collect() },
            pooler: BertPooler { dense: init_linear(hidden, hidden, std, device) },
            config: self.clone(),
        }
    }

    /// A sequence classifier with this config, freshly initialised.
    pub fn init_classifier<B: Backend>(&self, device: &B::Device) -> BertForSequenceClassification<B> {
        let dropout = self.classifier_dropout.unwrap_or(self.hidden_dropout_prob);
        BertForSequenceClassification {
            bert: self.init(device),
            dropout: DropoutConfig::new(dropout).init(),
            classifier: init_linear(self.hidden_size, self.num_labels, self.initializer_range, device),
        }
    }
}

/// transformers' `BertConfig` as `config.json` spells it. The sizes are required (a checkpoint without
/// them is not one this crate should guess); the rest default as in transformers.
#[derive(Deserialize)]
struct HfBertConfig {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    max_position_embeddings: usize,
    #[serde(default = "defaults::type_vocab_size")]
    type_vocab_size: usize,
    #[serde(default = "defaults::gelu")]
    hidden_act: String,
    #[serde(default = "defaults::layer_norm_eps")]
    layer_norm_eps: f64,
    #[serde(default = "defaults::dropout")]
    hidden_dropout_prob: f64,
    #[serde(default = "defaults::dropout")]
    attention_probs_dropout_prob: f64,
    #[serde(default)]
    classifier_dropout: Option<f64>,
    #[serde(default = "defaults::initializer_range")]
    initializer_range: f64,
    #[serde(default)]
    pad_token_id: usize,
    #[serde(default = "defaults::absolute")]
    position_embedding_type: String,
}

/// transformers' `BertConfig` defaults.
mod defaults {
    pub(super) fn type_vocab_size() -> usize {
        2
    }
    pub(super) fn gelu() -> String {
        "gelu".into()
    }
    pub(super) fn layer_norm_eps() -> f64 {
        1e-12
    }
    pub(super) fn dropout() -> f64 {
        0.1
    }
    pub(super) fn initializer_range() -> f64 {
        0.02
    }
    pub(super) fn absolute() -> String {
        "absolute".into()
    }
}

impl HfConfig for BertConfig {
    const MODEL_TYPE: &'static str = "bert";

    fn from_hf(config: &HfConfigJson) -> Result<Self, EncoderError> {
        config.expect_model_type(Self::MODEL_TYPE)?;
        let hf: HfBertConfig = config.deserialize()?;
        let hidden_act = Activation::from_hf_name(&hf.hidden_act).ok_or_else(|| {
            config.invalid("hidden_act", format!("{:?} is not a supported activation", hf.hidden_act))
        })?;
        if hf.position_embedding_type != "absolute" {
            return Err(config.invalid(
                "position_embedding_type",
                format!("{:?} is not supported (only \"absolute\")", hf.position_embedding_type),
            ));
        }
        let vocab_size = config.check_size("vocab_size", hf.vocab_size, 1, limits::MAX_VOCAB_SIZE)?;
        let hidden = config.check_size("hidden_size", hf.hidden_size, 1, limits::MAX_HIDDEN_SIZE)?;
        let layers = config.check_size("num_hidden_layers", hf.num_hidden_layers, 1, limits::MAX_LAYERS)?;
        config.check_heads("num_attention_heads", hf.num_attention_heads, "hidden_size", hidden)?;
        let intermediate =
            config.check_size("intermediate_size", hf.intermediate_size, 1, limits::MAX_INTERMEDIATE_SIZE)?;
        let positions =
            config.check_size("max_position_embeddings", hf.max_position_embeddings, 1, limits::MAX_POSITIONS)?;
        let types = config.check_size("type_vocab_size", hf.type_vocab_size, 1, limits::MAX_TYPE_VOCAB_SIZE)?;
        let num_labels = config.num_labels()?;
        config.check_parameter_count(
            "hidden_size",
            parameter_count(vocab_size + positions + types, hidden, intermediate, layers, num_labels),
        )?;
        if hf.pad_token_id >= vocab_size {
            return Err(
                config.invalid("pad_token_id", format!("is {}, outside vocab_size {vocab_size}", hf.pad_token_id))
            );
        }
        Ok(BertConfig {
            vocab_size,
            hidden_size: hidden,
            num_hidden_layers: layers,
            num_attention_heads: hf.num_attention_heads,
            intermediate_size: intermediate,
            max_position_embeddings: positions,
            type_vocab_size: types,
            hidden_act,
            layer_norm_eps: config.check_positive("layer_norm_eps", hf.layer_norm_eps)?,
            hidden_dropout_prob: config.check_probability("hidden_dropout_prob", hf.hidden_dropout_prob)?,
            attention_probs_dropout_prob: config
                .check_probability("attention_probs_dropout_prob", hf.attention_probs_dropout_prob)?,
            classifier_dropout: hf
                .classifier_dropout
                .map(|p| config.check_probability("classifier_dropout", p))
                .transpose()?,
            initializer_range: config.check_non_negative("initializer_range", hf.initializer_range)?,
            pad_token_id: hf.pad_token_id,
            num_labels,
        })
    }

    fn to_hf(&self) -> Map<String, Value> {
        let mut map = Map::new();
        map.insert("vocab_size".into(), self.vocab_size.into());
        map.insert("hidden_size".into(), self.hidden_size.into());
        map.insert("num_hidden_layers".into(), self.num_hidden_layers.into());
        map.insert("num_attention_heads".into(), self.num_attention_heads.into());
        map.insert("intermediate_size".into(), self.intermediate_size.into());
        map.insert("max_position_embeddings".into(), self.max_position_embeddings.into());
        map.insert("type_vocab_size".into(), self.type_vocab_size.into());
        map.insert("hidden_act".into(), self.hidden_act.hf_name().into());
        map.insert("layer_norm_eps".into(), self.layer_norm_eps.into());
        map.insert("hidden_dropout_prob".into(), self.hidden_dropout_prob.into());
        map.insert("attention_probs_dropout_prob".into(), self.attention_probs_dropout_prob.into());
        map.insert("classifier_dropout".into(), self.classifier_dropout.into());
        map.insert("initializer_range".into(), self.initializer_range.into());
        map.insert("pad_token_id".into(), self.pad_token_id.into());
        map.insert("position_embedding_type".into(), "absolute".into());
        map
    }
}

/// Word + position + token-type embeddings, then layer norm and dropout.
#[derive(Module, Debug)]
pub struct BertEmbeddings<B: Backend> {
    /// `[vocab_size, hidden]`.
    pub word_embeddings: Embedding<B>,
    /// `[max_position_embeddings, hidden]`, indexed by absolute position.
    pub position_embeddings: Embedding<B>,
    /// `[type_vocab_size, hidden]`, indexed by segment id.
    pub token_type_embeddings: Embedding<B>,
    /// transformers' `LayerNorm`.
    pub layer_norm: LayerNorm<B>,
    dropout: Dropout,
}

impl<B: Backend> BertEmbeddings<B> {
    /// `[batch, seq]` ids -> `[batch, seq, hidden]`.
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>, token_type_ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [_, seq_len] = input_ids.dims();
        let positions = Tensor::<B, 1, Int>::arange(0..seq_len as i64, &input_ids.device()).reshape([1, seq_len]);
        let tokens = self.word_embeddings.forward(input_ids) + self.token_type_embeddings.forward(token_type_ids);
        let embeddings = add_positions(tokens, self.position_embeddings.forward(positions));
        polarity_kernels::dropout(&self.dropout, self.layer_norm.forward(embeddings))
    }
}

/// Multi-head self-attention: the `query`/`key`/`value` projections and the attention itself.
#[derive(Module, Debug)]
pub struct BertSelfAttention<B: Backend> {
    /// Query projection.
    pub query: Linear<B>,
    /// Key projection.
    pub key: Linear<B>,
    /// Value projection.
    pub value: Linear<B>,
    dropout: Dropout,
    num_attention_heads: usize,
}

impl<B: Backend> BertSelfAttention<B> {
    /// `[batch, seq, hidden]` -> the attended values `[batch, seq, hidden]`, before the output projection.
    pub fn forward(&self, hidden: Tensor<B, 3>, mask: &AttentionMask<B>) -> Tensor<B, 3> {
        let query = linear(&self.query, hidden.clone());
        let key = linear(&self.key, hidden.clone());
        let value = linear(&self.value, hidden);
        let [_, _, width] = query.dims();
        let heads = self.num_attention_heads;
        let heads = AttentionHeads { heads, kv_heads: heads, head_dim: width / heads };
        attention(query, key, value, heads, mask, Some(&self.dropout))
    }
}

/// The attention output projection with its residual connection and layer norm.
#[derive(Module, Debug)]
pub struct BertSelfOutput<B: Backend> {
    /// Output projection.
    pub dense: Linear<B>,
    /// transformers' `LayerNorm`.
    pub layer_norm: LayerNorm<B>,
    dropout: Dropout,
}

impl<B: Backend> BertSelfOutput<B> {
    /// `layer_norm(dropout(dense(hidden)) + residual)`.
    pub fn forward(&self, hidden: Tensor<B, 3>, residual: Tensor<B, 3>) -> Tensor<B, 3> {
        self.layer_norm.forward(linear_residual(&self.dense, Some(&self.dropout), hidden, residual))
    }
}

/// transformers' `BertAttention`: self-attention (`self`) and its output block (`output`).
#[derive(Module, Debug)]
pub struct BertAttention<B: Backend> {
    /// transformers' `attention.self`.
    pub self_attention: BertSelfAttention<B>,
    /// transformers' `attention.output`.
    pub output: BertSelfOutput<B>,
}

impl<B: Backend> BertAttention<B> {
    /// The attention sub-layer, residual and norm included.
    pub fn forward(&self, hidden: Tensor<B, 3>, mask: &AttentionMask<B>) -> Tensor<B, 3> {
        let attended = self.self_attention.forward(hidden.clone(), mask);
        self.output.forward(attended, hidden)
    }
}

/// The first feed-forward projection and its activation.
#[derive(Module, Debug)]
pub struct BertIntermediate<B: Backend> {
    /// `hidden -> intermediate_size`.
    pub dense: Linear<B>,
    activation: Activation,
}

impl<B: Backend> BertIntermediate<B> {
    /// `activation(dense(hidden))`.
    pub fn forward(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        self.activation.after_linear(&self.dense, hidden)
    }
}

/// The second feed-forward projection with its residual connection and layer norm.
#[derive(Module, Debug)]
pub struct BertOutput<B: Backend> {
    /// `intermediate_size -> hidden`.
    pub dense: Linear<B>,
    /// transformers' `LayerNorm`.
    pub layer_norm: LayerNorm<B>,
    dropout: Dropout,
}

impl<B: Backend> BertOutput<B> {
    /// `layer_norm(dropout(dense(intermediate)) + residual)`.
    pub fn forward(&self, intermediate: Tensor<B, 3>, residual: Tensor<B, 3>) -> Tensor<B, 3> {
        self.layer_norm.forward(linear_residual(&self.dense, Some(&self.dropout), intermediate, residual))
    }
}

/// One post-norm transformer layer.
#[derive(Module, Debug)]
pub struct BertLayer<B: Backend> {
    /// The attention sub-layer.
    pub attention: BertAttention<B>,
    /// The feed-forward expansion.
    pub intermediate: BertIntermediate<B>,
    /// The feed-forward contraction.
    pub output: BertOutput<B>,
}

impl<B: Backend> BertLayer<B> {
    /// `[batch, seq, hidden]` -> `[batch, seq, hidden]`.
    pub fn forward(&self, hidden: Tensor<B, 3>, mask: &AttentionMask<B>) -> Tensor<B, 3> {
        let attended = self.attention.forward(hidden, mask);
        self.output.forward(self.intermediate.forward(attended.clone()), attended)
    }
}

/// The stack of layers (`encoder.layer.N`).
#[derive(Module, Debug)]
pub struct BertEncoder<B: Backend> {
    /// The layers, in order.
    pub layer: Vec<BertLayer<B>>,
}

/// Dense + tanh on the `[CLS]` hidden state.
#[derive(Module, Debug)]
pub struct BertPooler<B: Backend> {
    /// `hidden -> hidden`.
    pub dense: Linear<B>,
}

impl<B: Backend> BertPooler<B> {
    /// `[batch, seq, hidden]` -> `[batch, hidden]`.
    pub fn forward(&self, hidden: Tensor<B, 3>) -> Tensor<B, 2> {
        linear(&self.dense, first_token(hidden)).tanh()
    }
}

/// The bare BERT encoder (transformers' `BertModel`, with its pooler).
#[derive(Module, Debug)]
pub struct BertModel<B: Backend> {
    /// Token, position and segment embeddings.
    pub embeddings: BertEmbeddings<B>,
    /// The transformer layers.
    pub encoder: BertEncoder<B>,
    /// The `[CLS]` pooler.
    pub pooler: BertPooler<B>,
    config: BertConfig,
}

impl<B: Backend> BertModel<B> {
    /// Runs the encoder. Padded positions (`attention_mask == 0`) are masked out as keys; their own
    /// hidden states carry no meaning (transformers computes them anyway; inference on the CPU default
    /// skips right padding and leaves zeros there).
    ///
    /// # Panics
    ///
    /// When the sequence is longer than `max_position_embeddings` or an id is outside its
    /// vocabulary; [`validate`](Self::validate) checks the length up front.
    pub fn forward(&self, batch: TokenBatch<B>) -> EncoderOutput<B> {
        let last_hidden_state = self.encode(batch);
        let pooler_output = self.pooler.forward(last_hidden_state.clone());
        EncoderOutput { last_hidden_state, pooler_output: Some(pooler_output) }
    }

    /// The last hidden state `[batch, seq, hidden]` alone, without the pooler.
    pub fn encode(&self, batch: TokenBatch<B>) -> Tensor<B, 3> {
        let embeddings = self.embeddings.forward(batch.input_ids, batch.token_type_ids);
        run_layers(embeddings, batch.attention_mask, |hidden, mask| {
            self.encoder.layer.iter().fold(hidden, |hidden, layer| layer.forward(hidden, mask))
        })
    }

    /// Checks that the batch's tensors agree in shape and fit `max_position_embeddings`.
    pub fn validate(&self, batch: &TokenBatch<B>) -> Result<(), EncoderError> {
        validate_batch(batch, self.config.max_position_embeddings)
    }
}

impl<B: Backend> HfModel<B> for BertModel<B> {
    type Config = BertConfig;
    const ARCHITECTURE: &'static str = "BertModel";

    fn naming() -> ParameterNaming {
        ParameterNaming { nested: false, optional_modules: &["pooler"], ..NAMING }
    }

    fn from_config(config: &BertConfig, device: &B::Device) -> Self {
        config.init(device)
    }

    fn config(&self) -> &BertConfig {
        &self.config
    }
}

/// BERT with transformers' sequence-classification head: pooler -> dropout -> classifier.
#[derive(Module, Debug)]
pub struct BertForSequenceClassification<B: Backend> {
    /// The encoder (with its pooler).
    pub bert: BertModel<B>,
    dropout: Dropout,
    /// `hidden -> num_labels`.
    pub classifier: Linear<B>,
}

impl<B: Backend> BertForSequenceClassification<B> {
    /// `[batch, num_labels]` logits.
    pub fn forward(&self, batch: TokenBatch<B>) -> Tensor<B, 2> {
        let pooled = self.bert.pooler.forward(self.bert.encode(batch));
        linear(&self.classifier, polarity_kernels::dropout(&self.dropout, pooled))
    }

    /// See [`BertModel::validate`].
    pub fn validate(&self, batch: &TokenBatch<B>) -> Result<(), EncoderError> {
        self.bert.validate(batch)
    }
}

impl<B: Backend> HfModel<B> for BertForSequenceClassification<B> {
    type Config = BertConfig;
    const ARCHITECTURE: &'static str = "BertForSequenceClassification";

    fn naming() -> ParameterNaming {
        NAMING
    }

    fn from_config(config: &BertConfig, device: &B::Device) -> Self {
        config.init_classifier(device)
    }

    fn config(&self) -> &BertConfig {
        &self.bert.config
    }

    fn num_labels(&self) -> Option<usize> {
        Some(self.bert.config.num_labels)
    }
}

impl<B: Backend> ClassScorer<B> for BertForSequenceClassification<B> {
    fn class_scores(&self, batch: TokenBatch<B>) -> Tensor<B, 2> {
        self.forward(batch)
    }
}

/// transformers' names for `BertForSequenceClassification`; `BertModel` is the same, un-nested.
const NAMING: ParameterNaming = ParameterNaming {
    renamed_segments: &[("self_attention", "self"), ("layer_norm", "LayerNorm")],
    backbone_prefix: "bert",
    backbone_modules: &["embeddings", "encoder", "pooler"],
    nested: true,
    // A bare encoder checkpoint may lack the pooler; no encoder checkpoint has our classifier.
    optional_modules: &["bert.pooler", "classifier"],
};
