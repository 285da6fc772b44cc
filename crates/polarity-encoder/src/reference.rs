//! Checking the encoders against PyTorch + transformers reference fixtures.
//!
//! Two fixture kinds (see `polarity_core::reference::Fixture`), for any config in their format:
//!
//! - `encoder-hidden-states`: a bare encoder (`model_id` in `meta.json`, or `model_dir`) on
//!   `input_ids`/`attention_mask`/`token_type_ids`; compares `last_hidden_state` where
//!   `attention_mask` is 1, and `pooler_output` and `mean_pooled_normalized` when the fixture has them.
//! - `encoder-sequence-classification`: a classifier (`model_dir`, relative to the fixture) in eval
//!   semantics (dropout 0) on an autodiff backend; compares `logits`, the mean cross-entropy `loss`
//!   against `labels`, and every `grad.<transformers parameter name>` the fixture lists.
//!
//! [`verify`] runs the models on [`polarity_core::backend::DefaultBackend`] (CUDA with the `cuda`
//! feature); [`verify_on`] takes any autodiff backend and device.

use std::path::Path;

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use polarity_core::backend::{TrainBackend, default_device};
use polarity_core::reference::{Fixture, TensorCheck, Tolerance};
use polarity_core::{CoreError, TokenBatch};
use polarity_hub::{RepoKind, RepoSource};

use crate::{
    BertConfig, BertModel, CONFIG_FILE, DistilBertConfig, DistilBertModel, EncoderArchitecture, EncoderClassifier,
    EncoderError, EncoderOutput, HfConfig, HfConfigJson, HfModel, cross_entropy, l2_normalize, mean_pool,
};

/// `meta.json` kind of bare-encoder fixtures.
pub const HIDDEN_STATES_KIND: &str = "encoder-hidden-states";
/// `meta.json` kind of sequence-classification fixtures.
pub const SEQUENCE_CLASSIFICATION_KIND: &str = "encoder-sequence-classification";

/// Absolute tolerance on hidden states, pooler outputs and pooled embeddings (float32 on a CPU).
pub const HIDDEN_STATE_TOLERANCE: f64 = 1e-4;
/// Absolute tolerance on logits.
pub const LOGITS_TOLERANCE: f64 = 1e-4;
/// Absolute tolerance on the mean cross-entropy loss.
pub const LOSS_TOLERANCE: f64 = 1e-5;
/// Tolerance on gradients, relative to the largest reference magnitude of each tensor.
pub const GRADIENT_TOLERANCE: f64 = 1e-4;

/// Whether [`verify`] handles fixtures of this `kind`.
pub fn handles(kind: &str) -> bool {
    kind == HIDDEN_STATES_KIND || kind == SEQUENCE_CLASSIFICATION_KIND
}

/// Runs the model a fixture describes (or `model_override`, a hub id or directory) on the fixture's
/// inputs and compares every reference output; one [`TensorCheck`] per compared tensor.
///
/// ```no_run
/// let checks = polarity_encoder::reference::verify(
///     std::path::Path::new("../shared/fixtures/tiny-bert-cls"),
///     None,
/// )?;
/// assert!(checks.iter().all(|check| check.ok));
/// # Ok::<(), polarity_encoder::EncoderError>(())
/// ```
pub fn verify(fixture_dir: &Path, model_override: Option<&str>) -> Result<Vec<TensorCheck>, EncoderError> {
    verify_on::<TrainBackend>(fixture_dir, model_override, &default_device()?)
}

/// [`verify`] on a chosen backend: classifiers run on `B` (for gradients), bare encoders on its
/// inner backend.
pub fn verify_on<B: AutodiffBackend>(
    fixture_dir: &Path,
    model_override: Option<&str>,
    device: &B::Device,
) -> Result<Vec<TensorCheck>, EncoderError> {
    let fixture = Fixture::open(fixture_dir)?;
    match fixture.kind()? {
        HIDDEN_STATES_KIND => verify_hidden_states::<B::InnerBackend>(&fixture, model_override, device),
        SEQUENCE_CLASSIFICATION_KIND => verify_sequence_classification::<B>(&fixture, model_override, device),
        other => Err(EncoderError::UnsupportedFixture(other.to_string())),
    }
}

