//! Mixed precision: matrix products in half precision, everything else in f32, the weights kept in
//! f32 (PyTorch's `torch.autocast`, what HF Trainer's `bf16=True` / `fp16=True` run under).
//!
//! Inside [`autocast`]`(Some(dtype), ..)` the products of `polarity_kernels::linear` and [`matmul`]
//! (every linear layer of polarity's models, the tied Llama head, the composed attention's two
//! products) cast their operands to `dtype`, multiply, and cast the result back to the input's type. Norms,
//! softmax, activations, residual sums and the loss stay in f32, and since the parameters stay f32
//! their gradients and the optimiser state do too (burn's autodiff casts a gradient back through
//! each cast). On a GPU with tensor cores (burn-cuda) the half-precision products are what is
//! faster. On the CPU default, bf16 autocast runs the linear layers through
//! [`crate::bf16_products_available`]'s AVX512-BF16 kernel (bf16 operands, f32 accumulation), about
//! twice the f32 speed of those products: in inference and for a frozen weight in training (a LoRA
//! model's base: the forward product and the input gradient, the weight and its transpose packed once
//! and kept), and for a trained weight (full fine-tuning: the forward product, the input gradient and
//! the weight gradient, packed per call; the gradient itself stays f32). In inference the fused
//! attention's two products per head run in bf16 too (the softmax in f32), and
//! [`crate::linear_gelu`] hands the next layer its GELU output as bf16 pairs; attention in training and
//! the frozen quantised products keep their f32 kernels, and without AVX512-BF16 (or for f16) autocast
//! changes the numbers, not the speed.
//!
//! The setting is per thread and scoped, like PyTorch's: forward passes run under it, the backward
//! pass needs nothing (the casts are in the graph).
//!
//! ```
//! use burn::backend::Flex;
//! use burn::prelude::*;
//! use burn::tensor::{DType, FloatDType};
//! use polarity_kernels::autocast;
//!
//! let x = Tensor::<Flex, 2>::from_data([[1.0f32, 2.0]], &Default::default());
//! let w = Tensor::<Flex, 2>::from_data([[0.1f32], [0.2]], &Default::default());
//! let y = autocast::autocast(Some(FloatDType::BF16), || autocast::matmul(x.clone(), w.clone()));
//! assert_eq!(y.dtype(), DType::F32); // computed in bf16, returned in the input's type
//! assert!((y.into_scalar() - 0.5).abs() < 1e-2);
//! ```

use std::cell::Cell;

use burn::prelude::*;
use burn::tensor::{DType, FloatDType};

thread_local! {
    static COMPUTE_DTYPE: Cell<Option<FloatDType>> = const { Cell::new(None) };
}

/// Runs `f` with the products computed in `dtype` (`None`: in the tensors' own type), restoring the
/// previous setting afterwards, also when `f` panics.
pub fn autocast<R>(dtype: Option<FloatDType>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<FloatDType>);
    impl Drop for Restore {
        fn drop(&mut self) {
            COMPUTE_DTYPE.with(|cell| cell.set(self.0));
        }
    }
    let _restore = Restore(COMPUTE_DTYPE.with(|cell| cell.replace(dtype)));
    f()
}

/// The type products are computed in on this thread, if autocast is on.
pub fn compute_dtype() -> Option<FloatDType> {
    COMPUTE_DTYPE.with(Cell::get)
}

/// The type `x`'s products run in: the autocast type when it is on and differs from `x`'s.
pub(crate) fn cast_target(dtype: DType) -> Option<FloatDType> {
    compute_dtype().filter(|target| DType::from(*target) != dtype)
}

/// `lhs.matmul(rhs)`, computed in the autocast type when autocast is on; the result has `lhs`'s type.
pub fn matmul<B: Backend, const D: usize>(lhs: Tensor<B, D>, rhs: Tensor<B, D>) -> Tensor<B, D> {
    let dtype = lhs.dtype();
    match cast_target(dtype) {
        Some(target) => lhs.cast(target).matmul(rhs.cast(target)).cast(dtype),
        None => lhs.matmul(rhs),
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::FloatDType;

    use super::{autocast, compute_dtype};

    #[test]
    fn the_setting_is_scoped_and_restored_after_a_panic() {
        assert_eq!(compute_dtype(), None);
        autocast(Some(FloatDType::BF16), || {
            assert_eq!(compute_dtype(), Some(FloatDType::BF16));
            autocast(None, || assert_eq!(compute_dtype(), None));
            assert_eq!(compute_dtype(), Some(FloatDType::BF16));
        });
        assert_eq!(compute_dtype(), None);
        let panicked = std::panic::catch_unwind(|| autocast(Some(FloatDType::F16), || panic!("inside")));
        assert!(panicked.is_err());
        assert_eq!(compute_dtype(), None);
    }
}
