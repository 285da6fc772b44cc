//! Data parallelism in the trainer: ranks of a [`LocalGroup`] (threads of this process) train like one
//! process on the global batch, fail together, and resume only with the same number of ranks.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{B, Bag, VOCAB, bag, max_abs_diff, parallel_config, params, synthetic};
use polarity_testkit::within;
use polarity_tokenize::TokenizedExample;
use polarity_train::{
    CheckpointConfig, Collective, CrossEntropyObjective, LocalGroup, TrainError, TrainOutcome, Trainer, TrainerConfig,
};

/// One run per rank of a `world`-rank group, each on its own thread, all from the same seeded model.
fn fit_on_ranks(
    world: usize,
    config: &TrainerConfig,
    train: &[TokenizedExample],
    eval: &[TokenizedExample],
) -> Vec<Result<TrainOutcome<Bag<B>>, TrainError>> {
    let (config, train, eval) = (config.clone(), train.to_vec(), eval.to_vec());
    within("a data-parallel run", Duration::from_secs(120), move || {
        std::thread::scope(|scope| {
            let handles: Vec<_> = LocalGroup::new(world)
                .into_iter()
                .map(|rank| {
                    let model = bag(VOCAB, 8, 0.0, 7);
                    let trainer = Trainer::<B>::new(config.clone(), Default::default()).with_collective(Arc::new(rank));
                    let (train, eval) = (&train, &eval);
                    scope.spawn(move || trainer.fit(model, &CrossEntropyObjective::new(0), train, Some(eval)))
                })
                .collect();
            handles.into_iter().map(|handle| handle.join().unwrap()).collect()
        })
    })
}

#[test]
fn two_ranks_of_batch_8_train_like_one_process_of_batch_16() {
    let eval = synthetic(37, 2);
    // 96 examples divide evenly; 81 leave a last global batch of 1, which one rank reads alone.
    for (examples, grad_accum) in [(96, 1), (81, 1), (96, 2)] {
        let train = synthetic(examples, 1);
        let single = Trainer::<B>::new(parallel_config(16).with_grad_accum(grad_accum), Default::default())
            .fit(bag(VOCAB, 8, 0.0, 7), &CrossEntropyObjective::new(0), &train, Some(&eval))
            .unwrap();
        let ranks = fit_on_ranks(2, &parallel_config(8).with_grad_accum(grad_accum), &train, &eval);
        let reference = params(&single.model);
        for (rank, outcome) in ranks.into_iter().enumerate() {
            let outcome = outcome.unwrap();
            let case = format!("{examples} examples, accumulation {grad_accum}, rank {rank}");
            assert_eq!(outcome.global_steps, single.global_steps, "{case}");
            // One reduction per step: 290 gradient values (embedding 32 x 8, LayerNorm 8 + 8, head 8 x 2 + 2),
            // a flag for each of the 5 parameters and the loss, in f32.
            let communication = outcome.communication.unwrap();
            assert_eq!((communication.world_size, communication.steps), (2, single.global_steps), "{case}");
            assert_eq!(communication.bytes_per_step, 4 * (290 + 5 + 1), "{case}");
            assert!(single.communication.is_none());
            let diff = max_abs_diff(&params(&outcome.model), &reference);
            assert!(diff < 1e-5, "{case}: the weights differ by {diff}");
            // The model moved: equal weights are not the initial weights.
            assert!(max_abs_diff(&reference, &params(&bag(VOCAB, 8, 0.0, 7))) > 1e-2, "{case}");
            // Sharded evaluation merges to the whole set's metrics.
            assert_eq!(outcome.eval_reports, single.eval_reports, "{case}");
            assert_eq!(outcome.eval_reports.last().unwrap().total, 37, "{case}");
            for (a, b) in outcome.history.iter().zip(&single.history) {
                assert!((a.train_loss - b.train_loss).abs() < 1e-5, "{case}: {a:?} vs {b:?}");
            }
        }
    }
}

#[test]
fn a_failing_rank_stops_every_rank_with_an_error() {
    let (train, eval) = (synthetic(64, 1), synthetic(16, 2));
    let results = within("a failing data-parallel run", Duration::from_secs(60), move || {
        std::thread::scope(|scope| {
            let handles: Vec<_> = LocalGroup::new(2)
                .into_iter()
                .map(|rank| {
                    // Rank 1 is given an invalid configuration and stops before its first step.
                    let config =
                        if rank.rank() == 1 { parallel_config(8).with_learning_rate(-1.0) } else { parallel_config(8) };
                    let trainer = Trainer::<B>::new(config, Default::default()).with_collective(Arc::new(rank));
                    let (train, eval) = (&train, &eval);
                    scope.spawn(move || {
                        trainer.fit(bag(VOCAB, 8, 0.0, 7), &CrossEntropyObjective::new(0), train, Some(eval))
                    })
                })
                .collect();
            handles.into_iter().map(|handle| handle.join().unwrap()).collect::<Vec<_>>()
        })
    });
    assert!(matches!(results[1], Err(TrainError::InvalidConfig(_))), "{:?}", results[1].as_ref().err());
    match &results[0] {
        Err(TrainError::Collective { rank: 0, reason }) => {
            assert!(reason.contains("rank 1 stopped") && reason.contains("learning"), "{reason}")
        }
        other => panic!("rank 0 should fail with its peer: {:?}", other.as_ref().err()),
    }
}

#[test]
fn rank_0_alone_writes_checkpoints_and_a_resume_needs_the_same_world() {
    let (train, eval) = (synthetic(64, 1), synthetic(16, 2));
    let dir = tempfile::tempdir().unwrap();
    let checkpointing = CheckpointConfig::new(dir.path(), 2);
    let outcomes = fit_on_ranks(2, &parallel_config(8).with_checkpoint(Some(checkpointing.clone())), &train, &eval);
    assert!(outcomes.iter().all(Result::is_ok));
    let written = std::fs::read_dir(dir.path()).unwrap().count();
    assert!(written > 0);

    // The same run on one process cannot continue it.
    let resumed = Trainer::<B>::new(
        parallel_config(8).with_checkpoint(Some(checkpointing.with_resume(true))),
        Default::default(),
    )
    .fit(bag(VOCAB, 8, 0.0, 7), &CrossEntropyObjective::new(0), &train, Some(&eval));
    match resumed {
        Err(TrainError::ResumeMismatch { what, .. }) => {
            assert!(what.contains("2 rank(s)") && what.contains("this run has 1"), "{what}")
        }
        other => panic!("expected a world-size mismatch, got {:?}", other.err()),
    }
}
