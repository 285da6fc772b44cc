//! The fused attention kernel as one operation of burn's autodiff graph over burn-flex, with its own
//! backward pass: training on the CPU default then runs the same kernels as inference, plus a fused
//! backward, instead of the ~15 tensor ops (and their gradients) of the composed graph.

use std::any::TypeId;
use std::sync::Arc;

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::prelude::*;
use burn::tensor::backend::BackendTypes;
use burn::tensor::{DType, TensorPrimitive};
use burn_flex::{Flex, FlexTensor};

use crate::cpu::{self, AttentionShape, WeightDropout};
use crate::flex::{cast, new_flex};

/// burn-autodiff's tensor over burn-flex (the type is not exported under its own name).
type AutodiffFlexTensor = <Autodiff<Flex> as BackendTypes>::FloatTensorPrimitive;

/// Whether `x` is a float32 tensor of autodiff over burn-flex.
pub(crate) fn accepts<B: Backend, const D: usize>(x: &Tensor<B, D>) -> bool {
    TypeId::of::<B::FloatTensorPrimitive>() == TypeId::of::<AutodiffFlexTensor>() && x.dtype() == DType::F32
}

fn into_autodiff<B: Backend, const D: usize>(x: Tensor<B, D>) -> AutodiffFlexTensor {
    let TensorPrimitive::Float(primitive) = x.into_primitive() else {
        unreachable!("`accepts` checked the float dtype")
    };
    cast(primitive).unwrap_or_else(|_| unreachable!("`accepts` checked the backend"))
}

/// The output of a fused op as an autodiff tensor: tracked (keeping `state` for the backward pass)
/// when an input requires a gradient, untracked otherwise.
fn finish<Op, const N: usize>(
    prepared: OpsKind<Op, Flex, Op::State, NoCheckpointing, N>,
    state: impl FnOnce() -> Op::State,
    output: FlexTensor,
) -> AutodiffFlexTensor
where
    Op: Backward<Flex, N>,
    Op::State: Clone + Send + std::fmt::Debug + 'static,
{
    match prepared {
        OpsKind::Tracked(prep) => prep.finish(state(), output),
        OpsKind::UnTracked(prep) => prep.finish(output),
    }
}

/// The inverse of [`into_autodiff`].
fn into_tensor<B: Backend, const D: usize>(result: AutodiffFlexTensor) -> Tensor<B, D> {
    let primitive = cast(result).unwrap_or_else(|_| unreachable!("`accepts` checked the backend"));
    Tensor::from_primitive(TensorPrimitive::Float(primitive))
}

/// What the backward pass needs: the inputs, the softmax weights and the dropout seed.
#[derive(Debug, Clone)]
struct Saved {
    query: FlexTensor,
    key: FlexTensor,
    value: FlexTensor,
    weights: Arc<Vec<f32>>,
    shape: AttentionShape,
    dropout: Option<WeightDropout>,
}

#[derive(Debug)]
struct FusedAttention;

impl Backward<Flex, 3> for FusedAttention {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let Saved { query, key, value, weights, shape, dropout } = ops.state;
        let grad_output = grads.consume::<Flex>(&ops.node).to_contiguous();
        let mut grad_query = vec![0f32; query.storage::<f32>().len()];
        let mut grad_key = vec![0f32; key.storage::<f32>().len()];
        let mut grad_value = vec![0f32; grad_key.len()];
        cpu::attention_backward(
            query.storage(),
            key.storage(),
            value.storage(),
            &weights,
            shape,
            dropout,
            grad_output.storage(),
            [&mut grad_query, &mut grad_key, &mut grad_value],
        );
        let [query_node, key_node, value_node] = ops.parents;
        for (node, grad, like) in
            [(query_node, grad_query, &query), (key_node, grad_key, &key), (value_node, grad_value, &value)]
        {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, new_flex(grad, like.layout().shape().clone()));
            }
        }
    }
}

