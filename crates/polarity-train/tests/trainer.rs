//! The trainer on a tiny real model (embedding bag + LayerNorm + linear) and synthetic token data.

mod common;

use burn::lr_scheduler::LrScheduler;
use burn::module::{AutodiffModule, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use common::{B, Bag, VOCAB, bag, flipped, max_abs_diff, params, serial, synthetic};
use polarity_train::{
    BestMetric, CheckpointConfig, CrossEntropyObjective, LinearWarmupDecay, ParamGroups, TrainError, TrainOrder,
    Trainer, TrainerConfig, Warmup, clip_grad_norm, evaluate, grad_norm,
};

fn config() -> TrainerConfig {
    TrainerConfig::default()
        .with_epochs(3)
        .with_batch_size(8)
        .with_learning_rate(0.02)
        .with_warmup(Warmup::Ratio(0.1))
        .with_progress(false)
}

fn objective() -> CrossEntropyObjective {
    CrossEntropyObjective::new(0)
}

fn trainer(config: TrainerConfig) -> Trainer<B> {
    Trainer::new(config, Default::default())
}

#[test]
fn schedule_matches_hf_linear_warmup_at_known_steps() {
    let schedule = LinearWarmupDecay::new(2e-5, 10, 100);
    let close = |a: f64, b: f64| (a - b).abs() < 1e-15;
    assert!(close(schedule.lr_at(0), 0.0));
    assert!(close(schedule.lr_at(5), 1e-5));
    assert!(close(schedule.lr_at(10), 2e-5));
    assert!(close(schedule.lr_at(55), 1e-5));
    assert!(close(schedule.lr_at(91), 2e-5 * 9.0 / 90.0));
    assert!(close(schedule.lr_at(100), 0.0));
    assert!(close(schedule.lr_at(150), 0.0));
    // No warmup: the first step runs at the peak.
    assert!(close(LinearWarmupDecay::new(1e-3, 0, 4).lr_at(0), 1e-3));
    assert!(close(LinearWarmupDecay::new(1e-3, 0, 4).lr_at(3), 2.5e-4));

    // As a burn LrScheduler: `step` yields step 0, 1, ...; the record restores the position.
    let mut stepped = schedule;
    let first: Vec<f64> = (0..12).map(|_| stepped.step()).collect();
    assert!(close(first[0], 0.0) && close(first[10], 2e-5) && close(first[11], schedule.lr_at(11)));
    let record = stepped.to_record::<B>();
    let mut restored = LinearWarmupDecay::new(2e-5, 10, 100).load_record::<B>(record);
    assert_eq!(restored.step(), stepped.step());

    // HF's get_warmup_steps: ceil(total * ratio).
    assert_eq!(Warmup::Ratio(0.1).steps(125), 13);
    assert_eq!(Warmup::Ratio(0.0).steps(125), 0);
    assert_eq!(Warmup::Steps(7).steps(125), 7);
}

#[derive(Module, Debug)]
struct Two<B: Backend> {
    a: Param<Tensor<B, 1>>,
    b: Param<Tensor<B, 2>>,
}

#[test]
fn global_norm_clipping_matches_a_hand_computed_norm() {
    let device = Default::default();
    let model = Two::<B> {
        a: Param::from_tensor(Tensor::from_floats([0.5, -1.0, 2.0], &device)),
        b: Param::from_tensor(Tensor::from_floats([[1.0, 2.0], [3.0, 4.0]], &device)),
    };
    // loss = sum(a * ca) + sum(b * cb): the gradients are ca and cb.
    let ca = Tensor::<B, 1>::from_floats([1.0, 2.0, 2.0], &device);
    let cb = Tensor::<B, 2>::from_floats([[4.0, 0.0], [0.0, 0.0]], &device);
    let grads = || {
        let loss = (model.a.val() * ca.clone()).sum() + (model.b.val() * cb.clone()).sum();
        GradientsParams::from_grads(loss.backward(), &model)
    };
    // sqrt(1 + 4 + 4 + 16) = 5.
    assert!((grad_norm::<B, _>(&model, &grads()) - 5.0).abs() < 1e-6);

    let (clipped, norm) = clip_grad_norm::<B, _>(&model, grads(), 1.0);
    assert!((norm - 5.0).abs() < 1e-6);
    let factor = 1.0 / (5.0 + 1e-6);
    let ga = clipped.get::<<B as burn::tensor::backend::AutodiffBackend>::InnerBackend, 1>(model.a.id).unwrap();
    let gb = clipped.get::<<B as burn::tensor::backend::AutodiffBackend>::InnerBackend, 2>(model.b.id).unwrap();
    let ga = ga.into_data().to_vec::<f32>().unwrap();
    let gb = gb.into_data().to_vec::<f32>().unwrap();
    for (got, want) in ga.iter().chain(&gb).zip([1.0, 2.0, 2.0, 4.0, 0.0, 0.0, 0.0]) {
        assert!((*got as f64 - want * factor).abs() < 1e-6, "{got} vs {}", want * factor);
    }
    // The clipped set has norm 1 (burn's per-parameter clipping would leave it at sqrt(2)).
    assert!((grad_norm::<B, _>(&model, &clipped) - 1.0).abs() < 1e-5);

    // Under the limit nothing changes.
    let (kept, norm) = clip_grad_norm::<B, _>(&model, grads(), 10.0);
    assert!((norm - 5.0).abs() < 1e-6);
    assert!((grad_norm::<B, _>(&model, &kept) - 5.0).abs() < 1e-6);
}

#[test]
fn biases_and_layer_norm_weights_get_no_weight_decay() {
    let groups = ParamGroups::of::<B, _>(&bag(VOCAB, 8, 0.0, 1));
    let names = |infos: &[polarity_train::ParamInfo]| infos.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&groups.decay), ["embedding.weight", "head.weight"]);
    assert_eq!(names(&groups.no_decay), ["norm.gamma", "norm.beta", "head.bias"]);
    assert_eq!(groups.decay[0].shape, [VOCAB, 8]);
}

