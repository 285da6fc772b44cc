//! The fused kernels (burn-flex, float32) against the same operations composed from burn's ops.

use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
use burn::backend::{Autodiff, Flex, NdArray};
use burn::nn::DropoutConfig;
use burn::prelude::*;
use burn::tensor::{DType, Distribution, Tolerance};
use polarity_kernels::{AttentionHeads, AttentionMask, PackedSequences, Path, composed, math, path_of};

type Fast = Flex;
/// Training on the CPU default with burn's non-default checkpoint strategy.
type Balanced = Autodiff<Flex, BalancedCheckpointing>;

/// The tests seed burn's process-wide generators: run them one at a time.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn random<B: Backend, const D: usize>(shape: [usize; D], seed: u64) -> Tensor<B, D> {
    let device = Default::default();
    B::seed(&device, seed);
    Tensor::random(shape, Distribution::Normal(0.0, 2.0), &device)
}

fn assert_close<B: Backend, const D: usize>(actual: Tensor<B, D>, expected: Tensor<B, D>, tolerance: f32) {
    assert_eq!(actual.dims(), expected.dims());
    let (actual, expected) =
        (actual.into_data().to_vec::<f32>().unwrap(), expected.into_data().to_vec::<f32>().unwrap());
    let worst = actual.iter().zip(&expected).map(|(a, e)| (a - e).abs() / e.abs().max(1.0)).fold(0f32, f32::max);
    assert!(worst <= tolerance, "max error {worst:e} > {tolerance:e}");
}

#[test]
fn elementwise_kernels_match_the_composed_ops() {
    let _serial = serial();
    let x = random::<Fast, 3>([3, 7, 40], 1);
    let up = random::<Fast, 3>([3, 7, 40], 2);
    assert_close(polarity_kernels::gelu(x.clone()), composed::gelu(x.clone()), 1e-6);
    assert_close(polarity_kernels::silu_mul(x.clone(), up.clone()), composed::silu_mul(x.clone(), up.clone()), 1e-6);
    let weight = random::<Fast, 1>([40], 3);
    assert_close(
        polarity_kernels::rms_norm(x.clone(), weight.clone(), 1e-6),
        composed::rms_norm(x.clone(), weight, 1e-6),
        1e-5,
    );
    // The input is used again after the calls above: in-place kernels must not have touched it.
    assert_close(x.clone(), random::<Fast, 3>([3, 7, 40], 1), 0.0);
}

#[test]
fn kernels_read_strided_views() {
    let _serial = serial();
    let x = random::<Fast, 3>([5, 4, 6], 4).swap_dims(0, 2); // [6, 4, 5], not contiguous
    let up = random::<Fast, 3>([6, 4, 5], 5);
    assert_close(polarity_kernels::gelu(x.clone()), composed::gelu(x.clone()), 1e-6);
    assert_close(polarity_kernels::silu_mul(x.clone(), up.clone()), composed::silu_mul(x, up), 1e-6);
}

#[test]
fn rotary_matches_rotate_half() {
    let _serial = serial();
    let (seq_len, head_dim) = (9, 8);
    let x = random::<Fast, 3>([2, seq_len, 3 * head_dim], 6);
    let angles = random::<Fast, 2>([seq_len, head_dim / 2], 7);
    let angles = Tensor::cat(vec![angles.clone(), angles], 1);
    let (cos, sin) = (angles.clone().cos(), angles.sin());
    let fast = polarity_kernels::rotary(x.clone(), cos.clone(), sin.clone(), head_dim);
    assert_close(fast, composed::rotary(x, cos, sin, head_dim), 1e-6);
}

fn padding<B: Backend>(lengths: &[i64], seq_len: usize) -> Tensor<B, 2, Int> {
    let rows: Vec<i64> = lengths.iter().flat_map(|&n| (0..seq_len as i64).map(move |j| i64::from(j < n))).collect();
    Tensor::from_data(TensorData::new(rows, [lengths.len(), seq_len]), &Default::default())
}

