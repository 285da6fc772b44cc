//! Linear layers: every product of polarity's models goes through here, so that autocast and the CPU
//! default's fused path apply to all of them.
//!
//! On burn-flex (float32, no autodiff: inference on the CPU default) a linear layer is one GEMM that
//! accumulates into its output buffer, which starts as the bias rows or as the residual it is added
//! to: no zero fill and no separate passes for the bias and the residual, which burn's `linear` (a
//! product, then a broadcast add) and a following `+ residual` each make over the whole activation.
//!
//! [`frozen_linear`] is the product by a frozen, decoded-on-demand matrix as one autodiff node (QLoRA).

use std::borrow::Cow;
use std::marker::PhantomData;
use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::nn::{Dropout, Linear};
use burn::prelude::*;
use burn::tensor::{Bytes, DType, FloatDType, TensorPrimitive, bf16};
use burn_flex::{Flex, FlexTensor, Layout};
use rayon::prelude::*;

use crate::autocast::{cast_target, compute_dtype};
use crate::autodiff::{finish, fused_node, into_autodiff, into_tensor};
use crate::dispatch::{Op, Path};
use crate::flex::{self, new_flex};
use crate::ops::dropout;
use crate::packed_product::{self, Bf16, F32, Format, Input, bf16_products_available, keeps_packed_weights};
use crate::product::{StridedMatrix, product_with};
use crate::threading::CHUNK;

static LINEAR: Op = Op::new("linear");
static FROZEN_LINEAR: Op = Op::new("frozen_linear");
static TRAINING_LINEAR: Op = Op::new("training_linear");

/// burn's `linear(x, weight, bias)` (`weight` is `[in, out]`), computed in the autocast type when
/// autocast is on; the result has `x`'s type.
pub fn linear_with<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, D> {
    let dtype = x.dtype();
    if let Some(precision) = fused_precision(&x, &weight, bias.as_ref(), None) {
        return fused_linear(x, weight, bias, None, precision);
    }
    match training_node(&x, &weight, bias.as_ref()) {
        Some(TrainingNode::FrozenBf16) => {
            return on_rows(x, |rows| frozen_packed_linear::<Bf16, B>(rows, weight, bias));
        }
        Some(TrainingNode::FrozenF32) => return on_rows(x, |rows| frozen_packed_linear::<F32, B>(rows, weight, bias)),
        Some(TrainingNode::TrainedBf16) => return on_rows(x, |rows| bf16_linear(rows, weight, bias)),
        None => {}
    }
    match cast_target(dtype) {
        Some(target) => {
            let bias = bias.map(|bias| bias.cast(target));
            burn::tensor::module::linear(x.cast(target), weight.cast(target), bias).cast(dtype)
        }
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
    if let Some(precision) = fused_precision(&x, &weight, bias.as_ref(), Some(&residual)) {
        return fused_linear(x, weight, bias, Some(residual), precision);
    }
    let projected = linear(layer, x);
    match dropout {
        Some(dropout) => dropout::dropout(dropout, projected) + residual,
        None => projected + residual,
    }
}

/// Whether [`linear`] takes `x` (`[..., k]`, of type `x_dtype` as far as the path goes), `weight`
/// (`[k, n]`), `bias` (`[n]`) and `residual` (`x`'s shape with `n` last): float32 burn-flex tensors of
/// matching shapes, without autodiff.
fn fits_linear<B: Backend, const D: usize>(
    x: &Tensor<B, D>,
    x_dtype: DType,
    weight: &Tensor<B, 2>,
    bias: Option<&Tensor<B, 1>>,
    residual: Option<&Tensor<B, D>>,
) -> bool {
    let (dims, [k, n]) = (x.dims(), weight.dims());
    let mut output_dims = dims;
    output_dims[D - 1] = n;
    let fits = dims[D - 1] == k
        && k > 0
        && bias.is_none_or(|bias| bias.dims() == [n])
        && residual.is_none_or(|residual| residual.dims() == output_dims);
    let dtypes =
        [x_dtype, weight.dtype()].into_iter().chain(bias.map(Tensor::dtype)).chain(residual.map(Tensor::dtype));
    // Under autodiff burn's linear is the graph: there is no fused node for it.
    fits && LINEAR.path::<B>(dtypes) == Path::FlexInference
}

/// The operand type of the fused product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProductPrecision {
    F32,
    /// bf16 operands, f32 accumulation ([`crate::packed_product`]).
    Bf16,
    /// As `Bf16`, with `x` already a bf16 tensor ([`linear_gelu`]'s output): its pairs are the kernel's
    /// input words as they stand.
    Bf16Pairs,
}

