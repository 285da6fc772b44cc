//! The MiniLM tokenizer from the hub cache reproduces transformers' ids, masks and segment ids.

use burn::backend::NdArray;
use polarity_core::reference::Fixture;
use polarity_tokenize::{Encode, HfTokenizer, PaddingBatcher, PromptTemplate, TokenIds, TokenizeError, label_word_ids};

type B = NdArray<f32>;

const MINILM: &str = "sentence-transformers/all-MiniLM-L6-v2";

fn use_shared_cache() {
    // SAFETY: set before any thread of this test binary reads the environment; all tests set the same values.
    unsafe {
        std::env::set_var("HF_HOME", concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/hf"));
        std::env::set_var("HF_HUB_OFFLINE", "1");
    }
}

fn fixture() -> Fixture {
    Fixture::open(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/fixtures/minilm-imdb-128")).unwrap()
}

fn tensor_i64(tensor: burn::tensor::Tensor<B, 2, burn::tensor::Int>) -> Vec<i64> {
    tensor.into_data().convert::<i64>().to_vec().unwrap()
}

#[test]
fn minilm_ids_masks_and_segments_match_transformers_at_128() {
    use_shared_cache();
    let fixture = fixture();
    let texts: Vec<String> =
        fixture.meta["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let max_length = fixture.meta["max_length"].as_u64().unwrap() as usize;

    let tokenizer = HfTokenizer::from_pretrained(MINILM, max_length).unwrap();
    let encoded = tokenizer.encode_batch(&texts).unwrap();
    assert!(encoded.iter().all(|e| e.len() <= max_length));
    // No hidden padding: MiniLM's tokenizer.json would pad this to 128 by itself.
    assert_eq!(tokenizer.encode_batch(&["Loved it."]).unwrap()[0].ids.len(), 5);

    let rows: Vec<&TokenIds> = encoded.iter().collect();
    let batch = PaddingBatcher::new(tokenizer.pad_id()).pad::<B>(&rows, &Default::default());
    let (shape, ids) = fixture.i64("input_ids").unwrap();
    assert_eq!(batch.dims().to_vec(), shape.to_vec());
    assert_eq!(tensor_i64(batch.input_ids), ids);
    assert_eq!(tensor_i64(batch.attention_mask), fixture.i64("attention_mask").unwrap().1);
    assert_eq!(tensor_i64(batch.token_type_ids), fixture.i64("token_type_ids").unwrap().1);
}

#[test]
fn token_lengths_and_truncation_follow_max_length() {
    use_shared_cache();
    let tokenizer = HfTokenizer::from_pretrained(MINILM, 16).unwrap();
    let long = "great ".repeat(100);
    let lengths = tokenizer.token_lengths(&["great", &long]).unwrap();
    assert_eq!(lengths, vec![3, 16]);
    assert!(matches!(HfTokenizer::from_pretrained(MINILM, 0), Err(TokenizeError::Truncation { .. })));
}

#[test]
fn corrupt_or_missing_tokenizer_files_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, b"{\"version\": \"1.0\", \"model\": ").unwrap();
    let err = HfTokenizer::from_file(&path, 128).unwrap_err();
    assert!(matches!(&err, TokenizeError::Load { path: p, .. } if p == &path), "{err:?}");
    assert!(err.to_string().contains("tokenizer.json"));

    // A directory resolves to its tokenizer.json: the corrupt one here.
    let err = HfTokenizer::from_pretrained(dir.path().to_str().unwrap(), 128).unwrap_err();
    assert!(matches!(err, TokenizeError::Load { .. }), "{err:?}");
    let empty = tempfile::tempdir().unwrap();
    let err = HfTokenizer::from_pretrained(empty.path().to_str().unwrap(), 128).unwrap_err();
    assert!(matches!(err, TokenizeError::Hub(_)) && err.to_string().contains("tokenizer.json"), "{err:?}");
}

#[test]
fn prompts_shorten_the_review_never_the_instruction() {
    use_shared_cache();
    let tokenizer = tokenizers::Tokenizer::from_file(
        polarity_hub::RepoSource::parse(MINILM, polarity_hub::RepoKind::Model).file("tokenizer.json").unwrap(),
    )
    .unwrap();
    let mut tokenizer = tokenizer;
    tokenizer.with_padding(None);
    tokenizer.with_truncation(None).unwrap();
    let template = PromptTemplate::default();
    let review = "An astonishing, beautiful film that I will watch again. ".repeat(40);

    let short = template.encode(&tokenizer, "Loved it.", 64, true).unwrap();
    assert!(!short.truncated);
    let fitted = template.encode(&tokenizer, &review, 64, true).unwrap();
    assert!(fitted.truncated && fitted.ids.len() <= 64 && fitted.ids.len() >= 60, "{}", fitted.ids.len());
    let text = tokenizer.decode(&fitted.ids, true).unwrap();
    assert!(text.starts_with("you are a sentiment analysis assistant"), "{text}");
    assert!(text.ends_with("answer ( positive or negative ) :"), "{text}");
    assert!(text.contains("review : an astonishing"), "{text}");

    let batch = template.encode_batch(&tokenizer, &["Loved it.", &review], 64, true).unwrap();
    assert_eq!(batch, vec![short, fitted]);
    assert!(matches!(template.encode(&tokenizer, &review, 10, true), Err(TokenizeError::PromptTooLong { .. })));
    assert!(matches!(PromptTemplate::new("no placeholder"), Err(TokenizeError::NoPlaceholder(_))));

    let [negative, positive] = label_word_ids(&tokenizer, true).unwrap();
    assert_eq!(tokenizer.decode(&negative, true).unwrap(), "negative");
    assert_eq!(tokenizer.decode(&positive, true).unwrap(), "positive");
}
