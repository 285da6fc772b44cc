//! The real all-MiniLM-L6-v2, resolved offline through the shared hub cache, against transformers.

mod common;

use burn::backend::NdArray;
use burn::prelude::*;
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

/// Inference on the CPU default runs a right-padded batch on its real tokens alone (packed); the
/// padded layout (ndarray, burn's composed attention) gives the same states at every real position
/// and the same pooler output.
#[test]
fn packed_inference_matches_the_padded_layout() {
    let source = minilm();
    let fixture = fixture(FIXTURE);
    let device = Default::default();
    // The fixture's reviews cut to different lengths and right-padded with [PAD] (id 0).
    let lengths = [128usize, 100, 61, 9, 128, 77, 2, 31];
    let batch = token_batch::<Fast>(&fixture, &device);
    let [rows, seq_len] = batch.dims();
    let keep: Vec<i64> = lengths.iter().flat_map(|&len| (0..seq_len).map(move |j| i64::from(j < len))).collect();
    let attention_mask = Tensor::<Fast, 2, Int>::from_data(TensorData::new(keep, [rows, seq_len]), &device);
    let input_ids = batch.input_ids * attention_mask.clone();
    let padded = polarity_core::TokenBatch { token_type_ids: input_ids.zeros_like(), input_ids, attention_mask };
    let on_ndarray = |t: &Tensor<Fast, 2, Int>| Tensor::<NdArray, 2, Int>::from_data(t.to_data(), &Default::default());
    let reference_batch = polarity_core::TokenBatch {
        input_ids: on_ndarray(&padded.input_ids),
        attention_mask: on_ndarray(&padded.attention_mask),
        token_type_ids: on_ndarray(&padded.token_type_ids),
    };

    let packed = BertModel::<Fast>::from_pretrained(&source, &device).unwrap().forward(padded);
    let reference = BertModel::<NdArray>::from_pretrained(&source, &Default::default()).unwrap();
    let reference = reference.forward(reference_batch);

    let width = packed.last_hidden_state.dims()[2];
    let is_real = |position: usize| position % seq_len < lengths[position / seq_len];
    let real = |values: Vec<f32>| -> Vec<f32> {
        values.chunks(width).enumerate().filter(|(i, _)| is_real(*i)).flat_map(|(_, row)| row.to_vec()).collect()
    };
    let ours = values(packed.last_hidden_state);
    let padding_is_zero = ours.chunks(width).enumerate().all(|(i, row)| is_real(i) || row.iter().all(|v| *v == 0.0));
    assert!(padding_is_zero, "the packed path leaves zeros at padded positions");
    let checks = [
        TensorCheck::compare(
            "last_hidden_state",
            &real(ours),
            &real(values(reference.last_hidden_state)),
            1e-5,
            Tolerance::Absolute,
        ),
        TensorCheck::compare(
            "pooler_output",
            &values(packed.pooler_output.unwrap()),
            &values(reference.pooler_output.unwrap()),
            1e-5,
            Tolerance::Absolute,
        ),
    ];
    assert_all_ok(&checks);
}
