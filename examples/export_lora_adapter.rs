//! Trains a fresh LoRA adapter for a few steps, saves it in PEFT's format and writes polarity's logits,
//! so that `scripts/check_peft_adapter.py` can load the adapter with PEFT and compare.
//!
//! ```text
//! cargo run --example export_lora_adapter -- --out /tmp/polarity-adapter
//! /tmp/venv/bin/python scripts/check_peft_adapter.py /tmp/polarity-adapter
//! ```
//!
//! It attaches a seeded LoRA adapter to a Hugging Face Llama checkpoint (default: the `tiny-llama`
//! fixture), takes `--steps` AdamW steps on a toy next-token loss so that `lora_B` becomes non-zero, and
//! writes to `--out` the adapter in PEFT's format (`Llama::save_lora`) and `polarity_logits.safetensors`:
//! fixed right-padded inputs (`input_ids`, `attention_mask`, I64) and polarity's logits on them (F32,
//! `[batch, seq, vocab]`), `logits` with the adapter (dropout off) and `base_logits` without it.

mod common;

use std::path::PathBuf;

use anyhow::{Context, ensure};
use burn::backend::Autodiff;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use clap::Parser;
use polarity::backend::CpuBackend;
use polarity::hub::{RepoKind, RepoSource};
use polarity::llama::{IGNORE_INDEX, LLAMA_TARGET_MODULES, Llama, LoraConfig, causal_lm_loss};
use polarity::reference::{ReferenceData, ReferenceTensor, write_tensors};

type TrainBackend = Autodiff<CpuBackend>;

/// The file of logits the check script reads, in the output directory.
const LOGITS_FILE: &str = "polarity_logits.safetensors";

/// Train a LoRA adapter briefly, save it in PEFT's format, and write polarity's logits on fixed inputs.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The base model: a directory with config.json and safetensors, or a hub id.
    #[arg(long, default_value = "../shared/fixtures/tiny-llama/model")]
    model: String,
    /// Where to write the adapter and the logits (created if needed).
    #[arg(long)]
    out: PathBuf,
    /// Seeds the adapter's lora_A initialisation and its dropout.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// AdamW steps on the toy loss (at least 1, so that lora_B is non-zero).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// The learning rate of those steps (large, so the adapter visibly changes the logits).
    #[arg(long, default_value_t = 0.05)]
    lr: f64,
    /// LoRA rank.
    #[arg(long, default_value_t = 16)]
    r: usize,
    /// LoRA alpha.
    #[arg(long, default_value_t = 32.0)]
    alpha: f64,
    /// LoRA dropout (active during the training steps only).
    #[arg(long, default_value_t = 0.05)]
    dropout: f64,
    /// Target modules, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "q_proj,v_proj")]
    targets: Vec<String>,
}

/// Deterministic token rows of the given lengths (ids in `1..vocab`), right-padded with 0 into
/// `([rows * longest] ids, [rows * longest] mask, longest)`.
fn token_rows(lengths: &[usize], vocab: usize, salt: u64) -> (Vec<i64>, Vec<i64>, usize) {
    let longest = lengths.iter().copied().max().unwrap_or(0);
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    for (row, &length) in lengths.iter().enumerate() {
        for position in 0..longest {
            let real = position < length;
            let id =
                (salt + 31 * row as u64 + 17 * position as u64 + (position * position) as u64) % (vocab as u64 - 1) + 1;
            ids.push(if real { id as i64 } else { 0 });
            mask.push(i64::from(real));
        }
    }
    (ids, mask, longest)
}

fn int_tensor<B: Backend>(values: &[i64], shape: [usize; 2], device: &B::Device) -> Tensor<B, 2, Int> {
    Tensor::from_data(TensorData::new(values.to_vec(), shape), device)
}

