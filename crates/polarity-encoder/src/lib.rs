//! BERT and DistilBERT sentiment classifiers in burn, read from and written as Hugging Face checkpoints.
//!
//! - [`bert`] and [`distilbert`]: one flat file per architecture, module names mirroring transformers'
//!   parameter names, computing what `modeling_bert.py` / `modeling_distilbert.py` compute (exact-erf
//!   GELU, additive `finfo.min` attention masking, dropout only on autodiff backends).
//! - [`HfModel`]: `from_pretrained` (a hub id resolved cache-first through [`polarity_hub`], or a local
//!   directory), strict loading of `model.safetensors` or a sharded checkpoint with typed errors, and `save_pretrained` to a
//!   directory transformers loads unchanged.
//! - [`EncoderClassifier`]: either classifier, picked by `config.json`'s `model_type`; it implements
//!   [`polarity_core::ClassScorer`].
//! - [`reference::verify`]: compares the models with PyTorch reference fixtures.
//!
//! A bare encoder checkpoint (for example `sentence-transformers/all-MiniLM-L6-v2`) loads as a
//! classifier with a freshly initialised head, exactly as transformers does; seed the backend
//! (`B::seed`) for a reproducible head. [`EncoderClassifier::from_config_random`] builds a classifier
//! from `config.json` alone, every weight random, for measurements at a model's real shape where its
//! weights are not available.
//!
//! ```no_run
//! use burn::backend::NdArray;
//! use burn::prelude::*;
//! use polarity_core::{ClassScorer, TokenBatch};
//! use polarity_encoder::EncoderClassifier;
//! use polarity_hub::{RepoKind, RepoSource};
//!
//! type B = NdArray<f32>;
//! let device = Default::default();
//! let source = RepoSource::parse("distilbert-base-uncased", RepoKind::Model);
//! let model = EncoderClassifier::<B>::from_pretrained(&source, &device)?;
//!
//! // "[CLS] great film [SEP]" and a padded copy of "[CLS] dull [SEP]".
//! let input_ids = Tensor::<B, 2, Int>::from_ints([[101, 2307, 2143, 102], [101, 10634, 102, 0]], &device);
//! let attention_mask = Tensor::<B, 2, Int>::from_ints([[1, 1, 1, 1], [1, 1, 1, 0]], &device);
//! let token_type_ids = Tensor::<B, 2, Int>::zeros([2, 4], &device);
//! let batch = TokenBatch { input_ids, attention_mask, token_type_ids };
//! let scores = model.class_scores(batch); // [2, 2]: negative, positive
//!
//! model.save_pretrained(std::path::Path::new("out/distilbert-imdb"), &[source.file("tokenizer.json")?])?;
//! # Ok::<(), polarity_encoder::EncoderError>(())
//! ```

#![warn(missing_docs)]

pub mod bert;
mod common;
pub mod distilbert;
mod error;
mod hf_config;
mod pretrained;
pub mod reference;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use polarity_core::{ClassScorer, TokenBatch};
use polarity_hub::RepoSource;

pub use bert::{BertConfig, BertForSequenceClassification, BertModel};
pub use common::Activation;
pub use distilbert::{DistilBertConfig, DistilBertForSequenceClassification, DistilBertModel};
pub use error::EncoderError;
pub use hf_config::{HfConfig, HfConfigJson, limits};
pub use polarity_checkpoint::{CheckpointError, LoadReport, TensorInfo};
pub use pretrained::{CONFIG_FILE, HfModel, ParameterNaming, WEIGHTS_FILE};

/// What a bare encoder returns (transformers' `BaseModelOutputWithPooling`).
#[derive(Clone, Debug)]
pub struct EncoderOutput<B: Backend> {
    /// `[batch, seq, hidden]`: the last layer's hidden states.
    pub last_hidden_state: Tensor<B, 3>,
    /// `[batch, hidden]`: BERT's pooler (dense + tanh on `[CLS]`); `None` for DistilBERT.
    pub pooler_output: Option<Tensor<B, 2>>,
}

/// The encoder architectures this crate implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncoderArchitecture {
    /// `model_type: "bert"` (BERT, MiniLM, ...).
    Bert,
    /// `model_type: "distilbert"`.
    DistilBert,
}

impl EncoderArchitecture {
    /// The architecture `config.json` describes, by its `model_type`.
    pub fn of(config: &HfConfigJson) -> Result<Self, EncoderError> {
        match config.model_type()?.as_deref() {
            Some(BertConfig::MODEL_TYPE) => Ok(Self::Bert),
            Some(DistilBertConfig::MODEL_TYPE) => Ok(Self::DistilBert),
            Some(other) => Err(EncoderError::UnsupportedArchitecture {
                path: config.path().to_path_buf(),
                model_type: other.to_string(),
            }),
            None => Err(EncoderError::MissingConfigField { path: config.path().to_path_buf(), field: "model_type" }),
        }
    }
}

