//! Classifiers built from the shared hub cache's `config.json` alone (BERT-base and DistilBERT, whose
//! weights the cache does not hold), with random weights at their real shapes.

mod common;

use burn::prelude::*;
use common::{Fast, use_shared_hub_cache};
use polarity_core::TokenBatch;
use polarity_encoder::{CONFIG_FILE, EncoderArchitecture, EncoderClassifier, HfConfigJson};
use polarity_hub::{RepoKind, RepoSource};

fn config(model: &str) -> HfConfigJson {
    use_shared_hub_cache();
    let path = RepoSource::parse(model, RepoKind::Model).file(CONFIG_FILE).expect("config.json in ../shared/hf");
    HfConfigJson::read(&path).unwrap()
}

/// `*ForSequenceClassification`'s parameters with a two-label head, counted from the architecture.
fn expected_parameters(
    vocab: usize,
    positions: usize,
    token_types: usize,
    width: usize,
    ffn: usize,
    layers: usize,
    head_dense: bool,
) -> usize {
    let linear = |d_in: usize, d_out: usize| d_in * d_out + d_out;
    let layer_norm = 2 * width;
    let embeddings = (vocab + positions + token_types) * width + layer_norm;
    let layer = 4 * linear(width, width) + linear(width, ffn) + linear(ffn, width) + 2 * layer_norm;
    // BERT's pooler and DistilBERT's pre_classifier are both one `width -> width` dense layer.
    let head = if head_dense { linear(width, width) } else { 0 } + linear(width, 2);
    embeddings + layers * layer + head
}

/// `[CLS] ... [SEP]` and a right-padded shorter review.
fn batch<B: Backend>(device: &B::Device) -> TokenBatch<B> {
    let input_ids = Tensor::<B, 2, Int>::from_ints(
        [[101, 2307, 2143, 1010, 2200, 4658, 999, 102], [101, 10634, 102, 0, 0, 0, 0, 0]],
        device,
    );
    let attention_mask = Tensor::<B, 2, Int>::from_ints([[1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0, 0]], device);
    let token_type_ids = Tensor::<B, 2, Int>::zeros([2, 8], device);
    TokenBatch { input_ids, attention_mask, token_type_ids }
}

fn check_random_classifier(model: &str, architecture: EncoderArchitecture, parameters: usize) {
    let device = Default::default();
    let _draws = polarity_core::backend::seeded_draws();
    Fast::seed(&device, 42);
    let (classifier, report) = EncoderClassifier::<Fast>::from_config_random(&config(model), &device).unwrap();
    assert_eq!(classifier.architecture(), architecture);
    assert!(report.loaded.is_empty() && report.ignored.is_empty());
    let hf_parameters = classifier.hf_parameters();
    assert_eq!(report.initialised.len(), hf_parameters.len());
    let counted: usize = hf_parameters.iter().map(|(_, shape)| shape.iter().product::<usize>()).sum();
    assert_eq!(counted, parameters, "{model}");

    let batch = batch::<Fast>(&device);
    classifier.validate(&batch).unwrap();
    let logits = classifier.forward(batch);
    assert_eq!(logits.dims(), [2, 2]);
    let values: Vec<f32> = logits.into_data().iter::<f32>().collect();
    assert!(values.iter().all(|v| v.is_finite()), "{values:?}");
    // Every weight is random: no two logits coincide.
    assert!(values.windows(2).all(|w| w[0] != w[1]), "{values:?}");
    assert_eq!(classifier.num_params(), parameters, "{model}");
}

#[test]
fn random_bert_base_has_its_real_shape_and_runs() {
    let parameters = expected_parameters(30522, 512, 2, 768, 3072, 12, true);
    assert_eq!(parameters, 109_483_778);
    check_random_classifier("google-bert/bert-base-uncased", EncoderArchitecture::Bert, parameters);
}

#[test]
fn random_distilbert_has_its_real_shape_and_runs() {
    let parameters = expected_parameters(30522, 512, 0, 768, 3072, 6, true);
    assert_eq!(parameters, 66_955_010);
    check_random_classifier("distilbert/distilbert-base-uncased", EncoderArchitecture::DistilBert, parameters);
}

#[test]
fn random_classifiers_follow_the_seed_and_the_initializer_range() {
    let text = r#"{"model_type": "bert", "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 1,
                   "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 16,
                   "initializer_range": 0.5, "num_labels": 3}"#;
    let config = HfConfigJson::parse(text, "config.json".as_ref()).unwrap();
    let device = Default::default();
    let weights = |seed: u64| {
        let _draws = polarity_core::backend::seeded_draws();
        Fast::seed(&device, seed);
        let (classifier, _) = EncoderClassifier::<Fast>::from_config_random(&config, &device).unwrap();
        let EncoderClassifier::Bert(bert) = classifier else { panic!("a BERT config builds a BERT") };
        assert_eq!(bert.classifier.weight.val().dims(), [16, 3]);
        let bias: Vec<f32> = bert.classifier.bias.as_ref().unwrap().val().into_data().iter::<f32>().collect();
        assert!(bias.iter().all(|b| *b == 0.0));
        let table: Vec<f32> = bert.bert.embeddings.word_embeddings.weight.val().into_data().iter::<f32>().collect();
        assert!(table[..16].iter().all(|v| *v == 0.0), "the padding row is zero");
        table
    };
    let first = weights(7);
    assert_eq!(first, weights(7));
    assert_ne!(first, weights(8));
    let drawn = &first[16..];
    let std = (drawn.iter().map(|v| v * v).sum::<f32>() / drawn.len() as f32).sqrt();
    assert!((std - 0.5).abs() < 0.05, "std {std}");
}
