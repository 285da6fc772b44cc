//! The experiment's data: seeded balanced subsets of IMDB's train and test splits.

use std::time::Instant;

use polarity_data::{ImdbDataset, Split, hub};
use polarity_tokenize::{Encode, TokenizedExample};
use polarity_train::tokenize_examples;
use serde::{Deserialize, Serialize};

use crate::FinetuneError;
use crate::report::DataReport;

/// Which reviews an experiment trains, selects and tests on.
///
/// Every subset is label-balanced and drawn with `seed`, so two recipes given the same `DataConfig`
/// see the same reviews; the validation subset comes from the train split and is disjoint from the
/// training subset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataConfig {
    /// Hub dataset id with `stanfordnlp/imdb`'s parquet layout, or a local directory with that layout.
    pub dataset: String,
    /// Training reviews (from the train split).
    pub train_size: usize,
    /// Reviews held out of the train split to pick the best epoch; 0 picks it on the test subset.
    pub validation_size: usize,
    /// Test reviews (from the test split).
    pub test_size: usize,
    /// Seed of the subsets.
    pub seed: u64,
}

impl DataConfig {
    /// `train_size` / `test_size` balanced reviews of IMDB, no validation subset, seed 42.
    pub fn imdb(train_size: usize, test_size: usize) -> Self {
        Self { dataset: hub::IMDB_REPO.to_string(), train_size, validation_size: 0, test_size, seed: 42 }
    }

    /// The full reference setup: all 25,000 train and 25,000 test reviews.
    pub fn imdb_full() -> Self {
        Self::imdb(25_000, 25_000)
    }

    /// Checks the sizes before anything is read: training and test subsets of at least one review, and a
    /// training plus validation size that does not overflow. (Sizes larger than the splits are refused when
    /// the subsets are drawn, naming the label that runs short.)
    pub fn validate(&self) -> Result<(), FinetuneError> {
        let invalid = |field: &'static str, value: usize, reason: &'static str| {
            Err(FinetuneError::InvalidSetting { field, value: value.to_string(), reason })
        };
        if self.train_size == 0 {
            return invalid("train_size", 0, "at least one training review is needed");
        }
        if self.test_size == 0 {
            return invalid("test_size", 0, "at least one test review is needed");
        }
        if self.train_size.checked_add(self.validation_size).is_none() {
            return invalid(
                "validation_size",
                self.validation_size,
                "train_size + validation_size overflows: more reviews than any split holds",
            );
        }
        Ok(())
    }

    /// Reads the splits and draws the subsets (after [`validate`](Self::validate)).
    pub fn load(&self) -> Result<ExperimentData, FinetuneError> {
        self.validate()?;
        let error = |source| FinetuneError::Data { dataset: self.dataset.clone(), source: Box::new(source) };
        let train_split = hub::load_split(&self.dataset, Split::Train).map_err(error)?;
        let (train, validation) = if self.validation_size > 0 {
            let mut subsets =
                train_split.balanced_subsets(&[self.train_size, self.validation_size], self.seed).map_err(error)?;
            let validation = subsets.pop();
            (subsets.swap_remove(0), validation)
        } else {
            (train_split.balanced_subset(self.train_size, self.seed).map_err(error)?, None)
        };
        let test_split = hub::load_split(&self.dataset, Split::Test).map_err(error)?;
        let test = test_split.balanced_subset(self.test_size, self.seed).map_err(error)?;
        Ok(ExperimentData { config: self.clone(), train, validation, test })
    }
}

/// The reviews of one experiment.
#[derive(Clone, Debug)]
pub struct ExperimentData {
    /// What was drawn.
    pub config: DataConfig,
    /// Training reviews.
    pub train: ImdbDataset,
    /// Held-out reviews that pick the best epoch, where asked for.
    pub validation: Option<ImdbDataset>,
    /// Test reviews: the final evaluation (and the per-epoch one without a validation subset).
    pub test: ImdbDataset,
}

impl ExperimentData {
    /// Subsets already drawn (say from a CSV with [`polarity_data`]): `config` records where from.
    pub fn new(config: DataConfig, train: ImdbDataset, validation: Option<ImdbDataset>, test: ImdbDataset) -> Self {
        Self { config, train, validation, test }
    }
}

/// An experiment's subsets encoded by one recipe's tokenizer or prompt encoder.
pub(crate) struct TokenizedData {
    pub train: Vec<TokenizedExample>,
    pub validation: Option<Vec<TokenizedExample>>,
    pub test: Vec<TokenizedExample>,
    /// Wall-clock seconds the encoding took.
    pub seconds: f64,
}

impl TokenizedData {
    pub fn encode<T: Encode + ?Sized>(encoder: &T, data: &ExperimentData) -> Result<Self, FinetuneError> {
        let started = Instant::now();
        let train = tokenize_examples(encoder, &data.train)?;
        let validation = data.validation.as_ref().map(|set| tokenize_examples(encoder, set)).transpose()?;
        let test = tokenize_examples(encoder, &data.test)?;
        Ok(Self { train, validation, test, seconds: started.elapsed().as_secs_f64() })
    }

    /// The set that picks the best epoch: the validation subset, else the test subset.
    pub fn selection(&self) -> &[TokenizedExample] {
        self.validation.as_deref().unwrap_or(&self.test)
    }

    /// Mean tokens per training example (0 for none).
    pub fn mean_train_tokens(&self) -> f64 {
        self.train.iter().map(|item| item.tokens.len()).sum::<usize>() as f64 / self.train.len().max(1) as f64
    }

    pub fn report(&self, data: &ExperimentData, shortened: Option<[usize; 2]>) -> DataReport {
        DataReport {
            config: data.config.clone(),
            train: self.train.len(),
            validation: self.validation.as_ref().map_or(0, Vec::len),
            test: self.test.len(),
            mean_train_tokens: self.mean_train_tokens(),
            shortened,
        }
    }
}
