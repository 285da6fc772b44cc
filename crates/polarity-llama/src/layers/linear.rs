//! The frozen base of an adaptable projection: a dense [`Linear`] or a [`QuantizedLinear`].

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::prelude::*;

use crate::layers::quant::QuantizedLinear;

/// The pre-trained projection under a LoRA adapter: dense f32 (trainable until an adapter freezes it)
/// or quantised (always frozen: QLoRA).
///
/// Module paths name the variant (`base_layer.Dense.weight`) for burn's own visitors; checkpoint
/// keys leave variant names out (burn-store's `skip_enum_variants`), so both kinds of base have the
/// same keys (PEFT's `q_proj.base_layer.weight`, Hugging Face's `q_proj.weight`).
#[derive(Module, Debug)]
pub enum BaseLinear<B: Backend> {
    /// A dense [`Linear`] (burn layout, weight `[in, out]`).
    Dense(Linear<B>),
    /// A quantised weight dequantised on use.
    Quantized(QuantizedLinear<B>),
}

impl<B: Backend> From<Linear<B>> for BaseLinear<B> {
    fn from(layer: Linear<B>) -> Self {
        BaseLinear::Dense(layer)
    }
}

impl<B: Backend> From<QuantizedLinear<B>> for BaseLinear<B> {
    fn from(layer: QuantizedLinear<B>) -> Self {
        BaseLinear::Quantized(layer)
    }
}

impl<B: Backend> BaseLinear<B> {
    /// `[..., in] -> [..., out]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            BaseLinear::Dense(layer) => polarity_kernels::linear(layer, x),
            BaseLinear::Quantized(layer) => layer.forward(x),
        }
    }

    /// `[in_features, out_features]` (burn's layout of a linear weight).
    pub fn dims(&self) -> [usize; 2] {
        match self {
            BaseLinear::Dense(layer) => layer.weight.lazy_shape().dims(),
            BaseLinear::Quantized(layer) => layer.dims(),
        }
    }

    /// The dense layer, if the base is not quantised.
    pub fn as_dense(&self) -> Option<&Linear<B>> {
        match self {
            BaseLinear::Dense(layer) => Some(layer),
            BaseLinear::Quantized(_) => None,
        }
    }

    /// The quantised layer, if the base is quantised.
    pub fn as_quantized(&self) -> Option<&QuantizedLinear<B>> {
        match self {
            BaseLinear::Dense(_) => None,
            BaseLinear::Quantized(layer) => Some(layer),
        }
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&Param<Tensor<B, 1>>> {
        match self {
            BaseLinear::Dense(layer) => layer.bias.as_ref(),
            BaseLinear::Quantized(layer) => layer.bias.as_ref(),
        }
    }
}
