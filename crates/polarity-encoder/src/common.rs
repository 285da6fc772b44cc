//! Pieces BERT and DistilBERT share: activations, the attention-mask bias, and transformers'
//! parameter initialisation.

use burn::module::{Initializer, Param, ParamId};
use burn::nn::{Embedding, Linear};
use burn::prelude::*;
use burn::tensor::Distribution;
use polarity_kernels::{AttentionMask, PackedSequences};

/// A feed-forward activation, named as in transformers' `ACT2FN`.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu`: the exact GELU, `x * Φ(x)` computed with `erf` (PyTorch's default).
    Gelu,
    /// `gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`: the tanh approximation of GELU.
    GeluTanh,
    /// `relu`.
    Relu,
    /// `silu` / `swish`.
    Silu,
}

impl Activation {
    /// The activation for a transformers name, or `None` when it is not supported.
    ///
    /// ```
    /// use polarity_encoder::Activation;
    /// assert_eq!(Activation::from_hf_name("gelu"), Some(Activation::Gelu));
    /// assert_eq!(Activation::from_hf_name("gelu_new"), Some(Activation::GeluTanh));
    /// assert_eq!(Activation::from_hf_name("quick_gelu"), None);
    /// ```
    pub fn from_hf_name(name: &str) -> Option<Self> {
        match name {
            "gelu" => Some(Activation::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Some(Activation::GeluTanh),
            "relu" => Some(Activation::Relu),
            "silu" | "swish" => Some(Activation::Silu),
            _ => None,
        }
    }

    /// The transformers name written back to `config.json`.
    pub fn hf_name(self) -> &'static str {
        match self {
            Activation::Gelu => "gelu",
            Activation::GeluTanh => "gelu_new",
            Activation::Relu => "relu",
            Activation::Silu => "silu",
        }
    }

    /// `activation(layer.forward(x))`: for the exact GELU [`polarity_kernels::linear_gelu`], which under
    /// bf16 autocast on the CPU default applies the GELU inside the product and returns its bf16
    /// operand for the next layer.
    pub fn after_linear<B: Backend, const D: usize>(self, layer: &Linear<B>, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Activation::Gelu => polarity_kernels::linear_gelu(layer, x),
            activation => activation.forward(polarity_kernels::linear(layer, x)),
        }
    }

    /// Applies the activation element-wise.
    pub fn forward<B: Backend, const D: usize>(self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Activation::Gelu => polarity_kernels::gelu(x),
            Activation::GeluTanh => burn::tensor::activation::gelu_approximate(x),
            Activation::Relu => burn::tensor::activation::relu(x),
            Activation::Silu => burn::tensor::activation::silu(x),
        }
    }
}

/// `embeddings + positions` for `[batch, seq, width]` and `[1, seq, width]` tensors: the positions are
/// broadcast over the batch as one row of `seq * width` values, which burn-flex adds with its
/// vectorised shared-row path (a `[1, seq, width]` block goes through its element-by-element strided
/// path, ~2 % of a MiniLM forward pass).
pub(crate) fn add_positions<B: Backend>(embeddings: Tensor<B, 3>, positions: Tensor<B, 3>) -> Tensor<B, 3> {
    let [batch, seq_len, width] = embeddings.dims();
    let summed = embeddings.reshape([batch, seq_len * width]) + positions.reshape([1, seq_len * width]);
    summed.reshape([batch, seq_len, width])
}

/// Runs the transformer `layers` on the embeddings `[batch, seq, hidden]`. For inference on the CPU
/// default, a right-padded batch runs on its real tokens alone ([`PackedSequences`]): the same values
/// at every real position, without the padding's work, and zeros at the padded positions.
pub(crate) fn run_layers<B: Backend>(
    embeddings: Tensor<B, 3>,
    attention_mask: Tensor<B, 2, Int>,
    layers: impl Fn(Tensor<B, 3>, &AttentionMask<B>) -> Tensor<B, 3>,
) -> Tensor<B, 3> {
    match PackedSequences::for_inference(&attention_mask, &embeddings) {
        Some(packed) => packed.unpack(layers(packed.pack(embeddings), &packed.attention_mask())),
        None => layers(embeddings, &AttentionMask::bidirectional(attention_mask)),
    }
}

/// The hidden state of the first (`[CLS]`) token: `[batch, seq, hidden]` -> `[batch, hidden]`.
pub(crate) fn first_token<B: Backend>(hidden: Tensor<B, 3>) -> Tensor<B, 2> {
    let [batch, _, width] = hidden.dims();
    hidden.slice([0..batch, 0..1, 0..width]).reshape([batch, width])
}

