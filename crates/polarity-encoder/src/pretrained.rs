//! Loading from and saving to Hugging Face checkpoint directories (`config.json` + `model.safetensors`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use burn::module::{ModuleVisitor, Param, ParamId};
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::backend::AutodiffBackend;
use burn_store::{
    BurnToPyTorchAdapter, KeyRemapper, ModuleAdapter, ModuleSnapshot, ModuleStore, PyTorchToBurnAdapter,
    SafetensorsStore, SafetensorsStoreError, TensorSnapshot,
};
use polarity_core::params::{EnumVariants, float_params};
use polarity_hub::RepoSource;
use serde_json::Value;

use crate::EncoderError;
use crate::hf_config::{HfConfig, label_maps};

/// The weights file of a checkpoint directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The config file of a checkpoint directory.
pub const CONFIG_FILE: &str = "config.json";

/// How one architecture's module paths differ from transformers' parameter names.
#[derive(Clone, Copy, Debug)]
pub struct ParameterNaming {
    /// Path segments spelled differently here: `(ours, transformers')`.
    pub(crate) renamed_segments: &'static [(&'static str, &'static str)],
    /// The attribute under which transformers' task models keep the backbone (`bert`, `distilbert`).
    pub(crate) backbone_prefix: &'static str,
    /// The backbone's top-level modules (`embeddings`, `encoder`, ...): checkpoint keys starting with
    /// one of these come from a bare backbone.
    pub(crate) backbone_modules: &'static [&'static str],
    /// Whether this model keeps its backbone under `backbone_prefix` (a task model) or is the backbone.
    pub(crate) nested: bool,
    /// Modules (transformers' names, from this model's root) that a checkpoint may lack; they keep
    /// their fresh initialisation, as in transformers.
    pub(crate) optional_modules: &'static [&'static str],
}

/// What loading a checkpoint did, in transformers' tensor names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Tensors loaded from the checkpoint.
    pub loaded: Vec<String>,
    /// Parameters the checkpoint lacks, left freshly initialised (a new classification head).
    pub initialised: Vec<String>,
    /// Checkpoint tensors the model does not use: buffers such as `embeddings.position_ids`, and
    /// heads of other tasks such as `cls.predictions.*`.
    pub ignored: Vec<String>,
}

/// A model that reads and writes Hugging Face checkpoints.
///
/// Our module paths mirror transformers' parameter names, except where Rust or burn need a different
/// spelling: `self` is a keyword (`attention.self` is `attention.self_attention` here), module names
/// are snake case (`LayerNorm` is `layer_norm`), burn's `LayerNorm` calls its parameters
/// `gamma`/`beta`, and burn's `Linear` stores its weight as `[in, out]` where PyTorch has `[out, in]`.
/// [`ParameterNaming`] lists those differences per architecture; everything else is identity.
///
/// Loading is strict where a silent mismatch would corrupt the model: every tensor the model needs
/// must be present with the right shape, and a checkpoint tensor inside the model's own modules that
/// the model does not have (say, a 13th layer) is an error. Two kinds of tensors are tolerated:
/// buffers (`embeddings.position_ids`) and other tasks' heads (`cls.predictions.*`) are ignored, and a
/// missing task head (`classifier`, a bare encoder's `pooler`) keeps transformers' fresh
/// initialisation. [`LoadReport`] says which was which.
///
/// Implemented by [`BertModel`](crate::bert::BertModel),
/// [`BertForSequenceClassification`](crate::bert::BertForSequenceClassification),
/// [`DistilBertModel`](crate::distilbert::DistilBertModel) and
/// [`DistilBertForSequenceClassification`](crate::distilbert::DistilBertForSequenceClassification).
pub trait HfModel<B: Backend>: Module<B> + Sized {
    /// The architecture's config.
    type Config: HfConfig;

    /// transformers' class name, written to `architectures` in `config.json`.
    const ARCHITECTURE: &'static str;

    /// How this model's parameter paths map to transformers' names.
    fn naming() -> ParameterNaming;

    /// A freshly initialised model (weights `N(0, initializer_range)`, biases zero, as transformers).
    fn from_config(config: &Self::Config, device: &B::Device) -> Self;

    /// The config the model was built from.
    fn config(&self) -> &Self::Config;

