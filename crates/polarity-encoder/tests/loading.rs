//! Loading checkpoints: typed errors for broken ones, and the variations real ones come in (bare or
//! prefixed keys, legacy names, other tasks' heads, half precision).

mod common;

use std::path::Path;

use burn::tensor::{DType, TensorData};
use common::{Cpu, fixture, fixture_dir, token_batch, values};
use polarity_core::reference::{TensorCheck, Tolerance};
use polarity_encoder::{
    BertForSequenceClassification, BertModel, CheckpointError, DistilBertForSequenceClassification, EncoderClassifier,
    EncoderError, HfModel, TensorInfo,
};
use polarity_hub::{HubError, RepoSource, WeightsSearch};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use tempfile::TempDir;

/// A checkpoint held in memory, to be altered and written to a temporary directory.
struct Checkpoint {
    config: Value,
    tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)>,
}

impl Checkpoint {
    fn of_fixture(name: &str) -> Self {
        let dir = fixture_dir(name).join("model");
        let config = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
        let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
        let file = SafeTensors::deserialize(&bytes).unwrap();
        let mut tensors: Vec<_> = file
            .tensors()
            .into_iter()
            .map(|(name, view)| (name, view.dtype(), view.shape().to_vec(), view.data().to_vec()))
            .collect();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        Self { config, tensors }
    }

    fn remove(mut self, prefix: &str) -> Self {
        let before = self.tensors.len();
        self.tensors.retain(|(name, ..)| !name.starts_with(prefix));
        assert!(self.tensors.len() < before, "{prefix} is not in the checkpoint");
        self
    }

    fn rename(mut self, from: &str, to: &str) -> Self {
        for (name, ..) in &mut self.tensors {
            *name = name.replace(from, to);
        }
        self
    }

    fn insert_f32(mut self, name: &str, shape: &[usize]) -> Self {
        let bytes = vec![0u8; shape.iter().product::<usize>() * 4];
        self.tensors.push((name.to_string(), Dtype::F32, shape.to_vec(), bytes));
        self
    }

    fn in_half_precision(mut self) -> Self {
        for (_, dtype, shape, bytes) in &mut self.tensors {
            let floats: Vec<f32> =
                bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            let half = TensorData::new(floats, shape.clone()).convert_dtype(DType::F16);
            *bytes = half.as_bytes().to_vec();
            *dtype = Dtype::F16;
        }
        self
    }

    fn without_config_field(mut self, field: &str) -> Self {
        self.config.as_object_mut().unwrap().remove(field).expect("field present");
        self
    }

    fn write(&self) -> TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), self.config.to_string()).unwrap();
        let views: Vec<_> = self
            .tensors
            .iter()
            .map(|(name, dtype, shape, bytes)| {
                (name.clone(), safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes).unwrap())
            })
            .collect();
        let metadata = Some([("format".to_string(), "pt".to_string())].into());
        std::fs::write(dir.path().join("model.safetensors"), safetensors::serialize(views, metadata).unwrap()).unwrap();
        dir
    }
}

fn local(dir: &Path) -> RepoSource {
    RepoSource::Local(dir.to_path_buf())
}

fn load_bert(dir: &Path) -> Result<BertForSequenceClassification<Cpu>, EncoderError> {
    BertForSequenceClassification::<Cpu>::from_pretrained(&local(dir), &Default::default())
}

fn tiny_bert_logits(model: &BertForSequenceClassification<Cpu>) -> Vec<f32> {
    values(model.forward(token_batch(&fixture("tiny-bert-cls"), &Default::default())))
}

#[test]
fn a_missing_tensor_is_named_with_its_shape() {
    let dir = Checkpoint::of_fixture("tiny-bert-cls").remove("bert.encoder.layer.1.output.dense.weight").write();
    match load_bert(dir.path()) {
        Err(EncoderError::Checkpoint(CheckpointError::MissingTensors { tensors, .. })) => {
            assert_eq!(
                tensors,
                [TensorInfo { name: "bert.encoder.layer.1.output.dense.weight".into(), shape: vec![32, 64] }]
            );
        }
        other => panic!("expected MissingTensors, got {other:?}"),
    }
}