fn check_attention(heads: AttentionHeads, causal: bool, lengths: Option<&[i64]>) {
    let (batch, seq_len) = (lengths.map_or(2, <[i64]>::len), 11);
    let q = random::<Fast, 3>([batch, seq_len, heads.heads * heads.head_dim], 8);
    let k = random::<Fast, 3>([batch, seq_len, heads.kv_heads * heads.head_dim], 9);
    let v = random::<Fast, 3>([batch, seq_len, heads.kv_heads * heads.head_dim], 10);
    let mask = || {
        let padding = lengths.map(|lengths| padding::<Fast>(lengths, seq_len));
        if causal { AttentionMask::causal(padding) } else { AttentionMask::bidirectional(padding.unwrap()) }
    };
    let fast = polarity_kernels::attention(q.clone(), k.clone(), v.clone(), heads, &mask(), None);
    let reference = composed::attention(q, k, v, heads, &mask(), None);
    assert_close(fast, reference, 2e-5);
}

#[test]
fn attention_matches_the_composed_graph() {
    let _serial = serial();
    let mha = AttentionHeads { heads: 4, kv_heads: 4, head_dim: 8 };
    let gqa = AttentionHeads { heads: 6, kv_heads: 2, head_dim: 16 };
    check_attention(mha, false, Some(&[11, 5, 1]));
    check_attention(mha, true, Some(&[11, 4]));
    check_attention(mha, true, None);
    check_attention(gqa, true, Some(&[7, 11]));
    check_attention(gqa, false, Some(&[3, 11]));
}

/// `x` with the rows of padded positions zeroed.
fn zero_padding<B: Backend>(x: Tensor<B, 3>, mask: Tensor<B, 2, Int>) -> Tensor<B, 3> {
    x * mask.float().unsqueeze_dim(2)
}

#[test]
fn packed_attention_equals_padded_attention_at_real_positions() {
    let _serial = serial();
    let mha = AttentionHeads { heads: 4, kv_heads: 4, head_dim: 8 };
    let gqa = AttentionHeads { heads: 6, kv_heads: 2, head_dim: 16 };
    let (lengths, seq_len) = ([11i64, 5, 1, 8], 11);
    for (heads, causal) in [(mha, false), (mha, true), (gqa, false), (gqa, true)] {
        let batch = lengths.len();
        let q = random::<Fast, 3>([batch, seq_len, heads.heads * heads.head_dim], 8);
        let k = random::<Fast, 3>([batch, seq_len, heads.kv_heads * heads.head_dim], 9);
        let v = random::<Fast, 3>([batch, seq_len, heads.kv_heads * heads.head_dim], 10);
        let mask = padding::<Fast>(&lengths, seq_len);
        let padded_mask =
            if causal { AttentionMask::causal(Some(mask.clone())) } else { AttentionMask::bidirectional(mask.clone()) };
        let padded = polarity_kernels::attention(q.clone(), k.clone(), v.clone(), heads, &padded_mask, None);

        let packing = PackedSequences::new(&mask).expect("right-padded rows");
        assert_eq!(packing.lengths(), [11, 5, 1, 8]);
        let packed_mask = AttentionMask::packed(packing.lengths().to_vec(), causal);
        let [q_rows, k_rows, v_rows] = [q, k, v].map(|x| packing.pack(x));
        let fused =
            polarity_kernels::attention(q_rows.clone(), k_rows.clone(), v_rows.clone(), heads, &packed_mask, None);
        assert_close(packing.unpack(fused), zero_padding(padded.clone(), mask.clone()), 2e-5);

        // The composed path takes a block-diagonal bias: the same values on another backend.
        let on_ndarray = |x: Tensor<Fast, 3>| Tensor::<NdArray, 3>::from_data(x.into_data(), &Default::default());
        let ndarray_mask = AttentionMask::<NdArray>::packed(packing.lengths().to_vec(), causal);
        let [q_rows, k_rows, v_rows] = [q_rows, k_rows, v_rows].map(on_ndarray);
        let composed = polarity_kernels::attention(q_rows, k_rows, v_rows, heads, &ndarray_mask, None);
        let composed = Tensor::<Fast, 3>::from_data(composed.into_data(), &Default::default());
        assert_close(packing.unpack(composed), zero_padding(padded, mask), 2e-5);
    }
}

