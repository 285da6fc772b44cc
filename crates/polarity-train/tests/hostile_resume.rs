//! Hostile checkpoint directories and trainer settings: a resume either continues the same run or stops with a
//! typed error naming the file and what is wrong, never a hang, a panic, a silent "nothing to do" or a loss of
//! what was written; settings near `usize::MAX` or non-finite are refused before anything is allocated.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{B, Bag, VOCAB, bag, synthetic};
use polarity_testkit::{CappedAllocator, expect_error, make_fifo, no_panic, within};
use polarity_tokenize::TokenizedExample;
use polarity_train::checkpoint::{self, LATEST_FILE, STATE_FILE};
use polarity_train::{
    CheckpointConfig, CrossEntropyObjective, MAX_BATCH_SIZE, MAX_CHUNK_BATCHES, TrainError, TrainOrder, Trainer,
    TrainerConfig, Warmup,
};

/// An allocation sized by a hostile count fails the test binary instead of swapping the machine.
#[global_allocator]
static ALLOCATOR: CappedAllocator = CappedAllocator::new(3 << 30);

const HANG: Duration = Duration::from_secs(20);

fn config() -> TrainerConfig {
    TrainerConfig::default()
        .with_epochs(2)
        .with_batch_size(4)
        .with_learning_rate(0.02)
        .with_warmup(Warmup::Ratio(0.1))
        .with_best_metric(None)
        .with_progress(false)
}

fn data() -> Vec<TokenizedExample> {
    synthetic(16, 3)
}

fn resuming(dir: &Path) -> TrainerConfig {
    config().with_checkpoint(Some(CheckpointConfig::new(dir, 2).with_resume(true)))
}

fn fit(config: TrainerConfig, model: Bag<B>) -> Result<polarity_train::TrainOutcome<Bag<B>>, TrainError> {
    let train = data();
    Trainer::<B>::new(config, Default::default()).fit(model, &CrossEntropyObjective::new(0), &train, None)
}

/// A finished run of 2 epochs x 4 steps, checkpointed every 2 steps (the last two kept).
fn finished_run() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let outcome = fit(resuming(dir.path()), bag(VOCAB, 8, 0.0, 1)).unwrap();
    assert_eq!(outcome.global_steps, 8);
    dir
}

/// Every file under `dir` with its bytes (FIFOs and links by name only), to show a refused resume changed nothing.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                files.insert(entry.path(), std::fs::read(entry.path()).unwrap());
            } else {
                files.insert(entry.path(), Vec::new());
            }
        }
    }
    files
}

/// Runs a resume that must be refused with an error mentioning `needles`, and checks nothing was changed.
fn refused(dir: &Path, model: Bag<B>, needles: &[&str]) -> String {
    let before = snapshot(dir);
    let message =
        expect_error("resume", no_panic("resume", || fit(resuming(dir), model)).map(|o| o.global_steps), needles);
    assert_eq!(snapshot(dir), before, "a refused resume changed the checkpoint directory");
    message
}

fn edit_state(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = checkpoint::latest_checkpoint(dir).unwrap().unwrap().join(STATE_FILE);
    let mut state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut state);
    std::fs::write(&path, state.to_string()).unwrap();
}

#[test]
fn a_fifo_for_latest_is_an_error_not_a_hang() {
    let run = finished_run();
    let dir = run.path().to_path_buf();
    std::fs::remove_file(dir.join(LATEST_FILE)).unwrap();
    make_fifo(&dir.join(LATEST_FILE)).unwrap();
    let lookup = dir.clone();
    let result = within("a FIFO named latest", HANG, move || checkpoint::latest_checkpoint(&lookup).map(|_| ()));
    expect_error("a FIFO named latest", result, &["latest", "FIFO"]);
    let resume = dir.clone();
    let result = within("resuming with a FIFO named latest", HANG, move || {
        fit(resuming(&resume), bag(VOCAB, 8, 0.0, 1)).map(|outcome| outcome.global_steps)
    });
    expect_error("resuming with a FIFO named latest", result, &["latest", "FIFO"]);
}

#[test]
fn fifos_for_the_state_and_the_records_are_errors_not_hangs() {
    for file in [STATE_FILE, "model.mpk", "optimizer-decay.mpk"] {
        let run = finished_run();
        let dir = run.path().to_path_buf();
        let target = checkpoint::latest_checkpoint(&dir).unwrap().unwrap().join(file);
        std::fs::remove_file(&target).unwrap();
        make_fifo(&target).unwrap();
        let label = format!("a FIFO for {file}");
        let result = within(&label, HANG, move || fit(resuming(&dir), bag(VOCAB, 8, 0.0, 1)).map(|o| o.global_steps));
        expect_error(&label, result, &[file, "FIFO"]);
    }
}

