//! The model on random weights: configs (Llama-3-8B included), attention variants, masking, RoPE and
//! the loss.

use burn::backend::NdArray;
use burn::prelude::*;
use polarity_llama::{IGNORE_INDEX, LlamaConfig, LlamaError, causal_lm_loss};
use polarity_tokenize::PaddingBatcher;

type Cpu = NdArray<f32>;

/// `meta-llama/Meta-Llama-3-8B-Instruct`'s config.json as published (no head_dim, no rope_scaling).
const LLAMA3_8B_CONFIG: &str = r#"{
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 128000, "eos_token_id": 128009, "hidden_act": "silu", "hidden_size": 4096,
  "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 8192,
  "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
  "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": null, "rope_theta": 500000.0,
  "tie_word_embeddings": false, "torch_dtype": "bfloat16", "transformers_version": "4.40.0.dev0",
  "use_cache": true, "vocab_size": 128256
}"#;

#[test]
fn llama3_8b_config_parses_and_builds_lazily() {
    let parsed = LlamaConfig::from_hf_json(LLAMA3_8B_CONFIG).unwrap();
    assert_eq!(
        (parsed.hidden_size, parsed.num_hidden_layers, parsed.num_attention_heads, parsed.num_key_value_heads),
        (4096, 32, 32, 8)
    );
    assert_eq!((parsed.intermediate_size, parsed.vocab_size, parsed.rope_theta), (14_336, 128_256, 500_000.0));
    assert!(parsed.rope_scaling.is_none());

    // With Llama 3.1's RoPE scaling in the newer `rope_parameters` spelling.
    let mut json: serde_json::Value = serde_json::from_str(LLAMA3_8B_CONFIG).unwrap();
    json["rope_parameters"] = serde_json::json!({
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192
    });
    let scaled = LlamaConfig::from_hf_json(&json.to_string()).unwrap();
    assert_eq!(scaled, LlamaConfig::llama3_8b_instruct());

    // Two layers of the real architecture: parameters are created lazily, so this is cheap.
    let model = LlamaConfig::llama3_8b_instruct().with_num_hidden_layers(2).init::<Cpu>(&Default::default()).unwrap();
    assert_eq!(model.num_layers(), 2);
    assert_eq!(model.vocab_size(), 128_256);
    let attention = &model.model.layers[1].self_attn;
    assert_eq!(attention.q_proj.dims(), [4096, 4096]);
    assert_eq!(attention.k_proj.dims(), [4096, 1024]);
    assert_eq!(attention.v_proj.dims(), [4096, 1024]);
    assert_eq!(attention.o_proj.dims(), [4096, 4096]);
    assert_eq!(model.model.layers[0].mlp.gate_proj.dims(), [4096, 14_336]);
    assert_eq!(model.model.layers[0].mlp.down_proj.dims(), [14_336, 4096]);
    assert!(model.lm_head.is_some());
}

