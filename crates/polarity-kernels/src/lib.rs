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
//! - under autodiff over burn-flex (training on the CPU default, with any checkpoint strategy),
//!   [`attention`], [`gelu`], [`layer_norm`], [`silu_mul`], [`rms_norm`] and [`rotary`] are single graph
//!   nodes with their own fused backward passes (attention keeps the softmax weights and regenerates
//!   the dropout mask from its seed).
//!
//! Which of these an op runs is decided in one place, [`Path::of`] (see [`path_of`]); a float32 tensor
//! on a CPU backend that takes the composed path (ndarray) is logged once per op.
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

pub mod autocast;
mod autodiff;
pub mod composed;
mod dispatch;
mod flex;
pub mod math;
mod ops;
mod packed_product;
mod packing;
mod product;
mod reduce;
mod threading;

pub use dispatch::{Path, path_of};
pub use ops::attention::{AttentionHeads, AttentionMask, attention};
pub use ops::dropout::dropout;
pub use ops::gelu::gelu;
pub use ops::layer_norm::{LayerNorm, layer_norm};
pub use ops::linear::{FrozenMatrix, frozen_linear, linear, linear_gelu, linear_residual, linear_with, on_rows};
pub use ops::rms_norm::rms_norm;
pub use ops::rope::rotary;
pub use ops::silu_gate::silu_mul;
pub use packed_product::{
    bf16_products_available, clear_packed_weights, keeps_packed_weights, packed_weight_count, set_keep_packed_weights,
};
pub use packing::PackedSequences;
