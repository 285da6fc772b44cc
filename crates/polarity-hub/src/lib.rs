//! Resolving Hugging Face hub files, cache first.
//!
//! Models, tokenizers and datasets are named either by a hub repository id
//! (`sentence-transformers/all-MiniLM-L6-v2`, `stanfordnlp/imdb`) or by a local directory. A hub id
//! resolves through [`hf_hub`]'s cache layout (`$HF_HOME/hub/KIND--ORG--NAME/...`), and is downloaded
//! only when it is missing from the cache and `HF_HUB_OFFLINE` is not set. That way the same code path
//! serves a laptop on the network and an air-gapped CI machine with a pre-filled cache.
//!
//! The legacy one-segment ids of the canonical models the hub moved into organisations
//! (`bert-base-uncased`, `distilbert-base-uncased`, `gpt2`, ...) resolve to their current ids
//! (`google-bert/bert-base-uncased`, ...) without asking the network; see [`LEGACY_MODEL_IDS`].
//!
//! ```no_run
//! use polarity_hub::{RepoKind, RepoSource};
//!
//! // With HF_HOME=../shared/hf HF_HUB_OFFLINE=1 this resolves from the local cache.
//! let source = RepoSource::parse("sentence-transformers/all-MiniLM-L6-v2", RepoKind::Model);
//! let tokenizer_json = source.file("tokenizer.json")?;
//! # Ok::<(), polarity_hub::HubError>(())
//! ```

pub mod files;

use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};
use thiserror::Error;

/// Why a file could not be resolved.
#[derive(Debug, Error)]
pub enum HubError {
    /// A local directory was given but the file is not in it.
    #[error("{file:?} not found in local directory {dir}")]
    MissingLocalFile {
        /// The directory that was searched.
        dir: PathBuf,
        /// The file that was asked for.
        file: String,
    },
    /// Offline mode, and the file is not in the cache.
    #[error(
        "{kind} {repo_id:?}: {file:?} is not in the hub cache at {cache} and HF_HUB_OFFLINE is set; \
         point HF_HOME at a cache that has it, or unset HF_HUB_OFFLINE to download it"
    )]
    NotCached {
        /// Model or dataset.
        kind: RepoKind,
        /// The repository id.
        repo_id: String,
        /// The file that was asked for.
        file: String,
        /// The hub cache directory that was searched.
        cache: PathBuf,
    },
    /// The file is not cached and downloading it failed (no network, unknown repo, gated model, ...).
    #[error("{kind} {repo_id:?}: {file:?} is not in the hub cache at {cache} and downloading it failed: {reason}")]
    Download {
        /// Model or dataset.
        kind: RepoKind,
        /// The repository id.
        repo_id: String,
        /// The file that was asked for.
        file: String,
        /// The hub cache directory that was searched.
        cache: PathBuf,
        /// What the download said.
        reason: String,
    },
    /// A model has no safetensors weights where they were looked for: neither `model.safetensors` nor a
    /// sharded checkpoint's `model.safetensors.index.json`.
    #[error("no weights for {model}: neither model.safetensors nor model.safetensors.index.json is {searched}")]
    NoWeights {
        /// The model: its hub id (`@revision` unless `main`) or directory.
        model: String,
        /// Where the two files were looked for.
        searched: WeightsSearch,
    },
    /// A sharded checkpoint's `model.safetensors.index.json` is unreadable or malformed.
    #[error(transparent)]
    InvalidIndex(#[from] InvalidIndex),
    /// A file of a local model directory exists but cannot be used: not a regular file (a FIFO, a
    /// directory, a device) or unreadable.
    #[error("{path}: {source}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why ([`files::open_regular`]'s error).
        #[source]
        source: std::io::Error,
    },
}