#[test]
fn invalid_configs_are_errors() {
    let bad_heads = LlamaConfig::new(16, 32, 64, 1, 6, 4);
    assert!(
        matches!(bad_heads.validate(), Err(LlamaError::InvalidConfigValue { reason, .. }) if reason.contains("multiple"))
    );
    assert!(bad_heads.init::<Cpu>(&Default::default()).is_err());
    let odd_head = LlamaConfig::new(16, 30, 64, 1, 2, 2);
    assert!(
        matches!(odd_head.validate(), Err(LlamaError::InvalidConfigValue { reason, .. }) if reason.contains("even"))
    );

    let mut json: serde_json::Value = serde_json::from_str(LLAMA3_8B_CONFIG).unwrap();
    json["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0});
    assert!(
        matches!(LlamaConfig::from_hf_json(&json.to_string()), Err(LlamaError::Unsupported(what)) if what.contains("yarn"))
    );
    json["rope_scaling"] = serde_json::json!({"type": "llama3", "factor": 4.0});
    assert!(matches!(LlamaConfig::from_hf_json(&json.to_string()), Err(LlamaError::InvalidConfig(_))));
    json["rope_scaling"] = serde_json::Value::Null;
    json["hidden_act"] = serde_json::json!("gelu");
    assert!(matches!(LlamaConfig::from_hf_json(&json.to_string()), Err(LlamaError::Unsupported(_))));
    assert!(matches!(LlamaConfig::from_hf_json("{\"hidden_size\": 8}"), Err(LlamaError::InvalidConfig(_))));
}

#[test]
fn llama3_rope_scaling_keeps_high_and_divides_low_frequencies() {
    let plain = LlamaConfig::llama3_8b_instruct().with_rope_scaling(None).rope_inverse_frequencies();
    let scaled = LlamaConfig::llama3_8b_instruct().rope_inverse_frequencies();
    assert_eq!(plain.len(), 64);
    assert_eq!(plain[0], 1.0);
    let wavelength = |inv_freq: f32| 2.0 * std::f32::consts::PI / inv_freq;
    let (low_freq_wavelen, high_freq_wavelen) = (8192.0, 8192.0 / 4.0);
    for (p, s) in plain.iter().zip(&scaled) {
        if wavelength(*p) < high_freq_wavelen {
            assert_eq!(p, s);
        } else if wavelength(*p) > low_freq_wavelen {
            assert!((s - p / 8.0).abs() <= f32::EPSILON * p);
        } else {
            assert!(*s < *p && *s > p / 8.0, "interpolated between the two");
        }
    }
    assert!(scaled.windows(2).all(|w| w[1] < w[0]));
}

/// A small model with the given attention layout and random weights.
fn random_model(heads: usize, kv_heads: usize, tied: bool) -> polarity_llama::Llama<Cpu> {
    random_model_on(heads, kv_heads, tied)
}

fn random_model_on<B: Backend>(heads: usize, kv_heads: usize, tied: bool) -> polarity_llama::Llama<B> {
    let _draws = polarity_core::backend::seeded_draws();
    B::seed(&Default::default(), 3);
    LlamaConfig::new(50, 32, 48, 2, heads, kv_heads)
        .with_tie_word_embeddings(tied)
        .with_rope_scaling(Some(polarity_llama::Llama3RopeScaling::new(8.0, 1.0, 4.0, 4)))
        .init(&Default::default())
        .unwrap()
}

/// `[rows, width]` values as one vector.
fn floats<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Vec<f32> {
    tensor.into_data().to_vec::<f32>().unwrap()
}

fn max_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
}

/// On ndarray every call takes the padded layout; on flex (the CPU default) `last_token_logits` packs
/// the right-padded rows (`PackedSequences`), so both layouts are checked against `forward`.
fn check_padding_does_not_change_the_real_positions<B: Backend>() {
    let device = Default::default();
    // Multi-query, grouped-query and multi-head attention; tied and untied heads.
    for (heads, kv_heads, tied) in [(4, 1, true), (4, 2, false), (4, 4, false)] {
        let model = random_model_on::<B>(heads, kv_heads, tied);
        let short = vec![3u32, 14, 15, 9];
        let long = vec![2u32, 7, 1, 8, 2, 8, 18];
        let alone = PaddingBatcher::new(0).pad_ids::<B, _>(std::slice::from_ref(&short), &device);
        let alone = floats(model.forward(alone.input_ids, Some(alone.attention_mask)));
        let batch = PaddingBatcher::new(0).pad_ids::<B, _>(&[long.clone(), short.clone()], &device);
        let together = model.forward(batch.input_ids.clone(), Some(batch.attention_mask.clone()));
        assert_eq!(together.dims(), [2, 7, 50]);
        let row = floats(together.clone().slice([1..2, 0..4]));
        let max_diff = max_difference(&alone, &row);
        assert!(max_diff < 1e-5, "heads {heads}/{kv_heads}: {max_diff}");

        // last_token_logits gives each row's last real position.
        let last = floats(model.last_token_logits(batch.input_ids, batch.attention_mask));
        let full = floats(together);
        let (row_0, row_1) = (&full[6 * 50..7 * 50], &full[(7 + 3) * 50..(7 + 4) * 50]);
        assert!(max_difference(&last[..50], row_0) < 1e-5, "heads {heads}/{kv_heads}, row 0");
        assert!(max_difference(&last[50..], row_1) < 1e-5, "heads {heads}/{kv_heads}, row 1");
    }
}

#[test]
fn padding_does_not_change_the_real_positions() {
    check_padding_does_not_change_the_real_positions::<Cpu>();
    check_padding_does_not_change_the_real_positions::<burn::backend::Flex>();
}

#[test]
fn attention_is_causal() {
    let model = random_model(4, 2, true);
    let device = Default::default();
    let prefix = PaddingBatcher::new(0).pad_ids::<Cpu, _>(&[vec![5, 6, 7]], &device);
    let extended = PaddingBatcher::new(0).pad_ids::<Cpu, _>(&[vec![5, 6, 7, 40, 41]], &device);
    let prefix = model.forward(prefix.input_ids, None).into_data().to_vec::<f32>().unwrap();
    let extended = model.forward(extended.input_ids, None).into_data().to_vec::<f32>().unwrap();
    let max_diff = prefix.iter().zip(&extended[..prefix.len()]).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(max_diff < 1e-5, "later tokens changed earlier logits by {max_diff}");
}

