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
fn silu_mul_slice(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = math::silu(*g) * u;
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
    let keep_threshold = (keep * 2f64.powi(32)).min(u32::MAX as f64) as u32;
    let scale = (1.0 / keep) as f32;
    mask.par_chunks_mut(CHUNK).enumerate().for_each(|(chunk, mask)| {
        dropout_mask_slice(mask, (chunk * CHUNK) as u64, seed, keep_threshold, scale)
    });
}

/// Exact GELU in place.
pub fn gelu(values: &mut [f32]) {
    values.par_chunks_mut(CHUNK).for_each(gelu_slice);
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
    let mut lanes = [0f32; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
    for chunk in chunks {
        for (acc, v) in lanes.iter_mut().zip(chunk) {
            *acc += v * v;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// The maximum of `values` where `keep` is 1 (`-inf` when nothing is kept).
#[inline(always)]
fn kept_max(values: &[f32], keep: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut tail = f32::NEG_INFINITY;
    let (values_chunks, keep_chunks) = (values.chunks_exact(LANES), keep.chunks_exact(LANES));
    for (v, k) in values_chunks.remainder().iter().zip(keep_chunks.remainder()) {
        tail = tail.max(if *k > 0.0 { *v } else { f32::NEG_INFINITY });
    }
    for (vs, ks) in values_chunks.zip(keep_chunks) {
        for ((acc, v), k) in lanes.iter_mut().zip(vs).zip(ks) {
            let candidate = if *k > 0.0 { *v } else { f32::NEG_INFINITY };
            *acc = if candidate > *acc { candidate } else { *acc };
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
    assert!(head_dim > 0 && head_dim % 2 == 0 && width > 0 && width % head_dim == 0 && values.len() % width == 0);
    assert!(cos.len() % head_dim == 0 && sin.len() == cos.len());
    let seq_len = cos.len() / head_dim;
    assert!(seq_len > 0 && (values.len() / width) % seq_len == 0);
    values.par_chunks_mut(width).enumerate().for_each(|(row, values)| {
        let table = (row % seq_len) * head_dim..(row % seq_len + 1) * head_dim;
        rotate_rows(values, &cos[table.clone()], &sin[table], head_dim);
    });
}

/// A masked softmax of one row in place: entries where `keep` is 0 become 0; a row with nothing kept
/// becomes uniform (transformers' behaviour with a most-negative-float mask).
#[inline(always)]
fn masked_softmax_row(row: &mut [f32], keep: &[f32]) {
    let max = kept_max(row, keep);
    if max == f32::NEG_INFINITY {
        let uniform = 1.0 / row.len() as f32;
        row.fill(uniform);
        return;
    }
    for (x, k) in row.iter_mut().zip(keep) {
        *x = math::exp(*x - max) * k;
    }
    let scale = 1.0 / sum(row);
    for x in row.iter_mut() {
        *x *= scale;
    }
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

/// A pointer to the output that rayon tasks share; each task writes a disjoint `[seq, head_dim]` block.
#[derive(Clone, Copy)]
struct OutputPtr(*mut f32);
// SAFETY: tasks write disjoint blocks (one (batch, head) pair each) and the caller keeps the buffer
// alive and unaliased until all tasks have joined.
unsafe impl Send for OutputPtr {}
unsafe impl Sync for OutputPtr {}

thread_local! {
    /// Per-thread scores buffer, reused across calls: `seq * seq` floats.
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma"))]
fn softmax_rows(scores: &mut [f32], keep: &[f32], causal: bool) {
    let seq_len = keep.len();
    for (i, row) in scores.chunks_exact_mut(seq_len).enumerate() {
        // Causal: query i sees keys 0..=i only; the rest of the row is zero.
        let visible = if causal { i + 1 } else { seq_len };
        let (seen, unseen) = row.split_at_mut(visible);
        unseen.fill(0.0);
        masked_softmax_row(seen, &keep[..visible]);
    }
}

/// Scaled dot-product attention straight on the projections' layout, one rayon task per
/// `(batch, head)`: `softmax(q k^T / sqrt(d) + mask) v`, with key/value head `h / (heads / kv_heads)`
/// serving query head `h` (grouped-query attention without copying keys), written into
/// `output: [batch, seq, heads * head_dim]`, so no head split, merge or repeat is materialised.
///
/// `keep` is `[batch, seq]`: 1 for a real key, 0 for padding.
pub fn attention(q: &[f32], k: &[f32], v: &[f32], keep: &[f32], shape: AttentionShape, output: &mut [f32]) {
    let AttentionShape { batch, seq_len, heads, kv_heads, head_dim, causal } = shape;
    let (q_width, kv_width) = (heads * head_dim, kv_heads * head_dim);
    assert!(kv_heads > 0 && heads % kv_heads == 0);
    assert_eq!(q.len(), batch * seq_len * q_width);
    assert_eq!(output.len(), q.len());
    assert_eq!(k.len(), batch * seq_len * kv_width);
    assert_eq!(v.len(), k.len());
    assert_eq!(keep.len(), batch * seq_len);
    let groups = heads / kv_heads;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let out = OutputPtr(output.as_mut_ptr());

    (0..batch * heads).into_par_iter().for_each(|task| {
        let (b, h) = (task / heads, task % heads);
        let kv_h = h / groups;
        let q_block = b * seq_len * q_width + h * head_dim;
        let kv_block = b * seq_len * kv_width + kv_h * head_dim;
        let out = out;
        SCORES.with_borrow_mut(|scores| {
            scores.resize(seq_len * seq_len, 0.0);
            // SAFETY (both products): the blocks start inside `q`, `k`, `v` and `output` (asserted
            // lengths above), every row/column offset stays inside them (`seq_len` rows of stride
            // `width`, `head_dim` columns from `h * head_dim < width`), and `scores` holds
            // `seq_len * seq_len` floats. This task alone writes its output block.
            unsafe {
                // scores = scale * q_bh k_bh^T: [seq, d] x [d, seq]; k^T is k read with swapped strides.
                gemm::gemm(
                    seq_len,
                    seq_len,
                    head_dim,
                    scores.as_mut_ptr(),
                    1,
                    seq_len as isize,
                    false,
                    q.as_ptr().add(q_block),
                    1,
                    q_width as isize,
                    k.as_ptr().add(kv_block),
                    kv_width as isize,
                    1,
                    0.0,
                    scale,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            softmax_rows(scores, &keep[b * seq_len..(b + 1) * seq_len], causal);
            unsafe {
                // output_bh = weights v_bh: [seq, seq] x [seq, d], into the head's columns.
                gemm::gemm(
                    seq_len,
                    head_dim,
                    seq_len,
                    out.0.add(q_block),
                    1,
                    q_width as isize,
                    false,
                    scores.as_ptr(),
                    1,
                    seq_len as isize,
                    v.as_ptr().add(kv_block),
                    1,
                    kv_width as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        });
    });
}