/// Where [`RepoSource::safetensors_files`] looked for a model's weights without finding them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WeightsSearch {
    /// A local directory.
    Directory(PathBuf),
    /// The hub cache, with `HF_HUB_OFFLINE` set (nothing was downloaded).
    OfflineCache(PathBuf),
    /// The hub cache, then the hub itself.
    CacheAndDownload {
        /// The hub cache directory that was searched.
        cache: PathBuf,
        /// What each download attempt said, one `file: reason` per file.
        reason: String,
    },
}

impl std::fmt::Display for WeightsSearch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WeightsSearch::Directory(dir) => write!(f, "in the directory {}", dir.display()),
            WeightsSearch::OfflineCache(cache) => {
                write!(f, "in the hub cache at {} (offline: HF_HUB_OFFLINE is set)", cache.display())
            }
            WeightsSearch::CacheAndDownload { cache, reason } => {
                write!(f, "in the hub cache at {} and downloading failed ({reason})", cache.display())
            }
        }
    }
}

/// A sharded checkpoint's index is unreadable or malformed.
#[derive(Debug, Error)]
#[error("sharded checkpoint index {path}: {reason}")]
pub struct InvalidIndex {
    /// The index file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub reason: String,
}

/// Which kind of hub repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepoKind {
    /// `models--ORG--NAME` in the cache.
    Model,
    /// `datasets--ORG--NAME` in the cache.
    Dataset,
}

impl std::fmt::Display for RepoKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RepoKind::Model => "model",
            RepoKind::Dataset => "dataset",
        })
    }
}

/// Where a model or dataset lives: a local directory, or a hub repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RepoSource {
    /// Files are read from this directory.
    Local(PathBuf),
    /// Files are resolved through the hub cache (and downloaded when allowed).
    Hub {
        /// `ORG/NAME`.
        repo_id: String,
        /// Model or dataset.
        kind: RepoKind,
        /// Branch, tag or commit (`main` by default).
        revision: String,
    },
}

impl RepoSource {
    /// A local directory when `spec` names an existing directory (or looks like a path), else a hub id
    /// at revision `main`, as [`hub`](Self::hub) resolves it.
    pub fn parse(spec: &str, kind: RepoKind) -> Self {
        let path = Path::new(spec);
        let looks_like_path = spec.starts_with('.') || spec.starts_with('/') || spec.starts_with('~');
        if path.is_dir() || looks_like_path {
            RepoSource::Local(path.to_path_buf())
        } else {
            RepoSource::hub(spec, kind)
        }
    }

    /// A hub repository at revision `main`. A legacy model id of [`LEGACY_MODEL_IDS`] becomes its
    /// canonical id (`bert-base-uncased` is `google-bert/bert-base-uncased`), as the hub redirects it,
    /// unless the hub cache holds the model under the legacy id only.
    ///
    /// ```
    /// use polarity_hub::{RepoKind, RepoSource};
    ///
    /// let source = RepoSource::hub("distilbert-base-uncased", RepoKind::Model);
    /// // distilbert/distilbert-base-uncased, unless the cache holds models--distilbert-base-uncased only.
    /// println!("{source}");
    /// ```
    pub fn hub(repo_id: &str, kind: RepoKind) -> Self {
        let repo_id = match (kind, canonical_model_id(repo_id)) {
            (RepoKind::Model, Some(canonical)) if !prefers_legacy_folder(repo_id, canonical) => canonical,
            _ => repo_id,
        };
        RepoSource::Hub { repo_id: repo_id.to_string(), kind, revision: "main".to_string() }
    }

    /// The local path of `file`, from the directory or the hub cache, downloading when allowed.
    pub fn file(&self, file: &str) -> Result<PathBuf, HubError> {
        match self {
            RepoSource::Local(dir) => {
                let path = dir.join(file);
                if path.is_file() {
                    Ok(path)
                } else if path.exists() {
                    // A FIFO or directory of that name: say what it is rather than "not found".
                    let source = files::open_regular(&path)
                        .err()
                        .unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"));
                    Err(HubError::Unreadable { path, source })
                } else {
                    Err(HubError::MissingLocalFile { dir: dir.clone(), file: file.to_string() })
                }
            }
            RepoSource::Hub { repo_id, kind, revision } => hub_file(repo_id, *kind, revision, file),
        }
    }

