//! Hostile safetensors files, built from the real MiniLM checkpoint in `../shared`: wrong dtypes, NaN and
//! infinite values, empty files, FIFOs, and seeded random mutations of the 8-byte header length and the
//! JSON header. Every one is a typed [`CheckpointError`] (or a correct load), never a panic, a hang or an
//! allocation sized by a corrupted count (the allocator below caps the test binary at 3 GiB).

use std::path::{Path, PathBuf};
use std::time::Duration;

use burn::backend::NdArray;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::DType;
use polarity_checkpoint::{Checkpoint, CheckpointError, KeyMapping, LISTED_TENSORS};
use polarity_core::params::FloatParam;
use polarity_testkit::{CappedAllocator, Mutator, expect_error, fuzz_for, make_fifo, no_panic, within};
use serde_json::{Map, Value, json};

#[global_allocator]
static ALLOCATOR: CappedAllocator = CappedAllocator::new(3 << 30);

const MINILM: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/hf/hub/models--sentence-transformers--all-MiniLM-L6-v2/snapshots"
);

/// The one snapshot of MiniLM's cache folder.
fn minilm_file(name: &str) -> PathBuf {
    let snapshot = std::fs::read_dir(MINILM).expect("MiniLM in ../shared").next().unwrap().unwrap().path();
    snapshot.join(name)
}

/// A safetensors file as its JSON header and its data section.
#[derive(Clone)]
struct Safetensors {
    header: Map<String, Value>,
    data: Vec<u8>,
}

impl Safetensors {
    fn parse(bytes: &[u8]) -> Self {
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        Self { header, data: bytes[8 + n..].to_vec() }
    }

    /// The file's bytes, with the header length recomputed.
    fn bytes(&self) -> Vec<u8> {
        let header = serde_json::to_vec(&self.header).unwrap();
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend(header);
        out.extend(&self.data);
        out
    }

    /// A file of just these tensors of `source`, renamed (`(new name, source name)`).
    fn subset(source: &Safetensors, tensors: &[(&str, &str)]) -> Self {
        let mut header = Map::new();
        let mut data = Vec::new();
        for (name, from) in tensors {
            let entry = &source.header[*from];
            let [start, end] = [0, 1].map(|i| entry["data_offsets"][i].as_u64().unwrap() as usize);
            let offsets = json!([data.len(), data.len() + end - start]);
            data.extend_from_slice(&source.data[start..end]);
            header.insert(
                name.to_string(),
                json!({"dtype": entry["dtype"], "shape": entry["shape"], "data_offsets": offsets}),
            );
        }
        Self { header, data }
    }

    /// The data of tensor `name`, mutably.
    fn tensor_data(&mut self, name: &str) -> &mut [u8] {
        let [start, end] = [0, 1].map(|i| self.header[name]["data_offsets"][i].as_u64().unwrap() as usize);
        &mut self.data[start..end]
    }
}

/// A real attention projection of MiniLM (`[384, 384]` and `[384]`) as `weight` and `bias`, plus its I64
/// `position_ids` buffer (which the mapping below ignores).
fn real_linear() -> Safetensors {
    let full = Safetensors::parse(&std::fs::read(minilm_file("model.safetensors")).unwrap());
    Safetensors::subset(
        &full,
        &[
            ("weight", "encoder.layer.0.attention.output.dense.weight"),
            ("bias", "encoder.layer.0.attention.output.dense.bias"),
            ("position_ids", "embeddings.position_ids"),
        ],
    )
}

fn linear() -> Linear<NdArray> {
    LinearConfig::new(384, 384).init(&Default::default())
}

/// Checkpoint keys are the module paths; `position_ids` is a buffer.
struct SameNames;

impl KeyMapping for SameNames {
    fn key_of(&self, param: &FloatParam) -> Option<String> {
        Some(param.name())
    }
    fn may_be_unused(&self, key: &str) -> bool {
        key == "position_ids"
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn load<M: Module<NdArray>>(path: &Path, module: M) -> Result<M, CheckpointError> {
    Ok(Checkpoint::from_safetensors(&[path.to_path_buf()])?.load_into(module, &SameNames)?.0)
}

#[test]
fn the_real_subset_loads() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "ok.safetensors", &real_linear().bytes());
    load(&path, linear()).unwrap();
}

