//! The CPU default's packed linear layers against exact products: in bf16 (AVX512-BF16) against the
//! products of the bf16-rounded operands (and attention's two products under bf16 autocast), frozen weights in float32 training (AVX-512) against the
//! float32 operands' products; and the packed-weight cache's lifetime rules. On a CPU without the
//! features a test needs it says so and checks nothing else (the layers then take burn's paths).

use std::sync::Mutex;

use burn::backend::{Autodiff, Flex};
use burn::nn::LinearConfig;
use burn::prelude::*;
use burn::tensor::FloatDType;
use polarity_kernels::autocast::autocast;
use polarity_kernels::{bf16_products_available, linear_residual, linear_with, packed_weight_count};

/// The tests count cache entries: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn available() -> bool {
    let available = bf16_products_available();
    if !available {
        eprintln!("skipped: this CPU has no AVX512-BF16");
    }
    available
}

/// Deterministic values spread over several binades, with ties and exact bf16 values among them.
fn values(count: usize, seed: usize) -> Vec<f32> {
    (0..count).map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 - 1001.0) / 313.0).collect()
}

fn tensor(values: Vec<f32>, dims: [usize; 2]) -> Tensor<Flex, 2> {
    Tensor::from_data(TensorData::new(values, dims), &Default::default())
}

fn bf16(x: f32) -> f64 {
    half_round(x) as f64
}

/// Round to nearest even at bf16's 8 mantissa bits, independently of the kernels' own conversion.
fn half_round(x: f32) -> f32 {
    let bits = x.to_bits();
    let lower = bits & 0xffff;
    let mut upper = bits >> 16;
    if lower > 0x8000 || (lower == 0x8000 && upper & 1 == 1) {
        upper += 1;
    }
    f32::from_bits(upper << 16)
}

/// `x w + b` from the operands as `operand` reads them ([`bf16`]-rounded or [`exact`]), in f64.
fn reference(x: &[f32], w: &[f32], bias: &[f32], [rows, k, n]: [usize; 3], operand: fn(f32) -> f64) -> Vec<f32> {
    let mut out = vec![0f32; rows * n];
    for r in 0..rows {
        for c in 0..n {
            let dot: f64 = (0..k).map(|i| operand(x[r * k + i]) * operand(w[i * n + c])).sum();
            out[r * n + c] = (dot + bias[c] as f64) as f32;
        }
    }
    out
}

fn exact(x: f32) -> f64 {
    x as f64
}

fn assert_close(actual: &[f32], expected: &[f32], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        // f32 accumulation of up to 1001 products of magnitude <= 11 (the f64 reference is exact).
        assert!((a - e).abs() <= 1e-4 * e.abs().max(1.0), "{what}: element {i}: {a} vs {e}");
    }
}

#[test]
fn bf16_linear_layers_compute_the_rounded_operands_products() {
    let _serial = serial();
    if !available() {
        return;
    }
    // Edge tiles in both directions, an odd width, one row, and shapes past the parallel threshold.
    for (case, [rows, k, n]) in
        [[1, 1, 1], [3, 5, 7], [13, 77, 50], [8, 48, 48], [200, 384, 100], [130, 768, 97], [70, 1001, 400]]
            .into_iter()
            .enumerate()
    {
        let (x, w, bias) = (values(rows * k, case), values(k * n, case + 10), values(n, case + 20));
        let expected = reference(&x, &w, &bias, [rows, k, n], bf16);
        let actual = autocast(Some(FloatDType::BF16), || {
            linear_with(
                tensor(x.clone(), [rows, k]),
                tensor(w.clone(), [k, n]),
                Some(tensor(bias.clone(), [1, n]).reshape([n])),
            )
        });
        assert_eq!(actual.dtype(), burn::tensor::DType::F32);
        assert_close(&actual.into_data().to_vec::<f32>().unwrap(), &expected, &format!("[{rows}, {k}] x [{k}, {n}]"));

        // The same weight as a transposed view of its `[n, k]` transpose.
        let transposed: Vec<f32> = (0..n * k).map(|i| w[(i % k) * n + i / k]).collect();
        let view = tensor(transposed, [n, k]).transpose();
        let actual = autocast(Some(FloatDType::BF16), || {
            linear_with(tensor(x.clone(), [rows, k]), view, Some(tensor(bias.clone(), [1, n]).reshape([n])))
        });
        assert_close(&actual.into_data().to_vec::<f32>().unwrap(), &expected, &format!("transposed view, case {case}"));
    }
}

