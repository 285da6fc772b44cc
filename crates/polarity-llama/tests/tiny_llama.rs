//! Parity with transformers + PEFT on the `tiny-llama` fixture: a random `LlamaForCausalLM` with
//! grouped-query attention and Llama-3 RoPE scaling, and a LoRA adapter on q_proj and v_proj.

use std::path::{Path, PathBuf};

mod common;

use burn::backend::{Autodiff, NdArray};
use burn::prelude::*;
use polarity_core::reference::{Fixture, TensorCheck, Tolerance};
use polarity_hub::RepoSource;
use polarity_llama::reference::{GRADIENT_TOLERANCE, LOGITS_TOLERANCE, LOSS_TOLERANCE};
use polarity_llama::{CheckpointError, Llama, LlamaConfig, LlamaError, LoraConfig, TensorInfo, causal_lm_loss};

use common::inputs;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/fixtures/tiny-llama");

type Cpu = NdArray<f32>;
type Train = Autodiff<Cpu>;

fn fixture() -> Fixture {
    Fixture::open(FIXTURE).expect("the tiny-llama fixture is readable")
}

fn model_dir() -> PathBuf {
    Path::new(FIXTURE).join("model")
}

fn adapter_dir() -> PathBuf {
    Path::new(FIXTURE).join("adapter")
}

fn load_base<B: Backend>() -> Llama<B> {
    Llama::from_pretrained(&RepoSource::Local(model_dir()), &Default::default()).expect("the fixture model loads")
}

/// Compares a tensor with its reference, printing the measured error; shapes must match.
fn assert_close(fixture: &Fixture, name: &str, ours: TensorData, tolerance: f64, mode: Tolerance) -> TensorCheck {
    let (shape, reference) = fixture.f32(name).unwrap();
    assert_eq!(ours.shape.to_vec(), shape, "{name}: shape");
    let check =
        TensorCheck::compare(name, &ours.convert::<f32>().into_vec::<f32>().unwrap(), reference, tolerance, mode);
    println!("{check}");
    assert!(check.ok, "{check}");
    check
}

#[test]
fn config_json_matches_the_fixture_config() {
    let config = LlamaConfig::from_hf_file(&model_dir().join("config.json")).unwrap();
    let meta = &fixture().meta["config"];
    assert_eq!(config.vocab_size as u64, meta["vocab_size"].as_u64().unwrap());
    assert_eq!(config.num_key_value_heads as u64, meta["num_key_value_heads"].as_u64().unwrap());
    assert_eq!(config.num_attention_heads as u64, meta["num_attention_heads"].as_u64().unwrap());
    assert_eq!(config.rope_theta, meta["rope_theta"].as_f64().unwrap());
    assert!(!config.tie_word_embeddings);
    let scaling = config.rope_scaling.as_ref().expect("llama3 scaling");
    let meta_scaling = &meta["rope_scaling"];
    assert_eq!(scaling.factor, meta_scaling["factor"].as_f64().unwrap());
    assert_eq!(scaling.low_freq_factor, meta_scaling["low_freq_factor"].as_f64().unwrap());
    assert_eq!(scaling.high_freq_factor, meta_scaling["high_freq_factor"].as_f64().unwrap());
    assert_eq!(
        scaling.original_max_position_embeddings as u64,
        meta_scaling["original_max_position_embeddings"].as_u64().unwrap()
    );

    // meta.json spells the same config the transformers 4 way (`rope_scaling`, top-level rope_theta).
    let mut legacy = meta.clone();
    legacy["head_dim"] = serde_json::json!(16);
    assert_eq!(LlamaConfig::from_hf_json(&legacy.to_string()).unwrap(), config);
}

#[test]
fn base_logits_match_transformers() {
    let fixture = fixture();
    let inputs = inputs::<Cpu>(&fixture);
    let logits = load_base::<Cpu>().forward(inputs.input_ids, Some(inputs.attention_mask));
    assert_close(&fixture, "logits", logits.into_data(), LOGITS_TOLERANCE, Tolerance::Absolute);
}

