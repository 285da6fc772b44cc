//! Hostile input for the GGUF reader, the Llama config (from GGUF metadata and from config.json) and the
//! pairing of a tokenizer with a model: mutations of the real files in `../shared` (huge counts, bit
//! flips, truncations, non-finite values, a vocabulary-only file, layers beyond `block_count`, a
//! vocabulary larger than the embedding table, FIFOs) must each give a typed error naming the file and
//! the key, tensor or field, or load correctly; never a panic, a hang or an allocation sized by a
//! corrupted count. The binary runs under a 3 GiB [`CappedAllocator`], so such an allocation aborts it.
//!
//! The randomized loops are seeded (a failure names the loop and iteration) and bounded in time.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use burn::backend::NdArray;
use polarity_hub::{RepoKind, RepoSource};
use polarity_llama::gguf::{GgufFile, GgufValue, MAX_ARRAY_ELEMENTS};
use polarity_llama::{Llama, LlamaConfig, LlamaError, LlamaTokenizer, generate_answers_for_ids, reference};
use polarity_testkit::{CappedAllocator, Mutator, expect_error, fuzz_for, make_fifo, no_panic, within};

#[global_allocator]
static ALLOCATOR: CappedAllocator = CappedAllocator::new(3 << 30);

const SHARED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared");
const SMOLLM2: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf");
const VOCAB_GGUF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/models/ggml-vocab-llama-bpe.gguf");
const TINY_LLAMA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/fixtures/tiny-llama");

type Cpu = NdArray;

/// The SmolLM2 file's bytes, read once.
fn smollm2() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| std::fs::read(SMOLLM2).expect("the SmolLM2 GGUF is readable"))
}

/// The SmolLM2 file parsed once (its metadata is mutated in memory by the config tests).
fn smollm2_parsed() -> &'static GgufFile {
    static FILE: OnceLock<GgufFile> = OnceLock::new();
    FILE.get_or_init(|| GgufFile::open(SMOLLM2).expect("the SmolLM2 GGUF parses"))
}

/// Where things are in a GGUF header: each metadata value's type and value offsets, each tensor-table
/// entry's offset, and where the table ends. Walked independently of the reader under test.
struct Layout {
    /// key -> (offset of the value type u32, offset of the value).
    values: HashMap<String, (usize, usize)>,
    /// tensor name -> offset of its entry (the name's length).
    tensors: HashMap<String, usize>,
    /// The offset just past the tensor table.
    header_end: usize,
}

impl Layout {
    fn of(bytes: &[u8]) -> Self {
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
        fn skip(bytes: &[u8], type_id: u32, at: usize) -> usize {
            let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
            match type_id {
                0 | 1 | 7 => at + 1,
                2 | 3 => at + 2,
                4..=6 => at + 4,
                10..=12 => at + 8,
                8 => at + 8 + u64_at(at),
                9 => {
                    let element = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
                    let count = u64_at(at + 4);
                    (0..count).fold(at + 12, |at, _| skip(bytes, element, at))
                }
                other => panic!("type {other}"),
            }
        }
        let (tensor_count, kv_count) = (u64_at(8), u64_at(16));
        let mut at = 24;
        let mut values = HashMap::new();
        for _ in 0..kv_count {
            let len = u64_at(at);
            let key = String::from_utf8(bytes[at + 8..at + 8 + len].to_vec()).unwrap();
            let type_at = at + 8 + len;
            values.insert(key, (type_at, type_at + 4));
            at = skip(bytes, u32_at(type_at), type_at + 4);
        }
        let mut tensors = HashMap::new();
        for _ in 0..tensor_count {
            let len = u64_at(at);
            let name = String::from_utf8(bytes[at + 8..at + 8 + len].to_vec()).unwrap();
            tensors.insert(name, at);
            let n_dims = u32_at(at + 8 + len) as usize;
            at += 8 + len + 4 + 8 * n_dims + 4 + 8;
        }
        Layout { values, tensors, header_end: at }
    }

    fn value(&self, key: &str) -> usize {
        self.values[key].1
    }

    /// The offset of dimension `index` of tensor `name`.
    fn dim(&self, bytes: &[u8], name: &str, index: usize) -> usize {
        let at = self.tensors[name];
        let len = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
        at + 8 + len + 4 + 8 * index
    }

