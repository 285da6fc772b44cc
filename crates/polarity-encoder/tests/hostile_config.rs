//! Hostile `config.json` files and weights for the encoders, built from the real configs in `../shared`
//! (MiniLM, BERT-base, DistilBERT) and MiniLM's `model.safetensors`: out-of-range probabilities, sizes
//! and epsilons, wrong JSON types, missing fields, integer-typed and NaN weights, and seeded random
//! mutations of every field. Each is a typed [`EncoderError`] naming the file, the field and the value
//! (or a correct model), never a panic or an allocation sized by a hostile number (the allocator below
//! caps the test binary at 3 GiB).

use std::path::{Path, PathBuf};
use std::time::Duration;

use burn::backend::NdArray;
use polarity_encoder::{
    BertConfig, BertModel, CheckpointError, DistilBertConfig, EncoderClassifier, EncoderError, HfConfig, HfConfigJson,
    HfModel,
};
use polarity_testkit::{CappedAllocator, Mutator, expect_error, fuzz_for, make_fifo, no_panic, within};
use serde_json::{Map, Value, json};

#[global_allocator]
static ALLOCATOR: CappedAllocator = CappedAllocator::new(3 << 30);

type B = NdArray<f32>;

const HUB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/hf/hub");

/// The one snapshot of a model in the shared hub cache.
fn snapshot(model: &str) -> PathBuf {
    let dir = Path::new(HUB).join(format!("models--{}", model.replace('/', "--"))).join("snapshots");
    std::fs::read_dir(dir).expect("the model in ../shared").next().unwrap().unwrap().path()
}

fn real_config(model: &str) -> Map<String, Value> {
    serde_json::from_str(&std::fs::read_to_string(snapshot(model).join("config.json")).unwrap()).unwrap()
}

const MINILM: &str = "sentence-transformers/all-MiniLM-L6-v2";
const BERT: &str = "google-bert/bert-base-uncased";
const DISTILBERT: &str = "distilbert/distilbert-base-uncased";

/// Builds the classifier a config describes (weights random and lazy: nothing large is allocated).
fn build(fields: &Map<String, Value>) -> Result<(), EncoderError> {
    let config = HfConfigJson::parse(&Value::Object(fields.clone()).to_string(), Path::new("hostile/config.json"))?;
    EncoderClassifier::<B>::from_config_random(&config, &Default::default()).map(|_| ())
}

fn with(model: &str, field: &str, value: Value) -> Map<String, Value> {
    let mut fields = real_config(model);
    fields.insert(field.into(), value);
    fields
}

