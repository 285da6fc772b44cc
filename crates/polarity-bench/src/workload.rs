//! The reference inference workloads: which reviews, how batched, how long.

use std::collections::HashMap;

use polarity_core::{Example, Sentiment};
use polarity_data::{DataError, ImdbDataset, Split, hub};
use polarity_finetune::REFERENCE_MAX_NEW_TOKENS;
use polarity_tokenize::{Encode, TokenizedExample};
use serde::{Deserialize, Serialize};

use crate::{BenchError, InferenceBench};

/// The seed of the reference workloads' review subsets: the recipes' own default
/// ([`polarity_finetune::DataConfig::imdb`]), so the encoder reference's 500 reviews are the test subset
/// of `DataConfig::imdb(_, 500)`.
pub const REFERENCE_SEED: u64 = 42;

/// How a workload picks its reviews from a split.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Selection {
    /// polarity-data's seeded, label-balanced subset ([`ImdbDataset::balanced_subset`]): `n / 2`
    /// negatives and the rest positives, drawn without replacement and shuffled together.
    Balanced {
        /// The subset's seed.
        seed: u64,
    },
    /// The first `n / 2` negatives, then the first `n - n / 2` positives, in the split's order: on IMDB
    /// (sorted by label) rows `0..n/2` and `12500..12500+n-n/2`, the rows the criterion benches and
    /// `scripts/pytorch_reference.py` take.
    FirstOfEachLabel,
}

impl Selection {
    /// Picks `n` reviews of `split`, with their row numbers in it.
    ///
    /// Asking for more of a label than the split holds is [`DataError::SubsetTooLarge`]; `n = 0` is
    /// [`BenchError::EmptyInput`].
    pub fn pick(&self, split: &ImdbDataset, n: usize) -> Result<ReviewSelection, BenchError> {
        if n == 0 {
            return Err(BenchError::EmptyInput { what: "the review selection" });
        }
        let data_error = |source| BenchError::Data { dataset: split.name().to_string(), source: Box::new(source) };
        let rows = match *self {
            Selection::Balanced { seed } => {
                let subset = split.balanced_subset(n, seed).map_err(data_error)?;
                rows_of(split, subset.examples())
            }
            Selection::FirstOfEachLabel => {
                let mut rows = Vec::with_capacity(n);
                for (label, wanted) in [(Sentiment::Negative, n / 2), (Sentiment::Positive, n - n / 2)] {
                    let of_label: Vec<usize> =
                        (0..split.examples().len()).filter(|&i| split.examples()[i].label == label).collect();
                    if of_label.len() < wanted {
                        let available = of_label.len();
                        return Err(data_error(DataError::SubsetTooLarge {
                            requested: n,
                            needed: wanted,
                            available,
                            label,
                        }));
                    }
                    rows.extend_from_slice(&of_label[..wanted]);
                }
                rows
            }
        };
        let examples: Vec<Example> = rows.iter().map(|&row| split.examples()[row].clone()).collect();
        let name = format!("{}[{} of {}]", split.name(), n, self.describe());
        let reviews = ImdbDataset::new(name, examples).map_err(data_error)?;
        Ok(ReviewSelection { ids: ReviewIds { source: split.name().to_string(), selection: *self, rows }, reviews })
    }

    fn describe(&self) -> String {
        match self {
            Selection::Balanced { seed } => format!("balanced, seed {seed}"),
            Selection::FirstOfEachLabel => "first of each label".into(),
        }
    }
}

/// The ids of `picked`, reviews of `split` chosen by `selection`.
pub(crate) fn review_ids(split: &ImdbDataset, selection: Selection, picked: &[Example]) -> ReviewIds {
    ReviewIds { source: split.name().to_string(), selection, rows: rows_of(split, picked) }
}

/// The row of `split` each of `picked` came from. Identical reviews (IMDB repeats a few) map to distinct
/// rows holding the same text and label, so a script reading these rows gets the same inputs.
fn rows_of(split: &ImdbDataset, picked: &[Example]) -> Vec<usize> {
    let mut rows_by_review: HashMap<(&str, Sentiment), Vec<usize>> = HashMap::new();
    // Reversed, so that `pop` hands out the first row of a repeated review first.
    for (row, example) in split.examples().iter().enumerate().rev() {
        rows_by_review.entry((example.text.as_str(), example.label)).or_default().push(row);
    }
    picked.iter().filter_map(|example| rows_by_review.get_mut(&(example.text.as_str(), example.label))?.pop()).collect()
}