#[test]
fn two_accumulated_micro_batches_of_4_equal_one_batch_of_8() {
    let _serial = serial();
    let data = synthetic(16, 3);
    let run = |batch_size: usize, grad_accum: usize| {
        let config = config()
            .with_epochs(1)
            .with_batch_size(batch_size)
            .with_grad_accum(grad_accum)
            .with_train_order(TrainOrder::InOrder)
            .with_learning_rate(0.05)
            .with_max_grad_norm(Some(0.5))
            .with_best_metric(None);
        let outcome = trainer(config).fit(bag(VOCAB, 8, 0.0, 7), &objective(), &data, None).unwrap();
        assert_eq!(outcome.global_steps, 16 / (batch_size * grad_accum));
        (params(&outcome.model), outcome.history[0].train_loss)
    };
    let initial = params(&bag(VOCAB, 8, 0.0, 7));
    let (big, big_loss) = run(8, 1);
    let (accumulated, accumulated_loss) = run(4, 2);
    let (small, _) = run(4, 1);
    assert!(max_abs_diff(&big, &initial) > 1e-2, "the steps changed the model");
    let diff = max_abs_diff(&big, &accumulated);
    assert!(diff < 1e-5, "accumulation differs from one big batch by {diff}");
    assert!((big_loss - accumulated_loss).abs() < 1e-6, "{big_loss} vs {accumulated_loss}");
    // Four unaccumulated steps are a different trajectory.
    assert!(max_abs_diff(&big, &small) > 1e-3);
}

#[test]
fn the_tiny_model_learns_a_separable_task() {
    let _serial = serial();
    let train = synthetic(96, 1);
    let eval = synthetic(48, 2);
    let config = config().with_epochs(8).with_learning_rate(0.05);
    let outcome = trainer(config).fit(bag(VOCAB, 8, 0.1, 3), &objective(), &train, Some(&eval)).unwrap();
    let history = &outcome.history;
    assert_eq!(history.len(), 8);
    assert_eq!(outcome.global_steps, 8 * 12);
    assert!(history[7].train_loss < history[0].train_loss * 0.5, "{history:?}");
    let last = history.last().unwrap();
    assert!(last.eval_accuracy.unwrap() >= 0.9, "{history:?}");
    assert!(last.eval_macro_f1.unwrap() >= 0.9, "{history:?}");
    assert!(history.iter().all(|r| r.train_seconds > 0.0 && r.train_samples_per_second > 0.0));
    assert_eq!(outcome.eval_reports.len(), 8);
    assert_eq!(outcome.eval_reports[7].total, 48);
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let _serial = serial();
    let train = synthetic(40, 4);
    let eval = synthetic(20, 5);
    let run = |seed: u64| {
        let config = config().with_seed(seed).with_batch_size(4).with_grad_accum(2);
        let outcome = trainer(config).fit(bag(VOCAB, 8, 0.2, 9), &objective(), &train, Some(&eval)).unwrap();
        (outcome.history, params(&outcome.model))
    };
    let (history_a, params_a) = run(11);
    let (history_b, params_b) = run(11);
    let strip = |h: &[polarity_core::EpochReport]| {
        h.iter().map(|r| (r.train_loss, r.eval_accuracy, r.eval_macro_f1)).collect::<Vec<_>>()
    };
    assert_eq!(strip(&history_a), strip(&history_b));
    assert_eq!(params_a, params_b);
    let (history_c, params_c) = run(12);
    assert_ne!(strip(&history_a), strip(&history_c));
    assert_ne!(params_a, params_c);
}