/// A BERT or DistilBERT sequence classifier, chosen by the checkpoint's `model_type`.
#[derive(Module, Debug)]
pub enum EncoderClassifier<B: Backend> {
    /// `BertForSequenceClassification`.
    Bert(BertForSequenceClassification<B>),
    /// `DistilBertForSequenceClassification`.
    DistilBert(DistilBertForSequenceClassification<B>),
}

impl<B: Backend> EncoderClassifier<B> {
    /// Loads a classifier from a hub id or local directory; an encoder-only checkpoint gets a freshly
    /// initialised head.
    pub fn from_pretrained(source: &RepoSource, device: &B::Device) -> Result<Self, EncoderError> {
        Ok(Self::from_pretrained_with_report(source, device)?.0)
    }

    /// [`from_pretrained`](Self::from_pretrained), also saying what was loaded, initialised or ignored.
    pub fn from_pretrained_with_report(
        source: &RepoSource,
        device: &B::Device,
    ) -> Result<(Self, LoadReport), EncoderError> {
        let config = HfConfigJson::read(&source.file(CONFIG_FILE)?)?;
        Self::from_config_json(&config, &source.safetensors_files()?, false, device)
    }

    /// Builds the classifier `config` describes and loads `weights` (one safetensors file or a sharded
    /// checkpoint's files) into it; `without_dropout` zeroes every dropout probability (eval-mode
    /// outputs on an autodiff backend).
    pub fn from_config_json(
        config: &HfConfigJson,
        weights: &[PathBuf],
        without_dropout: bool,
        device: &B::Device,
    ) -> Result<(Self, LoadReport), EncoderError> {
        match Self::fresh(config, without_dropout, device)? {
            Self::Bert(model) => {
                let (model, report) = model.load_safetensors(weights)?;
                Ok((Self::Bert(model), report))
            }
            Self::DistilBert(model) => {
                let (model, report) = model.load_safetensors(weights)?;
                Ok((Self::DistilBert(model), report))
            }
        }
    }

    /// The classifier `config` describes with random weights, as transformers'
    /// `*ForSequenceClassification` is built from a config alone: every weight drawn from
    /// `N(0, initializer_range)` (the padding token's embedding row zero; DistilBERT's fixed sinusoids
    /// where `sinusoidal_pos_embds` asks for them), biases zero, layer norms the identity. No weights
    /// file is read. Seed the backend (`B::seed`) for reproducible weights; they are
    /// drawn when a parameter is first used.
    ///
    /// The report lists every parameter as freshly initialised and none as loaded.
    ///
    /// ```
    /// use burn::backend::NdArray;
    /// use polarity_encoder::{EncoderClassifier, HfConfigJson};
    ///
    /// let config = r#"{"model_type": "distilbert", "vocab_size": 100, "dim": 8, "n_layers": 1, "n_heads": 2,
    ///                  "hidden_dim": 16, "max_position_embeddings": 32}"#;
    /// let config = HfConfigJson::parse(config, "config.json".as_ref())?;
    /// let (model, report) = EncoderClassifier::<NdArray>::from_config_random(&config, &Default::default())?;
    /// assert!(report.loaded.is_empty());
    /// assert_eq!(report.initialised.len(), model.hf_parameters().len());
    /// # Ok::<(), polarity_encoder::EncoderError>(())
    /// ```
    pub fn from_config_random(config: &HfConfigJson, device: &B::Device) -> Result<(Self, LoadReport), EncoderError> {
        let model = Self::fresh(config, false, device)?;
        let initialised: Vec<String> = model.hf_parameters().into_iter().map(|(name, _)| name).collect();
        tracing::info!(
            config = %config.path().display(),
            "{} tensors freshly initialised from config.json alone (no weights read)",
            initialised.len()
        );
        Ok((model, LoadReport { initialised, ..LoadReport::default() }))
    }

    /// The classifier `config` describes, freshly initialised.
    fn fresh(config: &HfConfigJson, without_dropout: bool, device: &B::Device) -> Result<Self, EncoderError> {
        Ok(match EncoderArchitecture::of(config)? {
            EncoderArchitecture::Bert => {
                let mut config = BertConfig::from_hf(config)?;
                if without_dropout {
                    config = config.without_dropout();
                }
                Self::Bert(BertForSequenceClassification::from_config(&config, device))
            }
            EncoderArchitecture::DistilBert => {
                let mut config = DistilBertConfig::from_hf(config)?;
                if without_dropout {
                    config = config.without_dropout();
                }
                Self::DistilBert(DistilBertForSequenceClassification::from_config(&config, device))
            }
        })
    }