#[test]
fn bf16_products_accumulate_into_the_residual() {
    let _serial = serial();
    if !available() {
        return;
    }
    let device = Default::default();
    let layer = LinearConfig::new(96, 50).init::<Flex>(&device);
    let x = Tensor::<Flex, 3>::from_data(TensorData::new(values(2 * 9 * 96, 1), [2, 9, 96]), &device);
    let residual = Tensor::<Flex, 3>::from_data(TensorData::new(values(2 * 9 * 50, 2), [2, 9, 50]), &device);
    let fused = autocast(Some(FloatDType::BF16), || linear_residual(&layer, None, x.clone(), residual.clone()));
    let separate = autocast(Some(FloatDType::BF16), || polarity_kernels::linear(&layer, x)) + residual;
    let (fused, separate) = (fused.into_data().to_vec::<f32>().unwrap(), separate.into_data().to_vec::<f32>().unwrap());
    assert_close(&fused, &separate, "linear_residual");
}

#[test]
fn packed_weights_follow_their_buffers() {
    let _serial = serial();
    if !available() {
        return;
    }
    polarity_kernels::clear_packed_weights();
    let [rows, k, n] = [4, 32, 16];
    let x = tensor(values(rows * k, 3), [rows, k]);
    let product = |w: &Tensor<Flex, 2>| {
        autocast(Some(FloatDType::BF16), || linear_with(x.clone(), w.clone(), None))
            .into_data()
            .to_vec::<f32>()
            .unwrap()
    };
    let w = tensor(values(k * n, 4), [k, n]);
    let first = product(&w);
    assert_eq!(packed_weight_count(), 1, "the weight is packed once");
    assert_eq!(product(&w), first, "and reused");
    assert_eq!(packed_weight_count(), 1);

    // A changed weight is a new buffer: packed anew, with its own values.
    let doubled = w.clone() * 2.0;
    let second = product(&doubled);
    assert_eq!(packed_weight_count(), 2);
    first.iter().zip(&second).for_each(|(a, b)| assert_eq!(2.0 * a, *b, "doubling is exact in bf16"));

    // Dropped weights leave the cache at the next insertion.
    drop((w, doubled));
    let other = tensor(values(k * n, 5), [k, n]);
    product(&other);
    assert_eq!(packed_weight_count(), 1, "only the live weight stays");
    polarity_kernels::clear_packed_weights();
    assert_eq!(packed_weight_count(), 0);
}

/// `dy wᵀ` from the operands as `operand` reads them (`w` is `[k, n]`), in f64.
fn input_gradient(dy: &[f32], w: &[f32], [rows, k, n]: [usize; 3], operand: fn(f32) -> f64) -> Vec<f32> {
    let mut out = vec![0f32; rows * k];
    for r in 0..rows {
        for i in 0..k {
            out[r * k + i] = (0..n).map(|c| operand(dy[r * n + c]) * operand(w[i * n + c])).sum::<f64>() as f32;
        }
    }
    out
}

/// The frozen weight `w: [k, n]` as a LoRA base holds it: a transposed view of PyTorch's `[n, k]` layout.
fn frozen_base(w: &[f32], [k, n]: [usize; 2]) -> Tensor<Autodiff<Flex>, 2> {
    let transposed: Vec<f32> = (0..n * k).map(|i| w[(i % k) * n + i / k]).collect();
    train_tensor(transposed, [n, k]).transpose()
}

