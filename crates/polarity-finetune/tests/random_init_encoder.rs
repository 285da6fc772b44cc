//! `WeightInit` on the encoder recipe against the shared hub cache, which holds BERT-base's and DistilBERT's
//! config and tokenizer but not their weights.

use std::error::Error;
use std::path::Path;
use std::sync::Once;

use burn::backend::{Autodiff, NdArray};
use polarity_core::backend::FlexBackend;
use polarity_core::{Example, Sentiment};
use polarity_data::ImdbDataset;
use polarity_finetune::{DataConfig, EncoderFineTune, ExperimentData, FinetuneError, WeightInit};
use polarity_hub::{HubError, WeightsSearch};

const SHARED_HF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/hf");

fn use_shared_hub_cache() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: every test calls this first; `Once` blocks them until the variables are set, and nothing
        // writes the environment afterwards.
        unsafe {
            std::env::set_var("HF_HOME", Path::new(SHARED_HF));
            std::env::set_var("HF_HUB_OFFLINE", "1");
            std::env::remove_var("HF_HUB_CACHE");
        }
    });
}

/// The error and its sources, one line each.
fn chain(error: &dyn Error) -> String {
    let mut lines = vec![error.to_string()];
    let mut source = error.source();
    while let Some(cause) = source {
        lines.push(cause.to_string());
        source = cause.source();
    }
    lines.join("\n")
}

#[test]
fn pretrained_models_without_weights_are_a_clear_error() {
    use_shared_hub_cache();
    let device = Default::default();
    for (model, canonical) in [
        ("bert-base-uncased", "google-bert/bert-base-uncased"),
        ("distilbert-base-uncased", "distilbert/distilbert-base-uncased"),
        ("google-bert/bert-base-uncased", "google-bert/bert-base-uncased"),
    ] {
        let recipe = EncoderFineTune::new(model);
        assert_eq!(recipe.init, WeightInit::Pretrained);
        let err = recipe.load::<NdArray>(&device).unwrap_err();
        let message = chain(&err);
        println!("{message}");
        let FinetuneError::NoWeights { model: named, source } = &err else { panic!("{err:?}") };
        assert_eq!(named, model);
        assert!(
            matches!(source.as_ref(), HubError::NoWeights { model, searched: WeightsSearch::OfflineCache(_) } if model == canonical),
            "{source:?}"
        );
        assert!(message.contains(&format!("model {model} has no pretrained weights")), "{message}");
        assert!(message.contains("WeightInit::Random"), "{message}");
        assert!(message.contains(&format!("no weights for {canonical}: neither model.safetensors nor")), "{message}");
    }
}

fn reviews(texts: &[(&str, Sentiment)]) -> ImdbDataset {
    let examples = texts.iter().map(|(text, label)| Example { text: text.to_string(), label: *label, rating: None });
    ImdbDataset::new("reviews", examples.collect()).unwrap()
}

fn train_reviews() -> ImdbDataset {
    reviews(&[
        ("A quiet, moving film with a wonderful cast.", Sentiment::Positive),
        ("Dull and far too long; I nearly left.", Sentiment::Negative),
        ("One of the best films of the year.", Sentiment::Positive),
        ("The plot makes no sense and the acting is wooden.", Sentiment::Negative),
    ])
}

fn one_step(recipe: EncoderFineTune) -> EncoderFineTune {
    let trainer = recipe.trainer.clone().with_epochs(1).with_batch_size(4).with_eval_batch_size(4).with_progress(false);
    recipe.with_max_length(32).with_trainer(trainer)
}

#[test]
fn random_distilbert_fine_tunes_from_its_config_alone() {
    use_shared_hub_cache();
    let recipe = one_step(EncoderFineTune::new("distilbert-base-uncased").with_init(WeightInit::Random));
    let (_, report) = recipe.load::<NdArray>(&Default::default()).unwrap();
    assert!(report.loaded.is_empty());
    assert_eq!(report.initialised.len(), 104, "{:?}", report.initialised);

    let tuned = recipe.fine_tune_on::<Autodiff<FlexBackend>>(&Default::default(), &train_reviews(), None).unwrap();
    assert_eq!(tuned.summary.global_steps, 1);
    let predictions = polarity_core::Classifier::predict(&tuned.classifier, &["A fine film."]).unwrap();
    assert_eq!(predictions.len(), 1);
}

#[test]
fn random_runs_report_no_loaded_tensors() {
    use_shared_hub_cache();
    // MiniLM has weights; Random must not read them.
    let recipe = one_step(EncoderFineTune::new("sentence-transformers/all-MiniLM-L6-v2").with_init(WeightInit::Random));
    let test = reviews(&[("Great.", Sentiment::Positive), ("Awful.", Sentiment::Negative)]);
    let data = ExperimentData::new(DataConfig::imdb(4, 2), train_reviews(), None, test);
    let experiment = recipe.run_on::<Autodiff<FlexBackend>>(&Default::default(), "flex (cpu)", &data).unwrap();
    let model = &experiment.report.model;
    assert_eq!(model.init, WeightInit::Random);
    assert_eq!(model.tensors_loaded, Some(0));
    assert_eq!(model.architecture, "bert");
    assert_eq!(model.tensors_initialised.len(), 6 * 16 + 5 + 2 + 2);
    assert_eq!(experiment.report.training.global_steps, 1);
}
