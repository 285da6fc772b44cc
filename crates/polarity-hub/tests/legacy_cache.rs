//! A hub cache that holds a model under its legacy id keeps it (`models--bert-base-uncased`). This test sets
//! HF_HUB_CACHE for its own process, so it lives in its own test binary.

use polarity_hub::{RepoKind, RepoSource};

#[test]
fn a_cached_legacy_folder_is_preferred_to_the_canonical_id() {
    let cache = tempfile::tempdir().unwrap();
    let legacy = cache.path().join("models--bert-base-uncased");
    std::fs::create_dir_all(legacy.join("refs")).unwrap();
    std::fs::create_dir_all(legacy.join("snapshots/0123abcd")).unwrap();
    std::fs::write(legacy.join("refs/main"), "0123abcd").unwrap();
    std::fs::write(legacy.join("snapshots/0123abcd/config.json"), "{}").unwrap();
    // SAFETY: set before any thread of this test binary reads the environment.
    unsafe {
        std::env::set_var("HF_HUB_CACHE", cache.path());
        std::env::set_var("HF_HUB_OFFLINE", "1");
    }

    let source = RepoSource::parse("bert-base-uncased", RepoKind::Model);
    assert_eq!(source.to_string(), "bert-base-uncased");
    assert_eq!(source.file("config.json").unwrap(), legacy.join("snapshots/0123abcd/config.json"));
    // Not cached under either id: the canonical id.
    assert_eq!(RepoSource::parse("bert-base-cased", RepoKind::Model).to_string(), "google-bert/bert-base-cased");

    // Cached under both: the canonical id.
    std::fs::create_dir_all(cache.path().join("models--google-bert--bert-base-uncased")).unwrap();
    assert_eq!(RepoSource::parse("bert-base-uncased", RepoKind::Model).to_string(), "google-bert/bert-base-uncased");
}
