//! One strict loader of checkpoint tensors into burn modules, for every model of polarity (BERT,
//! DistilBERT, Llama and its LoRA adapters).
//!
//! A [`Checkpoint`] holds lazy tensor snapshots by checkpoint key: read from safetensors files
//! ([`Checkpoint::from_safetensors`], one file or a sharded checkpoint's shards) or built by the caller
//! (a GGUF file's tensors, dequantised on read: [`Checkpoint::from_snapshots`]). A [`KeyMapping`] says
//! how the model's parameters are spelled in the checkpoint and which differences are tolerated;
//! [`Checkpoint::load_into`] then checks every tensor against the model and applies them through
//! burn-store, transposing linear weights from PyTorch's `[out, in]` to burn's `[in, out]` and casting
//! floats to the backend's float type.
//!
//! Loading is strict: a parameter the checkpoint lacks, a checkpoint tensor that matches no parameter,
//! two keys for one parameter, a shape or a dtype that differs are [`CheckpointError`]s naming the file
//! and the tensor, unless the mapping explicitly allows the difference (a fresh classification head is
//! reported as initialised, a buffer or another task's head as ignored: [`LoadReport`]).
//!
//! Every check of keys, shapes and dtypes runs before burn-store sees a tensor: its `apply` moves the
//! module out with `ptr::read` and has no panic guard, so a panic inside it (an integer tensor
//! converted into a float parameter, say) would drop the module twice. Values are checked as each
//! tensor's data is read, in the same pass that casts it: a NaN or infinite value is
//! [`CheckpointError::NonFinite`] naming the tensor (reported as an error from the read, which
//! burn-store handles without panicking). Checkpoint files must be regular files (a FIFO is an error,
//! not a hang), and their headers are parsed by the `safetensors` crate, which bounds the header size
//! and checks every tensor's offsets against the file.
//!
//! ```
//! use burn::backend::NdArray;
//! use burn::module::ParamId;
//! use burn::nn::{Linear, LinearConfig};
//! use burn::tensor::TensorData;
//! use burn_store::TensorSnapshot;
//! use polarity_checkpoint::{Checkpoint, KeyMapping};
//! use polarity_core::params::FloatParam;
//!
//! /// Checkpoint keys are the module paths.
//! struct SameNames;
//! impl KeyMapping for SameNames {
//!     fn key_of(&self, param: &FloatParam) -> Option<String> {
//!         Some(param.name())
//!     }
//! }
//!
//! let layer: Linear<NdArray> = LinearConfig::new(3, 2).init(&Default::default());
//! // PyTorch layout: the weight is [out, in].
//! let snapshot = |data: TensorData| TensorSnapshot::from_data(data, vec![], vec![], ParamId::new());
//! let weight = snapshot(TensorData::new(vec![1f32; 6], [2, 3]));
//! let bias = snapshot(TensorData::new(vec![0f32; 2], [2]));
//! let checkpoint = Checkpoint::from_snapshots("in memory", [("weight".into(), weight), ("bias".into(), bias)]);
//! let (layer, report) = checkpoint.load_into(layer, &SameNames).unwrap();
//! assert_eq!(report.loaded, ["weight", "bias"]);
//! assert_eq!(layer.weight.dims(), [3, 2]);
//! ```

#![warn(missing_docs)]

mod error;

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use burn::module::{Module, ParamId};
use burn::prelude::*;
use burn::tensor::{DType, Element, bf16, f16};
pub use burn_store::TensorSnapshot;
use burn_store::{
    ApplyError, ModuleSnapshot, ModuleStore, PyTorchToBurnAdapter, SafetensorsStore, SafetensorsStoreError,
};
use polarity_core::params::{EnumVariants, FloatParam, float_params};

pub use error::{CheckpointError, LISTED_TENSORS, TensorInfo, summarize_tensors};

/// One tensor of a checkpoint, not read yet.
#[derive(Clone)]
pub struct CheckpointTensor {
    /// The key, as the checkpoint spells it.
    pub key: String,
    /// The file it is in, for messages.
    pub file: String,
    /// The tensor: dtype and shape, its data read on demand.
    pub snapshot: TensorSnapshot,
}

/// The tensors of a checkpoint, by key, not read yet.
#[derive(Clone)]
pub struct Checkpoint {
    name: String,
    tensors: Vec<CheckpointTensor>,
}

