//! LoRA-tunes a Llama-architecture causal LM to answer the IMDB prompt with `positive` or `negative`
//! ([`polarity_finetune::LoraFineTune`]), and prints zero-shot and tuned accuracy, macro-F1 and throughput.
//!
//! ```text
//! HF_HOME=../shared/hf HF_HUB_OFFLINE=1 cargo run --release --example finetune_llama_lora -- \
//!     --model ../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf \
//!     --train-size 500 --test-size 500 --max-length 128 --json smollm2-lora.json --adapter-out smollm2-lora
//! cargo run --release --example finetune_llama_lora -- ... --qlora   # the frozen base stays 4-bit
//! cargo run --release --features cuda --example finetune_llama_lora -- \
//!     --model meta-llama/Meta-Llama-3-8B-Instruct --qlora --max-length 256   # where the hub is reachable
//! cargo build --release --features mpi --example finetune_llama_lora
//! mpirun -n 2 target/release/examples/finetune_llama_lora ...   # data-parallel: 2 ranks, batch 2 x --batch-size
//! ```
//!
//! The model is a llama.cpp `.gguf` file, or a hub id or directory with `config.json`, safetensors and
//! `tokenizer.json`. `--classify-by generation` reads answers by greedy decoding and parsing (unparseable
//! answers count as wrong and are reported). `--json PATH` writes the [`polarity_finetune::RunReport`] (its
//! rustdoc is the schema); `--adapter-out DIR` saves the adapter in PEFT's format.

mod common;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use polarity_core::backend::{TrainBackend, default_backend_name, default_device};
use polarity_data::hub;
use polarity_finetune::{ClassifyBy, DataConfig, LoraFineTune, REFERENCE_MAX_NEW_TOKENS};
use polarity_llama::LoraConfig;

/// How a causal LM's answer is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Reading {
    /// Compare the next-token logits of " negative" and " positive" after the prompt (one forward pass).
    LabelWords,
    /// Greedy decoding of a few tokens, then parsing the answer.
    Generation,
}

/// LoRA-tune a Llama-architecture causal LM on IMDB; report zero-shot and tuned accuracy side by side.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// A llama.cpp .gguf file, or a hub id / local directory with config.json, safetensors, tokenizer.json.
    #[arg(long, default_value = "../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf")]
    model: String,
    /// Hub dataset id with stanfordnlp/imdb's parquet layout, or a local directory with that layout.
    #[arg(long, default_value = hub::IMDB_REPO)]
    dataset: String,
    /// Training reviews: a seeded balanced subset of the train split.
    #[arg(long, default_value_t = 500)]
    train_size: usize,
    /// Test reviews: a seeded balanced subset of the test split.
    #[arg(long, default_value_t = 500)]
    test_size: usize,
    /// Maximum prompt length in tokens (the review is shortened to fit).
    #[arg(long, default_value_t = 128)]
    max_length: usize,
    /// LoRA rank.
    #[arg(long, default_value_t = 16)]
    lora_r: usize,
    /// LoRA alpha (the update is scaled by alpha / r).
    #[arg(long, default_value_t = 32.0, allow_negative_numbers = true)]
    lora_alpha: f64,
    /// Dropout on the adapters' input.
    #[arg(long, default_value_t = 0.05, allow_negative_numbers = true)]
    lora_dropout: f64,
    /// Projections that get adapters (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj).
    #[arg(long, value_delimiter = ',', default_value = "q_proj,v_proj")]
    target_modules: Vec<String>,
    /// Keep the frozen base quantized in memory (QLoRA): GGUF blocks as stored, NF4 for other bases.
    #[arg(long)]
    qlora: bool,
    #[command(flatten)]
    trainer: common::TrainerArgs,
    /// How answers are read, zero-shot and after tuning.
    #[arg(long, value_enum, default_value_t = Reading::LabelWords)]
    classify_by: Reading,
    /// Tokens greedy generation may write before the answer is parsed.
    #[arg(long, default_value_t = REFERENCE_MAX_NEW_TOKENS)]
    max_new_tokens: usize,
    /// Skip the zero-shot evaluation.
    #[arg(long)]
    skip_zero_shot: bool,
    /// Save the trained adapter here in PEFT's format (adapter_config.json, adapter_model.safetensors).
    #[arg(long)]
    adapter_out: Option<PathBuf>,
    /// Write the run report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn main() -> ExitCode {
    common::main_with(|| run(Args::parse()))
}

fn run(args: Args) -> anyhow::Result<()> {
    let data = DataConfig {
        dataset: args.dataset,
        train_size: args.train_size,
        validation_size: 0,
        test_size: args.test_size,
        seed: args.trainer.seed,
    };
    let lora = LoraConfig::new(args.lora_r, args.lora_alpha)
        .with_lora_dropout(args.lora_dropout)
        .with_target_modules(args.target_modules);
    let classify_by = match args.classify_by {
        Reading::LabelWords => ClassifyBy::LabelWords,
        Reading::Generation => ClassifyBy::Generation { max_new_tokens: args.max_new_tokens },
    };
    let mut recipe = LoraFineTune::new(args.model)
        .with_max_length(args.max_length)
        .with_lora(lora)
        .with_qlora(args.qlora)
        .with_classify_by(classify_by)
        .with_zero_shot(!args.skip_zero_shot);
    recipe.trainer = args.trainer.apply(recipe.trainer);
    // Every flag (LoRA rank, alpha and dropout included) is checked before the dataset or the model is read.
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
    if let Some(dir) = &args.adapter_out {
        recipe.save_adapter(&experiment.classifier, dir)?;
        println!("adapter saved to     {}", dir.display());
    }
    if let Some(path) = &args.json {
        experiment.report.write_json(path)?;
        println!("report written to    {}", path.display());
    }
    Ok(())
}