fn verify_hidden_states<B: Backend>(
    fixture: &Fixture,
    model_override: Option<&str>,
    device: &B::Device,
) -> Result<Vec<TensorCheck>, EncoderError> {
    let source = model_source(fixture, model_override)?;
    let config = HfConfigJson::read(&source.file(CONFIG_FILE)?)?;
    let weights = source.safetensors_files()?;
    let (output, mask) = match EncoderArchitecture::of(&config)? {
        EncoderArchitecture::Bert => {
            let bert = BertConfig::from_hf(&config)?;
            let limits = InputLimits::of_bert(&bert);
            let (model, _) = BertModel::<B>::from_config(&bert, device).load_safetensors(&weights)?;
            let batch = token_batch(fixture, &limits, device)?;
            let mask = batch.attention_mask.clone();
            (model.forward(batch), mask)
        }
        EncoderArchitecture::DistilBert => {
            let distilbert = DistilBertConfig::from_hf(&config)?;
            let limits = InputLimits::of_distilbert(&distilbert);
            let (model, _) = DistilBertModel::<B>::from_config(&distilbert, device).load_safetensors(&weights)?;
            let batch = token_batch(fixture, &limits, device)?;
            let mask = batch.attention_mask.clone();
            (model.forward(batch), mask)
        }
    };
    let EncoderOutput { last_hidden_state, pooler_output } = output;
    let has = |name: &str| fixture.names().contains(&name);

    let mut checks = Vec::new();
    let (shape, reference) = fixture.f32("last_hidden_state")?;
    let ours = to_f32(last_hidden_state.to_data());
    let mask_values = to_i64(mask.to_data());
    let (ours_real, reference_real) = real_token_rows(&ours, reference, shape, &mask_values);
    checks.push(TensorCheck::compare(
        "last_hidden_state",
        &ours_real,
        &reference_real,
        HIDDEN_STATE_TOLERANCE,
        Tolerance::Absolute,
    ));

    if has("pooler_output") {
        let pooled = pooler_output.ok_or_else(|| {
            EncoderError::InvalidInput("the fixture has pooler_output, but this architecture has no pooler".into())
        })?;
        let (_, reference) = fixture.f32("pooler_output")?;
        let ours = to_f32(pooled.into_data());
        checks.push(TensorCheck::compare(
            "pooler_output",
            &ours,
            reference,
            HIDDEN_STATE_TOLERANCE,
            Tolerance::Absolute,
        ));
    }
    if has("mean_pooled_normalized") {
        let (_, reference) = fixture.f32("mean_pooled_normalized")?;
        let ours = to_f32(l2_normalize(mean_pool(last_hidden_state, mask)).into_data());
        checks.push(TensorCheck::compare(
            "mean_pooled_normalized",
            &ours,
            reference,
            HIDDEN_STATE_TOLERANCE,
            Tolerance::Absolute,
        ));
    }
    Ok(checks)
}

fn verify_sequence_classification<B: AutodiffBackend>(
    fixture: &Fixture,
    model_override: Option<&str>,
    device: &B::Device,
) -> Result<Vec<TensorCheck>, EncoderError> {
    let source = model_source(fixture, model_override)?;
    let config = HfConfigJson::read(&source.file(CONFIG_FILE)?)?;
    let weights = source.safetensors_files()?;
    // Reference logits and gradients are computed in eval semantics, so dropout is switched off.
    let (model, _) = EncoderClassifier::<B>::from_config_json(&config, &weights, true, device)?;
    let limits = match &model {
        EncoderClassifier::Bert(m) => InputLimits::of_bert(m.config()),
        EncoderClassifier::DistilBert(m) => InputLimits::of_distilbert(m.config()),
    };
    let batch = token_batch(fixture, &limits, device)?;
    let (label_shape, labels) = fixture.i64("labels")?;
    if label_shape != [batch.dims()[0]] || labels.iter().any(|&l| l < 0 || l as usize >= limits.num_labels) {
        return Err(EncoderError::InvalidInput(format!(
            "labels {label_shape:?} must be one class index below {} per row",
            limits.num_labels
        )));
    }
    let labels = Tensor::<B, 1, Int>::from_data(TensorData::new(labels.to_vec(), [labels.len()]), device);

    let logits = model.forward(batch);
    let loss = cross_entropy(logits.clone(), labels);
    let gradients = model.hf_gradients(&loss.backward());

    let mut checks = Vec::new();
    let (_, reference) = fixture.f32("logits")?;
    checks.push(TensorCheck::compare(
        "logits",
        &to_f32(logits.into_data()),
        reference,
        LOGITS_TOLERANCE,
        Tolerance::Absolute,
    ));
    let (_, reference) = fixture.f32("loss")?;
    checks.push(TensorCheck::compare(
        "loss",
        &to_f32(loss.into_data()),
        reference,
        LOSS_TOLERANCE,
        Tolerance::Absolute,
    ));
    for name in fixture.names().into_iter().filter(|name| name.starts_with("grad.")) {
        let (_, reference) = fixture.f32(name)?;
        // A parameter the model does not have compares as an empty tensor, which fails the check.
        let ours = gradients.get(&name["grad.".len()..]).map(|g| to_f32(g.clone())).unwrap_or_default();
        checks.push(TensorCheck::compare(name, &ours, reference, GRADIENT_TOLERANCE, Tolerance::Relative));
    }
    Ok(checks)
}

