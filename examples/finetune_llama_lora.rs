//! LoRA-tunes a Llama-architecture causal LM to answer the IMDB prompt with `positive` or `negative`,
//! and reports zero-shot and tuned accuracy, macro-F1 and throughput side by side.
//!
//! ```text
//! HF_HOME=../shared/hf HF_HUB_OFFLINE=1 cargo run --release --example finetune_llama_lora -- \
//!     --model ../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf \
//!     --train-size 500 --test-size 500 --max-length 128 --json smollm2-lora.json --adapter-out smollm2-lora
//! # QLoRA: the frozen base stays 4-bit in memory (GGUF blocks as stored, NF4 for safetensors bases):
//! cargo run --release --example finetune_llama_lora -- ... --qlora
//! # Llama 3 8B from the hub (where the hub is reachable), on an NVIDIA GPU:
//! cargo run --release --features cuda --example finetune_llama_lora -- --model meta-llama/Meta-Llama-3-8B-Instruct --qlora
//! ```
//!
//! The model is a llama.cpp `.gguf` file (weights and tokenizer), or a hub id or local directory with
//! `config.json`, safetensors (single or sharded) and `tokenizer.json`. Each review becomes the prompt
//! of [`DEFAULT_TEMPLATE`] in at most `--max-length` tokens (only the review is shortened, never the
//! instruction or the answer cue `Answer (positive or negative):`).
//!
//! 1. **Zero-shot**: the base model classifies the test subset by the next-token logits of the label
//!    words `" negative"` / `" positive"` after the prompt (`--classify-by generation`: greedy decoding of
//!    a few tokens then parsing, as the reference notebook does; answers naming no label count as
//!    wrong and their number is reported).
//! 2. **LoRA**: adapters (PEFT semantics: r, alpha, dropout, target modules) on the frozen base, trained
//!    by polarity's trainer (AdamW, linear warmup/decay, global-norm clipping, gradient accumulation,
//!    seeded length-bucketed batches) on the answer-only causal-LM loss: next-token cross-entropy of
//!    the gold label word after the prompt, prompt and padding masked out.
//! 3. The tuned model classifies the same test subset the same way.
//!
//! JSON written by `--json PATH`:
//!
//! ```text
//! {
//!   "model": "...", "dataset": "stanfordnlp/imdb", "backend": "flex (cpu)", "classify_by": "label-words",
//!   "train_size": 500, "test_size": 500, "max_length": 128, "prompts_shortened": {"train": 0, "test": 0},
//!   "lora": {...}, "zero_shot": {...},                      // see below
//!   "lora_config": {"r": 16, "lora_alpha": 32.0, "lora_dropout": 0.05, "target_modules": [...]},
//!   "trainer": {"epochs", "learning_rate", "batch_size", "grad_accum", "warmup_steps", "weight_decay",
//!               "max_grad_norm", "seed", "precision", "loss_scale", "skipped_steps"},
//!   "qlora": false, "weight_memory": {"dense_bytes", "quantized_bytes", "quantized_as_f32_bytes", "saved_bytes"},
//!   "trainable_parameters": 460800, "total_parameters": 134975808,
//!   "improvement_points": 30.0                             // (lora.accuracy - zero_shot.accuracy) * 100
//! }
//! ```
//! where `zero_shot` and `lora` each hold `accuracy`, `macro_f1`, `samples_per_second` and
//! `tokens_per_second` (prompt tokens of the test pass per second), `seconds`, `unparseable` (with
//! generation; 0 with label words) and `report` (per-class metrics and confusion matrix); `lora`
//! also has `train_seconds`, `train_samples_per_second`, `global_steps`, `history`.

mod common;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::Backend;
use clap::{Parser, ValueEnum};
use polarity_core::backend::{TrainBackend, default_backend_name, default_device};
use polarity_core::{EpochReport, Precision, Sentiment};
use polarity_data::{Split, hub};
use polarity_hub::{RepoKind, RepoSource};
use polarity_kernels::autocast::autocast;
use polarity_llama::{
    CausalLmObjective, LabelWords, Llama, LlamaTokenizer, LoraConfig, PromptEncoder, generate_answers_for_ids,
};
use polarity_metrics::{ClassificationReport, ConfusionMatrix};
use polarity_tokenize::{DEFAULT_TEMPLATE, Encode, PromptTemplate, TokenizedExample};
use polarity_train::{CheckpointConfig, Trainer, TrainerConfig, Warmup, evaluate, tokenize_examples};
use serde::Serialize;

