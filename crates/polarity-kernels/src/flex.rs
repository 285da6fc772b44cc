//! Moving tensors between burn's generic API and burn-flex's buffers.
//!
//! The kernels are a fast path for one backend inside code that is generic over all of them, so the
//! backend is recognised by its tensor type at run time (a `TypeId` test, no `unsafe`), not by a trait
//! bound every model and caller would have to carry.

use std::any::{Any, TypeId};

use burn::prelude::*;
use burn::tensor::{DType, TensorData, TensorPrimitive};
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

/// Whether `x` is a float32 tensor of burn-flex, the backend the kernels are written for.
pub(crate) fn accepts<B: Backend, const D: usize>(x: &Tensor<B, D>) -> bool {
    TypeId::of::<B::FloatTensorPrimitive>() == TypeId::of::<FlexTensor>() && x.dtype() == DType::F32
}

/// Whether `B` runs on burn-flex's CPU device (burn-flex itself, or autodiff over it).
pub(crate) fn on_cpu_device<B: Backend>() -> bool {
    TypeId::of::<B::Device>() == TypeId::of::<burn_flex::FlexDevice>()
}

/// `x`'s burn-flex tensor, contiguous and (unless its buffer is shared with another tensor) owning
/// its buffer alone, so that kernels can write in place. Call only when [`accepts`] holds.
pub(crate) fn into_flex<B: Backend, const D: usize>(x: Tensor<B, D>) -> FlexTensor {
    let TensorPrimitive::Float(primitive) = x.into_primitive() else {
        unreachable!("`accepts` checked the float dtype")
    };
    let tensor: FlexTensor = cast(primitive).unwrap_or_else(|_| unreachable!("`accepts` checked the backend"));
    let contiguous = tensor.to_contiguous();
    // When `tensor` was already contiguous, `contiguous` shares its buffer; dropping it leaves one owner.
    drop(tensor);
    contiguous
}

/// The inverse of [`into_flex`].
pub(crate) fn from_flex<B: Backend, const D: usize>(tensor: FlexTensor) -> Tensor<B, D> {
    let primitive = cast(tensor).unwrap_or_else(|_| unreachable!("only called after `accepts`"));
    Tensor::from_primitive(TensorPrimitive::Float(primitive))
}

/// A new contiguous float32 flex tensor.
pub(crate) fn new_flex(values: Vec<f32>, shape: burn::tensor::Shape) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// Runs `kernel` on `x`'s values in place (copying first only if another tensor shares them), or
/// hands `x` back when it is not a float32 flex tensor.
pub(crate) fn in_place<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    kernel: impl FnOnce(&mut [f32]),
) -> Result<Tensor<B, D>, Tensor<B, D>> {
    if !accepts(&x) {
        return Err(x);
    }
    let mut tensor = into_flex(x);
    kernel(tensor.storage_mut::<f32>());
    Ok(from_flex(tensor))
}