/// How a model's parameters are spelled in a checkpoint, and which differences are tolerated.
///
/// The defaults are strict: every parameter [`key_of`](Self::key_of) names must be in the checkpoint,
/// and every checkpoint tensor must match one.
pub trait KeyMapping {
    /// The checkpoint key of a parameter (its module path has no enum variant segments), or `None`
    /// when this checkpoint does not provide it (the frozen base, for an adapter checkpoint): it is
    /// then left as it is and not reported.
    fn key_of(&self, param: &FloatParam) -> Option<String>;

    /// A checkpoint key in the spelling [`key_of`](Self::key_of) uses (legacy names, prefixes).
    fn normalise<'a>(&self, key: &'a str) -> Cow<'a, str> {
        Cow::Borrowed(key)
    }

    /// Whether the parameter with this key may be absent from the checkpoint, keeping its fresh
    /// initialisation ([`LoadReport::initialised`]).
    fn may_be_missing(&self, _key: &str) -> bool {
        false
    }

    /// Whether a checkpoint tensor (by normalised key) that matches no parameter may be ignored
    /// ([`LoadReport::ignored`]) rather than rejected.
    fn may_be_unused(&self, _key: &str) -> bool {
        false
    }
}

/// What loading a checkpoint did, by checkpoint key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Parameters loaded from the checkpoint, in the model's order (keys as the model spells them).
    pub loaded: Vec<String>,
    /// Parameters the checkpoint lacks, left freshly initialised (a new classification head).
    pub initialised: Vec<String>,
    /// Checkpoint tensors the model does not use (buffers such as `embeddings.position_ids`, heads of
    /// other tasks), as the checkpoint spells them, sorted.
    pub ignored: Vec<String>,
}

impl Checkpoint {
    /// The tensors of safetensors `files` (one file, or all the shards of a sharded checkpoint). The
    /// checkpoint is named after the file, or the shards' directory. Data is read only when applied.
    pub fn from_safetensors(files: &[PathBuf]) -> Result<Self, CheckpointError> {
        let name = match files {
            [] => return Err(CheckpointError::NoFiles),
            [file] => file.display().to_string(),
            [first, ..] => first.parent().map_or_else(|| first.clone(), Path::to_path_buf).display().to_string(),
        };
        let mut tensors = Vec::new();
        for path in files {
            // burn-store opens the file with a blocking `File::open`, which waits forever on a FIFO.
            polarity_hub::files::open_regular(path)
                .map_err(|source| CheckpointError::Io { path: path.clone(), source })?;
            let mut store = SafetensorsStore::from_file(path);
            let snapshots = store.get_all_snapshots().map_err(|e| match e {
                SafetensorsStoreError::Io(source) => CheckpointError::Io { path: path.clone(), source },
                other => CheckpointError::InvalidSafetensors { path: path.clone(), reason: other.to_string() },
            })?;
            let file = path.display().to_string();
            tensors.extend(snapshots.iter().map(|(key, snapshot)| CheckpointTensor {
                key: key.clone(),
                file: file.clone(),
                snapshot: snapshot.clone(),
            }));
        }
        Ok(Self { name, tensors })
    }

    /// A checkpoint of tensors built by the caller (say a GGUF file's, dequantised on read), all in the
    /// one file `name`.
    pub fn from_snapshots(
        name: impl Into<String>,
        tensors: impl IntoIterator<Item = (String, TensorSnapshot)>,
    ) -> Self {
        let name = name.into();
        let tensors =
            tensors.into_iter().map(|(key, snapshot)| CheckpointTensor { key, file: name.clone(), snapshot }).collect();
        Self { name, tensors }
    }

    /// The same tensors under another name (a hub id rather than a cache path), for messages about the
    /// checkpoint as a whole.
    pub fn named(self, name: impl Into<String>) -> Self {
        Self { name: name.into(), ..self }
    }

    /// The name used in messages: the file, the shards' directory, or what the caller gave.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tensors, in file order.
    pub fn tensors(&self) -> &[CheckpointTensor] {
        &self.tensors
    }

