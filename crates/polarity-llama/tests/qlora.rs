//! QLoRA: NF4 and GGUF-block quantised bases, LoRA on top, gradients to the adapters only.

mod common;

use common::inputs;

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::backend::{Autodiff, Flex};
use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::f16;
use polarity_core::reference::{Fixture, TensorCheck, Tolerance};
use polarity_hub::RepoSource;
use polarity_llama::gguf::{self, GgmlType};
use polarity_llama::quant::{NF4_BLOCK_SIZE, NF4_CODEBOOK, NF4_MAX_RELATIVE_ERROR};
use polarity_llama::{
    BaseLinear, Llama, LlamaConfig, LlamaError, LoraConfig, QuantFormat, QuantizedLinear, QuantizedMatrix,
    causal_lm_loss,
};

const TINY_LLAMA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/fixtures/tiny-llama");
const GGUF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf");

type Cpu = Flex<f32>;
type Train = Autodiff<Cpu>;

/// A deterministic pseudo-random stream (xorshift), so the tests need no random crate.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Roughly N(0, 1): a sum of 12 uniforms.
    fn normal(&mut self) -> f32 {
        (0..12).map(|_| self.uniform()).sum::<f32>() - 6.0
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

// ---------------------------------------------------------------------------------------------- NF4

#[test]
#[allow(clippy::excessive_precision)]
fn nf4_codebook_is_bitsandbytes_and_its_values_round_trip_exactly() {
    // bitsandbytes' get_4bit_type("nf4"), as printed by torch in float32.
    let bitsandbytes: [f32; 16] = [
        -1.0,
        -0.6961928009986877,
        -0.5250730514526367,
        -0.39491748809814453,
        -0.28444138169288635,
        -0.18477343022823334,
        -0.09105003625154495,
        0.0,
        0.07958029955625534,
        0.16093020141124725,
        0.24611230194568634,
        0.33791524171829224,
        0.44070982933044434,
        0.5626170039176941,
        0.7229568362236023,
        1.0,
    ];
    assert_eq!(NF4_CODEBOOK, bitsandbytes);

    // Every codebook value times a power-of-two absmax is exactly representable: it comes back bit
    // for bit. Row 0 has scale 2 (it holds -2), row 1 scale 0.5 (it holds 0.5).
    let row0: Vec<f32> = (0..NF4_BLOCK_SIZE).map(|i| NF4_CODEBOOK[i % 16] * 2.0).collect();
    let row1: Vec<f32> = (0..NF4_BLOCK_SIZE).map(|i| NF4_CODEBOOK[15 - (i * 7) % 16] * 0.5).collect();
    let values = [row0, row1].concat();
    let matrix = QuantizedMatrix::quantize_nf4(&values, 2, NF4_BLOCK_SIZE).unwrap();
    assert_eq!(matrix.format(), QuantFormat::Nf4);
    assert_eq!(matrix.nf4_absmax().unwrap(), &[2.0, 0.5]);
    assert_eq!(matrix.dequantize(), values);
    // Two codes per byte, the first value of a pair in the high nibble (bitsandbytes' packing).
    assert_eq!(&matrix.packed_bytes()[..3], &[0x01, 0x23, 0x45]);

    // An all-zero block has scale 0 and comes back as zeros.
    let zeros = QuantizedMatrix::quantize_nf4(&[0.0; 64], 1, 64).unwrap();
    assert_eq!(zeros.nf4_absmax().unwrap(), &[0.0]);
    assert_eq!(zeros.dequantize(), vec![0.0; 64]);
}

#[test]
fn nf4_rounds_to_the_nearest_code_within_half_the_widest_gap() {
    let (rows, cols) = (24, 192);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // Weight-like values with a few outliers, so block scales vary.
    let values: Vec<f32> =
        (0..rows * cols).map(|i| rng.normal() * 0.02 * if i % 97 == 0 { 8.0 } else { 1.0 }).collect();
    let matrix = QuantizedMatrix::quantize_nf4(&values, rows, cols).unwrap();
    assert_eq!(matrix.dims(), [rows, cols]);
    let restored = matrix.dequantize();
    let absmax = matrix.nf4_absmax().unwrap();
    assert_eq!(absmax.len(), rows * cols / NF4_BLOCK_SIZE);

    let (mut abs_error, mut abs_value) = (0.0f64, 0.0f64);
    for (block, ((original, restored), &scale)) in
        values.chunks(NF4_BLOCK_SIZE).zip(restored.chunks(NF4_BLOCK_SIZE)).zip(absmax).enumerate()
    {
        let expected_scale = original.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert_eq!(scale, expected_scale, "block {block}: absmax");
        for (&x, &y) in original.iter().zip(restored) {
            // The code is the nearest codebook entry of x / absmax ...
            let normalised = x * (1.0 / scale);
            let nearest = NF4_CODEBOOK.iter().map(|&c| (c - normalised).abs()).fold(f32::INFINITY, f32::min);
            assert!(((y / scale) - normalised).abs() <= nearest + 1e-6, "block {block}: {x} -> {y} is not the nearest");
            // ... so the error is at most half the widest gap of the codebook times absmax.
            assert!((x - y).abs() <= NF4_MAX_RELATIVE_ERROR * scale * (1.0 + 1e-6), "block {block}: {x} -> {y}");
            abs_error += f64::from((x - y).abs());
            abs_value += f64::from(x.abs());
        }
    }
    // The transposed decoding (burn's [in, out] layout) holds the same values.
    assert_eq!(matrix.dequantize_transposed(), transpose(&restored, rows, cols));

    let relative = abs_error / abs_value;
    println!("NF4 mean |error| / mean |value| on weight-like data: {relative:.4}");
    assert!(relative < 0.2, "NF4 relative error {relative}");
    assert_eq!(matrix.bits_per_weight(), 4.5);
}

#[test]
fn quantisation_errors_are_typed() {
    assert!(matches!(
        QuantizedMatrix::quantize_nf4(&[0.5; 200], 2, 100),
        Err(LlamaError::QuantBlockSize { rows: 2, cols: 100, block_size: 64, .. })
    ));
    assert!(matches!(
        QuantizedMatrix::quantize_nf4(&[0.5; 100], 2, 64),
        Err(LlamaError::QuantDataLength { expected: 128, found: 100, .. })
    ));
    let mut with_nan = vec![0.5; 128];
    with_nan[70] = f32::NAN;
    assert!(matches!(
        QuantizedMatrix::quantize_nf4(&with_nan, 2, 64),
        Err(LlamaError::QuantNonFinite { index: 70, .. })
    ));

    // GGUF: a type that is not decoded, rows that are not whole blocks, a wrong byte count.
    assert!(matches!(
        QuantizedMatrix::from_gguf_blocks(GgmlType::Q8_1, &[0; 40], 1, 32),
        Err(LlamaError::GgufUnsupportedTensorType { ggml_type, .. }) if ggml_type == "Q8_1"
    ));
    assert!(matches!(
        QuantizedMatrix::from_gguf_blocks(GgmlType::Q4_1, &[0; 40], 1, 48),
        Err(LlamaError::QuantBlockSize { block_size: 32, .. })
    ));
    assert!(matches!(
        QuantizedMatrix::from_gguf_blocks(GgmlType::Q4_1, &[0; 39], 2, 32),
        Err(LlamaError::QuantDataLength { expected: 40, found: 39, unit: "bytes", .. })
    ));
    // RoPE un-permutation needs an even number of rows per head.
    let matrix = QuantizedMatrix::quantize_nf4(&[0.5; 6 * 64], 6, 64).unwrap();
    assert!(matches!(matrix.unpermute_rope_rows(2), Err(LlamaError::GgufTensorData(_))));

    // A model whose projections are not whole NF4 blocks (hidden size 32).
    let config = LlamaConfig::new(16, 32, 64, 1, 4, 2);
    let model = config.init::<Cpu>(&Default::default()).unwrap();
    let err = model.quantize_frozen_base().unwrap_err();
    assert!(matches!(err, LlamaError::QuantBlockSize { cols: 32, block_size: 64, .. }), "{err}");
}

/// `[rows, cols]` row-major to `[cols, rows]` row-major.
fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..cols).flat_map(|c| (0..rows).map(move |r| values[r * cols + c])).collect()
}