/// Asserts that setting `field` to `value` is an invalid-field error naming the file, the field and the
/// value.
fn refused(model: &str, field: &str, value: Value) {
    let input = format!("{model} {field} = {value}");
    let result = no_panic(&input, || build(&with(model, field, value.clone())));
    let shown = match &value {
        Value::Number(n) if n.is_f64() => n.as_f64().unwrap().to_string(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    };
    let message = expect_error(&input, result, &["hostile/config.json", &format!("{field:?}"), &shown]);
    assert!(!message.contains('\n'), "{message}");
}

#[test]
fn the_real_configs_build() {
    for model in [MINILM, BERT, DISTILBERT] {
        build(&real_config(model)).unwrap();
    }
}

#[test]
fn dropout_probabilities_outside_0_1_are_refused() {
    let bert_fields = ["hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"];
    for value in [json!(-0.1), json!(1.0), json!(1.5), json!(1e308), json!(-1e308)] {
        for field in bert_fields {
            refused(MINILM, field, value.clone());
        }
        for field in ["dropout", "attention_dropout", "seq_classif_dropout"] {
            refused(DISTILBERT, field, value.clone());
        }
    }
    // 0 and 0.999 are fine.
    build(&with(MINILM, "hidden_dropout_prob", json!(0.0))).unwrap();
    build(&with(DISTILBERT, "seq_classif_dropout", json!(0.999))).unwrap();
}

#[test]
fn sizes_out_of_bounds_are_refused_before_anything_is_allocated() {
    let huge = [json!(0), json!(1u64 << 40), json!(u64::MAX), json!(i64::MAX)];
    for field in [
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "intermediate_size",
        "max_position_embeddings",
        "type_vocab_size",
        "num_labels",
    ] {
        for value in &huge {
            refused(BERT, field, value.clone());
        }
    }
    for field in ["vocab_size", "dim", "n_layers", "hidden_dim", "max_position_embeddings"] {
        for value in &huge {
            refused(DISTILBERT, field, value.clone());
        }
    }
    // Heads that do not divide the width.
    for value in [json!(0), json!(7), json!(769), json!(u64::MAX)] {
        refused(BERT, "num_attention_heads", value.clone());
        refused(DISTILBERT, "n_heads", value);
    }
    // Each size plausible, their product not: 4M x 65536 embeddings.
    let mut fields = with(BERT, "vocab_size", json!(1 << 22));
    fields.insert("hidden_size".into(), json!(1 << 16));
    fields.insert("num_attention_heads".into(), json!(16));
    let message = expect_error("4M x 64K", build(&fields), &["parameters", "more than"]);
    assert!(message.contains("hostile/config.json"), "{message}");
    // A padding row outside the vocabulary.
    refused(BERT, "pad_token_id", json!(30522));
    refused(DISTILBERT, "pad_token_id", json!(1u64 << 40));
    // So many labels the head alone would be huge; no labels at all.
    let labels: Map<String, Value> = (0..70_000).map(|i| (i.to_string(), json!("x"))).collect();
    expect_error("70,000 labels", build(&with(BERT, "id2label", Value::Object(labels))), &["id2label", "70000"]);
}

#[test]
fn epsilons_and_standard_deviations_must_be_finite_and_positive() {
    for value in [json!(0.0), json!(-1e-12), json!(-1e308)] {
        refused(MINILM, "layer_norm_eps", value);
    }
    for value in [json!(-0.02), json!(-1e308)] {
        refused(MINILM, "initializer_range", value.clone());
        refused(DISTILBERT, "initializer_range", value);
    }
}

#[test]
fn wrong_types_and_missing_fields_name_the_field() {
    for value in [json!("384"), json!([384]), json!({"a": 1}), json!(true), json!(384.5), json!(-384)] {
        let input = format!("hidden_size = {value}");
        let err = no_panic(&input, || build(&with(MINILM, "hidden_size", value.clone()))).unwrap_err();
        assert!(matches!(&err, EncoderError::InvalidConfigField { field: "hidden_size", .. }), "{input}: {err}");
    }
    for value in [json!("0.1"), json!([0.1]), json!(false)] {
        let err = build(&with(DISTILBERT, "dropout", value)).unwrap_err();
        assert!(matches!(&err, EncoderError::InvalidConfigField { field: "dropout", .. }), "{err}");
    }
    for field in ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"] {
        let mut fields = real_config(BERT);
        fields.remove(field);
        let err = build(&fields).unwrap_err();
        assert!(matches!(&err, EncoderError::MissingConfigField { field: f, .. } if *f == field), "{err}");
    }
    let mut fields = real_config(BERT);
    fields.remove("model_type");
    assert!(matches!(build(&fields), Err(EncoderError::MissingConfigField { field: "model_type", .. })));
}

#[test]
fn a_fifo_config_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    make_fifo(&path).unwrap();
    let err = within("FIFO config.json", Duration::from_secs(10), move || BertConfig::from_hf_file(&path).map(|_| ()))
        .unwrap_err();
    assert!(matches!(&err, EncoderError::Io { .. }) && err.to_string().contains("FIFO"), "{err}");
}

/// A hostile JSON value for a config field.
fn hostile_value(mutator: &mut Mutator) -> Value {
    match mutator.below(8) {
        0 => json!(mutator.hostile_integer()),
        1 => json!(-(mutator.below(1000) as i64) - 1),
        2 => json!([1e-300, 0.5, 1.0, 1e300, -0.0, 2.5][mutator.below(6)]),
        3 => json!(["", "gelu", "bert", "distilbert", "relative_key", "9"][mutator.below(6)]),
        4 => Value::Null,
        5 => json!([mutator.hostile_integer()]),
        6 => json!({"0": "negative"}),
        _ => json!(mutator.below(4) == 0),
    }
}

