//! The GGUF reader on small hand-written files: every value type, alignment, dequantisation of the
//! block formats, the llama.cpp row permutation, and typed errors (never panics) on corrupt input.

use burn::backend::NdArray;
use burn::tensor::f16;
use polarity_llama::gguf::{GgmlType, GgufFile, GgufValue, dequantize, unpermute_rope_rows};
use polarity_llama::{CheckpointError, Llama, LlamaConfig, LlamaError, QuantFormat, hf_name_of_gguf_tensor};

/// A metadata value as it is written.
enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(&'static str),
    Array(u32, Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::Str(_) => 8,
            Value::Array(..) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Value::U8(v) => out.extend(v.to_le_bytes()),
            Value::I8(v) => out.extend(v.to_le_bytes()),
            Value::U16(v) => out.extend(v.to_le_bytes()),
            Value::I16(v) => out.extend(v.to_le_bytes()),
            Value::U32(v) => out.extend(v.to_le_bytes()),
            Value::I32(v) => out.extend(v.to_le_bytes()),
            Value::F32(v) => out.extend(v.to_le_bytes()),
            Value::Bool(v) => out.push(u8::from(*v)),
            Value::Str(s) => write_string(out, s),
            Value::Array(element_type, items) => {
                out.extend(element_type.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                for item in items {
                    item.write(out);
                }
            }
            Value::U64(v) => out.extend(v.to_le_bytes()),
            Value::I64(v) => out.extend(v.to_le_bytes()),
            Value::F64(v) => out.extend(v.to_le_bytes()),
        }
    }
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// A tensor as it is written: ggml dims (fastest first), type id and raw data.
struct RawTensor {
    name: &'static str,
    dims: Vec<u64>,
    type_id: u32,
    data: Vec<u8>,
}

/// Writes a GGUF v3 file: header, metadata, tensor table, padding, data (each tensor aligned).
fn gguf_bytes(metadata: &[(&str, Value)], tensors: &[RawTensor], alignment: usize) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        write_string(&mut out, key);
        out.extend(value.type_id().to_le_bytes());
        value.write(&mut out);
    }
    let mut offset = 0usize;
    let mut offsets = Vec::new();
    for tensor in tensors {
        write_string(&mut out, tensor.name);
        out.extend((tensor.dims.len() as u32).to_le_bytes());
        for dim in &tensor.dims {
            out.extend(dim.to_le_bytes());
        }
        out.extend(tensor.type_id.to_le_bytes());
        out.extend((offset as u64).to_le_bytes());
        offsets.push(offset);
        offset = (offset + tensor.data.len()).next_multiple_of(alignment);
    }
    out.resize(out.len().next_multiple_of(alignment), 0);
    let data_start = out.len();
    for (tensor, offset) in tensors.iter().zip(offsets) {
        out.resize(data_start + offset, 0);
        out.extend(&tensor.data);
    }
    out
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn half_bytes(value: f32) -> [u8; 2] {
    f16::from_f32(value).to_le_bytes()
}

/// A Q4_0 block with scale `d` and nibbles `j` (low) and `15 - j` (high) in byte `j`.
fn q4_0_block(d: f32) -> Vec<u8> {
    let mut block = half_bytes(d).to_vec();
    block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    block
}

/// Parses `bytes` after writing them to a file, as a user would.
fn open(bytes: &[u8]) -> Result<GgufFile, LlamaError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    std::fs::write(&path, bytes).unwrap();
    GgufFile::open(&path)
}

