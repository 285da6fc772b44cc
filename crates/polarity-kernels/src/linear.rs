//! Linear layers: every product of polarity's models goes through here, so that autocast and the CPU
//! default's fused path apply to all of them.
//!
//! On burn-flex (float32, no autodiff: inference on the CPU default) a linear layer is one GEMM that
//! accumulates into its output buffer, which starts as the bias rows or as the residual it is added
//! to: no zero fill and no separate passes for the bias and the residual, which burn's `linear` (a
//! product, then a broadcast add) and a following `+ residual` each make over the whole activation.

use burn::nn::{Dropout, Linear};
use burn::prelude::*;

use crate::autocast::cast_target;
use crate::flex;

/// burn's `linear(x, weight, bias)` (`weight` is `[in, out]`), computed in the autocast type when
/// autocast is on; the result has `x`'s type.
pub fn linear_with<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, D> {
    let dtype = x.dtype();
    match cast_target(dtype) {
        Some(target) => {
            let bias = bias.map(|bias| bias.cast(target));
            burn::tensor::module::linear(x.cast(target), weight.cast(target), bias).cast(dtype)
        }
        None if flex::fits_linear(&x, &weight, bias.as_ref(), None) => flex::linear(x, weight, bias, None),
        None => burn::tensor::module::linear(x, weight, bias),
    }
}

/// `layer.forward(x)` as one 2-D product over all rows of `x` (see [`on_rows`]), under autocast.
pub fn linear<B: Backend, const D: usize>(layer: &Linear<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    on_rows(x, |rows| linear_with(rows, layer.weight.val(), layer.bias.as_ref().map(|bias| bias.val())))
}

/// Applies a row-wise matrix function to `x` with its leading dimensions folded into one:
/// `[..., in] -> [rows, in] -> f -> [rows, out] -> [..., out]`.
///
/// A linear layer on `[batch, seq, in]` is then one `[batch * seq, in] x [in, out]` product instead of a
/// batch of `[seq, in]` products: CPU backends re-pack the shared weight for every product of a batch,
/// and a single large product parallelises better.
///
/// ```
/// use burn::backend::Flex;
/// use burn::prelude::*;
/// use polarity_kernels::on_rows;
///
/// let x = Tensor::<Flex, 3>::ones([2, 3, 4], &Default::default());
/// let y = on_rows(x, |rows| rows.sum_dim(1)); // [6, 4] -> [6, 1]
/// assert_eq!(y.dims(), [2, 3, 1]);
/// ```
pub fn on_rows<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    f: impl FnOnce(Tensor<B, 2>) -> Tensor<B, 2>,
) -> Tensor<B, D> {
    let mut dims = x.dims();
    let rows = dims[..D - 1].iter().product::<usize>();
    let y = f(x.reshape([rows, dims[D - 1]]));
    dims[D - 1] = y.dims()[1];
    y.reshape(dims)
}

/// `dropout(layer.forward(x)) + residual` (no dropout for `None`), the sub-layer output of a
/// transformer block; on burn-flex without autodiff (dropout is then the identity) the product
/// accumulates straight into the residual's buffer.
///
/// ```
/// use burn::backend::Flex;
/// use burn::nn::{DropoutConfig, LinearConfig};
/// use burn::prelude::*;
///
/// let device = Default::default();
/// let layer = LinearConfig::new(4, 3).init::<Flex>(&device);
/// let dropout = DropoutConfig::new(0.1).init();
/// let (x, residual) = (Tensor::<Flex, 3>::ones([2, 5, 4], &device), Tensor::<Flex, 3>::ones([2, 5, 3], &device));
/// let fused = polarity_kernels::linear_residual(&layer, Some(&dropout), x.clone(), residual.clone());
/// let composed = layer.forward(x) + residual;
/// fused.into_data().assert_approx_eq::<f32>(&composed.into_data(), burn::tensor::Tolerance::absolute(1e-5));
/// ```
pub fn linear_residual<B: Backend, const D: usize>(
    layer: &Linear<B>,
    dropout: Option<&Dropout>,
    x: Tensor<B, D>,
    residual: Tensor<B, D>,
) -> Tensor<B, D> {
    let (weight, bias) = (layer.weight.val(), layer.bias.as_ref().map(|bias| bias.val()));
    // Autocast off for `x`'s type: the same rule as `linear_with`'s fused path.
    if cast_target(x.dtype()).is_none() && flex::fits_linear(&x, &weight, bias.as_ref(), Some(&residual)) {
        return flex::linear(x, weight, bias, Some(residual));
    }
    let projected = linear(layer, x);
    match dropout {
        Some(dropout) => crate::dropout(dropout, projected) + residual,
        None => projected + residual,
    }
}
