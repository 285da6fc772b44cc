//! Fused CPU kernels for the operations polarity's models spend their non-GEMM time in.
//!
//! burn-flex, the CPU default, runs element-wise ops as one scalar pass per op on one thread (libm's
//! `erff`/`expf` per element) and materialises every intermediate tensor. Profiling MiniLM and SmolLM2
//! inference put a third to a half of the time there (docs/performance.md). Each function here:
//!
//! - on a float32 burn-flex tensor, runs one fused pass over the data, row-parallel with rayon and
//!   vectorised (AVX-512 or AVX2, picked at run time), in place where the input is not shared;
//! - on any other backend and on other float types runs the same operation composed from burn's tensor
//!   ops ([`composed`]), so results and gradients are burn's;
//! - under autodiff over burn-flex (training on the CPU default), [`attention`], [`gelu`],
//!   [`layer_norm`], [`silu_mul`], [`rms_norm`] and [`rotary`] are single graph nodes with their own
//!   fused backward passes (attention keeps the softmax weights and regenerates the dropout mask from
//!   its seed).
//!
//! [`dropout`] is the exception: it only acts under autodiff, and there it replaces burn's
//! one-element-at-a-time Bernoulli mask by a parallel counter-based one.
//!
//! [`PackedSequences`] removes the padding of a right-padded batch for inference: the models run
//! their layers on the real tokens alone, with [`AttentionMask::packed`] keeping each sequence's
//! attention to itself.
//!
//! The kernels use fast polynomial `exp`/`erf` (see [`math`]); they agree with the composed ops to
//! about 1e-6 relative (tests/kernels.rs), far inside the 1e-4 parity tolerances against PyTorch.
//!
//! ```
//! use burn::backend::Flex;
//! use burn::prelude::*;
//!
//! let x = Tensor::<Flex, 2>::from_data([[-1.0, 0.0, 2.0]], &Default::default());
//! let fast = polarity_kernels::gelu(x.clone());
//! let reference = polarity_kernels::composed::gelu(x);
//! fast.into_data().assert_approx_eq::<f32>(&reference.into_data(), burn::tensor::Tolerance::absolute(1e-6));
//! ```

mod attention;
pub mod autocast;
mod autodiff;
pub mod composed;
mod cpu;
mod flex;
mod linear;
pub mod math;
mod norm;
mod packing;

use burn::nn::Dropout;
use burn::prelude::*;
use burn::tensor::Distribution;

pub use attention::{AttentionHeads, AttentionMask, attention};
pub use autodiff::{FrozenMatrix, frozen_linear};
pub use linear::{linear, linear_residual, linear_with, on_rows};
pub use norm::{LayerNorm, layer_norm};
pub use packing::PackedSequences;

/// The exact GELU, `x/2 (1 + erf(x / sqrt 2))` (transformers' `"gelu"`); under autodiff over
/// burn-flex one graph node with a fused backward pass.
pub fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    if autodiff::accepts(&x) {
        return autodiff::gelu(x);
    }
    flex::in_place(x, cpu::gelu).unwrap_or_else(composed::gelu)
}

/// `silu(gate) * up`, Llama's SwiGLU gate, in one pass.
pub fn silu_mul<B: Backend, const D: usize>(gate: Tensor<B, D>, up: Tensor<B, D>) -> Tensor<B, D> {
    if gate.dims() == up.dims() && autodiff::accepts(&gate) && autodiff::accepts(&up) {
        return autodiff::silu_mul(gate, up);
    }
    if gate.dims() != up.dims() || !flex::accepts(&up) {
        return composed::silu_mul(gate, up);
    }
    match flex::in_place(gate, |gate| cpu::silu_mul(gate, flex::into_flex(up.clone()).storage())) {
        Ok(product) => product,
        Err(gate) => composed::silu_mul(gate, up),
    }
}

