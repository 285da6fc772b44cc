//! Encoder throughput on burn's two pure-Rust CPU backends, `NdArray<f32>` and `Flex<f32>`.
//!
//! ```text
//! HF_HOME=../shared/hf HF_HUB_OFFLINE=1 cargo bench --bench encoder
//! HF_HOME=../shared/hf HF_HUB_OFFLINE=1 cargo bench --bench encoder -- minilm/flex   # a subset
//! ```
//!
//! What is measured (criterion's `elem/s` is samples/s, except in `gemm`, where it is FLOP/s):
//!
//! - `forward`: inference, no autodiff. MiniLM (`sentence-transformers/all-MiniLM-L6-v2`, real weights
//!   from the hub cache, fresh classification head) at batch 32, sequence 128, 256 and 512; BERT-base and
//!   DistilBERT shapes with random weights (configs built here with the real hyper-parameters) at
//!   batch 8, sequence 128; on CPUs with AVX512-BF16 MiniLM at 256 and the two reference shapes again
//!   with bf16 products and f32 accumulation (`flex-bf16`: autocast, as `--precision bf16` evaluates).
//!   `minilm/{backend}/reference_b32_max256` is MiniLM on the first batch of the
//!   encoders' reference inference workload (`polarity::bench::Workload::encoder_reference`: balanced,
//!   seeded test reviews, batch 32, truncated at 256).
//! - `train_step`: one MiniLM training step at batch 16, sequence 256 on `Autodiff<backend>`: forward
//!   with dropout, cross-entropy, backward, and an AdamW step through burn's optimizer; on flex also the
//!   reference models' step, BERT-base and DistilBERT (random weights) at batch 16, sequence 256 (the
//!   recipes' batch size; tens of seconds per step on two cores); on CPUs with AVX512-BF16 the three
//!   again under bf16 autocast (`flex-bf16`, as `--precision bf16` trains).
//! - `gemm`: one `[512, 768] x [768, 768]` matmul, the shape of a hidden-size projection, in FLOP/s.
//!
//! Inputs are real IMDB test reviews (rows `0..n/2` negative and `12500..12500+n/2` positive, as
//! `scripts/pytorch_reference.py` takes them), tokenized with MiniLM's tokenizer, truncated at the
//! sequence length and padded to the batch's longest review, exactly as training and evaluation batch
//! them. The shapes used are printed before measuring.
//!
//! The models are slow on two cores (seconds per iteration), so every group uses flat sampling with
//! criterion's minimum of 10 samples and short warm-up and measurement times.

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use burn::backend::{Autodiff, Flex, NdArray};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::FloatDType;
use burn::tensor::backend::AutodiffBackend;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use polarity::bench::{Selection, Workload};
use polarity::data::{ImdbDataset, Split, hub};
use polarity::hub::{RepoKind, RepoSource};
use polarity::kernels::autocast::autocast;
use polarity::tokenize::{Encode, HfTokenizer, PaddingBatcher, TokenizedExample};
use polarity::train::{CrossEntropyObjective, Objective};
use polarity::{Example, TokenBatch};
use polarity_encoder::{BertConfig, DistilBertConfig, EncoderClassifier};

const MINILM: &str = "sentence-transformers/all-MiniLM-L6-v2";
/// bert-base-uncased and distilbert-base-uncased share MiniLM's WordPiece vocabulary.
const VOCAB: usize = 30_522;
const SEED: u64 = 42;
/// The learning rate of the training step (the value hardly matters for speed).
const LR: f64 = 5e-5;

fn imdb_test() -> &'static ImdbDataset {
    static TEST: OnceLock<ImdbDataset> = OnceLock::new();
    TEST.get_or_init(|| hub::load_split(hub::IMDB_REPO, Split::Test).expect("IMDB test split in the hub cache"))
}

/// `batch` real reviews, half negative (rows from 0), half positive (rows from 12,500), tokenized and
/// truncated at `max_length`, and their padding id.
fn reviews(batch: usize, max_length: usize) -> (Vec<TokenizedExample>, u32) {
    let selection = Selection::FirstOfEachLabel.pick(imdb_test(), batch).expect("IMDB test split holds the rows");
    tokenized(selection.examples(), max_length)
}

/// The first batch of the encoders' reference inference workload, tokenized as the workload says, and its
/// padding id.
fn reference_batch() -> (Vec<TokenizedExample>, u32) {
    let workload = Workload::encoder_reference();
    let selection = workload.draw_from(imdb_test()).expect("IMDB test split holds the reference reviews");
    tokenized(&selection.examples()[..workload.batch_size], workload.max_length)
}