    /// Whether `file` exists without downloading anything (a local file, or a cached hub file).
    pub fn has_cached(&self, file: &str) -> bool {
        match self {
            RepoSource::Local(dir) => dir.join(file).is_file(),
            RepoSource::Hub { repo_id, kind, revision } => {
                hub_cache().repo(repo(repo_id, *kind, revision)).get(file).is_some()
            }
        }
    }
}

/// A checkpoint's weights in one file.
pub const SAFETENSORS_FILE: &str = "model.safetensors";
/// The index of a sharded checkpoint (`weight_map`: tensor name -> shard file).
pub const SAFETENSORS_INDEX_FILE: &str = "model.safetensors.index.json";
/// The largest `model.safetensors.index.json` read (Llama-3-405B's is under 2 MiB).
pub const MAX_INDEX_BYTES: u64 = 64 << 20;

impl RepoSource {
    /// The safetensors files of a model checkpoint: `model.safetensors`, or the shards that
    /// `model.safetensors.index.json` lists (large checkpoints such as Llama-3-8B come in shards), in
    /// file-name order. Cached files are preferred, so an offline hub cache needs only one of the two.
    ///
    /// A model with neither file (in its directory, in the hub cache offline, or on the hub) is
    /// [`HubError::NoWeights`], saying where both were looked for. The index must be a regular file of
    /// at most [`MAX_INDEX_BYTES`]; a shard name that is absolute or climbs out of the model's directory
    /// (`../x`) is [`HubError::InvalidIndex`], never followed.
    pub fn safetensors_files(&self) -> Result<Vec<PathBuf>, HubError> {
        // A FIFO or directory under either name is an error about it, not "no weights".
        if let RepoSource::Local(dir) = self
            && let Some(name) = [SAFETENSORS_INDEX_FILE, SAFETENSORS_FILE]
                .into_iter()
                .find(|name| dir.join(name).exists() && !dir.join(name).is_file())
        {
            self.file(name)?;
        }
        if !self.has_cached(SAFETENSORS_INDEX_FILE) {
            if self.has_cached(SAFETENSORS_FILE) {
                return Ok(vec![self.file(SAFETENSORS_FILE)?]);
            }
            if let Some(single) = self.fetch_uncached_weights()? {
                return Ok(vec![single]);
            }
        }
        let index_path = self.file(SAFETENSORS_INDEX_FILE)?;
        let invalid = |reason: String| HubError::from(InvalidIndex { path: index_path.clone(), reason });
        let text =
            files::read_regular_to_string_within(&index_path, MAX_INDEX_BYTES).map_err(|e| invalid(e.to_string()))?;
        let index: serde_json::Value = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        let weight_map = index
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| invalid("no \"weight_map\" object".into()))?;
        // A set: an index may map a million tensors to a handful of shards.
        let mut shards = std::collections::BTreeSet::new();
        let dir = index_path.parent().unwrap_or(Path::new(""));
        for (tensor, shard) in weight_map {
            let shard = shard.as_str().ok_or_else(|| invalid(format!("the shard of {tensor:?} is not a string")))?;
            // Shard names come from the file: one that leaves the model's directory is refused, not followed.
            files::join_inside(dir, shard).map_err(|e| invalid(format!("the shard of {tensor:?}: {e}")))?;
            shards.insert(shard);
        }
        if shards.is_empty() {
            return Err(invalid("the weight map is empty".into()));
        }
        shards.into_iter().map(|shard| self.file(shard)).collect()
    }

    /// Neither weights file is cached: downloads `model.safetensors` (`Some`), or else the index of a sharded
    /// checkpoint (`None`: the index is cached now), or says where there are no weights.
    fn fetch_uncached_weights(&self) -> Result<Option<PathBuf>, HubError> {
        let no_weights = |searched| HubError::NoWeights { model: self.to_string(), searched };
        if let RepoSource::Local(dir) = self {
            return Err(no_weights(WeightsSearch::Directory(dir.clone())));
        }
        let cache = hub_cache().path().clone();
        if offline() {
            return Err(no_weights(WeightsSearch::OfflineCache(cache)));
        }
        let single_error = match self.file(SAFETENSORS_FILE) {
            Ok(path) => return Ok(Some(path)),
            Err(error) => error,
        };
        let index_error = match self.file(SAFETENSORS_INDEX_FILE) {
            Ok(_) => return Ok(None),
            Err(error) => error,
        };
        let reason = format!(
            "{SAFETENSORS_FILE}: {}; {SAFETENSORS_INDEX_FILE}: {}",
            download_reason(&single_error),
            download_reason(&index_error)
        );
        Err(no_weights(WeightsSearch::CacheAndDownload { cache, reason }))
    }
}