fn sample_file() -> Vec<u8> {
    let metadata = vec![
        ("general.architecture", Value::Str("llama")),
        ("a.u8", Value::U8(200)),
        ("a.i8", Value::I8(-5)),
        ("a.u16", Value::U16(60_000)),
        ("a.i16", Value::I16(-300)),
        ("a.u32", Value::U32(4_000_000_000)),
        ("a.i32", Value::I32(-70_000)),
        ("a.f32", Value::F32(0.25)),
        ("a.bool", Value::Bool(true)),
        ("a.u64", Value::U64(1 << 40)),
        ("a.i64", Value::I64(-(1 << 40))),
        ("a.f64", Value::F64(1e-300)),
        ("a.strings", Value::Array(8, vec![Value::Str("x"), Value::Str("héllo")])),
        (
            "a.nested",
            Value::Array(9, vec![Value::Array(5, vec![Value::I32(1), Value::I32(-2)]), Value::Array(5, vec![])]),
        ),
    ];
    let tensors = vec![
        RawTensor { name: "f32", dims: vec![3, 2], type_id: 0, data: f32_bytes(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]) },
        RawTensor { name: "f16", dims: vec![2], type_id: 1, data: [half_bytes(1.5), half_bytes(-2.0)].concat() },
        RawTensor { name: "q4_0", dims: vec![32], type_id: 2, data: q4_0_block(0.5) },
    ];
    gguf_bytes(&metadata, &tensors, 32)
}

#[test]
fn reads_every_metadata_type_and_the_tensor_table() {
    let file = open(&sample_file()).unwrap();
    assert_eq!(file.version, 3);
    assert_eq!(file.alignment, 32);
    assert_eq!(file.get("a.u8"), Some(&GgufValue::U8(200)));
    assert_eq!(file.get("a.i8"), Some(&GgufValue::I8(-5)));
    assert_eq!(file.get("a.u16"), Some(&GgufValue::U16(60_000)));
    assert_eq!(file.get("a.i16"), Some(&GgufValue::I16(-300)));
    assert_eq!(file.usize("a.u32").unwrap(), 4_000_000_000);
    assert_eq!(file.get("a.i32"), Some(&GgufValue::I32(-70_000)));
    assert_eq!(file.opt_f64("a.f32").unwrap(), Some(0.25));
    assert_eq!(file.opt_bool("a.bool").unwrap(), Some(true));
    assert_eq!(file.usize("a.u64").unwrap(), 1 << 40);
    assert_eq!(file.get("a.i64").and_then(GgufValue::as_i64), Some(-(1 << 40)));
    assert_eq!(file.opt_f64("a.f64").unwrap(), Some(1e-300));
    assert_eq!(file.strings("a.strings").unwrap(), vec!["x", "héllo"]);
    assert_eq!(
        file.get("a.nested"),
        Some(&GgufValue::Array(vec![
            GgufValue::Array(vec![GgufValue::I32(1), GgufValue::I32(-2)]),
            GgufValue::Array(vec![])
        ]))
    );
    // Typed accessors say what they found.
    assert!(matches!(file.usize("a.i32"), Err(LlamaError::GgufWrongType { .. })));
    assert!(matches!(file.str("a.u8"), Err(LlamaError::GgufWrongType { .. })));
    assert!(matches!(file.usize("no.such.key"), Err(LlamaError::GgufMissingKey { key, .. }) if key == "no.such.key"));

    let names: Vec<&str> = file.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["f32", "f16", "q4_0"]);
    let f32_tensor = file.tensor("f32").unwrap();
    assert_eq!(f32_tensor.info.shape(), vec![2, 3], "ggml dims are reversed into a row-major shape");
    assert_eq!(f32_tensor.to_f32().unwrap(), vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    assert_eq!(file.tensor("f16").unwrap().to_f32().unwrap(), vec![1.5, -2.0]);
    let q4: Vec<f32> = file.tensor("q4_0").unwrap().to_f32().unwrap();
    let expected: Vec<f32> =
        (0..16).map(|j| (j as f32 - 8.0) * 0.5).chain((0..16).map(|j| (15.0 - j as f32 - 8.0) * 0.5)).collect();
    assert_eq!(q4, expected);
}