#[test]
fn a_run_killed_mid_epoch_and_resumed_ends_like_an_uninterrupted_one() {
    let _serial = serial();
    let train = synthetic(48, 6);
    let eval = synthetic(24, 7);
    // 48 examples, micro-batches of 4, 2 per step: 6 steps per epoch, 18 in all.
    let config = config().with_batch_size(4).with_grad_accum(2).with_best_metric(Some(BestMetric::MacroF1));
    let reference = trainer(config.clone()).fit(bag(VOCAB, 8, 0.1, 5), &objective(), &train, Some(&eval)).unwrap();
    assert_eq!(reference.global_steps, 18);

    let dir = tempfile::tempdir().unwrap();
    // Checkpoints at steps 4, 6 (epoch end), 8; killed after step 10, in the middle of epoch 2.
    let checkpointing = CheckpointConfig::new(dir.path(), 4).with_resume(true);
    let config = config.with_checkpoint(Some(checkpointing));
    let err = trainer(config.clone())
        .interrupt_after(10)
        .fit(bag(VOCAB, 8, 0.1, 5), &objective(), &train, Some(&eval))
        .unwrap_err();
    match err {
        TrainError::Interrupted { step: 10, checkpoint: Some(path) } => {
            assert!(path.ends_with("checkpoint-8"), "{path:?}")
        }
        other => panic!("{other:?}"),
    }
    // keep_last = 2: checkpoint-4 was pruned.
    assert!(!dir.path().join("checkpoint-4").exists());
    assert!(dir.path().join("checkpoint-6").is_dir());

    // A fresh process: a differently initialised model, resumed from checkpoint-8.
    let resumed = trainer(config.clone()).fit(bag(VOCAB, 8, 0.1, 99), &objective(), &train, Some(&eval)).unwrap();
    assert!(resumed.resumed_from.as_ref().unwrap().ends_with("checkpoint-8"));
    assert_eq!(resumed.global_steps, 18);
    assert_eq!(resumed.best_epoch, reference.best_epoch);
    assert_eq!(resumed.history.len(), 3);
    for (a, b) in reference.history.iter().zip(&resumed.history) {
        assert!((a.train_loss - b.train_loss).abs() < 1e-9, "{a:?} vs {b:?}");
        assert_eq!(a.eval_accuracy, b.eval_accuracy);
        assert_eq!(a.eval_macro_f1, b.eval_macro_f1);
    }
    let diff = max_abs_diff(&params(&reference.model), &params(&resumed.model));
    assert!(diff < 1e-6, "resumed parameters differ by {diff}");

    // Resuming a finished run returns at once with the same history.
    let again = trainer(config.clone()).fit(bag(VOCAB, 8, 0.1, 5), &objective(), &train, Some(&eval)).unwrap();
    assert_eq!(again.history.len(), 3);
    for (a, b) in again.history.iter().zip(&resumed.history) {
        assert!((a.train_loss - b.train_loss).abs() < 1e-12 && a.eval_accuracy == b.eval_accuracy, "{a:?} vs {b:?}");
    }
    assert_eq!(params(&again.model), params(&resumed.model));
    assert!(again.resumed_from.as_ref().unwrap().ends_with("checkpoint-18"));

    // A run killed while replacing a checkpoint leaves `latest` dangling: the newest complete one is used.
    std::fs::write(dir.path().join("latest"), "checkpoint-99").unwrap();
    assert!(polarity_train::checkpoint::latest_checkpoint(dir.path()).unwrap().unwrap().ends_with("checkpoint-18"));

    // A checkpoint from another configuration is refused.
    let err = trainer(config.with_learning_rate(0.5))
        .fit(bag(VOCAB, 8, 0.1, 5), &objective(), &train, Some(&eval))
        .unwrap_err();
    assert!(matches!(err, TrainError::ResumeMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains("learning_rate 0.02 (checkpoint) vs 0.5 (now)"), "{err}");
}

#[test]
fn a_non_finite_loss_stops_the_run_naming_the_step() {
    let _serial = serial();
    let mut train = synthetic(24, 8);
    // Token 3 (unused by the synthetic data) gets an infinite embedding; example 10 uses it.
    train[10].tokens.ids[1] = 3;
    let poisoned = || {
        let mut model = bag(VOCAB, 8, 0.0, 2);
        let mut values = model.embedding.weight.val().into_data().to_vec::<f32>().unwrap();
        values[3 * 8..4 * 8].fill(f32::INFINITY);
        let weight = Tensor::<B, 2>::from_data(TensorData::new(values, [VOCAB, 8]), &Default::default());
        model.embedding.weight = Param::from_tensor(weight);
        model
    };
    let config = config().with_batch_size(4).with_train_order(TrainOrder::InOrder);
    let err = trainer(config.clone()).fit(poisoned(), &objective(), &train, None).unwrap_err();
    match err {
        TrainError::NonFiniteLoss { epoch: 1, step: 3, micro_batch: 0, loss } => assert!(!loss.is_finite()),
        other => panic!("{other:?}"),
    }
    assert!(err_text(&config.clone().with_batch_size(2).with_grad_accum(2), poisoned(), &train).contains("step 3"));
}

fn err_text(config: &TrainerConfig, model: Bag<B>, train: &[polarity_tokenize::TokenizedExample]) -> String {
    let err = trainer(config.clone()).fit(model, &objective(), train, None).unwrap_err();
    assert!(matches!(err, TrainError::NonFiniteLoss { step: 3, micro_batch: 1, .. }), "{err:?}");
    err.to_string()
}

#[test]
fn the_best_epoch_is_restored_at_the_end() {
    let _serial = serial();
    let train = synthetic(64, 9);
    // Evaluating on flipped labels: the better the model learns, the worse it scores, so the best
    // epoch is an early one.
    let eval = flipped(&synthetic(32, 10));
    let dir = tempfile::tempdir().unwrap();
    let config = config()
        .with_epochs(4)
        .with_learning_rate(0.02)
        .with_best_metric(Some(BestMetric::Accuracy))
        .with_checkpoint(Some(CheckpointConfig::new(dir.path(), 0)));
    let outcome = trainer(config.clone()).fit(bag(VOCAB, 8, 0.0, 4), &objective(), &train, Some(&eval)).unwrap();
    let accuracies: Vec<f64> = outcome.history.iter().map(|r| r.eval_accuracy.unwrap()).collect();
    let best = accuracies.iter().enumerate().fold(0, |best, (i, a)| if *a > accuracies[best] { i } else { best }) + 1;
    assert_eq!(outcome.best_epoch, Some(best), "{accuracies:?}");
    assert!(accuracies[best - 1] > accuracies[3], "the last epoch must be worse for this test: {accuracies:?}");
    assert!(dir.path().join(format!("best-epoch-{best}.mpk")).is_file());

    let scored = evaluate(&objective(), &outcome.model.valid(), &eval, 16, &Default::default()).unwrap();
    assert_eq!(scored.report.accuracy, accuracies[best - 1]);

    // Without a best metric the last model comes back.
    let last = trainer(config.with_best_metric(None).with_checkpoint(None))
        .fit(bag(VOCAB, 8, 0.0, 4), &objective(), &train, Some(&eval))
        .unwrap();
    assert_eq!(last.best_epoch, None);
    let scored = evaluate(&objective(), &last.model.valid(), &eval, 16, &Default::default()).unwrap();
    assert_eq!(scored.report.accuracy, accuracies[3]);
}

#[test]
fn bad_input_is_a_typed_error() {
    let data = synthetic(8, 1);
    let fit = |config: TrainerConfig, train: &[_], eval: Option<&[_]>| {
        trainer(config).fit(bag(VOCAB, 4, 0.0, 1), &objective(), train, eval).unwrap_err()
    };
    assert!(matches!(fit(config(), &[], None), TrainError::EmptyDataset { which: "training set" }));
    assert!(matches!(fit(config(), &data, Some(&[])), TrainError::EmptyDataset { which: "evaluation set" }));
    assert!(matches!(fit(config().with_batch_size(0), &data, None), TrainError::InvalidConfig(_)));
    assert!(matches!(fit(config().with_learning_rate(f64::NAN), &data, None), TrainError::InvalidConfig(_)));
    assert!(matches!(fit(config().with_warmup(Warmup::Ratio(1.5)), &data, None), TrainError::InvalidConfig(_)));
    let err = evaluate(&objective(), &bag(VOCAB, 4, 0.0, 1).valid(), &[], 8, &Default::default()).unwrap_err();
    assert!(matches!(err, TrainError::EmptyDataset { .. }));
}
