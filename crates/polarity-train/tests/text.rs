//! The text-level API (polarity-core's `FineTuner` and `Classifier`) with the real MiniLM tokenizer,
//! on synthetic sentences and on a few hundred IMDB reviews from the shared hub cache (offline).

mod common;

use common::{B, bag, serial};
use polarity_core::{Classifier, Example, FineTuner, Sentiment};
use polarity_data::{ImdbDataset, Split, hub};
use polarity_tokenize::{Encode, HfTokenizer};
use polarity_train::{
    CrossEntropyObjective, TextFineTuner, TrainError, Trainer, TrainerConfig, Warmup, evaluate, tokenize_examples,
};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

const MINILM: &str = "sentence-transformers/all-MiniLM-L6-v2";

fn use_shared_cache() {
    // SAFETY: every test of this binary sets the same values before reading them.
    unsafe {
        std::env::set_var("HF_HOME", concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/hf"));
        std::env::set_var("HF_HUB_OFFLINE", "1");
    }
}

fn tokenizer(max_length: usize) -> HfTokenizer {
    use_shared_cache();
    HfTokenizer::from_pretrained(MINILM, max_length).unwrap()
}

fn sentences(n: usize, seed: u64) -> ImdbDataset {
    let mut rng = StdRng::seed_from_u64(seed);
    let fillers = ["the", "film", "plot", "actors", "was", "really", "quite", "story", "ending", "music"];
    let examples = (0..n)
        .map(|i| {
            let label = if i % 2 == 0 { Sentiment::Positive } else { Sentiment::Negative };
            let cue = match label {
                Sentiment::Positive => ["wonderful", "great", "brilliant", "moving"].choose(&mut rng).unwrap(),
                Sentiment::Negative => ["terrible", "awful", "boring", "dreadful"].choose(&mut rng).unwrap(),
            };
            let mut words: Vec<&str> =
                (0..rng.random_range(3..9)).map(|_| *fillers.choose(&mut rng).unwrap()).collect();
            let at = rng.random_range(0..=words.len());
            words.insert(at, cue);
            Example::new(words.join(" "), label)
        })
        .collect();
    ImdbDataset::new("synthetic sentences", examples).unwrap()
}

#[test]
fn the_fine_tuner_trains_a_text_classifier() {
    let _serial = serial();
    let tokenizer = tokenizer(64);
    let vocab = tokenizer.vocab_size();
    let config = TrainerConfig::default()
        .with_epochs(4)
        .with_batch_size(8)
        .with_learning_rate(0.05)
        .with_warmup(Warmup::Ratio(0.1))
        .with_progress(false);
    let fine_tuner = TextFineTuner {
        trainer: Trainer::<B>::new(config, Default::default()),
        model: bag(vocab, 8, 0.1, 1),
        objective: CrossEntropyObjective::new(tokenizer.pad_id()),
        tokenizer,
    };
    let tuned = fine_tuner.fine_tune(&sentences(128, 1), Some(&sentences(64, 2))).unwrap();
    assert_eq!(tuned.summary.history.len(), 4);
    let last = tuned.summary.history.last().unwrap();
    assert!(last.eval_accuracy.unwrap() >= 0.9, "{:?}", tuned.summary.history);

    let predictions = tuned.classifier.predict(&["a wonderful story", "the plot was dreadful"]).unwrap();
    assert_eq!(predictions[0].label, Sentiment::Positive);
    assert_eq!(predictions[1].label, Sentiment::Negative);
    assert!(predictions.iter().all(|p| (0.5..=1.0).contains(&p.probability)));
    assert!(tuned.classifier.predict(&[]).unwrap().is_empty());

    // An empty training set is a typed error, not a panic.
    let empty = EmptySource;
    let Err(err) = fine_tuner.fine_tune(&empty, Some(&sentences(4, 3))) else {
        panic!("an empty training set trained")
    };
    assert!(matches!(err, TrainError::EmptyDataset { which: "training set" }), "{err:?}");
}

struct EmptySource;

impl burn::data::dataset::Dataset<Example> for EmptySource {
    fn get(&self, _index: usize) -> Option<Example> {
        None
    }
    fn len(&self) -> usize {
        0
    }
}

#[test]
fn a_bag_of_embeddings_learns_from_a_few_hundred_imdb_reviews() {
    let _serial = serial();
    let tokenizer = tokenizer(96);
    // One split read (the parquet reader is slow in the dev profile), cut into train and test.
    let reviews = hub::load_split(hub::IMDB_REPO, Split::Test).unwrap().balanced_subset(300, 42).unwrap();
    let (train, test) = reviews.split_validation(1.0 / 3.0, 42).unwrap();
    let train = tokenize_examples(&tokenizer, &train).unwrap();
    let test = tokenize_examples(&tokenizer, &test).unwrap();
    assert!(train.iter().all(|e| e.tokens.len() <= 96));

    let objective = CrossEntropyObjective::new(tokenizer.pad_id());
    let config = TrainerConfig::default()
        .with_epochs(3)
        .with_batch_size(16)
        .with_learning_rate(0.02)
        .with_warmup(Warmup::Ratio(0.1))
        .with_progress(false);
    let outcome = Trainer::<B>::new(config, Default::default())
        .fit(bag(tokenizer.vocab_size(), 8, 0.1, 2), &objective, &train, Some(&test))
        .unwrap();
    let history = &outcome.history;
    assert!(history[2].train_loss < history[0].train_loss, "{history:?}");
    assert!(history.iter().all(|r| (0.0..=1.0).contains(&r.eval_accuracy.unwrap())));
    // The returned model is the best epoch's: evaluating it again gives that epoch's accuracy.
    let best = outcome.best_epoch.unwrap();
    let evaluation =
        evaluate(&objective, &burn::module::AutodiffModule::valid(&outcome.model), &test, 64, &Default::default())
            .unwrap();
    assert_eq!(Some(evaluation.report.accuracy), history[best - 1].eval_accuracy);
    assert_eq!(evaluation.report.total, 100);
    assert!(evaluation.samples_per_second > 0.0);
}
