//! Measurements, not tests (`#[ignore]`d; run one at a time, each in its own process, so that its peak
//! memory is its own):
//!
//! ```sh
//! HF_HOME=../shared/hf HF_HUB_OFFLINE=1 cargo test -p polarity-finetune --test measure_llama3_8b -- \
//!     --ignored --nocapture --test-threads 1 llama3_8b_random_qlora_on_the_cpu
//! ```
//!
//! - `llama3_8b_random_qlora_on_the_cpu`: Meta-Llama-3-8B-Instruct's config with random weights built
//!   straight into NF4 (`LoraFineTune` with `init = random` and QLoRA): build time, weight memory, peak
//!   RSS, one label-scoring forward pass and LoRA training steps on a real IMDB prompt of 128 tokens.
//! - `llama3_lm_head_in_nf4`: Llama 3's `[128256, 4096]` head in NF4 alone, decoded in bands for every
//!   product: its time and the memory it adds.
//!
//! Measured on 2 vCPUs (AMD EPYC, shared with other builds, so CPU seconds are given with wall-clock),
//! dev profile (polarity-llama at opt-level 2, burn-flex, gemm and polarity-kernels at 3), glibc malloc:
//!
//! | what | wall | CPU | peak RSS |
//! |---|---|---|---|
//! | build (config.json, tokenizer.json, 8.03B weights: layers, table and head NF4) | 7.4 s | 5.8 s | 4.88 GB |
//! | weight memory | | | 4.52 GB (4.50 bits/weight; 1.1 MB dense) |
//! | label-scoring forward pass, 128 tokens (second run) | 112 s | 72.5 s | 5.00 GB |
//! | LoRA step, batch 1 x 128 tokens, forward + backward + AdamW (second run) | 199 s | 150 s | 6.10 GB |
//! | NF4 head alone: 1-row product / with backward | 2.6 s / 4.7 s | 2.5 s / 4.6 s | +0.3 GB |
//!
//! With the head in f32 instead (the table NF4), the weights were 6.32 GB and the LoRA step peaked at
//! 7.93 GB.

use std::time::{Duration, Instant};

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use polarity_data::{Split, hub};
use polarity_finetune::{LoraFineTune, WeightInit};
use polarity_llama::layers::random::RandomStream;
use polarity_llama::{QuantizedLinear, QuantizedMatrix};
use polarity_tokenize::{Encode, TokenizedExample};
use polarity_train::{BatchScorer, Objective};

mod common;

use common::{LLAMA3, use_shared_cache};

type Cpu = Flex<f32>;
type Train = Autodiff<Cpu>;

/// `VmRSS` and `VmHWM` of this process, in GB.
fn memory() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or_else(|| "?".to_string(), |kb| format!("{:.2} GB", kb * 1024.0 / 1e9))
    };
    format!("RSS {}, peak RSS {}", field("VmRSS:"), field("VmHWM:"))
}

/// CPU seconds this process has used (user + system, from `/proc/self/stat`, at 100 ticks a second):
/// the machine may be shared, so wall-clock time alone can mislead.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name (which is in parentheses): utime and stime are 14th and 15th.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn timed<T>(what: &str, f: impl FnOnce() -> T) -> (T, Duration) {
    let (started, cpu) = (Instant::now(), cpu_seconds());
    let value = f();
    let elapsed = started.elapsed();
    println!("{what}: {elapsed:.2?} wall, {:.1} s CPU ({})", cpu_seconds() - cpu, memory());
    (value, elapsed)
}

#[test]
#[ignore = "a measurement: builds Llama-3-8B with random NF4 weights (~6 GB, minutes on 2 cores)"]
fn llama3_8b_random_qlora_on_the_cpu() {
    use_shared_cache();
    let device = Default::default();
    let recipe = LoraFineTune::new(LLAMA3).with_qlora(true).with_init(WeightInit::Random).with_max_length(128);
    println!("start ({})", memory());
    let ((base, tokenizer), _) = timed("build (config.json, tokenizer.json, NF4 layers)", || {
        recipe.load_base::<Train>(&device).expect("the random QLoRA base builds")
    });
    let weights = base.weight_memory();
    println!("weight memory: {weights}; {} parameters", weights.parameters());

    let (encoder, objective) = recipe.prompts(&tokenizer).unwrap();
    let review = hub::load_split(hub::IMDB_REPO, Split::Test).unwrap().examples()[0].clone();
    let tokens = encoder.encode_batch(&[review.text.as_str()]).unwrap().remove(0);
    println!("IMDB test review 0 as a prompt: {} tokens ({})", tokens.len(), memory());
    let example = TokenizedExample { tokens, label: review.label };

    {
        let inference = base.valid();
        for run in 1..=2 {
            let (scores, _) = timed(&format!("label-scoring forward pass {run}"), || {
                objective.class_scores(&inference, &[&example], &device).unwrap().into_data()
            });
            let scores = scores.to_vec::<f32>().unwrap();
            assert!(scores.iter().all(|s| s.is_finite()), "{scores:?}");
        }
    }

    let mut model = base.with_lora(&recipe.lora).unwrap();
    let mut optimizer = AdamWConfig::new().with_weight_decay(0.0).init::<Train, polarity_llama::Llama<Train>>();
    for step in 1..=2 {
        let (next, _) = timed(&format!("LoRA training step {step} (forward, backward, AdamW)"), || {
            let loss = objective.loss(&model, &[&example], &device).unwrap();
            let value = loss.clone().into_data().to_vec::<f32>().unwrap()[0];
            assert!(value.is_finite(), "loss {value}");
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            optimizer.step(2e-4, model, grads)
        });
        model = next;
    }
    println!("end ({})", memory());
}

#[test]
#[ignore = "a measurement: an NF4 lm_head of Llama 3's shape, decoded for every product"]
fn llama3_lm_head_in_nf4() {
    let device = Default::default();
    println!("start ({})", memory());
    let (matrix, _) = timed("a [128256, 4096] NF4 head drawn", || {
        QuantizedMatrix::random_nf4(128_256, 4096, 0.02, &RandomStream::new(1, 1)).unwrap()
    });
    let head = QuantizedLinear::<Train>::new(matrix, None).unwrap();
    let hidden = Tensor::<Train, 2>::random([1, 4096], burn::tensor::Distribution::Default, &device).require_grad();
    let inference = head.valid();
    for run in 1..=2 {
        timed(&format!("inference product of 1 row {run}"), || inference.forward(hidden.clone().inner()).into_data());
    }
    for run in 1..=2 {
        timed(&format!("training product of 1 row + backward {run}"), || {
            let logits = head.forward(hidden.clone());
            logits.sum().backward()
        });
    }
}