/// What a failed download said (the whole error for any other failure).
fn download_reason(error: &HubError) -> String {
    match error {
        HubError::Download { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}

/// Legacy one-segment model ids and the canonical ids the hub redirects them to, since it moved these
/// models into their authors' organisations (`google-bert`, `distilbert`, `FacebookAI`,
/// `openai-community`, `google-t5`). [`RepoSource::hub`] and [`RepoSource::parse`] apply it.
pub const LEGACY_MODEL_IDS: &[(&str, &str)] = &[
    ("bert-base-uncased", "google-bert/bert-base-uncased"),
    ("bert-base-cased", "google-bert/bert-base-cased"),
    ("bert-large-uncased", "google-bert/bert-large-uncased"),
    ("bert-large-cased", "google-bert/bert-large-cased"),
    ("bert-base-multilingual-uncased", "google-bert/bert-base-multilingual-uncased"),
    ("bert-base-multilingual-cased", "google-bert/bert-base-multilingual-cased"),
    ("bert-base-chinese", "google-bert/bert-base-chinese"),
    ("distilbert-base-uncased", "distilbert/distilbert-base-uncased"),
    ("distilbert-base-cased", "distilbert/distilbert-base-cased"),
    ("distilbert-base-uncased-finetuned-sst-2-english", "distilbert/distilbert-base-uncased-finetuned-sst-2-english"),
    ("distilbert-base-multilingual-cased", "distilbert/distilbert-base-multilingual-cased"),
    ("distilroberta-base", "distilbert/distilroberta-base"),
    ("distilgpt2", "distilbert/distilgpt2"),
    ("roberta-base", "FacebookAI/roberta-base"),
    ("roberta-large", "FacebookAI/roberta-large"),
    ("xlm-roberta-base", "FacebookAI/xlm-roberta-base"),
    ("xlm-roberta-large", "FacebookAI/xlm-roberta-large"),
    ("gpt2", "openai-community/gpt2"),
    ("gpt2-medium", "openai-community/gpt2-medium"),
    ("gpt2-large", "openai-community/gpt2-large"),
    ("gpt2-xl", "openai-community/gpt2-xl"),
    ("t5-small", "google-t5/t5-small"),
    ("t5-base", "google-t5/t5-base"),
    ("t5-large", "google-t5/t5-large"),
];

/// The canonical id of a legacy model id of [`LEGACY_MODEL_IDS`], or `None` for any other id.
///
/// ```
/// assert_eq!(polarity_hub::canonical_model_id("bert-base-uncased"), Some("google-bert/bert-base-uncased"));
/// assert_eq!(polarity_hub::canonical_model_id("google-bert/bert-base-uncased"), None);
/// ```
pub fn canonical_model_id(repo_id: &str) -> Option<&'static str> {
    LEGACY_MODEL_IDS.iter().find(|(legacy, _)| *legacy == repo_id).map(|(_, canonical)| *canonical)
}

/// Whether the hub cache holds a model under its legacy id but not under its canonical one.
fn prefers_legacy_folder(legacy: &str, canonical: &str) -> bool {
    let cache = hub_cache();
    let cached = |id: &str| cache.path().join(Repo::model(id.to_string()).folder_name()).is_dir();
    cached(legacy) && !cached(canonical)
}

impl std::fmt::Display for RepoSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RepoSource::Local(dir) => write!(f, "{}", dir.display()),
            RepoSource::Hub { repo_id, revision, .. } if revision == "main" => f.write_str(repo_id),
            RepoSource::Hub { repo_id, revision, .. } => write!(f, "{repo_id}@{revision}"),
        }
    }
}