    /// The offset of the data offset of tensor `name`.
    fn data_offset(&self, bytes: &[u8], name: &str) -> usize {
        let at = self.tensors[name];
        let len = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
        let n_dims = u32::from_le_bytes(bytes[at + 8 + len..at + 12 + len].try_into().unwrap()) as usize;
        at + 8 + len + 4 + 8 * n_dims + 4
    }
}

fn smollm2_layout() -> &'static Layout {
    static LAYOUT: OnceLock<Layout> = OnceLock::new();
    LAYOUT.get_or_init(|| Layout::of(smollm2()))
}

/// The SmolLM2 header (metadata and tensor table) and a little data: enough for every header check,
/// without copying the 100 MB of weights for each mutation.
fn smollm2_header() -> &'static [u8] {
    &smollm2()[..smollm2_layout().header_end + 4096]
}

fn write_u32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

fn write_u64(bytes: &mut [u8], at: usize, value: u64) {
    bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

fn parse(bytes: Vec<u8>) -> Result<GgufFile, LlamaError> {
    no_panic("GGUF bytes", || GgufFile::from_bytes(bytes))
}

#[test]
fn huge_counts_in_the_header_are_refused_before_allocating() {
    let header = smollm2_header();
    let layout = smollm2_layout();
    let with_u64 = |at: usize, value: u64| Mutator::overwrite_u64(header, at, value);
    let tokens = layout.value("tokenizer.ggml.tokens");

    for value in [u64::MAX, 1 << 40, 1 << 20] {
        expect_error("metadata count", parse(with_u64(16, value)), &["<GGUF bytes>", "metadata entries"]);
        expect_error("tensor count", parse(with_u64(8, value)), &["<GGUF bytes>", "tensors"]);
        // The length of the first key (general.architecture).
        expect_error("key length", parse(with_u64(24, value)), &["metadata key #0", "at most 65536"]);
        // The element count of the token array: beyond the budget, or beyond what the file can hold.
        expect_error("array count", parse(with_u64(tokens + 4, value)), &["tokenizer.ggml.tokens"]);
    }
    let message = expect_error("array count", parse(with_u64(tokens + 4, u64::MAX)), &[]);
    assert!(message.contains(&MAX_ARRAY_ELEMENTS.to_string()), "{message}");
    // A string value's length near u64::MAX (general.type's value).
    expect_error("string length", parse(with_u64(layout.value("general.type"), u64::MAX)), &["general.type"]);

    // Tensor table: rank, dimensions (overflowing, huge) and data offset.
    let embd = "token_embd.weight";
    let rank_at = layout.dim(header, embd, 0) - 4;
    let mut five = header.to_vec();
    write_u32(&mut five, rank_at, 5);
    expect_error("rank", parse(five), &[embd, "5 dimensions"]);
    let dim1 = layout.dim(header, embd, 1);
    expect_error("dims", parse(with_u64(dim1, u64::MAX)), &[embd, "overflows"]);
    expect_error("dims", parse(with_u64(dim1, 1 << 40)), &[embd]);
    let full = smollm2();
    let mut beyond = full.to_vec();
    write_u64(&mut beyond, layout.data_offset(full, embd), 1 << 40);
    expect_error("data offset", parse(beyond), &[embd, "truncated"]);
    let mut past_end = full.to_vec();
    write_u64(&mut past_end, layout.dim(full, embd, 1), 1 << 30);
    expect_error("data size", parse(past_end), &[embd, "truncated"]);
}

#[test]
fn errors_from_a_file_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken-model.gguf");
    std::fs::write(&path, Mutator::overwrite_u64(smollm2_header(), 16, u64::MAX)).unwrap();
    let message = expect_error("named file", GgufFile::open(&path), &["broken-model.gguf", "metadata entries"]);
    assert!(!message.contains('\n'), "one line: {message}");
}

/// A GGUF v3 file with the given raw metadata entries (already encoded) and no tensors.
fn gguf_with_metadata(entries: &[Vec<u8>], padding: usize) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend(0u64.to_le_bytes());
    out.extend((entries.len() as u64).to_le_bytes());
    for entry in entries {
        out.extend(entry);
    }
    out.resize(out.len() + padding, 0);
    out
}

