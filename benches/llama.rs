//! Llama throughput on the CPU backend (`polarity_core::backend::CpuBackend`, burn's flex).
//!
//! ```text
//! HF_HOME=../shared/hf HF_HUB_OFFLINE=1 cargo bench --bench llama
//! HF_HOME=../shared/hf HF_HUB_OFFLINE=1 cargo bench --bench llama -- tiny     # a subset
//! ```
//!
//! What is measured (criterion's `elem/s` is **tokens/s**: batch x sequence length, padding included;
//! divide by the sequence length for samples/s):
//!
//! - `llama_forward`: label-word scoring as evaluation does it (`CausalLmObjective`'s class scores: the batch
//!   padded, one `Llama::last_token_logits` pass with the decoder stack on every token and the LM head on each
//!   row's last real token, the label words' columns), no autodiff:
//!   - SmolLM2-135M-Instruct, real weights from `../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf`
//!     (dequantised to f32 on load; the group is skipped with a message if the file is absent), on
//!     IMDB prompts at batch 8, sequence 128 (on CPUs with AVX512-BF16 also under bf16 autocast,
//!     `smollm2/flex-bf16/b8_s128`, as `--precision bf16` evaluates); with
//!     `POLARITY_BENCH_LONG_PROMPTS=1` also at real prompt lengths (`b8_max512`: 8 prompts of at most
//!     512 tokens, padded to the longest; minutes);
//!     `reference_b8_max256` is the first label-scoring batch of the causal LM's reference inference
//!     workload (`polarity::bench::Workload::causal_lm_reference`: balanced, seeded test reviews in prompts
//!     of at most 256 tokens, batch 8), padded to its longest prompt;
//!   - a tiny random Llama with the `tiny-llama` fixture's configuration (vocab 512, hidden 64, 2 layers,
//!     4 query / 2 key-value heads, llama3 RoPE) at batch 8, sequence 128;
//!   - Meta-Llama-3-8B-Instruct's configuration cut to one decoder layer, random weights (embeddings,
//!     one layer, untied LM head: 1.27 G parameters, 4.7 GiB in f32), at batch 1, sequence 128.
//! - `llama_train_step`: one LoRA training step on `Autodiff<CpuBackend>` at batch 4, sequence 128:
//!   `with_lora` (r 16, alpha 32, dropout 0.05, q_proj + v_proj; everything else frozen),
//!   the trainer's loss (`CausalLmObjective::loss`: `last_token_logits`, cross-entropy over the vocabulary
//!   against each row's label-word id), backward, `GradientsParams`, AdamW step. SmolLM2 (real weights) and
//!   the tiny shape; on CPUs with AVX512-BF16 SmolLM2's step again with the loss under bf16 autocast
//!   (`smollm2_lora/flex-bf16/b4_s128`, as `--precision bf16` trains).
//!
//! SmolLM2 inputs are real IMDB test reviews (rows `0..n/2` negative, `12500..12500+n/2` positive, as
//! `scripts/pytorch_reference.py --llama` takes them) in the project's prompt
//! (`polarity_tokenize::PromptTemplate::default()`), encoded by the recipes' `PromptEncoder` with the GGUF
//! tokenizer; the review is shortened so the whole prompt fits in 128 tokens, and the batch is right-padded
//! to its longest prompt. Without the IMDB split in the hub cache a fixed synthetic review is used instead (same
//! shapes; printed). The tiny and 8B shapes take deterministic pseudo-random token ids with no padding.
//! The shapes used are printed before measuring.
//!
//! Models are built the first time a benchmark that needs them runs, so a filter such as `-- tiny`
//! skips loading SmolLM2 and drawing the 8B weights. Every group uses flat sampling with criterion's
//! minimum of 10 samples and short warm-up and measurement times: the SmolLM2 measurements take
//! seconds per iteration on two cores.

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