type InferenceBackend = <TrainBackend as burn::tensor::backend::AutodiffBackend>::InnerBackend;

/// How a causal LM's answer is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
enum ClassifyBy {
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
    /// Training examples: a seeded balanced subset of the train split.
    #[arg(long, default_value_t = 500)]
    train_size: usize,
    /// Test examples: a seeded balanced subset of the test split.
    #[arg(long, default_value_t = 500)]
    test_size: usize,
    /// Maximum prompt length in tokens (the review is shortened to fit).
    #[arg(long, default_value_t = 128)]
    max_length: usize,
    /// LoRA rank.
    #[arg(long, default_value_t = 16)]
    lora_r: usize,
    /// LoRA alpha (the update is scaled by alpha / r).
    #[arg(long, default_value_t = 32.0)]
    lora_alpha: f64,
    /// Dropout on the adapters' input.
    #[arg(long, default_value_t = 0.05)]
    lora_dropout: f64,
    /// Projections that get adapters (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj).
    #[arg(long, value_delimiter = ',', default_value = "q_proj,v_proj")]
    target_modules: Vec<String>,
    /// Keep the frozen base quantized in memory (QLoRA): GGUF blocks as stored, NF4 for other bases.
    #[arg(long)]
    qlora: bool,
    /// The type of the matrix products: f32, or bf16/f16 mixed precision (adapters, gradients and
    /// optimiser state stay f32; f16 adds dynamic loss scaling). Meant for --features cuda: on the CPU
    /// it changes the numbers, not the speed.
    #[arg(long, default_value_t = Precision::F32)]
    precision: Precision,
    /// Passes over the training set.
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-4)]
    lr: f64,
    /// Examples per micro-batch.
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    /// Micro-batches per optimiser step.
    #[arg(long, default_value_t = 16)]
    grad_accum: usize,
    /// Prompts per evaluation batch.
    #[arg(long, default_value_t = 8)]
    eval_batch_size: usize,
    /// Fraction of the optimiser steps spent warming the learning rate up from 0.
    #[arg(long, default_value_t = 0.03)]
    warmup_ratio: f64,
    /// AdamW weight decay of the adapters.
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Clip the global gradient norm to this; 0 disables clipping.
    #[arg(long, default_value_t = 1.0)]
    clip: f64,
    /// Seed of the subsets, adapter initialisation, batch order and dropout.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// How answers are read, zero-shot and after tuning.
    #[arg(long, value_enum, default_value_t = ClassifyBy::LabelWords)]
    classify_by: ClassifyBy,
    /// Tokens greedy generation may write before the answer is parsed.
    #[arg(long, default_value_t = 3)]
    max_new_tokens: usize,
    /// Skip the zero-shot evaluation.
    #[arg(long)]
    skip_zero_shot: bool,
    /// Write resumable checkpoints here.
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    /// Checkpoint every this many optimiser steps (0: only at epoch ends).
    #[arg(long, default_value_t = 10)]
    checkpoint_every: usize,
    /// Continue from the latest checkpoint in --checkpoint-dir.
    #[arg(long, requires = "checkpoint_dir")]
    resume: bool,
    /// Save the trained adapter here in PEFT's format (adapter_config.json, adapter_model.safetensors).
    #[arg(long)]
    adapter_out: Option<PathBuf>,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
}

/// One evaluation pass.
#[derive(Serialize)]
struct Scored {
    accuracy: f64,
    macro_f1: f64,
    samples_per_second: f64,
    tokens_per_second: f64,
    seconds: f64,
    unparseable: usize,
    report: ClassificationReport,
}

#[derive(Serialize)]
struct TunedResults {
    #[serde(flatten)]
    scored: Scored,
    train_seconds: f64,
    train_samples_per_second: f64,
    global_steps: usize,
    history: Vec<EpochReport>,
}

#[derive(Serialize)]
struct TrainerSettings {
    epochs: usize,
    learning_rate: f64,
    batch_size: usize,
    grad_accum: usize,
    warmup_steps: usize,
    weight_decay: f64,
    max_grad_norm: Option<f64>,
    seed: u64,
    precision: Precision,
    loss_scale: Option<f64>,
    skipped_steps: usize,
}

