//! Tiny random-weight models for the data-parallel tests: a BERT (MiniLM's tokenizer) and a Llama (Llama 3's
//! tokenizer), each a directory with a `config.json` and a `tokenizer.json`, and their recipes.

use std::path::Path;

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use polarity_finetune::{DataConfig, EncoderFineTune, ExperimentData, LoraFineTune, WeightInit};
use polarity_hub::{RepoKind, RepoSource};

use super::{LLAMA3, use_shared_cache};

const MINILM: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// Every float parameter's values, in module order.
struct Values(Vec<f32>);

impl<B: Backend> ModuleVisitor<B> for Values {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.0.extend(param.val().into_data().convert::<f32>().to_vec::<f32>().unwrap());
    }
}

/// `model`'s float parameter values, in module order.
pub fn values<B: Backend, M: Module<B>>(model: &M) -> Vec<f32> {
    let mut values = Values(Vec::new());
    model.visit(&mut values);
    values.0
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn write_model_dir(dir: &Path, config: serde_json::Value, tokenizer_of: &str) {
    use_shared_cache();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let tokenizer = RepoSource::parse(tokenizer_of, RepoKind::Model).file("tokenizer.json").unwrap();
    std::fs::copy(tokenizer, dir.join("tokenizer.json")).unwrap();
}

/// Writes a 2-layer BERT of width 32 without dropout into `dir`.
pub fn write_tiny_bert(dir: &Path) {
    let config = serde_json::json!({
        "model_type": "bert", "vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 64,
        "type_vocab_size": 2, "hidden_act": "gelu", "layer_norm_eps": 1e-12, "pad_token_id": 0,
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0
    });
    write_model_dir(dir, config, MINILM);
}

/// Writes a 2-layer Llama of width 64 with Llama 3's vocabulary into `dir`.
pub fn write_tiny_llama(dir: &Path) {
    let config = serde_json::json!({
        "model_type": "llama", "hidden_act": "silu", "vocab_size": 128_256, "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5, "rope_theta": 500_000.0, "tie_word_embeddings": false
    });
    write_model_dir(dir, config, LLAMA3);
}

/// Full fine-tuning of the tiny BERT in `dir`, 2 epochs of batches of `batch_size` per rank.
pub fn bert_recipe(dir: &Path, batch_size: usize) -> EncoderFineTune {
    let mut recipe = EncoderFineTune::new(dir.display().to_string()).with_init(WeightInit::Random).with_max_length(48);
    recipe.trainer =
        recipe.trainer.with_epochs(2).with_batch_size(batch_size).with_learning_rate(1e-3).with_progress(false);
    recipe
}

/// LoRA (q_proj + v_proj, no dropout) on the tiny Llama in `dir`, one epoch of batches of `batch_size` per rank.
pub fn llama_recipe(dir: &Path, batch_size: usize) -> LoraFineTune {
    let mut recipe = LoraFineTune::new(dir.display().to_string())
        .with_init(WeightInit::Random)
        .with_max_length(48)
        .with_zero_shot(false);
    recipe.lora.lora_dropout = 0.0;
    recipe.trainer = recipe
        .trainer
        .with_epochs(1)
        .with_batch_size(batch_size)
        .with_grad_accum(1)
        .with_learning_rate(1e-2)
        .with_eval_batch_size(8)
        .with_progress(false);
    recipe
}

/// The reviews the BERT runs use (3 global batches of 16 per epoch).
pub fn bert_data() -> ExperimentData {
    use_shared_cache();
    DataConfig::imdb(48, 16).load().unwrap()
}

/// The reviews the Llama runs use (2 global batches of 16).
pub fn llama_data() -> ExperimentData {
    use_shared_cache();
    DataConfig::imdb(32, 8).load().unwrap()
}
