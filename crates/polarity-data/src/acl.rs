//! The original aclImdb directory layout: `{train,test}/{pos,neg}/{id}_{rating}.txt`.

use std::path::{Path, PathBuf};

use polarity_core::{Example, Sentiment};

use crate::{DataError, ImdbDataset, Split};

/// Loads `root/{split}/neg/*.txt` and `root/{split}/pos/*.txt` (negatives first, each folder in
/// numeric id order), keeping the star rating from each file name (`123_9.txt` is rated 9).
///
/// Files whose names do not follow `{id}_{rating}.txt` still load, without a rating.
pub fn load_split(root: impl AsRef<Path>, split: Split) -> Result<ImdbDataset, DataError> {
    let split_dir = root.as_ref().join(split.name());
    if !split_dir.is_dir() {
        return Err(DataError::NotFound { what: "aclImdb split directory", path: split_dir });
    }
    let mut examples = Vec::new();
    for (folder, label) in [("neg", Sentiment::Negative), ("pos", Sentiment::Positive)] {
        let dir = split_dir.join(folder);
        if !dir.is_dir() {
            return Err(DataError::NotFound { what: "aclImdb label directory", path: dir });
        }
        for path in review_files(&dir)? {
            let bytes = polarity_hub::files::read_regular(&path)
                .map_err(|source| DataError::Io { path: path.clone(), source })?;
            let text = String::from_utf8(bytes)
                .map_err(|e| DataError::NonUtf8 { offset: e.utf8_error().valid_up_to(), path: path.clone() })?;
            examples.push(Example { text, label, rating: rating_of(&path) });
        }
    }
    ImdbDataset::new(format!("{}:{split}", root.as_ref().display()), examples)
}

/// The `.txt` files of `dir`, sorted by numeric id (then name) so loading is deterministic.
fn review_files(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let entries = std::fs::read_dir(dir).map_err(|source| DataError::Io { path: dir.to_path_buf(), source })?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|source| DataError::Io { path: dir.to_path_buf(), source })?.path();
        if path.extension().is_some_and(|ext| ext == "txt") && path.is_file() {
            files.push(path);
        }
    }
    files.sort_by_key(|p| (id_of(p), p.clone()));
    Ok(files)
}

fn stem_parts(path: &Path) -> Option<(&str, &str)> {
    path.file_stem()?.to_str()?.split_once('_')
}

fn id_of(path: &Path) -> u64 {
    stem_parts(path).and_then(|(id, _)| id.parse().ok()).unwrap_or(u64::MAX)
}

fn rating_of(path: &Path) -> Option<u8> {
    stem_parts(path).and_then(|(_, rating)| rating.parse().ok()).filter(|r| (1..=10).contains(r))
}