#[test]
fn only_right_padded_batches_with_padding_are_packed() {
    let _serial = serial();
    let mask = |rows: &[&[i64]]| {
        let width = rows[0].len();
        let flat: Vec<i64> = rows.iter().flat_map(|row| row.iter().copied()).collect();
        Tensor::<Fast, 2, Int>::from_data(TensorData::new(flat, [rows.len(), width]), &Default::default())
    };
    assert!(PackedSequences::new(&mask(&[&[1, 1], &[1, 1]])).is_none(), "no padding: nothing to save");
    assert!(PackedSequences::new(&mask(&[&[0, 1], &[1, 1]])).is_none(), "left padding");
    assert!(PackedSequences::new(&mask(&[&[1, 0, 1]])).is_none(), "a token after padding");
    assert!(PackedSequences::new(&mask(&[&[1, 1], &[0, 0]])).is_none(), "a row without tokens");
    let right_padded = mask(&[&[1, 1, 0], &[1, 0, 0]]);
    assert_eq!(PackedSequences::new(&right_padded).unwrap().lengths(), [2, 1]);

    // Where the packed kernel runs: float32 burn-flex inference, not other backends nor training.
    let hidden = random::<Fast, 3>([2, 3, 4], 11);
    let packing = PackedSequences::for_inference(&right_padded, &hidden).expect("flex inference packs");
    let ndarray_mask = Tensor::<NdArray, 2, Int>::from_data(right_padded.to_data(), &Default::default());
    let ndarray_hidden = Tensor::<NdArray, 3>::from_data(hidden.to_data(), &Default::default());
    assert!(PackedSequences::for_inference(&ndarray_mask, &ndarray_hidden).is_none());
    type Train = Autodiff<Flex>;
    let train_mask = Tensor::<Train, 2, Int>::from_data(right_padded.to_data(), &Default::default());
    let train_hidden = Tensor::<Train, 3>::from_data(hidden.to_data(), &Default::default());
    assert!(PackedSequences::for_inference(&train_mask, &train_hidden).is_none());

    // Packing keeps the real rows in order; unpacking puts them back with zeros at the padding.
    let rows = packing.pack(hidden.clone());
    assert_eq!(rows.dims(), [1, 3, 4]);
    let values = hidden.to_data().to_vec::<f32>().unwrap();
    let expected: Vec<f32> = [0, 1, 3].iter().flat_map(|&row| values[row * 4..(row + 1) * 4].to_vec()).collect();
    assert_eq!(rows.to_data().to_vec::<f32>().unwrap(), expected);
    assert_close(packing.unpack(rows), zero_padding(hidden, right_padded), 0.0);
}

#[test]
fn a_query_with_no_visible_key_gets_uniform_weights_like_transformers() {
    let _serial = serial();
    // Row 2 is all padding: transformers' most-negative-float bias makes its softmax uniform.
    check_attention(AttentionHeads { heads: 2, kv_heads: 2, head_dim: 4 }, false, Some(&[5, 0]));
}

#[test]
fn other_backends_and_autodiff_take_the_composed_path() {
    let _serial = serial();
    let heads = AttentionHeads { heads: 2, kv_heads: 1, head_dim: 4 };
    let data = |seed| random::<Fast, 3>([2, 5, 8], seed).into_data();
    let ndarray = |seed| Tensor::<NdArray, 3>::from_data(data(seed), &Default::default());
    let flex = |seed| Tensor::<Fast, 3>::from_data(data(seed), &Default::default());
    let composed_on_ndarray = polarity_kernels::attention(
        ndarray(1),
        ndarray(2).narrow(2, 0, 4),
        ndarray(3).narrow(2, 0, 4),
        heads,
        &AttentionMask::causal(Some(padding(&[5, 3], 5))),
        None,
    );
    let fused_on_flex = polarity_kernels::attention(
        flex(1),
        flex(2).narrow(2, 0, 4),
        flex(3).narrow(2, 0, 4),
        heads,
        &AttentionMask::causal(Some(padding(&[5, 3], 5))),
        None,
    );
    assert_close(
        Tensor::<Fast, 3>::from_data(composed_on_ndarray.into_data(), &Default::default()),
        fused_on_flex,
        2e-5,
    );

    // Under autodiff the graph is differentiable (and dropout applies to the weights).
    type Train = Autodiff<Flex>;
    let q = Tensor::<Train, 3>::from_data(data(1), &Default::default()).require_grad();
    let k = Tensor::<Train, 3>::from_data(data(2), &Default::default()).narrow(2, 0, 4);
    let dropout = DropoutConfig::new(0.0).init();
    let out = polarity_kernels::attention(q.clone(), k.clone(), k, heads, &AttentionMask::causal(None), Some(&dropout));
    let grads = out.sum().backward();
    assert!(q.grad(&grads).is_some());
    let x = Tensor::<Train, 2>::from_data([[0.5f32, -1.0]], &Default::default()).require_grad();
    let grads = polarity_kernels::gelu(x.clone()).sum().backward();
    // d/dx gelu(0.5) = Φ(0.5) + 0.5 φ(0.5)
    let slope = x.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap()[0];
    assert!((slope - 0.867_495).abs() < 1e-5, "{slope}");
}