#[derive(Serialize)]
struct MemoryJson {
    dense_bytes: usize,
    quantized_bytes: usize,
    quantized_as_f32_bytes: usize,
    saved_bytes: usize,
}

#[derive(Serialize)]
struct Shortened {
    train: usize,
    test: usize,
}

#[derive(Serialize)]
struct Results<'a> {
    model: &'a str,
    dataset: &'a str,
    backend: &'static str,
    classify_by: ClassifyBy,
    train_size: usize,
    test_size: usize,
    max_length: usize,
    prompts_shortened: Shortened,
    zero_shot: Option<Scored>,
    lora: TunedResults,
    lora_config: &'a LoraConfig,
    trainer: TrainerSettings,
    qlora: bool,
    weight_memory: MemoryJson,
    trainable_parameters: usize,
    total_parameters: usize,
    improvement_points: Option<f64>,
}

fn main() -> ExitCode {
    common::main_with(|| run(&Args::parse()))
}

/// The base model and its tokenizer, from a GGUF file or a hub id / directory; with `qlora` the frozen
/// projections stay quantized.
fn load_base(
    args: &Args,
    device: &burn::tensor::Device<TrainBackend>,
) -> anyhow::Result<(Llama<TrainBackend>, LlamaTokenizer)> {
    let path = Path::new(&args.model);
    if path.extension().is_some_and(|ext| ext.eq_ignore_ascii_case("gguf")) {
        if !path.is_file() {
            bail!("GGUF file {} does not exist", path.display());
        }
        let loaded = if args.qlora { Llama::from_gguf_quantized(path, device) } else { Llama::from_gguf(path, device) };
        return loaded.with_context(|| format!("loading {}", path.display()));
    }
    let source = RepoSource::parse(&args.model, RepoKind::Model);
    let model = Llama::from_pretrained(&source, device).with_context(|| format!("loading {}", args.model))?;
    let model = if args.qlora { model.quantize_frozen_base().context("quantizing the base to NF4")? } else { model };
    let tokenizer_file = source.file("tokenizer.json").with_context(|| format!("the tokenizer of {}", args.model))?;
    let tokenizer = LlamaTokenizer::from_file(&tokenizer_file)?;
    Ok((model, tokenizer))
}

/// Classifies `data` with `model` as `args.classify_by` says, in `args.precision`.
fn score(
    args: &Args,
    objective: &CausalLmObjective,
    model: &Llama<InferenceBackend>,
    tokenizer: &LlamaTokenizer,
    data: &[TokenizedExample],
    device: &burn::tensor::Device<InferenceBackend>,
) -> anyhow::Result<Scored> {
    autocast(args.precision.compute_dtype(), || {
        let tokens: usize = data.iter().map(|item| item.tokens.len()).sum();
        match args.classify_by {
            ClassifyBy::LabelWords => {
                let evaluation = evaluate(objective, model, data, args.eval_batch_size, device)?;
                Ok(Scored {
                    accuracy: evaluation.report.accuracy,
                    macro_f1: evaluation.report.macro_f1,
                    samples_per_second: evaluation.samples_per_second,
                    tokens_per_second: tokens as f64 / evaluation.seconds.max(f64::MIN_POSITIVE),
                    seconds: evaluation.seconds,
                    unparseable: 0,
                    report: evaluation.report,
                })
            }
            ClassifyBy::Generation => {
                let started = Instant::now();
                let mut gold = Vec::with_capacity(data.len());
                let mut predicted = Vec::with_capacity(data.len());
                let mut unparseable = 0;
                for chunk in data.chunks(args.eval_batch_size.max(1)) {
                    let prompts: Vec<Vec<u32>> = chunk.iter().map(|item| item.tokens.ids.clone()).collect();
                    let answers = generate_answers_for_ids(model, tokenizer, &prompts, args.max_new_tokens, device)?;
                    unparseable += answers.unparseable;
                    for (item, answer) in chunk.iter().zip(answers.answers) {
                        gold.push(item.label);
                        // An answer naming no label is wrong, never silently one of the classes.
                        predicted.push(answer.unwrap_or(match item.label {
                            Sentiment::Positive => Sentiment::Negative,
                            Sentiment::Negative => Sentiment::Positive,
                        }));
                    }
                }
                let seconds = started.elapsed().as_secs_f64();
                let mut matrix = ConfusionMatrix::default();
                matrix.update(&gold, &predicted)?;
                let report = matrix.report();
                Ok(Scored {
                    accuracy: report.accuracy,
                    macro_f1: report.macro_f1,
                    samples_per_second: data.len() as f64 / seconds.max(f64::MIN_POSITIVE),
                    tokens_per_second: tokens as f64 / seconds.max(f64::MIN_POSITIVE),
                    seconds,
                    unparseable,
                    report,
                })
            }
        }
    })
}

