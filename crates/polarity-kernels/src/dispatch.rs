//! The one place that decides which implementation an op runs.
//!
//! The kernels are a fast path for one backend inside code that is generic over all of them, so the
//! backend is recognised by its float tensor type at run time (a `TypeId` test), not by a trait bound
//! every model and caller would have to carry. Each op asks its [`Op`] for the [`Path`] of its
//! inputs; a float32 tensor on a CPU backend that the kernels do not cover (ndarray, or a wrapper
//! around burn-flex) takes the composed path, and that is logged once per op, so a slow CPU run does
//! not go unexplained.

use std::any::{TypeId, type_name};
use std::sync::Once;

use burn::prelude::*;
use burn::tensor::DType;
use burn_flex::FlexTensor;

use crate::autodiff::AutodiffFlexTensor;

/// Which implementation an op runs for tensors of a backend and float type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// burn-flex without autodiff, float32 (inference on the CPU default): the fused kernels, in
    /// place where the input's buffer is not shared.
    FlexInference,
    /// Autodiff over burn-flex with any checkpoint strategy, float32 (training on the CPU default):
    /// the fused kernels as single graph nodes with fused backward passes.
    FlexAutodiff,
    /// Every other backend or float type: the op composed from burn's tensor ops.
    Composed,
}

impl Path {
    /// The path of tensors of backend `B` and float type `dtype`.
    pub fn of<B: Backend>(dtype: DType) -> Self {
        if dtype != DType::F32 {
            return Self::Composed;
        }
        let float = TypeId::of::<B::FloatTensorPrimitive>();
        if float == TypeId::of::<FlexTensor>() {
            Self::FlexInference
        } else if float == TypeId::of::<AutodiffFlexTensor>() {
            Self::FlexAutodiff
        } else {
            Self::Composed
        }
    }
}

/// The path the ops take for `x` (see [`Path`]).
///
/// ```
/// use burn::backend::{Autodiff, Flex, NdArray};
/// use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
/// use burn::prelude::*;
/// use polarity_kernels::{Path, path_of};
///
/// let device = Default::default();
/// assert_eq!(path_of(&Tensor::<Flex, 1>::zeros([2], &device)), Path::FlexInference);
/// let x = Tensor::<Autodiff<Flex, BalancedCheckpointing>, 1>::zeros([2], &device);
/// assert_eq!(path_of(&x), Path::FlexAutodiff);
/// assert_eq!(path_of(&Tensor::<NdArray, 1>::zeros([2], &Default::default())), Path::Composed);
/// ```
pub fn path_of<B: Backend, const D: usize>(x: &Tensor<B, D>) -> Path {
    Path::of::<B>(x.dtype())
}

/// One op's entry to the dispatch: its name, and whether its fallback on a CPU backend was logged.
pub(crate) struct Op {
    name: &'static str,
    fallback_logged: Once,
}

impl Op {
    /// The entry of the op called `name` in the log.
    pub(crate) const fn new(name: &'static str) -> Self {
        Self { name, fallback_logged: Once::new() }
    }

    /// The path for inputs of backend `B` with these float types: [`Path::of`] when all are float32,
    /// composed otherwise. The first float32 call on a CPU backend that lands on the composed path
    /// is logged.
    pub(crate) fn path<B: Backend>(&self, dtypes: impl IntoIterator<Item = DType>) -> Path {
        if !dtypes.into_iter().all(|dtype| dtype == DType::F32) {
            return Path::Composed;
        }
        let path = Path::of::<B>(DType::F32);
        if path == Path::Composed && on_cpu::<B>() {
            self.fallback_logged.call_once(|| {
                tracing::warn!(
                    op = self.name,
                    backend = type_name::<B>(),
                    "{} on float32 CPU tensors takes the composed path: the fused kernels cover burn-flex, with or \
                     without autodiff, only",
                    self.name,
                )
            });
        }
        path
    }
}

/// Whether `B` computes on the CPU: burn-flex's or ndarray's device (also under autodiff).
fn on_cpu<B: Backend>() -> bool {
    let device = TypeId::of::<B::Device>();
    device == TypeId::of::<burn_flex::FlexDevice>() || device == TypeId::of::<burn::backend::ndarray::NdArrayDevice>()
}
