//! IMDB from the Hugging Face hub, cache first.

use polarity_hub::{RepoKind, RepoSource};

use crate::{DataError, ImdbDataset, Split, table};

/// The reference dataset: `stanfordnlp/imdb` (columns `text`, `label`).
pub const IMDB_REPO: &str = "stanfordnlp/imdb";

/// The parquet file of `split` in the hub's `plain_text` export.
pub fn parquet_file(split: Split) -> String {
    format!("plain_text/{}-00000-of-00001.parquet", split.name())
}

/// Loads one split of `repo_id` (a hub dataset id or a local directory with the same layout):
/// resolves `plain_text/{split}-00000-of-00001.parquet` through the hub cache (`HF_HOME`), downloading
/// only when it is not cached and `HF_HUB_OFFLINE` is unset, then reads columns `text` and `label`.
pub fn load_split(repo_id: &str, split: Split) -> Result<ImdbDataset, DataError> {
    let source = RepoSource::parse(repo_id, RepoKind::Dataset);
    let path = source.file(&parquet_file(split))?;
    let dataset = table::load(&path, &table::TableColumns::default())?;
    Ok(dataset.renamed(format!("{source}:{split}")))
}