fn run(args: &Args) -> anyhow::Result<()> {
    let device = default_device().context("choosing the device")?;
    let backend = default_backend_name();
    // The adapters' lora_A initialisation is drawn from the backend's RNG.
    TrainBackend::seed(&device, args.seed);

    let train_set = common::balanced_split(&args.dataset, Split::Train, args.train_size, args.seed)?;
    let test_set = common::balanced_split(&args.dataset, Split::Test, args.test_size, args.seed)?;

    let started = Instant::now();
    let (base, tokenizer) = load_base(args, &device)?;
    let memory = base.weight_memory();
    eprintln!(
        "{}: {} layers, vocab {}, loaded in {:.1}s on {backend}; {memory}",
        args.model,
        base.num_layers(),
        base.vocab_size(),
        started.elapsed().as_secs_f64(),
    );

    let encoder = PromptEncoder::new(tokenizer.clone(), PromptTemplate::new(DEFAULT_TEMPLATE)?, args.max_length)?;
    let label_words = LabelWords::from_tokenizer(&tokenizer)?;
    let objective = CausalLmObjective::new(label_words, encoder.pad_id());
    let started = Instant::now();
    let train = tokenize_examples(&encoder, &train_set)?;
    let test = tokenize_examples(&encoder, &test_set)?;
    let texts = |set: &dyn polarity_core::ExampleSource| -> Vec<String> {
        (0..set.len()).filter_map(|i| set.get(i)).map(|e| e.text).collect()
    };
    let (train_texts, test_texts) = (texts(&train_set), texts(&test_set));
    let shortened = Shortened {
        train: encoder.count_shortened(&train_texts.iter().map(String::as_str).collect::<Vec<_>>())?,
        test: encoder.count_shortened(&test_texts.iter().map(String::as_str).collect::<Vec<_>>())?,
    };
    let mean_tokens = train.iter().map(|e| e.tokens.len()).sum::<usize>() as f64 / train.len().max(1) as f64;
    eprintln!(
        "{} train / {} test prompts, {mean_tokens:.1} tokens per training prompt (max {}; {} train and {} test reviews shortened), encoded in {:.1}s",
        train.len(),
        test.len(),
        args.max_length,
        shortened.train,
        shortened.test,
        started.elapsed().as_secs_f64(),
    );

    let zero_shot = if args.skip_zero_shot {
        None
    } else {
        eprintln!("zero-shot evaluation on {} test prompts ({:?})...", test.len(), args.classify_by);
        let scored = score(args, &objective, &base.valid(), &tokenizer, &test, &device)?;
        eprintln!(
            "zero-shot: accuracy {:.4}, macro-F1 {:.4}, {:.2} samples/s{}",
            scored.accuracy,
            scored.macro_f1,
            scored.samples_per_second,
            if args.classify_by == ClassifyBy::Generation {
                format!(", {} unparseable answers", scored.unparseable)
            } else {
                String::new()
            }
        );
        Some(scored)
    };

    let lora_config = LoraConfig::new(args.lora_r, args.lora_alpha)
        .with_lora_dropout(args.lora_dropout)
        .with_target_modules(args.target_modules.clone());
    let model = base.with_lora(&lora_config)?;
    let total_parameters = model.num_params() + memory.quantized_f32_bytes / std::mem::size_of::<f32>();
    let trainable_parameters: usize = model.lora_adapters().iter().map(|(_, adapter)| adapter.num_params()).sum();
    eprintln!(
        "LoRA r={} alpha={} dropout={} on {}: {trainable_parameters} trainable of {total_parameters} parameters ({:.3}%)",
        lora_config.r,
        lora_config.lora_alpha,
        lora_config.lora_dropout,
        lora_config.target_modules.join("+"),
        100.0 * trainable_parameters as f64 / total_parameters.max(1) as f64,
    );

    let warmup = Warmup::Ratio(args.warmup_ratio);
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
        .with_best_metric(None)
        .with_checkpoint(
            args.checkpoint_dir
                .as_ref()
                .map(|dir| CheckpointConfig::new(dir, args.checkpoint_every).with_resume(args.resume)),
        )
        .with_progress(!args.no_progress);
    let trainer = Trainer::<TrainBackend>::new(config, device.clone());
    let steps = trainer.steps_per_epoch(train.len()) * args.epochs;
    let warmup_steps = warmup.steps(steps);
    eprintln!(
        "training: {} epochs x {} optimiser steps (batch {} x accumulation {}), lr {:e}, warmup {warmup_steps} steps",
        args.epochs,
        trainer.steps_per_epoch(train.len()),
        args.batch_size,
        args.grad_accum,
        args.lr
    );
    // The test set is scored once after training, not after every epoch (each pass is costly here).
    let outcome = trainer.fit(model, &objective, &train, None)?;
    if let Some(path) = &outcome.resumed_from {
        eprintln!("resumed from {}", path.display());
    }

    let tuned = outcome.model.valid();
    eprintln!("evaluating the tuned model on {} test prompts...", test.len());
    let scored = score(args, &objective, &tuned, &tokenizer, &test, &device)?;

    println!();
    println!(
        "{:<10} {:>9} {:>9} {:>10} {:>9} {:>12}",
        "", "accuracy", "macro-F1", "samples/s", "tokens/s", "unparseable"
    );
    let row = |name: &str, s: &Scored| {
        println!(
            "{name:<10} {:>9.4} {:>9.4} {:>10.2} {:>9.1} {:>12}",
            s.accuracy, s.macro_f1, s.samples_per_second, s.tokens_per_second, s.unparseable
        )
    };
    if let Some(zero_shot) = &zero_shot {
        row("zero-shot", zero_shot);
    }
    row(if args.qlora { "QLoRA" } else { "LoRA" }, &scored);
    println!();
    println!("{}", scored.report);
    let improvement = zero_shot.as_ref().map(|z| 100.0 * (scored.accuracy - z.accuracy));
    if let Some(points) = improvement {
        println!("improvement          {points:+.1} accuracy points over zero-shot");
    }
    println!("model                {} ({:?})", args.model, args.classify_by);
    println!("backend              {backend}, {} products", args.precision);
    println!("train time           {:.1}s ({} steps)", outcome.train_seconds(), outcome.global_steps);
    println!("train samples/s      {:.2}", outcome.train_samples_per_second());
    println!("weights              {memory}");

    if let Some(dir) = &args.adapter_out {
        tuned
            .save_lora(dir, &lora_config, Some(&args.model))
            .with_context(|| format!("saving the adapter to {}", dir.display()))?;
        println!("adapter saved to     {}", dir.display());
    }

    if let Some(path) = &args.json {
        let results = Results {
            model: &args.model,
            dataset: &args.dataset,
            backend,
            classify_by: args.classify_by,
            train_size: train.len(),
            test_size: test.len(),
            max_length: args.max_length,
            prompts_shortened: shortened,
            zero_shot,
            lora: TunedResults {
                scored,
                train_seconds: outcome.train_seconds(),
                train_samples_per_second: outcome.train_samples_per_second(),
                global_steps: outcome.global_steps,
                history: outcome.history,
            },
            lora_config: &lora_config,
            trainer: TrainerSettings {
                epochs: args.epochs,
                learning_rate: args.lr,
                batch_size: args.batch_size,
                grad_accum: args.grad_accum,
                warmup_steps,
                weight_decay: args.weight_decay,
                max_grad_norm: (args.clip > 0.0).then_some(args.clip),
                seed: args.seed,
                precision: args.precision,
                loss_scale: outcome.loss_scaler.map(|scaler| scaler.scale()),
                skipped_steps: outcome.loss_scaler.map_or(0, |scaler| scaler.skipped_steps()),
            },
            qlora: args.qlora,
            weight_memory: MemoryJson {
                dense_bytes: memory.dense_bytes,
                quantized_bytes: memory.quantized_bytes,
                quantized_as_f32_bytes: memory.quantized_f32_bytes,
                saved_bytes: memory.saved_bytes(),
            },
            trainable_parameters,
            total_parameters,
            improvement_points: improvement,
        };
        common::write_json(path, &results)?;
        println!("results written to   {}", path.display());
    }
    Ok(())
}
