//! Listing a module's float parameters with their paths, owning module types and shapes.
//!
//! Checkpoint loaders (matching module paths to checkpoint keys) and the trainer (splitting
//! parameters into weight-decay groups) all need the same walk over a burn module; this is it, once.

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::prelude::*;

/// One float parameter of a module.
#[derive(Clone, Debug, PartialEq)]
pub struct FloatParam {
    /// Module path segments, the parameter's own name last (`["encoder", "layer", "0", ..., "weight"]`).
    pub path: Vec<String>,
    /// The container type of each module on the path, outermost first, as burn's derive names them
    /// (`Struct:Linear`, `Enum:BaseLinear`, `Vec`, ...).
    pub containers: Vec<String>,
    /// burn's parameter id (what optimiser state and gradients are keyed by).
    pub id: ParamId,
    /// The shape in burn's layout (`Linear` weights are `[in, out]`).
    pub shape: Vec<usize>,
}

impl FloatParam {
    /// The dotted path (`encoder.layer.0.output.dense.weight`).
    pub fn name(&self) -> String {
        self.path.join(".")
    }

    /// The innermost struct or enum the parameter belongs to (`Struct:LayerNorm`), or `""`.
    pub fn module_type(&self) -> &str {
        self.containers
            .iter()
            .rev()
            .find(|c| c.starts_with("Struct:") || c.starts_with("Enum:"))
            .map_or("", String::as_str)
    }

    /// Whether the parameter is a `Linear` layer's weight, stored transposed relative to PyTorch.
    pub fn is_linear_weight(&self) -> bool {
        self.containers.last().is_some_and(|c| c == "Struct:Linear") && self.shape.len() == 2
    }

    /// The shape in PyTorch's layout (`Linear` weights reversed to `[out, in]`).
    pub fn pytorch_shape(&self) -> Vec<usize> {
        let mut shape = self.shape.clone();
        if self.is_linear_weight() {
            shape.reverse();
        }
        shape
    }
}

/// How enum modules appear in paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnumVariants {
    /// `base_layer.Dense.weight`: the variant is a path segment (burn's own naming).
    Keep,
    /// `base_layer.weight`: variants are left out, as checkpoints name them (burn-store's
    /// `skip_enum_variants`).
    Skip,
}

/// Every float parameter of `module`, in visiting order, without initialising lazy parameters (their
/// shapes are read lazily; burn-store's `collect` would draw every random weight).
///
/// ```
/// use burn::backend::NdArray;
/// use burn::nn::LinearConfig;
/// use polarity_core::params::{EnumVariants, float_params};
///
/// let layer = LinearConfig::new(3, 2).init::<NdArray>(&Default::default());
/// let params = float_params::<NdArray, _>(&layer, EnumVariants::Keep);
/// assert_eq!(params.iter().map(|p| p.name()).collect::<Vec<_>>(), ["weight", "bias"]);
/// assert_eq!(params[0].pytorch_shape(), [2, 3]);
/// ```
pub fn float_params<B: Backend, M: Module<B>>(module: &M, enum_variants: EnumVariants) -> Vec<FloatParam> {
    let mut lister = Lister { enum_variants, path: Vec::new(), containers: Vec::new(), found: Vec::new() };
    module.visit(&mut lister);
    lister.found
}

struct Lister {
    enum_variants: EnumVariants,
    path: Vec<String>,
    containers: Vec<String>,
    found: Vec<FloatParam>,
}

impl Lister {
    fn names_segment(&self, container_type: &str) -> bool {
        self.enum_variants == EnumVariants::Keep || !container_type.starts_with("Enum:")
    }
}

impl<B: Backend> ModuleVisitor<B> for Lister {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        if self.names_segment(container_type) {
            self.path.push(name.to_string());
        }
        self.containers.push(container_type.to_string());
    }

    fn exit_module(&mut self, _name: &str, container_type: &str) {
        if self.names_segment(container_type) {
            self.path.pop();
        }
        self.containers.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.found.push(FloatParam {
            path: self.path.clone(),
            containers: self.containers.clone(),
            id: param.id,
            shape: param.lazy_shape().to_vec(),
        });
    }
}

struct Materializer;

impl<B: Backend> ModuleVisitor<B> for Materializer {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        // A lazy parameter draws its initial values on its first read.
        let _ = param.val();
    }
}

/// Draws the values of `module`'s lazily initialised parameters now, from the backend's generator as it
/// stands, rather than at their first use (where a training step's reseeding would decide them).
pub fn materialize<B: Backend, M: Module<B>>(module: &M) {
    module.visit(&mut Materializer);
}

struct Checksum<B: Backend> {
    sum: Option<Tensor<B, 1>>,
}

impl<B: Backend> ModuleVisitor<B> for Checksum<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let value = param.val();
        // The squares weigh each value differently from the plain sum, so swapped or sign-flipped values show.
        let term = value.clone().sum() + value.square().sum().mul_scalar(0.5);
        self.sum = Some(match self.sum.take() {
            Some(sum) => sum + term,
            None => term,
        });
    }
}

/// A number summarising all of `module`'s float parameter values (their sum plus half their sum of
/// squares): equal for equal weights, so replicas that should hold the same model can compare it.
pub fn weights_checksum<B: Backend, M: Module<B>>(module: &M) -> f64 {
    let mut checksum = Checksum::<B> { sum: None };
    module.visit(&mut checksum);
    checksum.sum.map_or(0.0, |sum| sum.into_scalar().elem::<f64>())
}
