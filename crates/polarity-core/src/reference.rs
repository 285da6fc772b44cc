//! Reading reference fixtures (PyTorch + transformers outputs) and comparing tensors against them.
//!
//! A fixture is a directory with a `meta.json` (its `kind` says what was computed) and a
//! `reference.safetensors` with the inputs and expected outputs (kinds whose references fit in
//! `meta.json`, such as token ids, need no safetensors: [`Fixture::open_meta`]). Model crates run their model on the
//! inputs and report one [`TensorCheck`] per compared tensor; `examples/verify_reference.rs` prints them.
//!
//! A fixture directory is input like any other: `meta.json` and `reference.safetensors` are opened without
//! blocking (a FIFO or a directory in their place is an error, not a hang), an `F32` tensor with a NaN or an
//! infinity is refused when the fixture is opened (naming the tensor and the element), and the typed accessors
//! ([`Fixture::meta_str`], [`Fixture::meta_usize`], [`Fixture::i64_in`], [`Fixture::token_ids`]) check a field's
//! type or a tensor's values before a model sees them (token ids against the embedding table). Every error is a
//! [`CoreError::Fixture`] naming the directory and the field or tensor.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use polarity_hub::files;
use safetensors::{Dtype, SafeTensors};
use serde::Serialize;

use crate::CoreError;