#[test]
fn fused_gelu_gradients_match_the_composed_graph() {
    let _serial = serial();
    type Train = Autodiff<Flex>;
    let x = random::<Train, 2>([37, 300], 21).require_grad();
    let weights = random::<Train, 2>([37, 300], 22);
    let gradient = |output: Tensor<Train, 2>| (output * weights.clone()).sum().backward();
    let (fast, reference) = (polarity_kernels::gelu(x.clone()), composed::gelu(x.clone()));
    assert_close(fast.clone(), reference.clone(), 1e-6);
    let fast = x.grad(&gradient(fast)).unwrap();
    let reference = x.grad(&gradient(reference)).unwrap();
    assert_close(fast, reference, 1e-6);
}

/// The fused element-wise autodiff ops (SiLU gate, RMSNorm, RoPE) give the composed graph's values and
/// gradients, for every input that takes one.
#[test]
fn fused_llama_ops_match_the_composed_graph_and_its_gradients() {
    let _serial = serial();
    type Train = Autodiff<Flex>;
    let (batch, seq, heads, head_dim) = (2, 7, 3, 8);
    let width = heads * head_dim;
    let leaf = |seed, dims: [usize; 3]| random::<Train, 3>(dims, seed).require_grad();
    let weights = random::<Train, 3>([batch, seq, width], 40);
    let backward = |output: Tensor<Train, 3>| (output * weights.clone()).sum().backward();

    let (gate, up) = (leaf(41, [batch, seq, width]), leaf(42, [batch, seq, width]));
    let fast = polarity_kernels::silu_mul(gate.clone(), up.clone());
    let reference = composed::silu_mul(gate.clone(), up.clone());
    assert_close(fast.clone(), reference.clone(), 1e-5);
    let (fast, reference) = (backward(fast), backward(reference));
    assert_close(gate.grad(&fast).unwrap(), gate.grad(&reference).unwrap(), 1e-5);
    assert_close(up.grad(&fast).unwrap(), up.grad(&reference).unwrap(), 1e-5);

    let x = leaf(43, [batch, seq, width]);
    let weight = random::<Train, 1>([width], 44).require_grad();
    let fast = polarity_kernels::rms_norm(x.clone(), weight.clone(), 1e-5);
    let reference = composed::rms_norm(x.clone(), weight.clone(), 1e-5);
    assert_close(fast.clone(), reference.clone(), 1e-5);
    let (fast, reference) = (backward(fast), backward(reference));
    assert_close(x.grad(&fast).unwrap(), x.grad(&reference).unwrap(), 1e-5);
    assert_close(weight.grad(&fast).unwrap(), weight.grad(&reference).unwrap(), 1e-5);

    // Tables with different values in the two halves, so that the backward pass's indexing is tested
    // beyond Llama's duplicated frequencies.
    let (cos, sin) = (random::<Train, 2>([seq, head_dim], 45), random::<Train, 2>([seq, head_dim], 46));
    let x = leaf(47, [batch, seq, width]);
    let fast = polarity_kernels::rotary(x.clone(), cos.clone(), sin.clone(), head_dim);
    let reference = composed::rotary(x.clone(), cos, sin, head_dim);
    assert_close(fast.clone(), reference.clone(), 1e-5);
    let (fast, reference) = (backward(fast), backward(reference));
    assert_close(x.grad(&fast).unwrap(), x.grad(&reference).unwrap(), 1e-5);
}