#[test]
fn integer_dtypes_for_float_weights_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    // I32 has F32's size, so the file stays consistent: only the dtype is wrong.
    for (dtype, found) in [("I32", DType::I32), ("U32", DType::U32)] {
        let mut file = real_linear();
        file.header["weight"]["dtype"] = json!(dtype);
        let path = write(dir.path(), "int.safetensors", &file.bytes());
        let err = no_panic(dtype, || load(&path, linear())).unwrap_err();
        assert!(
            matches!(&err, CheckpointError::DTypeMismatch { tensor, found: f, .. } if tensor == "weight" && *f == found),
            "{err}"
        );
    }
    // An 8-byte integer: the shape halves to keep the byte count, so the shape is refused first.
    let mut file = real_linear();
    file.header["bias"]["dtype"] = json!("I64");
    file.header["bias"]["shape"] = json!([192]);
    let path = write(dir.path(), "i64.safetensors", &file.bytes());
    let err = load(&path, linear()).unwrap_err();
    assert!(matches!(&err, CheckpointError::ShapeMismatch { tensor, .. } if tensor == "bias"), "{err}");
    let mut file = real_linear();
    file.header["bias"]["dtype"] = json!("BOOL");
    file.header["bias"]["shape"] = json!([1536]);
    file.header["weight"]["dtype"] = json!("U8");
    file.header["weight"]["shape"] = json!([384, 1536]);
    let path = write(dir.path(), "bytes.safetensors", &file.bytes());
    let err = load(&path, linear()).unwrap_err();
    assert!(matches!(&err, CheckpointError::ShapeMismatch { .. }), "{err}");
}

#[test]
fn nan_and_infinite_weights_name_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let mut file = real_linear();
    let data = file.tensor_data("weight");
    data[40..44].copy_from_slice(&f32::NAN.to_le_bytes());
    data[400..404].copy_from_slice(&f32::NEG_INFINITY.to_le_bytes());
    let path = write(dir.path(), "nan.safetensors", &file.bytes());
    let err = load(&path, linear()).unwrap_err();
    match &err {
        CheckpointError::NonFinite { tensor, count, first_index, first_value, checkpoint } => {
            assert_eq!((tensor.as_str(), *count, *first_index), ("weight", 2, 10));
            assert!(first_value.is_nan());
            assert!(checkpoint.ends_with("nan.safetensors"));
        }
        other => panic!("{other}"),
    }
    expect_error("NaN weight", Err::<(), _>(err), &["weight", "2 non-finite", "nan.safetensors"]);

    let mut file = real_linear();
    file.tensor_data("bias")[0..4].copy_from_slice(&f32::INFINITY.to_le_bytes());
    let path = write(dir.path(), "inf.safetensors", &file.bytes());
    let err = load(&path, linear()).unwrap_err();
    assert!(matches!(&err, CheckpointError::NonFinite { tensor, count: 1, .. } if tensor == "bias"), "{err}");
}

#[test]
fn a_finite_f64_beyond_f32_is_refused_after_the_cast() {
    let dir = tempfile::tempdir().unwrap();
    let weight: Vec<u8> = (0..384 * 384).flat_map(|i| if i == 7 { 1e300f64 } else { 0.01 }.to_le_bytes()).collect();
    let bias: Vec<u8> = [0f64; 384].iter().flat_map(|v| v.to_le_bytes()).collect();
    let file = Safetensors {
        header: serde_json::from_value(json!({
            "weight": {"dtype": "F64", "shape": [384, 384], "data_offsets": [0, weight.len()]},
            "bias": {"dtype": "F64", "shape": [384], "data_offsets": [weight.len(), weight.len() + bias.len()]},
        }))
        .unwrap(),
        data: [weight, bias].concat(),
    };
    let path = write(dir.path(), "f64.safetensors", &file.bytes());
    let err = load(&path, linear()).unwrap_err();
    assert!(
        matches!(&err, CheckpointError::NonFinite { tensor, first_index: 7, first_value, .. }
            if tensor == "weight" && first_value.is_infinite()),
        "{err}"
    );
}

