//! Hostile PEFT adapters, built from the `tiny-llama` fixture's real adapter in `../shared`: LoRA alpha 0,
//! negative or huge, ranks 0 or huge, dropout outside `[0, 1)`, NaN and integer-typed LoRA matrices, a
//! FIFO for `adapter_config.json`, and seeded random mutations of its fields. Each is a typed
//! [`LlamaError`] naming the file, the value or the tensor, never a panic, a hang or an adapter that
//! silently computes something else.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use burn::backend::NdArray;
use polarity_hub::RepoSource;
use polarity_llama::layers::lora::{MAX_LORA_RANK, MAX_LORA_SCALING};
use polarity_llama::{CheckpointError, Llama, LlamaError, LoraConfig};
use serde_json::{Map, Value, json};

type B = NdArray<f32>;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/fixtures/tiny-llama");

fn adapter_config() -> Map<String, Value> {
    let path = Path::new(FIXTURE).join("adapter/adapter_config.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn with(field: &str, value: Value) -> String {
    let mut config = adapter_config();
    config.insert(field.into(), value);
    Value::Object(config).to_string()
}

fn base() -> Llama<B> {
    Llama::from_pretrained(&RepoSource::Local(Path::new(FIXTURE).join("model")), &Default::default()).unwrap()
}

/// A copy of the fixture's adapter in `dir`, its weights file edited by `edit` (bytes, header, data start).
fn adapter_copy(dir: &Path, edit: impl FnOnce(&mut Vec<u8>, &Map<String, Value>, usize)) -> PathBuf {
    let source = Path::new(FIXTURE).join("adapter");
    std::fs::copy(source.join("adapter_config.json"), dir.join("adapter_config.json")).unwrap();
    let mut bytes = std::fs::read(source.join("adapter_model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Map<String, Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    edit(&mut bytes, &header, 8 + n);
    std::fs::write(dir.join("adapter_model.safetensors"), bytes).unwrap();
    dir.to_path_buf()
}

fn message(result: Result<LoraConfig, LlamaError>, input: &str) -> String {
    let err = result.expect_err(input);
    assert!(matches!(err, LlamaError::InvalidConfig(_)), "{input}: {err}");
    err.to_string()
}

#[test]
fn the_fixture_adapter_config_is_accepted() {
    let config = LoraConfig::from_peft_json(&Value::Object(adapter_config()).to_string()).unwrap();
    assert_eq!((config.r, config.lora_alpha), (4, 8.0));
}

#[test]
fn alpha_zero_negative_or_huge_is_refused() {
    for alpha in [json!(0), json!(-8), json!(-1e-9), json!(1e308), json!(40_001)] {
        let input = format!("lora_alpha {alpha}");
        let text = message(LoraConfig::from_peft_json(&with("lora_alpha", alpha.clone())), &input);
        assert!(text.contains("adapter_config.json") && text.contains("lora_alpha"), "{text}");
    }
    // alpha / r = 1e4 exactly is the bound.
    assert!(LoraConfig::from_peft_json(&with("lora_alpha", json!(MAX_LORA_SCALING * 4.0))).is_ok());
    // Not representable in JSON, but a flag or a caller can pass them.
    for alpha in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        assert!(LoraConfig::new(4, alpha).with_target_modules(vec!["q_proj".into()]).validate(&["q_proj"]).is_err());
    }
}

#[test]
fn ranks_zero_or_huge_are_refused() {
    for r in [json!(0), json!(MAX_LORA_RANK + 1), json!(1u64 << 40), json!(u64::MAX)] {
        let text = message(LoraConfig::from_peft_json(&with("r", r.clone())), &format!("r {r}"));
        assert!(text.contains("adapter_config.json") && text.contains(&r.to_string()), "{text}");
    }
    for r in [json!(-1), json!(4.5), json!("4")] {
        assert!(LoraConfig::from_peft_json(&with("r", r)).is_err());
    }
}

#[test]
fn dropout_outside_0_1_is_refused() {
    for p in [json!(-0.1), json!(1.0), json!(1e308)] {
        let text = message(LoraConfig::from_peft_json(&with("lora_dropout", p.clone())), &format!("dropout {p}"));
        assert!(text.contains("lora_dropout"), "{text}");
    }
}

#[test]
fn nan_and_integer_lora_matrices_are_typed_errors() {
    const B_MATRIX: &str = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight";
    const A_MATRIX: &str = "base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight";
    let dir = tempfile::tempdir().unwrap();
    let source = adapter_copy(dir.path(), |bytes, header, data_start| {
        let start = header[B_MATRIX]["data_offsets"][0].as_u64().unwrap() as usize;
        bytes[data_start + start + 12..data_start + start + 16].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    let err = base().load_lora(&RepoSource::Local(source)).unwrap_err();
    assert!(
        matches!(&err, LlamaError::Checkpoint(CheckpointError::NonFinite { tensor, first_index: 3, count: 1, .. })
            if tensor == B_MATRIX),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let source = adapter_copy(dir.path(), |bytes, _, data_start| {
        let header = String::from_utf8(bytes[8..data_start].to_vec()).unwrap();
        let at = header.find(A_MATRIX).unwrap();
        let dtype = at + header[at..].find("F32").unwrap();
        bytes[8 + dtype] = b'I';
    });
    let err = base().load_lora(&RepoSource::Local(source)).unwrap_err();
    assert!(
        matches!(&err, LlamaError::Checkpoint(CheckpointError::DTypeMismatch { tensor, .. }) if tensor == A_MATRIX),
        "{err}"
    );
}

#[test]
fn a_fifo_adapter_config_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("adapter_config.json");
    let made = std::process::Command::new("mkfifo").arg(&path).status().unwrap().success();
    assert!(made);
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || sender.send(LoraConfig::from_peft_file(&path).map(|_| ()).map_err(|e| e.to_string())));
    let result = receiver.recv_timeout(Duration::from_secs(10)).expect("reading a FIFO hung");
    let err = result.unwrap_err();
    assert!(err.contains("FIFO"), "{err}");
}

/// splitmix64, for seeded mutations without a dev-dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn random_adapter_config_mutations_are_errors_or_working_adapters() {
    let original = adapter_config();
    let model = base();
    let mut rng = Rng(41);
    let values = [
        json!(0),
        json!(1),
        json!(-1),
        json!(u64::MAX),
        json!(1u64 << 31),
        json!(0.5),
        json!(1e308),
        json!(-1e308),
        json!(null),
        json!("all-linear"),
        json!(["q_proj", "nope"]),
        json!([1]),
        json!({}),
        json!(true),
        json!("DORA"),
    ];
    let fields = ["r", "lora_alpha", "lora_dropout", "target_modules", "peft_type", "use_rslora", "bias", "use_dora"];
    let started = Instant::now();
    let mut ran = 0;
    while ran < 400 && started.elapsed() < Duration::from_secs(4) {
        let mut config = original.clone();
        for _ in 0..1 + rng.below(2) {
            config.insert(fields[rng.below(fields.len())].into(), values[rng.below(values.len())].clone());
        }
        let text = Value::Object(config).to_string();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if let Ok(config) = LoraConfig::from_peft_json(&text) {
                assert!(config.scaling().is_finite() && config.scaling() > 0.0, "{text}");
                // An accepted config attaches to the model.
                model.clone().with_lora(&config).unwrap();
            }
        }));
        assert!(outcome.is_ok(), "panicked on {text}");
        ran += 1;
    }
    assert!(ran > 10, "{ran}");
}
