//! Mixed precision: products in bf16/f16 under `autocast`, f32 in and out, f32 gradients.

use burn::backend::{Autodiff, Flex, NdArray};
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::{DType, FloatDType};
use polarity_kernels::autocast::{autocast, matmul};
use polarity_kernels::{AttentionHeads, AttentionMask, composed, linear};

type Train = Autodiff<Flex>;

/// Deterministic values in [-2, 2) without any backend's RNG.
fn values<B: Backend, const D: usize>(shape: [usize; D], seed: u64) -> Tensor<B, D> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let data: Vec<f32> = (0..shape.iter().product::<usize>())
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
        })
        .collect();
    Tensor::from_data(TensorData::new(data, shape), &Default::default())
}

/// The largest error relative to the reference's largest magnitude.
fn relative_error<B: Backend, const D: usize>(actual: Tensor<B, D>, expected: Tensor<B, D>) -> f32 {
    let (actual, expected) =
        (actual.into_data().to_vec::<f32>().unwrap(), expected.into_data().to_vec::<f32>().unwrap());
    let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
    actual.iter().zip(&expected).map(|(a, e)| (a - e).abs()).fold(0f32, f32::max) / scale
}

fn layer<B: Backend>(d_input: usize, d_output: usize) -> Linear<B> {
    let mut layer = LinearConfig::new(d_input, d_output).init::<B>(&Default::default());
    layer.weight = burn::module::Param::from_tensor(values([d_input, d_output], 5));
    layer.bias = Some(burn::module::Param::from_tensor(values([d_output], 6)));
    layer
}

#[test]
fn linear_runs_in_half_precision_and_returns_f32() {
    let layer = layer::<Flex>(64, 24);
    let x = values::<Flex, 3>([2, 5, 64], 1);
    let exact = linear(&layer, x.clone());
    assert_eq!(exact.clone().into_data(), layer.forward(x.clone()).into_data());
    // Rounding each operand to 8 (bf16) or 11 (f16) mantissa bits: errors of that order, not zero.
    for (dtype, tolerance) in [(FloatDType::BF16, 2e-2), (FloatDType::F16, 3e-3)] {
        let half = autocast(Some(dtype), || linear(&layer, x.clone()));
        assert_eq!(half.dtype(), DType::F32);
        assert_eq!(half.dims(), [2, 5, 24]);
        let error = relative_error(half, exact.clone());
        assert!(error > 0.0 && error < tolerance, "{dtype:?}: relative error {error:e}");
    }
    // Outside autocast, f32 again.
    assert_eq!(linear(&layer, x.clone()).into_data(), exact.into_data());
}

#[test]
fn gradients_flow_back_through_the_casts_in_f32() {
    let layer = layer::<Train>(32, 8);
    let x = values::<Train, 2>([6, 32], 2).require_grad();
    let grads_of = |dtype: Option<FloatDType>| {
        let output = autocast(dtype, || linear(&layer, x.clone()));
        let grads = output.powi_scalar(2).sum().backward();
        (x.grad(&grads).unwrap(), layer.weight.grad(&grads).unwrap())
    };
    let (x_exact, weight_exact) = grads_of(None);
    let (x_half, weight_half) = grads_of(Some(FloatDType::BF16));
    assert_eq!((x_half.dtype(), weight_half.dtype()), (DType::F32, DType::F32));
    for (half, exact) in [(x_half, x_exact), (weight_half, weight_exact)] {
        let error = relative_error(half, exact);
        assert!(error > 0.0 && error < 3e-2, "relative error {error:e}");
    }
}

#[test]
fn composed_attention_runs_its_products_in_half_precision() {
    let heads = AttentionHeads { heads: 4, kv_heads: 2, head_dim: 8 };
    let (q, k, v) =
        (values::<Flex, 3>([2, 6, 32], 3), values::<Flex, 3>([2, 6, 16], 4), values::<Flex, 3>([2, 6, 16], 7));
    let mask = AttentionMask::causal(None);
    let exact = composed::attention(q.clone(), k.clone(), v.clone(), heads, &mask, None);
    let half = autocast(Some(FloatDType::F16), || composed::attention(q, k, v, heads, &mask, None));
    assert_eq!(half.dtype(), DType::F32);
    let error = relative_error(half, exact);
    assert!(error > 0.0 && error < 1e-2, "relative error {error:e}");
}

#[test]
fn matmul_is_burns_when_autocast_is_off_and_on_other_backends_too() {
    let (a, b) = (values::<NdArray, 2>([3, 4], 8), values::<NdArray, 2>([4, 2], 9));
    assert_eq!(matmul(a.clone(), b.clone()).into_data(), a.matmul(b).into_data());
}