#[test]
fn fused_layer_norm_matches_burns_values_and_gradients() {
    let _serial = serial();
    type Reference = Autodiff<NdArray>;
    type Train = Autodiff<Flex>;
    let (rows, width) = (150, 96);
    let data = |seed| random::<Fast, 2>([rows, width], seed).into_data();
    // Rows with a large common offset: the two-pass variance must not cancel.
    let x = random::<Fast, 2>([rows, width], 31).add_scalar(100.0).into_data();
    let (gamma, beta) = (random::<Fast, 1>([width], 32).into_data(), random::<Fast, 1>([width], 33).into_data());
    let weights = data(34);
    fn run<B: burn::tensor::backend::AutodiffBackend>(
        [x, gamma, beta, weights]: [&TensorData; 4],
    ) -> [Tensor<B::InnerBackend, 2>; 4] {
        let device = Default::default();
        let x = Tensor::<B, 2>::from_data(x.clone(), &device).require_grad();
        let gamma = Tensor::<B, 1>::from_data(gamma.clone(), &device).require_grad();
        let beta = Tensor::<B, 1>::from_data(beta.clone(), &device).require_grad();
        let output = polarity_kernels::layer_norm(x.clone(), gamma.clone(), Some(beta.clone()), 1e-12);
        let grads = (output.clone() * Tensor::from_data(weights.clone(), &device)).sum().backward();
        let [g, b] = [gamma.grad(&grads).unwrap(), beta.grad(&grads).unwrap()].map(|t| t.unsqueeze::<2>());
        [output.inner(), x.grad(&grads).unwrap(), g, b]
    }
    let inputs = [&x, &gamma, &beta, &weights];
    let fast = run::<Train>(inputs);
    // Another checkpoint strategy runs the same fused node: the same bits.
    for (fast, balanced) in fast.iter().zip(run::<Balanced>(inputs)) {
        assert_eq!(fast.to_data(), balanced.into_data());
    }
    let reference = run::<Reference>(inputs);
    for (name, (fast, reference)) in ["output", "x", "gamma", "beta"].iter().zip(fast.into_iter().zip(reference)) {
        let (fast, reference) = (fast.into_data(), reference.into_data());
        let fast = Tensor::<NdArray, 2>::from_data(fast, &Default::default());
        let reference = Tensor::<NdArray, 2>::from_data(reference, &Default::default());
        let error = (fast - reference.clone()).abs().max().into_scalar() / reference.abs().max().into_scalar().max(1.0);
        assert!(error < 2e-5, "{name}: relative error {error:e}");
    }
}

#[test]
fn float_types_other_than_f32_fall_back() {
    let _serial = serial();
    let x = random::<Fast, 2>([3, 4], 11);
    let half = x.clone().cast(burn::tensor::DType::F16);
    let fast = polarity_kernels::gelu(half).cast(burn::tensor::DType::F32);
    fast.into_data().assert_approx_eq::<f32>(&composed::gelu(x).into_data(), Tolerance::absolute(1e-2));
}

#[test]
fn dropout_zeroes_the_right_share_scales_the_rest_and_is_seeded() {
    let _serial = serial();
    type Train = Autodiff<Flex>;
    let layer = DropoutConfig::new(0.3).init();
    let device = Default::default();
    let draw = |seed| {
        Train::seed(&device, seed);
        let x = Tensor::<Train, 2>::ones([200, 500], &device).require_grad();
        let y = polarity_kernels::dropout(&layer, x.clone());
        let grads = y.clone().sum().backward();
        let grad = x.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
        (y.into_data().to_vec::<f32>().unwrap(), grad)
    };
    let (values, grad) = draw(7);
    let dropped = values.iter().filter(|v| **v == 0.0).count() as f64 / values.len() as f64;
    assert!((dropped - 0.3).abs() < 0.01, "dropped {dropped}");
    assert!(values.iter().all(|v| *v == 0.0 || (v - 1.0 / 0.7).abs() < 1e-6));
    assert!(values == grad, "the gradient of x * mask is the mask");
    assert!(draw(7).0 == values, "same seed, same mask");
    assert!(draw(8).0 != values);
    // Without autodiff dropout is the identity, as burn's.
    let x = random::<Fast, 2>([4, 4], 1);
    assert_close(polarity_kernels::dropout(&layer, x.clone()), x, 0.0);
}

type Train = Autodiff<Flex>;