#[test]
fn honours_general_alignment() {
    let tensors = vec![
        RawTensor { name: "a", dims: vec![3], type_id: 0, data: f32_bytes(&[1.0, 2.0, 3.0]) },
        RawTensor { name: "b", dims: vec![2], type_id: 0, data: f32_bytes(&[4.0, 5.0]) },
    ];
    let bytes = gguf_bytes(&[("general.alignment", Value::U32(64))], &tensors, 64);
    let file = open(&bytes).unwrap();
    assert_eq!(file.alignment, 64);
    assert_eq!(file.tensor_info("b").unwrap().offset, 64);
    assert_eq!(file.tensor("b").unwrap().to_f32().unwrap(), vec![4.0, 5.0]);

    // An alignment that is not a power of two is rejected.
    let bad = gguf_bytes(&[("general.alignment", Value::U32(48))], &tensors, 64);
    assert!(matches!(open(&bad), Err(LlamaError::GgufInvalid { what, .. }) if what.contains("alignment")));
}

#[test]
fn dequantises_the_block_formats() {
    // Q8_0: x = q * d.
    let mut q8 = half_bytes(0.25).to_vec();
    q8.extend((0..32).map(|j| (j as i8 - 16) as u8));
    let expected: Vec<f32> = (0..32).map(|j| (j as f32 - 16.0) * 0.25).collect();
    assert_eq!(dequantize(GgmlType::Q8_0, &q8, 32).unwrap(), expected);

    // Q4_1: x = q * d + m, low nibbles are values 0..16, high nibbles 16..32.
    let mut q4_1 = [half_bytes(2.0), half_bytes(-1.0)].concat();
    q4_1.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let expected: Vec<f32> =
        (0..16).map(|j| j as f32 * 2.0 - 1.0).chain((0..16).map(|j| (15 - j) as f32 * 2.0 - 1.0)).collect();
    assert_eq!(dequantize(GgmlType::Q4_1, &q4_1, 32).unwrap(), expected);

    // Q4_0, two blocks.
    let two_blocks = [q4_0_block(1.0), q4_0_block(-2.0)].concat();
    let values = dequantize(GgmlType::Q4_0, &two_blocks, 64).unwrap();
    assert_eq!(values[0], -8.0);
    assert_eq!(values[32], 16.0);
    assert_eq!(values[63], (15.0 - 15.0 - 8.0) * -2.0);

    // Q5_0: the fifth bit of value j is bit j of qh.
    let mut q5 = half_bytes(1.0).to_vec();
    q5.extend(0x8000_0001u32.to_le_bytes()); // values 0 and 31 get +16
    q5.extend([0u8; 16]);
    let values = dequantize(GgmlType::Q5_0, &q5, 32).unwrap();
    assert_eq!((values[0], values[1], values[31]), (0.0, -16.0, 0.0));

    // BF16 and F16.
    assert_eq!(dequantize(GgmlType::BF16, &burn::tensor::bf16::from_f32(3.0).to_le_bytes(), 1).unwrap(), vec![3.0]);
    assert_eq!(dequantize(GgmlType::F16, &half_bytes(-0.5), 1).unwrap(), vec![-0.5]);

    // Sizes must agree with the block layout.
    assert!(matches!(dequantize(GgmlType::Q8_0, &q8[..33], 32), Err(LlamaError::GgufTensorData(_))));
    assert!(matches!(dequantize(GgmlType::Q8_0, &q8, 31), Err(LlamaError::GgufTensorData(_))));
    assert!(matches!(
        dequantize(GgmlType::Q8_1, &[0u8; 40], 32),
        Err(LlamaError::GgufUnsupportedTensorType { ggml_type, .. }) if ggml_type == "Q8_1"
    ));
}

