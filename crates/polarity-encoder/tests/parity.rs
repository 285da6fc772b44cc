//! The tiny random classifiers against transformers: logits, loss and gradients.

mod common;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
use common::{Cpu, Train, assert_all_ok, fixture, fixture_dir, labelled_batch, token_batch, values};
use polarity_core::reference::{TensorCheck, Tolerance};
use polarity_core::{ClassScorer, LabelledBatch};
use polarity_encoder::reference::{self, GRADIENT_TOLERANCE, LOGITS_TOLERANCE, LOSS_TOLERANCE};
use polarity_encoder::{
    BertForSequenceClassification, DistilBertForSequenceClassification, EncoderClassifier, HfModel,
};
use polarity_hub::RepoSource;

/// Logits and transformers' loss (mean cross-entropy over the two logits) of `model` on `batch`.
struct Output {
    output: Tensor<Train, 2>,
    loss: Tensor<Train, 1>,
}

fn forward<M: ClassScorer<Train>>(model: &M, batch: LabelledBatch<Train>) -> Output {
    let output = model.class_scores(batch.tokens);
    let loss = CrossEntropyLossConfig::new().init(&output.device()).forward(output.clone(), batch.labels);
    Output { output, loss }
}

/// Loads the fixture's model through the public API, runs forward + backward on an autodiff backend
/// and compares logits, loss and every listed gradient.
fn classifier_matches_fixture<M: HfModel<Train> + ClassScorer<Train>>(name: &str) {
    let fixture = fixture(name);
    let device = Default::default();
    let model = M::from_pretrained(&RepoSource::Local(fixture_dir(name).join("model")), &device).unwrap();
    let output = forward(&model, labelled_batch(&fixture, &device));

    let mut checks = vec![
        TensorCheck::compare(
            "logits",
            &values(output.output),
            fixture.f32("logits").unwrap().1,
            LOGITS_TOLERANCE,
            Tolerance::Absolute,
        ),
        TensorCheck::compare(
            "loss",
            &values(output.loss.clone()),
            fixture.f32("loss").unwrap().1,
            LOSS_TOLERANCE,
            Tolerance::Absolute,
        ),
    ];
    let gradients = model.hf_gradients(&output.loss.backward());
    let listed: Vec<&str> = fixture.names().into_iter().filter(|n| n.starts_with("grad.")).collect();
    assert!(listed.len() >= 3, "the fixture should list gradients: {listed:?}");
    for name in listed {
        let ours = gradients.get(&name["grad.".len()..]).unwrap_or_else(|| panic!("no gradient for {name}"));
        let ours: Vec<f32> = ours.iter::<f32>().collect();
        checks.push(TensorCheck::compare(
            name,
            &ours,
            fixture.f32(name).unwrap().1,
            GRADIENT_TOLERANCE,
            Tolerance::Relative,
        ));
    }
    assert_all_ok(&checks);
}

#[test]
fn tiny_bert_matches_transformers_logits_loss_and_gradients() {
    classifier_matches_fixture::<BertForSequenceClassification<Train>>("tiny-bert-cls");
}

#[test]
fn tiny_distilbert_matches_transformers_logits_loss_and_gradients() {
    classifier_matches_fixture::<DistilBertForSequenceClassification<Train>>("tiny-distilbert-cls");
}

#[test]
fn verify_checks_every_reference_tensor_of_the_classification_fixtures() {
    for name in ["tiny-bert-cls", "tiny-distilbert-cls"] {
        let checks = reference::verify(&fixture_dir(name), None).unwrap();
        let mut expected: Vec<&str> = vec!["logits", "loss"];
        let fixture = fixture(name);
        expected.extend(fixture.names().into_iter().filter(|n| n.starts_with("grad.")));
        let checked: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(checked, expected, "{name}");
        println!("-- {name}");
        assert_all_ok(&checks);
    }
}