#[test]
fn causal_lm_loss_shifts_and_ignores_labels() {
    let device = Default::default();
    // Uniform logits over 4 classes: every counted label costs ln 4.
    let logits = Tensor::<Cpu, 3>::zeros([2, 3, 4], &device);
    let labels =
        Tensor::<Cpu, 2, Int>::from_data([[IGNORE_INDEX, 1, IGNORE_INDEX], [IGNORE_INDEX, IGNORE_INDEX, 3]], &device);
    let loss = causal_lm_loss(logits, labels).into_scalar();
    assert!((loss - 4f32.ln()).abs() < 1e-6, "{loss}");

    // The label at t is scored by the logits at t - 1: making position 0 confident in class 1 lowers the
    // loss of the first row's only label, and logits at the last position are never used.
    let mut values = vec![0.0f32; 2 * 3 * 4];
    values[1] = 10.0; // row 0, position 0, class 1
    values[2 * 4 + 1] = -50.0; // row 0, position 2 (last): unused
    let logits = Tensor::<Cpu, 3>::from_data(TensorData::new(values, [2, 3, 4]), &device);
    let labels =
        Tensor::<Cpu, 2, Int>::from_data([[IGNORE_INDEX, 1, IGNORE_INDEX], [IGNORE_INDEX, IGNORE_INDEX, 3]], &device);
    let loss = causal_lm_loss(logits, labels).into_scalar();
    let confident = -(10f32.exp() / (10f32.exp() + 3.0)).ln();
    assert!((loss - (confident + 4f32.ln()) / 2.0).abs() < 1e-5, "{loss}");

    let nothing_counted = Tensor::<Cpu, 2, Int>::full([1, 3], IGNORE_INDEX, &device);
    assert!(causal_lm_loss(Tensor::<Cpu, 3>::zeros([1, 3, 4], &device), nothing_counted).into_scalar().is_nan());
}

#[test]
fn peft_configs_are_read_and_unsupported_options_rejected() {
    use polarity_llama::LoraConfig;
    let base = serde_json::json!({
        "peft_type": "LORA", "r": 8, "lora_alpha": 16, "lora_dropout": 0.05,
        "target_modules": ["q_proj", "v_proj", "down_proj"], "bias": "none", "use_dora": false,
        "rank_pattern": {}, "alpha_pattern": {}, "layers_to_transform": null, "modules_to_save": null
    });
    let config = LoraConfig::from_peft_json(&base.to_string()).unwrap();
    assert_eq!((config.r, config.lora_alpha, config.lora_dropout, config.scaling()), (8, 16.0, 0.05, 2.0));
    assert!(config.targets("mlp.down_proj") && !config.targets("mlp.up_proj"));
    assert_eq!(LoraConfig::from_peft_json(&config.to_peft_json(None).to_string()).unwrap(), config);

    let mut rslora = base.clone();
    rslora["use_rslora"] = serde_json::json!(true);
    assert_eq!(LoraConfig::from_peft_json(&rslora.to_string()).unwrap().scaling(), 16.0 / 8f64.sqrt());
    let mut all_linear = base.clone();
    all_linear["target_modules"] = serde_json::json!("all-linear");
    assert_eq!(LoraConfig::from_peft_json(&all_linear.to_string()).unwrap().target_modules.len(), 7);

    for (key, value) in [
        ("use_dora", serde_json::json!(true)),
        ("bias", serde_json::json!("all")),
        ("rank_pattern", serde_json::json!({"q_proj": 4})),
        ("layers_to_transform", serde_json::json!([0])),
        ("modules_to_save", serde_json::json!(["lm_head"])),
        ("target_modules", serde_json::json!(".*proj")),
        ("peft_type", serde_json::json!("IA3")),
    ] {
        let mut json = base.clone();
        json[key] = value;
        assert!(matches!(LoraConfig::from_peft_json(&json.to_string()), Err(LlamaError::Unsupported(_))), "{key}");
    }
    let mut unknown_target = base.clone();
    unknown_target["target_modules"] = serde_json::json!(["embed_tokens"]);
    assert!(matches!(LoraConfig::from_peft_json(&unknown_target.to_string()), Err(LlamaError::InvalidConfig(_))));
}