use burn::backend::Autodiff;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::FloatDType;
use burn::tensor::backend::AutodiffBackend;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use polarity::Sentiment;
use polarity::backend::CpuBackend;
use polarity::bench::{Selection, Workload};
use polarity::data::{ImdbDataset, Split, hub};
use polarity::finetune::CausalLmObjective;
use polarity::kernels::autocast::autocast;
use polarity::llama::gguf::GgufFile;
use polarity::llama::{LabelWords, Llama, LlamaConfig, LlamaTokenizer, LoraConfig, PromptEncoder};
use polarity::tokenize::{Encode, PromptTemplate, TokenIds, TokenizedExample};
use polarity::train::{BatchScorer, Objective};

type TrainBackend = Autodiff<CpuBackend>;

/// The GGUF file, relative to the workspace root (the package root of this bench).
const SMOLLM2_GGUF: &str = "../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf";
/// The tiny-llama fixture's configuration, relative to the workspace root.
const TINY_LLAMA_CONFIG: &str = "../shared/fixtures/tiny-llama/model/config.json";
const SEED: u64 = 42;
/// The sequence length of every measurement (but the opt-in real-length one).
const SEQ: usize = 128;
/// Set (to anything) to also measure SmolLM2 on IMDB prompts of up to 512 tokens (about 4 minutes).
const LONG_PROMPTS_VAR: &str = "POLARITY_BENCH_LONG_PROMPTS";
/// The learning rate of the training step (the value hardly matters for speed).
const LR: f64 = 2e-4;
/// The tiny model's stand-in label words (any two ids of its 512-token vocabulary).
const TINY_LABEL_WORDS: LabelWords = LabelWords { negative: 5, positive: 6 };
/// A review for when the IMDB split is not in the hub cache (repeated until it is long enough).
const SYNTHETIC_REVIEW: &str = "The film opens slowly, with long shots of an empty harbour, and the story takes its time \
     to find its feet. Once it does, the two leads carry it with real warmth, the score is understated and the \
     ending lands. Not every subplot works and the middle act drags, but I left the cinema glad I had gone.";

fn smollm2_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(SMOLLM2_GGUF)
}

/// The tiny-llama fixture's own `config.json` (scripts/pytorch_reference.py reads the same file).
fn tiny_config() -> LlamaConfig {
    LlamaConfig::from_hf_file(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(TINY_LLAMA_CONFIG))
        .expect("the tiny-llama fixture's config")
}

/// The adapter every training step uses: r 16, alpha 32, dropout 0.05, q_proj and v_proj (the default
/// targets).
fn lora_config() -> LoraConfig {
    LoraConfig::new(16, 32.0).with_lora_dropout(0.05)
}

fn load_smollm2<B: Backend>(device: &B::Device) -> (Llama<B>, LlamaTokenizer) {
    B::seed(device, SEED);
    let start = Instant::now();
    let loaded = Llama::from_gguf(&smollm2_path(), device).expect("SmolLM2 GGUF loads");
    eprintln!("SmolLM2 loaded in {:.1} s", start.elapsed().as_secs_f64());
    loaded
}

fn tiny_model<B: Backend>(device: &B::Device) -> Llama<B> {
    B::seed(device, SEED);
    tiny_config().init(device).expect("tiny config is valid")
}

/// `batch` reviews, half negative (IMDB test rows from 0), half positive (rows from 12,500), with their
/// labels.
fn reviews(batch: usize) -> (Vec<String>, Vec<Sentiment>) {
    let labels: Vec<Sentiment> =
        (0..batch).map(|i| if i >= batch / 2 { Sentiment::Positive } else { Sentiment::Negative }).collect();
    match imdb_test() {
        Some(test) => {
            let selection = Selection::FirstOfEachLabel.pick(test, batch).expect("IMDB test split holds the rows");
            (selection.texts().into_iter().map(String::from).collect(), selection.reviews.labels())
        }
        None => (vec![SYNTHETIC_REVIEW.repeat(4); batch], labels),
    }
}