/// `examples` tokenized with MiniLM's tokenizer truncating at `max_length`, and the padding id.
fn tokenized(examples: &[Example], max_length: usize) -> (Vec<TokenizedExample>, u32) {
    let batch = examples.len();
    let texts: Vec<&str> = examples.iter().map(|example| example.text.as_str()).collect();
    let tokenizer = HfTokenizer::from_pretrained(MINILM, max_length).expect("MiniLM tokenizer in the hub cache");
    let tokens = tokenizer.encode_batch(&texts).expect("IMDB reviews encode");
    let lengths: Vec<usize> = tokens.iter().map(|t| t.len()).collect();
    let real: usize = lengths.iter().sum();
    let (b, s) = (batch, *lengths.iter().max().unwrap());
    eprintln!(
        "inputs: batch {batch}, truncated at {max_length}: tensors [{b}, {s}], token lengths {}..={}, {:.1}% padding",
        lengths.iter().min().unwrap(),
        lengths.iter().max().unwrap(),
        100.0 * (b * s - real) as f64 / (b * s) as f64,
    );
    let examples = tokens.into_iter().zip(examples).map(|(tokens, e)| TokenizedExample { tokens, label: e.label });
    (examples.collect(), tokenizer.pad_id())
}

/// [`reviews`] padded into one batch, as the trainer and evaluation pad them.
fn review_batch<B: Backend>(batch: usize, max_length: usize, device: &B::Device) -> TokenBatch<B> {
    padded(reviews(batch, max_length), device)
}

/// Tokenized examples padded into one batch with their padding id.
fn padded<B: Backend>((examples, pad_id): (Vec<TokenizedExample>, u32), device: &B::Device) -> TokenBatch<B> {
    PaddingBatcher::new(pad_id).pad(&examples.iter().map(|e| &e.tokens).collect::<Vec<_>>(), device)
}

fn minilm<B: Backend>(device: &B::Device) -> EncoderClassifier<B> {
    B::seed(device, SEED);
    EncoderClassifier::from_pretrained(&RepoSource::parse(MINILM, RepoKind::Model), device)
        .expect("MiniLM in the hub cache")
}

/// bert-base-uncased's hyper-parameters, random weights.
fn bert_base<B: Backend>(device: &B::Device) -> EncoderClassifier<B> {
    B::seed(device, SEED);
    EncoderClassifier::Bert(BertConfig::new(VOCAB, 768, 12, 12, 3072, 512).init_classifier(device))
}

/// distilbert-base-uncased's hyper-parameters, random weights.
fn distilbert_base<B: Backend>(device: &B::Device) -> EncoderClassifier<B> {
    B::seed(device, SEED);
    EncoderClassifier::DistilBert(DistilBertConfig::new(VOCAB, 768, 6, 12, 3072, 512).init_classifier(device))
}

fn bench_forward<B: Backend>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    model: &EncoderClassifier<B>,
    batch: TokenBatch<B>,
) {
    bench_forward_in(group, name, model, batch, None);
}

/// [`bench_forward`] with the products in `compute_dtype` (autocast, as `--precision` runs evaluation).
fn bench_forward_in<B: Backend>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    model: &EncoderClassifier<B>,
    batch: TokenBatch<B>,
    compute_dtype: Option<FloatDType>,
) {
    group.throughput(Throughput::Elements(batch.dims()[0] as u64));
    model.validate(&batch).expect("the batch fits the model");
    group.bench_function(name, |b| b.iter(|| autocast(compute_dtype, || model.forward(batch.clone()).into_data())));
}

/// The flex lines again with bf16 products (`flex-bf16`), on CPUs with AVX512-BF16: MiniLM at 256,
/// BERT-base and DistilBERT at 128.
fn forward_bf16(c: &mut Criterion) {
    if !polarity::kernels::bf16_products_available() {
        eprintln!("skipping forward/*/flex-bf16: this CPU has no AVX512-BF16");
        return;
    }
    let device = Default::default();
    let mut group = c.benchmark_group("forward");
    common::configure(&mut group, 20);
    let bf16 = Some(FloatDType::BF16);
    let model = minilm::<Flex<f32>>(&device);
    bench_forward_in(&mut group, "minilm/flex-bf16/b32_s256", &model, review_batch(32, 256, &device), bf16);
    drop(model);
    let batch = review_batch::<Flex<f32>>(8, 128, &device);
    let bert = bert_base::<Flex<f32>>(&device);
    bench_forward_in(&mut group, "bert_base_random/flex-bf16/b8_s128", &bert, batch.clone(), bf16);
    drop(bert);
    let distilbert = distilbert_base::<Flex<f32>>(&device);
    bench_forward_in(&mut group, "distilbert_base_random/flex-bf16/b8_s128", &distilbert, batch, bf16);
    group.finish();
}

