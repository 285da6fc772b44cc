//! Saving as a Hugging Face directory: the same tensor names, layouts and bytes transformers wrote,
//! a config transformers can build the model from, and identical logits when loaded back.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{Cpu, fixture, fixture_dir, token_batch, values};
use polarity_encoder::EncoderClassifier;
use polarity_hub::RepoSource;
use safetensors::SafeTensors;
use serde_json::Value;

/// Each tensor's shape and raw bytes, by name.
type Tensors = BTreeMap<String, (Vec<usize>, Vec<u8>)>;

/// The tensors of a safetensors file and its metadata `format`.
fn tensors(path: &Path) -> (Tensors, Option<String>) {
    let bytes = std::fs::read(path).unwrap();
    let (_, metadata) = SafeTensors::read_metadata(&bytes).unwrap();
    let format = metadata.metadata().as_ref().and_then(|m| m.get("format").cloned());
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let tensors =
        file.tensors().into_iter().map(|(name, view)| (name, (view.shape().to_vec(), view.data().to_vec()))).collect();
    (tensors, format)
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn round_trips(name: &str, architecture: &str, model_type: &str, shape_fields: &[&str]) {
    let original_dir = fixture_dir(name).join("model");
    let device = Default::default();
    let model = EncoderClassifier::<Cpu>::from_pretrained(&RepoSource::Local(original_dir.clone()), &device).unwrap();

    let out = tempfile::tempdir().unwrap();
    let vocab = out.path().join("vocab-source.txt");
    std::fs::write(&vocab, "[PAD]\n[UNK]\n").unwrap();
    let saved = out.path().join("saved");
    model.save_pretrained(&saved, std::slice::from_ref(&vocab)).unwrap();
    // Saving again over the same directory replaces the files.
    model.save_pretrained(&saved, &[]).unwrap();

    // Tensors: transformers' names, [out, in] Linear weights, bit-identical values, format "pt".
    let (expected, _) = tensors(&original_dir.join("model.safetensors"));
    let (written, format) = tensors(&saved.join("model.safetensors"));
    assert_eq!(format.as_deref(), Some("pt"), "transformers rejects safetensors whose format is not pt");
    assert_eq!(written.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>());
    for (key, (shape, bytes)) in &expected {
        assert_eq!(&written[key].0, shape, "{key}");
        assert!(&written[key].1 == bytes, "{key} values differ");
    }

    // Config: what transformers needs to build the class, the sentiment label maps.
    let config = read_json(&saved.join("config.json"));
    let original = read_json(&original_dir.join("config.json"));
    assert_eq!(config["architectures"], serde_json::json!([architecture]));
    assert_eq!(config["model_type"], model_type);
    assert_eq!(config["id2label"], serde_json::json!({"0": "negative", "1": "positive"}));
    assert_eq!(config["label2id"], serde_json::json!({"negative": 0, "positive": 1}));
    for field in shape_fields {
        assert_eq!(config[field], original[field], "{field}");
    }
    assert_eq!(std::fs::read_to_string(saved.join("vocab-source.txt")).unwrap(), "[PAD]\n[UNK]\n");

    // Loaded back, the model computes the same logits, bit for bit.
    let reloaded = EncoderClassifier::<Cpu>::from_pretrained(&RepoSource::Local(saved), &device).unwrap();
    let batch = token_batch::<Cpu>(&fixture(name), &device);
    assert_eq!(values(model.forward(batch.clone())), values(reloaded.forward(batch)));
}

#[test]
fn bert_classifier_round_trips_through_a_transformers_directory() {
    round_trips(
        "tiny-bert-cls",
        "BertForSequenceClassification",
        "bert",
        &[
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
            "hidden_act",
            "layer_norm_eps",
            "pad_token_id",
            "initializer_range",
        ],
    );
}

#[test]
fn distilbert_classifier_round_trips_through_a_transformers_directory() {
    round_trips(
        "tiny-distilbert-cls",
        "DistilBertForSequenceClassification",
        "distilbert",
        &[
            "vocab_size",
            "dim",
            "n_layers",
            "n_heads",
            "hidden_dim",
            "max_position_embeddings",
            "activation",
            "sinusoidal_pos_embds",
            "pad_token_id",
            "seq_classif_dropout",
        ],
    );
}

#[test]
fn a_missing_tokenizer_file_is_a_save_error() {
    let model = EncoderClassifier::<Cpu>::from_pretrained(
        &RepoSource::Local(fixture_dir("tiny-bert-cls").join("model")),
        &Default::default(),
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    let err = model.save_pretrained(out.path(), &[out.path().join("no-such-tokenizer.json")]).unwrap_err();
    assert!(
        matches!(err, polarity_encoder::EncoderError::Checkpoint(polarity_encoder::CheckpointError::Save { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("no-such-tokenizer.json"), "{err}");
}
