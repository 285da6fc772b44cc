//! Hostile `tokenizer.json` files and truncation lengths, built from the real BERT and MiniLM tokenizers
//! in `../shared`: no post-processor, added tokens past the model's embedding, template token types past
//! its segment embedding, lengths that leave no room for text or exceed the positions, FIFOs, and seeded
//! random mutations of the file. Each is a typed [`TokenizeError`] naming the value and the limit (or a
//! working tokenizer), never a panic or a hang (the allocator below caps the test binary at 3 GiB).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use polarity_testkit::{CappedAllocator, Mutator, expect_error, fuzz_for, make_fifo, within};
use polarity_tokenize::{Encode, HfTokenizer, ModelLimits, TokenizeError, parse_tokenizer_json};
use serde_json::{Value, json};
use tokenizers::Tokenizer;

#[global_allocator]
static ALLOCATOR: CappedAllocator = CappedAllocator::new(3 << 30);

const HUB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/hf/hub");

fn snapshot(model: &str) -> PathBuf {
    let dir = Path::new(HUB).join(format!("models--{}", model.replace('/', "--"))).join("snapshots");
    std::fs::read_dir(dir).expect("the model in ../shared").next().unwrap().unwrap().path()
}

fn bert_json() -> Value {
    let path = snapshot("google-bert/bert-base-uncased").join("tokenizer.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn tokenizer(json: &Value, max_length: Option<usize>) -> Result<HfTokenizer, TokenizeError> {
    HfTokenizer::new(Tokenizer::from_str(&json.to_string()).unwrap(), max_length)
}

/// BERT-base's limits.
fn bert_limits() -> ModelLimits {
    ModelLimits {
        model: "bert-base".into(),
        vocab_size: 30_522,
        max_positions: 512,
        type_vocab_size: Some(2),
        pools_first_token: true,
    }
}

#[test]
fn the_real_tokenizer_fits_its_model() {
    let tokenizer = tokenizer(&bert_json(), Some(512)).unwrap();
    tokenizer.check_model(&bert_limits()).unwrap();
    // The shortest useful length: [CLS], one token, [SEP].
    let tokenizer = HfTokenizer::new(tokenizer.tokenizer().clone(), Some(3)).unwrap();
    let ids = tokenizer.encode_batch(&["a long review of a film"]).unwrap();
    assert_eq!(ids[0].ids, [101, 1037, 102]);
}

#[test]
fn lengths_without_room_for_text_are_refused() {
    for max_length in [0, 1, 2] {
        let err = tokenizer(&bert_json(), Some(max_length)).unwrap_err();
        assert!(matches!(err, TokenizeError::Truncation { max_length: m, .. } if m == max_length), "{err}");
        expect_error(&format!("max_length {max_length}"), Err::<(), _>(err), &[&max_length.to_string(), "at least 3"]);
    }
    // Without a post-processor there are no special tokens: 1 is enough.
    let mut json = bert_json();
    json["post_processor"] = Value::Null;
    assert!(tokenizer(&json, Some(1)).is_ok());
    assert!(tokenizer(&json, Some(0)).is_err());
}

#[test]
fn lengths_beyond_the_position_embeddings_are_refused() {
    let tokenizer = tokenizer(&bert_json(), Some(513)).unwrap();
    let err = tokenizer.check_model(&bert_limits()).unwrap_err();
    expect_error("max_length 513", Err::<(), _>(err), &["513", "512", "max_position_embeddings"]);
    let untruncated = HfTokenizer::new(tokenizer.tokenizer().clone(), None).unwrap();
    assert!(matches!(untruncated.check_model(&bert_limits()), Err(TokenizeError::ModelMismatch { .. })));
}

#[test]
fn a_tokenizer_without_a_post_processor_is_refused_for_a_pooling_classifier() {
    let mut json = bert_json();
    json["post_processor"] = Value::Null;
    let tokenizer = tokenizer(&json, Some(128)).unwrap();
    let err = tokenizer.check_model(&bert_limits()).unwrap_err();
    assert!(matches!(err, TokenizeError::ModelMismatch { .. }), "{err}");
    expect_error("no post-processor", Err::<(), _>(err), &["no special token in front", "bert-base"]);
    // A model that does not pool the first token takes it.
    tokenizer.check_model(&ModelLimits { pools_first_token: false, ..bert_limits() }).unwrap();
}

#[test]
fn ids_beyond_the_embedding_are_refused() {
    let mut json = bert_json();
    let added = json!({"id": 30522, "content": "[NEW]", "single_word": false, "lstrip": false, "rstrip": false,
                        "normalized": false, "special": true});
    json["added_tokens"].as_array_mut().unwrap().push(added);
    let tokenizer = tokenizer(&json, Some(128)).unwrap();
    let err = tokenizer.check_model(&bert_limits()).unwrap_err();
    expect_error("added token 30522", Err::<(), _>(err), &["[NEW]", "30522", "vocab_size"]);
    tokenizer.check_model(&ModelLimits { vocab_size: 30_523, ..bert_limits() }).unwrap();
    // A smaller embedding than the base vocabulary.
    let tokenizer = self::tokenizer(&bert_json(), Some(128)).unwrap();
    assert!(tokenizer.check_model(&ModelLimits { vocab_size: 30_000, ..bert_limits() }).is_err());
}

#[test]
fn template_type_ids_beyond_the_segment_embedding_are_refused() {
    let mut json = bert_json();
    json["post_processor"]["single"][1]["Sequence"]["type_id"] = json!(5);
    let tokenizer = tokenizer(&json, Some(128)).unwrap();
    let err = tokenizer.check_model(&bert_limits()).unwrap_err();
    expect_error("type id 5", Err::<(), _>(err), &["token type id 5", "type_vocab_size 2"]);
    // DistilBERT reads no type ids.
    tokenizer.check_model(&ModelLimits { type_vocab_size: None, ..bert_limits() }).unwrap();
}

#[test]
fn a_fifo_tokenizer_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    make_fifo(&path).unwrap();
    let err =
        within("FIFO tokenizer.json", Duration::from_secs(10), move || HfTokenizer::from_file(&path, 128)).unwrap_err();
    assert!(matches!(&err, TokenizeError::Load { .. }) && err.to_string().contains("FIFO"), "{err}");
}

