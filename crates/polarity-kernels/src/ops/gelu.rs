//! The exact GELU, `x/2 (1 + erf(x / sqrt 2))`: forward and backward kernels, the autodiff node and
//! the composed reference.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::prelude::*;
use burn_flex::{Flex, FlexTensor};

use crate::autodiff::{finish, fused_node, into_autodiff, into_tensor};
use crate::dispatch::{Op, Path};
use crate::flex::{self, new_flex};

static GELU: Op = Op::new("gelu");

/// The exact GELU, `x/2 (1 + erf(x / sqrt 2))` (transformers' `"gelu"`); under autodiff over
/// burn-flex one graph node with a fused backward pass.
pub fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    match GELU.path::<B>([x.dtype()]) {
        Path::FlexInference => flex::in_place(x, cpu::gelu),
        Path::FlexAutodiff => on_autodiff(x),
        Path::Composed => composed(x),
    }
}

/// The exact GELU, `x/2 (1 + erf(x / sqrt 2))`.
///
/// Without autodiff this is burn's `gelu` op (one pass). Under autodiff it is composed from `erf`:
/// burn's `gelu` backward is the derivative of the tanh approximation on some backends, ~1e-3
/// (relative) away from PyTorch's gradients.
pub fn composed<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    if !B::ad_enabled(&x.device()) {
        return burn::tensor::activation::gelu(x);
    }
    let cdf = x.clone().div_scalar(std::f64::consts::SQRT_2).erf().add_scalar(1.0).mul_scalar(0.5);
    x * cdf
}

#[derive(Debug)]
struct FusedGelu;

impl Backward<Flex, 1> for FusedGelu {
    /// The input.
    type State = FlexTensor;

    fn backward(self, ops: Ops<FlexTensor, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let input = ops.state;
        let mut grad = grads.consume::<Flex>(&ops.node).to_contiguous();
        let [input_node] = ops.parents;
        if let Some(node) = input_node {
            cpu::gelu_backward(grad.storage_mut::<f32>(), input.storage());
            grads.register::<Flex>(node.id, grad);
        }
    }
}

/// The exact GELU on an `Autodiff<Flex>` tensor as one graph node: one fused pass forward, one
/// backward (`grad * (Φ(x) + x φ(x))`), instead of the five element-wise ops of the composed
/// formula and their gradients. The dispatch chose `FlexAutodiff`.
fn on_autodiff<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let x = into_autodiff(x);
    let input = x.primitive.to_contiguous();
    let mut output = vec![0f32; input.storage::<f32>().len()];
    cpu::gelu_into(input.storage(), &mut output);
    let output = new_flex(output, input.layout().shape().clone());
    let prepared = fused_node(FusedGelu, [&x]);
    into_tensor(finish(prepared, || input, output))
}

/// The kernels on `f32` slices, in parallel chunks.
/// The exact GELU of `values` in place, vectorised, on the calling thread (an epilogue of a product's
/// output block).
pub(crate) fn gelu_in_place(values: &mut [f32]) {
    cpu::gelu_slice(values);
}

mod cpu {
    use multiversion::multiversion;
    use rayon::prelude::*;

    use crate::math;
    use crate::threading::CHUNK;

    #[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma"))]
    pub(super) fn gelu_slice(values: &mut [f32]) {
        for v in values {
            *v = math::gelu(*v);
        }
    }

    #[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma"))]
    fn gelu_into_slice(input: &[f32], output: &mut [f32]) {
        for (y, x) in output.iter_mut().zip(input) {
            *y = math::gelu(*x);
        }
    }

    #[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma"))]
    fn gelu_backward_slice(grad: &mut [f32], input: &[f32]) {
        for (g, x) in grad.iter_mut().zip(input) {
            *g *= math::gelu_derivative(*x);
        }
    }

    /// Exact GELU in place.
    pub fn gelu(values: &mut [f32]) {
        values.par_chunks_mut(CHUNK).for_each(gelu_slice);
    }

    /// `output <- gelu(input)`.
    pub fn gelu_into(input: &[f32], output: &mut [f32]) {
        assert_eq!(input.len(), output.len());
        output.par_chunks_mut(CHUNK).zip(input.par_chunks(CHUNK)).for_each(|(y, x)| gelu_into_slice(x, y));
    }

    /// `grad <- grad * gelu'(input)`: the GELU's backward pass.
    pub fn gelu_backward(grad: &mut [f32], input: &[f32]) {
        assert_eq!(grad.len(), input.len());
        grad.par_chunks_mut(CHUNK).zip(input.par_chunks(CHUNK)).for_each(|(g, x)| gelu_backward_slice(g, x));
    }
}