/// A `Linear` initialised as transformers does: weights `N(0, std)`, bias zero.
pub(crate) fn init_linear<B: Backend>(d_input: usize, d_output: usize, std: f64, device: &B::Device) -> Linear<B> {
    Linear {
        weight: Initializer::Normal { mean: 0.0, std }.init([d_input, d_output], device),
        bias: Some(Initializer::Zeros.init([d_output], device)),
    }
}

/// An `Embedding` initialised as transformers does: `N(0, std)`, with the padding row zeroed.
///
/// The table is drawn lazily (loading a checkpoint never pays for it). The padding row is zeroed
/// inside the initialiser, before the tensor is marked as requiring gradients, so that on an
/// autodiff backend the parameter stays a leaf (a `Param::init_mapper` would make it a computed
/// tensor without gradients).
/// The parameters of an encoder of these sizes, roughly (embedding rows, then per layer the four attention
/// projections and the feed-forward pair, then a `hidden`-wide pooler and the classifier), with checked
/// arithmetic: `None` when it overflows. Used to refuse configs whose sizes are each plausible but whose
/// product is not.
pub(crate) fn parameter_count(
    embedding_rows: usize,
    hidden: usize,
    intermediate: usize,
    layers: usize,
    labels: usize,
) -> Option<u64> {
    let [rows, hidden, intermediate, layers, labels] =
        [embedding_rows, hidden, intermediate, layers, labels].map(|n| n as u64);
    let embeddings = rows.checked_mul(hidden)?;
    let attention = hidden.checked_mul(hidden)?.checked_mul(4)?;
    let feed_forward = hidden.checked_mul(intermediate)?.checked_mul(2)?;
    let per_layer = attention.checked_add(feed_forward)?;
    let head = hidden.checked_mul(hidden.checked_add(labels)?)?;
    embeddings.checked_add(per_layer.checked_mul(layers)?)?.checked_add(head)
}

pub(crate) fn init_embedding<B: Backend>(
    count: usize,
    width: usize,
    std: f64,
    padding_idx: Option<usize>,
    device: &B::Device,
) -> Embedding<B> {
    let init = move |device: &B::Device, require_grad: bool| {
        let mut table = Tensor::<B, 2>::random([count, width], Distribution::Normal(0.0, std), device);
        if let Some(pad) = padding_idx.filter(|&pad| pad < count) {
            table = table.slice_assign([pad..pad + 1, 0..width], Tensor::zeros([1, width], device));
        }
        if require_grad { table.require_grad() } else { table }
    };
    Embedding { weight: Param::uninitialized(ParamId::new(), init, device.clone(), true, Shape::new([count, width])) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};

    type B = NdArray<f32>;

    #[test]
    fn exact_gelu_matches_erf_values_and_derivative() {
        let device = Default::default();
        let xs = [-3.0f32, -1.0, -0.1, 0.0, 0.5, 2.0];
        let x = Tensor::<Autodiff<B>, 1>::from_floats(xs, &device).require_grad();
        let y = Activation::Gelu.forward(x.clone());
        let grads = y.clone().sum().backward();
        let values = y.into_data().to_vec::<f32>().unwrap();
        let slopes = x.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
        for ((x, y), slope) in xs.iter().map(|&x| x as f64).zip(values).zip(slopes) {
            let cdf = 0.5 * (1.0 + erf(x / std::f64::consts::SQRT_2));
            let pdf = (-x * x / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
            assert!((y as f64 - x * cdf).abs() < 1e-6, "gelu({x})");
            assert!((slope as f64 - (cdf + x * pdf)).abs() < 1e-5, "gelu'({x}) = {slope}");
        }
    }

    /// Abramowitz-Stegun 7.1.26 is only 1e-7 accurate; a short series is exact enough here.
    fn erf(x: f64) -> f64 {
        // erf(x) = 2/sqrt(pi) * sum_n (-1)^n x^(2n+1) / (n! (2n+1)), converges fast for |x| <= 3.
        let mut sum = 0.0;
        let mut term = x;
        for n in 0..80 {
            sum += term / (2 * n + 1) as f64;
            term *= -x * x / (n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn embedding_padding_row_is_zero() {
        let device = Default::default();
        let embedding = init_embedding::<B>(4, 3, 0.02, Some(1), &device);
        let table = embedding.weight.val().into_data().to_vec::<f32>().unwrap();
        assert_eq!(&table[3..6], &[0.0, 0.0, 0.0]);
        assert!(table[..3].iter().any(|v| *v != 0.0));
        // On an autodiff backend the table must remain a trainable leaf.
        let trainable = init_embedding::<Autodiff<B>>(4, 3, 0.02, Some(1), &device);
        assert!(trainable.weight.val().is_require_grad());
    }

    #[test]
    fn activation_names_round_trip() {
        for act in [Activation::Gelu, Activation::GeluTanh, Activation::Relu, Activation::Silu] {
            assert_eq!(Activation::from_hf_name(act.hf_name()), Some(act));
        }
    }
}