#[test]
fn latest_naming_a_path_outside_the_directory_is_refused() {
    let run = finished_run();
    let dir = run.path();
    // A complete checkpoint outside the directory, which a followed pointer would resume from.
    let outside = tempfile::tempdir().unwrap();
    let decoy = outside.path().join("checkpoint-8");
    let real = checkpoint::latest_checkpoint(dir).unwrap().unwrap();
    std::fs::create_dir(&decoy).unwrap();
    for entry in std::fs::read_dir(&real).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), decoy.join(entry.file_name())).unwrap();
    }
    let absolute = decoy.display().to_string();
    let climbing = format!("../{}/checkpoint-8", outside.path().file_name().unwrap().to_string_lossy());
    for name in [absolute.as_str(), climbing.as_str(), "checkpoint-8/../checkpoint-6", "..", "", "model.mpk"] {
        std::fs::write(dir.join(LATEST_FILE), name).unwrap();
        let error = no_panic(name, || checkpoint::latest_checkpoint(dir));
        expect_error(name, error, &["latest"]);
        refused(dir, bag(VOCAB, 8, 0.0, 1), &["latest"]);
    }
    // A `latest` far longer than a checkpoint name is refused without reading it all.
    std::fs::write(dir.join(LATEST_FILE), vec![b'a'; 1 << 20]).unwrap();
    expect_error("a 1 MiB latest", checkpoint::latest_checkpoint(dir), &["latest", "longer than"]);
    // A symbolic link named like a checkpoint is not followed when looking for the newest one.
    std::fs::remove_file(dir.join(LATEST_FILE)).unwrap();
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(&decoy, dir.join("checkpoint-99")).unwrap();
        let newest = checkpoint::latest_checkpoint(dir).unwrap().unwrap();
        assert!(newest.ends_with("checkpoint-8"), "{newest:?}");
    }
}

#[test]
fn resuming_a_checkpoint_of_another_model_shape_is_refused() {
    let run = finished_run();
    // Embedding width 16 where the checkpoint's is 8: the first differing parameter is named.
    let message =
        refused(run.path(), bag(VOCAB, 16, 0.0, 1), &["another model", "embedding.weight", "[32, 8]", "[32, 16]"]);
    assert!(!message.contains('\n'), "one line: {message}");
    // A larger vocabulary: the same parameter, another dimension.
    refused(run.path(), bag(VOCAB * 2, 8, 0.0, 1), &["embedding.weight", "[64, 8]"]);
}

#[test]
fn a_model_record_of_another_shape_than_its_state_is_refused() {
    let run = finished_run();
    // The model record of a width-16 run, put in place of the width-8 checkpoint's.
    let other = tempfile::tempdir().unwrap();
    fit(resuming(other.path()), bag(VOCAB, 16, 0.0, 1)).unwrap();
    let theirs = checkpoint::latest_checkpoint(other.path()).unwrap().unwrap().join("model.mpk");
    let ours = checkpoint::latest_checkpoint(run.path()).unwrap().unwrap().join("model.mpk");
    std::fs::copy(theirs, ours).unwrap();
    refused(run.path(), bag(VOCAB, 8, 0.0, 1), &["model", "another model", "embedding.weight"]);
}