/// The reviews a workload picked: the examples, and the row numbers that let another program (a PyTorch
/// script) take the same ones.
#[derive(Clone, Debug, PartialEq)]
pub struct ReviewSelection {
    /// Which rows of which split.
    pub ids: ReviewIds,
    /// The reviews, in workload order.
    pub reviews: ImdbDataset,
}

impl ReviewSelection {
    /// The reviews, in workload order.
    pub fn examples(&self) -> &[Example] {
        self.reviews.examples()
    }

    /// The texts, in workload order.
    pub fn texts(&self) -> Vec<&str> {
        self.reviews.texts()
    }

    /// Row numbers in the split, in workload order.
    pub fn rows(&self) -> &[usize] {
        &self.ids.rows
    }

    /// Number of reviews.
    pub fn len(&self) -> usize {
        self.ids.rows.len()
    }

    /// Whether there are none (never, for a selection [`Selection::pick`] made).
    pub fn is_empty(&self) -> bool {
        self.ids.rows.is_empty()
    }

    /// The reviews tokenized by `tokenizer` (an `HfTokenizer` truncating to the workload's maximum length,
    /// a causal LM's `PromptEncoder`), with their labels, in workload order.
    pub fn tokenize<T: Encode + ?Sized>(&self, tokenizer: &T) -> Result<Vec<TokenizedExample>, BenchError> {
        Ok(polarity_train::tokenize_examples(tokenizer, &self.reviews)?)
    }
}

/// Which rows of which split a workload took (serialisable, for scripts outside Rust).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewIds {
    /// The split, as polarity-data names it (`stanfordnlp/imdb:test`).
    pub source: String,
    /// How the rows were picked.
    pub selection: Selection,
    /// 0-based row numbers in the split's parquet file, in workload order.
    pub rows: Vec<usize>,
}

impl ReviewIds {
    /// Writes the ids as pretty JSON to `path`, creating its folder.
    pub fn write_json(&self, path: &std::path::Path) -> Result<(), BenchError> {
        crate::error::write_json(self, path)
    }
}

/// How a causal LM's generation is benchmarked within a workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationWorkload {
    /// Prompts per generation call.
    pub batch_size: usize,
    /// The most tokens written after each prompt before the answer is parsed.
    pub max_new_tokens: usize,
}

/// An inference workload: reviews of a split, their maximum length and how they are batched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    /// A short name for reports.
    pub name: String,
    /// Hub dataset id with `stanfordnlp/imdb`'s parquet layout, or a local directory with that layout.
    pub dataset: String,
    /// The split the reviews come from.
    pub split: Split,
    /// Number of reviews.
    pub reviews: usize,
    /// How they are picked.
    pub selection: Selection,
    /// Tokens per input (for a causal LM, per prompt, the review shortened to fit).
    pub max_length: usize,
    /// Inputs per forward pass (class scores).
    pub batch_size: usize,
    /// Causal LMs: generation (greedy, answer parsed), where measured.
    pub generation: Option<GenerationWorkload>,
}

impl Workload {
    /// The encoders' reference inference benchmark: 500 IMDB test reviews (balanced, seed
    /// [`REFERENCE_SEED`]), truncated at 256 tokens, batches of 32.
    pub fn encoder_reference() -> Self {
        Self {
            name: "encoder-reference".into(),
            dataset: hub::IMDB_REPO.into(),
            split: Split::Test,
            reviews: 500,
            selection: Selection::Balanced { seed: REFERENCE_SEED },
            max_length: 256,
            batch_size: 32,
            generation: None,
        }
    }