#[test]
fn long_lists_of_tensors_are_summarised() {
    let dir = tempfile::tempdir().unwrap();
    let layers: Vec<Linear<NdArray>> = (0..12).map(|_| linear()).collect();
    // The real file's weight and bias: not at the layers' paths (`0.weight`, ...).
    let path = write(dir.path(), "other.safetensors", &real_linear().bytes());
    let err = load(&path, layers).unwrap_err();
    let CheckpointError::MissingTensors { tensors, .. } = &err else { panic!("{err}") };
    assert_eq!(tensors.len(), 24, "the error keeps every missing tensor");
    let message = err.to_string();
    assert!(message.contains("missing 24 tensors") && message.contains("and 19 more"), "{message}");
    assert_eq!(message.matches("[384").count(), LISTED_TENSORS, "{message}");
}

#[test]
fn a_file_without_tensors_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "empty.safetensors", &Safetensors { header: Map::new(), data: Vec::new() }.bytes());
    let err = load(&path, linear()).unwrap_err();
    assert!(matches!(&err, CheckpointError::NoTensors { expected: 2, .. }), "{err}");
    expect_error("no tensors", Err::<(), _>(err), &["empty.safetensors", "no tensors"]);
}

#[test]
fn a_fifo_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    make_fifo(&path).unwrap();
    let err = within("FIFO model.safetensors", Duration::from_secs(10), move || {
        Checkpoint::from_safetensors(&[path]).map(|_| ())
    })
    .unwrap_err();
    assert!(matches!(&err, CheckpointError::Io { .. }), "{err}");
    assert!(err.to_string().contains("FIFO"), "{err}");
    let err = Checkpoint::from_safetensors(&[dir.path().to_path_buf()]).map(|_| ()).unwrap_err();
    assert!(err.to_string().contains("directory"), "{err}");
}

/// Loads `bytes` as a checkpoint file and every tensor's data, then into the linear layer: any outcome
/// but a panic is fine.
fn attempt(dir: &Path, bytes: &[u8]) {
    let path = write(dir, "fuzz.safetensors", bytes);
    let Ok(checkpoint) = Checkpoint::from_safetensors(&[path]) else { return };
    for tensor in checkpoint.tensors() {
        let _ = tensor.snapshot.to_data();
    }
    let _ = checkpoint.load_into(linear(), &SameNames);
}

#[test]
fn random_mutations_of_the_header_length_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = real_linear().bytes();
    let mut mutator = Mutator::new(11);
    let ran = fuzz_for("header length", Duration::from_secs(3), 300, |_| {
        let value = mutator.hostile_integer();
        let mutated = Mutator::overwrite_u64(&bytes, 0, value);
        if value != u64::from_le_bytes(bytes[..8].try_into().unwrap()) {
            let path = write(dir.path(), "len.safetensors", &mutated);
            assert!(Checkpoint::from_safetensors(&[path]).is_err(), "header length {value} accepted");
        }
    });
    assert!(ran > 10, "{ran}");
}

#[test]
fn random_mutations_of_the_json_header_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let file = real_linear();
    let bytes = file.bytes();
    let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut mutator = Mutator::new(12);
    let ran = fuzz_for("JSON header", Duration::from_secs(4), 2000, |iteration| {
        let mutated = match iteration % 4 {
            // Bit flips inside the header.
            0 => {
                let flips = 1 + mutator.below(4);
                mutator.flip_bits_in(&bytes, flips, 8..header_end)
            }
            // Truncated anywhere.
            1 => mutator.truncate(&bytes),
            // A hostile number for a shape dimension or an offset, length kept consistent.
            2 => {
                let mut file = file.clone();
                let name = ["weight", "bias", "position_ids"][mutator.below(3)];
                let value = mutator.hostile_integer();
                match mutator.below(3) {
                    0 => file.header[name]["shape"][0] = json!(value),
                    1 => file.header[name]["data_offsets"][mutator.below(2)] = json!(value),
                    _ => file.header[name]["shape"] = json!([value, value, value]),
                }
                file.bytes()
            }
            // Another dtype, or a wrong JSON type for a field.
            _ => {
                let mut file = file.clone();
                let name = ["weight", "bias", "position_ids"][mutator.below(3)];
                let dtypes = ["F16", "BF16", "F64", "I8", "U8", "BOOL", "F8_E4M3", "C64", "X", "I64"];
                match mutator.below(3) {
                    0 => file.header[name]["dtype"] = json!(dtypes[mutator.below(dtypes.len())]),
                    1 => file.header[name]["shape"] = json!("384"),
                    _ => file.header[name] = json!(null),
                }
                file.bytes()
            }
        };
        attempt(dir.path(), &mutated);
    });
    assert!(ran > 20, "{ran}");
}
