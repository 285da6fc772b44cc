//! Models built straight into NF4 with seeded random weights (`LlamaConfig::init_quantized_random`),
//! NF4 matrices from their parts, and the clear error for a checkpoint without weights.

use std::time::Instant;

use burn::backend::{Autodiff, Flex};
use burn::module::{AutodiffModule, Param};
use burn::prelude::*;
use burn::tensor::Distribution;
use polarity_hub::{HubError, RepoKind, RepoSource, WeightsSearch};
use polarity_llama::layers::random::RandomStream;
use polarity_llama::quant::{MAX_DECODED_VALUES, NF4_BLOCK_SIZE, NF4_CODEBOOK};
use polarity_llama::{
    Llama, LlamaConfig, LlamaError, LoraConfig, QuantFormat, QuantizedLinear, QuantizedMatrix, TokenEmbedding,
    causal_lm_loss,
};

type Cpu = Flex<f32>;
type Train = Autodiff<Cpu>;

const SHARED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared");
const LLAMA3: &str = "meta-llama/Meta-Llama-3-8B-Instruct";

/// Two layers, untied head, every `in_features` a multiple of 64 (head width 32, two key/value heads).
fn tiny_config() -> LlamaConfig {
    LlamaConfig::new(320, 128, 192, 2, 4, 2)
}

/// Every quantised matrix of a model: the embedding table and the head (if quantised), then the
/// projections.
fn matrices<B: Backend>(model: &Llama<B>) -> Vec<&QuantizedMatrix> {
    let mut matrices: Vec<&QuantizedMatrix> =
        model.model.embed_tokens.as_quantized().map(|e| &e.matrix).into_iter().collect();
    matrices.extend(model.lm_head.as_ref().and_then(|head| head.as_quantized()).map(|head| &head.matrix));
    for layer in &model.model.layers {
        for (name, projection) in layer.projections() {
            let quantized = projection.base_layer.as_quantized().unwrap_or_else(|| panic!("{name} is not quantised"));
            matrices.push(&quantized.matrix);
        }
    }
    matrices
}

fn values<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Vec<f32> {
    tensor.into_data().convert::<f32>().into_vec().unwrap()
}

fn mean_and_std(values: &[f32]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let variance = values.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n;
    (mean, variance.sqrt())
}

/// Checks the structure of a random quantised build against the dense init of the same config: the
/// same shapes and parameter count, every projection NF4, and a weight memory that adds up.
fn check_against_dense_init<B: Backend>(config: &LlamaConfig, model: &Llama<B>) {
    let dense = config.init::<B>(&Default::default()).unwrap();
    let dense_memory = dense.weight_memory();
    let memory = model.weight_memory();
    assert_eq!(memory.parameters(), dense_memory.dense_params, "the same parameters as the dense init");
    assert_eq!(model.num_layers(), config.num_hidden_layers);
    for (layer, dense_layer) in model.model.layers.iter().zip(&dense.model.layers) {
        for ((name, projection), (_, dense_projection)) in layer.projections().iter().zip(dense_layer.projections()) {
            let quantized = projection.base_layer.as_quantized().unwrap_or_else(|| panic!("{name} is dense"));
            assert_eq!(quantized.matrix.format(), QuantFormat::Nf4, "{name}");
            assert_eq!(projection.dims(), dense_projection.dims(), "{name}");
        }
    }
    assert!(model.has_quantized_base());

    // Quantised bytes are the matrices' codes and scales; dense bytes are f32 parameters.
    let matrices = matrices(model);
    assert_eq!(memory.quantized_matrices, matrices.len());
    assert_eq!(memory.quantized_bytes, matrices.iter().map(|m| m.stored_bytes()).sum::<usize>());
    let quantized_values: usize = matrices.iter().map(|m| m.dims()[0] * m.dims()[1]).sum();
    assert_eq!(memory.quantized_f32_bytes, 4 * quantized_values);
    assert_eq!(memory.quantized_bytes * 8, quantized_values * 9 / 2, "4.5 bits per weight");
    assert_eq!(memory.dense_params + quantized_values, dense_memory.dense_params);
    assert_eq!(memory.dense_bytes, 4 * memory.dense_params);
    assert_eq!(memory.total_bytes(), memory.dense_bytes + memory.quantized_bytes);
    assert_eq!(memory.f32_equivalent_bytes(), dense_memory.dense_bytes);
}

