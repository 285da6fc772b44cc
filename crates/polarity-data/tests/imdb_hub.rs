//! The real IMDB parquet through the hub cache in ../shared/hf, offline (as CI runs it).

use polarity_data::{DataError, Sentiment, Split, hub};

fn use_shared_cache() {
    // SAFETY: set before any thread of this test binary reads the environment; both tests set the same values.
    unsafe {
        std::env::set_var("HF_HOME", concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/hf"));
        std::env::set_var("HF_HUB_OFFLINE", "1");
    }
}

#[test]
fn both_splits_have_25k_rows_balanced_12500_per_label() {
    use_shared_cache();
    for split in Split::ALL {
        let data = hub::load_split(hub::IMDB_REPO, split).unwrap();
        assert_eq!(burn::data::dataset::Dataset::len(&data), 25_000, "{split}");
        assert_eq!(data.label_counts(), [12_500, 12_500], "{split}");
        assert!(data.name().contains("stanfordnlp/imdb") && data.name().ends_with(split.name()));
        // The files are sorted by label: negatives first.
        assert_eq!(data.examples()[0].label, Sentiment::Negative);
        assert_eq!(data.examples()[24_999].label, Sentiment::Positive);
        assert!(data.examples().iter().all(|e| !e.text.is_empty()));
    }
    let test = hub::load_split(hub::IMDB_REPO, Split::Test).unwrap();
    let subset = test.balanced_subset(2000, 42).unwrap();
    assert_eq!(subset.label_counts(), [1000, 1000]);
    // <br /> clean-up is opt-in: raw text keeps the tags.
    assert!(test.examples().iter().any(|e| e.text.contains("<br />")));
    assert!(!test.with_html_breaks_cleaned().examples().iter().any(|e| e.text.contains("<br />")));
}

#[test]
fn an_uncached_dataset_is_a_typed_error_offline() {
    use_shared_cache();
    let err = hub::load_split("someone/not-cached", Split::Train).unwrap_err();
    assert!(matches!(err, DataError::Hub(_)), "{err:?}");
    assert!(err.to_string().contains("someone/not-cached"), "{err}");
}