fn main() -> std::process::ExitCode {
    common::main_with(run)
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.steps >= 1, "--steps must be at least 1 (a fresh lora_B is zero)");
    ensure!(args.steps <= 100_000, "--steps {} is more than this toy export needs (at most 100000)", args.steps);
    ensure!(args.lr.is_finite() && args.lr > 0.0, "--lr {} must be finite and positive", args.lr);
    let device = Default::default();
    let source = RepoSource::parse(&args.model, RepoKind::Model);
    let config = LoraConfig::new(args.r, args.alpha).with_lora_dropout(args.dropout).with_target_modules(args.targets);
    config.validate(&LLAMA_TARGET_MODULES)?;

    TrainBackend::seed(&device, args.seed);
    let base =
        Llama::<TrainBackend>::from_pretrained(&source, &device).with_context(|| format!("loading {}", args.model))?;
    let vocab = base.vocab_size();
    let mut model = base.with_lora(&config)?;

    // Toy loss: next-token cross-entropy on two fixed rows (all their tokens labelled).
    let (train_ids, train_mask, train_len) = token_rows(&[12, 9], vocab, 101);
    let train_shape = [2, train_len];
    let labels: Vec<i64> =
        train_ids.iter().zip(&train_mask).map(|(&id, &m)| if m == 1 { id } else { IGNORE_INDEX }).collect();
    let [input_ids, attention_mask, labels] =
        [&train_ids, &train_mask, &labels].map(|values| int_tensor::<TrainBackend>(values, train_shape, &device));
    let mut optimizer = AdamWConfig::new().with_weight_decay(0.01).with_epsilon(1e-8).init();
    for step in 1..=args.steps {
        let logits = model.forward(input_ids.clone(), Some(attention_mask.clone()));
        let loss = causal_lm_loss(logits, labels.clone());
        let loss_value: f32 = loss.clone().into_scalar().elem();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optimizer.step(args.lr, model, grads);
        eprintln!("step {step}: toy loss {loss_value:.4}");
    }
    let max_lora_b = model
        .lora_adapters()
        .iter()
        .map(|(_, adapter)| adapter.lora_b.weight.val().abs().max().into_scalar().elem::<f32>())
        .fold(0.0f32, f32::max);
    ensure!(max_lora_b > 0.0, "lora_B is still zero after {} steps", args.steps);

    model.save_lora(&args.out, &config, Some(&args.model))?;

    // Fixed inputs: three right-padded rows.
    let (ids, mask, seq) = token_rows(&[16, 11, 7], vocab, 3);
    let shape = [3, seq];
    let logits_of = |model: &Llama<CpuBackend>| -> anyhow::Result<Vec<f32>> {
        let logits = model.forward(int_tensor(&ids, shape, &device), Some(int_tensor(&mask, shape, &device)));
        logits.into_data().convert::<f32>().into_vec().map_err(|e| anyhow::anyhow!("{e:?}"))
    };
    let logits = logits_of(&model.inference())?;
    let base_logits = logits_of(&Llama::<CpuBackend>::from_pretrained(&source, &device)?)?;
    let effect = logits.iter().zip(&base_logits).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);

    let path = args.out.join(LOGITS_FILE);
    let tensor = |shape: &[usize], data| ReferenceTensor { shape: shape.to_vec(), data };
    let (ids, mask) = (tensor(&shape, ReferenceData::I64(ids)), tensor(&shape, ReferenceData::I64(mask)));
    let [logits, base_logits] =
        [logits, base_logits].map(|values| tensor(&[3, seq, vocab], ReferenceData::F32(values)));
    let tensors = [("input_ids", &ids), ("attention_mask", &mask), ("logits", &logits), ("base_logits", &base_logits)];
    write_tensors(&path, &tensors)?;
    let adapters = model.lora_adapters().len();
    let (r, alpha, out) = (config.r, config.lora_alpha, args.out.display());
    println!("adapter: {adapters} modules, r {r}, alpha {alpha}, max |lora_B| {max_lora_b:.4}; saved to {out}");
    println!("logits: [3, {seq}, {vocab}] -> {}; max |logits - base_logits| = {effect:.4}", path.display());
    Ok(())
}
