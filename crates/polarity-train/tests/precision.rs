//! Mixed precision in the trainer (bf16/f16 products under autocast, f16 loss scaling), on the CPU
//! default backend, which computes half-precision products for real.

mod common;

use burn::backend::{Autodiff, Flex};
use common::{Bag, VOCAB, bag_on, max_abs_diff, params, synthetic};
use polarity_core::Precision;
use polarity_train::{
    CheckpointConfig, CrossEntropyObjective, TrainError, TrainOutcome, Trainer, TrainerConfig, Warmup,
};

type F = Autodiff<Flex>;

fn config(precision: Precision) -> TrainerConfig {
    TrainerConfig::default()
        .with_epochs(6)
        .with_batch_size(8)
        .with_learning_rate(0.05)
        .with_warmup(Warmup::Ratio(0.1))
        .with_precision(precision)
        .with_progress(false)
}

fn fit(config: TrainerConfig, seed: u64) -> Result<TrainOutcome<Bag<F>>, TrainError> {
    let (train, eval) = (synthetic(96, 1), synthetic(48, 2));
    Trainer::<F>::new(config, Default::default()).fit(
        bag_on::<F>(VOCAB, 8, 0.0, seed),
        &CrossEntropyObjective::new(0),
        &train,
        Some(&eval),
    )
}

#[test]
fn an_evaluation_precision_leaves_training_in_f32() {
    let reference = fit(config(Precision::F32), 5).unwrap();
    let outcome = fit(config(Precision::F32).with_eval_precision(Some(Precision::Bf16)), 5).unwrap();
    assert_eq!(max_abs_diff(&params(&reference.model), &params(&outcome.model)), 0.0);
    for (a, b) in outcome.history.iter().zip(&reference.history) {
        assert_eq!(a.train_loss, b.train_loss);
        assert!((a.eval_accuracy.unwrap() - b.eval_accuracy.unwrap()).abs() <= 0.05, "{a:?} vs {b:?}");
    }
    assert_eq!(
        config(Precision::F16).with_eval_precision(Some(Precision::Bf16)).evaluation_precision(),
        Precision::Bf16
    );
    assert_eq!(config(Precision::F16).evaluation_precision(), Precision::F16);
}

#[test]
fn half_precision_runs_learn_like_f32_and_keep_f32_parameters() {
    let reference = fit(config(Precision::F32), 3).unwrap();
    assert!(reference.loss_scaler.is_none());
    // A scale small enough never to overflow here, so that f16 takes every step f32 takes.
    for (precision, initial_loss_scale) in [(Precision::Bf16, 1.0), (Precision::F16, 1024.0)] {
        let outcome = fit(config(precision).with_initial_loss_scale(initial_loss_scale), 3).unwrap();
        let (first, last) = (&outcome.history[0], outcome.history.last().unwrap());
        assert!(last.train_loss < first.train_loss * 0.5, "{precision}: {:?}", outcome.history);
        assert!(last.eval_accuracy.unwrap() >= 0.9, "{precision}: {:?}", outcome.history);
        // The products really ran in half precision: the trajectory moved, but only a little
        // (bf16 keeps 8 bits of mantissa, f16 11).
        let diff = max_abs_diff(&params(&reference.model), &params(&outcome.model));
        assert!(diff > 0.0 && diff < 0.02, "{precision}: parameters differ from f32's by {diff}");
        for (a, b) in outcome.history.iter().zip(&reference.history) {
            assert!((a.train_loss - b.train_loss).abs() < 0.01, "{precision}: {a:?} vs {b:?}");
        }
        assert_eq!(outcome.model.head.weight.val().dtype(), burn::tensor::DType::F32);
        match precision {
            Precision::F16 => assert_eq!(outcome.loss_scaler.unwrap().skipped_steps(), 0),
            _ => assert!(outcome.loss_scaler.is_none()),
        }
    }
}

#[test]
fn f16_overflow_skips_the_step_and_backs_the_scale_off() {
    // 2^24 times the loss overflows f16's 65504 in the backward pass: the first steps are skipped and
    // the scale halves until the gradients fit, then training proceeds. (PyTorch's 2^16 already
    // overflows on this task's first step or two.)
    let initial = 2f64.powi(24);
    let outcome = fit(config(Precision::F16).with_initial_loss_scale(initial), 3).unwrap();
    let scaler = outcome.loss_scaler.unwrap();
    assert!(scaler.skipped_steps() >= 2, "{scaler:?}");
    assert_eq!(scaler.scale(), initial / 2f64.powi(scaler.skipped_steps() as i32));
    assert_eq!(outcome.global_steps, 6 * 12);
    assert!(outcome.history.last().unwrap().eval_accuracy.unwrap() >= 0.9, "{:?}", outcome.history);
}

#[test]
fn an_f16_run_resumes_with_its_loss_scale() {
    let initial = 2f64.powi(24);
    let config = config(Precision::F16).with_epochs(2).with_initial_loss_scale(initial);
    let reference = fit(config.clone(), 4).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = config.with_checkpoint(Some(CheckpointConfig::new(dir.path(), 5).with_resume(true)));
    let (train, eval) = (synthetic(96, 1), synthetic(48, 2));
    let objective = CrossEntropyObjective::new(0);
    // Killed after step 7: checkpoint-5 holds a scale already backed off from the initial one.
    let err = Trainer::<F>::new(config.clone(), Default::default())
        .interrupt_after(7)
        .fit(bag_on::<F>(VOCAB, 8, 0.0, 4), &objective, &train, Some(&eval))
        .unwrap_err();
    assert!(matches!(err, TrainError::Interrupted { step: 7, .. }), "{err:?}");
    let resumed = fit(config, 99).unwrap();
    assert!(resumed.resumed_from.is_some());
    assert_eq!(resumed.loss_scaler, reference.loss_scaler);
    let diff = max_abs_diff(&params(&reference.model), &params(&resumed.model));
    assert!(diff < 1e-6, "resumed parameters differ by {diff}");
}

#[test]
fn loss_scaling_composes_with_gradient_accumulation() {
    // Micro-batches of 4, two per step: each micro-batch's loss is weighted by its share and scaled.
    let accumulated =
        |precision| config(precision).with_batch_size(4).with_grad_accum(2).with_initial_loss_scale(1024.0);
    let reference = fit(accumulated(Precision::F32), 5).unwrap();
    let scaled = fit(accumulated(Precision::F16), 5).unwrap();
    assert_eq!(scaled.loss_scaler.unwrap().skipped_steps(), 0);
    let diff = max_abs_diff(&params(&reference.model), &params(&scaled.model));
    assert!(diff > 0.0 && diff < 0.02, "f16 with accumulation differs from f32 by {diff}");
}