/// A float32 tensor on the training backend.
fn train_tensor(values: Vec<f32>, dims: [usize; 2]) -> Tensor<Autodiff<Flex>, 2> {
    Tensor::from_data(TensorData::new(values, dims), &Default::default())
}

#[test]
fn training_on_a_frozen_weight_runs_both_products_in_bf16() {
    let _serial = serial();
    if !available() {
        return;
    }
    polarity_kernels::clear_packed_weights();
    let [rows, k, n] = [37, 130, 90];
    let (x, w, bias, dy) = (values(rows * k, 6), values(k * n, 7), values(n, 8), values(rows * n, 9));
    let input = train_tensor(x.clone(), [rows, k]).require_grad();
    let weight = frozen_base(&w, [k, n]);
    let bias = train_tensor(bias.clone(), [1, n]).reshape([n]);
    let output = autocast(Some(FloatDType::BF16), || linear_with(input.clone(), weight.clone(), Some(bias.clone())));
    assert_eq!(packed_weight_count(), 1, "the forward pass packs the weight");
    let expected = reference(&x, &w, &values(n, 8), [rows, k, n], bf16);
    assert_close(&output.clone().into_data().to_vec::<f32>().unwrap(), &expected, "forward");

    // The loss sum(y * dy) sends dy back; the input gradient is dy wᵀ in bf16, and the transpose is packed.
    let grads = (output * train_tensor(dy.clone(), [rows, n])).sum().backward();
    let grad = input.grad(&grads).expect("the input takes a gradient");
    assert_close(
        &grad.into_data().to_vec::<f32>().unwrap(),
        &input_gradient(&dy, &w, [rows, k, n], bf16),
        "input gradient",
    );
    assert_eq!(packed_weight_count(), 2, "the backward pass packs the transpose once");

    polarity_kernels::clear_packed_weights();
}

#[test]
fn training_a_weight_runs_all_three_products_in_bf16() {
    let _serial = serial();
    if !available() {
        return;
    }
    polarity_kernels::clear_packed_weights();
    // Odd row counts (a padded last pair), edge tiles, and a shape past the parallel threshold.
    for (case, [rows, k, n]) in [[37, 130, 90], [1, 5, 3], [301, 200, 150]].into_iter().enumerate() {
        let (x, w, bias, dy) =
            (values(rows * k, case), values(k * n, case + 1), values(n, case + 2), values(rows * n, case + 3));
        let input = train_tensor(x.clone(), [rows, k]).require_grad();
        let weight = train_tensor(w.clone(), [k, n]).require_grad();
        let trained_bias = train_tensor(bias.clone(), [1, n]).reshape([n]).require_grad();
        let output =
            autocast(Some(FloatDType::BF16), || linear_with(input.clone(), weight.clone(), Some(trained_bias.clone())));
        let what = |name: &str| format!("{name}, [{rows}, {k}] x [{k}, {n}]");
        assert_close(
            &output.clone().into_data().to_vec::<f32>().unwrap(),
            &reference(&x, &w, &bias, [rows, k, n], bf16),
            &what("y"),
        );
        let grads = (output * train_tensor(dy.clone(), [rows, n])).sum().backward();
        let grad = input.grad(&grads).expect("the input takes a gradient");
        assert_close(
            &grad.into_data().to_vec::<f32>().unwrap(),
            &input_gradient(&dy, &w, [rows, k, n], bf16),
            &what("dx"),
        );
        // dW = xᵀ dy from the bf16-rounded x and dy; db = Σ dy in f32 (burn's bias add).
        let weight_gradient: Vec<f32> = (0..k * n)
            .map(|i| (0..rows).map(|r| bf16(x[r * k + i / n]) * bf16(dy[r * n + i % n])).sum::<f64>() as f32)
            .collect();
        let grad = weight.grad(&grads).expect("a trained weight gets a gradient");
        assert_eq!(grad.dims(), [k, n]);
        assert_close(&grad.into_data().to_vec::<f32>().unwrap(), &weight_gradient, &what("dW"));
        let bias_gradient: Vec<f32> =
            (0..n).map(|c| (0..rows).map(|r| dy[r * n + c] as f64).sum::<f64>() as f32).collect();
        let grad = trained_bias.grad(&grads).expect("a trained bias gets a gradient");
        assert_close(&grad.into_data().to_vec::<f32>().unwrap(), &bias_gradient, &what("db"));
    }
    assert_eq!(packed_weight_count(), 0, "trained weights are packed per call, not cached");
}

