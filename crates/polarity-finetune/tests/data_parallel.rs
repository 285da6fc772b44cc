//! The recipes in a data-parallel group: two ranks of a `LocalGroup` (threads of this process, one CPU
//! device each) with batch 8 reach the weights one process reaches with batch 16, for a tiny BERT (full
//! fine-tuning) and a tiny Llama (LoRA on q_proj + v_proj).

use std::sync::Arc;
use std::time::Duration;

use burn::backend::{Autodiff, Flex};
use polarity_finetune::RunReport;
use polarity_testkit::within;
use polarity_train::{Collective, LocalGroup};

mod common;

use common::tiny::{
    bert_data, bert_recipe, llama_data, llama_recipe, max_abs_diff, values, write_tiny_bert, write_tiny_llama,
};

type B = Autodiff<Flex<f32>>;
type Inner = Flex<f32>;

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

/// Every rank's weights within 1e-4 of one process's (`reference`), and its run reported alike.
fn assert_ranks_match(reference: &[f32], single: &RunReport, ranked: &[(Vec<f32>, RunReport)], model: &str) {
    for (rank, (weights, report)) in ranked.iter().enumerate() {
        let diff = max_abs_diff(reference, weights);
        assert!(diff < 1e-4, "{model}, rank {rank}: the weights differ from one process's by {diff}");
        assert_eq!(report.training.global_steps, single.training.global_steps, "{model}, rank {rank}");
        assert_eq!(report.evaluation.report, single.evaluation.report, "{model}, rank {rank}");
        for (a, b) in report.training.history.iter().zip(&single.training.history) {
            assert!((a.train_loss - b.train_loss).abs() < 1e-4, "{model}, rank {rank}: {a:?} vs {b:?}");
        }
    }
}

#[test]
fn two_ranks_fine_tune_a_tiny_bert_like_one_process() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path());
    let data = bert_data();
    let single = bert_recipe(dir.path(), 16).run_on::<B>(&Default::default(), "flex", &data).unwrap();
    let reference = values(&single.classifier.model);
    let initial = values(&bert_recipe(dir.path(), 16).load::<Inner>(&Default::default()).unwrap().0);
    assert!(max_abs_diff(&reference, &initial) > 1e-3, "the model moved");
    let ranked = {
        let (recipe, data) = (bert_recipe(dir.path(), 8), data.clone());
        on_two_ranks(move |rank| {
            let experiment = recipe.run_on_rank::<B>(&Default::default(), "flex", &data, rank).unwrap();
            (values(&experiment.classifier.model), experiment.report)
        })
    };
    assert_ranks_match(&reference, &single.report, &ranked, "tiny BERT");
}

#[test]
fn two_ranks_lora_tune_a_tiny_llama_like_one_process() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_llama(dir.path());
    let data = llama_data();
    let single = llama_recipe(dir.path(), 16).run_on::<B>(&Default::default(), "flex", &data).unwrap();
    assert_eq!(single.report.training.global_steps, 2);
    let reference = values(&single.classifier.model);
    let mut still = llama_recipe(dir.path(), 16);
    still.trainer.learning_rate = 1e-12;
    let initial = values(&still.run_on::<B>(&Default::default(), "flex", &data).unwrap().classifier.model);
    assert!(max_abs_diff(&reference, &initial) > 1e-4, "the adapters moved");
    let ranked = {
        let (recipe, data) = (llama_recipe(dir.path(), 8), data.clone());
        on_two_ranks(move |rank| {
            let experiment = recipe.run_on_rank::<B>(&Default::default(), "flex", &data, rank).unwrap();
            (values(&experiment.classifier.model), experiment.report)
        })
    };
    assert_ranks_match(&reference, &single.report, &ranked, "tiny Llama LoRA");
}