/// Whether [`linear`] runs as one fused product, and in which type: float32 without autocast, bf16
/// under bf16 autocast on CPUs with AVX512-BF16 (elsewhere autocast keeps burn's cast-and-multiply,
/// which computes the same bf16 products).
fn fused_precision<B: Backend, const D: usize>(
    x: &Tensor<B, D>,
    weight: &Tensor<B, 2>,
    bias: Option<&Tensor<B, 1>>,
    residual: Option<&Tensor<B, D>>,
) -> Option<ProductPrecision> {
    let bf16_autocast = compute_dtype() == Some(FloatDType::BF16) && bf16_products_available();
    let precision = match x.dtype() {
        DType::BF16 if bf16_autocast && x.dims()[D - 1].is_multiple_of(2) => ProductPrecision::Bf16Pairs,
        dtype => match cast_target(dtype) {
            None => ProductPrecision::F32,
            Some(FloatDType::BF16) if bf16_autocast => ProductPrecision::Bf16,
            Some(_) => return None,
        },
    };
    let x_dtype = if precision == ProductPrecision::Bf16Pairs { DType::F32 } else { x.dtype() };
    fits_linear(x, x_dtype, weight, bias, residual).then_some(precision)
}

/// `gelu(layer.forward(x))` with the exact GELU: the first half of a transformer's feed-forward block.
///
/// Under bf16 autocast on the CPU default (inference, AVX512-BF16, an even output width) it is one
/// product whose tasks apply the GELU to their block of the output and round it to bf16 while the
/// block is in cache, and the result is a **bf16** tensor: the operand of the next product as it
/// stands, which [`linear_residual`] and [`linear`] multiply without converting it again (PyTorch's
/// autocast, too, returns a linear layer's output, and so the GELU's, in bf16). Everywhere else it is
/// `gelu(linear(layer, x))`, in `x`'s type.
///
/// ```
/// use burn::backend::Flex;
/// use burn::nn::LinearConfig;
/// use burn::prelude::*;
///
/// let device = Default::default();
/// let layer = LinearConfig::new(4, 6).init::<Flex>(&device);
/// let x = Tensor::<Flex, 3>::ones([2, 3, 4], &device);
/// let fused = polarity_kernels::linear_gelu(&layer, x.clone());
/// let composed = polarity_kernels::gelu(layer.forward(x));
/// fused.into_data().assert_approx_eq::<f32>(&composed.into_data(), burn::tensor::Tolerance::absolute(1e-5));
/// ```
pub fn linear_gelu<B: Backend, const D: usize>(layer: &Linear<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    let (weight, bias) = (layer.weight.val(), layer.bias.as_ref().map(|bias| bias.val()));
    match fused_precision(&x, &weight, bias.as_ref(), None) {
        Some(precision @ (ProductPrecision::Bf16 | ProductPrecision::Bf16Pairs))
            if weight.dims()[1].is_multiple_of(2) =>
        {
            let mut dims = x.dims();
            dims[D - 1] = weight.dims()[1];
            let (x, weight) = (flex::into_flex(x), flex::as_flex(weight));
            let bias = bias.map(flex::into_flex);
            let bias = bias.as_ref().map(|bias| bias.storage::<f32>());
            let words = operand_words(&x, precision);
            let pairs = packed_product::new_activated_product(
                operand(&x, &words),
                &weight,
                strided_matrix(&weight),
                bias,
                crate::ops::gelu::gelu_in_place,
            );
            let output = FlexTensor::new(Bytes::from_elems(pairs), Layout::contiguous(dims.into()), DType::BF16);
            flex::from_flex(output)
        }
        _ => crate::gelu(linear(layer, x)),
    }
}