    /// The causal LM's reference inference benchmark: 100 IMDB test reviews (balanced, seed
    /// [`REFERENCE_SEED`]) in prompts of at most 256 tokens, classified two ways: by label scoring in
    /// batches of 8 (the `LoraFineTune` recipe's evaluation batch), and by greedy generation at batch 1
    /// of at most [`REFERENCE_MAX_NEW_TOKENS`] new tokens, the answer parsed.
    pub fn causal_lm_reference() -> Self {
        Self {
            name: "causal-lm-reference".into(),
            dataset: hub::IMDB_REPO.into(),
            split: Split::Test,
            reviews: 100,
            selection: Selection::Balanced { seed: REFERENCE_SEED },
            max_length: 256,
            batch_size: 8,
            generation: Some(GenerationWorkload { batch_size: 1, max_new_tokens: REFERENCE_MAX_NEW_TOKENS }),
        }
    }

    /// The benchmark of the class-score pass: [`batch_size`](Self::batch_size), one warm-up batch, one
    /// measured pass.
    pub fn bench(&self) -> InferenceBench {
        InferenceBench::new(self.batch_size)
    }

    /// The benchmark of generation, where the workload has one: its batch size, one warm-up batch, one
    /// measured pass.
    pub fn generation_bench(&self) -> Option<InferenceBench> {
        self.generation.map(|generation| InferenceBench::new(generation.batch_size))
    }

    /// Loads the split (through the hub cache) and picks the reviews.
    pub fn draw(&self) -> Result<ReviewSelection, BenchError> {
        let split = hub::load_split(&self.dataset, self.split)
            .map_err(|source| BenchError::Data { dataset: self.dataset.clone(), source: Box::new(source) })?;
        self.draw_from(&split)
    }

    /// Picks the reviews from a split already loaded (it should be [`split`](Self::split) of
    /// [`dataset`](Self::dataset)).
    pub fn draw_from(&self, split: &ImdbDataset) -> Result<ReviewSelection, BenchError> {
        self.selection.pick(split, self.reviews)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 10 negatives then 10 positives, like IMDB's files, with one repeated review.
    fn sorted_split() -> ImdbDataset {
        let mut examples: Vec<Example> = (0..10)
            .map(|i| Example::new(format!("neg {i}"), Sentiment::Negative))
            .chain((0..10).map(|i| Example::new(format!("pos {i}"), Sentiment::Positive)))
            .collect();
        examples[3].text = "neg 2".into();
        ImdbDataset::new("toy:test", examples).unwrap()
    }

    #[test]
    fn first_of_each_label_takes_the_benches_rows() {
        let split = sorted_split();
        let picked = Selection::FirstOfEachLabel.pick(&split, 5).unwrap();
        assert_eq!(picked.rows(), &[0, 1, 10, 11, 12]);
        assert_eq!(picked.reviews.labels()[..2], [Sentiment::Negative; 2]);
        assert_eq!(picked.texts()[2], "pos 0");
        assert!(Selection::FirstOfEachLabel.pick(&split, 22).is_err());
        assert!(matches!(Selection::FirstOfEachLabel.pick(&split, 0), Err(BenchError::EmptyInput { .. })));
    }

    #[test]
    fn balanced_rows_point_back_at_the_same_reviews() {
        let split = sorted_split();
        let selection = Selection::Balanced { seed: 7 };
        let picked = selection.pick(&split, 20).unwrap();
        assert_eq!(picked.len(), 20);
        assert_eq!(picked.reviews.examples(), split.balanced_subset(20, 7).unwrap().examples());
        for (row, example) in picked.rows().iter().zip(picked.examples()) {
            assert_eq!(&split.examples()[*row], example);
        }
        // The repeated review's two rows are both used, once each.
        let mut rows = picked.rows().to_vec();
        rows.sort_unstable();
        assert_eq!(rows, (0..20).collect::<Vec<_>>());
        assert_eq!(picked, selection.pick(&split, 20).unwrap());
    }

    #[test]
    fn workloads_round_trip_through_json() {
        for workload in [Workload::encoder_reference(), Workload::causal_lm_reference()] {
            let json = serde_json::to_string(&workload).unwrap();
            assert_eq!(serde_json::from_str::<Workload>(&json).unwrap(), workload);
        }
        let reference = Workload::causal_lm_reference();
        assert_eq!(reference.generation_bench().unwrap().batch_size, 1);
        assert_eq!(reference.generation.unwrap().max_new_tokens, REFERENCE_MAX_NEW_TOKENS);
        assert_eq!(Workload::encoder_reference().bench().batch_size, 32);
    }
}