/// The first label-scoring batch of the causal LM's reference inference workload: its reviews and labels,
/// and its maximum prompt length (`None` without the IMDB split).
fn reference_reviews() -> Option<(Vec<String>, Vec<Sentiment>, usize)> {
    let workload = Workload::causal_lm_reference();
    let selection = workload.draw_from(imdb_test().as_ref()?).expect("IMDB test split holds the reference reviews");
    let first = &selection.examples()[..workload.batch_size];
    Some((
        first.iter().map(|example| example.text.clone()).collect(),
        first.iter().map(|example| example.label).collect(),
        workload.max_length,
    ))
}

/// The IMDB test split, or `None` (with a message) when it is not in the hub cache.
fn imdb_test() -> &'static Option<ImdbDataset> {
    static TEST: OnceLock<Option<ImdbDataset>> = OnceLock::new();
    TEST.get_or_init(|| match hub::load_split(hub::IMDB_REPO, Split::Test) {
        Ok(test) => Some(test),
        Err(error) => {
            eprintln!(
                "IMDB test split unavailable ({error}); using a synthetic review (set HF_HOME=../shared/hf HF_HUB_OFFLINE=1)"
            );
            None
        }
    })
}

/// `batch` IMDB prompts of at most `max_length` tokens as the recipes encode them (`PromptEncoder`), and
/// the objective that scores and trains on them.
fn prompt_batch(
    tokenizer: &LlamaTokenizer,
    batch: usize,
    max_length: usize,
) -> (Vec<TokenizedExample>, CausalLmObjective) {
    let (texts, labels) = reviews(batch);
    prompts_of(tokenizer, &texts, labels, max_length)
}

/// `texts` as IMDB prompts of at most `max_length` tokens (`PromptEncoder`) with their `labels`, and the
/// objective that scores and trains on them.
fn prompts_of(
    tokenizer: &LlamaTokenizer,
    texts: &[String],
    labels: Vec<Sentiment>,
    max_length: usize,
) -> (Vec<TokenizedExample>, CausalLmObjective) {
    let batch = texts.len();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let encoder =
        PromptEncoder::new(tokenizer.clone(), PromptTemplate::default(), max_length).expect("the template fits");
    let prompts = encoder.encode_batch(&texts).expect("IMDB prompts encode");
    let lengths: Vec<usize> = prompts.iter().map(TokenIds::len).collect();
    let longest = *lengths.iter().max().unwrap();
    eprintln!(
        "SmolLM2 inputs: {batch} IMDB prompts of at most {max_length} tokens: tensors [{batch}, {longest}], prompt lengths {}..={longest}, {:.1}% padding",
        lengths.iter().min().unwrap(),
        100.0 * (batch * longest - lengths.iter().sum::<usize>()) as f64 / (batch * longest) as f64,
    );
    let label_words = LabelWords::from_tokenizer(tokenizer).expect("label words are single tokens");
    let examples = prompts.into_iter().zip(labels).map(|(tokens, label)| TokenizedExample { tokens, label }).collect();
    (examples, CausalLmObjective::new(label_words, encoder.pad_id()))
}

/// `batch` rows of `seq` deterministic pseudo-random ids in `0..vocab` (no padding), alternately labelled,
/// and an objective with two stand-in label words.
fn synthetic_batch(batch: usize, seq: usize, vocab: usize) -> (Vec<TokenizedExample>, CausalLmObjective) {
    let mut state = SEED;
    let mut next_id = || {
        // xorshift64
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % vocab as u64) as u32
    };
    let examples = (0..batch)
        .map(|row| TokenizedExample {
            tokens: TokenIds::new((0..seq).map(|_| next_id()).collect()),
            label: if row % 2 == 0 { Sentiment::Negative } else { Sentiment::Positive },
        })
        .collect();
    (examples, CausalLmObjective::new(TINY_LABEL_WORDS, 0))
}

