//! Fine-tunes a BERT or DistilBERT checkpoint as an IMDB sentiment classifier with polarity's trainer
//! (AdamW with HF's parameter groups, linear warmup/decay, global-norm clipping, gradient accumulation,
//! per-epoch evaluation, best-epoch restore, resumable checkpoints) and reports accuracy, macro-F1 and
//! throughput.
//!
//! ```text
//! HF_HOME=../shared/hf HF_HUB_OFFLINE=1 cargo run --release --example finetune_encoder -- \
//!     --model sentence-transformers/all-MiniLM-L6-v2 --train-size 2000 --test-size 1000 \
//!     --max-length 256 --epochs 1 --lr 5e-5 --batch-size 16 --warmup-ratio 0.1 --json minilm.json
//! # the same on an NVIDIA GPU (a clear error where there is none):
//! cargo run --release --features cuda --example finetune_encoder -- ...
//! # a quick smoke run in the dev profile:
//! cargo run --example finetune_encoder -- --train-size 64 --test-size 64 --max-length 64
//! ```
//!
//! The model is a hub id (read from the hub cache first) or a local directory with `config.json`,
//! `model.safetensors` and `tokenizer.json`; a bare encoder (MiniLM) gets a freshly initialised
//! classification head, seeded by `--seed`. Training and test sets are seeded balanced subsets of the
//! dataset's `train` and `test` splits; the test subset is also the per-epoch evaluation set that picks
//! the best epoch (as the usual IMDB fine-tuning scripts do; `--best-metric none` keeps the last
//! epoch). The final metrics come from one more in-order pass of the returned model over the test
//! subset, which also measures inference throughput.
//!
//! `--checkpoint-dir DIR` writes a resumable checkpoint every `--checkpoint-every` steps and at each
//! epoch end; `--resume` continues from `DIR/latest` (same arguments required). `--output DIR` exports
//! the fine-tuned model as a transformers checkpoint (config.json, model.safetensors, tokenizer files).
//!
//! JSON written by `--json PATH`:
//!
//! ```text
//! {
//!   "model": "sentence-transformers/all-MiniLM-L6-v2", "architecture": "bert",
//!   "dataset": "stanfordnlp/imdb", "backend": "ndarray (cpu)",
//!   "train_size": 2000, "test_size": 1000, "validation_size": 0,
//!   "eval_set": "test",                    // what picked the best epoch: "test" or "validation"
//!   "max_length": 256, "epochs": 1,
//!   "learning_rate": 5e-5, "batch_size": 16, "grad_accum": 1, "eval_batch_size": 64,
//!   "warmup_steps": 13, "weight_decay": 0.01, "max_grad_norm": 1.0, "seed": 42,
//!   "precision": "f32",                    // "bf16" / "f16": mixed precision
//!   "loss_scale": null, "skipped_steps": 0, // f16 only: final loss scale, steps skipped on overflow
//!   "accuracy": 0.85,                      // final evaluation of the returned model on the test subset
//!   "macro_f1": 0.85,
//!   "train_seconds": 600.0,                // optimiser steps only (evaluation and checkpoints excluded)
//!   "train_samples_per_second": 3.3,
//!   "infer_samples_per_second": 40.0,      // the final evaluation pass (tokenization excluded)
//!   "tokenize_seconds": 1.2,
//!   "global_steps": 125, "best_epoch": 1, "resumed_from": null,
//!   "report": { "total", "accuracy", "macro_precision", "macro_recall", "macro_f1",
//!               "per_class": [...], "confusion": {"counts": [[tn, fp], [fn, tp]]} },
//!   "history": [ {"epoch", "train_loss", "eval_accuracy", "eval_macro_f1",
//!                 "train_seconds", "train_samples_per_second"}, ... ]
//! }
//! ```