/// A bf16 operand's pairs (for [`ProductPrecision::Bf16Pairs`]): the tensor's own buffer read as 32-bit
/// words, or a copy where that buffer is not aligned to them.
fn operand_words(x: &FlexTensor, precision: ProductPrecision) -> Option<Cow<'_, [u32]>> {
    if precision != ProductPrecision::Bf16Pairs {
        return None;
    }
    let halves = x.storage::<bf16>();
    // SAFETY: every bit pattern is a valid `u32`; `align_to` only borrows the aligned middle.
    let (before, words, after) = unsafe { halves.align_to::<u32>() };
    Some(if before.is_empty() && after.is_empty() {
        Cow::Borrowed(words)
    } else {
        Cow::Owned(
            halves.chunks_exact(2).map(|pair| pair[0].to_bits() as u32 | (pair[1].to_bits() as u32) << 16).collect(),
        )
    })
}

/// The product's left operand: `x`'s floats, or its bf16 pairs.
fn operand<'a>(x: &'a FlexTensor, words: &'a Option<Cow<'a, [u32]>>) -> Input<'a, u32> {
    match words {
        Some(words) => Input::Words(words),
        None => Input::Floats(x.storage()),
    }
}

/// `x weight + bias + residual` as one GEMM on float32 burn-flex tensors (shapes as [`fits_linear`]
/// checked). The output starts as the residual (in its own buffer when no other tensor shares it) or
/// as the bias rows, and the product accumulates into it; the weight is read through its strides.
fn fused_linear<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
    residual: Option<Tensor<B, D>>,
    precision: ProductPrecision,
) -> Tensor<B, D> {
    let mut dims = x.dims();
    let [k, n] = weight.dims();
    dims[D - 1] = n;
    let rows = dims[..D - 1].iter().product::<usize>();
    let (x, weight) = (flex::into_flex(x), flex::as_flex(weight));
    let bias = bias.map(flex::into_flex);
    let bias = bias.as_ref().map(|bias| bias.storage::<f32>());
    let matrix = strided_matrix(&weight);
    debug_assert_eq!([matrix.rows, matrix.cols], [k, n]);
    let words = operand_words(&x, precision);
    let input = operand(&x, &words);
    let output = match (precision, residual) {
        // The bias goes in with the kernel's first pass over each tile.
        (ProductPrecision::Bf16 | ProductPrecision::Bf16Pairs, Some(residual)) => {
            let mut output = flex::into_flex(residual);
            packed_product::add_product::<Bf16>(input, &weight, matrix, bias, output.storage_mut());
            output
        }
        (ProductPrecision::Bf16 | ProductPrecision::Bf16Pairs, None) => {
            new_flex(packed_product::new_product::<Bf16>(input, &weight, matrix, bias), dims.into())
        }
        (ProductPrecision::F32, residual) => {
            let mut output = match residual {
                Some(residual) => {
                    let mut output = flex::into_flex(residual);
                    if let Some(bias) = bias {
                        add_to_rows(output.storage_mut(), bias);
                    }
                    output
                }
                None => {
                    let values = match bias {
                        Some(bias) => repeat_rows(bias, rows),
                        None => vec![0.0; rows * n],
                    };
                    new_flex(values, dims.into())
                }
            };
            add_product(x.storage(), matrix, output.storage_mut());
            output
        }
    };
    flex::from_flex(output)
}

/// A 2-D float32 burn-flex tensor (possibly a strided view, such as a transpose) read through its strides.
fn strided_matrix(tensor: &FlexTensor) -> StridedMatrix<'_> {
    let layout = tensor.layout();
    let ([rows, cols], [row_stride, col_stride]) =
        ([0, 1].map(|axis| layout.shape()[axis]), [0, 1].map(|axis| layout.strides()[axis]));
    StridedMatrix { data: tensor.storage(), offset: layout.start_offset(), rows, cols, row_stride, col_stride }
}

/// Which training node [`linear_with`] runs as, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TrainingNode {
    /// Under bf16 autocast, weight and bias take no gradient (a LoRA model's frozen base):
    /// [`FrozenPackedLinear`] in bf16.
    FrozenBf16,
    /// Without autocast, weight and bias take no gradient: [`FrozenPackedLinear`] in f32.
    FrozenF32,
    /// Under bf16 autocast, the weight or the bias is trained: [`Bf16Linear`].
    TrainedBf16,
}