// --------------------------------------------------------------------------------------------- GGUF

/// Random blocks of `ggml_type` for a `[rows, cols]` matrix, with finite f16 scales.
fn random_blocks(ggml_type: GgmlType, rows: usize, cols: usize, rng: &mut Rng) -> Vec<u8> {
    let n_blocks = rows * cols / ggml_type.block_len();
    let scale = |rng: &mut Rng| f16::from_f32(0.001 + rng.uniform() * 0.01).to_le_bytes();
    let mut bytes = Vec::new();
    for _ in 0..n_blocks {
        let mut block = rng.bytes(ggml_type.block_bytes());
        match ggml_type {
            GgmlType::Q4_0 | GgmlType::Q8_0 => block[0..2].copy_from_slice(&scale(rng)),
            GgmlType::Q4_1 | GgmlType::Q4_K => {
                block[0..2].copy_from_slice(&scale(rng));
                block[2..4].copy_from_slice(&scale(rng));
            }
            GgmlType::Q6_K => block[208..210].copy_from_slice(&scale(rng)),
            GgmlType::F16 => block.copy_from_slice(&f16::from_f32(rng.normal()).to_le_bytes()),
            other => panic!("no sample for {other}"),
        }
        bytes.extend(block);
    }
    bytes
}

#[test]
fn gguf_blocks_are_kept_and_decode_like_the_gguf_reader() {
    // 40 rows: two full tiles of 16 and a partial one in the transposed decoding.
    let (rows, cols, heads) = (40, 256, 2);
    let mut rng = Rng(7);
    for (ggml_type, bits) in [
        (GgmlType::Q4_0, 4.5),
        (GgmlType::Q4_1, 5.0),
        (GgmlType::Q8_0, 8.5),
        (GgmlType::Q4_K, 4.5),
        (GgmlType::Q6_K, 6.5625),
        (GgmlType::F16, 16.0),
    ] {
        let bytes = random_blocks(ggml_type, rows, cols, &mut rng);
        let matrix = QuantizedMatrix::from_gguf_blocks(ggml_type, &bytes, rows, cols).unwrap();
        assert_eq!(matrix.format(), QuantFormat::Gguf(ggml_type));
        assert_eq!(matrix.packed_bytes(), bytes.as_slice(), "{ggml_type}: the blocks are kept as they are");
        assert_eq!((matrix.stored_bytes(), matrix.dense_f32_bytes()), (bytes.len(), rows * cols * 4));
        assert_eq!(matrix.bits_per_weight(), bits, "{ggml_type}");

        let reference = gguf::dequantize(ggml_type, &bytes, rows * cols).unwrap();
        assert_eq!(matrix.dequantize(), reference, "{ggml_type}");
        assert_eq!(matrix.dequantize_transposed(), transpose(&reference, rows, cols), "{ggml_type}");
        // Un-permuting whole rows of blocks is un-permuting the decoded rows.
        let unpermuted = matrix.unpermute_rope_rows(heads).unwrap();
        assert_eq!(
            unpermuted.dequantize(),
            gguf::unpermute_rope_rows(&reference, rows, cols, heads).unwrap(),
            "{ggml_type}"
        );
    }
    // Rows of 96 values: the transposed decoding's last band of columns is partial (64 + 32).
    let bytes = random_blocks(GgmlType::Q4_1, 5, 96, &mut rng);
    let matrix = QuantizedMatrix::from_gguf_blocks(GgmlType::Q4_1, &bytes, 5, 96).unwrap();
    let reference = gguf::dequantize(GgmlType::Q4_1, &bytes, 5 * 96).unwrap();
    assert_eq!(matrix.dequantize_transposed(), transpose(&reference, 5, 96));
}