/// Output and input gradients of `sum(attention(q, k, v) * weights)` on `Autodiff<Flex>`.
fn attention_grads(
    fused: bool,
    heads: AttentionHeads,
    lengths: &[i64],
    causal: bool,
    dropout: f64,
) -> (Vec<f32>, [Vec<f32>; 3]) {
    let (batch, seq_len) = (lengths.len(), 9);
    let device = Default::default();
    let input = |width: usize, seed| {
        Tensor::<Train, 3>::from_data(random::<Fast, 3>([batch, seq_len, width], seed).into_data(), &device)
            .require_grad()
    };
    let (q, k, v) = (
        input(heads.heads * heads.head_dim, 21),
        input(heads.kv_heads * heads.head_dim, 22),
        input(heads.kv_heads * heads.head_dim, 23),
    );
    let padding = padding::<Train>(lengths, seq_len);
    let mask = if causal { AttentionMask::causal(Some(padding)) } else { AttentionMask::bidirectional(padding) };
    let layer = DropoutConfig::new(dropout).init();
    Train::seed(&device, 5);
    let out = if fused {
        polarity_kernels::attention(q.clone(), k.clone(), v.clone(), heads, &mask, Some(&layer))
    } else {
        composed::attention(q.clone(), k.clone(), v.clone(), heads, &mask, Some(&layer))
    };
    let weights = Tensor::<Train, 3>::from_data(random::<Fast, 3>(out.dims(), 24).into_data(), &device);
    let grads = (out.clone() * weights).sum().backward();
    let values = |x: Tensor<Train, 3>| x.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
    (out.into_data().to_vec().unwrap(), [values(q), values(k), values(v)])
}

fn assert_vec_close(actual: &[f32], expected: &[f32], tolerance: f32, what: &str) {
    let worst = actual.iter().zip(expected).map(|(a, e)| (a - e).abs() / e.abs().max(1.0)).fold(0f32, f32::max);
    assert!(worst <= tolerance, "{what}: max error {worst:e}");
}

#[test]
fn fused_attention_gradients_match_autodiff_through_the_composed_graph() {
    let _serial = serial();
    let mha = AttentionHeads { heads: 3, kv_heads: 3, head_dim: 8 };
    let gqa = AttentionHeads { heads: 4, kv_heads: 2, head_dim: 6 };
    for (heads, lengths, causal) in [
        (mha, &[9, 4][..], false),
        (mha, &[9, 0][..], false), // a row with no visible key
        (gqa, &[6, 9, 2][..], true),
        (gqa, &[9][..], false),
    ] {
        let (fused_out, fused_grads) = attention_grads(true, heads, lengths, causal, 0.0);
        let (out, grads) = attention_grads(false, heads, lengths, causal, 0.0);
        assert_vec_close(&fused_out, &out, 2e-5, "output");
        for (name, (fused, reference)) in ["q", "k", "v"].iter().zip(fused_grads.iter().zip(&grads)) {
            assert_vec_close(fused, reference, 1e-4, name);
        }
    }
}

#[test]
fn fused_attention_dropout_drops_weights_and_backpropagates_through_the_same_mask() {
    let _serial = serial();
    // With v = identity (head_dim = seq), the output of a head *is* its (dropped) weight matrix.
    let seq_len = 16;
    let heads = AttentionHeads { heads: 2, kv_heads: 1, head_dim: seq_len };
    let device = Default::default();
    let q = Tensor::<Train, 3>::from_data(random::<Fast, 3>([1, seq_len, 2 * seq_len], 31).into_data(), &device)
        .require_grad();
    let k = Tensor::<Train, 3>::from_data(random::<Fast, 3>([1, seq_len, seq_len], 32).into_data(), &device);
    let v = Tensor::<Train, 2>::eye(seq_len, &device).reshape([1, seq_len, seq_len]).require_grad();
    let run = |prob: f64, seed: u64| {
        Train::seed(&device, seed);
        let layer = DropoutConfig::new(prob).init();
        let mask = AttentionMask::bidirectional(padding::<Train>(&[seq_len as i64], seq_len));
        let out = polarity_kernels::attention(q.clone(), k.clone(), v.clone(), heads, &mask, Some(&layer));
        let grads = out.clone().sum().backward();
        let grad_v = v.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
        (out.into_data().to_vec::<f32>().unwrap(), grad_v)
    };
    let (weights, _) = run(0.0, 1);
    let (dropped, grad_v) = run(0.25, 1);
    let zeros = dropped.iter().filter(|x| **x == 0.0).count() as f64 / dropped.len() as f64;
    assert!((zeros - 0.25).abs() < 0.06, "dropped share {zeros}");
    for (d, w) in dropped.iter().zip(&weights) {
        assert!(*d == 0.0 || (d - w / 0.75).abs() < 1e-5, "{d} vs {w} / 0.75");
    }
    // d sum(out) / d v[j, e] = sum over heads and queries of the dropped weight on key j (e any).
    for j in 0..seq_len {
        let column: f32 = (0..seq_len)
            .flat_map(|i| (0..2).map(move |h| (i, h)))
            .map(|(i, h)| dropped[i * 2 * seq_len + h * seq_len + j])
            .sum();
        assert!((grad_v[j * seq_len] - column).abs() < 1e-4, "grad v[{j}] {} vs {column}", grad_v[j * seq_len]);
    }
    assert!(run(0.25, 1).0 == dropped, "seeded");
    assert!(run(0.25, 2).0 != dropped);
}