/// llama.cpp's `permute` (convert_hf_to_gguf.py): `reshape(heads, 2, half, cols).swapaxes(1, 2)`.
fn llama_cpp_permute(values: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let half = rows / heads / 2;
    let mut out = vec![0.0; values.len()];
    for head in 0..heads {
        for pair in 0..2 {
            for i in 0..half {
                let hf_row = head * 2 * half + pair * half + i;
                let gguf_row = head * 2 * half + i * 2 + pair;
                out[gguf_row * cols..(gguf_row + 1) * cols]
                    .copy_from_slice(&values[hf_row * cols..(hf_row + 1) * cols]);
            }
        }
    }
    out
}

#[test]
fn unpermute_inverts_llama_cpp_permute() {
    let (rows, cols, heads) = (24, 3, 3);
    let hf: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
    let gguf = llama_cpp_permute(&hf, rows, cols, heads);
    assert_ne!(gguf, hf);
    assert_eq!(unpermute_rope_rows(&gguf, rows, cols, heads).unwrap(), hf);
    assert!(unpermute_rope_rows(&gguf, rows, cols, 5).is_err());
}

#[test]
fn maps_llama_cpp_names() {
    let name = |n| hf_name_of_gguf_tensor(n).unwrap();
    assert_eq!(name("token_embd.weight").as_deref(), Some("model.embed_tokens.weight"));
    assert_eq!(name("blk.12.attn_output.weight").as_deref(), Some("model.layers.12.self_attn.o_proj.weight"));
    assert_eq!(name("blk.0.ffn_norm.weight").as_deref(), Some("model.layers.0.post_attention_layernorm.weight"));
    assert_eq!(name("blk.3.attn_k.bias").as_deref(), Some("model.layers.3.self_attn.k_proj.bias"));
    assert_eq!(name("output.weight").as_deref(), Some("lm_head.weight"));
    assert_eq!(name("blk.x.attn_q.weight"), None);
    assert!(matches!(hf_name_of_gguf_tensor("rope_freqs.weight"), Err(LlamaError::Unsupported(_))));
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let bytes = sample_file();
    for len in 0..bytes.len() {
        let result = GgufFile::from_bytes(bytes[..len].to_vec());
        assert!(
            matches!(result, Err(LlamaError::GgufTruncated { .. }) | Err(LlamaError::GgufBadMagic { .. })),
            "prefix of {len} bytes: {result:?}"
        );
    }
    match open(&bytes[..bytes.len() - 1]) {
        Err(LlamaError::GgufTruncated { what, .. }) => assert!(what.contains("q4_0"), "{what}"),
        other => panic!("expected a truncated tensor, got {other:?}"),
    }
}

/// The sample file with the bytes at `at` replaced.
fn patched(at: usize, with: &[u8]) -> Vec<u8> {
    let mut bytes = sample_file();
    bytes[at..at + with.len()].copy_from_slice(with);
    bytes
}

/// Where the value of the first metadata entry (`general.architecture`, a string) starts: after the
/// 24-byte header, the key and the value type.
const FIRST_VALUE_TYPE: usize = 24 + 8 + "general.architecture".len();

#[test]
fn corrupt_headers_are_typed_errors() {
    assert!(matches!(open(&patched(0, b"GGUL")), Err(LlamaError::GgufBadMagic { magic, .. }) if &magic == b"GGUL"));
    assert!(matches!(
        open(&patched(4, &1u32.to_le_bytes())),
        Err(LlamaError::GgufUnsupportedVersion { version: 1, .. })
    ));
    assert!(matches!(
        open(&patched(FIRST_VALUE_TYPE, &13u32.to_le_bytes())),
        Err(LlamaError::GgufUnknownValueType { type_id: 13, key, .. }) if key == "general.architecture"
    ));
    // A string length near u64::MAX must not allocate or overflow.
    assert!(matches!(
        open(&patched(FIRST_VALUE_TYPE + 4, &u64::MAX.to_le_bytes())),
        Err(LlamaError::GgufTruncated { .. })
    ));
    // A metadata count far beyond the file (the tensor table is then read as metadata).
    assert!(open(&patched(16, &u64::MAX.to_le_bytes())).is_err());
    // A tensor count far beyond the file (the data section is then read as a tensor table).
    assert!(open(&patched(8, &u64::MAX.to_le_bytes())).is_err());
    // Invalid UTF-8 in a string.
    assert!(matches!(open(&patched(FIRST_VALUE_TYPE + 12, &[0xff])), Err(LlamaError::GgufInvalid { .. })));
}