    /// The number of output classes written to `config.json` (`None` for bare encoders).
    fn num_labels(&self) -> Option<usize> {
        None
    }

    /// Loads `config.json` and `model.safetensors` (or the shards `model.safetensors.index.json`
    /// lists) from a hub id (cache first) or a local directory.
    fn from_pretrained(source: &RepoSource, device: &B::Device) -> Result<Self, EncoderError> {
        Ok(Self::from_pretrained_with_report(source, device)?.0)
    }

    /// [`from_pretrained`](HfModel::from_pretrained), also saying which tensors were loaded, freshly
    /// initialised or ignored.
    fn from_pretrained_with_report(
        source: &RepoSource,
        device: &B::Device,
    ) -> Result<(Self, LoadReport), EncoderError> {
        let config = Self::Config::from_hf_file(&source.file(CONFIG_FILE)?)?;
        Self::from_config(&config, device).load_safetensors(&source.safetensors_files()?)
    }

    /// Replaces the model's parameters with those of a transformers `model.safetensors`, or of all
    /// the shards of a sharded checkpoint (prefixed or bare names), checked as the
    /// [trait docs](HfModel) describe.
    fn load_safetensors(mut self, files: &[PathBuf]) -> Result<(Self, LoadReport), EncoderError> {
        let report = load_into(&mut self, files, &Self::naming())?;
        if !report.initialised.is_empty() {
            tracing::warn!(
                checkpoint = ?files,
                tensors = ?report.initialised,
                "{} tensors are not in the checkpoint and keep their fresh initialisation",
                report.initialised.len()
            );
        }
        Ok((self, report))
    }

    /// Writes a directory transformers loads unchanged: `config.json` (with `architectures`,
    /// `model_type` and the label maps), `model.safetensors` with transformers' names and layouts,
    /// and a copy of each of `tokenizer_files` (for example `tokenizer.json`, `vocab.txt`).
    fn save_pretrained(&self, dir: &Path, tokenizer_files: &[PathBuf]) -> Result<(), EncoderError> {
        let save_error = |path: &Path, reason: String| EncoderError::Save { path: path.to_path_buf(), reason };
        std::fs::create_dir_all(dir).map_err(|e| save_error(dir, e.to_string()))?;

        let mut config = self.config().to_hf();
        config.insert("architectures".into(), Value::from(vec![Self::ARCHITECTURE]));
        config.insert("model_type".into(), Value::from(<Self::Config as HfConfig>::MODEL_TYPE));
        if let Some(num_labels) = self.num_labels() {
            let (id2label, label2id) = label_maps(num_labels);
            config.insert("id2label".into(), Value::Object(id2label));
            config.insert("label2id".into(), Value::Object(label2id));
        }
        let config_path = dir.join(CONFIG_FILE);
        let text = serde_json::to_string_pretty(&Value::Object(config))
            .map_err(|e| save_error(&config_path, e.to_string()))?;
        std::fs::write(&config_path, text + "\n").map_err(|e| save_error(&config_path, e.to_string()))?;

        save_safetensors(self, &dir.join(WEIGHTS_FILE), &Self::naming())?;

        for file in tokenizer_files {
            let name = file.file_name().ok_or_else(|| save_error(file, "not a file name".into()))?;
            std::fs::copy(file, dir.join(name)).map_err(|e| save_error(file, format!("cannot copy: {e}")))?;
        }
        Ok(())
    }

    /// Every parameter's transformers name, and its shape in transformers' layout.
    fn hf_parameters(&self) -> Vec<(String, Vec<usize>)> {
        expected_parameters(self, &Self::naming()).into_iter().map(|p| (p.hf_name, p.hf_shape)).collect()
    }

    /// The gradient of every parameter that has one, by transformers name and in transformers'
    /// layout (so it compares directly with PyTorch's `param.grad`).
    fn hf_gradients(&self, grads: &B::Gradients) -> BTreeMap<String, TensorData>
    where
        B: AutodiffBackend,
    {
        let by_path = expected_parameters(self, &Self::naming()).into_iter().map(|p| (p.path.clone(), p)).collect();
        let mut collector = GradientCollector::<B> { grads, by_path, path: Vec::new(), found: BTreeMap::new() };
        self.visit(&mut collector);
        collector.found
    }
}