/// A metadata entry `key` of type `type_id` whose value bytes are `value`.
fn entry(key: &str, type_id: u32, value: &[u8]) -> Vec<u8> {
    let mut out = (key.len() as u64).to_le_bytes().to_vec();
    out.extend(key.as_bytes());
    out.extend(type_id.to_le_bytes());
    out.extend(value);
    out
}

/// The header of an array of `count` elements of `element_type`.
fn array_header(element_type: u32, count: u64) -> Vec<u8> {
    [element_type.to_le_bytes().to_vec(), count.to_le_bytes().to_vec()].concat()
}

#[test]
fn nested_arrays_are_bounded_by_the_file_not_their_declared_counts() {
    // Eight levels of arrays each declaring 2^24 arrays: reserving per level from the declared counts
    // would ask for 8 x 512 MiB; each level is refused against the bytes that are left.
    let nested: Vec<u8> = (0..8).flat_map(|_| array_header(9, 1 << 24)).chain(array_header(0, 1 << 24)).collect();
    let bytes = gguf_with_metadata(&[entry("a.nested", 9, &nested)], 1 << 20);
    let message = expect_error("nested arrays", parse(bytes), &["<GGUF bytes>", "a.nested"]);
    assert!(message.contains("truncated"), "{message}");

    // Counts within the file, nested deeper than 8 levels.
    let deep: Vec<u8> = (0..12).flat_map(|_| array_header(9, 1)).chain(array_header(0, 0)).collect();
    expect_error("deep arrays", parse(gguf_with_metadata(&[entry("a.deep", 9, &deep)], 0)), &["nested too deeply"]);

    // The element budget is shared by every array of the file: a first array of 2^24 - 4 bytes leaves
    // room for 4 more elements, not 5, whatever the file size.
    let big = (MAX_ARRAY_ELEMENTS - 4) as usize;
    let first = [array_header(0, big as u64), vec![7u8; big]].concat();
    let second = [array_header(0, 5), vec![1u8; 5]].concat();
    let bytes = gguf_with_metadata(&[entry("a.first", 9, &first), entry("a.second", 9, &second)], 0);
    expect_error("element budget", parse(bytes), &["a.second", "4 left"]);

    // An unknown element type is named.
    let unknown = [array_header(77, 1), vec![0; 8]].concat();
    let bytes = gguf_with_metadata(&[entry("a.unknown", 9, &unknown)], 0);
    expect_error("element type", parse(bytes), &["a.unknown", "unknown value type 77"]);
}

#[test]
fn a_huge_array_of_small_values_in_a_large_file_is_refused() {
    // token_type (i32 x 49,152) rewritten as 90 million u8 values: the 100 MB file could hold them,
    // but their parsed form would not be bounded (32 bytes each): the element budget refuses them.
    let layout = smollm2_layout();
    let at = layout.value("tokenizer.ggml.token_type");
    let mut bytes = smollm2().to_vec();
    write_u32(&mut bytes, at, 0);
    write_u64(&mut bytes, at + 4, 90_000_000);
    expect_error("u8 array", parse(bytes), &["tokenizer.ggml.token_type", "array elements"]);
}

/// SmolLM2 with its metadata changed in memory (errors still name the file).
fn smollm2_with(changes: &[(&str, GgufValue)]) -> GgufFile {
    let mut file = smollm2_parsed().clone();
    for (key, value) in changes {
        file.metadata.insert(key.to_string(), value.clone());
    }
    file
}

