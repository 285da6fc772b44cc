//! Data parallelism across processes through MPI (cargo feature `mpi`, OpenMPI's `mpirun` on PATH):
//! `mpirun -n 2` runs this test binary's `rank` test as two processes, whose weights after several steps
//! with batch 8 each must equal one process's with batch 16; a rank that fails ends the whole job.

#![cfg(feature = "mpi")]

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::{B, VOCAB, bag, max_abs_diff, parallel_config, params, synthetic};
use polarity_testkit::within;
use polarity_train::{CrossEntropyObjective, Trainer, world_from_env};

/// Set for the processes `mpirun` starts: what the `rank` test does there (`train` or `fail`).
const ROLE: &str = "POLARITY_MPI_TEST_ROLE";
/// Where rank 0 writes its trained weights.
const OUTPUT: &str = "POLARITY_MPI_TEST_OUTPUT";

/// The work of one MPI rank; does nothing outside `mpirun`.
#[test]
fn rank() {
    let Ok(role) = std::env::var(ROLE) else { return };
    let world = world_from_env().unwrap();
    assert_eq!(world.world_size(), 2);
    let config = match role.as_str() {
        "fail" if world.rank() == 1 => parallel_config(8).with_learning_rate(-1.0),
        _ => parallel_config(8),
    };
    let (train, eval) = (synthetic(81, 1), synthetic(37, 2));
    let outcome = Trainer::<B>::new(config, Default::default())
        .with_collective(world.clone())
        .fit(bag(VOCAB, 8, 0.0, 7), &CrossEntropyObjective::new(0), &train, Some(&eval))
        .unwrap();
    if world.rank() == 0 {
        let bytes: Vec<u8> = params(&outcome.model).iter().flat_map(|value| value.to_le_bytes()).collect();
        std::fs::write(std::env::var(OUTPUT).unwrap(), bytes).unwrap();
    }
}

/// Runs the `rank` test as 2 MPI processes in `role`, within a time limit (a hang is a failure).
fn mpirun(role: &str, output: &Path) -> Output {
    let (role, output) = (role.to_string(), output.to_path_buf());
    within("mpirun -n 2", Duration::from_secs(240), move || {
        Command::new("mpirun")
            .args(["--allow-run-as-root", "--oversubscribe", "-n", "2", "-x", ROLE, "-x", OUTPUT])
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", "rank", "--nocapture", "--test-threads", "1"])
            .env(ROLE, role)
            .env(OUTPUT, output)
            .output()
            .expect("mpirun (OpenMPI) on PATH")
    })
}

#[test]
fn two_processes_of_batch_8_train_like_one_of_batch_16() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("rank0.bin");
    let run = mpirun("train", &output);
    assert!(run.status.success(), "{}\n{}", String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    let weights: Vec<f32> = std::fs::read(&output)
        .unwrap()
        .chunks_exact(4)
        .map(|bytes| f32::from_le_bytes(bytes.try_into().unwrap()))
        .collect();

    let (train, eval) = (synthetic(81, 1), synthetic(37, 2));
    let single = Trainer::<B>::new(parallel_config(16), Default::default())
        .fit(bag(VOCAB, 8, 0.0, 7), &CrossEntropyObjective::new(0), &train, Some(&eval))
        .unwrap();
    let diff = max_abs_diff(&weights, &params(&single.model));
    assert!(diff < 1e-5, "the MPI run's weights differ from one process's by {diff}");
    assert!(max_abs_diff(&weights, &params(&bag(VOCAB, 8, 0.0, 7))) > 1e-2, "the model moved");
}

#[test]
fn a_failing_rank_ends_the_job_with_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let run = mpirun("fail", &dir.path().join("rank0.bin"));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{stderr}");
    assert!(stderr.contains("rank 1 of 2") && stderr.contains("learning rate"), "{stderr}");
    assert!(!dir.path().join("rank0.bin").exists(), "rank 0 stopped too");
}