/// Benchmarks label-word scoring (the objective's class scores: padding, `last_token_logits`, the two
/// label words' columns) on the inputs `setup` builds (only if criterion's filter selects `name`), with
/// the products in `compute_dtype` (autocast, as `--precision` evaluates).
fn bench_forward<B: Backend>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    tokens: u64,
    measurement_s: u64,
    compute_dtype: Option<FloatDType>,
    setup: impl FnOnce() -> (Llama<B>, Vec<TokenizedExample>, CausalLmObjective),
) {
    common::configure(group, measurement_s);
    group.throughput(Throughput::Elements(tokens));
    let mut setup = Some(setup);
    let mut state = None;
    group.bench_function(name, |b| {
        let (model, examples, objective) = state.get_or_insert_with(|| (setup.take().expect("set up once"))());
        let batch: Vec<&TokenizedExample> = examples.iter().collect();
        let device = Default::default();
        b.iter(|| {
            autocast(compute_dtype, || objective.class_scores(model, &batch, &device).expect("scores").into_data())
        })
    });
}

/// Tokens in the padded batch of `examples`.
fn padded_tokens(examples: &[TokenizedExample]) -> u64 {
    (examples.len() * examples.iter().map(|e| e.tokens.len()).max().unwrap_or(0)) as u64
}

fn forward(c: &mut Criterion) {
    let device = Default::default();
    let mut group = c.benchmark_group("llama_forward");

    if smollm2_path().exists() {
        let smollm2_prompts = || {
            let (model, tokenizer) = load_smollm2(&device);
            let (examples, objective) = prompt_batch(&tokenizer, 8, SEQ);
            (model, examples, objective)
        };
        bench_forward::<CpuBackend>(&mut group, "smollm2/flex/b8_s128", (8 * SEQ) as u64, 30, None, smollm2_prompts);
        if polarity::kernels::bf16_products_available() {
            let bf16 = Some(FloatDType::BF16);
            bench_forward::<CpuBackend>(
                &mut group,
                "smollm2/flex-bf16/b8_s128",
                (8 * SEQ) as u64,
                30,
                bf16,
                smollm2_prompts,
            );
        }
        if std::env::var_os(LONG_PROMPTS_VAR).is_some() {
            // Built before measuring: the throughput depends on the padded length.
            let (model, tokenizer) = load_smollm2(&device);
            let (examples, objective) = prompt_batch(&tokenizer, 8, 512);
            let tokens = padded_tokens(&examples);
            bench_forward::<CpuBackend>(&mut group, "smollm2/flex/b8_max512", tokens, 60, None, || {
                (model, examples, objective)
            });
        }
        if let Some((texts, labels, max_length)) = reference_reviews() {
            // The prompts are built before measuring (the throughput depends on the padded length); the
            // model only when the line runs.
            let gguf = GgufFile::open(smollm2_path()).expect("SmolLM2 GGUF reads");
            let tokenizer = LlamaTokenizer::from_gguf(&gguf).expect("SmolLM2's tokenizer");
            drop(gguf);
            let (examples, objective) = prompts_of(&tokenizer, &texts, labels, max_length);
            let name = format!("smollm2/flex/reference_b{}_max{max_length}", examples.len());
            bench_forward::<CpuBackend>(&mut group, &name, padded_tokens(&examples), 30, None, || {
                (load_smollm2(&device).0, examples, objective)
            });
        }
    } else {
        eprintln!("skipping llama_forward/smollm2: {} not found", smollm2_path().display());
    }

    bench_forward::<CpuBackend>(&mut group, "tiny/flex/b8_s128", (8 * SEQ) as u64, 5, None, || {
        let model = tiny_model(&device);
        let (examples, objective) = synthetic_batch(8, SEQ, model.vocab_size());
        eprintln!("tiny inputs: tensors [8, {SEQ}], no padding");
        (model, examples, objective)
    });

    bench_forward::<CpuBackend>(&mut group, "llama3_8b_1layer_random/flex/b1_s128", SEQ as u64, 20, None, || {
        CpuBackend::seed(&device, SEED);
        let config = LlamaConfig::llama3_8b_instruct().with_num_hidden_layers(1);
        let model: Llama<CpuBackend> = config.init(&device).expect("Llama 3 8B config is valid");
        let (examples, objective) = synthetic_batch(1, SEQ, config.vocab_size);
        // Parameters are drawn lazily on first use: draw them now, outside the measurement.
        let start = Instant::now();
        objective.class_scores(&model, &examples.iter().collect::<Vec<_>>(), &device).expect("scores").into_data();
        eprintln!(
            "Llama 3 8B, 1 layer, random: {} parameters drawn and a first forward pass in {:.1} s",
            model.num_params(),
            start.elapsed().as_secs_f64()
        );
        (model, examples, objective)
    });
    group.finish();
}