#[test]
fn non_finite_and_out_of_range_config_values_in_gguf_metadata_are_refused() {
    let eps = "llama.attention.layer_norm_rms_epsilon";
    let theta = "llama.rope.freq_base";
    for (key, value, shown) in [
        (eps, GgufValue::F32(f32::NAN), "NaN"),
        (eps, GgufValue::F32(f32::INFINITY), "inf"),
        (eps, GgufValue::F32(0.0), "0"),
        (eps, GgufValue::F32(-1e-5), "-0.00000999"),
        (theta, GgufValue::F32(f32::INFINITY), "inf"),
        (theta, GgufValue::F32(f32::NAN), "NaN"),
        (theta, GgufValue::F32(0.0), "0"),
        ("llama.block_count", GgufValue::U32(100_000), "100000"),
        ("llama.embedding_length", GgufValue::U64(1 << 40), "1099511627776"),
        ("llama.attention.head_count", GgufValue::U32(0), "0"),
        ("llama.attention.head_count", GgufValue::U32(7), "7"),
        ("llama.attention.head_count_kv", GgufValue::U32(2), "2"),
        ("llama.rope.dimension_count", GgufValue::U32(1 << 20), "1048576"),
        ("llama.feed_forward_length", GgufValue::U32(u32::MAX), "4294967295"),
        ("llama.context_length", GgufValue::U32(0), "0"),
    ] {
        let file = smollm2_with(&[(key, value)]);
        let result = no_panic(key, || LlamaConfig::from_gguf(&file));
        // The message names the file, the GGUF key (or the key the value conflicts with) and the value.
        let message = expect_error(key, result, &["SmolLM2-135M-Instruct.Q4_1.gguf", "invalid Llama config", shown]);
        assert!(message.contains("llama."), "{message}");
    }
    let file = smollm2_with(&[(eps, GgufValue::F32(f32::NAN))]);
    expect_error("eps", LlamaConfig::from_gguf(&file), &[eps, "NaN"]);

    // Bit flips in the file itself: the NaN eps through the reader, naming the file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nan-eps.gguf");
    let mut bytes = smollm2().to_vec();
    bytes[smollm2_layout().value(eps)..][..4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let file = GgufFile::open(&path).unwrap();
    expect_error("eps in a file", LlamaConfig::from_gguf(&file), &["nan-eps.gguf", eps, "NaN"]);

    // A wrong type is named too.
    let file = smollm2_with(&[("llama.block_count", GgufValue::String("30".into()))]);
    expect_error("wrong type", LlamaConfig::from_gguf(&file), &["SmolLM2", "llama.block_count", "string"]);
}

/// The tiny-llama fixture's config.json, changed by `change`, written to a temporary model directory.
fn tiny_config_with(change: impl FnOnce(&mut serde_json::Value)) -> (tempfile::TempDir, PathBuf) {
    let text = std::fs::read_to_string(Path::new(TINY_LLAMA).join("model/config.json")).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    change(&mut json);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, json.to_string()).unwrap();
    (dir, path)
}

#[test]
fn config_json_values_are_checked_with_the_file_field_and_value() {
    let cases: [(&str, serde_json::Value, &str, &str); 9] = [
        ("/rope_parameters/original_max_position_embeddings", 0.into(), "original_max_position_embeddings", "0"),
        ("/rope_parameters/factor", 1e39.into(), "rope_scaling.factor", "1000000000000000000000000000000000000000"),
        ("/rope_parameters/factor", (-8.0).into(), "rope_scaling.factor", "-8"),
        ("/rope_parameters/low_freq_factor", 0.0.into(), "low_freq_factor", "0"),
        ("/rope_parameters/rope_theta", 0.0.into(), "rope_theta", "0"),
        ("/rms_norm_eps", 1e-60.into(), "rms_norm_eps", "0.000"),
        ("/num_hidden_layers", 1_000_000.into(), "num_hidden_layers", "1000000"),
        ("/head_dim", 15.into(), "head_dim", "15"),
        ("/vocab_size", (1u64 << 30).into(), "vocab_size", "1073741824"),
    ];
    for (pointer, value, field, shown) in cases {
        let (_dir, path) = tiny_config_with(|json| *json.pointer_mut(pointer).unwrap() = value);
        let result = no_panic(pointer, || LlamaConfig::from_hf_file(&path));
        expect_error(pointer, result, &["config.json", field, shown]);
    }
    // Numbers JSON cannot hold as f64 (1e999) are a parse error naming the file, not infinity.
    let (_dir, path) = tiny_config_with(|json| json["rms_norm_eps"] = "EPS".into());
    let text = std::fs::read_to_string(&path).unwrap().replace("\"EPS\"", "1e999");
    std::fs::write(&path, text).unwrap();
    expect_error("1e999", LlamaConfig::from_hf_file(&path), &["config.json"]);

    // The legitimate config still loads.
    let (_dir, path) = tiny_config_with(|_| {});
    LlamaConfig::from_hf_file(&path).expect("the fixture's config is valid");
}