/// The hub cache: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
pub fn hub_cache() -> Cache {
    match std::env::var_os("HF_HUB_CACHE") {
        Some(dir) if !dir.is_empty() => Cache::new(PathBuf::from(dir)),
        _ => Cache::from_env(),
    }
}

/// Whether `HF_HUB_OFFLINE` asks for no network access (`1`, `true`, `yes` or `on`).
pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

fn repo(repo_id: &str, kind: RepoKind, revision: &str) -> Repo {
    let repo_type = match kind {
        RepoKind::Model => RepoType::Model,
        RepoKind::Dataset => RepoType::Dataset,
    };
    Repo::with_revision(repo_id.to_string(), repo_type, revision.to_string())
}

fn hub_file(repo_id: &str, kind: RepoKind, revision: &str, file: &str) -> Result<PathBuf, HubError> {
    let cache = hub_cache();
    let repo = repo(repo_id, kind, revision);
    if let Some(path) = cache.repo(repo.clone()).get(file) {
        tracing::debug!(%repo_id, file, path = %path.display(), "resolved from the hub cache");
        return Ok(path);
    }
    if offline() {
        return Err(HubError::NotCached {
            kind,
            repo_id: repo_id.to_string(),
            file: file.to_string(),
            cache: cache.path().clone(),
        });
    }
    let download_error = |reason: String| HubError::Download {
        kind,
        repo_id: repo_id.to_string(),
        file: file.to_string(),
        cache: cache.path().clone(),
        reason,
    };
    tracing::info!(%repo_id, file, "downloading from the hub");
    let api =
        ApiBuilder::from_cache(cache.clone()).with_progress(true).build().map_err(|e| download_error(e.to_string()))?;
    api.repo(repo).get(file).map_err(|e| download_error(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_directory_resolves_files_and_names_missing_ones() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        let source = RepoSource::parse(dir.path().to_str().unwrap(), RepoKind::Model);
        assert_eq!(source, RepoSource::Local(dir.path().to_path_buf()));
        assert_eq!(source.file("config.json").unwrap(), dir.path().join("config.json"));
        assert!(source.has_cached("config.json"));
        let err = source.file("model.safetensors").unwrap_err();
        assert!(matches!(err, HubError::MissingLocalFile { .. }));
        assert!(err.to_string().contains("model.safetensors"), "{err}");
    }

    #[test]
    fn hub_ids_parse_as_hub_sources() {
        let source = RepoSource::parse("stanfordnlp/imdb", RepoKind::Dataset);
        assert_eq!(source, RepoSource::hub("stanfordnlp/imdb", RepoKind::Dataset));
        assert_eq!(source.to_string(), "stanfordnlp/imdb");
        assert!(matches!(RepoSource::parse("./no/such/dir", RepoKind::Model), RepoSource::Local(_)));
    }

    #[test]
    fn a_directory_without_weights_is_no_weights() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        let err = RepoSource::Local(dir.path().to_path_buf()).safetensors_files().unwrap_err();
        assert!(
            matches!(&err, HubError::NoWeights { searched: WeightsSearch::Directory(d), .. } if d == dir.path()),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(message.contains("model.safetensors nor model.safetensors.index.json"), "{message}");
        assert!(message.contains(&dir.path().display().to_string()), "{message}");
    }

    fn index(dir: &Path, shards: &[&str]) {
        let map: serde_json::Map<String, serde_json::Value> =
            shards.iter().enumerate().map(|(i, shard)| (format!("t{i}"), serde_json::Value::from(*shard))).collect();
        let text = serde_json::json!({"metadata": {}, "weight_map": map}).to_string();
        std::fs::write(dir.join(SAFETENSORS_INDEX_FILE), text).unwrap();
    }

    #[test]
    fn shard_names_that_leave_the_directory_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let source = RepoSource::Local(dir.path().to_path_buf());
        std::fs::write(dir.path().join("a.safetensors"), b"x").unwrap();
        index(dir.path(), &["a.safetensors", "a.safetensors"]);
        assert_eq!(source.safetensors_files().unwrap(), [dir.path().join("a.safetensors")]);
        for hostile in ["../model.safetensors", "/etc/passwd", "sub/../../x", ""] {
            index(dir.path(), &["a.safetensors", hostile]);
            let err = source.safetensors_files().unwrap_err();
            assert!(matches!(&err, HubError::InvalidIndex(_)), "{hostile:?}: {err}");
            assert!(err.to_string().contains(&format!("{hostile:?}")), "{err}");
        }
    }

    #[test]
    fn fifos_and_oversized_indexes_are_errors_not_hangs() {
        let dir = tempfile::tempdir().unwrap();
        let source = RepoSource::Local(dir.path().to_path_buf());
        let mkfifo = |path: &Path| std::process::Command::new("mkfifo").arg(path).status().unwrap().success();
        if mkfifo(&dir.path().join("shard.safetensors")) {
            index(dir.path(), &["shard.safetensors"]);
            let err = source.safetensors_files().unwrap_err();
            assert!(matches!(&err, HubError::Unreadable { .. }) && err.to_string().contains("FIFO"), "{err}");
            std::fs::remove_file(dir.path().join(SAFETENSORS_INDEX_FILE)).unwrap();
            assert!(mkfifo(&dir.path().join(SAFETENSORS_INDEX_FILE)));
            let err = source.safetensors_files().unwrap_err();
            assert!(err.to_string().contains("FIFO"), "{err}");
            std::fs::remove_file(dir.path().join(SAFETENSORS_INDEX_FILE)).unwrap();
        }
        // A sparse file: no 64 MiB written.
        let file = std::fs::File::create(dir.path().join(SAFETENSORS_INDEX_FILE)).unwrap();
        file.set_len(MAX_INDEX_BYTES + 1).unwrap();
        let err = source.safetensors_files().unwrap_err();
        assert!(matches!(&err, HubError::InvalidIndex(_)) && err.to_string().contains("more than"), "{err}");
    }

    #[test]
    fn legacy_ids_map_to_organisation_ids() {
        assert_eq!(canonical_model_id("bert-base-uncased"), Some("google-bert/bert-base-uncased"));
        assert_eq!(canonical_model_id("distilbert-base-uncased"), Some("distilbert/distilbert-base-uncased"));
        assert_eq!(canonical_model_id("gpt2"), Some("openai-community/gpt2"));
        assert_eq!(canonical_model_id("sentence-transformers/all-MiniLM-L6-v2"), None);
        assert_eq!(canonical_model_id("Bert-Base-Uncased"), None);
        for (i, (legacy, canonical)) in LEGACY_MODEL_IDS.iter().enumerate() {
            assert!(!legacy.contains('/'), "{legacy}");
            assert_eq!(canonical.split('/').nth(1), Some(*legacy), "{canonical} keeps the name {legacy}");
            assert!(LEGACY_MODEL_IDS[..i].iter().all(|(other, _)| other != legacy), "{legacy} twice");
        }
        // Datasets are not models: their ids are kept.
        assert_eq!(RepoSource::hub("gpt2", RepoKind::Dataset).to_string(), "gpt2");
    }
}