/// Copies a single-file safetensors checkpoint into `dir` as transformers writes a sharded one:
/// `shards` files `model-0000i-of-0000n.safetensors` (tensors split in name order) and a
/// `model.safetensors.index.json` mapping every tensor to its shard. For testing loaders on the layout
/// large checkpoints (Llama-3-8B) use, with the small fixture models.
pub fn write_sharded_copy(file: &Path, dir: &Path, shards: usize) -> Result<Vec<PathBuf>, CoreError> {
    let failed = |what: String| CoreError::Fixture { dir: dir.to_path_buf(), what };
    let bytes = files::read_regular(file).map_err(|e| failed(format!("reading {}: {e}", file.display())))?;
    let checkpoint = SafeTensors::deserialize(&bytes).map_err(|e| failed(format!("{}: {e}", file.display())))?;
    let mut names = checkpoint.names();
    names.sort_unstable();
    let shards = shards.clamp(1, names.len().max(1));
    let mut weight_map = serde_json::Map::new();
    let mut paths = Vec::with_capacity(shards);
    for (index, chunk) in names.chunks(names.len().div_ceil(shards).max(1)).enumerate() {
        let shard = format!("model-{:05}-of-{shards:05}.safetensors", index + 1);
        let views =
            chunk.iter().map(|name| checkpoint.tensor(name).map(|view| (*name, view))).collect::<Result<Vec<_>, _>>();
        let path = dir.join(&shard);
        views
            .and_then(|views| safetensors::serialize_to_file(views, None, &path))
            .map_err(|e| failed(format!("writing {}: {e}", path.display())))?;
        for name in chunk {
            weight_map.insert(name.to_string(), shard.clone().into());
        }
        paths.push(path);
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    let index_path = dir.join("model.safetensors.index.json");
    std::fs::write(&index_path, index.to_string())
        .map_err(|e| failed(format!("writing {}: {e}", index_path.display())))?;
    Ok(paths)
}

/// One reference tensor, converted to a flat vector.
#[derive(Clone, Debug, PartialEq)]
pub enum ReferenceData {
    /// `F32` tensors.
    F32(Vec<f32>),
    /// `I64` tensors (token ids, masks, labels).
    I64(Vec<i64>),
}

/// A tensor of a fixture: its shape and values.
#[derive(Clone, Debug, PartialEq)]
pub struct ReferenceTensor {
    /// The shape, outermost dimension first.
    pub shape: Vec<usize>,
    /// The values in row-major order.
    pub data: ReferenceData,
}

/// Writes `tensors` into a safetensors file at `path` in the layout fixtures use (PyTorch's `pt` format
/// tag), for the checks that run the other way: polarity's outputs compared by a Python script.
pub fn write_tensors(path: &Path, tensors: &[(&str, &ReferenceTensor)]) -> Result<(), CoreError> {
    let failed = |what: String| CoreError::Fixture { dir: path.to_path_buf(), what };
    let bytes: Vec<(Dtype, Vec<u8>)> = tensors
        .iter()
        .map(|(_, tensor)| match &tensor.data {
            ReferenceData::F32(values) => (Dtype::F32, values.iter().flat_map(|v| v.to_le_bytes()).collect()),
            ReferenceData::I64(values) => (Dtype::I64, values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        })
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, tensor), (dtype, bytes))| {
            safetensors::tensor::TensorView::new(*dtype, tensor.shape.clone(), bytes)
                .map(|view| (name.to_string(), view))
                .map_err(|e| failed(format!("tensor {name}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(metadata), path).map_err(|e| failed(format!("writing: {e}")))
}

/// A fixture directory: `meta.json` and `reference.safetensors`.
#[derive(Clone, Debug)]
pub struct Fixture {
    /// The fixture directory.
    pub dir: PathBuf,
    /// The parsed `meta.json`.
    pub meta: serde_json::Value,
    tensors: HashMap<String, ReferenceTensor>,
}

impl Fixture {
    /// Reads `dir/meta.json` and `dir/reference.safetensors`.
    ///
    /// Both must be regular files (read without blocking); `F32` tensors must hold finite values and only `F32`
    /// and `I64` tensors are accepted.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, CoreError> {
        let Self { dir, meta, .. } = Self::open_meta(dir)?;
        let bad = |what: String| CoreError::Fixture { dir: dir.clone(), what };
        let tensors_path = dir.join("reference.safetensors");
        let bytes =
            files::read_regular(&tensors_path).map_err(|e| bad(format!("cannot read reference.safetensors: {e}")))?;
        let file = SafeTensors::deserialize(&bytes)
            .map_err(|e| bad(format!("reference.safetensors is not valid safetensors: {e}")))?;
        let mut tensors = HashMap::new();
        for (name, view) in file.tensors() {
            let raw = view.data();
            let data = match view.dtype() {
                Dtype::F32 => {
                    let values: Vec<f32> =
                        raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
                    if let Some((index, value)) = values.iter().enumerate().find(|(_, value)| !value.is_finite()) {
                        return Err(bad(format!(
                            "reference.safetensors tensor {name:?} has the non-finite value {value} at element {index}"
                        )));
                    }
                    ReferenceData::F32(values)
                }
                Dtype::I64 => ReferenceData::I64(
                    raw.chunks_exact(8)
                        .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
                        .collect(),
                ),
                other => return Err(bad(format!("tensor {name:?} has unsupported dtype {other:?}"))),
            };
            tensors.insert(name, ReferenceTensor { shape: view.shape().to_vec(), data });
        }
        Ok(Self { dir, meta, tensors })
    }

    /// Reads only `dir/meta.json`: enough to dispatch on [`kind`](Self::kind), and all there is to
    /// fixtures whose references live in `meta.json` itself (token ids). The fixture has no tensors.
    ///
    /// `meta.json` must be a regular file (read without blocking) holding a JSON object.
    pub fn open_meta(dir: impl AsRef<Path>) -> Result<Self, CoreError> {
        let dir = dir.as_ref().to_path_buf();
        let bad = |what: String| CoreError::Fixture { dir: dir.clone(), what };
        let meta_path = dir.join("meta.json");
        let meta_text =
            files::read_regular_to_string(&meta_path).map_err(|e| bad(format!("cannot read meta.json: {e}")))?;
        let meta: serde_json::Value =
            serde_json::from_str(&meta_text).map_err(|e| bad(format!("meta.json is not JSON: {e}")))?;
        if !meta.is_object() {
            return Err(bad(format!("meta.json is {}, not a JSON object", json_kind(&meta))));
        }
        Ok(Self { dir, meta, tensors: HashMap::new() })
    }

    fn error(&self, what: String) -> CoreError {
        CoreError::Fixture { dir: self.dir.clone(), what }
    }

    /// The `kind` field of `meta.json`.
    pub fn kind(&self) -> Result<&str, CoreError> {
        self.meta_str("kind")
    }

    /// The field `key` of `meta.json`, or an error naming it.
    pub fn meta_field(&self, key: &str) -> Result<&serde_json::Value, CoreError> {
        self.meta.get(key).ok_or_else(|| self.error(format!("meta.json has no {key:?} field")))
    }

    /// The string field `key` of `meta.json`; a missing field or another type is an error naming it.
    pub fn meta_str(&self, key: &str) -> Result<&str, CoreError> {
        let value = self.meta_field(key)?;
        value.as_str().ok_or_else(|| self.wrong_type(key, value, "a string"))
    }

    /// The integer field `key` of `meta.json`, at most `max`; a missing field, another type, a negative or
    /// fractional number or one above `max` is an error naming the field and the value.
    pub fn meta_usize(&self, key: &str, max: usize) -> Result<usize, CoreError> {
        let value = self.meta_field(key)?;
        let number = value.as_u64().ok_or_else(|| self.wrong_type(key, value, "a non-negative integer"))?;
        usize::try_from(number)
            .ok()
            .filter(|number| *number <= max)
            .ok_or_else(|| self.error(format!("meta.json field {key:?} is {number}, above the limit of {max}")))
    }

    /// The number field `key` of `meta.json`, which must be finite.
    pub fn meta_f64(&self, key: &str) -> Result<f64, CoreError> {
        let value = self.meta_field(key)?;
        value.as_f64().filter(|number| number.is_finite()).ok_or_else(|| self.wrong_type(key, value, "a finite number"))
    }

    fn wrong_type(&self, key: &str, value: &serde_json::Value, expected: &str) -> CoreError {
        let shown: String = value.to_string().chars().take(40).collect();
        self.error(format!("meta.json field {key:?} is {} {shown}, expected {expected}", json_kind(value)))
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// The tensor `name`, or an error naming it.
    pub fn tensor(&self, name: &str) -> Result<&ReferenceTensor, CoreError> {
        self.tensors.get(name).ok_or_else(|| CoreError::Fixture {
            dir: self.dir.clone(),
            what: format!("reference.safetensors has no tensor {name:?}"),
        })
    }

    /// An `F32` tensor's shape and values.
    pub fn f32(&self, name: &str) -> Result<(&[usize], &[f32]), CoreError> {
        match self.tensor(name)? {
            ReferenceTensor { shape, data: ReferenceData::F32(values) } => Ok((shape, values)),
            _ => Err(CoreError::Fixture { dir: self.dir.clone(), what: format!("tensor {name:?} is not F32") }),
        }
    }

    /// An `I64` tensor's shape and values.
    pub fn i64(&self, name: &str) -> Result<(&[usize], &[i64]), CoreError> {
        match self.tensor(name)? {
            ReferenceTensor { shape, data: ReferenceData::I64(values) } => Ok((shape, values)),
            _ => Err(CoreError::Fixture { dir: self.dir.clone(), what: format!("tensor {name:?} is not I64") }),
        }
    }

    /// An `I64` tensor whose every value lies in `allowed` or is one of `also` (say `-100`, the ignored label);
    /// the first value outside is an error naming the tensor, the element and the range.
    pub fn i64_in(&self, name: &str, allowed: Range<i64>, also: &[i64]) -> Result<(&[usize], &[i64]), CoreError> {
        let (shape, values) = self.i64(name)?;
        let outside = values.iter().enumerate().find(|(_, value)| !allowed.contains(value) && !also.contains(value));
        if let Some((index, value)) = outside {
            let also = if also.is_empty() { String::new() } else { format!(" or {also:?}") };
            return Err(self.error(format!(
                "tensor {name:?} has {value} at element {index}, outside [{}, {}){also}",
                allowed.start, allowed.end
            )));
        }
        Ok((shape, values))
    }

    /// Token ids for a model with a vocabulary of `vocab_size`: an `I64` tensor with every value in
    /// `[0, vocab_size)`, so that an embedding lookup never reads past its table.
    pub fn token_ids(&self, name: &str, vocab_size: usize) -> Result<(&[usize], &[i64]), CoreError> {
        self.i64_in(name, 0..i64::try_from(vocab_size).unwrap_or(i64::MAX), &[])
    }
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// How a tolerance is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tolerance {
    /// `max |ours - reference| <= tol`.
    Absolute,
    /// `max |ours - reference| <= tol * max(max |reference|, tiny)`: for gradients, whose scale varies.
    Relative,
}

/// The outcome of comparing one tensor with its reference.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TensorCheck {
    /// What was compared (a tensor name, possibly with a qualifier).
    pub name: String,
    /// The largest absolute difference (infinite on a shape mismatch or a non-finite value).
    pub max_abs_err: f64,
    /// The tolerance it is held to.
    pub tolerance: f64,
    /// Absolute or relative.
    pub mode: Tolerance,
    /// Whether it passed.
    pub ok: bool,
}

impl TensorCheck {
    /// Compares `ours` with `reference` element-wise.
    ///
    /// ```
    /// use polarity_core::reference::{TensorCheck, Tolerance};
    /// let check = TensorCheck::compare("logits", &[1.0, 2.0], &[1.0, 2.00001], 1e-4, Tolerance::Absolute);
    /// assert!(check.ok);
    /// let check = TensorCheck::compare("logits", &[1.0], &[1.0, 2.0], 1e-4, Tolerance::Absolute);
    /// assert!(!check.ok);
    /// ```
    pub fn compare(name: impl Into<String>, ours: &[f32], reference: &[f32], tolerance: f64, mode: Tolerance) -> Self {
        let max_abs_err = if ours.len() != reference.len() {
            f64::INFINITY
        } else {
            ours.iter()
                .zip(reference)
                .map(|(a, b)| {
                    let d = (*a as f64 - *b as f64).abs();
                    if d.is_nan() { f64::INFINITY } else { d }
                })
                .fold(0.0, f64::max)
        };
        let bound = match mode {
            Tolerance::Absolute => tolerance,
            Tolerance::Relative => {
                let scale = reference.iter().map(|v| (*v as f64).abs()).fold(0.0, f64::max);
                tolerance * scale.max(1e-12)
            }
        };
        Self { name: name.into(), max_abs_err, tolerance, mode, ok: max_abs_err <= bound }
    }

    /// An exact comparison of integer sequences (token ids, generated ids); the error is the count of
    /// differing positions (a length mismatch counts every extra position).
    pub fn exact(name: impl Into<String>, ours: &[i64], reference: &[i64]) -> Self {
        let differing =
            ours.iter().zip(reference).filter(|(a, b)| a != b).count() + ours.len().abs_diff(reference.len());
        Self {
            name: name.into(),
            max_abs_err: differing as f64,
            tolerance: 0.0,
            mode: Tolerance::Absolute,
            ok: differing == 0,
        }
    }
}

impl std::fmt::Display for TensorCheck {
    /// `name max_abs_err tolerance ok|FAIL`, the line `verify_reference` prints.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tolerance = match self.mode {
            Tolerance::Absolute => format!("{:.0e}", self.tolerance),
            Tolerance::Relative => format!("{:.0e}(rel)", self.tolerance),
        };
        write!(f, "{} {:.3e} {} {}", self.name, self.max_abs_err, tolerance, if self.ok { "ok" } else { "FAIL" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_tolerance_scales_with_the_reference() {
        let reference = [100.0, -200.0];
        assert!(TensorCheck::compare("g", &[100.01, -200.0], &reference, 1e-4, Tolerance::Relative).ok);
        assert!(!TensorCheck::compare("g", &[100.1, -200.0], &reference, 1e-4, Tolerance::Relative).ok);
        assert!(!TensorCheck::compare("g", &[f32::NAN, -200.0], &reference, 1e-4, Tolerance::Relative).ok);
    }

    #[test]
    fn exact_counts_differences_and_length() {
        assert!(TensorCheck::exact("ids", &[1, 2, 3], &[1, 2, 3]).ok);
        let check = TensorCheck::exact("ids", &[1, 9, 3, 4], &[1, 2, 3]);
        assert_eq!(check.max_abs_err, 2.0);
        assert!(check.to_string().ends_with("FAIL"));
    }

    #[test]
    fn fixture_errors_name_the_problem() {
        let err = Fixture::open("/no/such/fixture").unwrap_err();
        assert!(err.to_string().contains("meta.json"), "{err}");
    }

    /// A scratch copy of the tiny BERT fixture's `meta.json` and `reference.safetensors`.
    fn scratch_copy(name: &str) -> PathBuf {
        let source = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/fixtures/tiny-bert-cls"));
        let dir = std::env::temp_dir().join(format!("polarity-fixture-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for file in ["meta.json", "reference.safetensors"] {
            std::fs::copy(source.join(file), dir.join(file)).unwrap();
        }
        dir
    }

    #[test]
    fn fifos_in_place_of_fixture_files_are_errors_not_hangs() {
        use polarity_testkit::{expect_error, make_fifo, within};
        use std::time::Duration;
        for file in ["meta.json", "reference.safetensors"] {
            let dir = scratch_copy(&format!("fifo-{file}"));
            std::fs::remove_file(dir.join(file)).unwrap();
            make_fifo(&dir.join(file)).unwrap();
            let opened = dir.clone();
            let result = within(file, Duration::from_secs(20), move || Fixture::open(&opened).map(|_| ()));
            let message = expect_error(file, result, &[file, "FIFO"]);
            assert!(message.contains(&dir.display().to_string()), "{message}");
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn malformed_meta_fields_are_named() {
        use polarity_testkit::expect_error;
        let dir = scratch_copy("meta");
        let write = |text: &str| std::fs::write(dir.join("meta.json"), text).unwrap();
        write("[1, 2]");
        expect_error("an array", Fixture::open_meta(&dir), &["meta.json is an array"]);
        write("{\"kind\": 5, \"max_length\": -3, \"big\": 1e30, \"eps\": \"x\", \"n\": 99}");
        let fixture = Fixture::open_meta(&dir).unwrap();
        expect_error("kind", fixture.kind(), &["field \"kind\"", "a number 5", "a string"]);
        expect_error("negative", fixture.meta_usize("max_length", 512), &["\"max_length\"", "-3"]);
        expect_error("huge", fixture.meta_usize("big", 512), &["\"big\""]);
        expect_error("above", fixture.meta_usize("n", 64), &["\"n\" is 99", "64"]);
        assert_eq!(fixture.meta_usize("n", 99).unwrap(), 99);
        expect_error("eps", fixture.meta_f64("eps"), &["\"eps\"", "a finite number"]);
        expect_error("missing", fixture.meta_str("model_dir"), &["no \"model_dir\" field"]);
        write("{\"kind\": ");
        expect_error("truncated", Fixture::open_meta(&dir), &["meta.json is not JSON"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn out_of_range_fixture_values_are_named() {
        use polarity_testkit::expect_error;
        let dir = scratch_copy("values");
        let fixture = Fixture::open(&dir).unwrap();
        // The real ids fit the tiny BERT's vocabulary of 1000, not one of 10.
        assert!(fixture.token_ids("input_ids", 1000).is_ok());
        expect_error("small vocabulary", fixture.token_ids("input_ids", 10), &["\"input_ids\"", "outside [0, 10)"]);
        expect_error("mask", fixture.i64_in("labels", 0..1, &[]), &["\"labels\"", "outside [0, 1)"]);
        // Negative ids and a NaN reference, written into the fixture's tensors.
        let (shape, ids) = fixture.i64("input_ids").unwrap();
        let mut ids = ids.to_vec();
        ids[7] = -5;
        let (logits_shape, logits) = fixture.f32("logits").unwrap();
        let mut logits = logits.to_vec();
        logits[3] = f32::NAN;
        let tensor = |shape: &[usize], data| ReferenceTensor { shape: shape.to_vec(), data };
        let ids = tensor(shape, ReferenceData::I64(ids));
        let nan = tensor(logits_shape, ReferenceData::F32(logits));
        write_tensors(&dir.join("reference.safetensors"), &[("input_ids", &ids)]).unwrap();
        let fixture = Fixture::open(&dir).unwrap();
        expect_error("negative id", fixture.token_ids("input_ids", 1000), &["-5 at element 7"]);
        write_tensors(&dir.join("reference.safetensors"), &[("input_ids", &ids), ("logits", &nan)]).unwrap();
        let message = expect_error("NaN", Fixture::open(&dir), &["\"logits\"", "NaN", "element 3"]);
        assert!(message.contains(&dir.display().to_string()), "{message}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reads_a_shared_fixture() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/fixtures/tiny-bert-cls");
        let fixture = Fixture::open(dir).unwrap();
        assert_eq!(fixture.kind().unwrap(), "encoder-sequence-classification");
        let (shape, ids) = fixture.i64("input_ids").unwrap();
        assert_eq!(shape, &[4, 20]);
        assert_eq!(ids.len(), 80);
        assert_eq!(fixture.f32("logits").unwrap().0, &[4, 2]);
        assert!(fixture.f32("input_ids").is_err());
        assert!(fixture.tensor("nope").unwrap_err().to_string().contains("nope"));
    }
}