    /// Checks the tensors against `module`'s float parameters as `mapping` spells them, then loads them
    /// (PyTorch layouts transposed to burn's, floats cast to the backend's float type).
    ///
    /// Every check (keys, shapes, dtypes) runs before anything is applied, so an error leaves nothing
    /// half loaded and no panic can happen inside burn-store.
    pub fn load_into<B: Backend, M: Module<B>>(
        self,
        mut module: M,
        mapping: &impl KeyMapping,
    ) -> Result<(M, LoadReport), CheckpointError> {
        let Checkpoint { name, tensors } = self;
        // Checkpoints never name Rust enum variants (`BaseLinear::Dense`), so neither do the paths.
        let expected: Vec<(String, FloatParam)> = float_params::<B, M>(&module, EnumVariants::Skip)
            .into_iter()
            .filter_map(|param| mapping.key_of(&param).map(|key| (key, param)))
            .collect();
        let index_of: HashMap<&str, usize> =
            expected.iter().enumerate().map(|(i, (key, _))| (key.as_str(), i)).collect();

        let mut report = LoadReport::default();
        let mut matched: Vec<Option<usize>> = vec![None; expected.len()];
        let mut unexpected = Vec::new();
        for (position, tensor) in tensors.iter().enumerate() {
            let key = mapping.normalise(&tensor.key);
            let found = tensor.snapshot.shape.to_vec();
            let Some(&index) = index_of.get(key.as_ref()) else {
                if mapping.may_be_unused(&key) {
                    report.ignored.push(tensor.key.clone());
                } else {
                    unexpected.push(TensorInfo { name: tensor.key.clone(), shape: found });
                }
                continue;
            };
            if let Some(first) = matched[index] {
                return Err(CheckpointError::DuplicateTensor {
                    checkpoint: tensor.file.clone(),
                    tensor: tensors[first].key.clone(),
                    duplicate: tensor.key.clone(),
                });
            }
            let expected_shape = expected[index].1.pytorch_shape();
            if found != expected_shape {
                return Err(CheckpointError::ShapeMismatch {
                    checkpoint: tensor.file.clone(),
                    tensor: tensor.key.clone(),
                    expected: expected_shape,
                    found,
                });
            }
            // Every listed parameter is a float one; burn-store would convert an integer tensor into it
            // with a panic (inside its unguarded `apply`).
            if !tensor.snapshot.dtype.is_float() {
                return Err(CheckpointError::DTypeMismatch {
                    checkpoint: tensor.file.clone(),
                    tensor: tensor.key.clone(),
                    found: tensor.snapshot.dtype,
                });
            }
            matched[index] = Some(position);
        }

        let required = expected.iter().filter(|(key, _)| !mapping.may_be_missing(key)).count();
        if tensors.is_empty() && required > 0 {
            return Err(CheckpointError::NoTensors { checkpoint: name, expected: required });
        }
        let mut missing = Vec::new();
        for ((key, param), found) in expected.iter().zip(&matched) {
            match found {
                Some(_) => report.loaded.push(key.clone()),
                None if mapping.may_be_missing(key) => report.initialised.push(key.clone()),
                None => missing.push(TensorInfo { name: key.clone(), shape: param.pytorch_shape() }),
            }
        }
        if !missing.is_empty() {
            return Err(CheckpointError::MissingTensors { checkpoint: name, tensors: missing });
        }
        if !unexpected.is_empty() {
            return Err(CheckpointError::UnexpectedTensors { checkpoint: name, tensors: unexpected });
        }
        report.ignored.sort();

        let target = <B::FloatElem as Element>::dtype();
        let mut source_of: HashMap<String, &CheckpointTensor> = HashMap::new();
        let mut snapshots = Vec::with_capacity(report.loaded.len());
        let first_non_finite: Rc<RefCell<Option<CheckpointError>>> = Rc::default();
        for ((_, param), found) in expected.iter().zip(&matched) {
            let Some(position) = *found else { continue };
            let tensor = &tensors[position];
            source_of.insert(param.name(), tensor);
            // Re-keyed to the module path; the data is read (and cast, and checked) only when applied.
            snapshots.push(TensorSnapshot::from_closure(
                read_checked(tensor, target, Rc::clone(&first_non_finite)),
                target,
                tensor.snapshot.shape.clone(),
                param.path.clone(),
                Vec::new(),
                ParamId::new(),
            ));
        }
        let result = module.apply(snapshots, None, Some(Box::new(PyTorchToBurnAdapter)), true);
        let load_error = |path: &str, reason: String| {
            let (checkpoint, tensor) = source_of
                .get(path)
                .map_or_else(|| (name.clone(), path.to_string()), |t| (t.file.clone(), t.key.clone()));
            CheckpointError::TensorLoad { checkpoint, tensor, reason }
        };
        // The typed error the read recorded, rather than burn-store's string of it.
        if let Some(error) = first_non_finite.take() {
            return Err(error);
        }
        if let Some(error) = result.errors.first() {
            let path = match error {
                ApplyError::ShapeMismatch { path, .. }
                | ApplyError::DTypeMismatch { path, .. }
                | ApplyError::AdapterError { path, .. }
                | ApplyError::LoadError { path, .. } => path,
            };
            return Err(load_error(path, error.to_string()));
        }
        // Every tensor handed over must have reached its parameter.
        let supplied: HashSet<&str> = source_of.keys().map(String::as_str).collect();
        if let Some((path, _)) = result.missing.iter().find(|(path, _)| supplied.contains(path.as_str())) {
            return Err(load_error(path, "matched in the checkpoint but not applied to the model".into()));
        }
        Ok((module, report))
    }
}

