//! `LoraFineTune` with `init`: random weights built from a `config.json` (QLoRA straight into NF4, or
//! dense), and a clear error where pretrained weights are asked for but missing.

use std::path::Path;

use burn::backend::Flex;
use polarity_core::{Example, Sentiment};
use polarity_data::ImdbDataset;
use polarity_finetune::{DataConfig, ExperimentData, FinetuneError, LoraFineTune, WeightInit};
use polarity_hub::{RepoKind, RepoSource};
use polarity_llama::LlamaConfig;

mod common;

use common::{LLAMA3, SHARED, use_shared_cache};

type Cpu = Flex<f32>;

/// A model directory with a tiny Llama's config.json (Llama 3's vocabulary, 2 layers of width 64) and
/// Meta-Llama-3-8B-Instruct's tokenizer.json: no weights.
fn tiny_llama3_dir() -> tempfile::TempDir {
    use_shared_cache();
    let dir = tempfile::tempdir().unwrap();
    let config = serde_json::json!({
        "model_type": "llama", "hidden_act": "silu", "vocab_size": 128_256, "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5, "rope_theta": 500_000.0, "tie_word_embeddings": false
    });
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let tokenizer = RepoSource::parse(LLAMA3, RepoKind::Model).file("tokenizer.json").unwrap();
    std::fs::copy(tokenizer, dir.path().join("tokenizer.json")).unwrap();
    dir
}

fn data() -> ExperimentData {
    let examples = |texts: [&str; 2]| {
        vec![Example::new(texts[0], Sentiment::Positive), Example::new(texts[1], Sentiment::Negative)]
    };
    let train = ImdbDataset::new("train", examples(["A warm, funny film.", "Dull and far too long."])).unwrap();
    let test = ImdbDataset::new("test", examples(["Moving and sharp.", "A waste of two hours."])).unwrap();
    ExperimentData::new(DataConfig::imdb(2, 2), train, None, test)
}

fn recipe(dir: &Path) -> LoraFineTune {
    let mut recipe = LoraFineTune::new(dir.display().to_string())
        .with_init(WeightInit::Random)
        .with_max_length(48)
        .with_zero_shot(false);
    recipe.trainer = recipe.trainer.with_grad_accum(1).with_eval_batch_size(2).with_progress(false);
    recipe
}

#[test]
fn random_qlora_on_a_config_directory_runs_lora_steps() {
    let dir = tiny_llama3_dir();
    let recipe = recipe(dir.path()).with_qlora(true);
    let experiment = recipe.run(&data()).unwrap();
    let report = &experiment.report;
    println!("{report}");
    assert_eq!(report.model.init, WeightInit::Random);
    assert_eq!(report.training.global_steps, 2);
    assert!(report.training.history.iter().all(|epoch| epoch.train_loss.is_finite()));
    assert_eq!(report.evaluation.report.total, 2);

    // The parameters of the model built, which are those of the dense architecture plus the adapters.
    let config = LlamaConfig::from_hf_file(&dir.path().join("config.json")).unwrap();
    let dense = config.init::<Cpu>(&Default::default()).unwrap().weight_memory();
    let model = &report.model;
    assert_eq!(model.parameters, dense.dense_params + model.trainable_parameters);
    // r 16 on q_proj (64 -> 64) and v_proj (64 -> 32) of 2 layers.
    assert_eq!(model.trainable_parameters, 2 * (16 * (64 + 64) + 16 * (64 + 32)));
    // Projections, the untied embedding table and the head in NF4 (4.5 bits per weight).
    let memory = model.weight_memory.unwrap();
    let quantized = 2 * 128_256 * 64 + 2 * (64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 128);
    assert_eq!(memory.quantized_as_f32_bytes, 4 * quantized);
    assert_eq!(memory.quantized_bytes * 8, quantized * 9 / 2);
    assert_eq!(memory.dense_bytes, 4 * (dense.dense_params - quantized));

    // Seeded by the trainer's seed: the same base again.
    let (first, _) = recipe.load_base::<Cpu>(&Default::default()).unwrap();
    let (second, _) = recipe.load_base::<Cpu>(&Default::default()).unwrap();
    let codes = |model: &polarity_llama::Llama<Cpu>| {
        model.model.layers[1].mlp.up_proj.base_layer.as_quantized().unwrap().matrix.packed_bytes().to_vec()
    };
    assert_eq!(codes(&first), codes(&second));
}

#[test]
fn random_dense_weights_without_qlora() {
    let dir = tiny_llama3_dir();
    let recipe = recipe(dir.path()).with_qlora(false);
    let experiment = recipe.run(&data()).unwrap();
    let model = &experiment.report.model;
    assert_eq!(model.init, WeightInit::Random);
    assert_eq!(model.weight_memory.unwrap().quantized_bytes, 0);
    assert_eq!(experiment.report.training.global_steps, 2);
}

#[test]
fn pretrained_weights_that_are_missing_are_a_clear_error() {
    use_shared_cache();
    let recipe = LoraFineTune::new(LLAMA3).with_qlora(true);
    assert_eq!(recipe.init, WeightInit::Pretrained);
    let err = recipe.load_base::<Cpu>(&Default::default()).unwrap_err();
    let message = err.to_string();
    println!("{message}");
    let FinetuneError::NoWeights { model, source } = &err else { panic!("{err:?}") };
    assert_eq!(model, LLAMA3);
    let searched = source.to_string();
    for part in [LLAMA3, "model.safetensors", "model.safetensors.index.json"] {
        assert!(searched.contains(part), "{part:?} not in {searched:?}");
    }
    assert!(message.contains("init: random"), "{message}");

    // Random weights from a GGUF file are refused, whether or not the file exists.
    let gguf =
        LoraFineTune::new(format!("{SHARED}/models/SmolLM2-135M-Instruct.Q4_1.gguf")).with_init(WeightInit::Random);
    let err = gguf.load_base::<Cpu>(&Default::default()).unwrap_err();
    assert!(matches!(err, FinetuneError::InvalidSetting { field: "init", .. }), "{err}");
}

#[test]
fn a_tokenizer_with_ids_past_the_embedding_table_is_refused_when_paired() {
    // Llama 3's tokenizer has 128,256 ids (128,000 + 256 added tokens); a config with a 128,000-row
    // table would let the added tokens index past it.
    let dir = tiny_llama3_dir();
    let config_path = dir.path().join("config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["vocab_size"] = 128_000.into();
    std::fs::write(&config_path, config.to_string()).unwrap();
    let err = recipe(dir.path()).load_base::<Cpu>(&Default::default()).map(|_| ()).unwrap_err();
    let FinetuneError::Llama { source, .. } = &err else { panic!("expected a Llama error, got {err}") };
    let message = source.to_string();
    assert!(message.contains("128256") && message.contains("128000"), "{message}");
}