/// Whether [`linear_with`] runs as one training node of its own, and which: training on the CPU
/// default (autodiff over burn-flex, float32), shapes matching, and either bf16 autocast on a CPU with
/// AVX512-BF16 or, for a frozen weight without autocast, an AVX-512 CPU where packed weights are kept. A
/// trained weight in float32 keeps burn's linear (its weight changes every step, so nothing is gained
/// by packing it).
fn training_node<B: Backend, const D: usize>(
    x: &Tensor<B, D>,
    weight: &Tensor<B, 2>,
    bias: Option<&Tensor<B, 1>>,
) -> Option<TrainingNode> {
    let [k, n] = weight.dims();
    let fits = x.dims()[D - 1] == k && k > 0 && n > 0 && bias.is_none_or(|bias| bias.dims() == [n]);
    let dtypes = [x.dtype(), weight.dtype()].into_iter().chain(bias.map(Tensor::dtype));
    if !fits || TRAINING_LINEAR.path::<B>(dtypes) != Path::FlexAutodiff {
        return None;
    }
    let frozen = untracked(weight) && bias.is_none_or(untracked);
    match cast_target(x.dtype()) {
        Some(FloatDType::BF16) if Bf16::available() => {
            Some(if frozen { TrainingNode::FrozenBf16 } else { TrainingNode::TrainedBf16 })
        }
        None if frozen && F32::available() && keeps_packed_weights() => Some(TrainingNode::FrozenF32),
        _ => None,
    }
}

/// Whether an autodiff-over-flex tensor is outside the graph (no gradient flows to or through it).
fn untracked<B: Backend, const D: usize>(x: &Tensor<B, D>) -> bool {
    into_autodiff(x.clone()).node.requirement.is_none()
}

/// The product by a frozen weight for training, in format `F`: `x W + b`, and in the backward pass
/// `dx = dy W^T`. In bf16 both products take bf16 operands and accumulate in f32 (PyTorch's autocast
/// runs both in bf16 too); in f32 they are the float32 products. The weight and its transpose are
/// packed once and kept by [`packed_product`]'s cache (in f32, the one with contiguous rows is read in
/// place instead), so a LoRA step pays neither burn's casts of the frozen base nor a packing per product.
#[derive(Debug)]
struct FrozenPackedLinear<F>(PhantomData<F>);

impl<F: Format> Backward<Flex, 1> for FrozenPackedLinear<F> {
    /// The weight `[k, n]` as the forward pass read it.
    type State = FlexTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let grad_output = grads.consume::<Flex>(&ops.node).to_contiguous();
        let [input_node] = ops.parents;
        let Some(node) = input_node else { return };
        let weight = ops.state;
        let transpose = transposed(strided_matrix(&weight));
        let rows = grad_output.layout().shape()[0];
        let grad_input =
            packed_product::new_product::<F>(Input::Floats(grad_output.storage()), &weight, transpose, None);
        grads.register::<Flex>(node.id, new_flex(grad_input, [rows, transpose.cols].into()));
    }
}

