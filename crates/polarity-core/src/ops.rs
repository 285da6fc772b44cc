//! Small tensor helpers shared by the model crates.

use burn::nn::Linear;
use burn::prelude::*;

/// Applies a row-wise matrix function to `x` with its leading dimensions folded into one:
/// `[..., in] -> [rows, in] -> f -> [rows, out] -> [..., out]`.
///
/// A linear layer on `[batch, seq, in]` is then one `[batch * seq, in] x [in, out]` product instead of a
/// batch of `[seq, in]` products: CPU backends re-pack the shared weight for every product of a batch,
/// and a single large product parallelises better.
///
/// ```
/// use burn::backend::NdArray;
/// use burn::prelude::*;
/// use polarity_core::ops::on_rows;
///
/// let x = Tensor::<NdArray, 3>::ones([2, 3, 4], &Default::default());
/// let y = on_rows(x, |rows| rows.sum_dim(1)); // [6, 4] -> [6, 1]
/// assert_eq!(y.dims(), [2, 3, 1]);
/// ```
pub fn on_rows<B: Backend, const D: usize>(x: Tensor<B, D>, f: impl FnOnce(Tensor<B, 2>) -> Tensor<B, 2>) -> Tensor<B, D> {
    let mut dims = x.dims();
    let rows = dims[..D - 1].iter().product::<usize>();
    let y = f(x.reshape([rows, dims[D - 1]]));
    dims[D - 1] = y.dims()[1];
    y.reshape(dims)
}

/// `layer.forward(x)` as one 2-D product (see [`on_rows`]).
pub fn linear_on_rows<B: Backend, const D: usize>(layer: &Linear<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    on_rows(x, |rows| layer.forward(rows))
}
