//! Moving tensors between burn's generic API and burn-flex's buffers, once the dispatch has chosen
//! the `FlexInference` path: the conversions are downcasts (a `TypeId` test, no `unsafe`) that cannot
//! fail on that path.

use std::any::Any;

use burn::prelude::*;
use burn::tensor::{TensorData, TensorPrimitive};
use burn_flex::FlexTensor;

/// `value` as a `U` when `T` is `U`.
pub(crate) fn cast<T: 'static, U: 'static>(value: T) -> Result<U, T> {
    let mut slot = Some(value);
    let converted = (&mut slot as &mut dyn Any).downcast_mut::<Option<U>>().and_then(Option::take);
    match (converted, slot) {
        (Some(converted), _) => Ok(converted),
        (None, Some(value)) => Err(value),
        (None, None) => unreachable!("the value is only taken when the types match"),
    }
}

/// `x`'s burn-flex tensor as it is laid out (possibly a strided view). Call only on the `FlexInference` path.
pub(crate) fn as_flex<B: Backend, const D: usize>(x: Tensor<B, D>) -> FlexTensor {
    let TensorPrimitive::Float(primitive) = x.into_primitive() else {
        unreachable!("the dispatch checked the float dtype")
    };
    cast(primitive).unwrap_or_else(|_| unreachable!("the dispatch checked the backend"))
}

/// `x`'s burn-flex tensor, contiguous and (unless its buffer is shared with another tensor) owning
/// its buffer alone, so that kernels can write in place. Call only on the `FlexInference` path.
pub(crate) fn into_flex<B: Backend, const D: usize>(x: Tensor<B, D>) -> FlexTensor {
    let tensor = as_flex(x);
    let contiguous = tensor.to_contiguous();
    // When `tensor` was already contiguous, `contiguous` shares its buffer; dropping it leaves one owner.
    drop(tensor);
    contiguous
}

/// The inverse of [`into_flex`].
pub(crate) fn from_flex<B: Backend, const D: usize>(tensor: FlexTensor) -> Tensor<B, D> {
    let primitive = cast(tensor).unwrap_or_else(|_| unreachable!("the dispatch checked the backend"));
    Tensor::from_primitive(TensorPrimitive::Float(primitive))
}

/// A new contiguous float32 flex tensor.
pub(crate) fn new_flex(values: Vec<f32>, shape: burn::tensor::Shape) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// Runs `kernel` on `x`'s values in place (copying first only if another tensor shares them). Call
/// only on the `FlexInference` path.
pub(crate) fn in_place<B: Backend, const D: usize>(x: Tensor<B, D>, kernel: impl FnOnce(&mut [f32])) -> Tensor<B, D> {
    let mut tensor = into_flex(x);
    kernel(tensor.storage_mut::<f32>());
    from_flex(tensor)
}