#[test]
fn smollm2_gguf_blocks_give_the_logits_of_the_dequantised_model() {
    let device = Default::default();
    let start = Instant::now();
    let (quantized, tokenizer) = Llama::<Cpu>::from_gguf_quantized(Path::new(GGUF), &device).unwrap();
    println!("from_gguf_quantized: {:.1}s", start.elapsed().as_secs_f64());

    // Every projection keeps its GGUF blocks.
    let mut formats = std::collections::BTreeMap::new();
    for layer in &quantized.model.layers {
        for (name, projection) in layer.projections() {
            let base = projection.base_layer.as_quantized().unwrap_or_else(|| panic!("{name} is dense"));
            *formats.entry(base.matrix.format().to_string()).or_insert(0) += 1;
        }
    }
    println!("projection formats: {formats:?}");
    assert_eq!(formats.values().sum::<usize>(), 30 * 7);

    let memory = quantized.weight_memory();
    println!("{memory}");
    assert_eq!(memory.quantized_matrices, 30 * 7);
    // 30 layers of q (576x576), k and v (192x576), o (576x576), gate and up (1536x576), down (576x1536).
    let projection_weights = 30 * (2 * 576 * 576 + 2 * 192 * 576 + 3 * 1536 * 576);
    assert_eq!(memory.quantized_f32_bytes, projection_weights * 4);
    // Q4_1: 20 bytes per 32 weights, 5 bits per weight (a Q8_0 or Q6_K tensor among them would add).
    if formats.keys().all(|f| f == "Q4_1") {
        assert_eq!(memory.quantized_bits_per_weight(), 5.0);
    }
    // Dense: the embeddings (tied head) and the norms.
    assert_eq!(memory.dense_params, 49_152 * 576 + 576 * (2 * 30 + 1));

    // One dequantisation of every projection, in each layout.
    let matrices: Vec<&QuantizedMatrix> = quantized
        .model
        .layers
        .iter()
        .flat_map(|layer| layer.projections())
        .map(|(_, p)| &p.base_layer.as_quantized().unwrap().matrix)
        .collect();
    let start = Instant::now();
    let decoded: usize = matrices.iter().map(|m| m.dequantize().len()).sum();
    let row_major = start.elapsed().as_secs_f64() * 1e3;
    let start = Instant::now();
    let transposed: usize = matrices.iter().map(|m| m.dequantize_transposed().len()).sum();
    println!(
        "dequantised all {decoded} projection weights ({:.1} MB f32): {row_major:.0} ms row-major, {:.0} ms transposed",
        decoded as f64 * 4.0 / 1e6,
        start.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!((decoded, transposed), (projection_weights, projection_weights));

    let start = Instant::now();
    let (dense, _) = Llama::<Cpu>::from_gguf(Path::new(GGUF), &device).unwrap();
    println!("from_gguf: {:.1}s", start.elapsed().as_secs_f64());
    let dense_memory = dense.weight_memory();
    assert_eq!(dense_memory.quantized_bytes, 0);
    assert_eq!(dense_memory.dense_bytes, memory.dense_bytes + memory.quantized_f32_bytes);

    let ids = tokenizer.encode("Review: A quiet, moving film.\nAnswer (positive or negative):").unwrap();
    let len = ids.len();
    let input = Tensor::<Cpu, 2, Int>::from_data(
        TensorData::new(ids.iter().map(|&id| i64::from(id)).collect::<Vec<_>>(), [1, len]),
        &device,
    );
    let mask = Tensor::<Cpu, 2, Int>::ones([1, len], &device);
    let start = Instant::now();
    let ours = quantized.last_token_logits(input.clone(), mask.clone()).into_data().to_vec::<f32>().unwrap();
    println!("quantised forward ({len} tokens): {:.0} ms", start.elapsed().as_secs_f64() * 1e3);
    let start = Instant::now();
    let reference = dense.last_token_logits(input, mask).into_data().to_vec::<f32>().unwrap();
    println!("dense forward ({len} tokens): {:.0} ms", start.elapsed().as_secs_f64() * 1e3);
    let max_error = ours.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    println!("max |logit difference| quantised vs dequantised: {max_error:e}");
    assert!(max_error < 1e-4, "{max_error}");
}

// ------------------------------------------------------------------------------------ QLoRA training

fn tiny_model<B: Backend>() -> Llama<B> {
    Llama::from_pretrained(&RepoSource::Local(PathBuf::from(TINY_LLAMA).join("model")), &Default::default())
        .expect("the tiny-llama fixture loads")
}

/// The module paths of the float parameters that have a gradient.
struct WithGradient<'a> {
    grads: &'a <Train as burn::tensor::backend::AutodiffBackend>::Gradients,
    path: Vec<String>,
    found: Vec<String>,
    params: usize,
}

