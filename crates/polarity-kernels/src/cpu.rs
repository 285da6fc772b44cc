//! The kernels on plain `f32` slices: row-parallel with rayon, each inner loop compiled for AVX-512,
//! AVX2+FMA and the baseline, picked at run time (multiversion).
//!
//! Shapes are checked by the callers in `lib.rs` / `attention.rs`; the functions here assert them
//! again, as invariants.

use multiversion::multiversion;
use rayon::prelude::*;
use std::cell::RefCell;

use crate::math;

/// Elements per rayon task for element-wise kernels: large enough to amortise scheduling, small
/// enough to split a layer's activations into many tasks.
const CHUNK: usize = 1 << 14;
/// Independent accumulators in reductions: float addition is not associative, so the compiler only
/// vectorises a sum written with explicit lanes.
const LANES: usize = 16;

#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma"))]
fn gelu_slice(values: &mut [f32]) {
    for v in values {
        *v = math::gelu(*v);
    }
}

#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma"))]
fn gelu_into_slice(input: &[f32], output: &mut [f32]) {
    for (y, x) in output.iter_mut().zip(input) {
        *y = math::gelu(*x);
    }
}

#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma"))]
fn gelu_backward_slice(grad: &mut [f32], input: &[f32]) {
    for (g, x) in grad.iter_mut().zip(input) {
        *g *= math::gelu_derivative(*x);
    }
}

#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma"))]
fn silu_mul_slice(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = math::silu(*g) * u;
    }
}

#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma"))]
fn silu_mul_backward_slice(gate: &[f32], up: &[f32], grad: &[f32], grad_gate: &mut [f32], grad_up: &mut [f32]) {
    for ((((g, u), dy), dg), du) in gate.iter().zip(up).zip(grad).zip(grad_gate.iter_mut()).zip(grad_up.iter_mut()) {
        let sigmoid = 1.0 / (1.0 + math::exp(-*g));
        // silu'(g) = σ(g) (1 + g (1 - σ(g))).
        *dg = dy * u * sigmoid * (1.0 + g * (1.0 - sigmoid));
        *du = dy * g * sigmoid;
    }
}

#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma"))]
fn dropout_mask_slice(mask: &mut [f32], first_index: u64, seed: u64, keep_threshold: u32, scale: f32) {
    for (i, m) in mask.iter_mut().enumerate() {
        // SplitMix64's finaliser over (seed, index): a counter-based generator, so every chunk draws
        // its own numbers independently of how rayon splits the work.
        let mut z = seed.wrapping_add((first_index + i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        *m = if ((z >> 32) as u32) < keep_threshold { scale } else { 0.0 };
    }
}

/// Fills `mask` with `1 / keep` where a uniform draw falls below `keep`, 0 elsewhere: an inverted
/// dropout mask, deterministic in `seed`.
pub fn dropout_mask(mask: &mut [f32], seed: u64, keep: f64) {
    let (threshold, scale) = (keep_threshold(keep), (1.0 / keep) as f32);
    mask.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(chunk, mask)| dropout_mask_slice(mask, (chunk * CHUNK) as u64, seed, threshold, scale));
}

/// Exact GELU in place.
pub fn gelu(values: &mut [f32]) {
    values.par_chunks_mut(CHUNK).for_each(gelu_slice);
}

/// `output <- gelu(input)`.
pub fn gelu_into(input: &[f32], output: &mut [f32]) {
    assert_eq!(input.len(), output.len());
    output.par_chunks_mut(CHUNK).zip(input.par_chunks(CHUNK)).for_each(|(y, x)| gelu_into_slice(x, y));
}

/// `grad <- grad * gelu'(input)`: the GELU's backward pass.
pub fn gelu_backward(grad: &mut [f32], input: &[f32]) {
    assert_eq!(grad.len(), input.len());
    grad.par_chunks_mut(CHUNK).zip(input.par_chunks(CHUNK)).for_each(|(g, x)| gelu_backward_slice(g, x));
}

/// The backward pass of `silu(gate) * up`: the gradients of `gate` and `up` for output gradient `grad`.
pub fn silu_mul_backward(gate: &[f32], up: &[f32], grad: &[f32], grad_gate: &mut [f32], grad_up: &mut [f32]) {
    let n = gate.len();
    assert!(up.len() == n && grad.len() == n && grad_gate.len() == n && grad_up.len() == n);
    grad_gate
        .par_chunks_mut(CHUNK)
        .zip(grad_up.par_chunks_mut(CHUNK))
        .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)).zip(grad.par_chunks(CHUNK)))
        .for_each(|((dg, du), ((g, u), dy))| silu_mul_backward_slice(g, u, dy, dg, du));
}

/// `gate <- silu(gate) * up`.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len());
    gate.par_chunks_mut(CHUNK).zip(up.par_chunks(CHUNK)).for_each(|(g, u)| silu_mul_slice(g, u));
}