mod common;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use burn::module::AutodiffModule;
use burn::tensor::backend::Backend;
use clap::{Parser, ValueEnum};
use polarity_core::backend::{TrainBackend, default_backend_name, default_device};
use polarity_core::{EpochReport, Precision};
use polarity_data::{Split, hub};
use polarity_encoder::EncoderClassifier;
use polarity_hub::{RepoKind, RepoSource};
use polarity_kernels::autocast::autocast;
use polarity_metrics::ClassificationReport;
use polarity_tokenize::{Encode, HfTokenizer};
use polarity_train::{
    BestMetric, CheckpointConfig, CrossEntropyObjective, ParamGroups, Trainer, TrainerConfig, Warmup, evaluate,
    tokenize_examples,
};
use serde::Serialize;

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
    /// Training examples: a seeded balanced subset of the train split.
    #[arg(long, default_value_t = 2000)]
    train_size: usize,
    /// Test examples: a seeded balanced subset of the test split (also the per-epoch evaluation set
    /// unless --validation-size is given).
    #[arg(long, default_value_t = 1000)]
    test_size: usize,
    /// Validation examples: a seeded balanced subset of the train split, disjoint from the training
    /// examples, evaluated after each epoch to pick the best one; 0 evaluates on the test subset.
    #[arg(long, default_value_t = 0)]
    validation_size: usize,
    /// Truncate reviews to this many tokens (special tokens included).
    #[arg(long, default_value_t = 256)]
    max_length: usize,
    /// Passes over the training set.
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-5)]
    lr: f64,
    /// Examples per micro-batch.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Micro-batches per optimiser step.
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Examples per evaluation batch.
    #[arg(long, default_value_t = 64)]
    eval_batch_size: usize,
    /// Fraction of the optimiser steps spent warming the learning rate up from 0.
    #[arg(long, default_value_t = 0.0, conflicts_with = "warmup_steps")]
    warmup_ratio: f64,
    /// Warmup length in optimiser steps (instead of --warmup-ratio).
    #[arg(long)]
    warmup_steps: Option<usize>,
    /// AdamW weight decay (not applied to biases and LayerNorm weights).
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f64,
    /// Clip the global gradient norm to this; 0 disables clipping.
    #[arg(long, default_value_t = 1.0)]
    clip: f64,
    /// Seed of the subsets, the classification head's initialisation, batch order and dropout.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// The type of the matrix products: f32, or bf16/f16 mixed precision (weights, gradients and
    /// optimiser state stay f32; f16 adds dynamic loss scaling). Meant for --features cuda: on the CPU
    /// it changes the numbers, not the speed.
    #[arg(long, default_value_t = Precision::F32)]
    precision: Precision,
    /// Which epoch's model to keep.
    #[arg(long, value_enum, default_value_t = BestBy::Accuracy)]
    best_metric: BestBy,
    /// Write resumable checkpoints here.
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    /// Checkpoint every this many optimiser steps (0: only at epoch ends).
    #[arg(long, default_value_t = 100)]
    checkpoint_every: usize,
    /// Continue from the latest checkpoint in --checkpoint-dir.
    #[arg(long, requires = "checkpoint_dir")]
    resume: bool,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Export the fine-tuned model as a transformers checkpoint directory.
    #[arg(long)]
    output: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
}

#[derive(Serialize)]
struct Results<'a> {
    model: &'a str,
    architecture: String,
    dataset: &'a str,
    backend: &'static str,
    train_size: usize,
    test_size: usize,
    validation_size: usize,
    eval_set: &'static str,
    max_length: usize,
    epochs: usize,
    learning_rate: f64,
    batch_size: usize,
    grad_accum: usize,
    eval_batch_size: usize,
    warmup_steps: usize,
    weight_decay: f64,
    max_grad_norm: Option<f64>,
    seed: u64,
    precision: Precision,
    loss_scale: Option<f64>,
    skipped_steps: usize,
    accuracy: f64,
    macro_f1: f64,
    train_seconds: f64,
    train_samples_per_second: f64,
    infer_samples_per_second: f64,
    tokenize_seconds: f64,
    global_steps: usize,
    best_epoch: Option<usize>,
    resumed_from: Option<PathBuf>,
    report: &'a ClassificationReport,
    history: &'a [EpochReport],
}