impl ModuleVisitor<Train> for WithGradient<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Train, D>>) {
        self.params += 1;
        if param.val().grad(self.grads).is_some() {
            self.found.push(self.path.join("."));
        }
    }
}

#[test]
fn qlora_on_an_nf4_base_trains_only_the_adapters_and_stays_close_to_the_dense_base() {
    let fixture = Fixture::open(TINY_LLAMA).unwrap();
    let adapter = RepoSource::Local(PathBuf::from(TINY_LLAMA).join("adapter"));
    let inputs = inputs::<Train>(&fixture);

    let dense = tiny_model::<Train>();
    let dense_memory = dense.weight_memory();
    let base = dense.clone().quantize_frozen_base().unwrap();
    assert!(base.has_quantized_base() && !dense.has_quantized_base());
    // The quantised projections are no parameters any more: only embeddings, norms and the head are.
    let config = LlamaConfig::from_hf_file(&PathBuf::from(TINY_LLAMA).join("model/config.json")).unwrap();
    let (hidden, vocab, layers) = (config.hidden_size, config.vocab_size, config.num_hidden_layers);
    assert_eq!(base.num_params(), 2 * vocab * hidden + hidden * (2 * layers + 1));

    let memory = base.weight_memory();
    println!("tiny-llama {memory}");
    assert_eq!(memory.quantized_matrices, 7 * layers);
    assert_eq!(memory.quantized_bits_per_weight(), 4.5);
    assert_eq!(memory.dense_bytes + memory.quantized_f32_bytes, dense_memory.dense_bytes);
    assert_eq!(memory.saved_bytes(), memory.quantized_f32_bytes - memory.quantized_bytes);
    assert_eq!(memory.total_bytes(), memory.dense_bytes + memory.quantized_bytes);

    // PEFT's adapter (q_proj and v_proj, random lora_B) on the dense and on the quantised base.
    let (dense, _) = dense.load_lora(&adapter).unwrap();
    let (qlora, lora_config) = base.load_lora(&adapter).unwrap();
    let loss_of = |model: &Llama<Train>| {
        let logits = model.forward(inputs.input_ids.clone(), Some(inputs.attention_mask.clone()));
        causal_lm_loss(logits, inputs.labels.clone())
    };
    let (dense_loss, qlora_loss) = (loss_of(&dense), loss_of(&qlora));
    let scalar = |t: &Tensor<Train, 1>| t.to_data().to_vec::<f32>().unwrap()[0];
    let (reference_loss, ours) = (scalar(&dense_loss), scalar(&qlora_loss));
    let (_, peft_loss) = fixture.f32("lora_loss").unwrap();
    println!("loss: PEFT {} dense {reference_loss} NF4 base {ours}", peft_loss[0]);
    assert!((reference_loss - peft_loss[0]).abs() < 1e-4);
    // NF4 noise on N(0, 0.02) weights moves the loss a little, not much.
    assert!((ours - reference_loss).abs() < 0.01 * reference_loss.abs(), "{ours} vs {reference_loss}");
    assert_ne!(ours, reference_loss, "the base really is quantised");

    // One backward: gradients reach the adapters and nothing else.
    let dense_grads = dense_loss.backward();
    let grads = qlora_loss.backward();
    let mut visitor = WithGradient { grads: &grads, path: Vec::new(), found: Vec::new(), params: 0 };
    qlora.visit(&mut visitor);
    assert_eq!(visitor.found.len(), 2 * 2 * 2, "lora_a and lora_b of q_proj and v_proj in 2 layers");
    assert!(visitor.found.iter().all(|path| path.contains(".adapter.lora_")), "{:?}", visitor.found);
    assert!(visitor.params > visitor.found.len(), "the embeddings, norms and head get no gradient");

    // The adapter gradients point about the same way as on the dense base (the NF4 noise of the frozen
    // weights on this random model turns them by a few degrees).
    let dense_gradients = dense.lora_gradients(&dense_grads);
    let gradients = qlora.lora_gradients(&grads);
    assert_eq!(gradients.len(), dense_gradients.len());
    for ((name, ours), (reference_name, reference)) in gradients.iter().zip(&dense_gradients) {
        assert_eq!(name, reference_name);
        let (a, b) = (ours.to_vec::<f32>().unwrap(), reference.to_vec::<f32>().unwrap());
        let dot: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        let cosine = dot / (norm(&a) * norm(&b));
        println!("{name}: cosine with the dense base's gradient {cosine:.4}");
        assert!(cosine > 0.9, "{name}: cosine {cosine}");
    }

    // Inference copy and device moves keep the quantised base.
    let inference = qlora.inference();
    assert!(inference.has_quantized_base());
    let logits = inference.forward(inputs.input_ids.clone().inner(), Some(inputs.attention_mask.clone().inner()));
    let expected = qlora.forward(inputs.input_ids.clone(), Some(inputs.attention_mask.clone())).inner();
    let device = Default::default();
    let moved = inference.clone().to_device(&device).fork(&device);
    let moved_logits = moved.forward(inputs.input_ids.clone().inner(), Some(inputs.attention_mask.clone().inner()));
    assert_close("inference logits", logits.into_data(), expected.to_data(), 1e-5);
    assert_close("moved logits", moved_logits.into_data(), expected.to_data(), 1e-5);

    // Adapters trained on a quantised base save in PEFT's format and load back onto a quantised base.
    let dir = tempfile::tempdir().unwrap();
    inference.save_lora(dir.path(), &lora_config, Some("tiny-llama")).unwrap();
    let (reloaded, _) = tiny_model::<Cpu>()
        .quantize_frozen_base()
        .unwrap()
        .load_lora(&RepoSource::Local(dir.path().to_path_buf()))
        .unwrap();
    let reloaded_logits =
        reloaded.forward(inputs.input_ids.clone().inner(), Some(inputs.attention_mask.clone().inner()));
    assert_close("reloaded adapter logits", reloaded_logits.into_data(), expected.to_data(), 1e-5);

    // Merging into a quantised base gives a dense base computing the same thing.
    let merged = inference.merge_lora();
    let projection = &merged.model.layers[0].self_attn;
    assert!(projection.q_proj.base_layer.as_dense().is_some(), "merged into a dense base");
    assert!(projection.k_proj.base_layer.as_quantized().is_some(), "no adapter: stays quantised");
    let merged_logits = merged.forward(inputs.input_ids.inner(), Some(inputs.attention_mask.inner()));
    assert_close("merged logits", merged_logits.into_data(), expected.into_data(), 1e-5);
}