#[test]
fn a_shape_mismatch_names_the_tensor_and_both_shapes() {
    let name = "bert.encoder.layer.0.intermediate.dense.weight";
    let dir = Checkpoint::of_fixture("tiny-bert-cls").remove(name).insert_f32(name, &[63, 32]).write();
    let err = load_bert(dir.path()).unwrap_err();
    match &err {
        EncoderError::Checkpoint(CheckpointError::ShapeMismatch { tensor: found_name, expected, found, .. }) => {
            assert_eq!(found_name, name);
            assert_eq!(expected, &[64, 32]);
            assert_eq!(found, &[63, 32]);
        }
        other => panic!("expected ShapeMismatch, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains(name) && message.contains("[63, 32]") && message.contains("[64, 32]"), "{message}");

    // The same for DistilBERT's naming, and for a classifier head of the wrong number of labels.
    let name = "distilbert.transformer.layer.1.ffn.lin1.weight";
    let dir = Checkpoint::of_fixture("tiny-distilbert-cls").remove(name).insert_f32(name, &[64, 31]).write();
    let err = DistilBertForSequenceClassification::<Cpu>::from_pretrained(&local(dir.path()), &Default::default())
        .unwrap_err();
    assert!(
        matches!(&err, EncoderError::Checkpoint(CheckpointError::ShapeMismatch { tensor, .. }) if tensor == name),
        "{err}"
    );
    let dir = Checkpoint::of_fixture("tiny-bert-cls")
        .remove("classifier.weight")
        .insert_f32("classifier.weight", &[3, 32])
        .write();
    assert!(matches!(load_bert(dir.path()), Err(EncoderError::Checkpoint(CheckpointError::ShapeMismatch { .. }))));
}

#[test]
fn a_missing_config_field_is_named() {
    let dir = Checkpoint::of_fixture("tiny-bert-cls").without_config_field("num_attention_heads").write();
    let err = load_bert(dir.path()).unwrap_err();
    assert!(matches!(err, EncoderError::MissingConfigField { field: "num_attention_heads", .. }), "{err}");
    assert!(err.to_string().contains("num_attention_heads"));

    let dir = Checkpoint::of_fixture("tiny-distilbert-cls").without_config_field("dim").write();
    let err = EncoderClassifier::<Cpu>::from_pretrained(&local(dir.path()), &Default::default()).unwrap_err();
    assert!(matches!(err, EncoderError::MissingConfigField { field: "dim", .. }), "{err}");
}

#[test]
fn unsupported_or_inconsistent_configs_are_rejected() {
    let mut checkpoint = Checkpoint::of_fixture("tiny-bert-cls");
    checkpoint.config["model_type"] = "roberta".into();
    let dir = checkpoint.write();
    let err = EncoderClassifier::<Cpu>::from_pretrained(&local(dir.path()), &Default::default()).unwrap_err();
    assert!(
        matches!(err, EncoderError::UnsupportedArchitecture { ref model_type, .. } if model_type == "roberta"),
        "{err}"
    );
    // A BERT loader refuses a DistilBERT config instead of misreading it.
    let dir = Checkpoint::of_fixture("tiny-distilbert-cls").write();
    assert!(matches!(load_bert(dir.path()), Err(EncoderError::InvalidConfigField { field: "model_type", .. })));

    let mut checkpoint = Checkpoint::of_fixture("tiny-bert-cls");
    checkpoint.config["hidden_act"] = "quick_gelu".into();
    checkpoint.config["num_attention_heads"] = 5.into();
    let dir = checkpoint.write();
    assert!(matches!(load_bert(dir.path()), Err(EncoderError::InvalidConfigField { .. })));

    std::fs::write(dir.path().join("config.json"), "{ not json").unwrap();
    assert!(matches!(load_bert(dir.path()), Err(EncoderError::InvalidConfig { .. })));
}

#[test]
fn a_corrupt_or_absent_weights_file_is_a_typed_error() {
    let dir = Checkpoint::of_fixture("tiny-bert-cls").write();
    let weights = dir.path().join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&weights, &bytes).unwrap();
    assert!(matches!(load_bert(dir.path()), Err(EncoderError::Checkpoint(CheckpointError::InvalidSafetensors { .. }))));

    std::fs::write(&weights, b"\xff\xff\xff\xff\xff\xff\xff\x7fgarbage").unwrap();
    let err = load_bert(dir.path()).unwrap_err();
    assert!(matches!(err, EncoderError::Checkpoint(CheckpointError::InvalidSafetensors { .. })), "{err}");
    assert!(err.to_string().contains("model.safetensors"), "{err}");

    std::fs::remove_file(&weights).unwrap();
    let err = load_bert(dir.path()).unwrap_err();
    assert!(
        matches!(err, EncoderError::Hub(HubError::NoWeights { searched: WeightsSearch::Directory(_), .. })),
        "{err}"
    );
    assert!(err.to_string().contains("neither model.safetensors nor model.safetensors.index.json"), "{err}");
}

#[test]
fn an_extra_tensor_inside_the_model_is_an_error_but_other_heads_are_ignored() {
    let extra = "bert.encoder.layer.2.output.dense.bias";
    let dir = Checkpoint::of_fixture("tiny-bert-cls").insert_f32(extra, &[32]).write();
    match load_bert(dir.path()) {
        Err(EncoderError::Checkpoint(CheckpointError::UnexpectedTensors { tensors, .. })) => {
            assert_eq!(tensors, [TensorInfo { name: extra.into(), shape: vec![32] }])
        }
        other => panic!("expected UnexpectedTensors, got {other:?}"),
    }

    let dir = Checkpoint::of_fixture("tiny-bert-cls")
        .insert_f32("cls.predictions.bias", &[1000])
        .insert_f32("bert.embeddings.position_ids", &[1, 64])
        .write();
    let (model, report) =
        BertForSequenceClassification::<Cpu>::from_pretrained_with_report(&local(dir.path()), &Default::default())
            .unwrap();
    assert_eq!(report.ignored, ["bert.embeddings.position_ids", "cls.predictions.bias"]);
    assert!(report.initialised.is_empty());
    assert_logits_match_fixture(&model);
}

fn assert_logits_match_fixture(model: &BertForSequenceClassification<Cpu>) {
    let reference = fixture("tiny-bert-cls");
    let check = TensorCheck::compare(
        "logits",
        &tiny_bert_logits(model),
        reference.f32("logits").unwrap().1,
        1e-4,
        Tolerance::Absolute,
    );
    assert!(check.ok, "{check}");
}

#[test]
fn a_checkpoint_without_a_head_gets_a_fresh_one() {
    let dir = Checkpoint::of_fixture("tiny-distilbert-cls").remove("classifier.").remove("pre_classifier.").write();
    let (_, report) = DistilBertForSequenceClassification::<Cpu>::from_pretrained_with_report(
        &local(dir.path()),
        &Default::default(),
    )
    .unwrap();
    assert_eq!(
        report.initialised,
        ["pre_classifier.weight", "pre_classifier.bias", "classifier.weight", "classifier.bias"]
    );
    // Only the head may be missing: the last encoder layer may not.
    let dir = Checkpoint::of_fixture("tiny-distilbert-cls").remove("distilbert.transformer.layer.1.").write();
    let err = DistilBertForSequenceClassification::<Cpu>::from_pretrained(&local(dir.path()), &Default::default())
        .unwrap_err();
    assert!(matches!(err, EncoderError::Checkpoint(CheckpointError::MissingTensors { .. })), "{err}");
}

#[test]
fn bare_and_prefixed_checkpoints_load_into_both_model_kinds() {
    let device = Default::default();
    let prefixed = Checkpoint::of_fixture("tiny-bert-cls");
    let bare = Checkpoint::of_fixture("tiny-bert-cls").remove("classifier.").rename("bert.", "").write();
    let prefixed = prefixed.write();
    let batch = || token_batch::<Cpu>(&fixture("tiny-bert-cls"), &device);

    // A bare encoder from both: the classifier is ignored, the states are the same.
    let (from_prefixed, report) =
        BertModel::<Cpu>::from_pretrained_with_report(&local(prefixed.path()), &device).unwrap();
    assert_eq!(report.ignored, ["classifier.bias", "classifier.weight"]);
    let from_bare = BertModel::<Cpu>::from_pretrained(&local(bare.path()), &device).unwrap();
    assert_eq!(values(from_prefixed.encode(batch())), values(from_bare.encode(batch())));

    // A classifier from the bare one keeps its pooler and gets a fresh classifier.
    let (classifier, report) =
        BertForSequenceClassification::<Cpu>::from_pretrained_with_report(&local(bare.path()), &device).unwrap();
    assert_eq!(report.initialised, ["classifier.weight", "classifier.bias"]);
    assert_eq!(
        values(classifier.bert.pooler.forward(classifier.bert.encode(batch()))),
        values(from_bare.forward(batch()).pooler_output.unwrap())
    );
}

#[test]
fn legacy_layer_norm_names_load() {
    let dir = Checkpoint::of_fixture("tiny-bert-cls")
        .rename("LayerNorm.weight", "LayerNorm.gamma")
        .rename("LayerNorm.bias", "LayerNorm.beta")
        .write();
    assert_logits_match_fixture(&load_bert(dir.path()).unwrap());
}

#[test]
fn half_precision_checkpoints_load_as_f32() {
    let dir = Checkpoint::of_fixture("tiny-bert-cls").in_half_precision().write();
    let model = load_bert(dir.path()).unwrap();
    let weight = model.classifier.weight.val();
    assert_eq!(weight.dtype(), DType::F32);
    let reference = fixture("tiny-bert-cls");
    // f16 weights carry ~1e-3 relative error; the logits stay close but not at f32 precision.
    let check = TensorCheck::compare(
        "logits",
        &tiny_bert_logits(&model),
        reference.f32("logits").unwrap().1,
        1e-2,
        Tolerance::Absolute,
    );
    assert!(check.ok, "{check}");
}

#[test]
fn inputs_longer_than_the_position_table_are_rejected_before_the_forward_pass() {
    let device = Default::default();
    let model = load_bert(&fixture_dir("tiny-bert-cls").join("model")).unwrap();
    let long = burn::tensor::Tensor::<Cpu, 2, burn::tensor::Int>::zeros([1, 65], &device);
    let batch =
        polarity_core::TokenBatch { input_ids: long.clone(), attention_mask: long.clone(), token_type_ids: long };
    let err = model.validate(&batch).unwrap_err();
    assert!(err.to_string().contains("max_position_embeddings 64"), "{err}");
    assert!(model.validate(&token_batch(&fixture("tiny-bert-cls"), &device)).is_ok());
}

#[test]
fn sharded_checkpoints_load_like_single_files_and_broken_indexes_are_typed_errors() {
    let fixture_model = fixture_dir("tiny-bert-cls").join("model");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture_model.join("config.json"), dir.path().join("config.json")).unwrap();
    let shards =
        polarity_core::reference::write_sharded_copy(&fixture_model.join("model.safetensors"), dir.path(), 3).unwrap();
    assert_eq!(local(dir.path()).safetensors_files().unwrap(), shards);
    assert_logits_match_fixture(&load_bert(dir.path()).unwrap());
    let classifier = EncoderClassifier::<Cpu>::from_pretrained(&local(dir.path()), &Default::default()).unwrap();
    assert_eq!(classifier.architecture(), polarity_encoder::EncoderArchitecture::Bert);

    // A shard the index names but the folder lacks.
    std::fs::remove_file(&shards[2]).unwrap();
    let err = load_bert(dir.path()).unwrap_err();
    assert!(matches!(err, EncoderError::Hub(HubError::MissingLocalFile { .. })), "{err}");
    assert!(err.to_string().contains("model-00003-of-00003.safetensors"), "{err}");

    // An index without a weight map.
    std::fs::write(dir.path().join("model.safetensors.index.json"), "{\"metadata\": {}}").unwrap();
    let err = load_bert(dir.path()).unwrap_err();
    assert!(matches!(err, EncoderError::Hub(HubError::InvalidIndex(_))), "{err}");
    assert!(err.to_string().contains("weight_map"), "{err}");
}
