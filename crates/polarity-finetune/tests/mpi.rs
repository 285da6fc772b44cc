//! The recipes across processes through MPI (cargo feature `mpi`, OpenMPI's `mpirun` on PATH): `mpirun -n 2`
//! runs this test binary's `rank` test as two processes with batch 8 each; their weights must equal one
//! process's with batch 16, for a tiny BERT (full fine-tuning) and a tiny Llama (LoRA on q_proj + v_proj).

#![cfg(feature = "mpi")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use burn::backend::{Autodiff, Flex};
use common::tiny::{
    bert_data, bert_recipe, llama_data, llama_recipe, max_abs_diff, values, write_tiny_bert, write_tiny_llama,
};
use polarity_testkit::within;
use polarity_train::world_from_env;

type B = Autodiff<Flex<f32>>;

/// Set for the processes `mpirun` starts: which model the `rank` test tunes (`bert` or `llama`).
const MODEL: &str = "POLARITY_MPI_TEST_MODEL";
/// The model directory, and the file rank 0 writes its trained weights to.
const MODEL_DIR: &str = "POLARITY_MPI_TEST_MODEL_DIR";
const OUTPUT: &str = "POLARITY_MPI_TEST_OUTPUT";

/// The work of one MPI rank; does nothing outside `mpirun`.
#[test]
fn rank() {
    let Ok(model) = std::env::var(MODEL) else { return };
    let dir = PathBuf::from(std::env::var(MODEL_DIR).unwrap());
    let world = world_from_env().unwrap();
    assert_eq!(world.world_size(), 2);
    let device = Default::default();
    let weights = match model.as_str() {
        "bert" => {
            let recipe = bert_recipe(&dir, 8);
            values(&recipe.run_on_rank::<B>(&device, "flex", &bert_data(), world.clone()).unwrap().classifier.model)
        }
        _ => {
            let recipe = llama_recipe(&dir, 8);
            values(&recipe.run_on_rank::<B>(&device, "flex", &llama_data(), world.clone()).unwrap().classifier.model)
        }
    };
    if world.rank() == 0 {
        let bytes: Vec<u8> = weights.iter().flat_map(|value| value.to_le_bytes()).collect();
        std::fs::write(std::env::var(OUTPUT).unwrap(), bytes).unwrap();
    }
}

/// Runs the `rank` test as 2 MPI processes tuning `model` from `dir`; returns rank 0's weights.
fn mpirun(model: &str, dir: &Path) -> Vec<f32> {
    let output = dir.join("rank0.bin");
    let (model, dir, file) = (model.to_string(), dir.to_path_buf(), output.clone());
    let run = within("mpirun -n 2", Duration::from_secs(600), move || {
        Command::new("mpirun")
            .args(["--allow-run-as-root", "--oversubscribe", "-n", "2", "-x", MODEL, "-x", MODEL_DIR, "-x", OUTPUT])
            .args(["-x", "HF_HOME", "-x", "HF_HUB_OFFLINE"])
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", "rank", "--nocapture", "--test-threads", "1"])
            .env(MODEL, model)
            .env(MODEL_DIR, dir)
            .env(OUTPUT, file)
            .output()
            .expect("mpirun (OpenMPI) on PATH")
    });
    assert!(run.status.success(), "{}\n{}", String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    std::fs::read(&output).unwrap().chunks_exact(4).map(|bytes| f32::from_le_bytes(bytes.try_into().unwrap())).collect()
}

#[test]
fn two_processes_fine_tune_a_tiny_bert_like_one() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path());
    let single = bert_recipe(dir.path(), 16).run_on::<B>(&Default::default(), "flex", &bert_data()).unwrap();
    let diff = max_abs_diff(&mpirun("bert", dir.path()), &values(&single.classifier.model));
    assert!(diff < 1e-4, "the MPI run's weights differ from one process's by {diff}");
}

#[test]
fn two_processes_lora_tune_a_tiny_llama_like_one() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_llama(dir.path());
    let single = llama_recipe(dir.path(), 16).run_on::<B>(&Default::default(), "flex", &llama_data()).unwrap();
    let diff = max_abs_diff(&mpirun("llama", dir.path()), &values(&single.classifier.model));
    assert!(diff < 1e-4, "the MPI run's weights differ from one process's by {diff}");
}