/// [`FrozenPackedLinear`] on `x: [rows, k]` (the caller checked [`training_node`]).
fn frozen_packed_linear<F: Format, B: Backend>(
    x: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, 2> {
    let x = into_autodiff(x);
    let weight = into_autodiff(weight).primitive;
    let input = x.primitive.to_contiguous();
    let [rows, n] = [input.layout().shape()[0], weight.layout().shape()[1]];
    let bias = bias.map(|bias| into_autodiff(bias).primitive.to_contiguous());
    let bias = bias.as_ref().map(|bias| bias.storage::<f32>());
    let output =
        packed_product::new_product::<F>(Input::Floats(input.storage()), &weight, strided_matrix(&weight), bias);
    let prepared = fused_node(FrozenPackedLinear::<F>(PhantomData), [&x]);
    into_tensor(finish(prepared, || weight, new_flex(output, [rows, n].into())))
}

/// The transpose of a strided matrix, as a view of the same values.
fn transposed(matrix: StridedMatrix<'_>) -> StridedMatrix<'_> {
    StridedMatrix {
        rows: matrix.cols,
        cols: matrix.rows,
        row_stride: matrix.col_stride,
        col_stride: matrix.row_stride,
        ..matrix
    }
}

/// The product by a trained weight in bf16 for training (full fine-tuning under `--precision bf16`):
/// `y = x W`, `dx = dy Wᵀ` and `dW = xᵀ dy` with bf16 operands and f32 accumulation (PyTorch's autocast
/// runs all three in bf16 too), every operand packed for its call (the weight changes every step). The
/// gradient, the weight and AdamW's state stay f32. The bias, if any, is added by burn's ops outside
/// the node.
#[derive(Debug)]
struct Bf16Linear;

impl Backward<Flex, 2> for Bf16Linear {
    /// The input `[rows, k]` (contiguous) and the weight `[k, n]` as the forward pass read them.
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let grad_output = grads.consume::<Flex>(&ops.node).to_contiguous();
        let (input, weight) = ops.state;
        let [input_node, weight_node] = ops.parents;
        let matrix = strided_matrix(&weight);
        let ([k, n], rows) = ([matrix.rows, matrix.cols], grad_output.layout().shape()[0]);
        if let Some(node) = input_node {
            let grad_input = packed_product::new_product_once::<Bf16>(grad_output.storage(), transposed(matrix));
            grads.register::<Flex>(node.id, new_flex(grad_input, [rows, k].into()));
        }
        if let Some(node) = weight_node {
            let row_major = |data, cols: usize| StridedMatrix {
                data,
                offset: 0,
                rows,
                cols,
                row_stride: cols as isize,
                col_stride: 1,
            };
            let grad_weight = packed_product::new_transposed_product_once::<Bf16>(
                row_major(input.storage(), k),
                row_major(grad_output.storage(), n),
            );
            grads.register::<Flex>(node.id, new_flex(grad_weight, [k, n].into()));
        }
    }
}

/// [`Bf16Linear`] on `x: [rows, k]`, then the bias (the caller checked [`training_node`]).
fn bf16_linear<B: Backend>(x: Tensor<B, 2>, weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>) -> Tensor<B, 2> {
    let (x, weight) = (into_autodiff(x), into_autodiff(weight));
    let (input, weight_values) = (x.primitive.to_contiguous(), weight.primitive.clone());
    let [rows, n] = [input.layout().shape()[0], weight_values.layout().shape()[1]];
    let output = packed_product::new_product_once::<Bf16>(input.storage(), strided_matrix(&weight_values));
    let prepared = fused_node(Bf16Linear, [&x, &weight]);
    let product: Tensor<B, 2> =
        into_tensor(finish(prepared, || (input, weight_values), new_flex(output, [rows, n].into())));
    match bias {
        Some(bias) => product + bias.unsqueeze(),
        None => product,
    }
}

/// `rows` copies of `row`, one after the other, written on all cores (no zero fill first).
fn repeat_rows(row: &[f32], rows: usize) -> Vec<f32> {
    let width = row.len();
    let mut values = Vec::with_capacity(rows * width);
    if let Some(rows_per_task) = CHUNK.checked_div(width).map(|rows| rows.max(1)) {
        values.spare_capacity_mut()[..rows * width].par_chunks_mut(rows_per_task * width).for_each(|block| {
            for out in block.chunks_exact_mut(width) {
                out.iter_mut().zip(row).for_each(|(slot, value)| {
                    slot.write(*value);
                });
            }
        });
    }
    // SAFETY: the loop above initialised all `rows * width` elements (each block is a whole number of
    // rows), and the capacity is at least that.
    unsafe { values.set_len(rows * width) };
    values
}

/// `row` added to every `row.len()`-wide row of `values`, on all cores.
fn add_to_rows(values: &mut [f32], row: &[f32]) {
    let width = row.len();
    assert!(width > 0 && values.len().is_multiple_of(width));
    values.par_chunks_mut((CHUNK / width).max(1) * width).for_each(|block| {
        for out in block.chunks_exact_mut(width) {
            out.iter_mut().zip(row).for_each(|(y, b)| *y += b);
        }
    });
}

/// Products below this many multiply-adds run on one thread (burn-flex's threshold too).
const PARALLEL_PRODUCT: usize = 192 * 192 * 192;

/// `output += input x weight` for row-major `input: [rows, k]`, a `[k, n]` weight and row-major
/// `output: [rows, n]`, on all cores. The output comes in holding the bias rows or the residual, so a
/// linear layer needs neither a zero fill nor separate passes adding them.
fn add_product(input: &[f32], weight: StridedMatrix, output: &mut [f32]) {
    let (k, n) = (weight.rows, weight.cols);
    assert!(weight.in_bounds() && k > 0 && input.len().is_multiple_of(k));
    let rows = input.len() / k;
    assert_eq!(output.len(), rows * n);
    let parallelism =
        if rows * k * n >= PARALLEL_PRODUCT { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
    // SAFETY: `input` and `output` are row-major with the asserted lengths, `weight` is in bounds, and
    // `output` is a unique borrow, so it aliases neither input.
    unsafe {
        product_with(
            [rows, k, n],
            (output.as_mut_ptr(), n as isize, 1),
            (input.as_ptr(), k as isize, 1),
            (weight.data.as_ptr().wrapping_add(weight.offset), weight.row_stride, weight.col_stride),
            1.0,
            true,
            parallelism,
        )
    }
}

/// A frozen matrix decoded on demand, such as a quantised weight (see [`frozen_linear`]).
pub trait FrozenMatrix: Send + Sync + std::fmt::Debug + 'static {
    /// `[rows, cols]` of the decoded matrix (`[out_features, in_features]` for a linear layer).
    fn dims(&self) -> [usize; 2];
    /// The decoded values, row-major.
    fn decode(&self) -> Vec<f32>;
    /// The decoded transpose (`[cols, rows]`), row-major.
    fn decode_transposed(&self) -> Vec<f32>;
    /// Whether a product with `input_rows` input rows should multiply by the contiguous transpose
    /// ([`decode_transposed`](Self::decode_transposed)) rather than by a transposed view of the
    /// row-major matrix (the cheaper layout depends on the decoder and the row count).
    fn prefers_transposed(&self, _input_rows: usize) -> bool {
        false
    }
}

#[derive(Debug)]
struct FrozenLinear;

impl Backward<Flex, 1> for FrozenLinear {
    type State = Arc<dyn FrozenMatrix>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let grad_output = Tensor::<Flex, 2>::from_primitive(TensorPrimitive::Float(grads.consume::<Flex>(&ops.node)));
        let [input_node] = ops.parents;
        if let Some(node) = input_node {
            // d x = d y M: the matrix is decoded again here rather than kept from the forward pass.
            let grad_input = grad_output.matmul(decoded(ops.state.as_ref()));
            grads.register::<Flex>(node.id, grad_input.into_primitive().tensor());
        }
    }
}

