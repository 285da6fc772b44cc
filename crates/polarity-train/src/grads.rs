//! Gradient utilities burn 0.21 lacks: the global gradient norm and clipping by it, and HF Trainer's
//! weight-decay parameter groups.
//!
//! burn's `GradientClipping::Norm` clips each parameter's gradient by its *own* norm; PyTorch's
//! `clip_grad_norm_` (what HF Trainer calls) scales *all* gradients by one factor computed from the
//! norm of their concatenation. [`clip_grad_norm`] does the latter.

use std::collections::HashSet;

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use polarity_core::params::{EnumVariants, float_params};

/// One float parameter of a module.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamInfo {
    /// The dotted path of the parameter (`encoder.layer.0.output.layer_norm.gamma`).
    pub name: String,
    /// burn's parameter id (what optimiser state and gradients are keyed by).
    pub id: ParamId,
    /// The parameter's shape.
    pub shape: Vec<usize>,
}

/// The parameters split as HF Trainer splits them for weight decay.
///
/// HF Trainer's `get_decay_parameter_names` decays every parameter except biases and the weights of
/// normalisation layers. Here a parameter goes to [`no_decay`](Self::no_decay) when its path
/// name contains `bias` (every `Linear` bias), when it belongs to a module whose type name contains
/// `Norm` (burn's `LayerNorm`, `RmsNorm`, `GroupNorm`, `BatchNorm`: their `gamma` and `beta`), or when
/// a module on its path is named like a norm layer (`layer_norm`, `LayerNorm`, `input_layernorm`,
/// `rms_norm`, `norm`). For BERT and DistilBERT this is exactly HF's split: every 1-D parameter is
/// excluded, embeddings and weight matrices are decayed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParamGroups {
    /// Parameters that get weight decay.
    pub decay: Vec<ParamInfo>,
    /// Biases and normalisation weights: no weight decay.
    pub no_decay: Vec<ParamInfo>,
}

impl ParamGroups {
    /// The groups of `module`'s float parameters.
    pub fn of<B: Backend, M: Module<B>>(module: &M) -> Self {
        let mut groups = ParamGroups::default();
        for param in float_params::<B, M>(module, EnumVariants::Keep) {
            let no_decay = is_no_decay(&param.path, &param.containers);
            let info = ParamInfo { name: param.name(), id: param.id, shape: param.shape };
            if no_decay { groups.no_decay.push(info) } else { groups.decay.push(info) }
        }
        groups
    }

    /// The ids of the parameters without weight decay.
    pub fn no_decay_ids(&self) -> HashSet<ParamId> {
        self.no_decay.iter().map(|p| p.id).collect()
    }
}

fn is_no_decay(path: &[String], containers: &[String]) -> bool {
    let in_norm_module = containers.last().is_some_and(|c| c.to_ascii_lowercase().contains("norm"));
    let is_bias = path.last().is_some_and(|name| name.to_ascii_lowercase().contains("bias"));
    let under_norm_layer = path.iter().rev().skip(1).any(|segment| {
        let segment = segment.to_ascii_lowercase();
        segment.contains("layernorm") || segment.contains("rmsnorm") || segment == "norm" || segment.ends_with("_norm")
    });
    in_norm_module || is_bias || under_norm_layer
}

struct SquaredNormVisitor<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    sum: Option<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredNormVisitor<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(grad) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let squared = grad.square().sum();
            self.sum = Some(match self.sum.take() {
                Some(sum) => sum + squared,
                None => squared,
            });
        }
    }
}

struct ScaleVisitor<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for ScaleVisitor<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(grad) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads.register::<B::InnerBackend, D>(param.id, grad.mul_scalar(self.factor));
        }
    }
}

/// The L2 norm of all of `module`'s gradients in `grads` taken together (0 when there are none).
pub fn grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(module: &M, grads: &GradientsParams) -> f64 {
    let mut visitor = SquaredNormVisitor::<B> { grads, sum: None };
    Module::<B>::visit(module, &mut visitor);
    match visitor.sum {
        Some(sum) => sum.into_scalar().elem::<f64>().sqrt(),
        None => 0.0,
    }
}

/// Multiplies every gradient of `module` in `grads` by `factor`.
pub fn scale_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    mut grads: GradientsParams,
    factor: f64,
) -> GradientsParams {
    Module::<B>::visit(module, &mut ScaleVisitor { grads: &mut grads, factor });
    grads
}

/// PyTorch's `clip_grad_norm_`: when the global norm of the gradients exceeds `max_norm`, scales them
/// all by `max_norm / (norm + 1e-6)`. Returns the clipped gradients and the norm *before* clipping.
///
/// A non-finite norm is returned as is, with the gradients untouched; the trainer turns it into an
/// error.
pub fn clip_grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: GradientsParams,
    max_norm: f64,
) -> (GradientsParams, f64) {
    let norm = grad_norm::<B, M>(module, &grads);
    if !norm.is_finite() {
        return (grads, norm);
    }
    let factor = clip_factor(norm, max_norm);
    if factor < 1.0 { (scale_grads::<B, M>(module, grads, factor), norm) } else { (grads, norm) }
}

/// The factor [`clip_grad_norm`] scales gradients of global norm `norm` by: `max_norm / (norm + 1e-6)`
/// when that is below 1, else 1.
pub fn clip_factor(norm: f64, max_norm: f64) -> f64 {
    (max_norm / (norm + 1e-6)).min(1.0)
}

struct SplitVisitor<'a> {
    grads: &'a mut GradientsParams,
    taken: GradientsParams,
    ids: &'a HashSet<ParamId>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SplitVisitor<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if self.ids.contains(&param.id)
            && let Some(grad) = self.grads.remove::<B::InnerBackend, D>(param.id)
        {
            self.taken.register::<B::InnerBackend, D>(param.id, grad);
        }
    }
}

/// Moves the gradients of the parameters in `ids` out of `grads`: returns `(rest, taken)`.
pub fn split_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    mut grads: GradientsParams,
    ids: &HashSet<ParamId>,
) -> (GradientsParams, GradientsParams) {
    let mut visitor = SplitVisitor { grads: &mut grads, taken: GradientsParams::new(), ids };
    Module::<B>::visit(module, &mut visitor);
    let taken = visitor.taken;
    (grads, taken)
}