    /// Rows of the token embedding (`vocab_size`): every input id must be below it.
    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Bert(model) => model.config().vocab_size,
            Self::DistilBert(model) => model.config().vocab_size,
        }
    }

    /// The longest sequence the position embeddings cover (`max_position_embeddings`).
    pub fn max_position_embeddings(&self) -> usize {
        match self {
            Self::Bert(model) => model.config().max_position_embeddings,
            Self::DistilBert(model) => model.config().max_position_embeddings,
        }
    }

    /// Rows of the segment embedding (`type_vocab_size`): every token type id must be below it. `None`
    /// for DistilBERT, which reads no token type ids.
    pub fn type_vocab_size(&self) -> Option<usize> {
        match self {
            Self::Bert(model) => Some(model.config().type_vocab_size),
            Self::DistilBert(_) => None,
        }
    }

    /// Which architecture this is.
    pub fn architecture(&self) -> EncoderArchitecture {
        match self {
            Self::Bert(_) => EncoderArchitecture::Bert,
            Self::DistilBert(_) => EncoderArchitecture::DistilBert,
        }
    }

    /// `[batch, num_labels]` logits.
    pub fn forward(&self, batch: TokenBatch<B>) -> Tensor<B, 2> {
        match self {
            Self::Bert(model) => model.forward(batch),
            Self::DistilBert(model) => model.forward(batch),
        }
    }

    /// Checks that the batch's tensors agree in shape and fit the position embeddings.
    pub fn validate(&self, batch: &TokenBatch<B>) -> Result<(), EncoderError> {
        match self {
            Self::Bert(model) => model.validate(batch),
            Self::DistilBert(model) => model.validate(batch),
        }
    }

    /// See [`HfModel::save_pretrained`].
    pub fn save_pretrained(&self, dir: &Path, tokenizer_files: &[PathBuf]) -> Result<(), EncoderError> {
        match self {
            Self::Bert(model) => model.save_pretrained(dir, tokenizer_files),
            Self::DistilBert(model) => model.save_pretrained(dir, tokenizer_files),
        }
    }

    /// See [`HfModel::hf_parameters`].
    pub fn hf_parameters(&self) -> Vec<(String, Vec<usize>)> {
        match self {
            Self::Bert(model) => model.hf_parameters(),
            Self::DistilBert(model) => model.hf_parameters(),
        }
    }

    /// See [`HfModel::hf_gradients`].
    pub fn hf_gradients(&self, grads: &B::Gradients) -> BTreeMap<String, TensorData>
    where
        B: AutodiffBackend,
    {
        match self {
            Self::Bert(model) => model.hf_gradients(grads),
            Self::DistilBert(model) => model.hf_gradients(grads),
        }
    }
}

impl<B: Backend> ClassScorer<B> for EncoderClassifier<B> {
    fn class_scores(&self, batch: TokenBatch<B>) -> Tensor<B, 2> {
        self.forward(batch)
    }
}

/// The mean of the hidden states over real tokens (`attention_mask == 1`), as sentence-transformers
/// pools: `[batch, seq, hidden]` -> `[batch, hidden]`.
pub fn mean_pool<B: Backend>(last_hidden_state: Tensor<B, 3>, attention_mask: Tensor<B, 2, Int>) -> Tensor<B, 2> {
    let mask = attention_mask.float().unsqueeze_dim::<3>(2);
    let summed: Tensor<B, 2> = (last_hidden_state * mask.clone()).sum_dim(1).squeeze_dim(1);
    let counts: Tensor<B, 2> = mask.sum_dim(1).squeeze_dim::<2>(1).clamp_min(1e-9);
    summed / counts
}

/// Each row divided by its Euclidean norm (at least 1e-12), as `torch.nn.functional.normalize`.
pub fn l2_normalize<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = x.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-12);
    x / norm
}

/// Mean cross-entropy of `[batch, classes]` logits against `[batch]` class indices, shape `[1]`.
pub(crate) fn cross_entropy<B: Backend>(logits: Tensor<B, 2>, labels: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    CrossEntropyLossConfig::new().init(&logits.device()).forward(logits, labels)
}

/// Shape checks a forward pass would otherwise turn into a panic.
pub(crate) fn validate_batch<B: Backend>(batch: &TokenBatch<B>, max_positions: usize) -> Result<(), EncoderError> {
    let dims = batch.input_ids.dims();
    let (mask, types) = (batch.attention_mask.dims(), batch.token_type_ids.dims());
    if mask != dims || types != dims {
        return Err(EncoderError::InvalidInput(format!(
            "input_ids {dims:?}, attention_mask {mask:?} and token_type_ids {types:?} must have the same shape"
        )));
    }
    if dims.contains(&0) {
        return Err(EncoderError::InvalidInput(format!("empty batch {dims:?}")));
    }
    if dims[1] > max_positions {
        return Err(EncoderError::InvalidInput(format!(
            "sequence length {} exceeds max_position_embeddings {max_positions}",
            dims[1]
        )));
    }
    Ok(())
}