fn forward_on<B: Backend>(c: &mut Criterion, backend: &str) {
    let device = B::Device::default();
    let mut group = c.benchmark_group("forward");
    common::configure(&mut group, 20);
    let model = minilm::<B>(&device);
    for seq in [128, 256, 512] {
        let batch = review_batch::<B>(32, seq, &device);
        bench_forward(&mut group, &format!("minilm/{backend}/b32_s{seq}"), &model, batch);
    }
    let reference = Workload::encoder_reference();
    let name = format!("minilm/{backend}/reference_b{}_max{}", reference.batch_size, reference.max_length);
    bench_forward(&mut group, &name, &model, padded(reference_batch(), &device));
    drop(model);
    let batch = review_batch::<B>(8, 128, &device);
    bench_forward(&mut group, &format!("bert_base_random/{backend}/b8_s128"), &bert_base::<B>(&device), batch.clone());
    bench_forward(
        &mut group,
        &format!("distilbert_base_random/{backend}/b8_s128"),
        &distilbert_base::<B>(&device),
        batch,
    );
    group.finish();
}

/// One step as the trainer takes it: the objective's loss (padding, forward with dropout, cross-entropy)
/// with the products in `compute_dtype` (autocast, as `--precision` trains), backward, AdamW step;
/// returns the updated model.
fn train_step<B: AutodiffBackend, O: Optimizer<EncoderClassifier<B>, B>>(
    model: EncoderClassifier<B>,
    optimizer: &mut O,
    objective: &CrossEntropyObjective,
    batch: &[&TokenizedExample],
    device: &B::Device,
    compute_dtype: Option<FloatDType>,
) -> EncoderClassifier<B> {
    let loss = autocast(compute_dtype, || objective.loss(&model, batch, device)).expect("loss");
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    optimizer.step(LR, model, grads)
}

/// MiniLM's step; with `reference_shapes` also BERT-base's and DistilBERT's; products in `compute_dtype`.
fn train_step_on<B: AutodiffBackend>(
    c: &mut Criterion,
    backend: &str,
    reference_shapes: bool,
    compute_dtype: Option<FloatDType>,
) {
    let device = B::Device::default();
    let mut group = c.benchmark_group("train_step");
    common::configure(&mut group, 60);
    let (examples, pad_id) = reviews(16, 256);
    let batch: Vec<&TokenizedExample> = examples.iter().collect();
    let objective = CrossEntropyObjective::new(pad_id);
    group.throughput(Throughput::Elements(16));
    // transformers' AdamW defaults (weight decay 0.01, eps 1e-8), as the PyTorch reference uses.
    let mut optimizer = AdamWConfig::new().with_weight_decay(0.01).with_epsilon(1e-8).init();
    let mut bench_model = |name: String, model: EncoderClassifier<B>| {
        let mut model = Some(model);
        group.bench_function(name, |b| {
            b.iter(|| {
                let updated = train_step(
                    model.take().expect("model"),
                    &mut optimizer,
                    &objective,
                    &batch,
                    &device,
                    compute_dtype,
                );
                model = Some(updated);
            })
        });
    };
    bench_model(format!("minilm/{backend}/b16_s256"), minilm::<B>(&device));
    if reference_shapes {
        bench_model(format!("bert_base_random/{backend}/b16_s256"), bert_base::<B>(&device));
        bench_model(format!("distilbert_base_random/{backend}/b16_s256"), distilbert_base::<B>(&device));
    }
    group.finish();
}

fn gemm_on<B: Backend>(c: &mut Criterion, backend: &str) {
    let device = B::Device::default();
    let (m, k, n) = (512, 768, 768);
    B::seed(&device, SEED);
    let a = Tensor::<B, 2>::random([m, k], burn::tensor::Distribution::Default, &device);
    let w = Tensor::<B, 2>::random([k, n], burn::tensor::Distribution::Default, &device);
    let mut group = c.benchmark_group("gemm");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements((2 * m * k * n) as u64));
    group.bench_function(format!("{backend}/512x768x768"), |b| b.iter(|| a.clone().matmul(w.clone()).into_data()));
    group.finish();
}

fn gemm(c: &mut Criterion) {
    gemm_on::<NdArray<f32>>(c, "ndarray");
    gemm_on::<Flex<f32>>(c, "flex");
}

fn forward(c: &mut Criterion) {
    forward_on::<NdArray<f32>>(c, "ndarray");
    forward_on::<Flex<f32>>(c, "flex");
}

fn training(c: &mut Criterion) {
    train_step_on::<Autodiff<NdArray<f32>>>(c, "ndarray", false, None);
    train_step_on::<Autodiff<Flex<f32>>>(c, "flex", true, None);
    if polarity::kernels::bf16_products_available() {
        train_step_on::<Autodiff<Flex<f32>>>(c, "flex-bf16", true, Some(FloatDType::BF16));
    } else {
        eprintln!("skipping train_step/*/flex-bf16: this CPU has no AVX512-BF16");
    }
}

criterion_group!(benches, gemm, forward, forward_bf16, training);
criterion_main!(benches);
