//! IMDB ingestion for polarity.
//!
//! Every loader returns an [`ImdbDataset`]: a list of [`Example`]s that implements burn's
//! [`Dataset`](burn::data::dataset::Dataset), so burn's tooling (data loaders, `ShuffledDataset`,
//! `PartialDataset`) works on it, and so does every polarity trainer (it is an
//! [`ExampleSource`](polarity_core::ExampleSource)).
//!
//! Sources, one module each:
//! - [`hub`]: `stanfordnlp/imdb` (or any repo with the same parquet layout) through the hub cache,
//!   honouring `HF_HOME` and `HF_HUB_OFFLINE`;
//! - [`acl`]: an extracted `aclImdb/` directory (`train/pos/123_9.txt`), keeping the star rating;
//! - [`table`]: any CSV or parquet file with configurable text and label columns (polars).
//!
//! Then [`subset`] draws seeded balanced subsets and validation splits, and [`stats`] summarises a split.
//!
//! ```no_run
//! use polarity_data::{hub, Split};
//!
//! // With HF_HOME=../shared/hf HF_HUB_OFFLINE=1 this reads the cached parquet, no network.
//! let train = hub::load_split(hub::IMDB_REPO, Split::Train)?;
//! let small = train.balanced_subset(2000, 42)?; // 1000 negative + 1000 positive
//! assert_eq!(small.label_counts(), [1000, 1000]);
//! # Ok::<(), polarity_data::DataError>(())
//! ```

pub mod acl;
mod dataset;
mod error;
pub mod hub;
pub mod stats;
pub mod subset;
pub mod table;

pub use dataset::{ImdbDataset, Split, clean_html_breaks};
pub use error::DataError;
pub use polarity_core::{Example, Sentiment};