/// Whether this CPU runs the packed float32 products (AVX-512).
fn f32_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    let available = std::arch::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    let available = false;
    if !available {
        eprintln!("skipped: this CPU has no AVX-512");
    }
    available
}

#[test]
fn training_on_a_frozen_weight_in_f32_runs_packed_products_kept_across_steps() {
    let _serial = serial();
    if !f32_available() {
        return;
    }
    polarity_kernels::clear_packed_weights();
    // Rows that are not a multiple of the tile, edge columns, a tiny product, one past the parallel
    // threshold, and a depth longer than one pass over the panels.
    let shapes = [[37, 130, 90], [1, 5, 3], [301, 200, 150], [20, 900, 50]];
    for (case, [rows, k, n]) in shapes.into_iter().enumerate() {
        let (x, w, bias, dy) =
            (values(rows * k, case), values(k * n, case + 1), values(n, case + 2), values(rows * n, case + 3));
        let expected = reference(&x, &w, &bias, [rows, k, n], exact);
        let expected_dx = input_gradient(&dy, &w, [rows, k, n], exact);
        let bias = train_tensor(bias.clone(), [1, n]).reshape([n]);
        // A LoRA base's transposed view (packed; its transpose, row-major, read in place) and burn's
        // row-major `[in, out]` (read in place; its transpose packed).
        for (layout, weight) in
            [("transposed view", frozen_base(&w, [k, n])), ("row-major", train_tensor(w.clone(), [k, n]))]
        {
            let what = |name: &str| format!("{name}, {layout} [{rows}, {k}] x [{k}, {n}]");
            polarity_kernels::clear_packed_weights();
            for step in 0..2 {
                let input = train_tensor(x.clone(), [rows, k]).require_grad();
                let output = linear_with(input.clone(), weight.clone(), Some(bias.clone()));
                assert_close(&output.clone().into_data().to_vec::<f32>().unwrap(), &expected, &what("y"));
                let grads = (output * train_tensor(dy.clone(), [rows, n])).sum().backward();
                let grad = input.grad(&grads).expect("the input takes a gradient");
                assert_close(&grad.into_data().to_vec::<f32>().unwrap(), &expected_dx, &what("dx"));
                assert_eq!(
                    packed_weight_count(),
                    1,
                    "{}: step {step} packs one of the weight and its transpose, once",
                    what("cache")
                );
            }
        }
    }
    // Packed weights not kept: the same products, nothing held.
    polarity_kernels::set_keep_packed_weights(false);
    let [rows, k, n] = [37, 130, 90];
    let (x, w) = (values(rows * k, 0), values(k * n, 1));
    let weight = train_tensor(w.clone(), [k, n]);
    let output = linear_with(train_tensor(x.clone(), [rows, k]), weight, None);
    let expected = reference(&x, &w, &vec![0.0; n], [rows, k, n], exact);
    assert_close(&output.into_data().to_vec::<f32>().unwrap(), &expected, "y, packed weights not kept");
    assert_eq!(packed_weight_count(), 0, "nothing is kept");
    polarity_kernels::set_keep_packed_weights(true);

    // A trained weight keeps burn's linear: nothing packed.
    polarity_kernels::clear_packed_weights();
    let weight = train_tensor(values(6, 1), [3, 2]).require_grad();
    let output = linear_with(train_tensor(values(12, 2), [4, 3]), weight.clone(), None);
    let grads = output.sum().backward();
    assert!(weight.grad(&grads).is_some());
    assert_eq!(packed_weight_count(), 0, "a trained f32 weight is not packed");
}

