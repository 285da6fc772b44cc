//! RMSNorm, `x / sqrt(mean(x^2) + eps) * weight`: forward and backward kernels, the autodiff node and
//! the composed reference.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::prelude::*;
use burn_flex::{Flex, FlexTensor};

use crate::autodiff::{finish, fused_node, into_autodiff, into_tensor};
use crate::dispatch::{Op, Path};
use crate::flex::{self, new_flex};

static RMS_NORM: Op = Op::new("rms_norm");

/// RMSNorm, `x / sqrt(mean(x^2) + eps) * weight` over the last dimension (`weight` has its width).
pub fn rms_norm<B: Backend, const D: usize>(x: Tensor<B, D>, weight: Tensor<B, 1>, eps: f64) -> Tensor<B, D> {
    let dims = x.dims();
    if weight.dims() != [dims[D - 1]] || dims[D - 1] == 0 {
        return composed(x, weight, eps);
    }
    match RMS_NORM.path::<B>([x.dtype(), weight.dtype()]) {
        Path::FlexInference => {
            let (x, weight) = (flex::into_flex(x), flex::into_flex(weight));
            let mut output = vec![0f32; dims.iter().product()];
            cpu::rms_norm(x.storage(), weight.storage(), eps as f32, &mut output);
            flex::from_flex(new_flex(output, dims.into()))
        }
        Path::FlexAutodiff => on_autodiff(x, weight, eps),
        Path::Composed => composed(x, weight, eps),
    }
}

/// `x / sqrt(mean(x^2) + eps) * weight` over the last dimension.
pub fn composed<B: Backend, const D: usize>(x: Tensor<B, D>, weight: Tensor<B, 1>, eps: f64) -> Tensor<B, D> {
    let inverse_rms = (x.clone().square().mean_dim(D - 1) + eps).sqrt().recip();
    x * inverse_rms * weight.unsqueeze()
}

#[derive(Debug)]
struct FusedRmsNorm;

impl Backward<Flex, 2> for FusedRmsNorm {
    /// The input, the weight and epsilon.
    type State = (FlexTensor, FlexTensor, f32);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let (input, weight, eps) = ops.state;
        let grad = grads.consume::<Flex>(&ops.node).to_contiguous();
        let width = weight.storage::<f32>().len();
        let mut grad_input = vec![0f32; input.storage::<f32>().len()];
        let mut grad_weight = vec![0f32; width];
        cpu::rms_norm_backward(
            input.storage(),
            weight.storage(),
            eps,
            grad.storage(),
            &mut grad_input,
            &mut grad_weight,
        );
        let [input_node, weight_node] = ops.parents;
        if let Some(node) = input_node {
            grads.register::<Flex>(node.id, new_flex(grad_input, input.layout().shape().clone()));
        }
        if let Some(node) = weight_node {
            grads.register::<Flex>(node.id, new_flex(grad_weight, burn::tensor::Shape::from([width])));
        }
    }
}

/// RMSNorm on `Autodiff<Flex>` tensors as one graph node. The dispatch chose `FlexAutodiff` and the
/// caller checked the widths.
fn on_autodiff<B: Backend, const D: usize>(x: Tensor<B, D>, weight: Tensor<B, 1>, eps: f64) -> Tensor<B, D> {
    let (x, weight) = (into_autodiff(x), into_autodiff(weight));
    let (input, weight_values) = (x.primitive.to_contiguous(), weight.primitive.to_contiguous());
    let mut output = vec![0f32; input.storage::<f32>().len()];
    cpu::rms_norm(input.storage(), weight_values.storage(), eps as f32, &mut output);
    let output = new_flex(output, input.layout().shape().clone());
    let prepared = fused_node(FusedRmsNorm, [&x, &weight]);
    into_tensor(finish(prepared, || (input, weight_values, eps as f32), output))
}

/// The kernels on `f32` slices, row-parallel.
mod cpu {
    use multiversion::multiversion;
    use rayon::prelude::*;

    use crate::reduce::{dot, sum_of_squares};
    use crate::threading::{CHUNK, NORM_ROWS, sum_in_order};

    #[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma"))]
    fn rms_norm_rows(input: &[f32], weight: &[f32], eps: f32, output: &mut [f32]) {
        let width = weight.len();
        for (x, y) in input.chunks_exact(width).zip(output.chunks_exact_mut(width)) {
            let inverse_rms = 1.0 / (sum_of_squares(x) / width as f32 + eps).sqrt();
            for ((y, x), w) in y.iter_mut().zip(x).zip(weight) {
                *y = x * inverse_rms * w;
            }
        }
    }

    /// `output = input / sqrt(mean(input^2) + eps) * weight` over rows of `weight.len()`.
    pub fn rms_norm(input: &[f32], weight: &[f32], eps: f32, output: &mut [f32]) {
        let width = weight.len();
        assert!(width > 0 && input.len().is_multiple_of(width) && input.len() == output.len());
        let rows_per_task = (CHUNK / width).max(1);
        output
            .par_chunks_mut(rows_per_task * width)
            .zip(input.par_chunks(rows_per_task * width))
            .for_each(|(y, x)| rms_norm_rows(x, weight, eps, y));
    }

    #[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma"))]
    fn rms_norm_backward_rows(
        input: &[f32],
        weight: &[f32],
        eps: f32,
        grad_output: &[f32],
        grad_input: &mut [f32],
        grad_weight: &mut [f32],
    ) {
        let width = weight.len();
        let mut scaled_grad = vec![0f32; width];
        let rows =
            input.chunks_exact(width).zip(grad_output.chunks_exact(width)).zip(grad_input.chunks_exact_mut(width));
        for ((x, gy), gx) in rows {
            let inverse_rms = 1.0 / (sum_of_squares(x) / width as f32 + eps).sqrt();
            for (((s, gy), w), (dw, x)) in scaled_grad.iter_mut().zip(gy).zip(weight).zip(grad_weight.iter_mut().zip(x))
            {
                *s = gy * w;
                *dw += gy * x * inverse_rms;
            }
            // dx = r (s - x r² mean(s x)) with s = dy w and r = 1 / rms(x).
            let projection = dot(&scaled_grad, x) / width as f32 * inverse_rms * inverse_rms;
            for ((gx, s), x) in gx.iter_mut().zip(&scaled_grad).zip(x) {
                *gx = inverse_rms * (s - x * projection);
            }
        }
    }

    /// The backward pass of [`rms_norm`]: the input's gradient into `grad_input` and the weight's
    /// (summed over rows, in a fixed order) into `grad_weight`.
    pub fn rms_norm_backward(
        input: &[f32],
        weight: &[f32],
        eps: f32,
        grad_output: &[f32],
        grad_input: &mut [f32],
        grad_weight: &mut [f32],
    ) {
        let width = weight.len();
        assert!(
            width > 0
                && input.len().is_multiple_of(width)
                && input.len() == grad_output.len()
                && input.len() == grad_input.len()
        );
        assert_eq!(grad_weight.len(), width);
        let partials: Vec<Vec<f32>> = input
            .par_chunks(NORM_ROWS * width)
            .zip(grad_output.par_chunks(NORM_ROWS * width))
            .zip(grad_input.par_chunks_mut(NORM_ROWS * width))
            .map(|((x, gy), gx)| {
                let mut dw = vec![0f32; width];
                rms_norm_backward_rows(x, weight, eps, gy, gx, &mut dw);
                dw
            })
            .collect();
        sum_in_order(grad_weight, partials);
    }
}
