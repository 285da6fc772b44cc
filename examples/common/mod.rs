//! What the examples share: logging set-up, error reporting and the trainer's flags.

// Each example uses only some of these.
#![allow(dead_code)]

mod allocator;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use polarity_core::Precision;
use polarity_train::{CheckpointConfig, TrainerConfig, Warmup};

/// Logs to stderr at `RUST_LOG`'s level (default: warnings, and the recipes' progress), runs `run` and turns an error into
/// a readable report (see [`error_report`]) and a failing exit code.
pub fn main_with(run: impl FnOnce() -> anyhow::Result<()>) -> ExitCode {
    allocator::configure_allocator();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,polarity_finetune=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{}", error_report(&error));
            ExitCode::FAILURE
        }
    }
}

/// An error as users read it: one line at the top (what went wrong, naming the file, field or value), then each cause
/// that line does not already say, one per line below it.
pub fn error_report(error: &anyhow::Error) -> String {
    let mut report = format!("error: {error}");
    let mut said = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !said.contains(&cause) {
            report.push_str(&format!("\n  caused by: {cause}"));
            said.push_str(&cause);
        }
    }
    report
}

/// The trainer's flags. Each one left out keeps the recipe's reference setting.
#[derive(Args, Debug)]
pub struct TrainerArgs {
    /// Passes over the training set.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Peak learning rate.
    #[arg(long, allow_negative_numbers = true)]
    pub lr: Option<f64>,
    /// Examples per micro-batch.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Micro-batches per optimiser step.
    #[arg(long)]
    pub grad_accum: Option<usize>,
    /// Examples per evaluation batch.
    #[arg(long)]
    pub eval_batch_size: Option<usize>,
    /// Fraction of the optimiser steps spent warming the learning rate up from 0.
    #[arg(long, conflicts_with = "warmup_steps", allow_negative_numbers = true)]
    pub warmup_ratio: Option<f64>,
    /// Warmup length in optimiser steps (instead of --warmup-ratio).
    #[arg(long)]
    pub warmup_steps: Option<usize>,
    /// AdamW weight decay (never applied to biases and norm weights).
    #[arg(long, allow_negative_numbers = true)]
    pub weight_decay: Option<f64>,
    /// Clip the global gradient norm to this; 0 disables clipping.
    #[arg(long, allow_negative_numbers = true)]
    pub clip: Option<f64>,
    /// Seed of the subsets, fresh weights (classification head, LoRA A), batch order and dropout.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// The type of the matrix products: f32, or bf16/f16 mixed precision (weights, gradients and optimiser
    /// state stay f32; f16 adds dynamic loss scaling). On the CPU, bf16 speeds up inference on CPUs with
    /// AVX512-BF16 and changes only the numbers of training; elsewhere, and for f16, it changes the numbers.
    #[arg(long)]
    pub precision: Option<Precision>,
    /// The type of the evaluation passes' products, when it differs from --precision (bf16 inference of a
    /// model trained in f32, for instance).
    #[arg(long)]
    pub eval_precision: Option<Precision>,
    /// Write resumable checkpoints here (a folder that already holds checkpoints needs --resume).
    #[arg(long)]
    pub checkpoint_dir: Option<PathBuf>,
    /// Checkpoint every this many optimiser steps (0: only at epoch ends).
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: usize,
    /// Continue from the latest checkpoint in --checkpoint-dir (same arguments required).
    #[arg(long, requires = "checkpoint_dir")]
    pub resume: bool,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

impl TrainerArgs {
    /// `config` with every flag that was given applied.
    pub fn apply(&self, mut config: TrainerConfig) -> TrainerConfig {
        fn set<T>(field: &mut T, value: Option<T>) {
            if let Some(value) = value {
                *field = value;
            }
        }
        set(&mut config.epochs, self.epochs);
        set(&mut config.learning_rate, self.lr);
        set(&mut config.batch_size, self.batch_size);
        set(&mut config.grad_accum, self.grad_accum);
        set(&mut config.eval_batch_size, self.eval_batch_size);
        set(&mut config.weight_decay, self.weight_decay);
        set(&mut config.precision, self.precision);
        if self.eval_precision.is_some() {
            config.eval_precision = self.eval_precision;
        }
        if let Some(ratio) = self.warmup_ratio {
            config.warmup = Warmup::Ratio(ratio);
        }
        if let Some(steps) = self.warmup_steps {
            config.warmup = Warmup::Steps(steps);
        }
        if let Some(clip) = self.clip {
            // 0 switches clipping off; anything else (NaN included) goes to the trainer's validation.
            config.max_grad_norm = if clip == 0.0 { None } else { Some(clip) };
        }
        config.seed = self.seed;
        config.progress = !self.no_progress;
        config.checkpoint = self
            .checkpoint_dir
            .as_ref()
            .map(|dir| CheckpointConfig::new(dir, self.checkpoint_every).with_resume(self.resume));
        config
    }
}