#[test]
fn peft_adapter_logits_loss_gradients_and_merge_match_peft() {
    let fixture = fixture();
    let inputs = inputs::<Train>(&fixture);
    let (lora, config) = load_base::<Train>().load_lora(&RepoSource::Local(adapter_dir())).unwrap();
    assert_eq!((config.r, config.lora_alpha, config.scaling()), (4, 8.0, 2.0));
    assert_eq!(lora.lora_adapters().len(), 2 * 2, "q_proj and v_proj in both layers");

    let logits = lora.forward(inputs.input_ids.clone(), Some(inputs.attention_mask.clone()));
    assert_close(&fixture, "lora_logits", logits.to_data(), LOGITS_TOLERANCE, Tolerance::Absolute);

    let loss = causal_lm_loss(logits, inputs.labels);
    assert_close(&fixture, "lora_loss", loss.to_data(), LOSS_TOLERANCE, Tolerance::Absolute);

    let grads = loss.backward();
    let gradients = lora.lora_gradients(&grads);
    let references: Vec<&str> = fixture.names().into_iter().filter(|n| n.starts_with("grad.")).collect();
    assert_eq!(references.len(), 4);
    for reference in references {
        let (_, grad) = gradients
            .iter()
            .find(|(name, _)| *name == reference["grad.".len()..])
            .unwrap_or_else(|| panic!("no gradient for {reference}"));
        assert_close(&fixture, reference, grad.clone(), GRADIENT_TOLERANCE, Tolerance::Relative);
    }
    // Only adapters train: the frozen base weights get no gradient.
    let layer = &lora.model.layers[0];
    assert!(layer.self_attn.q_proj.base_layer.as_dense().unwrap().weight.val().grad(&grads).is_none());
    assert!(lora.model.embed_tokens.as_dense().unwrap().weight.val().grad(&grads).is_none());

    let merged = lora.merge_lora().inference();
    assert!(merged.lora_adapters().is_empty());
    let merged_logits = merged.forward(inputs.input_ids.inner(), Some(inputs.attention_mask.inner()));
    assert_close(&fixture, "merged_logits", merged_logits.into_data(), LOGITS_TOLERANCE, Tolerance::Absolute);
}

#[test]
fn verify_runs_every_check_of_the_fixture() {
    let checks = polarity_llama::reference::verify(Path::new(FIXTURE), None).unwrap();
    for check in &checks {
        println!("{check}");
    }
    let names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
    for expected in ["logits", "lora_logits", "lora_loss", "merged_logits"] {
        assert!(names.contains(&expected), "{names:?}");
    }
    assert_eq!(names.iter().filter(|n| n.starts_with("grad.")).count(), 4);
    assert!(checks.iter().all(|c| c.ok));
}

#[test]
fn a_fresh_adapter_changes_nothing_and_only_it_trains() {
    let fixture = fixture();
    let inputs = inputs::<Train>(&fixture);
    let config = LoraConfig::new(2, 4.0).with_target_modules(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"].map(String::from).to_vec(),
    );
    let lora = load_base::<Train>().with_lora(&config).unwrap();
    assert_eq!(lora.lora_adapters().len(), 7 * 2);

    let logits = lora.forward(inputs.input_ids.clone(), Some(inputs.attention_mask.clone()));
    assert_close(&fixture, "logits", logits.to_data(), LOGITS_TOLERANCE, Tolerance::Absolute);

    let grads = causal_lm_loss(logits, inputs.labels).backward();
    let gradients = lora.lora_gradients(&grads);
    assert_eq!(gradients.len(), 2 * 7 * 2, "lora_A and lora_B of every adapter");
    // lora_B starts at zero, so lora_A's gradient is zero and lora_B's is not.
    let norm = |name: &str| -> f32 {
        let (_, grad) = gradients.iter().find(|(n, _)| n == name).unwrap();
        grad.to_vec::<f32>().unwrap().iter().map(|v| v.abs()).sum()
    };
    assert_eq!(norm("model.layers.0.mlp.down_proj.lora_A.weight"), 0.0);
    assert!(norm("model.layers.0.mlp.down_proj.lora_B.weight") > 0.0);
    assert!(lora.model.layers[1].mlp.up_proj.base_layer.as_dense().unwrap().weight.val().grad(&grads).is_none());
    assert!(lora.lm_head.as_ref().unwrap().as_dense().unwrap().weight.val().grad(&grads).is_none());
}

