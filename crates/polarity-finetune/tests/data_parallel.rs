//! The recipes in a data-parallel group: two ranks of a `LocalGroup` (threads of this process, one CPU
//! device each) with batch 8 reach the weights one process reaches with batch 16, for a tiny BERT (full
//! fine-tuning) and a tiny Llama (LoRA on q_proj + v_proj).

use std::sync::Arc;
use std::time::Duration;

use burn::backend::{Autodiff, Flex};
use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use polarity_finetune::{DataConfig, EncoderFineTune, ExperimentData, LoraFineTune, RunReport, WeightInit};
use polarity_hub::{RepoKind, RepoSource};
use polarity_testkit::within;
use polarity_train::{Collective, LocalGroup};

mod common;

use common::{LLAMA3, use_shared_cache};

type B = Autodiff<Flex<f32>>;
type Inner = Flex<f32>;

const MINILM: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// The tests of this binary one at a time: the trainer reseeds the process's one generator at every step,
/// which would disturb another test's seeded model construction.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Every float parameter's values, in module order.
struct Values(Vec<f32>);

impl<Bk: Backend> ModuleVisitor<Bk> for Values {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Bk, D>>) {
        self.0.extend(param.val().into_data().convert::<f32>().to_vec::<f32>().unwrap());
    }
}

fn values<M: Module<Inner>>(model: &M) -> Vec<f32> {
    let mut values = Values(Vec::new());
    model.visit(&mut values);
    values.0
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// A directory with a config.json and MiniLM's or Llama 3's tokenizer.json: no weights (random init).
fn model_dir(config: serde_json::Value, tokenizer_of: &str) -> tempfile::TempDir {
    use_shared_cache();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let tokenizer = RepoSource::parse(tokenizer_of, RepoKind::Model).file("tokenizer.json").unwrap();
    std::fs::copy(tokenizer, dir.path().join("tokenizer.json")).unwrap();
    dir
}

fn data(train: usize, test: usize) -> ExperimentData {
    use_shared_cache();
    DataConfig::imdb(train, test).load().unwrap()
}

/// Runs `run(rank)` on one thread per rank of a 2-rank group.
fn on_two_ranks<T: Send + 'static>(run: impl Fn(Arc<dyn Collective>) -> T + Send + Sync + 'static) -> Vec<T> {
    within("a data-parallel recipe", Duration::from_secs(600), move || {
        let run = &run;
        std::thread::scope(|scope| {
            let handles: Vec<_> =
                LocalGroup::new(2).into_iter().map(|rank| scope.spawn(move || run(Arc::new(rank)))).collect();
            handles.into_iter().map(|handle| handle.join().unwrap()).collect()
        })
    })
}

fn assert_same_run(single: &RunReport, rank: &RunReport, case: &str) {
    assert_eq!(rank.training.global_steps, single.training.global_steps, "{case}");
    assert_eq!(rank.evaluation.report, single.evaluation.report, "{case}");
    for (a, b) in rank.training.history.iter().zip(&single.training.history) {
        assert!((a.train_loss - b.train_loss).abs() < 1e-4, "{case}: {a:?} vs {b:?}");
    }
}

#[test]
fn two_ranks_fine_tune_a_tiny_bert_like_one_process() {
    let _serial = serial();
    let dir = model_dir(
        serde_json::json!({
            "model_type": "bert", "vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 64,
            "type_vocab_size": 2, "hidden_act": "gelu", "layer_norm_eps": 1e-12, "pad_token_id": 0,
            "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0
        }),
        MINILM,
    );
    let recipe = |batch_size: usize| {
        let mut recipe =
            EncoderFineTune::new(dir.path().display().to_string()).with_init(WeightInit::Random).with_max_length(48);
        recipe.trainer =
            recipe.trainer.with_epochs(2).with_batch_size(batch_size).with_learning_rate(1e-3).with_progress(false);
        recipe
    };
    let data = data(48, 16);
    let single = recipe(16).run_on::<B>(&Default::default(), "flex", &data).unwrap();
    let reference = values(&single.classifier.model);
    let ranked = {
        let (recipe, data) = (recipe(8), data.clone());
        on_two_ranks(move |rank| {
            let experiment = recipe.run_on_rank::<B>(&Default::default(), "flex", &data, rank).unwrap();
            (values(&experiment.classifier.model), experiment.report)
        })
    };
    assert!(max_abs_diff(&reference, &values(&recipe(16).load::<Inner>(&Default::default()).unwrap().0)) > 1e-3);
    for (rank, (weights, report)) in ranked.iter().enumerate() {
        let diff = max_abs_diff(&reference, weights);
        assert!(diff < 1e-4, "rank {rank}: the weights differ from one process's by {diff}");
        assert_same_run(&single.report, report, &format!("tiny BERT, rank {rank}"));
    }
}

#[test]
fn two_ranks_lora_tune_a_tiny_llama_like_one_process() {
    let _serial = serial();
    let dir = model_dir(
        serde_json::json!({
            "model_type": "llama", "hidden_act": "silu", "vocab_size": 128_256, "hidden_size": 64,
            "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "rms_norm_eps": 1e-5, "rope_theta": 500_000.0, "tie_word_embeddings": false
        }),
        LLAMA3,
    );
    let recipe = |batch_size: usize| {
        let mut recipe = LoraFineTune::new(dir.path().display().to_string())
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
    };
    let data = data(32, 8);
    let single = recipe(16).run_on::<B>(&Default::default(), "flex", &data).unwrap();
    let reference = values(&single.classifier.model);
    let ranked = {
        let (recipe, data) = (recipe(8), data.clone());
        on_two_ranks(move |rank| {
            let experiment = recipe.run_on_rank::<B>(&Default::default(), "flex", &data, rank).unwrap();
            (values(&experiment.classifier.model), experiment.report)
        })
    };
    assert_eq!(single.report.training.global_steps, 2);
    for (rank, (weights, report)) in ranked.iter().enumerate() {
        let diff = max_abs_diff(&reference, weights);
        assert!(diff < 1e-4, "rank {rank}: the weights differ from one process's by {diff}");
        assert_same_run(&single.report, report, &format!("tiny Llama LoRA, rank {rank}"));
    }
}