fn decoded(matrix: &dyn FrozenMatrix) -> Tensor<Flex, 2> {
    Tensor::from_data(burn::tensor::TensorData::new(matrix.decode(), matrix.dims()), &Default::default())
}

/// `x M^T` (`[rows, cols_of_M] -> [rows, rows_of_M]`, a bias-free linear layer) with a frozen `M`
/// that the autodiff graph does not keep: under autodiff over burn-flex, `M` is decoded for the
/// product, dropped, and decoded again in the backward pass. This is what lets QLoRA training hold the
/// base weights quantised between the forward and the backward pass: burn's own matmul would keep
/// every decoded f32 matrix alive until the backward pass reached it.
///
/// Returns `Err(x)` on other backends (or without autodiff), where the caller's usual product applies.
pub fn frozen_linear<B: Backend>(x: Tensor<B, 2>, matrix: Arc<dyn FrozenMatrix>) -> Result<Tensor<B, 2>, Tensor<B, 2>> {
    if x.dims()[1] != matrix.dims()[1] || FROZEN_LINEAR.path::<B>([x.dtype()]) != Path::FlexAutodiff {
        return Err(x);
    }
    let x = into_autodiff(x);
    let input = Tensor::<Flex, 2>::from_primitive(TensorPrimitive::Float(x.primitive.clone()));
    let [rows, cols] = matrix.dims();
    let weight = if matrix.prefers_transposed(input.dims()[0]) {
        Tensor::from_data(burn::tensor::TensorData::new(matrix.decode_transposed(), [cols, rows]), &Default::default())
    } else {
        decoded(matrix.as_ref()).transpose()
    };
    let output = input.matmul(weight).into_primitive().tensor();
    let prepared = fused_node(FrozenLinear, [&x]);
    Ok(into_tensor(finish(prepared, || matrix, output)))
}