#[test]
fn a_random_quantised_build_is_nf4_like_the_dense_init_and_deterministic() {
    let config = tiny_config();
    let device = Default::default();
    let model = config.init_quantized_random::<Cpu>(&device, 7).unwrap();
    check_against_dense_init(&config, &model);
    // Untied: the embedding table and the head are NF4 as well; only the norms are dense.
    assert_eq!(model.model.embed_tokens.as_quantized().unwrap().matrix.dims(), [320, 128]);
    let head = |model: &Llama<Cpu>| model.lm_head.as_ref().unwrap().as_quantized().unwrap().matrix.dequantize();
    assert_eq!(model.lm_head.as_ref().unwrap().dims(), [128, 320]);
    assert_eq!(model.weight_memory().quantized_matrices, 2 + 2 * 7);
    assert_eq!(model.weight_memory().dense_params, (2 * 2 + 1) * 128);

    // The same seed builds the same model; another seed another one.
    let again = config.init_quantized_random::<Cpu>(&device, 7).unwrap();
    let other = config.init_quantized_random::<Cpu>(&device, 8).unwrap();
    for ((a, b), c) in matrices(&model).iter().zip(matrices(&again)).zip(matrices(&other)) {
        assert_eq!(a.packed_bytes(), b.packed_bytes());
        assert_eq!(a.nf4_absmax(), b.nf4_absmax());
        assert_ne!(a.packed_bytes(), c.packed_bytes());
    }
    assert_eq!(head(&model), head(&again));
    assert_ne!(head(&model), head(&other));

    // The values have the initializer's standard deviation (0.02), the projections' and the head's.
    let q_proj = model.model.layers[0].self_attn.q_proj.base_layer.as_quantized().unwrap().matrix.dequantize();
    for (name, values) in [("q_proj", q_proj), ("lm_head", head(&model))] {
        let (mean, std) = mean_and_std(&values);
        assert!((std - 0.02).abs() < 0.002, "{name}: std {std}");
        assert!(mean.abs() < 0.003, "{name}: mean {mean}");
    }

    // Finite logits, from the full sequence and from the last real token of padded rows.
    let ids = Tensor::<Cpu, 2, Int>::from_data([[1, 5, 9, 300, 17], [4, 8, 15, 0, 0]], &device);
    let mask = Tensor::<Cpu, 2, Int>::from_data([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], &device);
    let logits = model.forward(ids.clone(), Some(mask.clone()));
    assert_eq!(logits.dims(), [2, 5, 320]);
    assert!(values(logits).iter().all(|v| v.is_finite()));
    let last = values(model.last_token_logits(ids, mask));
    assert_eq!(last.len(), 2 * 320);
    assert!(last.iter().all(|v| v.is_finite()));
}

#[test]
fn lora_trains_on_a_random_quantised_base() {
    let device = Default::default();
    let model = tiny_config().init_quantized_random::<Train>(&device, 3).unwrap();
    let lora = model.with_lora(&LoraConfig::new(4, 8.0)).unwrap();
    let ids = Tensor::<Train, 2, Int>::from_data([[2, 7, 1, 8, 28, 18]], &device);
    let labels = Tensor::<Train, 2, Int>::from_data([[-100, -100, -100, -100, -100, 18]], &device);
    let loss = causal_lm_loss(lora.forward(ids, None), labels);
    let loss_value = values(loss.clone())[0];
    assert!(loss_value.is_finite() && loss_value > 0.0, "loss {loss_value}");
    let grads = loss.backward();
    let gradients = lora.lora_gradients(&grads);
    assert_eq!(gradients.len(), 2 * 2 * 2, "lora_A and lora_B of q_proj and v_proj in both layers");
    assert!(gradients.iter().all(|(_, grad)| grad.to_vec::<f32>().unwrap().iter().all(|v| v.is_finite())));
    // Only the adapters train: the quantised table, head and projections are no parameters at all.
    assert_eq!(lora.weight_memory().dense_params, (2 * 2 + 1) * 128 + 2 * 4 * (128 + 128) + 2 * 4 * (128 + 64));
}

#[test]
fn a_tied_table_stays_dense_and_bad_shapes_are_errors() {
    let device = Default::default();
    let config = tiny_config().with_tie_word_embeddings(true);
    let model = config.init_quantized_random::<Cpu>(&device, 1).unwrap();
    assert!(matches!(model.model.embed_tokens, TokenEmbedding::Dense(_)));
    assert!(model.lm_head.is_none());
    check_against_dense_init(&config, &model);
    let logits = model.forward(Tensor::from_data([[3, 1, 4]], &device), None);
    assert!(values(logits).iter().all(|v| v.is_finite()));

    // A hidden size of 32 is half an NF4 block.
    let err = LlamaConfig::new(16, 32, 64, 1, 4, 2).init_quantized_random::<Cpu>(&device, 1).unwrap_err();
    assert!(matches!(err, LlamaError::QuantBlockSize { cols: 32, block_size: 64, .. }), "{err}");
    let err = LlamaConfig::new(16, 64, 64, 1, 3, 2).init_quantized_random::<Cpu>(&device, 1).unwrap_err();
    assert!(matches!(err, LlamaError::InvalidConfigValue { .. }), "{err}");
}