#[test]
fn layer_tensors_beyond_block_count_are_an_error() {
    // SmolLM2 has 30 layers; a block_count of 29 would leave blk.29.* unused, running a model without
    // its last layer.
    let mut bytes = smollm2().to_vec();
    write_u32(&mut bytes, smollm2_layout().value("llama.block_count"), 29);
    let file = GgufFile::from_bytes(bytes).unwrap();
    let config = LlamaConfig::from_gguf(&file).unwrap();
    assert_eq!(config.num_hidden_layers, 29);
    let device = Default::default();
    let result = no_panic("block_count 29", || {
        config.init::<Cpu>(&device).and_then(|model| model.load_gguf(&file, &config, "smollm2-29.gguf"))
    });
    let message = expect_error("block_count 29", result, &["<GGUF bytes>", "9 tensors", "blk.29.", "block_count = 29"]);
    assert!(message.contains("and 4 more"), "a summary, not every name: {message}");
    assert!(message.len() < 300, "{message}");
}

#[test]
fn a_vocabulary_only_gguf_is_one_readable_error() {
    let device = Default::default();
    let result = no_panic("vocab-only", || Llama::<Cpu>::from_gguf(Path::new(VOCAB_GGUF), &device));
    let message = expect_error("vocab-only", result.map(|_| ()), &["ggml-vocab-llama-bpe.gguf", "no tensors"]);
    assert!(message.len() < 200 && !message.contains("blk."), "{message}");
    let result = no_panic("vocab-only", || Llama::<Cpu>::from_gguf_quantized(Path::new(VOCAB_GGUF), &device));
    expect_error("vocab-only quantized", result.map(|_| ()), &["no tensors"]);

    // The same through the two-step API (config from metadata, then the tensors).
    let file = GgufFile::open(VOCAB_GGUF).unwrap();
    let config = LlamaConfig::from_gguf(&file).unwrap().with_num_hidden_layers(1);
    let model = config.init::<Cpu>(&device).unwrap();
    let err = model.load_gguf(&file, &config, "vocab").unwrap_err();
    assert!(matches!(&err, LlamaError::GgufNoTensors { file } if file.ends_with("ggml-vocab-llama-bpe.gguf")), "{err}");
}

#[test]
fn a_vocabulary_larger_than_the_embedding_table_is_refused() {
    let layout = smollm2_layout();
    let full = smollm2();
    let dir = tempfile::tempdir().unwrap();
    let device = Default::default();

    // The table shrunk to 49,151 rows (and llama.vocab_size with it): the tokenizer's 49,152 tokens
    // have no row for the last one.
    let mut bytes = full.to_vec();
    write_u64(&mut bytes, layout.dim(full, "token_embd.weight", 1), 49_151);
    write_u32(&mut bytes, layout.value("llama.vocab_size"), 49_151);
    let path = dir.path().join("short-table.gguf");
    std::fs::write(&path, &bytes).unwrap();
    let result = no_panic("short table", || Llama::<Cpu>::from_gguf(&path, &device).map(|_| ()));
    expect_error("short table", result, &["short-table.gguf", "49152", "49151"]);
    let file = GgufFile::open(&path).unwrap();
    let tokenizer = LlamaTokenizer::from_gguf(&file).unwrap();
    let err = tokenizer.check_vocab(49_151, "short-table.gguf").unwrap_err();
    assert!(matches!(err, LlamaError::TokenizerBeyondEmbedding { token_ids: 49_152, vocab_size: 49_151, .. }), "{err}");

    // Only the table shrunk: llama.vocab_size disagrees with the weights.
    let mut bytes = full.to_vec();
    write_u64(&mut bytes, layout.dim(full, "token_embd.weight", 1), 49_151);
    let file = GgufFile::from_bytes(bytes).unwrap();
    expect_error("vocab_size", LlamaConfig::from_gguf(&file), &["llama.vocab_size", "49152", "49151 rows"]);

    // A tokenizer.json with more ids than the model's table (Llama 3: 128,000 + 256 added tokens).
    // SAFETY: every test of the workspace that reads the shared hub cache sets the same values.
    unsafe {
        std::env::set_var("HF_HOME", format!("{SHARED}/hf"));
        std::env::set_var("HF_HUB_OFFLINE", "1");
    }
    let source = RepoSource::parse("meta-llama/Meta-Llama-3-8B-Instruct", RepoKind::Model);
    let tokenizer = LlamaTokenizer::from_pretrained(&source).unwrap();
    assert_eq!(tokenizer.id_count(), 128_256);
    tokenizer.check_vocab(128_256, "llama3").unwrap();
    let err = tokenizer.check_vocab(128_000, "a 128,000-row model").unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("128256") && message.contains("128000") && message.contains("tokenizer.json"),
        "{message}"
    );
}

