//! Llama's SwiGLU gate, `silu(gate) * up`: forward and backward kernels, the autodiff node and the
//! composed reference.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::prelude::*;
use burn::tensor::activation::silu;
use burn_flex::{Flex, FlexTensor};

use crate::autodiff::{finish, fused_node, into_autodiff, into_tensor};
use crate::dispatch::{Op, Path};
use crate::flex::{self, new_flex};

static SILU_MUL: Op = Op::new("silu_mul");

/// `silu(gate) * up`, Llama's SwiGLU gate, in one pass.
pub fn silu_mul<B: Backend, const D: usize>(gate: Tensor<B, D>, up: Tensor<B, D>) -> Tensor<B, D> {
    if gate.dims() != up.dims() {
        return composed(gate, up);
    }
    match SILU_MUL.path::<B>([gate.dtype(), up.dtype()]) {
        Path::FlexInference => flex::in_place(gate, |gate| cpu::silu_mul(gate, flex::into_flex(up).storage())),
        Path::FlexAutodiff => on_autodiff(gate, up),
        Path::Composed => composed(gate, up),
    }
}

/// `silu(gate) * up`, the SwiGLU gate.
pub fn composed<B: Backend, const D: usize>(gate: Tensor<B, D>, up: Tensor<B, D>) -> Tensor<B, D> {
    silu(gate) * up
}

#[derive(Debug)]
struct FusedSiluMul;

impl Backward<Flex, 2> for FusedSiluMul {
    /// The gate and up projections.
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let (gate, up) = ops.state;
        let grad = grads.consume::<Flex>(&ops.node).to_contiguous();
        let mut grad_gate = vec![0f32; gate.storage::<f32>().len()];
        let mut grad_up = vec![0f32; grad_gate.len()];
        cpu::silu_mul_backward(gate.storage(), up.storage(), grad.storage(), &mut grad_gate, &mut grad_up);
        let [gate_node, up_node] = ops.parents;
        let shape = gate.layout().shape().clone();
        for (node, grad) in [(gate_node, grad_gate), (up_node, grad_up)] {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, new_flex(grad, shape.clone()));
            }
        }
    }
}

/// `silu(gate) * up` on `Autodiff<Flex>` tensors of one shape as one graph node. The dispatch chose
/// `FlexAutodiff` and the caller checked the shapes.
fn on_autodiff<B: Backend, const D: usize>(gate: Tensor<B, D>, up: Tensor<B, D>) -> Tensor<B, D> {
    let (gate, up) = (into_autodiff(gate), into_autodiff(up));
    let (gate_values, up_values) = (gate.primitive.to_contiguous(), up.primitive.to_contiguous());
    let mut output = gate_values.storage::<f32>().to_vec();
    cpu::silu_mul(&mut output, up_values.storage());
    let output = new_flex(output, gate_values.layout().shape().clone());
    let prepared = fused_node(FusedSiluMul, [&gate, &up]);
    into_tensor(finish(prepared, || (gate_values, up_values), output))
}

/// The kernels on `f32` slices, in parallel chunks.
mod cpu {
    use multiversion::multiversion;
    use rayon::prelude::*;

    use crate::math;
    use crate::threading::CHUNK;

    #[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma"))]
    fn silu_mul_slice(gate: &mut [f32], up: &[f32]) {
        for (g, u) in gate.iter_mut().zip(up) {
            *g = math::silu(*g) * u;
        }
    }

    #[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma"))]
    fn silu_mul_backward_slice(gate: &[f32], up: &[f32], grad: &[f32], grad_gate: &mut [f32], grad_up: &mut [f32]) {
        for ((((g, u), dy), dg), du) in gate.iter().zip(up).zip(grad).zip(grad_gate.iter_mut()).zip(grad_up.iter_mut())
        {
            let sigmoid = 1.0 / (1.0 + math::exp(-*g));
            // silu'(g) = σ(g) (1 + g (1 - σ(g))).
            *dg = dy * u * sigmoid * (1.0 + g * (1.0 - sigmoid));
            *du = dy * g * sigmoid;
        }
    }

    /// `gate <- silu(gate) * up`.
    pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
        assert_eq!(gate.len(), up.len());
        gate.par_chunks_mut(CHUNK).zip(up.par_chunks(CHUNK)).for_each(|(g, u)| silu_mul_slice(g, u));
    }

    /// The backward pass of `silu(gate) * up`: the gradients of `gate` and `up` for output gradient `grad`.
    pub fn silu_mul_backward(gate: &[f32], up: &[f32], grad: &[f32], grad_gate: &mut [f32], grad_up: &mut [f32]) {
        let n = gate.len();
        assert!(up.len() == n && grad.len() == n && grad_gate.len() == n && grad_up.len() == n);
        grad_gate
            .par_chunks_mut(CHUNK)
            .zip(grad_up.par_chunks_mut(CHUNK))
            .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)).zip(grad.par_chunks(CHUNK)))
            .for_each(|((dg, du), ((g, u), dy))| silu_mul_backward_slice(g, u, dy, dg, du));
    }
}