/// A reader of the tensor's data: converted to `target` when it is another float type (checkpoints may
/// be f16, bf16 or f64), then checked for NaN and infinite values. A non-finite value fails the read;
/// the first such error is also kept in `first_non_finite`, typed, for [`Checkpoint::load_into`] to
/// return.
fn read_checked(
    tensor: &CheckpointTensor,
    target: DType,
    first_non_finite: Rc<RefCell<Option<CheckpointError>>>,
) -> Rc<dyn Fn() -> Result<TensorData, burn_store::TensorSnapshotError>> {
    let read = tensor.snapshot.clone_data_fn();
    let convert = tensor.snapshot.dtype != target;
    let (file, key) = (tensor.file.clone(), tensor.key.clone());
    Rc::new(move || {
        let data = read()?;
        let data = if convert { data.convert_dtype(target) } else { data };
        let Some(found) = non_finite(&data) else { return Ok(data) };
        let message =
            format!("{} non-finite value(s), the first {} at index {}", found.count, found.value, found.index);
        first_non_finite.borrow_mut().get_or_insert(CheckpointError::NonFinite {
            checkpoint: file.clone(),
            tensor: key.clone(),
            count: found.count,
            first_index: found.index,
            first_value: found.value,
        });
        Err(burn_store::TensorSnapshotError::DataError(message))
    })
}

/// Where a tensor holds NaN or infinite values.
#[derive(Debug, PartialEq)]
struct NonFinite {
    count: usize,
    index: usize,
    value: f64,
}

/// The non-finite values of a float tensor, if any. The common case (none) is one pass of `is_finite`.
fn non_finite(data: &TensorData) -> Option<NonFinite> {
    fn scan<E: Copy>(values: &[E], finite: impl Fn(E) -> bool, wide: impl Fn(E) -> f64) -> Option<NonFinite> {
        if values.iter().all(|&v| finite(v)) {
            return None;
        }
        let mut bad = values.iter().enumerate().filter(|(_, v)| !finite(**v));
        let (index, &first) = bad.next()?;
        Some(NonFinite { count: 1 + bad.count(), index, value: wide(first) })
    }
    let found = match data.dtype {
        DType::F32 => data.as_slice::<f32>().ok().map(|v| scan(v, f32::is_finite, f64::from)),
        DType::F64 => data.as_slice::<f64>().ok().map(|v| scan(v, f64::is_finite, |v| v)),
        DType::F16 => data.as_slice::<f16>().ok().map(|v| scan(v, f16::is_finite, f64::from)),
        DType::BF16 => data.as_slice::<bf16>().ok().map(|v| scan(v, bf16::is_finite, f64::from)),
        dtype if dtype.is_float() => None,
        _ => return None,
    };
    // Other float encodings (flex32), or bytes that cannot be viewed in place: element by element.
    found.unwrap_or_else(|| {
        let values: Vec<f64> = data.iter::<f64>().collect();
        scan(&values, f64::is_finite, |v| v)
    })
}

#[cfg(test)]
mod tests {
    use burn::backend::NdArray;
    use burn::nn::{Linear, LinearConfig};

    use super::*;

    struct SameNames;

    impl KeyMapping for SameNames {
        fn key_of(&self, param: &FloatParam) -> Option<String> {
            Some(param.name())
        }
    }

    fn layer() -> Linear<NdArray> {
        LinearConfig::new(3, 2).init(&Default::default())
    }

    fn snapshot(data: TensorData) -> TensorSnapshot {
        TensorSnapshot::from_data(data, Vec::new(), Vec::new(), ParamId::new())
    }

    fn checkpoint(weight: TensorData) -> Checkpoint {
        let bias = TensorData::new(vec![0.5f32; 2], [2]);
        Checkpoint::from_snapshots(
            "test.safetensors",
            [("weight".into(), snapshot(weight)), ("bias".into(), snapshot(bias))],
        )
    }