/// Asserts that two tensors agree within `tolerance` (absolute), printing the measured error.
fn assert_close(name: &str, ours: TensorData, reference: TensorData, tolerance: f64) {
    assert_eq!(ours.shape, reference.shape, "{name}: shape");
    let check = TensorCheck::compare(
        name,
        &ours.to_vec::<f32>().unwrap(),
        &reference.to_vec::<f32>().unwrap(),
        tolerance,
        Tolerance::Absolute,
    );
    println!("{check}");
    assert!(check.ok, "{check}");
}

#[test]
fn fresh_adapters_on_a_quantised_base_change_nothing_until_trained() {
    let fixture = Fixture::open(TINY_LLAMA).unwrap();
    let inputs = inputs::<Train>(&fixture);
    let base = tiny_model::<Train>().quantize_frozen_base().unwrap();
    let before = base.forward(inputs.input_ids.clone(), Some(inputs.attention_mask.clone()));
    let config = LoraConfig::new(2, 4.0).with_target_modules(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"].map(String::from).to_vec(),
    );
    let qlora = base.with_lora(&config).unwrap();
    assert_eq!(qlora.lora_adapters().len(), 7 * 2);
    let logits = qlora.forward(inputs.input_ids.clone(), Some(inputs.attention_mask.clone()));
    assert_close("logits with fresh adapters", logits.to_data(), before.to_data(), 1e-6);

    let grads = causal_lm_loss(logits, inputs.labels).backward();
    let gradients = qlora.lora_gradients(&grads);
    assert_eq!(gradients.len(), 2 * 7 * 2);
    let mut visitor = WithGradient { grads: &grads, path: Vec::new(), found: Vec::new(), params: 0 };
    qlora.visit(&mut visitor);
    assert!(visitor.found.iter().all(|path| path.contains(".adapter.lora_")), "{:?}", visitor.found);
}

