//! Layer normalisation: burn's `LayerNorm` module and op, with fused kernels and a fused backward pass
//! on the CPU default, and burn's op as the composed reference.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::module::Param;
use burn::nn::Initializer;
use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use burn_flex::{Flex, FlexTensor};

use crate::autodiff::{finish, fused_node, into_autodiff, into_tensor};
use crate::dispatch::{Op, Path};
use crate::flex::{self, new_flex};

static LAYER_NORM: Op = Op::new("layer_norm");

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
    let fits = width > 0 && gamma.dims() == [width] && beta.as_ref().is_none_or(|beta| beta.dims() == [width]);
    if !fits {
        return composed(x, gamma, beta, eps);
    }
    let dtypes = [x.dtype(), gamma.dtype()].into_iter().chain(beta.as_ref().map(Tensor::dtype));
    match (LAYER_NORM.path::<B>(dtypes), beta) {
        (Path::FlexInference, beta) => {
            let (gamma, beta) = (flex::into_flex(gamma), beta.map(flex::into_flex));
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
            flex::in_place(x, normalize)
        }
        (Path::FlexAutodiff, Some(beta)) => on_autodiff(x, gamma, beta, eps),
        // Without a bias under autodiff: burn's op.
        (Path::FlexAutodiff | Path::Composed, beta) => composed(x, gamma, beta, eps),
    }
}

/// burn's `layer_norm` op, which the fused paths are tested against.
pub fn composed<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    gamma: Tensor<B, 1>,
    beta: Option<Tensor<B, 1>>,
    eps: f64,
) -> Tensor<B, D> {
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

/// What the layer norm's backward pass needs.
#[derive(Debug, Clone)]
struct SavedNorm {
    input: FlexTensor,
    gamma: FlexTensor,
    /// `[mean, 1 / std]` per row.
    stats: Arc<Vec<[f32; 2]>>,
}

#[derive(Debug)]
struct FusedLayerNorm;

impl Backward<Flex, 3> for FusedLayerNorm {
    type State = SavedNorm;

    fn backward(self, ops: Ops<SavedNorm, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let SavedNorm { input, gamma, stats } = ops.state;
        let grad_output = grads.consume::<Flex>(&ops.node).to_contiguous();
        let width = gamma.storage::<f32>().len();
        let mut grad_input = vec![0f32; input.storage::<f32>().len()];
        let (mut grad_gamma, mut grad_beta) = (vec![0f32; width], vec![0f32; width]);
        cpu::layer_norm_backward(
            input.storage(),
            gamma.storage(),
            &stats,
            grad_output.storage(),
            &mut grad_input,
            &mut grad_gamma,
            &mut grad_beta,
        );
        let [input_node, gamma_node, beta_node] = ops.parents;
        let vector = || burn::tensor::Shape::from([width]);
        let registered = [
            (input_node, grad_input, input.layout().shape().clone()),
            (gamma_node, grad_gamma, vector()),
            (beta_node, grad_beta, vector()),
        ];
        for (node, grad, shape) in registered {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, new_flex(grad, shape));
            }
        }
    }
}

/// LayerNorm with a bias on `Autodiff<Flex>` tensors as one graph node, forward and backward each
/// one fused, row-parallel pass. The dispatch chose `FlexAutodiff` and the caller checked the widths.
fn on_autodiff<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, D> {
    let (x, gamma, beta) = (into_autodiff(x), into_autodiff(gamma), into_autodiff(beta));
    let input = x.primitive.to_contiguous();
    let gamma_values = gamma.primitive.to_contiguous();
    let beta_values = beta.primitive.to_contiguous();
    let width = gamma_values.storage::<f32>().len();
    let mut output = vec![0f32; input.storage::<f32>().len()];
    let mut stats = vec![[0f32; 2]; output.len() / width];
    cpu::layer_norm(
        input.storage(),
        gamma_values.storage(),
        Some(beta_values.storage()),
        eps as f32,
        &mut output,
        &mut stats,
    );
    let output = new_flex(output, input.layout().shape().clone());
    let prep = fused_node(FusedLayerNorm, [&x, &gamma, &beta]);
    into_tensor(finish(prep, || SavedNorm { input, gamma: gamma_values, stats: Arc::new(stats) }, output))
}

/// The kernels on `f32` slices, row-parallel.
mod cpu {
    use multiversion::multiversion;
    use rayon::prelude::*;

    use crate::reduce::{centered_sum_of_squares, dot, sum};
    use crate::threading::{CHUNK, NORM_ROWS, sum_in_order};

    #[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma"))]
    fn layer_norm_rows(values: &mut [f32], gamma: &[f32], beta: Option<&[f32]>, eps: f32, stats: &mut [[f32; 2]]) {
        let width = gamma.len();
        for (row, stat) in values.chunks_exact_mut(width).zip(stats) {
            // Two passes (mean, then centred squares), as PyTorch: no cancellation for large means.
            let mean = sum(row) / width as f32;
            let inverse_std = 1.0 / (centered_sum_of_squares(row, mean) / width as f32 + eps).sqrt();
            *stat = [mean, inverse_std];
            match beta {
                Some(beta) => {
                    for ((x, g), b) in row.iter_mut().zip(gamma).zip(beta) {
                        *x = (*x - mean) * inverse_std * g + b;
                    }
                }
                None => {
                    for (x, g) in row.iter_mut().zip(gamma) {
                        *x = (*x - mean) * inverse_std * g;
                    }
                }
            }
        }
    }