/// RMSNorm, `x / sqrt(mean(x^2) + eps) * weight` over the last dimension (`weight` has its width).
pub fn rms_norm<B: Backend, const D: usize>(x: Tensor<B, D>, weight: Tensor<B, 1>, eps: f64) -> Tensor<B, D> {
    let dims = x.dims();
    let fits = weight.dims() == [dims[D - 1]] && dims[D - 1] > 0;
    if fits && autodiff::accepts(&x) && autodiff::accepts(&weight) {
        return autodiff::rms_norm(x, weight, eps);
    }
    if !fits || !flex::accepts(&x) || !flex::accepts(&weight) {
        return composed::rms_norm(x, weight, eps);
    }
    let (x, weight) = (flex::into_flex(x), flex::into_flex(weight));
    let mut output = vec![0f32; dims.iter().product()];
    cpu::rms_norm(x.storage(), weight.storage(), eps as f32, &mut output);
    flex::from_flex(flex::new_flex(output, dims.into()))
}

/// Rotary position embedding of `[batch, seq, heads * head_dim]` projections with `[seq, head_dim]`
/// `cos`/`sin` tables in transformers' `rotate_half` layout (each frequency in both halves of a head).
pub fn rotary<B: Backend>(x: Tensor<B, 3>, cos: Tensor<B, 2>, sin: Tensor<B, 2>, head_dim: usize) -> Tensor<B, 3> {
    let [_, seq_len, width] = x.dims();
    let fits = head_dim > 0
        && head_dim % 2 == 0
        && width % head_dim == 0
        && seq_len > 0
        && cos.dims() == [seq_len, head_dim]
        && sin.dims() == cos.dims();
    if fits && autodiff::accepts(&x) && autodiff::accepts(&cos) && autodiff::accepts(&sin) {
        return autodiff::rotary(x, cos, sin, head_dim);
    }
    if !(fits && flex::accepts(&x) && flex::accepts(&cos) && flex::accepts(&sin)) {
        return composed::rotary(x, cos, sin, head_dim);
    }
    let (cos_table, sin_table) = (flex::into_flex(cos.clone()), flex::into_flex(sin.clone()));
    flex::in_place(x, |values| cpu::rotary(values, width, cos_table.storage(), sin_table.storage(), head_dim))
        .unwrap_or_else(|x| composed::rotary(x, cos, sin, head_dim))
}

/// Inverted dropout, `x * mask / (1 - prob)`, active only under autodiff (training), as burn's
/// [`Dropout`].
///
/// On the CPU default the mask comes from a counter-based generator filled on all cores and enters
/// the graph as a constant: one multiplication. burn's own dropout draws its Bernoulli mask one
/// element at a time on one thread, which took ~16 % of a MiniLM training step. The generator's seed
/// is drawn from the backend's random stream, so `B::seed` still makes runs reproducible. Other
/// devices use burn's dropout.
pub fn dropout<B: Backend, const D: usize>(layer: &Dropout, x: Tensor<B, D>) -> Tensor<B, D> {
    let device = x.device();
    if !B::ad_enabled(&device)
        || layer.prob == 0.0
        || !flex::on_cpu_device::<B>()
        || x.dtype() != burn::tensor::DType::F32
    {
        return layer.forward(x);
    }
    let keep = 1.0 - layer.prob;
    let seed = random_seed::<B>(&device);
    let dims = x.dims();
    let mut mask = vec![0f32; dims.iter().product()];
    cpu::dropout_mask(&mut mask, seed, keep);
    x * Tensor::from_data(burn::tensor::TensorData::new(mask, dims), &device)
}

/// 64 bits from the backend's random stream, so that `B::seed` governs the kernels' generators too.
pub(crate) fn random_seed<B: Backend>(device: &B::Device) -> u64 {
    let draws = Tensor::<B, 1>::random([2], Distribution::Uniform(0.0, 1.0), device).into_data();
    draws.iter::<f32>().fold(0u64, |acc, u| (acc << 32) | u64::from(u.to_bits()))
}
