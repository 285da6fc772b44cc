//! Fine-tunes a BERT, MiniLM or DistilBERT checkpoint as an IMDB sentiment classifier
//! ([`polarity_finetune::EncoderFineTune`]) and prints accuracy, macro-F1, throughput and memory.
//!
//! ```text
//! HF_HOME=../shared/hf HF_HUB_OFFLINE=1 cargo run --release --example finetune_encoder -- \
//!     --model sentence-transformers/all-MiniLM-L6-v2 --train-size 2000 --test-size 1000 \
//!     --max-length 256 --epochs 1 --lr 5e-5 --batch-size 16 --warmup-ratio 0.1 --json minilm.json
//! cargo run --release --features cuda --example finetune_encoder -- ...   # on an NVIDIA GPU
//! cargo build --release --features mpi --example finetune_encoder
//! mpirun -n 2 target/release/examples/finetune_encoder ...   # data-parallel: 2 ranks, batch 2 x --batch-size
//! ```
//!
//! The best epoch is picked on `--validation-size` reviews held out of the train split, or on the test
//! subset without them. `--json PATH` writes the [`polarity_finetune::RunReport`] (its rustdoc is the
//! schema); `--output DIR` exports a transformers checkpoint; `--checkpoint-dir DIR [--resume]` makes the
//! run resumable.

mod common;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use polarity_core::backend::{TrainBackend, default_backend_name, default_device};
use polarity_data::hub;
use polarity_finetune::{DataConfig, EncoderFineTune};
use polarity_train::BestMetric;

/// The metric that picks the best epoch.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum BestBy {
    /// Evaluation accuracy.
    Accuracy,
    /// Evaluation macro-F1.
    MacroF1,
    /// Keep the last epoch.
    None,
}

/// Fine-tune an encoder (BERT, MiniLM, DistilBERT) on IMDB and report accuracy, macro-F1 and throughput.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Hub model id or local directory (config.json, model.safetensors, tokenizer.json).
    #[arg(long, default_value = "sentence-transformers/all-MiniLM-L6-v2")]
    model: String,
    /// Hub dataset id with stanfordnlp/imdb's parquet layout, or a local directory with that layout.
    #[arg(long, default_value = hub::IMDB_REPO)]
    dataset: String,
    /// Training reviews: a seeded balanced subset of the train split.
    #[arg(long, default_value_t = 2000)]
    train_size: usize,
    /// Test reviews: a seeded balanced subset of the test split.
    #[arg(long, default_value_t = 1000)]
    test_size: usize,
    /// Reviews held out of the train split to pick the best epoch; 0 picks it on the test subset.
    #[arg(long, default_value_t = 0)]
    validation_size: usize,
    /// Truncate reviews to this many tokens (special tokens included).
    #[arg(long, default_value_t = 256)]
    max_length: usize,
    #[command(flatten)]
    trainer: common::TrainerArgs,
    /// Which epoch's model to keep.
    #[arg(long, value_enum, default_value_t = BestBy::Accuracy)]
    best_metric: BestBy,
    /// Write the run report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Export the fine-tuned model as a transformers checkpoint directory.
    #[arg(long)]
    output: Option<PathBuf>,
}

fn main() -> ExitCode {
    common::main_with(|| run(Args::parse()))
}

fn run(args: Args) -> anyhow::Result<()> {
    let data = DataConfig {
        dataset: args.dataset,
        train_size: args.train_size,
        validation_size: args.validation_size,
        test_size: args.test_size,
        seed: args.trainer.seed,
    };
    let best_metric = match args.best_metric {
        BestBy::Accuracy => Some(BestMetric::Accuracy),
        BestBy::MacroF1 => Some(BestMetric::MacroF1),
        BestBy::None => None,
    };
    let mut recipe = EncoderFineTune::new(args.model).with_max_length(args.max_length);
    recipe.trainer = args.trainer.apply(recipe.trainer).with_best_metric(best_metric);
    // Every flag is checked before the dataset or the model is read.
    recipe.validate()?;
    data.validate()?;

    // Under `mpirun -n N` (built with `--features mpi`) this process is one of N ranks: each trains on its
    // share of every batch, and rank 0 alone prints and writes. The handle keeps MPI up until the end.
    let world = polarity_train::world_from_env()?;
    let (device, backend) = (default_device()?, default_backend_name());
    let experiment = recipe.run_on_rank::<TrainBackend>(&device, backend, &data.load()?, world.clone())?;
    if world.rank() != 0 {
        return Ok(());
    }
    println!("\n{}", experiment.report);
    if let Some(dir) = &args.output {
        recipe.export(&experiment.classifier, dir)?;
        println!("exported to          {}", dir.display());
    }
    if let Some(path) = &args.json {
        experiment.report.write_json(path)?;
        println!("report written to    {}", path.display());
    }
    Ok(())
}