#[test]
fn random_field_mutations_are_errors_or_models() {
    let originals = [real_config(MINILM), real_config(BERT), real_config(DISTILBERT)];
    let mut mutator = Mutator::new(21);
    let ran = fuzz_for("config.json fields", Duration::from_secs(4), 3000, |_| {
        let mut fields = originals[mutator.below(originals.len())].clone();
        for _ in 0..1 + mutator.below(3) {
            let keys: Vec<String> = fields.keys().cloned().collect();
            let key = keys[mutator.below(keys.len())].clone();
            if mutator.below(5) == 0 {
                fields.remove(&key);
            } else {
                fields.insert(key, hostile_value(&mut mutator));
            }
        }
        let _ = build(&fields);
    });
    assert!(ran > 50, "{ran}");
}

#[test]
fn random_byte_mutations_of_config_json_are_errors_or_models() {
    let text = std::fs::read(snapshot(MINILM).join("config.json")).unwrap();
    let mut mutator = Mutator::new(22);
    let ran = fuzz_for("config.json bytes", Duration::from_secs(2), 3000, |i| {
        let bytes = if i % 2 == 0 { mutator.flip_bits(&text, 1 + i % 3) } else { mutator.truncate(&text) };
        let Ok(text) = String::from_utf8(bytes) else { return };
        if let Ok(config) = HfConfigJson::parse(&text, Path::new("config.json")) {
            let _ = EncoderClassifier::<B>::from_config_random(&config, &Default::default());
            let _ = DistilBertConfig::from_hf(&config);
        }
    });
    assert!(ran > 50, "{ran}");
}

/// MiniLM's `model.safetensors` with `edit` applied to its bytes, in `dir`.
fn minilm_copy(dir: &Path, edit: impl FnOnce(&mut Vec<u8>, &Map<String, Value>, usize)) -> PathBuf {
    let mut bytes = std::fs::read(snapshot(MINILM).join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Map<String, Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    edit(&mut bytes, &header, 8 + n);
    let path = dir.join("model.safetensors");
    std::fs::write(&path, bytes).unwrap();
    path
}

fn minilm_config() -> BertConfig {
    BertConfig::from_hf_file(&snapshot(MINILM).join("config.json")).unwrap()
}

#[test]
fn integer_and_nan_encoder_weights_are_typed_errors() {
    const QUERY: &str = "encoder.layer.0.attention.self.query.weight";
    let dir = tempfile::tempdir().unwrap();
    // The header's "F32" of the query weight becomes "I32": same size, so the file stays consistent.
    let path = minilm_copy(dir.path(), |bytes, _, data_start| {
        let header = String::from_utf8(bytes[8..data_start].to_vec()).unwrap();
        let at = header.find(&format!("\"{QUERY}\"")).unwrap();
        let dtype = at + header[at..].find("F32").unwrap();
        bytes[8 + dtype] = b'I';
    });
    let model = BertModel::<B>::from_config(&minilm_config(), &Default::default());
    let err = no_panic("I32 query weight", || model.load_safetensors(&[path])).unwrap_err();
    assert!(
        matches!(&err, EncoderError::Checkpoint(CheckpointError::DTypeMismatch { tensor, .. }) if tensor == QUERY),
        "{err}"
    );

    let path = minilm_copy(dir.path(), |bytes, header, data_start| {
        let start = header["embeddings.LayerNorm.weight"]["data_offsets"][0].as_u64().unwrap() as usize;
        bytes[data_start + start + 4..data_start + start + 8].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    let model = BertModel::<B>::from_config(&minilm_config(), &Default::default());
    let err = model.load_safetensors(&[path]).unwrap_err();
    assert!(
        matches!(&err, EncoderError::Checkpoint(CheckpointError::NonFinite { tensor, first_index: 1, .. })
            if tensor == "embeddings.LayerNorm.weight"),
        "{err}"
    );
}
