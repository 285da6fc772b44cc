//! Loading from and saving to Hugging Face checkpoint directories (`config.json` + `model.safetensors`).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use burn::module::{ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn_store::{BurnToPyTorchAdapter, KeyRemapper, ModuleSnapshot, SafetensorsStore};
use polarity_checkpoint::{Checkpoint, CheckpointError, KeyMapping, LoadReport};
use polarity_core::params::{EnumVariants, FloatParam, float_params};
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
    fn load_safetensors(self, files: &[PathBuf]) -> Result<(Self, LoadReport), EncoderError> {
        let (model, report) = load_into(self, files, &Self::naming())?;
        if !report.initialised.is_empty() {
            // Expected for a bare encoder given a new classification head: information, not a warning.
            tracing::info!(
                checkpoint = ?files,
                tensors = ?report.initialised,
                "{} tensors are not in the checkpoint and keep their fresh initialisation",
                report.initialised.len()
            );
        }
        Ok((model, report))
    }

    /// Writes a directory transformers loads unchanged: `config.json` (with `architectures`,
    /// `model_type` and the label maps), `model.safetensors` with transformers' names and layouts,
    /// and a copy of each of `tokenizer_files` (for example `tokenizer.json`, `vocab.txt`).
    fn save_pretrained(&self, dir: &Path, tokenizer_files: &[PathBuf]) -> Result<(), EncoderError> {
        let save_error = |path: &Path, reason: String| CheckpointError::Save { path: path.to_path_buf(), reason };
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
            let transposed = is_transposed(&param);
            let mut hf_shape = param.shape.clone();
            if transposed {
                hf_shape.reverse();
            }
            ExpectedParameter { path: param.name(), hf_name: hf_name(&param, naming), hf_shape, transposed }
        })
        .collect()
}

/// Whether our layout is the transpose of transformers' (`Linear` weights).
fn is_transposed(param: &FloatParam) -> bool {
    param.module_type() == "Struct:Linear" && param.path.last().is_some_and(|name| name == "weight")
}

/// transformers' name of a parameter (`bert.encoder.layer.0.attention.self.query.weight`).
fn hf_name(param: &FloatParam, naming: &ParameterNaming) -> String {
    let Some((name, segments)) = param.path.split_last() else { return String::new() };
    // burn's LayerNorm names its parameters like the original paper; PyTorch uses weight/bias.
    let hf_param = match (param.module_type(), name.as_str()) {
        ("Struct:LayerNorm", "gamma") => "weight",
        ("Struct:LayerNorm", "beta") => "bias",
        (_, name) => name,
    };
    let mut hf_segments: Vec<&str> = segments.iter().map(|s| hf_segment(naming, s)).collect();
    hf_segments.push(hf_param);
    hf_segments.join(".")
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

/// How an encoder's parameters are spelled in transformers' checkpoints, and what [`HfModel`]'s
/// loading tolerates.
struct EncoderKeys<'a> {
    naming: &'a ParameterNaming,
    /// The first segments of the model's own parameter names: an unknown tensor under one of them
    /// (a 13th layer) means the config and the weights disagree.
    own_modules: HashSet<String>,
}

impl KeyMapping for EncoderKeys<'_> {
    fn key_of(&self, param: &FloatParam) -> Option<String> {
        Some(hf_name(param, self.naming))
    }

    fn normalise<'a>(&self, key: &'a str) -> Cow<'a, str> {
        Cow::Owned(normalise_key(key, self.naming))
    }

    fn may_be_missing(&self, key: &str) -> bool {
        self.naming
            .optional_modules
            .iter()
            .any(|module| key.strip_prefix(module).is_some_and(|rest| rest.starts_with('.')))
    }

    fn may_be_unused(&self, key: &str) -> bool {
        is_buffer(key) || !key.split('.').next().is_some_and(|first| self.own_modules.contains(first))
    }
}

fn load_into<B: Backend, M: Module<B>>(
    model: M,
    files: &[PathBuf],
    naming: &ParameterNaming,
) -> Result<(M, LoadReport), EncoderError> {
    let own_modules = expected_parameters(&model, naming)
        .into_iter()
        .filter_map(|p| p.hf_name.split('.').next().map(str::to_string))
        .collect();
    let keys = EncoderKeys { naming, own_modules };
    Ok(Checkpoint::from_safetensors(files)?.load_into(model, &keys)?)
}

fn save_safetensors<B: Backend, M: Module<B>>(
    model: &M,
    path: &Path,
    naming: &ParameterNaming,
) -> Result<(), EncoderError> {
    let save_error = |reason: String| CheckpointError::Save { path: path.to_path_buf(), reason };
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
    Ok(model.save_into(&mut store).map_err(|e| save_error(e.to_string()))?)
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
