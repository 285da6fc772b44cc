//! Layer normalisation: burn's `LayerNorm` module and op, with a fused backward pass on the CPU default.

use burn::module::Param;
use burn::nn::Initializer;
use burn::prelude::*;
use burn::tensor::TensorPrimitive;

use crate::{autodiff, cpu, flex};

/// `(x - mean) / sqrt(var + eps) * gamma + beta` over the last dimension (biased variance), as
/// PyTorch's `LayerNorm`.
///
/// On burn-flex without autodiff it normalises in place (when no other tensor shares `x`'s buffer),
/// row-parallel; on other backends it is burn's `layer_norm` op. Under autodiff over
/// burn-flex it is one graph node with a fused backward pass; burn-autodiff would otherwise
/// differentiate the ~10 element-wise ops the op is composed of, one single-threaded pass each.
pub fn layer_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    gamma: Tensor<B, 1>,
    beta: Option<Tensor<B, 1>>,
    eps: f64,
) -> Tensor<B, D> {
    let width = x.dims()[D - 1];
    if let Some(beta) = &beta
        && width > 0
        && gamma.dims() == [width]
        && beta.dims() == [width]
        && autodiff::accepts(&x)
        && autodiff::accepts(&gamma)
        && autodiff::accepts(beta)
    {
        return autodiff::layer_norm(x, gamma, beta.clone(), eps);
    }
    let fits = width > 0 && gamma.dims() == [width] && beta.as_ref().is_none_or(|beta| beta.dims() == [width]);
    let mut x = x;
    if fits && flex::accepts(&gamma) && beta.as_ref().is_none_or(flex::accepts) {
        let (gamma, beta) = (flex::into_flex(gamma.clone()), beta.clone().map(flex::into_flex));
        let mut stats = vec![[0f32; 2]; x.shape().num_elements() / width];
        let normalize = |values: &mut [f32]| {
            cpu::layer_norm_in_place(
                values,
                gamma.storage(),
                beta.as_ref().map(|beta| beta.storage()),
                eps as f32,
                &mut stats,
            )
        };
        match flex::in_place(x, normalize) {
            Ok(normalized) => return normalized,
            Err(other) => x = other,
        }
    }
    let output = B::layer_norm(
        x.into_primitive().tensor(),
        gamma.into_primitive().tensor(),
        beta.map(|beta| beta.into_primitive().tensor()),
        eps,
    );
    Tensor::from_primitive(TensorPrimitive::Float(output))
}

/// burn's `LayerNorm` module with the same parameters (`gamma`, `beta`) and the [`layer_norm`] op;
/// its epsilon is readable (burn's is private), which the fused op needs.
#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    /// The scale, `[d_model]`.
    pub gamma: Param<Tensor<B, 1>>,
    /// The shift, `[d_model]`.
    pub beta: Option<Param<Tensor<B, 1>>>,
    /// Added to the variance.
    pub epsilon: f64,
}

impl<B: Backend> LayerNorm<B> {
    /// A layer norm over `d_model` values with scale 1 and shift 0.
    pub fn new(d_model: usize, epsilon: f64, device: &B::Device) -> Self {
        Self {
            gamma: Initializer::Ones.init([d_model], device),
            beta: Some(Initializer::Zeros.init([d_model], device)),
            epsilon,
        }
    }

    /// Normalises the last dimension of `x`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        layer_norm(x, self.gamma.val(), self.beta.as_ref().map(Param::val), self.epsilon)
    }
}
