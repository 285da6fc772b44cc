//! Fused ops as single nodes of burn's autodiff graph over burn-flex: moving tensors into and out of
//! burn-autodiff's tensor type, and registering a node with its own backward pass. Training on the CPU
//! default then runs the inference kernels plus one fused backward pass per op, instead of the
//! gradients of every tensor op the composed graph is made of.
//!
//! Every checkpoint strategy keeps these nodes. `Autodiff<Flex, C>` has the same float tensor,
//! `AutodiffTensor<Flex>`, for every `C: CheckpointStrategy`, and that tensor type is what the dispatch
//! recognises. The nodes are compute bound and keep their own state, and burn consults the strategy
//! only for memory-bound nodes (whether to recompute them from their parents), so the strategy a node
//! is prepared with is a type parameter that changes nothing: [`fused_node`] names [`NoCheckpointing`]
//! and the node is the same in the graph of `Autodiff<Flex, BalancedCheckpointing>`.

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::ops::{Backward, OpsKind};
use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use burn::tensor::backend::BackendTypes;
use burn_flex::{Flex, FlexTensor};

use crate::flex::cast;

/// burn-autodiff's tensor over burn-flex, `AutodiffTensor<Flex>` (not exported under its own name):
/// one type for all checkpoint strategies.
pub(crate) type AutodiffFlexTensor = <Autodiff<Flex> as BackendTypes>::FloatTensorPrimitive;

/// `x`'s autodiff tensor. Call only on the `FlexAutodiff` path.
pub(crate) fn into_autodiff<B: Backend, const D: usize>(x: Tensor<B, D>) -> AutodiffFlexTensor {
    let TensorPrimitive::Float(primitive) = x.into_primitive() else {
        unreachable!("the dispatch checked the float dtype")
    };
    cast(primitive).unwrap_or_else(|_| unreachable!("the dispatch checked the backend"))
}

/// The inverse of [`into_autodiff`].
pub(crate) fn into_tensor<B: Backend, const D: usize>(result: AutodiffFlexTensor) -> Tensor<B, D> {
    let primitive = cast(result).unwrap_or_else(|_| unreachable!("the dispatch checked the backend"));
    Tensor::from_primitive(TensorPrimitive::Float(primitive))
}

/// `op` prepared as one compute-bound node over `parents`: tracked when a parent requires a gradient.
pub(crate) fn fused_node<Op: Backward<Flex, N>, const N: usize>(
    op: Op,
    parents: [&AutodiffFlexTensor; N],
) -> OpsKind<Op, Flex, Op::State, NoCheckpointing, N> {
    op.prepare::<NoCheckpointing>(parents.map(|parent| parent.node.clone())).compute_bound().stateful()
}

/// The output of a fused op as an autodiff tensor: tracked (keeping `state` for the backward pass)
/// when an input requires a gradient, untracked otherwise.
pub(crate) fn finish<Op, const N: usize>(
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