/// One LoRA step as the trainer takes it: the answer-only loss of the objective (adapter dropout on) with
/// the products in `compute_dtype` (autocast, as `--precision` trains), backward, AdamW step on the
/// adapter weights; returns the updated model.
fn train_step<B: AutodiffBackend, O: Optimizer<Llama<B>, B>>(
    model: Llama<B>,
    optimizer: &mut O,
    objective: &CausalLmObjective,
    batch: &[&TokenizedExample],
    device: &B::Device,
    compute_dtype: Option<FloatDType>,
) -> Llama<B> {
    let loss = autocast(compute_dtype, || objective.loss(&model, batch, device)).expect("loss");
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    optimizer.step(LR, model, grads)
}

/// Benchmarks [`train_step`] on the model and inputs `setup` builds (only if the filter selects `name`).
fn bench_train_step(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    tokens: u64,
    measurement_s: u64,
    compute_dtype: Option<FloatDType>,
    setup: impl FnOnce() -> (Llama<TrainBackend>, Vec<TokenizedExample>, CausalLmObjective),
) {
    common::configure(group, measurement_s);
    group.throughput(Throughput::Elements(tokens));
    // transformers' AdamW defaults (weight decay 0.01, eps 1e-8), as the PyTorch reference uses.
    let mut optimizer = AdamWConfig::new().with_weight_decay(0.01).with_epsilon(1e-8).init();
    let mut setup = Some(setup);
    let mut state = None;
    let device = Default::default();
    group.bench_function(name, |b| {
        let (model, examples, objective) = state.get_or_insert_with(|| {
            let (model, examples, objective) = (setup.take().expect("set up once"))();
            (Some(model), examples, objective)
        });
        let batch: Vec<&TokenizedExample> = examples.iter().collect();
        b.iter(|| {
            let updated =
                train_step(model.take().expect("model"), &mut optimizer, objective, &batch, &device, compute_dtype);
            *model = Some(updated);
        })
    });
}

fn training(c: &mut Criterion) {
    let device = Default::default();
    let mut group = c.benchmark_group("llama_train_step");

    if smollm2_path().exists() {
        let smollm2_lora = || {
            let (model, tokenizer) = load_smollm2::<TrainBackend>(&device);
            let model = model.with_lora(&lora_config()).expect("LoRA attaches");
            let (examples, objective) = prompt_batch(&tokenizer, 4, SEQ);
            (model, examples, objective)
        };
        bench_train_step(&mut group, "smollm2_lora/flex/b4_s128", (4 * SEQ) as u64, 60, None, smollm2_lora);
        if polarity::kernels::bf16_products_available() {
            let bf16 = Some(FloatDType::BF16);
            bench_train_step(&mut group, "smollm2_lora/flex-bf16/b4_s128", (4 * SEQ) as u64, 60, bf16, smollm2_lora);
        } else {
            eprintln!("skipping llama_train_step/smollm2_lora/flex-bf16: this CPU has no AVX512-BF16");
        }
    } else {
        eprintln!("skipping llama_train_step/smollm2_lora: {} not found", smollm2_path().display());
    }

    bench_train_step(&mut group, "tiny_lora/flex/b4_s128", (4 * SEQ) as u64, 5, None, || {
        let model = tiny_model::<TrainBackend>(&device).with_lora(&lora_config()).expect("LoRA attaches");
        let (examples, objective) = synthetic_batch(4, SEQ, model.vocab_size());
        eprintln!("tiny inputs: tensors [4, {SEQ}], no padding");
        (model, examples, objective)
    });
    group.finish();
}

criterion_group!(benches, forward, training);
criterion_main!(benches);