#[test]
fn llama3_8b_with_one_layer_builds_in_nf4_at_its_real_shape() {
    let config = LlamaConfig::llama3_8b_instruct().with_num_hidden_layers(1);
    let device = Default::default();
    let started = Instant::now();
    let model = config.init_quantized_random::<Cpu>(&device, 42).unwrap();
    let built = started.elapsed();
    check_against_dense_init(&config, &model);
    let memory = model.weight_memory();
    println!("Llama-3-8B, 1 layer: built in {built:.2?}; {memory}");
    let mlp = &model.model.layers[0].mlp;
    assert_eq!(mlp.gate_proj.base_layer.as_quantized().unwrap().matrix.dims(), [14_336, 4096]);
    assert_eq!(mlp.down_proj.base_layer.as_quantized().unwrap().matrix.dims(), [4096, 14_336]);
    // 218M projection weights, the 525M-value embedding table and the 525M-value head in NF4.
    let quantized = 218_103_808 + 2 * 525_336_576;
    assert_eq!(memory.parameters(), quantized + 2 * 4096 + 4096);
    assert_eq!(memory.quantized_bytes, quantized / 2 + quantized / 64 * 4);

    let started = Instant::now();
    let ids = Tensor::<Cpu, 2, Int>::from_data([[128_000, 791, 5818, 374, 6555, 13]], &device);
    let mask = Tensor::<Cpu, 2, Int>::ones([1, 6], &device);
    let logits = values(model.last_token_logits(ids, mask));
    println!("one forward pass of 6 tokens: {:.2?}", started.elapsed());
    assert_eq!(logits.len(), 128_256);
    assert!(logits.iter().all(|v| v.is_finite()));
}

#[test]
fn a_matrix_too_large_to_decode_at_once_is_multiplied_in_bands() {
    let device = Default::default();
    // Two bands: a full one and one of 3 rows.
    let (rows, cols) = (MAX_DECODED_VALUES / 4096 + 3, 4096);
    let matrix = QuantizedMatrix::random_nf4(rows, cols, 0.02, &RandomStream::new(3, 3)).unwrap();
    let bias: Vec<f32> = (0..rows).map(|i| (i % 7) as f32 * 0.01).collect();
    let bias = Tensor::<Train, 1>::from_data(TensorData::new(bias, [rows]), &device);
    let layer = QuantizedLinear::new(matrix.clone(), Some(Param::from_tensor(bias.clone()))).unwrap();
    let x = Tensor::<Train, 2>::random([3, cols], Distribution::Normal(0.0, 1.0), &device).require_grad();
    let dense = Tensor::<Train, 2>::from_data(TensorData::new(matrix.dequantize(), [rows, cols]), &device);
    let expected = x.clone().matmul(dense.transpose()) + bias.unsqueeze();

    let close = |ours: Vec<f32>, theirs: Vec<f32>, what: &str| {
        assert_eq!(ours.len(), theirs.len(), "{what}");
        let worst = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-4, "{what}: max difference {worst}");
    };
    // Inference (decoded per band) and training (decoded per band, again in the backward pass).
    let inference = layer.valid().forward(x.clone().inner());
    close(values(inference), values(expected.clone()), "inference");
    let output = layer.forward(x.clone());
    close(values(output.clone()), values(expected.clone()), "training forward");
    let weights = Tensor::<Train, 2>::random([3, rows], Distribution::Normal(0.0, 1.0), &device);
    let grads = (output * weights.clone()).sum().backward();
    let expected_grads = (expected * weights).sum().backward();
    let grad = |grads| values(x.grad(grads).unwrap());
    close(grad(&grads), grad(&expected_grads), "input gradient");
}