#[test]
fn saved_adapters_round_trip_in_peft_format() {
    let fixture = fixture();
    let inputs = inputs::<Cpu>(&fixture);
    let (lora, config) = load_base::<Cpu>().load_lora(&RepoSource::Local(adapter_dir())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    lora.save_lora(dir.path(), &config, Some("tiny-llama")).unwrap();

    // Same keys, shapes and values as PEFT's own file.
    let ours = std::fs::read(dir.path().join("adapter_model.safetensors")).unwrap();
    let peft = std::fs::read(adapter_dir().join("adapter_model.safetensors")).unwrap();
    let ours = safetensors::SafeTensors::deserialize(&ours).unwrap();
    let peft = safetensors::SafeTensors::deserialize(&peft).unwrap();
    let mut names = ours.names();
    names.sort();
    let mut peft_names = peft.names();
    peft_names.sort();
    assert_eq!(names, peft_names);
    for name in names {
        let (a, b) = (ours.tensor(name).unwrap(), peft.tensor(name).unwrap());
        assert_eq!(a.shape(), b.shape(), "{name}");
        assert_eq!(a.data(), b.data(), "{name}");
    }
    assert_eq!(LoraConfig::from_peft_file(&dir.path().join("adapter_config.json")).unwrap(), config);

    let (reloaded, _) = load_base::<Cpu>().load_lora(&RepoSource::Local(dir.path().to_path_buf())).unwrap();
    let logits = reloaded.forward(inputs.input_ids, Some(inputs.attention_mask));
    assert_close(&fixture, "lora_logits", logits.into_data(), LOGITS_TOLERANCE, Tolerance::Absolute);
}

/// A copy of the fixture model whose safetensors file is rewritten by `edit` (name, shape, bytes).
fn edited_model(edit: impl Fn(&str, &[usize], &[u8]) -> Option<(Vec<usize>, Vec<u8>)>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(model_dir().join("config.json"), dir.path().join("config.json")).unwrap();
    let bytes = std::fs::read(model_dir().join("model.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = file
        .tensors()
        .into_iter()
        .filter_map(|(name, view)| edit(&name, view.shape(), view.data()).map(|(shape, data)| (name, shape, data)))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(name, shape, data)| {
            (name.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data).unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.path().join("model.safetensors")).unwrap();
    dir
}

#[test]
fn a_missing_tensor_is_an_error_naming_it() {
    let dir = edited_model(|name, shape, data| {
        (name != "model.layers.1.mlp.up_proj.weight").then(|| (shape.to_vec(), data.to_vec()))
    });
    let err =
        Llama::<Cpu>::from_pretrained(&RepoSource::Local(dir.path().to_path_buf()), &Default::default()).unwrap_err();
    match &err {
        LlamaError::Checkpoint(CheckpointError::MissingTensors { tensors, .. }) => {
            assert_eq!(
                tensors,
                &[TensorInfo { name: "model.layers.1.mlp.up_proj.weight".into(), shape: vec![128, 64] }]
            )
        }
        other => panic!("expected MissingTensors, got {other:?}"),
    }
    assert!(err.to_string().contains("model.layers.1.mlp.up_proj.weight"), "{err}");
}

#[test]
fn a_shape_mismatch_is_an_error_naming_tensor_and_shapes() {
    // Drop the last row of k_proj: [32, 64] becomes [31, 64].
    let dir = edited_model(|name, shape, data| {
        if name == "model.layers.0.self_attn.k_proj.weight" {
            Some((vec![shape[0] - 1, shape[1]], data[..(shape[0] - 1) * shape[1] * 4].to_vec()))
        } else {
            Some((shape.to_vec(), data.to_vec()))
        }
    });
    let err =
        Llama::<Cpu>::from_pretrained(&RepoSource::Local(dir.path().to_path_buf()), &Default::default()).unwrap_err();
    match err {
        LlamaError::Checkpoint(CheckpointError::ShapeMismatch { tensor, expected, found, .. }) => {
            assert_eq!(tensor, "model.layers.0.self_attn.k_proj.weight");
            assert_eq!(expected, vec![32, 64]);
            assert_eq!(found, vec![31, 64]);
        }
        other => panic!("expected ShapeMismatch, got {other:?}"),
    }
}

#[test]
fn sharded_checkpoints_load_like_single_files() {
    let fixture = fixture();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(model_dir().join("config.json"), dir.path().join("config.json")).unwrap();
    polarity_core::reference::write_sharded_copy(&model_dir().join("model.safetensors"), dir.path(), 2).unwrap();

    let source = RepoSource::Local(dir.path().to_path_buf());
    assert_eq!(source.safetensors_files().unwrap().len(), 2);
    let model = Llama::<Cpu>::from_pretrained(&source, &Default::default()).unwrap();
    let inputs = inputs::<Cpu>(&fixture);
    let logits = model.forward(inputs.input_ids, Some(inputs.attention_mask));
    assert_close(&fixture, "logits", logits.into_data(), LOGITS_TOLERANCE, Tolerance::Absolute);
}

#[test]
fn adapter_files_with_foreign_tensors_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let config = std::fs::read_to_string(adapter_dir().join("adapter_config.json")).unwrap();
    // The same adapter, but declared for q_proj only: the v_proj tensors then belong to no adapter.
    let mut config: serde_json::Value = serde_json::from_str(&config).unwrap();
    config["target_modules"] = serde_json::json!(["q_proj"]);
    std::fs::write(dir.path().join("adapter_config.json"), config.to_string()).unwrap();
    std::fs::copy(adapter_dir().join("adapter_model.safetensors"), dir.path().join("adapter_model.safetensors"))
        .unwrap();
    let err = load_base::<Cpu>().load_lora(&RepoSource::Local(dir.path().to_path_buf())).unwrap_err();
    match err {
        LlamaError::Checkpoint(CheckpointError::UnexpectedTensors { tensors, .. }) => {
            assert_eq!(tensors.len(), 4);
            assert!(tensors.iter().all(|t| t.name.contains("v_proj")), "{tensors:?}");
        }
        other => panic!("expected UnexpectedTensors, got {other:?}"),
    }
}

/// Mixed precision (every projection, the adapters and the head in bf16 or f16; norms, RoPE and
/// softmax in f32) stays within half precision's rounding of PEFT's f32 logits, on the CPU default.
#[test]
fn half_precision_lora_logits_stay_close_to_peft() {
    use burn::backend::Flex;
    use burn::tensor::FloatDType;
    use polarity_kernels::autocast::autocast;
    let fixture = fixture();
    let inputs = inputs::<Flex>(&fixture);
    let (lora, _) = load_base::<Flex>().load_lora(&RepoSource::Local(adapter_dir())).unwrap();
    for (dtype, tolerance) in [(FloatDType::BF16, 2e-2), (FloatDType::F16, 5e-3)] {
        let logits =
            autocast(Some(dtype), || lora.forward(inputs.input_ids.clone(), Some(inputs.attention_mask.clone())));
        assert_eq!(logits.dtype(), burn::tensor::DType::F32);
        let check = assert_close(&fixture, "lora_logits", logits.into_data(), tolerance, Tolerance::Absolute);
        assert!(check.max_abs_err > 1e-6, "{dtype:?}: autocast changed nothing: {check}");
    }
}