/// One parameter of a model, under both names.
struct ExpectedParameter {
    /// Our module path (`bert.encoder.layer.0.attention.self_attention.query.weight`).
    path: String,
    /// transformers' name (`bert.encoder.layer.0.attention.self.query.weight`).
    hf_name: String,
    /// The shape in transformers' layout.
    hf_shape: Vec<usize>,
    /// Whether our layout is the transpose of transformers' (`Linear` weights).
    transposed: bool,
}

fn expected_parameters<B: Backend, M: Module<B>>(model: &M, naming: &ParameterNaming) -> Vec<ExpectedParameter> {
    float_params::<B, M>(model, EnumVariants::Keep)
        .into_iter()
        .map(|param| {
            let path = param.name();
            let module_type = param.module_type().to_string();
            let shape = param.shape;
            let mut segments: Vec<&str> = path.split('.').collect();
            let param = segments.pop().unwrap_or_default();
            let transposed = module_type == "Struct:Linear" && param == "weight";
            // burn's LayerNorm names its parameters like the original paper; PyTorch uses weight/bias.
            let hf_param = match (module_type.as_str(), param) {
                ("Struct:LayerNorm", "gamma") => "weight",
                ("Struct:LayerNorm", "beta") => "bias",
                _ => param,
            };
            let mut hf_segments: Vec<&str> = segments.iter().map(|s| hf_segment(naming, s)).collect();
            hf_segments.push(hf_param);
            let hf_name = hf_segments.join(".");
            let mut hf_shape = shape;
            if transposed {
                hf_shape.reverse();
            }
            ExpectedParameter { path, hf_name, hf_shape, transposed }
        })
        .collect()
}

fn hf_segment<'a>(naming: &ParameterNaming, segment: &'a str) -> &'a str {
    naming.renamed_segments.iter().find(|(ours, _)| *ours == segment).map_or(segment, |(_, theirs)| theirs)
}

/// A checkpoint key in this model's namespace: legacy `LayerNorm.gamma`/`.beta` read as
/// `weight`/`bias` (as transformers does), and the backbone prefix added or removed.
fn normalise_key(key: &str, naming: &ParameterNaming) -> String {
    let mut segments: Vec<&str> = key.split('.').collect();
    if let [.., module, param] = segments.as_mut_slice()
        && (module.ends_with("LayerNorm") || module.ends_with("layer_norm"))
    {
        match *param {
            "gamma" => *param = "weight",
            "beta" => *param = "bias",
            _ => {}
        }
    }
    let first = segments.first().copied().unwrap_or_default();
    if naming.nested && naming.backbone_modules.contains(&first) {
        segments.insert(0, naming.backbone_prefix);
    } else if !naming.nested && first == naming.backbone_prefix && segments.len() > 1 {
        segments.remove(0);
    }
    segments.join(".")
}

/// Buffers transformers registers (and sometimes saves) that are not parameters.
fn is_buffer(name: &str) -> bool {
    name.ends_with("position_ids") || name.ends_with("token_type_ids")
}