    /// LayerNorm in place over rows of `gamma.len()` values: `(x - mean) / sqrt(var + eps) * gamma + beta`
    /// with the biased variance; `stats` receives each row's `[mean, 1 / std]` for the backward pass.
    pub fn layer_norm_in_place(
        values: &mut [f32],
        gamma: &[f32],
        beta: Option<&[f32]>,
        eps: f32,
        stats: &mut [[f32; 2]],
    ) {
        let width = gamma.len();
        assert!(width > 0 && values.len() == stats.len() * width && beta.is_none_or(|beta| beta.len() == width));
        values
            .par_chunks_mut(NORM_ROWS * width)
            .zip(stats.par_chunks_mut(NORM_ROWS))
            .for_each(|(rows, stats)| layer_norm_rows(rows, gamma, beta, eps, stats));
    }

    /// [`layer_norm_in_place`] on a copy of `input` in `output`.
    pub fn layer_norm(
        input: &[f32],
        gamma: &[f32],
        beta: Option<&[f32]>,
        eps: f32,
        output: &mut [f32],
        stats: &mut [[f32; 2]],
    ) {
        assert_eq!(input.len(), output.len());
        output.par_chunks_mut(CHUNK).zip(input.par_chunks(CHUNK)).for_each(|(y, x)| y.copy_from_slice(x));
        layer_norm_in_place(output, gamma, beta, eps, stats);
    }

    #[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma"))]
    fn layer_norm_backward_rows(
        input: &[f32],
        gamma: &[f32],
        stats: &[[f32; 2]],
        grad_output: &[f32],
        grad_input: &mut [f32],
        grad_gamma: &mut [f32],
        grad_beta: &mut [f32],
    ) {
        let width = gamma.len();
        let mut normalized = vec![0f32; width];
        let mut scaled_grad = vec![0f32; width];
        let rows =
            input.chunks_exact(width).zip(grad_output.chunks_exact(width)).zip(grad_input.chunks_exact_mut(width));
        for (((x, gy), gx), &[mean, inverse_std]) in rows.zip(stats) {
            for ((((n, s), x), gy), g) in normalized.iter_mut().zip(scaled_grad.iter_mut()).zip(x).zip(gy).zip(gamma) {
                *n = (x - mean) * inverse_std;
                *s = gy * g;
            }
            for (((dg, db), n), gy) in grad_gamma.iter_mut().zip(grad_beta.iter_mut()).zip(&normalized).zip(gy) {
                *dg += gy * n;
                *db += gy;
            }
            // dx = (1/std) (s - mean(s) - x̂ mean(s x̂)) with s = dy γ.
            let mean_scaled = sum(&scaled_grad) / width as f32;
            let mean_projection = dot(&scaled_grad, &normalized) / width as f32;
            for ((gx, s), n) in gx.iter_mut().zip(&scaled_grad).zip(&normalized) {
                *gx = inverse_std * (s - mean_scaled - n * mean_projection);
            }
        }
    }

    /// The backward pass of [`layer_norm`]: the input's gradient into `grad_input`, and the gradients of
    /// `gamma` and `beta` (summed over rows) into `grad_gamma` / `grad_beta`.
    pub fn layer_norm_backward(
        input: &[f32],
        gamma: &[f32],
        stats: &[[f32; 2]],
        grad_output: &[f32],
        grad_input: &mut [f32],
        grad_gamma: &mut [f32],
        grad_beta: &mut [f32],
    ) {
        let width = gamma.len();
        assert!(width > 0 && input.len() == grad_output.len() && input.len() == grad_input.len());
        assert!(input.len() == stats.len() * width && grad_gamma.len() == width && grad_beta.len() == width);
        // Per-task partial sums, added in task order so that the result does not depend on scheduling.
        let partials: Vec<(Vec<f32>, Vec<f32>)> = input
            .par_chunks(NORM_ROWS * width)
            .zip(grad_output.par_chunks(NORM_ROWS * width))
            .zip(grad_input.par_chunks_mut(NORM_ROWS * width))
            .zip(stats.par_chunks(NORM_ROWS))
            .map(|(((x, gy), gx), stats)| {
                let (mut dgamma, mut dbeta) = (vec![0f32; width], vec![0f32; width]);
                layer_norm_backward_rows(x, gamma, stats, gy, gx, &mut dgamma, &mut dbeta);
                (dgamma, dbeta)
            })
            .collect();
        let (dgammas, dbetas): (Vec<_>, Vec<_>) = partials.into_iter().unzip();
        sum_in_order(grad_gamma, dgammas);
        sum_in_order(grad_beta, dbetas);
    }
}