#[test]
fn corrupt_tensor_tables_are_typed_errors() {
    let tensor = |dims: Vec<u64>, type_id: u32, data: Vec<u8>| RawTensor { name: "t", dims, type_id, data };
    let with = |tensors: Vec<RawTensor>| gguf_bytes(&[], &tensors, 32);

    let unknown_type = with(vec![tensor(vec![4], 99, vec![0; 16])]);
    assert!(
        matches!(open(&unknown_type), Err(LlamaError::GgufUnknownTensorType { type_id: 99, tensor, .. }) if tensor == "t")
    );

    let overflowing = with(vec![tensor(vec![u64::MAX, 4], 0, vec![])]);
    assert!(matches!(open(&overflowing), Err(LlamaError::GgufInvalid { .. })));

    let too_many_dims = with(vec![tensor(vec![1, 1, 1, 1, 1], 0, f32_bytes(&[1.0]))]);
    assert!(matches!(open(&too_many_dims), Err(LlamaError::GgufInvalid { .. })));

    let partial_block = with(vec![tensor(vec![16], 8, vec![0; 17])]);
    assert!(matches!(open(&partial_block), Err(LlamaError::GgufInvalid { what, .. }) if what.contains("block")));

    let beyond_the_end = with(vec![tensor(vec![1000], 0, f32_bytes(&[1.0]))]);
    assert!(matches!(open(&beyond_the_end), Err(LlamaError::GgufTruncated { .. })));

    let twice = with(vec![tensor(vec![1], 0, f32_bytes(&[1.0])), tensor(vec![1], 0, f32_bytes(&[2.0]))]);
    assert!(matches!(open(&twice), Err(LlamaError::GgufInvalid { what, .. }) if what.contains("twice")));

    // A misaligned offset: patch the last 8 bytes of the table (the offset) to 4.
    let mut misaligned = with(vec![tensor(vec![1], 0, f32_bytes(&[1.0]))]);
    let offset_at = 24 + 8 + 1 + 4 + 8 + 4;
    misaligned[offset_at..offset_at + 8].copy_from_slice(&4u64.to_le_bytes());
    assert!(matches!(open(&misaligned), Err(LlamaError::GgufInvalid { what, .. }) if what.contains("alignment")));
}

