//! Rotary position embedding in transformers' `rotate_half` layout: forward and backward kernels, the
//! autodiff node and the composed reference.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::prelude::*;
use burn_flex::{Flex, FlexTensor};

use crate::autodiff::{finish, fused_node, into_autodiff, into_tensor};
use crate::dispatch::{Op, Path};
use crate::flex::{self, new_flex};

static ROTARY: Op = Op::new("rotary");

/// Rotary position embedding of `[batch, seq, heads * head_dim]` projections with `[seq, head_dim]`
/// `cos`/`sin` tables in transformers' `rotate_half` layout (each frequency in both halves of a head).
pub fn rotary<B: Backend>(x: Tensor<B, 3>, cos: Tensor<B, 2>, sin: Tensor<B, 2>, head_dim: usize) -> Tensor<B, 3> {
    let [_, seq_len, width] = x.dims();
    let fits = head_dim > 0
        && head_dim.is_multiple_of(2)
        && width.is_multiple_of(head_dim)
        && seq_len > 0
        && cos.dims() == [seq_len, head_dim]
        && sin.dims() == cos.dims();
    if !fits {
        return composed(x, cos, sin, head_dim);
    }
    match ROTARY.path::<B>([x.dtype(), cos.dtype(), sin.dtype()]) {
        Path::FlexInference => {
            let (cos, sin) = (flex::into_flex(cos), flex::into_flex(sin));
            flex::in_place(x, |values| cpu::rotary(values, width, cos.storage(), sin.storage(), head_dim))
        }
        Path::FlexAutodiff => on_autodiff(x, cos, sin, head_dim),
        Path::Composed => composed(x, cos, sin, head_dim),
    }
}

/// Rotary embedding of `[batch, seq, heads * head_dim]` with `[seq, head_dim]` tables:
/// `x * cos + rotate_half(x) * sin` per head.
pub fn composed<B: Backend>(x: Tensor<B, 3>, cos: Tensor<B, 2>, sin: Tensor<B, 2>, head_dim: usize) -> Tensor<B, 3> {
    let [batch, seq_len, width] = x.dims();
    let x = x.reshape([batch, seq_len, width / head_dim, head_dim]);
    let cos = cos.reshape([1, seq_len, 1, head_dim]);
    let sin = sin.reshape([1, seq_len, 1, head_dim]);
    let half = head_dim / 2;
    let rotated = Tensor::cat(vec![x.clone().narrow(3, half, half).neg(), x.clone().narrow(3, 0, half)], 3);
    (x * cos + rotated * sin).reshape([batch, seq_len, width])
}

#[derive(Debug)]
struct FusedRotary;

impl Backward<Flex, 1> for FusedRotary {
    /// The cos and sin tables, the row width and the head size.
    type State = (FlexTensor, FlexTensor, usize, usize);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let (cos, sin, width, head_dim) = ops.state;
        let mut grad = grads.consume::<Flex>(&ops.node).to_contiguous();
        let [input_node] = ops.parents;
        if let Some(node) = input_node {
            cpu::rotary_backward(grad.storage_mut::<f32>(), width, cos.storage(), sin.storage(), head_dim);
            grads.register::<Flex>(node.id, grad);
        }
    }
}

/// Rotary embedding of an `Autodiff<Flex>` tensor as one graph node; the tables are constants (no
/// gradient flows to them). The dispatch chose `FlexAutodiff` and the caller checked the shapes.
fn on_autodiff<B: Backend>(x: Tensor<B, 3>, cos: Tensor<B, 2>, sin: Tensor<B, 2>, head_dim: usize) -> Tensor<B, 3> {
    let width = x.dims()[2];
    let (cos, sin) = (into_autodiff(cos).primitive.to_contiguous(), into_autodiff(sin).primitive.to_contiguous());
    let x = into_autodiff(x);
    let mut output = x.primitive.to_contiguous();
    // A fresh buffer: the input may be shared (it is a projection's output that others may read).
    output = new_flex(output.storage::<f32>().to_vec(), output.layout().shape().clone());
    cpu::rotary(output.storage_mut::<f32>(), width, cos.storage(), sin.storage(), head_dim);
    let prepared = fused_node(FusedRotary, [&x]);
    into_tensor(finish(prepared, || (cos, sin, width, head_dim), output))
}

/// The kernels on `f32` slices, row-parallel.
mod cpu {
    use multiversion::multiversion;
    use rayon::prelude::*;

    #[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma"))]
    fn rotate_rows(rows: &mut [f32], cos: &[f32], sin: &[f32], head_dim: usize) {
        let half = head_dim / 2;
        for head in rows.chunks_exact_mut(head_dim) {
            let (first, second) = head.split_at_mut(half);
            for j in 0..half {
                let (a, b) = (first[j], second[j]);
                first[j] = a * cos[j] - b * sin[j];
                second[j] = b * cos[half + j] + a * sin[half + j];
            }
        }
    }

    /// Rotary embedding in place on `[batch, seq, width]` rows (`width = heads * head_dim`) with
    /// `[seq, head_dim]` tables in transformers' `rotate_half` layout: `x * cos + rotate_half(x) * sin`
    /// per head.
    pub fn rotary(values: &mut [f32], width: usize, cos: &[f32], sin: &[f32], head_dim: usize) {
        rotate_each_row(values, width, cos, sin, head_dim, rotate_rows);
    }

    /// Runs `rotate` on each `[width]` row of `values` with the `cos`/`sin` table rows of its position
    /// (row index modulo the tables' sequence length), rows in parallel.
    fn rotate_each_row(
        values: &mut [f32],
        width: usize,
        cos: &[f32],
        sin: &[f32],
        head_dim: usize,
        rotate: fn(&mut [f32], &[f32], &[f32], usize),
    ) {
        assert!(
            head_dim > 0
                && head_dim.is_multiple_of(2)
                && width > 0
                && width.is_multiple_of(head_dim)
                && values.len().is_multiple_of(width)
        );
        assert!(cos.len().is_multiple_of(head_dim) && sin.len() == cos.len());
        let seq_len = cos.len() / head_dim;
        assert!(seq_len > 0 && (values.len() / width).is_multiple_of(seq_len));
        values.par_chunks_mut(width).enumerate().for_each(|(row, values)| {
            let table = (row % seq_len) * head_dim..(row % seq_len + 1) * head_dim;
            rotate(values, &cos[table.clone()], &sin[table], head_dim);
        });
    }

    #[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma"))]
    fn rotate_rows_backward(rows: &mut [f32], cos: &[f32], sin: &[f32], head_dim: usize) {
        let half = head_dim / 2;
        for head in rows.chunks_exact_mut(head_dim) {
            let (first, second) = head.split_at_mut(half);
            for j in 0..half {
                // The transpose of the forward rotation: a' = a c1 - b s1, b' = b c2 + a s2.
                let (da, db) = (first[j], second[j]);
                first[j] = da * cos[j] + db * sin[half + j];
                second[j] = db * cos[half + j] - da * sin[j];
            }
        }
    }

    /// The backward pass of [`rotary`] in place on the output's gradient (the rotation is linear).
    pub fn rotary_backward(grad: &mut [f32], width: usize, cos: &[f32], sin: &[f32], head_dim: usize) {
        rotate_each_row(grad, width, cos, sin, head_dim, rotate_rows_backward);
    }
}