/// Fused attention on `Autodiff<Flex>` tensors (see [`crate::attention`]); the caller has checked
/// [`accepts`] on all three and the shapes.
pub(crate) fn attention<B: Backend>(
    query: Tensor<B, 3>,
    key: Tensor<B, 3>,
    value: Tensor<B, 3>,
    keep: &[f32],
    shape: AttentionShape,
    dropout: Option<WeightDropout>,
) -> Tensor<B, 3> {
    let (query, key, value) = (into_autodiff(query), into_autodiff(key), into_autodiff(value));
    let prep = FusedAttention
        .prepare::<NoCheckpointing>([query.node.clone(), key.node.clone(), value.node.clone()])
        .compute_bound()
        .stateful();
    let inputs = [&query, &key, &value].map(|x| x.primitive.to_contiguous());
    let [q, k, v] = &inputs;
    let mut output = vec![0f32; q.storage::<f32>().len()];
    let output_shape = q.layout().shape().clone();
    let result = match prep {
        OpsKind::Tracked(prep) => {
            let mut weights = vec![0f32; shape.batch * shape.heads * shape.seq_len * shape.seq_len];
            cpu::attention_saving_weights(
                q.storage(),
                k.storage(),
                v.storage(),
                keep,
                shape,
                dropout,
                &mut output,
                &mut weights,
            );
            let [query, key, value] = inputs;
            let saved = Saved { query, key, value, weights: Arc::new(weights), shape, dropout };
            prep.finish(saved, new_flex(output, output_shape))
        }
        // Nothing to differentiate (no input requires a gradient): the inference kernel, and
        // burn's dropout semantics still apply to the weights.
        OpsKind::UnTracked(prep) => {
            if dropout.is_some() {
                let mut weights = vec![0f32; shape.batch * shape.heads * shape.seq_len * shape.seq_len];
                cpu::attention_saving_weights(
                    q.storage(),
                    k.storage(),
                    v.storage(),
                    keep,
                    shape,
                    dropout,
                    &mut output,
                    &mut weights,
                );
            } else {
                cpu::attention(q.storage(), k.storage(), v.storage(), keep, shape, &mut output);
            }
            prep.finish(new_flex(output, output_shape))
        }
    };
    into_tensor(result)
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
/// formula and their gradients. The caller has checked [`accepts`].
pub(crate) fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let x = into_autodiff(x);
    let input = x.primitive.to_contiguous();
    let mut output = vec![0f32; input.storage::<f32>().len()];
    cpu::gelu_into(input.storage(), &mut output);
    let output = new_flex(output, input.layout().shape().clone());
    let prepared = FusedGelu.prepare::<NoCheckpointing>([x.node.clone()]).compute_bound().stateful();
    into_tensor(finish(prepared, || input, output))
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

/// `silu(gate) * up` on `Autodiff<Flex>` tensors of one shape as one graph node. The caller has
/// checked [`accepts`] on both and the shapes.
pub(crate) fn silu_mul<B: Backend, const D: usize>(gate: Tensor<B, D>, up: Tensor<B, D>) -> Tensor<B, D> {
    let (gate, up) = (into_autodiff(gate), into_autodiff(up));
    let (gate_values, up_values) = (gate.primitive.to_contiguous(), up.primitive.to_contiguous());
    let mut output = gate_values.storage::<f32>().to_vec();
    cpu::silu_mul(&mut output, up_values.storage());
    let output = new_flex(output, gate_values.layout().shape().clone());
    let prepared =
        FusedSiluMul.prepare::<NoCheckpointing>([gate.node.clone(), up.node.clone()]).compute_bound().stateful();
    into_tensor(finish(prepared, || (gate_values, up_values), output))
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

/// RMSNorm on `Autodiff<Flex>` tensors as one graph node. The caller has checked [`accepts`] on both
/// and the widths.
pub(crate) fn rms_norm<B: Backend, const D: usize>(x: Tensor<B, D>, weight: Tensor<B, 1>, eps: f64) -> Tensor<B, D> {
    let (x, weight) = (into_autodiff(x), into_autodiff(weight));
    let (input, weight_values) = (x.primitive.to_contiguous(), weight.primitive.to_contiguous());
    let mut output = vec![0f32; input.storage::<f32>().len()];
    cpu::rms_norm(input.storage(), weight_values.storage(), eps as f32, &mut output);
    let output = new_flex(output, input.layout().shape().clone());
    let prepared =
        FusedRmsNorm.prepare::<NoCheckpointing>([x.node.clone(), weight.node.clone()]).compute_bound().stateful();
    into_tensor(finish(prepared, || (input, weight_values, eps as f32), output))
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
/// gradient flows to them). The caller has checked [`accepts`] on all three and the shapes.
pub(crate) fn rotary<B: Backend>(
    x: Tensor<B, 3>,
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
    head_dim: usize,
) -> Tensor<B, 3> {
    let width = x.dims()[2];
    let (cos, sin) = (into_autodiff(cos).primitive.to_contiguous(), into_autodiff(sin).primitive.to_contiguous());
    let x = into_autodiff(x);
    let mut output = x.primitive.to_contiguous();
    // A fresh buffer: the input may be shared (it is a projection's output that others may read).
    output = new_flex(output.storage::<f32>().to_vec(), output.layout().shape().clone());
    cpu::rotary(output.storage_mut::<f32>(), width, cos.storage(), sin.storage(), head_dim);
    let prepared = FusedRotary.prepare::<NoCheckpointing>([x.node.clone()]).compute_bound().stateful();
    into_tensor(finish(prepared, || (cos, sin, width, head_dim), output))
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
/// one fused, row-parallel pass. The caller has checked [`accepts`] on all three and the widths.
pub(crate) fn layer_norm<B: Backend, const D: usize>(
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
    let prep = FusedLayerNorm
        .prepare::<NoCheckpointing>([x.node.clone(), gamma.node.clone(), beta.node.clone()])
        .compute_bound()
        .stateful();
    into_tensor(finish(prep, || SavedNorm { input, gamma: gamma_values, stats: Arc::new(stats) }, output))
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
    if !accepts(&x) || x.dims()[1] != matrix.dims()[1] {
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
    let prepared = FrozenLinear.prepare::<NoCheckpointing>([x.node.clone()]).compute_bound().stateful();
    Ok(into_tensor(finish(prepared, || matrix, output)))
}