/// Loads the mutated text, encodes two reviews and checks it against BERT-base: any outcome but a panic.
fn attempt(text: &str, max_length: usize) {
    let Ok(tokenizer) = parse_tokenizer_json(text, Path::new("tokenizer.json")) else { return };
    let Ok(tokenizer) = HfTokenizer::new(tokenizer, Some(max_length)) else { return };
    if let Ok(ids) = tokenizer.encode_batch(&["A moving film, beautifully shot.", "Two hours I will never get back"]) {
        assert!(ids.iter().all(|row| row.len() <= max_length), "truncation to {max_length} did not hold");
    }
    let _ = tokenizer.check_model(&bert_limits());
}

/// A hostile JSON value.
fn hostile_value(mutator: &mut Mutator) -> Value {
    match mutator.below(6) {
        0 => json!(mutator.hostile_integer()),
        1 => json!(-1),
        2 => json!(["", "[CLS]", "WordPiece", "BPE", "TemplateProcessing", "##"][mutator.below(6)]),
        3 => Value::Null,
        4 => json!([]),
        _ => json!({}),
    }
}

#[test]
fn random_structural_mutations_never_panic() {
    let original = bert_json();
    let paths: [&[&str]; 12] = [
        &["model", "type"],
        &["model", "unk_token"],
        &["model", "max_input_chars_per_word"],
        &["model", "continuing_subword_prefix"],
        &["normalizer"],
        &["pre_tokenizer"],
        &["post_processor"],
        &["post_processor", "special_tokens", "[CLS]", "ids"],
        &["post_processor", "single"],
        &["truncation"],
        &["padding"],
        &["decoder"],
    ];
    let mut mutator = Mutator::new(31);
    let ran = fuzz_for("tokenizer.json structure", Duration::from_secs(5), 400, |_| {
        let mut json = original.clone();
        let path = paths[mutator.below(paths.len())];
        let mut slot = &mut json;
        for key in path {
            slot = &mut slot[*key];
        }
        *slot = hostile_value(&mut mutator);
        if mutator.below(3) == 0 {
            // An added token with a hostile id.
            let id = mutator.hostile_integer() % (1 << 33);
            let token = json!({"id": id, "content": "[X]", "single_word": false, "lstrip": false, "rstrip": false,
                               "normalized": false, "special": true});
            json["added_tokens"].as_array_mut().unwrap().push(token);
        }
        attempt(&json.to_string(), 1 + mutator.below(600));
    });
    assert!(ran > 5, "{ran}");
}

#[test]
fn random_byte_mutations_never_panic() {
    let path = snapshot("sentence-transformers/all-MiniLM-L6-v2").join("tokenizer.json");
    let bytes = std::fs::read(path).unwrap();
    let mut mutator = Mutator::new(32);
    // Flips in the first 4 KiB (settings, added tokens, post-processor), and truncations anywhere.
    let ran = fuzz_for("tokenizer.json bytes", Duration::from_secs(4), 400, |i| {
        let mutated =
            if i % 3 == 2 { mutator.truncate(&bytes) } else { mutator.flip_bits_in(&bytes, 1 + i % 4, 0..4096) };
        if let Ok(text) = String::from_utf8(mutated) {
            attempt(&text, 128);
        }
    });
    assert!(ran > 5, "{ran}");
}