/// A `[rows, cols]` matrix; `transposed` picks the layout the forward product uses.
#[derive(Debug)]
struct Fixed(Vec<f32>, [usize; 2], bool);

impl polarity_kernels::FrozenMatrix for Fixed {
    fn dims(&self) -> [usize; 2] {
        self.1
    }
    fn decode(&self) -> Vec<f32> {
        self.0.clone()
    }
    fn decode_transposed(&self) -> Vec<f32> {
        let [rows, cols] = self.1;
        (0..cols).flat_map(|c| (0..rows).map(move |r| self.0[r * cols + c])).collect()
    }
    fn prefers_transposed(&self, _input_rows: usize) -> bool {
        self.2
    }
}

#[test]
fn frozen_linear_matches_a_matmul_by_a_constant_and_its_input_gradient() {
    let _serial = serial();
    let device = Default::default();
    let matrix = random::<Fast, 2>([5, 7], 41); // [out, in]
    let values = matrix.clone().into_data().to_vec::<f32>().unwrap();
    let x = Tensor::<Train, 2>::from_data(random::<Fast, 2>([3, 7], 42).into_data(), &device).require_grad();
    let upstream = Tensor::<Train, 2>::from_data(random::<Fast, 2>([3, 5], 43).into_data(), &device);

    let constant = Tensor::<Train, 2>::from_data(matrix.into_data(), &device);
    let dense = x.clone().matmul(constant.transpose());
    let grads = (dense.clone() * upstream.clone()).sum().backward();
    let dense_grad = x.grad(&grads).unwrap();

    for transposed in [false, true] {
        let matrix = std::sync::Arc::new(Fixed(values.clone(), [5, 7], transposed));
        let frozen = polarity_kernels::frozen_linear(x.clone(), matrix).unwrap();
        let grads = (frozen.clone() * upstream.clone()).sum().backward();
        assert_close(frozen.inner(), dense.clone().inner(), 1e-6);
        assert_close(x.grad(&grads).unwrap(), dense_grad.clone(), 1e-6);
    }

    // Elsewhere the caller keeps its own product.
    let plain = Tensor::<Fast, 2>::zeros([3, 7], &device);
    assert!(polarity_kernels::frozen_linear(plain, std::sync::Arc::new(Fixed(values, [5, 7], false))).is_err());
}

#[test]
fn fused_linear_matches_burns_linear_with_bias_residual_and_strided_weights() {
    let _serial = serial();
    let device = Default::default();
    let reference = |t: &Tensor<Fast, 3>| Tensor::<NdArray, 3>::from_data(t.to_data(), &device);
    // [rows, in] x [in, out] below and above the product size that runs on all cores.
    for (batch, seq, d_in, d_out) in [(2, 3, 5, 7), (4, 96, 128, 160)] {
        let x = random::<Fast, 3>([batch, seq, d_in], 41);
        let residual = random::<Fast, 3>([batch, seq, d_out], 42);
        let bias = random::<Fast, 1>([d_out], 43);
        // A weight read through strides: the transpose of a row-major [out, in] matrix.
        let weight = random::<Fast, 2>([d_out, d_in], 44).transpose();
        let mut layer = burn::nn::LinearConfig::new(d_in, d_out).init::<Fast>(&Default::default());
        layer.weight = burn::module::Param::from_tensor(weight.clone());
        layer.bias = Some(burn::module::Param::from_tensor(bias.clone()));
        let as_ndarray = |w: &Tensor<Fast, 2>| Tensor::<NdArray, 2>::from_data(w.to_data(), &device);
        let expected = burn::tensor::module::linear(
            reference(&x),
            as_ndarray(&weight),
            Some(Tensor::from_data(bias.to_data(), &device)),
        );
        let expected_sum = expected.clone() + reference(&residual);
        let close = |actual: Tensor<Fast, 3>, expected: Tensor<NdArray, 3>| {
            assert_close(Tensor::<NdArray, 3>::from_data(actual.into_data(), &device), expected, 1e-5)
        };
        close(polarity_kernels::linear(&layer, x.clone()), expected.clone());
        // The residual is shared with `residual` here: the fused add must copy, not overwrite it.
        let dropout = DropoutConfig::new(0.5).init();
        close(
            polarity_kernels::linear_residual(&layer, Some(&dropout), x.clone(), residual.clone()),
            expected_sum.clone(),
        );
        close(residual.clone(), reference(&residual));
        // Without a bias.
        layer.bias = None;
        let no_bias = burn::tensor::module::linear(reference(&x), as_ndarray(&weight), None);
        close(polarity_kernels::linear(&layer, x.clone()), no_bias.clone());
        close(polarity_kernels::linear_residual(&layer, None, x, residual.clone()), no_bias + reference(&residual));
    }
}

