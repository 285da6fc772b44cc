//! The same operations composed from burn's tensor ops: what every backend other than burn-flex runs
//! (CUDA, ndarray) and what training runs (autodiff differentiates these), and the reference the fused
//! kernels are tested against.

use burn::nn::Dropout;
use burn::prelude::*;
use burn::tensor::activation::{silu, softmax};

use crate::attention::{AttentionHeads, AttentionMask};

/// The exact GELU, `x/2 (1 + erf(x / sqrt 2))`.
///
/// Without autodiff this is burn's `gelu` op (one pass). Under autodiff it is composed from `erf`:
/// burn's `gelu` backward is the derivative of the tanh approximation on some backends, ~1e-3
/// (relative) away from PyTorch's gradients.
pub fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    if !B::ad_enabled(&x.device()) {
        return burn::tensor::activation::gelu(x);
    }
    let cdf = x.clone().div_scalar(std::f64::consts::SQRT_2).erf().add_scalar(1.0).mul_scalar(0.5);
    x * cdf
}

/// `silu(gate) * up`, the SwiGLU gate.
pub fn silu_mul<B: Backend, const D: usize>(gate: Tensor<B, D>, up: Tensor<B, D>) -> Tensor<B, D> {
    silu(gate) * up
}

/// `x / sqrt(mean(x^2) + eps) * weight` over the last dimension.
pub fn rms_norm<B: Backend, const D: usize>(x: Tensor<B, D>, weight: Tensor<B, 1>, eps: f64) -> Tensor<B, D> {
    let inverse_rms = (x.clone().square().mean_dim(D - 1) + eps).sqrt().recip();
    x * inverse_rms * weight.unsqueeze()
}

/// Rotary embedding of `[batch, seq, heads * head_dim]` with `[seq, head_dim]` tables:
/// `x * cos + rotate_half(x) * sin` per head.
pub fn rotary<B: Backend>(x: Tensor<B, 3>, cos: Tensor<B, 2>, sin: Tensor<B, 2>, head_dim: usize) -> Tensor<B, 3> {
    let [batch, seq_len, width] = x.dims();
    let x = x.reshape([batch, seq_len, width / head_dim, head_dim]);
    let cos = cos.reshape([1, seq_len, 1, head_dim]);
    let sin = sin.reshape([1, seq_len, 1, head_dim]);
    let half = head_dim / 2;
    let rotated = Tensor::cat(vec![x.clone().narrow(3, half, half).neg(), x.clone().narrow(3, 0, half)], 3);
    (x * cos + rotated * sin).reshape([batch, seq_len, width])
}

/// Scaled dot-product attention on `[batch, seq, heads * head_dim]` projections: heads split,
/// key/value heads repeated for grouped-query attention, `softmax(q k^T / sqrt(d) + bias)` with the
/// mask's additive bias, dropout on the weights (active only under autodiff), heads merged back.
pub fn attention<B: Backend>(
    query: Tensor<B, 3>,
    key: Tensor<B, 3>,
    value: Tensor<B, 3>,
    heads: AttentionHeads,
    mask: &AttentionMask<B>,
    dropout: Option<&Dropout>,
) -> Tensor<B, 3> {
    let AttentionHeads { heads: num_heads, kv_heads, head_dim } = heads;
    let [batch, seq_len, _] = query.dims();
    let split = |x: Tensor<B, 3>, n: usize| x.reshape([batch, seq_len, n, head_dim]).swap_dims(1, 2);
    let groups = num_heads / kv_heads.max(1);
    let query = split(query, num_heads);
    let key = repeat_kv(split(key, kv_heads), groups);
    let value = repeat_kv(split(value, kv_heads), groups);
    let scale = (head_dim as f64).sqrt().recip();
    let mut scores = crate::autocast::matmul(query, key.swap_dims(2, 3)).mul_scalar(scale);
    if let Some(bias) = mask.bias([batch, num_heads, seq_len], &scores.device()) {
        scores = scores + bias;
    }
    let mut weights = softmax(scores, 3);
    if let Some(dropout) = dropout {
        weights = crate::dropout(dropout, weights);
    }
    crate::autocast::matmul(weights, value).swap_dims(1, 2).reshape([batch, seq_len, num_heads * head_dim])
}

/// Repeats each key/value head `groups` times, `[b, kv_heads, s, d] -> [b, kv_heads * groups, s, d]`,
/// so query head `h` meets key/value head `h / groups` (transformers' `repeat_kv`).
fn repeat_kv<B: Backend>(x: Tensor<B, 4>, groups: usize) -> Tensor<B, 4> {
    if groups == 1 {
        return x;
    }
    let [batch, kv_heads, seq_len, head_dim] = x.dims();
    x.unsqueeze_dim::<5>(2).expand([batch, kv_heads, groups, seq_len, head_dim]).reshape([
        batch,
        kv_heads * groups,
        seq_len,
        head_dim,
    ])
}