#[inline(always)]
fn sum(values: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (acc, v) in lanes.iter_mut().zip(chunk) {
            *acc += v;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[inline(always)]
fn sum_of_squares(values: &[f32]) -> f32 {
    centered_sum_of_squares(values, 0.0)
}

/// `Σ (v - center)^2`.
#[inline(always)]
fn centered_sum_of_squares(values: &[f32], center: f32) -> f32 {
    let mut lanes = [0f32; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|v| (v - center) * (v - center)).sum();
    for chunk in chunks {
        for (acc, v) in lanes.iter_mut().zip(chunk) {
            *acc += (v - center) * (v - center);
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `Σ a b`.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a_chunks.remainder().iter().zip(b_chunks.remainder()).map(|(a, b)| a * b).sum();
    for (a, b) in a_chunks.zip(b_chunks) {
        for ((acc, a), b) in lanes.iter_mut().zip(a).zip(b) {
            *acc += a * b;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// The maximum of `values` where `keep` is 1 (`-inf` when nothing is kept).
#[inline(always)]
fn kept_max(values: &[f32], keep: &[f32]) -> f32 {
    #[inline(always)]
    fn kept(value: f32, keep: f32) -> f32 {
        if keep > 0.0 { value } else { f32::NEG_INFINITY }
    }
    let (value_chunks, value_tail) = values.as_chunks::<LANES>();
    let (keep_chunks, keep_tail) = keep.as_chunks::<LANES>();
    let tail = value_tail.iter().zip(keep_tail).fold(f32::NEG_INFINITY, |a, (v, k)| a.max(kept(*v, *k)));
    let mut lanes = [f32::NEG_INFINITY; LANES];
    for (vs, ks) in value_chunks.iter().zip(keep_chunks) {
        // Fixed-size lanes and a plain compare-select (not `f32::max`, whose NaN rule blocks it):
        // LLVM turns this into vector selects and maxima instead of scalar code.
        for lane in 0..LANES {
            let candidate = kept(vs[lane], ks[lane]);
            lanes[lane] = if candidate > lanes[lane] { candidate } else { lanes[lane] };
        }
    }
    lanes.iter().fold(tail, |a, &b| a.max(b))
}

#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma"))]
fn rms_norm_rows(input: &[f32], weight: &[f32], eps: f32, output: &mut [f32]) {
    let width = weight.len();
    for (x, y) in input.chunks_exact(width).zip(output.chunks_exact_mut(width)) {
        let inverse_rms = 1.0 / (sum_of_squares(x) / width as f32 + eps).sqrt();
        for ((y, x), w) in y.iter_mut().zip(x).zip(weight) {
            *y = x * inverse_rms * w;
        }
    }
}

/// `output = input / sqrt(mean(input^2) + eps) * weight` over rows of `weight.len()`.
pub fn rms_norm(input: &[f32], weight: &[f32], eps: f32, output: &mut [f32]) {
    let width = weight.len();
    assert!(width > 0 && input.len() % width == 0 && input.len() == output.len());
    let rows_per_task = (CHUNK / width).max(1);
    output
        .par_chunks_mut(rows_per_task * width)
        .zip(input.par_chunks(rows_per_task * width))
        .for_each(|(y, x)| rms_norm_rows(x, weight, eps, y));
}

#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma"))]
fn rms_norm_backward_rows(
    input: &[f32],
    weight: &[f32],
    eps: f32,
    grad_output: &[f32],
    grad_input: &mut [f32],
    grad_weight: &mut [f32],
) {
    let width = weight.len();
    let mut scaled_grad = vec![0f32; width];
    let rows = input.chunks_exact(width).zip(grad_output.chunks_exact(width)).zip(grad_input.chunks_exact_mut(width));
    for ((x, gy), gx) in rows {
        let inverse_rms = 1.0 / (sum_of_squares(x) / width as f32 + eps).sqrt();
        for (((s, gy), w), (dw, x)) in scaled_grad.iter_mut().zip(gy).zip(weight).zip(grad_weight.iter_mut().zip(x)) {
            *s = gy * w;
            *dw += gy * x * inverse_rms;
        }
        // dx = r (s - x r² mean(s x)) with s = dy w and r = 1 / rms(x).
        let projection = dot(&scaled_grad, x) / width as f32 * inverse_rms * inverse_rms;
        for ((gx, s), x) in gx.iter_mut().zip(&scaled_grad).zip(x) {
            *gx = inverse_rms * (s - x * projection);
        }
    }
}

/// The backward pass of [`rms_norm`]: the input's gradient into `grad_input` and the weight's
/// (summed over rows, in a fixed order) into `grad_weight`.
pub fn rms_norm_backward(
    input: &[f32],
    weight: &[f32],
    eps: f32,
    grad_output: &[f32],
    grad_input: &mut [f32],
    grad_weight: &mut [f32],
) {
    let width = weight.len();
    assert!(
        width > 0 && input.len() % width == 0 && input.len() == grad_output.len() && input.len() == grad_input.len()
    );
    assert_eq!(grad_weight.len(), width);
    let partials: Vec<Vec<f32>> = input
        .par_chunks(NORM_ROWS * width)
        .zip(grad_output.par_chunks(NORM_ROWS * width))
        .zip(grad_input.par_chunks_mut(NORM_ROWS * width))
        .map(|((x, gy), gx)| {
            let mut dw = vec![0f32; width];
            rms_norm_backward_rows(x, weight, eps, gy, gx, &mut dw);
            dw
        })
        .collect();
    sum_in_order(grad_weight, partials);
}

/// `target = Σ partials`, added in the given order (per-task sums of a parallel reduction, so that
/// the result does not depend on rayon's scheduling).
fn sum_in_order(target: &mut [f32], partials: impl IntoIterator<Item = Vec<f32>>) {
    target.fill(0.0);
    for partial in partials {
        target.iter_mut().zip(partial).for_each(|(a, b)| *a += b);
    }
}

/// Rows per rayon task for the layer norm (a few hundred KB of activations).
const NORM_ROWS: usize = 64;

#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma"))]
fn layer_norm_rows(values: &mut [f32], gamma: &[f32], beta: Option<&[f32]>, eps: f32, stats: &mut [[f32; 2]]) {
    let width = gamma.len();
    for (row, stat) in values.chunks_exact_mut(width).zip(stats) {
        // Two passes (mean, then centred squares), as PyTorch: no cancellation for large means.
        let mean = sum(row) / width as f32;
        let inverse_std = 1.0 / (centered_sum_of_squares(row, mean) / width as f32 + eps).sqrt();
        *stat = [mean, inverse_std];
        match beta {
            Some(beta) => {
                for ((x, g), b) in row.iter_mut().zip(gamma).zip(beta) {
                    *x = (*x - mean) * inverse_std * g + b;
                }
            }
            None => {
                for (x, g) in row.iter_mut().zip(gamma) {
                    *x = (*x - mean) * inverse_std * g;
                }
            }
        }
    }
}

/// LayerNorm in place over rows of `gamma.len()` values: `(x - mean) / sqrt(var + eps) * gamma + beta`
/// with the biased variance; `stats` receives each row's `[mean, 1 / std]` for the backward pass.
pub fn layer_norm_in_place(values: &mut [f32], gamma: &[f32], beta: Option<&[f32]>, eps: f32, stats: &mut [[f32; 2]]) {
    let width = gamma.len();
    assert!(width > 0 && values.len() == stats.len() * width && beta.is_none_or(|beta| beta.len() == width));
    values
        .par_chunks_mut(NORM_ROWS * width)
        .zip(stats.par_chunks_mut(NORM_ROWS))
        .for_each(|(rows, stats)| layer_norm_rows(rows, gamma, beta, eps, stats));
}

/// [`layer_norm_in_place`] on a copy of `input` in `output`.
pub fn layer_norm(
    input: &[f32],
    gamma: &[f32],
    beta: Option<&[f32]>,
    eps: f32,
    output: &mut [f32],
    stats: &mut [[f32; 2]],
) {
    assert_eq!(input.len(), output.len());
    output.par_chunks_mut(CHUNK).zip(input.par_chunks(CHUNK)).for_each(|(y, x)| y.copy_from_slice(x));
    layer_norm_in_place(output, gamma, beta, eps, stats);
}

#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma"))]
fn layer_norm_backward_rows(
    input: &[f32],
    gamma: &[f32],
    stats: &[[f32; 2]],
    grad_output: &[f32],
    grad_input: &mut [f32],
    grad_gamma: &mut [f32],
    grad_beta: &mut [f32],
) {
    let width = gamma.len();
    let mut normalized = vec![0f32; width];
    let mut scaled_grad = vec![0f32; width];
    let rows = input.chunks_exact(width).zip(grad_output.chunks_exact(width)).zip(grad_input.chunks_exact_mut(width));
    for (((x, gy), gx), &[mean, inverse_std]) in rows.zip(stats) {
        for ((((n, s), x), gy), g) in normalized.iter_mut().zip(scaled_grad.iter_mut()).zip(x).zip(gy).zip(gamma) {
            *n = (x - mean) * inverse_std;
            *s = gy * g;
        }
        for (((dg, db), n), gy) in grad_gamma.iter_mut().zip(grad_beta.iter_mut()).zip(&normalized).zip(gy) {
            *dg += gy * n;
            *db += gy;
        }
        // dx = (1/std) (s - mean(s) - x̂ mean(s x̂)) with s = dy γ.
        let mean_scaled = sum(&scaled_grad) / width as f32;
        let mean_projection = dot(&scaled_grad, &normalized) / width as f32;
        for ((gx, s), n) in gx.iter_mut().zip(&scaled_grad).zip(&normalized) {
            *gx = inverse_std * (s - mean_scaled - n * mean_projection);
        }
    }
}

/// The backward pass of [`layer_norm`]: the input's gradient into `grad_input`, and the gradients of
/// `gamma` and `beta` (summed over rows) into `grad_gamma` / `grad_beta`.
pub fn layer_norm_backward(
    input: &[f32],
    gamma: &[f32],
    stats: &[[f32; 2]],
    grad_output: &[f32],
    grad_input: &mut [f32],
    grad_gamma: &mut [f32],
    grad_beta: &mut [f32],
) {
    let width = gamma.len();
    assert!(width > 0 && input.len() == grad_output.len() && input.len() == grad_input.len());
    assert!(input.len() == stats.len() * width && grad_gamma.len() == width && grad_beta.len() == width);
    // Per-task partial sums, added in task order so that the result does not depend on scheduling.
    let partials: Vec<(Vec<f32>, Vec<f32>)> = input
        .par_chunks(NORM_ROWS * width)
        .zip(grad_output.par_chunks(NORM_ROWS * width))
        .zip(grad_input.par_chunks_mut(NORM_ROWS * width))
        .zip(stats.par_chunks(NORM_ROWS))
        .map(|(((x, gy), gx), stats)| {
            let (mut dgamma, mut dbeta) = (vec![0f32; width], vec![0f32; width]);
            layer_norm_backward_rows(x, gamma, stats, gy, gx, &mut dgamma, &mut dbeta);
            (dgamma, dbeta)
        })
        .collect();
    let (dgammas, dbetas): (Vec<_>, Vec<_>) = partials.into_iter().unzip();
    sum_in_order(grad_gamma, dgammas);
    sum_in_order(grad_beta, dbetas);
}

#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma"))]
fn rotate_rows(rows: &mut [f32], cos: &[f32], sin: &[f32], head_dim: usize) {
    let half = head_dim / 2;
    for head in rows.chunks_exact_mut(head_dim) {
        let (first, second) = head.split_at_mut(half);
        for j in 0..half {
            let (a, b) = (first[j], second[j]);
            first[j] = a * cos[j] - b * sin[j];
            second[j] = b * cos[half + j] + a * sin[half + j];
        }
    }
}

/// Rotary embedding in place on `[batch, seq, width]` rows (`width = heads * head_dim`) with
/// `[seq, head_dim]` tables in transformers' `rotate_half` layout: `x * cos + rotate_half(x) * sin`
/// per head.
pub fn rotary(values: &mut [f32], width: usize, cos: &[f32], sin: &[f32], head_dim: usize) {
    rotate_each_row(values, width, cos, sin, head_dim, rotate_rows);
}

/// Runs `rotate` on each `[width]` row of `values` with the `cos`/`sin` table rows of its position
/// (row index modulo the tables' sequence length), rows in parallel.
fn rotate_each_row(
    values: &mut [f32],
    width: usize,
    cos: &[f32],
    sin: &[f32],
    head_dim: usize,
    rotate: fn(&mut [f32], &[f32], &[f32], usize),
) {
    assert!(head_dim > 0 && head_dim % 2 == 0 && width > 0 && width % head_dim == 0 && values.len() % width == 0);
    assert!(cos.len() % head_dim == 0 && sin.len() == cos.len());
    let seq_len = cos.len() / head_dim;
    assert!(seq_len > 0 && (values.len() / width) % seq_len == 0);
    values.par_chunks_mut(width).enumerate().for_each(|(row, values)| {
        let table = (row % seq_len) * head_dim..(row % seq_len + 1) * head_dim;
        rotate(values, &cos[table.clone()], &sin[table], head_dim);
    });
}

#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma"))]
fn rotate_rows_backward(rows: &mut [f32], cos: &[f32], sin: &[f32], head_dim: usize) {
    let half = head_dim / 2;
    for head in rows.chunks_exact_mut(head_dim) {
        let (first, second) = head.split_at_mut(half);
        for j in 0..half {
            // The transpose of the forward rotation: a' = a c1 - b s1, b' = b c2 + a s2.
            let (da, db) = (first[j], second[j]);
            first[j] = da * cos[j] + db * sin[half + j];
            second[j] = db * cos[half + j] - da * sin[j];
        }
    }
}

/// The backward pass of [`rotary`] in place on the output's gradient (the rotation is linear).
pub fn rotary_backward(grad: &mut [f32], width: usize, cos: &[f32], sin: &[f32], head_dim: usize) {
    rotate_each_row(grad, width, cos, sin, head_dim, rotate_rows_backward);
}

/// The exponentials of a masked softmax of one row in place, `exp(x - max)` where `keep` is 1 and 0
/// elsewhere, returning the factor that normalises them (`1 / sum`). A row with nothing kept becomes
/// uniform with factor 1 (transformers' behaviour with a most-negative-float mask).
#[inline(always)]
fn masked_exp_row(row: &mut [f32], keep: &[f32]) -> f32 {
    let max = kept_max(row, keep);
    if max == f32::NEG_INFINITY {
        let uniform = 1.0 / row.len() as f32;
        row.fill(uniform);
        return 1.0;
    }
    // The exponentials and their sum in one pass, in lanes as `sum`.
    let (row_chunks, row_tail) = row.as_chunks_mut::<LANES>();
    let (keep_chunks, keep_tail) = keep.as_chunks::<LANES>();
    let mut lanes = [0f32; LANES];
    for (xs, ks) in row_chunks.iter_mut().zip(keep_chunks) {
        for lane in 0..LANES {
            xs[lane] = math::exp(xs[lane] - max) * ks[lane];
            lanes[lane] += xs[lane];
        }
    }
    let mut tail = 0.0;
    for (x, k) in row_tail.iter_mut().zip(keep_tail) {
        *x = math::exp(*x - max) * k;
        tail += *x;
    }
    1.0 / (lanes.iter().sum::<f32>() + tail)
}

/// The shape of one attention call on `[batch, seq, heads * head_dim]` projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    pub batch: usize,
    pub seq_len: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub causal: bool,
}

/// The masked softmax of each `[seq]` row of `scores` in place. With `row_scales`, the rows are left
/// unnormalised and each row's normalising factor is written there instead: inference applies it to
/// the row's `[head_dim]` output, a pass over `head_dim` values instead of `seq`.
#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma"))]
fn softmax_rows(scores: &mut [f32], keep: &[f32], causal: bool, mut row_scales: Option<&mut [f32]>) {
    let seq_len = keep.len();
    for (i, row) in scores.chunks_exact_mut(seq_len).enumerate() {
        // Causal: query i sees keys 0..=i only; the rest of the row is zero.
        let visible = if causal { i + 1 } else { seq_len };
        let (seen, unseen) = row.split_at_mut(visible);
        unseen.fill(0.0);
        let scale = masked_exp_row(seen, &keep[..visible]);
        match row_scales.as_deref_mut() {
            Some(scales) => scales[i] = scale,
            None => seen.iter_mut().for_each(|x| *x *= scale),
        }
    }
}

/// Dropout on the attention weights inside the kernels: a counter-based mask per `(batch, head)`
/// block, so the backward pass regenerates exactly the forward's mask instead of storing it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WeightDropout {
    pub seed: u64,
    /// Probability of keeping a weight (`1 - p`).
    pub keep: f64,
}

impl WeightDropout {
    /// The mask of block `task` (`[seq, seq]`), `1 / keep` where kept.
    fn fill(self, mask: &mut [f32], task: usize) {
        let first = (task * mask.len()) as u64;
        dropout_mask_slice(mask, first, self.seed, keep_threshold(self.keep), (1.0 / self.keep) as f32);
    }
}

fn keep_threshold(keep: f64) -> u32 {
    (keep * 2f64.powi(32)).min(u32::MAX as f64) as u32
}

/// Strides of one head's `[seq, head_dim]` block inside a `[batch, seq, heads * head_dim]` buffer.
#[derive(Clone, Copy)]
struct Block {
    offset: usize,
    row_stride: isize,
}

impl AttentionShape {
    fn q_width(&self) -> usize {
        self.heads * self.head_dim
    }
    fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }
    /// Head `h`'s block of the sequence whose first token is row `first_row` of the queries.
    fn q_block(&self, first_row: usize, h: usize) -> Block {
        Block { offset: first_row * self.q_width() + h * self.head_dim, row_stride: self.q_width() as isize }
    }
    fn kv_block(&self, first_row: usize, kv_h: usize) -> Block {
        Block { offset: first_row * self.kv_width() + kv_h * self.head_dim, row_stride: self.kv_width() as isize }
    }
    fn check(&self, q: usize, kv: usize, keep: usize) {
        assert!(self.kv_heads > 0 && self.heads % self.kv_heads == 0);
        assert_eq!(q, self.batch * self.seq_len * self.q_width());
        assert_eq!(kv, self.batch * self.seq_len * self.kv_width());
        assert_eq!(keep, self.batch * self.seq_len);
    }
}

/// A `*mut f32` that rayon tasks share; each task writes a disjoint set of head blocks.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: tasks write disjoint head blocks and the caller keeps the buffer alive and otherwise
// untouched until all tasks have joined.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

/// `dst (+)= beta * lhs x rhs` for `[m, k] x [k, n]` operands given by pointer and (row, column)
/// strides; `accumulate` adds to `dst` instead of overwriting it. On the calling thread: the attention
/// kernels parallelise over heads (see [`add_product`] for one product on all cores).
///
/// # Safety
/// Every pointer must be valid for the elements its strides reach, and `dst` must not alias the inputs.
unsafe fn product(
    dims: [usize; 3],
    dst: (*mut f32, isize, isize),
    lhs: (*const f32, isize, isize),
    rhs: (*const f32, isize, isize),
    beta: f32,
    accumulate: bool,
) {
    // SAFETY: forwarded from the caller.
    unsafe { product_with(dims, dst, lhs, rhs, beta, accumulate, gemm::Parallelism::None) }
}

/// [`product`] with a choice of threads.
///
/// # Safety
/// As [`product`].
#[allow(clippy::too_many_arguments)]
unsafe fn product_with(
    [m, k, n]: [usize; 3],
    dst: (*mut f32, isize, isize),
    lhs: (*const f32, isize, isize),
    rhs: (*const f32, isize, isize),
    beta: f32,
    accumulate: bool,
    parallelism: gemm::Parallelism,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.0,
            dst.2,
            dst.1,
            accumulate,
            lhs.0,
            lhs.2,
            lhs.1,
            rhs.0,
            rhs.2,
            rhs.1,
            if accumulate { 1.0 } else { 0.0 },
            beta,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// A matrix inside a buffer: element `(i, j)` at `offset + i * row_stride + j * col_stride` (a
/// transposed or sliced view needs no copy).
#[derive(Debug, Clone, Copy)]
pub struct StridedMatrix<'a> {
    pub data: &'a [f32],
    pub offset: usize,
    pub rows: usize,
    pub cols: usize,
    pub row_stride: isize,
    pub col_stride: isize,
}

impl StridedMatrix<'_> {
    /// Whether every element lies inside `data`.
    fn in_bounds(&self) -> bool {
        if self.rows == 0 || self.cols == 0 {
            return true;
        }
        let mut low = self.offset as isize;
        let mut high = low;
        for (count, stride) in [(self.rows, self.row_stride), (self.cols, self.col_stride)] {
            let reach = (count as isize - 1) * stride;
            if reach < 0 { low += reach } else { high += reach }
        }
        low >= 0 && (high as usize) < self.data.len()
    }
}

/// `rows` copies of `row`, one after the other, written on all cores (no zero fill first).
pub fn repeat_rows(row: &[f32], rows: usize) -> Vec<f32> {
    let width = row.len();
    let mut values = Vec::with_capacity(rows * width);
    if width > 0 {
        let rows_per_task = (CHUNK / width).max(1);
        values.spare_capacity_mut()[..rows * width].par_chunks_mut(rows_per_task * width).for_each(|block| {
            for out in block.chunks_exact_mut(width) {
                out.iter_mut().zip(row).for_each(|(slot, value)| {
                    slot.write(*value);
                });
            }
        });
    }
    // SAFETY: the loop above initialised all `rows * width` elements (each block is a whole number of
    // rows), and the capacity is at least that.
    unsafe { values.set_len(rows * width) };
    values
}

/// `row` added to every `row.len()`-wide row of `values`, on all cores.
pub fn add_to_rows(values: &mut [f32], row: &[f32]) {
    let width = row.len();
    assert!(width > 0 && values.len() % width == 0);
    values.par_chunks_mut((CHUNK / width).max(1) * width).for_each(|block| {
        for out in block.chunks_exact_mut(width) {
            out.iter_mut().zip(row).for_each(|(y, b)| *y += b);
        }
    });
}

/// Products below this many multiply-adds run on one thread (burn-flex's threshold too).
const PARALLEL_PRODUCT: usize = 192 * 192 * 192;

/// `output += input x weight` for row-major `input: [rows, k]`, a `[k, n]` weight and row-major
/// `output: [rows, n]`, on all cores. The output comes in holding the bias rows or the residual, so a
/// linear layer needs neither a zero fill nor separate passes adding them.
pub fn add_product(input: &[f32], weight: StridedMatrix, output: &mut [f32]) {
    let (k, n) = (weight.rows, weight.cols);
    assert!(weight.in_bounds() && k > 0 && input.len() % k == 0);
    let rows = input.len() / k;
    assert_eq!(output.len(), rows * n);
    let parallelism =
        if rows * k * n >= PARALLEL_PRODUCT { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
    // SAFETY: `input` and `output` are row-major with the asserted lengths, `weight` is in bounds, and
    // `output` is a unique borrow, so it aliases neither input.
    unsafe {
        product_with(
            [rows, k, n],
            (output.as_mut_ptr(), n as isize, 1),
            (input.as_ptr(), k as isize, 1),
            (weight.data.as_ptr().wrapping_add(weight.offset), weight.row_stride, weight.col_stride),
            1.0,
            true,
            parallelism,
        )
    }
}

thread_local! {
    /// Per-thread scratch, reused across calls: the `[seq, seq]` weights, and the dropout mask or the
    /// rows' softmax factors.
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// What a forward pass does with one block's softmax weights besides multiplying `v` by them.
enum WeightUse<'a> {
    /// Inference: the weights stay unnormalised and each row's normalising factor (kept in this `[seq]`
    /// scratch) scales its `[head_dim]` output row instead: a pass over `head_dim` values, not `seq`.
    Inference { row_scales: &'a mut Vec<f32> },
    /// Training: the normalised weights are kept for the backward pass, and dropout (drawn into `mask`)
    /// applies to the product.
    Training { dropout: Option<WeightDropout>, mask: &'a mut Vec<f32> },
}

/// One `(sequence, head)` block of an attention call: the sequence's rows in the projections, which
/// of its keys are real, and the block's index (it seeds the block's dropout mask).
#[derive(Clone, Copy)]
struct HeadBlock<'a> {
    first_row: usize,
    keep: &'a [f32],
    head: usize,
    index: usize,
}

impl<'a> HeadBlock<'a> {
    /// Block `task = b * heads + h` of a `[batch, seq]` call.
    fn of_batch(task: usize, keep: &'a [f32], shape: AttentionShape) -> Self {
        let (b, s) = (task / shape.heads, shape.seq_len);
        Self { first_row: b * s, keep: &keep[b * s..(b + 1) * s], head: task % shape.heads, index: task }
    }
}

/// One `(sequence, head)` block of the forward pass: the softmax weights into `weights` (`[len, len]`
/// for a sequence of `len` tokens), the weighted values into the output's head columns.
///
/// # Safety
/// `output` must be valid for the projections' rows and no other task may write this block of it.
#[allow(clippy::too_many_arguments)]
unsafe fn attend(
    block: HeadBlock,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: AttentionShape,
    weights: &mut [f32],
    usage: WeightUse,
    output: SharedMut,
) {
    let AttentionShape { heads, kv_heads, head_dim: d, causal, .. } = shape;
    let HeadBlock { first_row, keep, head: h, index } = block;
    let s = keep.len();
    let (qb, kvb) = (shape.q_block(first_row, h), shape.kv_block(first_row, h / (heads / kv_heads)));
    let scale = 1.0 / (d as f32).sqrt();
    // SAFETY: the blocks lie inside q, k, v and output (lengths checked by the callers: `s` rows of
    // stride `width` from `h * d < width`), `weights` holds `s * s` floats.
    unsafe {
        // weights = scale * q_bh k_bh^T ([s, d] x [d, s]; k^T is k read with swapped strides)
        product(
            [s, d, s],
            (weights.as_mut_ptr(), s as isize, 1),
            (q.as_ptr().add(qb.offset), qb.row_stride, 1),
            (k.as_ptr().add(kvb.offset), 1, kvb.row_stride),
            scale,
            false,
        );
    }
    let (weights, row_scales): (&[f32], _) = match usage {
        WeightUse::Inference { row_scales } => {
            row_scales.resize(s, 0.0);
            softmax_rows(weights, keep, causal, Some(row_scales));
            (weights, Some(row_scales))
        }
        WeightUse::Training { dropout: Some(dropout), mask } => {
            softmax_rows(weights, keep, causal, None);
            mask.resize(s * s, 0.0);
            dropout.fill(mask, index);
            mask.iter_mut().zip(weights.iter()).for_each(|(m, w)| *m *= w);
            (mask, None)
        }
        WeightUse::Training { dropout: None, .. } => {
            softmax_rows(weights, keep, causal, None);
            (weights, None)
        }
    };
    // SAFETY: as above; this task alone writes block (b, h) of the output.
    unsafe {
        // output_bh = weights v_bh ([s, s] x [s, d])
        product(
            [s, s, d],
            (output.0.add(qb.offset), qb.row_stride, 1),
            (weights.as_ptr(), s as isize, 1),
            (v.as_ptr().add(kvb.offset), kvb.row_stride, 1),
            1.0,
            false,
        );
    }
    if let Some(row_scales) = row_scales {
        for (i, row_scale) in row_scales.iter().enumerate() {
            // SAFETY: row i of this block: `d` floats inside the output (as above), written by this
            // task alone, and no other reference to them is alive.
            let row =
                unsafe { std::slice::from_raw_parts_mut(output.0.add(qb.offset + i * qb.row_stride as usize), d) };
            row.iter_mut().for_each(|x| *x *= row_scale);
        }
    }
}

/// Scaled dot-product attention straight on the projections' layout, one rayon task per
/// `(batch, head)`: `softmax(q k^T / sqrt(d) + mask) v`, with key/value head `h / (heads / kv_heads)`
/// serving query head `h` (grouped-query attention without copying keys), written into
/// `output: [batch, seq, heads * head_dim]`, so no head split, merge or repeat is materialised.
///
/// `keep` is `[batch, seq]`: 1 for a real key, 0 for padding.
pub fn attention(q: &[f32], k: &[f32], v: &[f32], keep: &[f32], shape: AttentionShape, output: &mut [f32]) {
    shape.check(q.len(), k.len(), keep.len());
    assert!(v.len() == k.len() && output.len() == q.len());
    let out = SharedMut(output.as_mut_ptr());
    (0..shape.batch * shape.heads).into_par_iter().for_each(|task| {
        let block = HeadBlock::of_batch(task, keep, shape);
        // SAFETY: `output` outlives the parallel loop and each task writes its own block.
        unsafe { attend_for_inference(block, q, k, v, shape, out) };
    });
}

/// [`attention`] on packed sequences: `lengths[i]` tokens of sequence `i` one after the other in
/// `[total, heads * head_dim]` projections (`total` is their sum), each token attending to the
/// tokens of its own sequence only (and with `shape.causal`, to those at or before it). `shape`'s
/// `batch` and `seq_len` are unused.
pub fn attention_packed(q: &[f32], k: &[f32], v: &[f32], lengths: &[usize], shape: AttentionShape, output: &mut [f32]) {
    let total: usize = lengths.iter().sum();
    let packed = AttentionShape { batch: 1, seq_len: total, ..shape };
    packed.check(q.len(), k.len(), total);
    assert!(v.len() == k.len() && output.len() == q.len());
    let ones = vec![1f32; lengths.iter().copied().max().unwrap_or(0)];
    let first_rows: Vec<usize> =
        lengths.iter().scan(0, |next, &len| Some(std::mem::replace(next, *next + len))).collect();
    let out = SharedMut(output.as_mut_ptr());
    (0..lengths.len() * shape.heads).into_par_iter().for_each(|task| {
        let sequence = task / shape.heads;
        let keep = &ones[..lengths[sequence]];
        let block = HeadBlock { first_row: first_rows[sequence], keep, head: task % shape.heads, index: task };
        // SAFETY: `output` outlives the parallel loop and each task writes its own block.
        unsafe { attend_for_inference(block, q, k, v, packed, out) };
    });
}

/// [`attend`] without autodiff, with this thread's scratch.
///
/// # Safety
/// As [`attend`].
unsafe fn attend_for_inference(
    block: HeadBlock,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: AttentionShape,
    output: SharedMut,
) {
    SCRATCH.with_borrow_mut(|(weights, row_scales)| {
        let s = block.keep.len();
        weights.resize(s * s, 0.0);
        // SAFETY: forwarded from the caller.
        unsafe { attend(block, q, k, v, shape, &mut weights[..s * s], WeightUse::Inference { row_scales }, output) };
    })
}

/// The training forward pass: as [`attention`], with optional dropout on the weights, and the
/// softmax weights (before dropout) kept in `weights: [batch, heads, seq, seq]` for the backward pass.
pub fn attention_saving_weights(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    keep: &[f32],
    shape: AttentionShape,
    dropout: Option<WeightDropout>,
    output: &mut [f32],
    weights: &mut [f32],
) {
    shape.check(q.len(), k.len(), keep.len());
    let block = shape.seq_len * shape.seq_len;
    assert!(v.len() == k.len() && output.len() == q.len() && weights.len() == shape.batch * shape.heads * block);
    let out = SharedMut(output.as_mut_ptr());
    weights.par_chunks_mut(block).enumerate().for_each(|(task, weights)| {
        SCRATCH.with_borrow_mut(|(_, mask)| {
            let block = HeadBlock::of_batch(task, keep, shape);
            // SAFETY: `output` outlives the parallel loop and each task writes its own block.
            unsafe { attend(block, q, k, v, shape, weights, WeightUse::Training { dropout, mask }, out) };
        })
    });
}

#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma"))]
fn softmax_backward_rows(grad: &mut [f32], weights: &[f32], seq_len: usize) {
    // d scores = P * (dP - rowsum(dP * P)), row by row.
    for (g, p) in grad.chunks_exact_mut(seq_len).zip(weights.chunks_exact(seq_len)) {
        let projection = dot(g, p);
        for (g, p) in g.iter_mut().zip(p) {
            *g = p * (*g - projection);
        }
    }
}

/// Gradients of [`attention_saving_weights`] with respect to `q`, `k` and `v`, given the output's
/// gradient and the saved weights. One rayon task per `(batch, key/value head)`, so that the query
/// heads sharing a key/value head accumulate into it without races.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    weights: &[f32],
    shape: AttentionShape,
    dropout: Option<WeightDropout>,
    grad_output: &[f32],
    [grad_q, grad_k, grad_v]: [&mut [f32]; 3],
) {
    let AttentionShape { batch, seq_len: s, heads, kv_heads, head_dim: d, .. } = shape;
    shape.check(q.len(), k.len(), batch * s);
    assert!(v.len() == k.len() && grad_output.len() == q.len() && weights.len() == batch * heads * s * s);
    assert!(grad_q.len() == q.len() && grad_k.len() == k.len() && grad_v.len() == v.len());
    let groups = heads / kv_heads;
    let scale = 1.0 / (d as f32).sqrt();
    let (gq, gk, gv) = (SharedMut(grad_q.as_mut_ptr()), SharedMut(grad_k.as_mut_ptr()), SharedMut(grad_v.as_mut_ptr()));
    (0..batch * kv_heads).into_par_iter().for_each(|task| {
        let (b, kv_h) = (task / kv_heads, task % kv_heads);
        let kvb = shape.kv_block(b * s, kv_h);
        let (gq, gk, gv) = (gq, gk, gv);
        SCRATCH.with_borrow_mut(|(grad_weights, mask)| {
            grad_weights.resize(s * s, 0.0);
            mask.resize(s * s, 0.0);
            for (i, h) in (kv_h * groups..(kv_h + 1) * groups).enumerate() {
                let head_task = b * heads + h;
                let qb = shape.q_block(b * s, h);
                let p = &weights[head_task * s * s..(head_task + 1) * s * s];
                // SAFETY: blocks inside their buffers as in `attend`.
                unsafe {
                    // grad_weights = grad_out_bh v^T ([s, d] x [d, s])
                    product(
                        [s, d, s],
                        (grad_weights.as_mut_ptr(), s as isize, 1),
                        (grad_output.as_ptr().add(qb.offset), qb.row_stride, 1),
                        (v.as_ptr().add(kvb.offset), 1, kvb.row_stride),
                        1.0,
                        false,
                    );
                }
                // The weights the forward pass multiplied v by: P, or P * mask with dropout (the mask,
                // drawn once, also masks the weights' gradient).
                let used: &[f32] = match dropout {
                    Some(dropout) => {
                        dropout.fill(mask, head_task);
                        grad_weights.iter_mut().zip(mask.iter()).for_each(|(g, m)| *g *= m);
                        mask.iter_mut().zip(p).for_each(|(m, p)| *m *= p);
                        mask
                    }
                    None => p,
                };
                // SAFETY: as above; this task alone writes the (b, kv_h) blocks of grad_k / grad_v
                // and the (b, h) blocks of grad_q for its heads.
                unsafe {
                    // grad_v_b,kv_h (+)= used^T grad_out_bh ([s, s]^T x [s, d])
                    product(
                        [s, s, d],
                        (gv.0.add(kvb.offset), kvb.row_stride, 1),
                        (used.as_ptr(), 1, s as isize),
                        (grad_output.as_ptr().add(qb.offset), qb.row_stride, 1),
                        1.0,
                        i > 0,
                    );
                }
                softmax_backward_rows(grad_weights, p, s);
                // SAFETY: as above.
                unsafe {
                    // grad_q_bh = scale * d_scores k ([s, s] x [s, d])
                    product(
                        [s, s, d],
                        (gq.0.add(qb.offset), qb.row_stride, 1),
                        (grad_weights.as_ptr(), s as isize, 1),
                        (k.as_ptr().add(kvb.offset), kvb.row_stride, 1),
                        scale,
                        false,
                    );
                    // grad_k (+)= scale * d_scores^T q ([s, s]^T x [s, d])
                    product(
                        [s, s, d],
                        (gk.0.add(kvb.offset), kvb.row_stride, 1),
                        (grad_weights.as_ptr(), 1, s as isize),
                        (q.as_ptr().add(qb.offset), qb.row_stride, 1),
                        scale,
                        i > 0,
                    );
                }
            }
        })
    });
}