/// A two-layer Llama as llama.cpp would store it, with every hyper-parameter in `llama.*` metadata.
fn tiny_llama_gguf(skip_key: Option<&str>, q_type: u32) -> Vec<u8> {
    let (hidden, ffn, heads, kv_heads, vocab) = (32u64, 64u64, 4u32, 2u32, 8u64);
    let metadata: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::Str("llama")),
        ("llama.block_count", Value::U32(1)),
        ("llama.embedding_length", Value::U32(hidden as u32)),
        ("llama.feed_forward_length", Value::U32(ffn as u32)),
        ("llama.attention.head_count", Value::U32(heads)),
        ("llama.attention.head_count_kv", Value::U32(kv_heads)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.rope.freq_base", Value::F32(10000.0)),
        ("llama.vocab_size", Value::U32(vocab as u32)),
    ]
    .into_iter()
    .filter(|(key, _)| Some(*key) != skip_key)
    .collect();
    let head_dim = hidden / u64::from(heads);
    let f32_tensor = |name, dims: Vec<u64>| {
        let n: u64 = dims.iter().product();
        RawTensor {
            name,
            dims,
            type_id: 0,
            data: f32_bytes(&(0..n).map(|i| (i % 7) as f32 * 0.01).collect::<Vec<_>>()),
        }
    };
    // Rows of 32 values: one block per row for the block formats.
    let q = match q_type {
        0 => f32_tensor("blk.0.attn_q.weight", vec![hidden, hidden]),
        8 => RawTensor {
            name: "blk.0.attn_q.weight",
            dims: vec![hidden, hidden],
            type_id: 8,
            data: q8_block().repeat(32),
        },
        // Q8_1: f32 scale, f32 sum, 32 signed bytes.
        9 => RawTensor { name: "blk.0.attn_q.weight", dims: vec![hidden, hidden], type_id: 9, data: vec![0; 40 * 32] },
        other => panic!("no sample for ggml type {other}"),
    };
    let tensors = vec![
        f32_tensor("token_embd.weight", vec![hidden, vocab]),
        f32_tensor("blk.0.attn_norm.weight", vec![hidden]),
        q,
        f32_tensor("blk.0.attn_k.weight", vec![hidden, u64::from(kv_heads) * head_dim]),
        f32_tensor("blk.0.attn_v.weight", vec![hidden, u64::from(kv_heads) * head_dim]),
        f32_tensor("blk.0.attn_output.weight", vec![hidden, hidden]),
        f32_tensor("blk.0.ffn_norm.weight", vec![hidden]),
        f32_tensor("blk.0.ffn_gate.weight", vec![hidden, ffn]),
        f32_tensor("blk.0.ffn_up.weight", vec![hidden, ffn]),
        f32_tensor("blk.0.ffn_down.weight", vec![ffn, hidden]),
        f32_tensor("output_norm.weight", vec![hidden]),
    ];
    gguf_bytes(&metadata, &tensors, 32)
}

fn q8_block() -> Vec<u8> {
    let mut block = half_bytes(0.01).to_vec();
    block.extend((0..32).map(|j| (j as i8 - 16) as u8));
    block
}

#[test]
fn builds_a_llama_from_gguf_metadata_and_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    for q_type in [0, 8] {
        std::fs::write(&path, tiny_llama_gguf(None, q_type)).unwrap();
        let file = GgufFile::open(&path).unwrap();
        let config = LlamaConfig::from_gguf(&file).unwrap();
        assert_eq!((config.num_attention_heads, config.num_key_value_heads, config.resolved_head_dim()), (4, 2, 8));
        assert!(config.tie_word_embeddings, "no output.weight");
        let model =
            config.init::<NdArray>(&Default::default()).unwrap().load_gguf(&file, &config, "tiny.gguf").unwrap();
        // The q_proj weight is the GGUF matrix with its rows un-permuted, in burn's [in, out] layout.
        let gguf_q = file.tensor("blk.0.attn_q.weight").unwrap().to_f32().unwrap();
        let expected = unpermute_rope_rows(&gguf_q, 32, 32, 4).unwrap();
        let ours =
            model.model.layers[0].self_attn.q_proj.base_layer.as_dense().unwrap().weight.val().transpose().into_data();
        assert_eq!(ours.to_vec::<f32>().unwrap(), expected);
    }
}