/// The model to run: the override, else `model_dir` (relative to the fixture), else `model_id`.
fn model_source(fixture: &Fixture, model_override: Option<&str>) -> Result<RepoSource, EncoderError> {
    if let Some(spec) = model_override {
        return Ok(RepoSource::parse(spec, RepoKind::Model));
    }
    let meta = |key: &str| fixture.meta.get(key).and_then(|v| v.as_str());
    match (meta("model_dir"), meta("model_id")) {
        (Some(dir), _) => Ok(RepoSource::Local(fixture.dir.join(dir))),
        (None, Some(id)) => Ok(RepoSource::parse(id, RepoKind::Model)),
        (None, None) => Err(CoreError::Fixture {
            dir: fixture.dir.clone(),
            what: "meta.json names no model (\"model_dir\" or \"model_id\") and none was given".into(),
        }
        .into()),
    }
}

/// What the config allows as input, checked before the tensors reach the model.
struct InputLimits {
    vocab_size: usize,
    type_vocab_size: usize,
    max_positions: usize,
    num_labels: usize,
}

impl InputLimits {
    fn of_bert(config: &BertConfig) -> Self {
        Self {
            vocab_size: config.vocab_size,
            type_vocab_size: config.type_vocab_size,
            max_positions: config.max_position_embeddings,
            num_labels: config.num_labels,
        }
    }

    fn of_distilbert(config: &DistilBertConfig) -> Self {
        Self {
            vocab_size: config.vocab_size,
            // DistilBERT ignores segment ids; the fixture's, if any, only need to be non-negative.
            type_vocab_size: usize::MAX,
            max_positions: config.max_position_embeddings,
            num_labels: config.num_labels,
        }
    }
}

/// The fixture's `input_ids`, `attention_mask` and (optional, else zero) `token_type_ids`.
fn token_batch<B: Backend>(
    fixture: &Fixture,
    limits: &InputLimits,
    device: &B::Device,
) -> Result<TokenBatch<B>, EncoderError> {
    // Every value checked against its table before a model sees it (ids, segments, a 0/1 mask).
    let (shape, input_ids) = fixture.token_ids("input_ids", limits.vocab_size)?;
    let [batch, seq_len] = <[usize; 2]>::try_from(shape)
        .map_err(|_| EncoderError::InvalidInput(format!("input_ids must be [batch, seq], found {shape:?}")))?;
    let (mask_shape, attention_mask) = fixture.i64_in("attention_mask", 0..2, &[])?;
    let zeros;
    let (type_shape, token_type_ids) = if fixture.names().contains(&"token_type_ids") {
        fixture.i64_in("token_type_ids", 0..i64::try_from(limits.type_vocab_size).unwrap_or(i64::MAX), &[])?
    } else {
        zeros = vec![0i64; input_ids.len()];
        (shape, zeros.as_slice())
    };
    if mask_shape != shape || type_shape != shape {
        return Err(EncoderError::InvalidInput(format!(
            "input_ids {shape:?}, attention_mask {mask_shape:?} and token_type_ids {type_shape:?} differ in shape"
        )));
    }
    if seq_len > limits.max_positions {
        return Err(EncoderError::InvalidInput(format!(
            "sequence length {seq_len} exceeds max_position_embeddings {}",
            limits.max_positions
        )));
    }
    let int_tensor =
        |values: &[i64]| Tensor::<B, 2, Int>::from_data(TensorData::new(values.to_vec(), [batch, seq_len]), device);
    Ok(TokenBatch {
        input_ids: int_tensor(input_ids),
        attention_mask: int_tensor(attention_mask),
        token_type_ids: int_tensor(token_type_ids),
    })
}

/// The `[.., hidden]` rows of two `[batch, seq, hidden]` tensors at positions where the mask is 1.
fn real_token_rows(ours: &[f32], reference: &[f32], shape: &[usize], mask: &[i64]) -> (Vec<f32>, Vec<f32>) {
    let width = shape.last().copied().unwrap_or(0).max(1);
    if ours.len() != reference.len() || mask.len() * width != reference.len() {
        // A shape disagreement: hand back everything so the comparison reports it as a failure.
        return (ours.to_vec(), reference.to_vec());
    }
    let rows = |values: &[f32]| -> Vec<f32> {
        values
            .chunks_exact(width)
            .zip(mask)
            .filter(|(_, m)| **m == 1)
            .flat_map(|(row, _)| row.iter().copied())
            .collect()
    };
    (rows(ours), rows(reference))
}

fn to_f32(data: TensorData) -> Vec<f32> {
    data.iter::<f32>().collect()
}

fn to_i64(data: TensorData) -> Vec<i64> {
    data.iter::<i64>().collect()
}
