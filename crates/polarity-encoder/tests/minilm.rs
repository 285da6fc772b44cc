//! The real all-MiniLM-L6-v2, resolved offline through the shared hub cache, against transformers.

mod common;

use common::{Fast, assert_all_ok, fixture, fixture_dir, token_batch, use_shared_hub_cache, values};
use polarity_core::ClassScorer;
use polarity_core::reference::{TensorCheck, Tolerance};
use polarity_encoder::reference::{self, HIDDEN_STATE_TOLERANCE};
use polarity_encoder::{BertForSequenceClassification, BertModel, EncoderClassifier, HfModel, l2_normalize, mean_pool};
use polarity_hub::{RepoKind, RepoSource};

const FIXTURE: &str = "minilm-imdb-128";

fn minilm() -> RepoSource {
    use_shared_hub_cache();
    let fixture = fixture(FIXTURE);
    let model_id = fixture.meta["model_id"].as_str().expect("meta.json names the model");
    RepoSource::parse(model_id, RepoKind::Model)
}

#[test]
fn minilm_hidden_states_match_transformers() {
    let source = minilm();
    let fixture = fixture(FIXTURE);
    let device = Default::default();
    let model = BertModel::<Fast>::from_pretrained(&source, &device).unwrap();
    let batch = token_batch::<Fast>(&fixture, &device);
    model.validate(&batch).unwrap();
    let mask = batch.attention_mask.clone();
    let output = model.forward(batch);

    // Only real tokens are compared: padded positions' states are meaningless (and differ by backend).
    let (shape, reference) = fixture.f32("last_hidden_state").unwrap();
    let width = shape[2];
    let mask_values: Vec<i64> = mask.to_data().iter::<i64>().collect();
    let real = |values: &[f32]| -> Vec<f32> {
        values.chunks(width).zip(&mask_values).filter(|(_, m)| **m == 1).flat_map(|(r, _)| r.to_vec()).collect()
    };
    let ours = values(output.last_hidden_state.clone());
    assert_eq!(ours.len(), reference.len());
    let pooled = l2_normalize(mean_pool(output.last_hidden_state, mask));
    let checks = [
        TensorCheck::compare(
            "last_hidden_state",
            &real(&ours),
            &real(reference),
            HIDDEN_STATE_TOLERANCE,
            Tolerance::Absolute,
        ),
        TensorCheck::compare(
            "pooler_output",
            &values(output.pooler_output.expect("BERT has a pooler")),
            fixture.f32("pooler_output").unwrap().1,
            HIDDEN_STATE_TOLERANCE,
            Tolerance::Absolute,
        ),
        TensorCheck::compare(
            "mean_pooled_normalized",
            &values(pooled),
            fixture.f32("mean_pooled_normalized").unwrap().1,
            HIDDEN_STATE_TOLERANCE,
            Tolerance::Absolute,
        ),
    ];
    assert_all_ok(&checks);
}

#[test]
fn verify_resolves_the_model_id_through_the_hub_cache() {
    use_shared_hub_cache();
    let device = Default::default();
    let checks = reference::verify_on::<burn::backend::Autodiff<Fast>>(&fixture_dir(FIXTURE), None, &device).unwrap();
    let names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["last_hidden_state", "pooler_output", "mean_pooled_normalized"]);
    assert_all_ok(&checks);
}

/// A bare encoder checkpoint becomes a classifier with transformers' fresh head: N(0, 0.02) weights,
/// zero bias; its pooler and everything else come from the checkpoint, its `position_ids` buffer is
/// skipped.
#[test]
fn minilm_loads_as_a_classifier_with_a_fresh_head() {
    let source = minilm();
    let device = Default::default();
    let (model, report) = BertForSequenceClassification::<Fast>::from_pretrained_with_report(&source, &device).unwrap();
    assert_eq!(report.initialised, ["classifier.weight", "classifier.bias"]);
    assert_eq!(report.ignored, ["embeddings.position_ids"]);
    assert!(report.loaded.contains(&"bert.pooler.dense.weight".to_string()));
    assert_eq!(report.loaded.len() + report.initialised.len(), model.hf_parameters().len());

    let weight = values(model.classifier.weight.val());
    let std = (weight.iter().map(|w| w * w).sum::<f32>() / weight.len() as f32).sqrt();
    assert!((0.015..0.025).contains(&std), "fresh classifier weights should be N(0, 0.02), std {std}");
    assert!(values(model.classifier.bias.as_ref().unwrap().val()).iter().all(|b| *b == 0.0));

    let logits = model.class_scores(token_batch(&fixture(FIXTURE), &device));
    assert_eq!(logits.dims(), [8, 2]);
    assert!(values(logits).iter().all(|v| v.is_finite()));
}

/// The fine-tuning starting point round-trips: saved with its tokenizer files, reloaded through the
/// generic loader, it scores the fixture identically.
#[test]
fn minilm_classifier_saves_with_its_tokenizer_and_reloads() {
    let source = minilm();
    let device = Default::default();
    let model = EncoderClassifier::<Fast>::from_pretrained(&source, &device).unwrap();
    let tokenizer_files: Vec<_> =
        ["tokenizer.json", "tokenizer_config.json", "vocab.txt"].iter().map(|f| source.file(f).unwrap()).collect();
    let dir = tempfile::tempdir().unwrap();
    model.save_pretrained(dir.path(), &tokenizer_files).unwrap();
    for file in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt"] {
        assert!(dir.path().join(file).is_file(), "{file} should be saved");
    }
    let reloaded =
        EncoderClassifier::<Fast>::from_pretrained(&RepoSource::Local(dir.path().to_path_buf()), &device).unwrap();
    let batch = token_batch::<Fast>(&fixture(FIXTURE), &device);
    assert_eq!(values(model.forward(batch.clone())), values(reloaded.forward(batch)));
}