#[test]
fn nf4_matrices_from_parts_are_validated() {
    let codes: Vec<u8> = (0..64u8).collect();
    let matrix = QuantizedMatrix::from_nf4_parts(codes.clone(), vec![2.0, 0.5], 2, NF4_BLOCK_SIZE).unwrap();
    assert_eq!(matrix.packed_bytes(), codes.as_slice());
    let decoded = matrix.dequantize();
    // Byte 1 is 0x01: codes 0 and 1 of block 0 (scale 2), high nibble first.
    assert_eq!(&decoded[2..4], &[NF4_CODEBOOK[0] * 2.0, NF4_CODEBOOK[1] * 2.0]);
    assert_eq!(decoded[64], NF4_CODEBOOK[2] * 0.5);
    // The parts round-trip through the quantised form.
    let again =
        QuantizedMatrix::from_nf4_parts(matrix.packed_bytes().to_vec(), matrix.nf4_absmax().unwrap().to_vec(), 2, 64);
    assert_eq!(again.unwrap().dequantize(), decoded);
    // Rows decoded on their own, and NaN for a row outside the matrix.
    let rows = matrix.dequantize_rows(&[1, 7, 0]);
    assert_eq!(&rows[..64], &decoded[64..]);
    assert!(rows[64..128].iter().all(|v| v.is_nan()));
    assert_eq!(&rows[128..], &decoded[..64]);

    assert!(matches!(
        QuantizedMatrix::from_nf4_parts(vec![0u8; 63], vec![1.0; 2], 2, 64),
        Err(LlamaError::QuantDataLength { expected: 64, found: 63, .. })
    ));
    assert!(matches!(
        QuantizedMatrix::from_nf4_parts(vec![0u8; 64], vec![1.0; 3], 2, 64),
        Err(LlamaError::QuantDataLength { expected: 2, found: 3, .. })
    ));
    assert!(matches!(
        QuantizedMatrix::from_nf4_parts(vec![0u8; 48], vec![1.0], 1, 96),
        Err(LlamaError::QuantBlockSize { cols: 96, .. })
    ));
    let err = QuantizedMatrix::from_nf4_parts(vec![0u8; 64], vec![1.0, -0.5], 2, 64).unwrap_err();
    assert!(matches!(err, LlamaError::QuantInvalidScale { block: 1, value } if value == -0.5), "{err}");
    let err = QuantizedMatrix::from_nf4_parts(vec![0u8; 64], vec![f32::NAN, 1.0], 2, 64).unwrap_err();
    assert!(matches!(err, LlamaError::QuantInvalidScale { block: 0, .. }), "{err}");
    let stream = RandomStream::new(1, 2);
    assert!(matches!(
        QuantizedMatrix::random_nf4(2, 64, f32::INFINITY, &stream),
        Err(LlamaError::QuantInvalidScale { .. })
    ));
    assert!(matches!(QuantizedMatrix::random_nf4(2, 64, -1.0, &stream), Err(LlamaError::QuantInvalidScale { .. })));
}

#[test]
fn random_streams_are_deterministic_and_split_independently() {
    let stream = RandomStream::new(5, 9);
    // Long enough for several parallel tasks: the split does not change the values.
    let mut bytes = vec![0u8; 3 * (1 << 19) + 5];
    stream.fill_bytes(&mut bytes);
    assert_eq!(&bytes[..8], &stream.u64_at(0).to_le_bytes());
    let last_full = (bytes.len() / 8 - 1) * 8;
    assert_eq!(&bytes[last_full..last_full + 8], &stream.u64_at((last_full / 8) as u64).to_le_bytes());
    let normal = stream.normal(300_001, 2.0);
    assert_eq!(normal, stream.normal(300_001, 2.0));
    let (mean, std) = mean_and_std(&normal);
    assert!(mean.abs() < 0.02 && (std - 2.0).abs() < 0.02, "mean {mean}, std {std}");
    assert_ne!(normal, RandomStream::new(6, 9).normal(300_001, 2.0));
}

fn use_shared_cache() {
    // SAFETY: every test of this binary that reads these sets the same values, as the other hub-cache
    // tests of the workspace do.
    unsafe {
        std::env::set_var("HF_HOME", format!("{SHARED}/hf"));
        std::env::set_var("HF_HUB_OFFLINE", "1");
    }
}

#[test]
fn a_checkpoint_without_weights_is_a_clear_error() {
    use_shared_cache();
    // Meta-Llama-3-8B-Instruct's config.json and tokenizer are in the cache, its weights are not.
    let source = RepoSource::parse(LLAMA3, RepoKind::Model);
    let err = Llama::<Cpu>::from_pretrained(&source, &Default::default()).unwrap_err();
    let message = err.to_string();
    println!("{message}");
    let LlamaError::Hub(HubError::NoWeights { model, searched: WeightsSearch::OfflineCache(_) }) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(model, LLAMA3);
    assert!(message.contains("HF_HUB_OFFLINE"), "{message}");
    for part in [LLAMA3, "model.safetensors", "model.safetensors.index.json"] {
        assert!(message.contains(part), "{part:?} not in {message:?}");
    }

    // A local directory with a config.json and nothing else.
    let dir = tempfile::tempdir().unwrap();
    let config = source.file("config.json").unwrap();
    std::fs::copy(config, dir.path().join("config.json")).unwrap();
    let err =
        Llama::<Cpu>::from_pretrained(&RepoSource::Local(dir.path().to_path_buf()), &Default::default()).unwrap_err();
    let LlamaError::Hub(HubError::NoWeights { searched: WeightsSearch::Directory(searched), .. }) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(searched, dir.path());
    assert!(err.to_string().contains(&dir.path().display().to_string()), "{err}");
}