#[test]
fn a_quantised_linear_matches_its_dequantised_dense_layer() {
    let device = Default::default();
    let mut rng = Rng(3);
    let (d_input, d_output) = (128, 24);
    let values: Vec<f32> = (0..d_input * d_output).map(|_| rng.normal()).collect();
    let matrix = QuantizedMatrix::quantize_nf4(&values, d_output, d_input).unwrap();
    let bias = Param::from_tensor(Tensor::<Cpu, 1>::from_data(
        TensorData::new((0..d_output).map(|i| i as f32 * 0.1).collect::<Vec<_>>(), [d_output]),
        &device,
    ));
    let layer = QuantizedLinear::new(matrix.clone(), Some(bias.clone())).unwrap();
    assert_eq!(layer.dims(), [d_input, d_output]);
    let dense = layer.to_linear(&device);
    // 6 rows (decoded into the transposed layout) and 200 rows (decoded row-major, multiplied by a view).
    for seq_len in [3, 100] {
        let x = Tensor::<Cpu, 3>::from_data(
            TensorData::new(
                (0..2 * seq_len * d_input).map(|_| rng.normal()).collect::<Vec<_>>(),
                [2, seq_len, d_input],
            ),
            &device,
        );
        let ours = layer.forward(x.clone());
        assert_eq!(ours.dims(), [2, seq_len, d_output]);
        ours.into_data().assert_approx_eq::<f32>(&dense.forward(x).into_data(), Default::default());
    }
    // The weight is no parameter: only the bias is.
    assert_eq!(layer.num_params(), d_output);
    assert!(matches!(BaseLinear::from(layer), BaseLinear::Quantized(_)));
    // A bias of the wrong length is refused.
    let wrong = Param::from_tensor(Tensor::<Cpu, 1>::zeros([d_output + 1], &device));
    assert!(matches!(QuantizedLinear::new(matrix, Some(wrong)), Err(LlamaError::InvalidConfig(_))));
}