/// A label, an edit of the trainer state, and what the refusal must mention.
type StateCase = (&'static str, fn(&mut serde_json::Value), &'static [&'static str]);

#[test]
fn a_position_past_the_end_of_the_run_is_refused() {
    let cases: [StateCase; 6] = [
        ("epoch 5 of 2", |s| s["epoch"] = 5.into(), &["epoch 5", "past"]),
        ("global step 1000", |s| s["global_step"] = 1000.into(), &["global step 1000"]),
        ("steps in epoch 99", |s| s["steps_in_epoch"] = 99.into(), &["99 steps into epoch"]),
        ("step usize::MAX", |s| s["global_step"] = u64::MAX.into(), &["global step 18446744073709551615"]),
        ("history cut", |s| s["history"] = serde_json::json!([]), &["0 epoch reports"]),
        ("negative loss sum", |s| s["epoch_loss_sum"] = serde_json::json!(-1.0), &["epoch_loss_sum -1"]),
    ];
    for (label, edit, needles) in cases {
        let run = finished_run();
        edit_state(run.path(), edit);
        let message = refused(run.path(), bag(VOCAB, 8, 0.0, 1), needles);
        assert!(message.contains("cannot resume") && message.contains("inconsistent"), "{label}: {message}");
    }
    // A finished run (epoch 2 of 2, step 8 of 8) is not "past the end": it resumes to its result.
    let run = finished_run();
    let outcome = fit(resuming(run.path()), bag(VOCAB, 8, 0.0, 1)).unwrap();
    assert_eq!((outcome.global_steps, outcome.history.len()), (8, 2));
}

#[test]
fn an_older_or_foreign_trainer_state_is_named_not_misread() {
    let run = finished_run();
    edit_state(run.path(), |state| state["format"] = 1.into());
    refused(run.path(), bag(VOCAB, 8, 0.0, 1), &["format 1", "format 2"]);
    edit_state(run.path(), |state| *state = serde_json::json!({"format": 2, "epoch": "two"}));
    refused(run.path(), bag(VOCAB, 8, 0.0, 1), &[STATE_FILE, "not a trainer state"]);
}

#[test]
fn a_fresh_run_refuses_to_overwrite_an_earlier_runs_checkpoints() {
    let run = finished_run();
    let before = snapshot(run.path());
    let fresh = config().with_checkpoint(Some(CheckpointConfig::new(run.path(), 2)));
    let result = fit(fresh, bag(VOCAB, 8, 0.0, 1)).map(|o| o.global_steps);
    expect_error("a fresh run over old checkpoints", result, &["already holds checkpoint-8", "resume"]);
    assert_eq!(snapshot(run.path()), before);
}

#[test]
fn huge_zero_and_non_finite_settings_are_typed_errors() {
    let big = usize::MAX;
    let cases: Vec<(TrainerConfig, &str)> = vec![
        (config().with_batch_size(big), "batch_size 18446744073709551615"),
        (config().with_batch_size(0), "batch_size 0"),
        (config().with_eval_batch_size(big), "eval_batch_size 18446744073709551615"),
        (config().with_grad_accum(big), "grad_accum 18446744073709551615"),
        (config().with_grad_accum(0), "grad_accum 0"),
        (config().with_epochs(big), "epochs 18446744073709551615"),
        (config().with_epochs(0), "epochs 0"),
        (config().with_learning_rate(-1.0), "learning rate -1"),
        (config().with_learning_rate(0.0), "learning rate 0"),
        (config().with_learning_rate(f64::NAN), "learning rate NaN"),
        (config().with_learning_rate(f64::INFINITY), "learning rate inf"),
        (config().with_weight_decay(f64::NAN), "weight decay NaN"),
        (config().with_weight_decay(-0.5), "weight decay -0.5"),
        (config().with_warmup(Warmup::Ratio(f64::NAN)), "warmup ratio NaN"),
        (config().with_warmup(Warmup::Ratio(1.5)), "warmup ratio 1.5"),
        (config().with_warmup(Warmup::Ratio(-0.1)), "warmup ratio -0.1"),
        (config().with_max_grad_norm(Some(f64::NAN)), "max_grad_norm NaN"),
        (config().with_max_grad_norm(Some(f64::INFINITY)), "max_grad_norm inf"),
        (config().with_max_grad_norm(Some(-1.0)), "max_grad_norm -1"),
        (config().with_max_grad_norm(Some(0.0)), "max_grad_norm 0"),
        (config().with_train_order(TrainOrder::LengthBucketed { chunk_batches: big }), "chunk_batches 1844"),
        (config().with_train_order(TrainOrder::LengthBucketed { chunk_batches: 0 }), "chunk_batches 0"),
        (config().with_initial_loss_scale(f64::NAN), "initial loss scale NaN"),
        (TrainerConfig { beta2: f64::NAN, ..config() }, "beta2 NaN"),
        (TrainerConfig { epsilon: 0.0, ..config() }, "epsilon 0"),
    ];
    for (config, needle) in cases {
        let result = no_panic(needle, || fit(config.clone(), bag(VOCAB, 4, 0.0, 1))).map(|o| o.global_steps);
        let message = expect_error(needle, result, &["invalid trainer configuration", needle]);
        assert!(!message.contains('\n'), "{message}");
        assert!(matches!(config.validate(), Err(TrainError::InvalidConfig(_))), "{needle}");
    }
}

#[test]
fn the_largest_accepted_settings_run_without_overflow() {
    // The bounds themselves are legitimate: batches of 2^20 over 16 examples, chunks of 2^20 batches, a warmup
    // of usize::MAX steps (capped at the run's length), an evaluation batch of 2^20.
    let config = config()
        .with_epochs(1)
        .with_batch_size(MAX_BATCH_SIZE)
        .with_eval_batch_size(MAX_BATCH_SIZE)
        .with_train_order(TrainOrder::LengthBucketed { chunk_batches: MAX_CHUNK_BATCHES })
        .with_warmup(Warmup::Steps(usize::MAX));
    let train = data();
    let outcome = no_panic("the largest settings", || {
        Trainer::<B>::new(config, Default::default()).fit(
            bag(VOCAB, 4, 0.0, 1),
            &CrossEntropyObjective::new(0),
            &train,
            Some(&train),
        )
    })
    .unwrap();
    assert_eq!(outcome.global_steps, 1);
}