#[test]
fn quantised_gguf_loading_keeps_the_projection_blocks() {
    use burn::prelude::*;

    let file = GgufFile::from_bytes(tiny_llama_gguf(None, 8)).unwrap();
    let config = LlamaConfig::from_gguf(&file).unwrap();
    let device = Default::default();
    let dense = config.init::<NdArray>(&device).unwrap().load_gguf(&file, &config, "tiny.gguf").unwrap();
    let quantized = config.init::<NdArray>(&device).unwrap().load_gguf_quantized(&file, &config, "tiny.gguf").unwrap();

    // The Q8_0 q_proj keeps its blocks (rows un-permuted on the bytes); F32 projections load dense.
    let attention = &quantized.model.layers[0].self_attn;
    let q_proj = attention.q_proj.base_layer.as_quantized().expect("the Q8_0 q_proj stays quantised");
    assert_eq!(q_proj.matrix.format(), QuantFormat::Gguf(GgmlType::Q8_0));
    assert_eq!(q_proj.matrix.stored_bytes(), 32 * 34);
    assert!(attention.k_proj.base_layer.as_dense().is_some(), "F32 projections have nothing to save");
    let expected = dense.model.layers[0].self_attn.q_proj.base_layer.as_dense().unwrap().weight.val();
    assert_eq!(
        q_proj.dequantized_weight(&device).into_data().to_vec::<f32>().unwrap(),
        expected.into_data().to_vec::<f32>().unwrap()
    );
    let memory = quantized.weight_memory();
    assert_eq!(
        (memory.quantized_matrices, memory.quantized_bytes, memory.quantized_f32_bytes),
        (1, 32 * 34, 32 * 32 * 4)
    );

    let ids = Tensor::<NdArray, 2, Int>::from_data([[1, 5, 2, 7]], &device);
    let ours = quantized.forward(ids.clone(), None).into_data().to_vec::<f32>().unwrap();
    let reference = dense.forward(ids, None).into_data().to_vec::<f32>().unwrap();
    assert_eq!(ours, reference);

    // A config whose q_proj is wider than the file's: a shape mismatch naming the tensor.
    let wide = LlamaConfig { head_dim: Some(16), ..config };
    let err = wide.init::<NdArray>(&device).unwrap().load_gguf_quantized(&file, &wide, "tiny.gguf").unwrap_err();
    assert!(
        matches!(&err, LlamaError::Checkpoint(CheckpointError::ShapeMismatch { tensor, expected, found, .. })
            if tensor == "model.layers.0.self_attn.q_proj.weight" && expected == &[64, 32] && found == &[32, 32]),
        "{err:?}"
    );
}

#[test]
fn gguf_models_report_missing_keys_tensors_and_unsupported_types() {
    let missing_key = GgufFile::from_bytes(tiny_llama_gguf(Some("llama.block_count"), 0)).unwrap();
    assert!(
        matches!(LlamaConfig::from_gguf(&missing_key), Err(LlamaError::GgufMissingKey { key, .. }) if key == "llama.block_count")
    );
    assert!(matches!(
        Llama::<NdArray>::from_gguf(std::path::Path::new("/no/such/file.gguf"), &Default::default()),
        Err(LlamaError::Io { .. })
    ));

    // A Q8_1 q_proj: a known layout that is not dequantised.
    let q8_1 = GgufFile::from_bytes(tiny_llama_gguf(None, 9)).unwrap();
    let config = LlamaConfig::from_gguf(&q8_1).unwrap();
    let err = config.init::<NdArray>(&Default::default()).unwrap().load_gguf(&q8_1, &config, "q8_1.gguf").unwrap_err();
    assert!(
        matches!(&err, LlamaError::GgufUnsupportedTensorType { tensor, ggml_type } if tensor == "blk.0.attn_q.weight" && ggml_type == "Q8_1"),
        "{err:?}"
    );

    // A model config that disagrees with the tensors: more layers than the file has.
    let file = GgufFile::from_bytes(tiny_llama_gguf(None, 0)).unwrap();
    let config = LlamaConfig::from_gguf(&file).unwrap().with_num_hidden_layers(2);
    let err = config.init::<NdArray>(&Default::default()).unwrap().load_gguf(&file, &config, "tiny.gguf").unwrap_err();
    match err {
        LlamaError::Checkpoint(CheckpointError::MissingTensors { tensors, .. }) => {
            assert!(tensors.iter().any(|t| t.name == "model.layers.1.self_attn.q_proj.weight"), "{tensors:?}")
        }
        other => panic!("expected MissingTensors, got {other:?}"),
    }
}