    #[test]
    fn weights_are_transposed_and_cast() {
        let weight = TensorData::new((0..6).map(f64::from).collect::<Vec<_>>(), [2, 3]);
        let (layer, report) = checkpoint(weight).load_into(layer(), &SameNames).unwrap();
        assert_eq!(report, LoadReport { loaded: vec!["weight".into(), "bias".into()], ..Default::default() });
        let values = layer.weight.val().into_data().to_vec::<f32>().unwrap();
        // [2, 3] in PyTorch's layout is [3, 2] in burn's: row i of burn's weight is column i.
        assert_eq!(values, [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    }

    #[test]
    fn an_integer_tensor_for_a_float_parameter_is_a_typed_error() {
        let weight = TensorData::new(vec![1i64; 6], [2, 3]);
        let err = checkpoint(weight).load_into(layer(), &SameNames).unwrap_err();
        assert!(
            matches!(&err, CheckpointError::DTypeMismatch { tensor, found: DType::I64, checkpoint }
                if tensor == "weight" && checkpoint == "test.safetensors"),
            "{err}"
        );
    }

    #[test]
    fn missing_unexpected_and_mis_shaped_tensors_are_errors() {
        let err = checkpoint(TensorData::new(vec![0f32; 6], [3, 2])).load_into(layer(), &SameNames).unwrap_err();
        assert!(
            matches!(&err, CheckpointError::ShapeMismatch { expected, found, .. } if expected == &[2, 3] && found == &[3, 2]),
            "{err}"
        );

        let only_bias =
            Checkpoint::from_snapshots("b", [("bias".into(), snapshot(TensorData::new(vec![0f32; 2], [2])))]);
        let err = only_bias.load_into(layer(), &SameNames).unwrap_err();
        assert!(
            matches!(&err, CheckpointError::MissingTensors { tensors, .. } if tensors == &[TensorInfo { name: "weight".into(), shape: vec![2, 3] }]),
            "{err}"
        );
        assert!(err.to_string().contains("weight [2, 3]"), "{err}");

        let extra = [("extra".to_string(), snapshot(TensorData::new(vec![0f32; 1], [1])))];
        let mut tensors: Vec<_> = checkpoint(TensorData::new(vec![0f32; 6], [2, 3]))
            .tensors()
            .iter()
            .map(|t| (t.key.clone(), t.snapshot.clone()))
            .collect();
        tensors.extend(extra);
        let err = Checkpoint::from_snapshots("c", tensors.clone()).load_into(layer(), &SameNames).unwrap_err();
        assert!(
            matches!(&err, CheckpointError::UnexpectedTensors { tensors, .. } if tensors[0].name == "extra"),
            "{err}"
        );

        struct Lenient;
        impl KeyMapping for Lenient {
            fn key_of(&self, param: &FloatParam) -> Option<String> {
                Some(param.name())
            }
            fn may_be_unused(&self, key: &str) -> bool {
                key == "extra"
            }
            fn may_be_missing(&self, key: &str) -> bool {
                key == "bias"
            }
        }
        let (_, report) = Checkpoint::from_snapshots("c", tensors).load_into(layer(), &Lenient).unwrap();
        assert_eq!(report.ignored, ["extra"]);
        let weight_only = [("weight".to_string(), snapshot(TensorData::new(vec![0f32; 6], [2, 3])))];
        let (_, report) = Checkpoint::from_snapshots("w", weight_only).load_into(layer(), &Lenient).unwrap();
        assert_eq!(report.initialised, ["bias"]);
    }

    #[test]
    fn a_corrupt_safetensors_file_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        std::fs::write(&path, b"\xff\xff\xff\xff\xff\xff\xff\x7fgarbage").unwrap();
        let err = Checkpoint::from_safetensors(std::slice::from_ref(&path)).err().unwrap();
        assert!(matches!(&err, CheckpointError::InvalidSafetensors { .. }), "{err}");
        assert!(matches!(Checkpoint::from_safetensors(&[]), Err(CheckpointError::NoFiles)));
    }

    #[test]
    fn integer_safetensors_tensors_are_rejected_before_burn_store_sees_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let weight: Vec<u8> = [1i64; 6].iter().flat_map(|v| v.to_le_bytes()).collect();
        let bias: Vec<u8> = [0f32; 2].iter().flat_map(|v| v.to_le_bytes()).collect();
        let views = vec![
            ("weight", safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![2, 3], &weight).unwrap()),
            ("bias", safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2], &bias).unwrap()),
        ];
        safetensors::serialize_to_file(views, None, &path).unwrap();
        let err = Checkpoint::from_safetensors(std::slice::from_ref(&path))
            .unwrap()
            .load_into(layer(), &SameNames)
            .unwrap_err();
        assert!(matches!(&err, CheckpointError::DTypeMismatch { tensor, .. } if tensor == "weight"), "{err}");
        assert!(err.to_string().contains("model.safetensors"), "{err}");
    }
}