#[test]
fn token_ids_beyond_the_embedding_are_refused_before_the_forward_pass() {
    // The tiny-llama fixture with one input id past its 512-row table.
    let dir = tempfile::tempdir().unwrap();
    for sub in ["model", "adapter"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
        for file in std::fs::read_dir(Path::new(TINY_LLAMA).join(sub)).unwrap() {
            let file = file.unwrap().path();
            std::fs::copy(&file, dir.path().join(sub).join(file.file_name().unwrap())).unwrap();
        }
    }
    std::fs::copy(Path::new(TINY_LLAMA).join("meta.json"), dir.path().join("meta.json")).unwrap();
    let mut reference_bytes = std::fs::read(Path::new(TINY_LLAMA).join("reference.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(reference_bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&reference_bytes[8..8 + header_len]).unwrap();
    assert_eq!(header["input_ids"]["dtype"], "I64");
    let start = 8 + header_len + header["input_ids"]["data_offsets"][0].as_u64().unwrap() as usize;
    reference_bytes[start..start + 8].copy_from_slice(&600i64.to_le_bytes());
    std::fs::write(dir.path().join("reference.safetensors"), &reference_bytes).unwrap();

    let result =
        no_panic("tiny-llama input id 600", || reference::verify_on::<Cpu>(dir.path(), None, &Default::default()));
    expect_error("tiny-llama input id 600", result, &["input_ids", "600", "512"]);

    // Prompts given as ids to generation.
    let model =
        Llama::<Cpu>::from_pretrained(&RepoSource::Local(dir.path().join("model")), &Default::default()).unwrap();
    let tokenizer =
        LlamaTokenizer::new(tokenizers::Tokenizer::new(tokenizers::models::bpe::BPE::default()), None, None, None);
    let result = no_panic("generation", || {
        generate_answers_for_ids(&model, &tokenizer, &[vec![1, 512]], 2, &Default::default())
    });
    expect_error("generation", result, &["512", "vocabulary of 512"]);
}

#[test]
fn fifos_are_errors_not_hangs() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("model.gguf");
    if make_fifo(&fifo).is_err() {
        return; // no mkfifo here
    }
    let path = fifo.clone();
    let message = within("GGUF FIFO", Duration::from_secs(10), move || {
        GgufFile::open(&path).map(|_| ()).unwrap_err().to_string()
    });
    assert!(message.contains("FIFO"), "{message}");
    let path = fifo.clone();
    within("config FIFO", Duration::from_secs(10), move || assert!(LlamaConfig::from_hf_file(&path).is_err()));
    let path = fifo.clone();
    within("tokenizer FIFO", Duration::from_secs(10), move || assert!(LlamaTokenizer::from_file(&path).is_err()));
}

#[test]
fn random_header_mutations_are_errors_or_files_never_panics() {
    let header = smollm2_header();
    let layout = smollm2_layout();
    // Offsets worth breaking: the counts, every metadata value and every tensor-table entry.
    let mut targets: Vec<usize> = vec![8, 16, 24];
    targets.extend(layout.values.values().flat_map(|&(type_at, value_at)| [type_at, value_at, value_at + 4]));
    targets.extend(layout.tensors.values().flat_map(|&at| (0..6).map(move |i| at + 8 * i)));
    let mut mutator = Mutator::new(13);
    let (mut parsed, mut refused) = (0, 0);
    let ran = fuzz_for("SmolLM2 header", Duration::from_secs(3), 400, |iteration| {
        let bytes = match iteration % 4 {
            0 => {
                let flips = 1 + mutator.below(8);
                mutator.flip_bits_in(header, flips, 0..layout.header_end)
            }
            1 => {
                let at = targets[mutator.below(targets.len())];
                let value = mutator.hostile_integer();
                if mutator.below(2) == 0 {
                    Mutator::overwrite_u64(header, at, value)
                } else {
                    Mutator::overwrite_u32(header, at, value as u32)
                }
            }
            2 => mutator.truncate(header),
            _ => {
                // Header flips with the whole file behind them, so that some parse and reach the config.
                mutator.flip_bits_in(smollm2(), 1, 0..layout.header_end)
            }
        };
        match GgufFile::from_bytes(bytes) {
            Ok(file) => {
                parsed += 1;
                // Any config it gives must be valid, or be refused.
                if let Ok(config) = LlamaConfig::from_gguf(&file) {
                    config.validate().expect("from_gguf returns validated configs");
                }
            }
            Err(error) => {
                refused += 1;
                let message = error.to_string();
                assert!(message.starts_with("<GGUF bytes>"), "the error names the file: {message}");
            }
        }
    });
    assert!(ran >= 20, "only {ran} iterations");
    assert!(refused > 0, "{parsed} parsed, {refused} refused");
}

#[test]
fn random_metadata_values_are_config_errors_or_valid_configs() {
    let keys = [
        "llama.block_count",
        "llama.embedding_length",
        "llama.feed_forward_length",
        "llama.attention.head_count",
        "llama.attention.head_count_kv",
        "llama.attention.key_length",
        "llama.rope.dimension_count",
        "llama.attention.layer_norm_rms_epsilon",
        "llama.rope.freq_base",
        "llama.context_length",
        "llama.vocab_size",
        "general.architecture",
    ];
    let mut mutator = Mutator::new(29);
    let floats = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -1.0, 1e-45, 1e38, f32::MAX, 1e-5, 10000.0];
    let ran = fuzz_for("SmolLM2 metadata", Duration::from_secs(2), 300, |_| {
        let mut changes = Vec::new();
        for _ in 0..1 + mutator.below(3) {
            let key = keys[mutator.below(keys.len())];
            let integer = mutator.hostile_integer();
            let value = match mutator.below(6) {
                0 => GgufValue::U32(integer as u32),
                1 => GgufValue::U64(integer),
                2 => GgufValue::I32(integer as i32),
                3 => GgufValue::F32(floats[mutator.below(floats.len())]),
                4 => GgufValue::F64(f64::from(floats[mutator.below(floats.len())]) * 1e300),
                _ => GgufValue::String("llama".into()),
            };
            changes.push((key, value));
        }
        let file = smollm2_with(&changes);
        if let Ok(config) = LlamaConfig::from_gguf(&file) {
            config.validate().expect("from_gguf returns validated configs");
            // Building the (lazy) model from any accepted config must not panic either.
            config.init::<Cpu>(&Default::default()).expect("a validated config builds");
        }
    });
    assert!(ran >= 20, "only {ran} iterations");
}

#[test]
fn random_mutations_of_the_vocabulary_gguf_never_panic() {
    let bytes = std::fs::read(VOCAB_GGUF).unwrap();
    let layout = Layout::of(&bytes);
    let tokens_at = layout.value("tokenizer.ggml.tokens");
    let mut mutator = Mutator::new(41);
    let ran = fuzz_for("vocabulary GGUF", Duration::from_secs(2), 200, |iteration| {
        let mutated = match iteration % 3 {
            0 => {
                let flips = 1 + mutator.below(4);
                mutator.flip_bits_in(&bytes, flips, 0..tokens_at + 4096)
            }
            1 => mutator.truncate(&bytes),
            _ => {
                let (type_at, value_at) = *layout.values.values().nth(mutator.below(layout.values.len())).unwrap();
                let at = if mutator.below(2) == 0 { type_at } else { value_at };
                Mutator::overwrite_u64(&bytes, at, mutator.hostile_integer())
            }
        };
        if let Ok(file) = GgufFile::from_bytes(mutated) {
            let _ = LlamaConfig::from_gguf(&file);
        }
    });
    assert!(ran >= 10, "only {ran} iterations");
}
