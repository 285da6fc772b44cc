//! A tiny real model and synthetic token data for the trainer's tests.

#![allow(dead_code)]

use std::sync::{Mutex, MutexGuard};

use burn::backend::{Autodiff, NdArray};
use burn::module::Param;
use burn::nn::{Dropout, DropoutConfig, Embedding, LayerNorm, LayerNormConfig, Linear};
use burn::prelude::*;
use polarity_core::{ClassScorer, Sentiment, TokenBatch};
use polarity_tokenize::{TokenIds, TokenizedExample};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub type B = Autodiff<NdArray<f32>>;

/// burn-ndarray's RNG (dropout) is one global; tests that train run one at a time so that seeding
/// it means something.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Mean-pooled token embeddings, LayerNorm, dropout, linear head.
#[derive(Module, Debug)]
pub struct Bag<B: Backend> {
    pub embedding: Embedding<B>,
    pub norm: LayerNorm<B>,
    pub dropout: Dropout,
    pub head: Linear<B>,
}

impl<B: Backend> ClassScorer<B> for Bag<B> {
    fn class_scores(&self, batch: TokenBatch<B>) -> Tensor<B, 2> {
        let mask = batch.attention_mask.float().unsqueeze_dim::<3>(2);
        let summed: Tensor<B, 2> = (self.embedding.forward(batch.input_ids) * mask.clone()).sum_dim(1).squeeze_dim(1);
        let counts: Tensor<B, 2> = mask.sum_dim(1).squeeze_dim(1);
        let pooled = self.norm.forward(summed / counts);
        polarity_kernels::linear(&self.head, self.dropout.forward(pooled))
    }
}

fn uniform(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

/// A bag model initialised from `seed` without the backend's RNG.
pub fn bag(vocab: usize, dim: usize, dropout: f64, seed: u64) -> Bag<B> {
    bag_on::<B>(vocab, dim, dropout, seed)
}

/// [`bag`] on another backend.
pub fn bag_on<B: Backend>(vocab: usize, dim: usize, dropout: f64, seed: u64) -> Bag<B> {
    let device = Default::default();
    let mut rng = StdRng::seed_from_u64(seed);
    let tensor2 =
        |values: Vec<f32>, shape: [usize; 2]| Tensor::<B, 2>::from_data(TensorData::new(values, shape), &device);
    let embedding = tensor2(uniform(&mut rng, vocab * dim, 1.0), [vocab, dim]);
    let head = tensor2(uniform(&mut rng, dim * 2, 0.5), [dim, 2]);
    Bag {
        embedding: Embedding { weight: Param::from_tensor(embedding) },
        norm: LayerNormConfig::new(dim).init(&device),
        dropout: DropoutConfig::new(dropout).init(),
        head: Linear { weight: Param::from_tensor(head), bias: Some(Param::from_tensor(Tensor::zeros([2], &device))) },
    }
}

/// All parameters, flattened, in a fixed order.
pub fn params<B: Backend>(model: &Bag<B>) -> Vec<f32> {
    let mut values = Vec::new();
    let mut push = |data: TensorData| values.extend(data.to_vec::<f32>().unwrap());
    push(model.embedding.weight.val().into_data());
    push(model.norm.gamma.val().into_data());
    push(model.norm.beta.as_ref().unwrap().val().into_data());
    push(model.head.weight.val().into_data());
    push(model.head.bias.as_ref().unwrap().val().into_data());
    values
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Vocabulary of the synthetic task: 0 pad, 1 CLS, 2 SEP, 3 unused, 4..8 positive words, 8..12 negative
/// words, 12..32 noise.
pub const VOCAB: usize = 32;

/// `n` examples of a separable task of varied lengths, alternating labels.
pub fn synthetic(n: usize, seed: u64) -> Vec<TokenizedExample> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let label = if i % 2 == 0 { Sentiment::Positive } else { Sentiment::Negative };
            let length = rng.random_range(2..12);
            let mut ids = vec![1u32];
            for _ in 0..length {
                ids.push(rng.random_range(12..32));
            }
            let cue = match label {
                Sentiment::Positive => rng.random_range(4..8),
                Sentiment::Negative => rng.random_range(8..12),
            };
            let at = rng.random_range(1..ids.len());
            ids.insert(at, cue);
            ids.push(2);
            TokenizedExample { tokens: TokenIds { type_ids: vec![0; ids.len()], ids }, label }
        })
        .collect()
}

/// The same examples with every label flipped.
pub fn flipped(data: &[TokenizedExample]) -> Vec<TokenizedExample> {
    data.iter()
        .map(|e| TokenizedExample {
            tokens: e.tokens.clone(),
            label: match e.label {
                Sentiment::Positive => Sentiment::Negative,
                Sentiment::Negative => Sentiment::Positive,
            },
        })
        .collect()
}

/// The data-parallel tests' run: 2 epochs, warmup, and clipping tight enough to act, which must happen after
/// the reduce (every rank scales by the norm of the summed gradients).
pub fn parallel_config(batch_size: usize) -> polarity_train::TrainerConfig {
    polarity_train::TrainerConfig::default()
        .with_epochs(2)
        .with_batch_size(batch_size)
        .with_learning_rate(0.05)
        .with_warmup(polarity_train::Warmup::Ratio(0.1))
        .with_max_grad_norm(Some(0.5))
        .with_progress(false)
}