fn load_into<B: Backend, M: Module<B>>(
    model: &mut M,
    files: &[PathBuf],
    naming: &ParameterNaming,
) -> Result<LoadReport, EncoderError> {
    // Errors about the checkpoint as a whole name its file, or the shards' folder.
    let checkpoint: PathBuf = match files {
        [] => return Err(EncoderError::InvalidInput("no safetensors file to load".into())),
        [file] => file.clone(),
        [first, ..] => first.parent().map_or_else(|| first.clone(), Path::to_path_buf),
    };
    let mut tensors: Vec<(String, TensorSnapshot, &Path)> = Vec::new();
    for path in files {
        let mut store = SafetensorsStore::from_file(path);
        let snapshots = store.get_all_snapshots().map_err(|e| match e {
            SafetensorsStoreError::Io(source) => EncoderError::Io { path: path.clone(), source },
            other => EncoderError::InvalidSafetensors { path: path.clone(), reason: other.to_string() },
        })?;
        tensors.extend(snapshots.iter().map(|(key, snapshot)| (key.clone(), snapshot.clone(), path.as_path())));
    }

    let expected = expected_parameters(model, naming);
    let by_hf_name: HashMap<&str, &ExpectedParameter> = expected.iter().map(|p| (p.hf_name.as_str(), p)).collect();
    let own_modules: HashSet<&str> = expected.iter().filter_map(|p| p.hf_name.split('.').next()).collect();

    let mut report = LoadReport::default();
    let mut snapshots = Vec::new();
    let mut loaded: HashSet<&str> = HashSet::new();
    let mut file_of: HashMap<&str, &Path> = HashMap::new();
    for (key, snapshot, path) in &tensors {
        let name = normalise_key(key, naming);
        let found = snapshot.shape.to_vec();
        match by_hf_name.get(name.as_str()) {
            Some(param) if found != param.hf_shape => {
                return Err(EncoderError::ShapeMismatch {
                    path: path.to_path_buf(),
                    name: key.clone(),
                    expected: param.hf_shape.clone(),
                    found,
                });
            }
            // A second key for the same parameter (`LayerNorm.gamma` beside `LayerNorm.weight`).
            Some(param) if loaded.contains(param.hf_name.as_str()) => {
                return Err(EncoderError::UnexpectedTensor {
                    path: path.to_path_buf(),
                    name: key.clone(),
                    shape: found,
                });
            }
            Some(param) => {
                loaded.insert(param.hf_name.as_str());
                file_of.insert(param.path.as_str(), path);
                report.loaded.push(param.hf_name.clone());
                // Re-key the lazy snapshot to our module path; the data is read only when applied.
                snapshots.push(TensorSnapshot::from_closure(
                    snapshot.clone_data_fn(),
                    snapshot.dtype,
                    snapshot.shape.clone(),
                    param.path.split('.').map(str::to_string).collect(),
                    Vec::new(),
                    ParamId::new(),
                ));
            }
            None if is_buffer(&name) => report.ignored.push(key.clone()),
            None if name.split('.').next().is_some_and(|first| own_modules.contains(first)) => {
                return Err(EncoderError::UnexpectedTensor {
                    path: path.to_path_buf(),
                    name: key.clone(),
                    shape: found,
                });
            }
            None => report.ignored.push(key.clone()),
        }
    }

    let is_optional =
        |hf_name: &str| naming.optional_modules.iter().any(|module| hf_name.starts_with(&format!("{module}.")));
    for param in &expected {
        if loaded.contains(param.hf_name.as_str()) {
            continue;
        }
        if !is_optional(&param.hf_name) {
            return Err(EncoderError::MissingTensor {
                path: checkpoint.clone(),
                name: param.hf_name.clone(),
                expected: param.hf_shape.clone(),
            });
        }
        report.initialised.push(param.hf_name.clone());
    }

    // burn-store transposes Linear weights back to [in, out] and casts to the model's float dtype.
    let target_dtype = <B::FloatElem as burn::tensor::Element>::dtype();
    let adapter = PyTorchToBurnAdapter.chain(CastFloats { target: target_dtype });
    let result = model.apply(snapshots, None, Some(Box::new(adapter)), false);
    let hf_name_of = |our_path: &str| {
        expected.iter().find(|p| p.path == our_path).map_or_else(|| our_path.to_string(), |p| p.hf_name.clone())
    };
    // The shard a parameter came from, for error messages.
    let file_holding =
        |our_path: &str| file_of.get(our_path).map_or_else(|| checkpoint.clone(), |path| path.to_path_buf());
    if let Some(error) = result.errors.first() {
        let our_path = match error {
            burn_store::ApplyError::ShapeMismatch { path, .. }
            | burn_store::ApplyError::DTypeMismatch { path, .. }
            | burn_store::ApplyError::AdapterError { path, .. }
            | burn_store::ApplyError::LoadError { path, .. } => path,
        };
        return Err(EncoderError::TensorLoad {
            path: file_holding(our_path),
            name: hf_name_of(our_path),
            reason: error.to_string(),
        });
    }
    // Every parameter the checks above accepted as present must have been applied.
    if let Some((our_path, _)) = result.missing.iter().find(|(p, _)| !is_optional(&hf_name_of(p))) {
        return Err(EncoderError::TensorLoad {
            path: file_holding(our_path),
            name: hf_name_of(our_path),
            reason: "matched in the checkpoint but not applied to the model".into(),
        });
    }
    Ok(report)
}