/// Padding must not change a row's logits: each row alone, cut to its real tokens, scores the same as
/// in the padded batch.
#[test]
fn padded_rows_score_like_unpadded_ones() {
    for name in ["tiny-bert-cls", "tiny-distilbert-cls"] {
        let fixture = fixture(name);
        let device = Default::default();
        let source = RepoSource::Local(fixture_dir(name).join("model"));
        let model = EncoderClassifier::<Cpu>::from_pretrained(&source, &device).unwrap();
        let batch = token_batch::<Cpu>(&fixture, &device);
        let padded = values(model.forward(batch.clone()));
        let lengths: Vec<i64> = batch.attention_mask.clone().sum_dim(1).into_data().iter::<i64>().collect();
        let [rows, seq_len] = batch.dims();
        assert!(lengths.iter().any(|&l| (l as usize) < seq_len), "{name} should have padded rows");
        for (row, &length) in lengths.iter().enumerate() {
            let cut = |t: Tensor<Cpu, 2, Int>| t.slice([row..row + 1, 0..length as usize]);
            let alone = polarity_core::TokenBatch {
                input_ids: cut(batch.input_ids.clone()),
                attention_mask: cut(batch.attention_mask.clone()),
                token_type_ids: cut(batch.token_type_ids.clone()),
            };
            let logits = values(model.forward(alone));
            let classes = padded.len() / rows;
            let check = TensorCheck::compare(
                format!("{name} row {row}"),
                &logits,
                &padded[row * classes..(row + 1) * classes],
                1e-5,
                Tolerance::Absolute,
            );
            assert!(check.ok, "{check}");
        }
    }
}

/// Dropout is active on an autodiff backend and a no-op on the inner one (burn's rule), and it is
/// the configured probability that decides.
#[test]
fn dropout_applies_only_when_training() {
    let name = "tiny-bert-cls";
    let fixture = fixture(name);
    let device = Default::default();
    let config_path = fixture_dir(name).join("model/config.json");
    let config = <polarity_encoder::BertConfig as polarity_encoder::HfConfig>::from_hf_file(&config_path)
        .unwrap()
        .with_hidden_dropout_prob(0.5);
    let weights = fixture_dir(name).join("model/model.safetensors");
    let (model, _) =
        BertForSequenceClassification::<Train>::from_config(&config, &device).load_safetensors(&[weights]).unwrap();
    let reference = fixture.f32("logits").unwrap().1;

    let training = values(model.forward(token_batch(&fixture, &device)));
    let eval = values(burn::module::AutodiffModule::valid(&model).forward(token_batch::<Cpu>(&fixture, &device)));
    assert!(!TensorCheck::compare("train", &training, reference, LOGITS_TOLERANCE, Tolerance::Absolute).ok);
    assert_all_ok(&[TensorCheck::compare("eval", &eval, reference, LOGITS_TOLERANCE, Tolerance::Absolute)]);
}

/// Mixed precision (the products in bf16 or f16, everything else f32) stays within half precision's
/// rounding of transformers' f32 logits, loss and gradients, and really changes the numbers. f16
/// needs its loss scaled (as the trainer does): these gradients are ~1e-5, where f16 has only a few
/// significant bits left.
#[test]
fn half_precision_products_stay_close_to_transformers() {
    use burn::tensor::FloatDType;
    use polarity_kernels::autocast::autocast;
    // bf16 keeps 8 bits of mantissa (relative rounding 2^-9), f16 11 (2^-12).
    for (dtype, logits_tolerance, gradient_tolerance, loss_scale) in
        [(FloatDType::BF16, 2e-2, 0.1, 1.0), (FloatDType::F16, 3e-3, 2e-2, 65536.0)]
    {
        for name in ["tiny-bert-cls", "tiny-distilbert-cls"] {
            let fixture = fixture(name);
            let device = Default::default();
            let source = RepoSource::Local(fixture_dir(name).join("model"));
            let model = EncoderClassifier::<Train>::from_pretrained(&source, &device).unwrap();
            let output = autocast(Some(dtype), || forward(&model, labelled_batch(&fixture, &device)));
            let logits = values(output.output.clone());
            let expected = fixture.f32("logits").unwrap().1;
            let check = TensorCheck::compare("logits", &logits, expected, logits_tolerance, Tolerance::Absolute);
            assert!(check.ok && check.max_abs_err > 1e-6, "{name} {dtype:?}: {check}");
            let loss = TensorCheck::compare(
                "loss",
                &values(output.loss.clone()),
                fixture.f32("loss").unwrap().1,
                logits_tolerance,
                Tolerance::Absolute,
            );
            assert!(loss.ok, "{name} {dtype:?}: {loss}");
            let gradients = model.hf_gradients(&output.loss.mul_scalar(loss_scale).backward());
            for listed in fixture.names().into_iter().filter(|n| n.starts_with("grad.")) {
                let ours: Vec<f32> =
                    gradients[&listed["grad.".len()..]].iter::<f32>().map(|g| g / loss_scale as f32).collect();
                let check = TensorCheck::compare(
                    listed,
                    &ours,
                    fixture.f32(listed).unwrap().1,
                    gradient_tolerance,
                    Tolerance::Relative,
                );
                assert!(check.ok, "{name} {dtype:?}: {check}");
            }
        }
    }
}