/// Attention under bf16 autocast for one `(sequence, head)` block, from the operands as the kernel
/// rounds them: `scale * q` and the keys rounded to bf16 for the scores, the unnormalised softmax
/// weights and the values rounded for the weighted sum, the normaliser from the unrounded weights; in
/// f64. `visible(i, j)`: whether query `i` sees key `j`; `at(x, row, col)` reads a projection.
fn attention_reference(
    [q, k, v]: [&dyn Fn(usize, usize) -> f32; 3],
    [len, head_dim]: [usize; 2],
    visible: &dyn Fn(usize, usize) -> bool,
) -> Vec<f32> {
    let scale = 1.0 / (head_dim as f32).sqrt();
    let mut out = vec![0f32; len * head_dim];
    for i in 0..len {
        let keys: Vec<usize> = (0..len).filter(|&j| visible(i, j)).collect();
        let scores: Vec<f64> =
            keys.iter().map(|&j| (0..head_dim).map(|c| bf16(q(i, c) * scale) * bf16(k(j, c))).sum()).collect();
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let total: f64 = weights.iter().sum();
        for c in 0..head_dim {
            let sum: f64 = keys.iter().zip(&weights).map(|(&j, w)| bf16(*w as f32) * bf16(v(j, c))).sum();
            out[i * head_dim + c] = (sum / total) as f32;
        }
    }
    out
}

#[test]
fn bf16_attention_multiplies_the_rounded_operands() {
    use polarity_kernels::{AttentionHeads, AttentionMask, attention};
    let _serial = serial();
    if !available() {
        return;
    }
    let device = Default::default();
    // Several key panels and edge tiles (lengths past 48), an odd head width, grouped-query heads;
    // padded batches (bidirectional and causal) and packed sequences.
    for (case, (heads, lengths, causal, packed)) in [
        (AttentionHeads { heads: 2, kv_heads: 2, head_dim: 64 }, vec![100, 37], false, false),
        (AttentionHeads { heads: 4, kv_heads: 2, head_dim: 5 }, vec![60, 60], true, false),
        (AttentionHeads { heads: 3, kv_heads: 3, head_dim: 32 }, vec![50, 1, 97], false, true),
    ]
    .into_iter()
    .enumerate()
    {
        let (batch, seq_len) = if packed { (1, lengths.iter().sum()) } else { (lengths.len(), lengths[0]) };
        let [q_width, kv_width] = [heads.heads, heads.kv_heads].map(|count| count * heads.head_dim);
        let projection = |width: usize, seed: usize| -> Vec<f32> {
            values(batch * seq_len * width, seed).into_iter().map(|x| 0.4 * x).collect()
        };
        let (q, k, v) = (projection(q_width, case), projection(kv_width, case + 1), projection(kv_width, case + 2));
        let as_tensor = |values: &[f32], width: usize| {
            Tensor::<Flex, 3>::from_data(TensorData::new(values.to_vec(), [batch, seq_len, width]), &device)
        };
        let mask = if packed {
            AttentionMask::packed(lengths.clone(), causal)
        } else {
            let rows: Vec<i64> = lengths.iter().flat_map(|&n| (0..seq_len).map(move |j| i64::from(j < n))).collect();
            let padding = Tensor::<Flex, 2, Int>::from_data(TensorData::new(rows, [batch, seq_len]), &device);
            if causal { AttentionMask::causal(Some(padding)) } else { AttentionMask::bidirectional(padding) }
        };
        let run =
            || attention(as_tensor(&q, q_width), as_tensor(&k, kv_width), as_tensor(&v, kv_width), heads, &mask, None);
        let actual = autocast(Some(FloatDType::BF16), run).into_data().to_vec::<f32>().unwrap();
        let (mut max_error, mut max_f32_error) = (0f32, 0f32);
        let f32_result = run().into_data().to_vec::<f32>().unwrap();
        // Each sequence's real tokens: its first row and length in the projections.
        let sequences: Vec<(usize, usize)> = if packed {
            lengths.iter().scan(0, |first, &len| Some((std::mem::replace(first, *first + len), len))).collect()
        } else {
            lengths.iter().enumerate().map(|(b, &len)| (b * seq_len, len)).collect()
        };
        for &(first, len) in &sequences {
            for h in 0..heads.heads {
                let kv_h = h / (heads.heads / heads.kv_heads);
                let d = heads.head_dim;
                let read = |x: &[f32], width: usize, head: usize| {
                    let x = x.to_vec();
                    move |row: usize, col: usize| x[(first + row) * width + head * d + col]
                };
                let (qr, kr, vr) = (read(&q, q_width, h), read(&k, kv_width, kv_h), read(&v, kv_width, kv_h));
                let visible = |i: usize, j: usize| !causal || j <= i;
                let expected = attention_reference([&qr, &kr, &vr], [len, d], &visible);
                for i in 0..len {
                    for c in 0..d {
                        let index = (first + i) * q_width + h * d + c;
                        max_error = max_error.max((actual[index] - expected[i * d + c]).abs());
                        max_f32_error = max_f32_error.max((f32_result[index] - expected[i * d + c]).abs());
                    }
                }
            }
        }
        assert!(max_error < 1e-3, "case {case}: bf16 attention off the rounded operands' result by {max_error}");
        // The check tells the two apart: float32 attention is further from the rounded operands' result.
        assert!(max_f32_error > 4.0 * max_error, "case {case}: f32 {max_f32_error} vs bf16 {max_error}");
    }
}

