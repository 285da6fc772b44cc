//! The real hub code path against the offline cache in `../shared/hf` (what CI provides).
//! These tests set HF_HOME/HF_HUB_OFFLINE for their own process, so they live in their own test binary.

use polarity_hub::{HubError, RepoKind, RepoSource, WeightsSearch};

fn use_shared_cache() {
    let shared = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/hf");
    // SAFETY: set before any thread of this test binary reads the environment.
    unsafe {
        std::env::set_var("HF_HOME", shared);
        std::env::set_var("HF_HUB_OFFLINE", "1");
        std::env::remove_var("HF_HUB_CACHE");
    }
}

#[test]
fn shared_cache_resolves_real_repos_offline_and_names_missing_files() {
    use_shared_cache();
    let minilm = RepoSource::parse("sentence-transformers/all-MiniLM-L6-v2", RepoKind::Model);
    let tokenizer = minilm.file("tokenizer.json").expect("MiniLM tokenizer in ../shared/hf");
    assert!(tokenizer.ends_with("tokenizer.json") && tokenizer.is_file());

    let imdb = RepoSource::hub("stanfordnlp/imdb", RepoKind::Dataset);
    assert!(imdb.file("plain_text/train-00000-of-00001.parquet").unwrap().is_file());

    let err = minilm.file("no-such-file.bin").unwrap_err();
    assert!(matches!(err, HubError::NotCached { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("no-such-file.bin") && message.contains("HF_HUB_OFFLINE"), "{message}");

    let err = RepoSource::hub("no-such-org/no-such-model", RepoKind::Model).file("config.json").unwrap_err();
    assert!(err.to_string().contains("no-such-org/no-such-model"), "{err}");
}

#[test]
fn legacy_ids_resolve_to_the_organisation_repos_offline() {
    use_shared_cache();
    for (legacy, canonical) in [
        ("bert-base-uncased", "google-bert/bert-base-uncased"),
        ("distilbert-base-uncased", "distilbert/distilbert-base-uncased"),
    ] {
        let source = RepoSource::parse(legacy, RepoKind::Model);
        assert_eq!(source, RepoSource::hub(canonical, RepoKind::Model));
        assert_eq!(source.to_string(), canonical);
        let config = source.file("config.json").expect("config.json in ../shared/hf");
        let folder = format!("models--{}", canonical.replace('/', "--"));
        assert!(config.components().any(|c| c.as_os_str() == folder.as_str()), "{}", config.display());
    }
}

#[test]
fn models_without_weights_say_so_offline() {
    use_shared_cache();
    let source = RepoSource::parse("bert-base-uncased", RepoKind::Model);
    let err = source.safetensors_files().unwrap_err();
    assert!(
        matches!(&err, HubError::NoWeights { model, searched: WeightsSearch::OfflineCache(_) } if model == "google-bert/bert-base-uncased"),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.starts_with("no weights for google-bert/bert-base-uncased: "), "{message}");
    assert!(message.contains("model.safetensors nor model.safetensors.index.json"), "{message}");
    assert!(message.contains("HF_HUB_OFFLINE"), "{message}");
    // A model with weights still resolves them.
    let minilm = RepoSource::parse("sentence-transformers/all-MiniLM-L6-v2", RepoKind::Model);
    assert_eq!(minilm.safetensors_files().unwrap().len(), 1);
}
