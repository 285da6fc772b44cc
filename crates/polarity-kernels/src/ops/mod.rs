//! One module per op, each holding the op's entry point (which asks the dispatch for its path), its
//! composed reference, its autodiff node with the fused backward pass, and its CPU kernels.

pub(crate) mod attention;
pub(crate) mod dropout;
pub(crate) mod gelu;
pub(crate) mod layer_norm;
pub(crate) mod linear;
pub(crate) mod rms_norm;
pub(crate) mod rope;
pub(crate) mod silu_gate;