#[test]
fn bf16_gelu_products_hand_their_rounded_output_to_the_next_product() {
    use polarity_kernels::linear_gelu;
    let _serial = serial();
    if !available() {
        return;
    }
    let device = Default::default();
    let floats = |x: Tensor<Flex, 2>| x.into_data().to_vec::<f32>().unwrap();
    // Edge tiles, several column blocks of tasks, a depth of several passes (3072 inputs).
    for (case, [rows, k, n, m]) in [[13, 77, 50, 30], [130, 384, 1536, 384], [9, 3072, 96, 20]].into_iter().enumerate()
    {
        let first = LinearConfig::new(k, n).init::<Flex>(&device);
        let second = LinearConfig::new(n, m).init::<Flex>(&device);
        let x = values(rows * k, case);
        let residual = values(rows * m, case + 1);
        let hidden = autocast(Some(FloatDType::BF16), || linear_gelu(&first, tensor(x.clone(), [rows, k])));
        assert_eq!(hidden.dtype(), burn::tensor::DType::BF16, "case {case}");
        let hidden_values: Vec<f32> = hidden.clone().cast(FloatDType::F32).into_data().to_vec().unwrap();

        // The GELU of the rounded operands' product, rounded to bf16: within one bf16 step (the kernel's
        // f32 sums and fast erf may round the other way at a tie).
        let bias = |layer: &burn::nn::Linear<Flex>| floats(layer.bias.as_ref().unwrap().val().unsqueeze());
        let product = reference(&x, &floats(first.weight.val()), &bias(&first), [rows, k, n], bf16);
        let expected = floats(polarity_kernels::composed::gelu(tensor(product, [rows, n])));
        for (actual, expected) in hidden_values.iter().zip(&expected) {
            let step = expected.abs() / 128.0 + 1e-6;
            assert!((actual - half_round(*expected)).abs() <= step, "case {case}: gelu {actual} vs {expected}");
        }

        // The next product takes the bf16 values as its operand: the product of exactly those values.
        let next = autocast(Some(FloatDType::BF16), || {
            linear_residual(&second, None, hidden.unsqueeze::<3>(), tensor(residual.clone(), [rows, m]).unsqueeze())
        });
        let mut expected = reference(&hidden_values, &floats(second.weight.val()), &bias(&second), [rows, n, m], bf16);
        expected.iter_mut().zip(&residual).for_each(|(y, r)| *y += r);
        assert_close(&next.into_data().to_vec::<f32>().unwrap(), &expected, &format!("case {case}: next product"));
    }
}
