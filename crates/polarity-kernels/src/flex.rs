//! Moving tensors between burn's generic API and burn-flex's buffers.
//!
//! The kernels are a fast path for one backend inside code that is generic over all of them, so the
//! backend is recognised by its tensor type at run time (a `TypeId` test, no `unsafe`), not by a trait
//! bound every model and caller would have to carry.

use std::any::{Any, TypeId};

use burn::prelude::*;
use burn::tensor::{DType, TensorData, TensorPrimitive};
use burn_flex::FlexTensor;

use crate::cpu::{self, StridedMatrix};

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

/// `x`'s burn-flex tensor as it is laid out (possibly a strided view). Call only when [`accepts`] holds.
fn as_flex<B: Backend, const D: usize>(x: Tensor<B, D>) -> FlexTensor {
    let TensorPrimitive::Float(primitive) = x.into_primitive() else {
        unreachable!("`accepts` checked the float dtype")
    };
    cast(primitive).unwrap_or_else(|_| unreachable!("`accepts` checked the backend"))
}

/// `x`'s burn-flex tensor, contiguous and (unless its buffer is shared with another tensor) owning
/// its buffer alone, so that kernels can write in place. Call only when [`accepts`] holds.
pub(crate) fn into_flex<B: Backend, const D: usize>(x: Tensor<B, D>) -> FlexTensor {
    let tensor = as_flex(x);
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

/// Whether [`linear`] takes `x` (`[..., k]`), `weight` (`[k, n]`), `bias` (`[n]`) and `residual`
/// (`x`'s shape with `n` last): all float32 burn-flex tensors of matching shapes.
pub(crate) fn fits_linear<B: Backend, const D: usize>(
    x: &Tensor<B, D>,
    weight: &Tensor<B, 2>,
    bias: Option<&Tensor<B, 1>>,
    residual: Option<&Tensor<B, D>>,
) -> bool {
    let (dims, [k, n]) = (x.dims(), weight.dims());
    let mut output_dims = dims;
    output_dims[D - 1] = n;
    dims[D - 1] == k
        && k > 0
        && accepts(x)
        && accepts(weight)
        && bias.is_none_or(|bias| accepts(bias) && bias.dims() == [n])
        && residual.is_none_or(|residual| accepts(residual) && residual.dims() == output_dims)
}

/// `x weight + bias + residual` as one GEMM on float32 burn-flex tensors (shapes as [`fits_linear`]
/// checked). The output starts as the residual (in its own buffer when no other tensor shares it) or
/// as the bias rows, and the product accumulates into it; the weight is read through its strides.
pub(crate) fn linear<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
    residual: Option<Tensor<B, D>>,
) -> Tensor<B, D> {
    let mut dims = x.dims();
    let [k, n] = weight.dims();
    dims[D - 1] = n;
    let rows = dims[..D - 1].iter().product::<usize>();
    let (x, weight) = (into_flex(x), as_flex(weight));
    let bias = bias.map(into_flex);
    let bias = bias.as_ref().map(|bias| bias.storage::<f32>());
    let mut output = match residual {
        Some(residual) => {
            let mut output = into_flex(residual);
            if let Some(bias) = bias {
                cpu::add_to_rows(output.storage_mut(), bias);
            }
            output
        }
        None => {
            let values = match bias {
                Some(bias) => cpu::repeat_rows(bias, rows),
                None => vec![0.0; rows * n],
            };
            new_flex(values, dims.into())
        }
    };
    let [row_stride, col_stride] = [0, 1].map(|axis| weight.layout().strides()[axis]);
    let matrix = StridedMatrix {
        data: weight.storage(),
        offset: weight.layout().start_offset(),
        rows: k,
        cols: n,
        row_stride,
        col_stride,
    };
    cpu::add_product(x.storage(), matrix, output.storage_mut());
    from_flex(output)
}