fn main() -> ExitCode {
    common::main_with(|| run(&Args::parse()))
}

fn run(args: &Args) -> anyhow::Result<()> {
    let device = default_device().context("choosing the device")?;
    let backend = default_backend_name();
    // The fresh classification head is drawn from the backend's RNG.
    TrainBackend::seed(&device, args.seed);

    let (train_set, validation_set) = if args.validation_size > 0 {
        let [train, validation] =
            common::balanced_splits(&args.dataset, Split::Train, [args.train_size, args.validation_size], args.seed)?;
        (train, Some(validation))
    } else {
        (common::balanced_split(&args.dataset, Split::Train, args.train_size, args.seed)?, None)
    };
    let test_set = common::balanced_split(&args.dataset, Split::Test, args.test_size, args.seed)?;

    let tokenizer = HfTokenizer::from_pretrained(&args.model, args.max_length)
        .with_context(|| format!("loading the tokenizer of {}", args.model))?;
    let started = Instant::now();
    let train = tokenize_examples(&tokenizer, &train_set)?;
    let test = tokenize_examples(&tokenizer, &test_set)?;
    let validation = validation_set.as_ref().map(|set| tokenize_examples(&tokenizer, set)).transpose()?;
    let tokenize_seconds = started.elapsed().as_secs_f64();
    let mean_tokens = train.iter().map(|e| e.tokens.len()).sum::<usize>() as f64 / train.len().max(1) as f64;

    let source = RepoSource::parse(&args.model, RepoKind::Model);
    let (model, load_report) = EncoderClassifier::<TrainBackend>::from_pretrained_with_report(&source, &device)
        .with_context(|| format!("loading {}", args.model))?;
    let architecture = format!("{:?}", model.architecture()).to_lowercase();
    let groups = ParamGroups::of::<TrainBackend, _>(&model);
    eprintln!(
        "{} ({architecture}) on {backend}: {} tensors loaded, {} freshly initialised{}; AdamW groups: {} decayed, {} without decay",
        args.model,
        load_report.loaded.len(),
        load_report.initialised.len(),
        if load_report.initialised.is_empty() {
            String::new()
        } else {
            format!(" ({})", load_report.initialised.join(", "))
        },
        groups.decay.len(),
        groups.no_decay.len(),
    );
    eprintln!(
        "{} train / {} test reviews, {:.1} tokens per training review on average (max {}), tokenized in {tokenize_seconds:.1}s",
        train.len(),
        test.len(),
        mean_tokens,
        args.max_length
    );

    let warmup = match args.warmup_steps {
        Some(steps) => Warmup::Steps(steps),
        None => Warmup::Ratio(args.warmup_ratio),
    };
    let config = TrainerConfig::default()
        .with_epochs(args.epochs)
        .with_batch_size(args.batch_size)
        .with_eval_batch_size(args.eval_batch_size)
        .with_grad_accum(args.grad_accum)
        .with_learning_rate(args.lr)
        .with_weight_decay(args.weight_decay)
        .with_warmup(warmup)
        .with_max_grad_norm((args.clip > 0.0).then_some(args.clip))
        .with_seed(args.seed)
        .with_precision(args.precision)
        .with_best_metric(match args.best_metric {
            BestBy::Accuracy => Some(BestMetric::Accuracy),
            BestBy::MacroF1 => Some(BestMetric::MacroF1),
            BestBy::None => None,
        })
        .with_checkpoint(
            args.checkpoint_dir
                .as_ref()
                .map(|dir| CheckpointConfig::new(dir, args.checkpoint_every).with_resume(args.resume)),
        )
        .with_progress(!args.no_progress);
    let trainer = Trainer::<TrainBackend>::new(config, device);
    let total_steps = trainer.steps_per_epoch(train.len()) * args.epochs;
    let warmup_steps = warmup.steps(total_steps);
    eprintln!(
        "{} epochs x {} optimiser steps (batch {} x accumulation {}), lr {:e}, warmup {warmup_steps} steps",
        args.epochs,
        trainer.steps_per_epoch(train.len()),
        args.batch_size,
        args.grad_accum,
        args.lr
    );

    let objective = CrossEntropyObjective::new(tokenizer.pad_id());
    let eval_set = if validation.is_some() { "validation" } else { "test" };
    let outcome = trainer.fit(model, &objective, &train, Some(validation.as_deref().unwrap_or(&test)))?;
    if let Some(path) = &outcome.resumed_from {
        eprintln!("resumed from {}", path.display());
    }

    let inference_model = outcome.model.valid();
    let final_eval = autocast(args.precision.compute_dtype(), || {
        evaluate(&objective, &inference_model, &test, args.eval_batch_size, trainer.device())
    })?;
    let report = &final_eval.report;

    println!();
    println!(
        "{:>5} {:>10} {:>9} {:>9} {:>9} {:>10}",
        "epoch", "train loss", "accuracy", "macro-F1", "seconds", "samples/s"
    );
    for r in &outcome.history {
        let metric = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.4}"));
        println!(
            "{:>5} {:>10.4} {:>9} {:>9} {:>9.1} {:>10.2}",
            r.epoch,
            r.train_loss,
            metric(r.eval_accuracy),
            metric(r.eval_macro_f1),
            r.train_seconds,
            r.train_samples_per_second
        );
    }
    println!();
    println!("{report}");
    let best = outcome.best_epoch.map_or_else(|| "last epoch".to_string(), |e| format!("best epoch {e}"));
    println!("model                {} ({architecture}, {best})", args.model);
    println!("backend              {backend}, {} products", args.precision);
    println!("accuracy             {:.4}", report.accuracy);
    println!("macro-F1             {:.4}", report.macro_f1);
    println!("train time           {:.1}s ({} steps)", outcome.train_seconds(), outcome.global_steps);
    if let Some(scaler) = outcome.loss_scaler {
        println!("f16 loss scale       {} ({} steps skipped on overflow)", scaler.scale(), scaler.skipped_steps());
    }
    println!("train samples/s      {:.2}", outcome.train_samples_per_second());
    println!("inference samples/s  {:.2}", final_eval.samples_per_second);

    if let Some(dir) = &args.output {
        let tokenizer_files: Vec<PathBuf> =
            ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"]
                .into_iter()
                .filter(|file| source.has_cached(file))
                .map(|file| source.file(file))
                .collect::<Result<_, _>>()?;
        inference_model
            .save_pretrained(dir, &tokenizer_files)
            .with_context(|| format!("exporting to {}", dir.display()))?;
        println!("exported to          {}", dir.display());
    }

    if let Some(path) = &args.json {
        let results = Results {
            model: &args.model,
            architecture,
            dataset: &args.dataset,
            backend,
            train_size: train.len(),
            test_size: test.len(),
            validation_size: validation.as_ref().map_or(0, Vec::len),
            eval_set,
            max_length: args.max_length,
            epochs: args.epochs,
            learning_rate: args.lr,
            batch_size: args.batch_size,
            grad_accum: args.grad_accum,
            eval_batch_size: args.eval_batch_size,
            warmup_steps,
            weight_decay: args.weight_decay,
            max_grad_norm: (args.clip > 0.0).then_some(args.clip),
            seed: args.seed,
            precision: args.precision,
            loss_scale: outcome.loss_scaler.map(|scaler| scaler.scale()),
            skipped_steps: outcome.loss_scaler.map_or(0, |scaler| scaler.skipped_steps()),
            accuracy: report.accuracy,
            macro_f1: report.macro_f1,
            train_seconds: outcome.train_seconds(),
            train_samples_per_second: outcome.train_samples_per_second(),
            infer_samples_per_second: final_eval.samples_per_second,
            tokenize_seconds,
            global_steps: outcome.global_steps,
            best_epoch: outcome.best_epoch,
            resumed_from: outcome.resumed_from.clone(),
            report,
            history: &outcome.history,
        };
        common::write_json(path, &results)?;
        println!("results written to   {}", path.display());
    }
    Ok(())
}