fn save_safetensors<B: Backend, M: Module<B>>(
    model: &M,
    path: &Path,
    naming: &ParameterNaming,
) -> Result<(), EncoderError> {
    let save_error = |reason: String| EncoderError::Save { path: path.to_path_buf(), reason };
    // Our segment names are identifiers, so they need no regex escaping.
    let remapper = naming.renamed_segments.iter().try_fold(KeyRemapper::new(), |remapper, (ours, theirs)| {
        remapper.add_pattern(format!(r"(^|\.){ours}(\.|$)"), format!("${{1}}{theirs}${{2}}"))
    });
    let remapper = remapper.map_err(|e| save_error(e.to_string()))?;
    let mut store = SafetensorsStore::from_file(path)
        .with_to_adapter(BurnToPyTorchAdapter)
        .remap(remapper)
        // transformers refuses safetensors files whose metadata `format` is not "pt".
        .metadata("format", "pt")
        .overwrite(true);
    model.save_into(&mut store).map_err(|e| save_error(e.to_string()))
}

/// Casts floating-point checkpoint tensors (F16, BF16, F64) to the model's float dtype.
#[derive(Clone)]
struct CastFloats {
    target: DType,
}

impl ModuleAdapter for CastFloats {
    fn adapt(&self, snapshot: &TensorSnapshot) -> TensorSnapshot {
        if !snapshot.dtype.is_float() || snapshot.dtype == self.target {
            return snapshot.clone();
        }
        let data = snapshot.clone_data_fn();
        let target = self.target;
        TensorSnapshot::from_closure(
            std::rc::Rc::new(move || Ok(data()?.convert_dtype(target))),
            target,
            snapshot.shape.clone(),
            snapshot.path_stack.clone().unwrap_or_default(),
            snapshot.container_stack.clone().unwrap_or_default(),
            snapshot.tensor_id.unwrap_or_default(),
        )
    }

    fn clone_box(&self) -> Box<dyn ModuleAdapter> {
        Box::new(self.clone())
    }
}

/// Walks a model and reads each parameter's gradient, renamed and laid out as in transformers.
struct GradientCollector<'a, B: AutodiffBackend> {
    grads: &'a B::Gradients,
    by_path: HashMap<String, ExpectedParameter>,
    path: Vec<String>,
    found: BTreeMap<String, TensorData>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for GradientCollector<'_, B> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let Some(expected) = self.by_path.get(&self.path.join(".")) else { return };
        if let Some(grad) = param.val().grad(self.grads) {
            let grad = if expected.transposed { grad.transpose() } else { grad };
            self.found.insert(expected.hf_name.clone(), grad.into_data());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NESTED: ParameterNaming = ParameterNaming {
        renamed_segments: &[("self_attention", "self"), ("layer_norm", "LayerNorm")],
        backbone_prefix: "bert",
        backbone_modules: &["embeddings", "encoder", "pooler"],
        nested: true,
        optional_modules: &["classifier"],
    };

    #[test]
    fn keys_are_normalised_into_the_models_namespace() {
        assert_eq!(normalise_key("embeddings.LayerNorm.gamma", &NESTED), "bert.embeddings.LayerNorm.weight");
        assert_eq!(
            normalise_key("bert.encoder.layer.0.output.LayerNorm.beta", &NESTED),
            "bert.encoder.layer.0.output.LayerNorm.bias"
        );
        assert_eq!(normalise_key("classifier.weight", &NESTED), "classifier.weight");
        assert_eq!(normalise_key("cls.predictions.bias", &NESTED), "cls.predictions.bias");
        let bare = ParameterNaming { nested: false, ..NESTED };
        assert_eq!(normalise_key("bert.pooler.dense.weight", &bare), "pooler.dense.weight");
        assert_eq!(normalise_key("pooler.dense.weight", &bare), "pooler.dense.weight");
    }

    #[test]
    fn segments_are_renamed_whole() {
        assert_eq!(hf_segment(&NESTED, "self_attention"), "self");
        assert_eq!(hf_segment(&NESTED, "sa_layer_norm"), "sa_layer_norm");
    }
}