#[test]
fn inference_layer_norm_normalises_in_place_without_touching_shared_inputs() {
    let _serial = serial();
    let device = Default::default();
    let (x, gamma, beta) =
        (random::<Fast, 3>([3, 5, 48], 51).add_scalar(50.0), random::<Fast, 1>([48], 52), random::<Fast, 1>([48], 53));
    let to_ndarray = |data: TensorData| Tensor::<NdArray, 3>::from_data(data, &device);
    let expected = polarity_kernels::layer_norm(
        to_ndarray(x.to_data()),
        Tensor::from_data(gamma.to_data(), &device),
        Some(Tensor::from_data(beta.to_data(), &device)),
        1e-12,
    );
    let before = x.to_data();
    let normalized = polarity_kernels::layer_norm(x.clone(), gamma, Some(beta), 1e-12);
    assert_close(to_ndarray(normalized.into_data()), expected, 2e-5);
    assert_close(to_ndarray(x.into_data()), to_ndarray(before), 0.0);
}

#[test]
fn the_dispatch_picks_one_path_per_backend_and_float_type() {
    assert_eq!(Path::of::<Flex>(DType::F32), Path::FlexInference);
    assert_eq!(Path::of::<Autodiff<Flex>>(DType::F32), Path::FlexAutodiff);
    assert_eq!(Path::of::<Balanced>(DType::F32), Path::FlexAutodiff);
    assert_eq!(Path::of::<NdArray>(DType::F32), Path::Composed);
    assert_eq!(Path::of::<Autodiff<NdArray>>(DType::F32), Path::Composed);
    assert_eq!(Path::of::<Flex>(DType::F16), Path::Composed);
    assert_eq!(Path::of::<Balanced>(DType::BF16), Path::Composed);
}

/// Under `BalancedCheckpointing` the GELU is still the fused node (its values are the kernel's
/// polynomial GELU bit for bit, its gradient the fused backward's formula), between memory-bound ops
/// that the strategy recomputes, and its gradients are the composed graph's.
#[test]
fn balanced_checkpointing_keeps_the_fused_gelu_and_its_gradients() {
    let _serial = serial();
    let x = random::<Balanced, 2>([37, 300], 61).require_grad();
    let weights = random::<Balanced, 2>([37, 300], 62);
    assert_eq!(path_of(&x), Path::FlexAutodiff);
    // One input node per graph: a backward pass frees its graph, which the other would still need.
    let input = || x.clone().mul_scalar(2.0);
    let (fast, reference) = (polarity_kernels::gelu(input()), composed::gelu(input()));
    let values = |t: &Tensor<Balanced, 2>| t.to_data().to_vec::<f32>().unwrap();
    let kernel: Vec<f32> = values(&input()).into_iter().map(math::gelu).collect();
    assert_eq!(values(&fast), kernel);
    assert_ne!(values(&reference), kernel, "the check must tell the paths apart");
    assert_close(fast.clone(), reference.clone(), 1e-6);

    let gradient = |output: Tensor<Balanced, 2>| x.grad(&(output * weights.clone()).sum().backward()).unwrap();
    let (fast, reference) = (gradient(fast), gradient(reference));
    // d/dx (gelu(2x) w) = w gelu'(2x) 2, in the fused backward's order.
    let expected: Vec<f32> = values(&input())
        .into_iter()
        .zip(values(&weights))
        .map(|(input, weight)| weight * math::gelu_derivative(input) * 2.0)
        .collect();
    assert_eq!(fast.to_data().to_vec::<f32>().unwrap(), expected);
    // Twice `fused_gelu_gradients_match_the_composed_graph`'s tolerance: the chain rule doubles the gradient.
    assert_close(fast, reference, 2e-6);
}
