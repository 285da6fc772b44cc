//! Loading checkpoints into a [`Llama`]: Hugging Face safetensors (one file or sharded) and GGUF.
//!
//! Both paths produce burn-store [`TensorSnapshot`]s named by module path and in PyTorch layout; one
//! function checks them against the model's parameters (missing tensors and shape mismatches are typed
//! errors naming the tensor) and applies them with burn-store's [`PyTorchToBurnAdapter`], which
//! transposes linear weights to burn's `[in, out]`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use burn::module::{Module, ParamId};
use burn::prelude::*;
use burn::tensor::DType;
use burn_store::{
    ApplyError, KeyRemapper, ModuleSnapshot, ModuleStore, PyTorchToBurnAdapter, SafetensorsStore, TensorSnapshot,
};
use polarity_core::params::{EnumVariants, float_params};
use polarity_hub::RepoSource;

use crate::gguf::{GgmlType, GgufFile, GgufTensor, unpermute_rope_rows};
use crate::llama::{Llama, Llama3RopeScaling, LlamaConfig, LlamaModel};
use crate::lora::{BaseLinear, LoraLinear};
use crate::quant::{QuantizedLinear, QuantizedMatrix};
use crate::{LlamaError, LlamaTokenizer};

/// Which parameters of a model a checkpoint provides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    /// Everything except LoRA adapters (a base model checkpoint).
    Base,
    /// Only the LoRA adapters (a PEFT adapter checkpoint).
    Adapters,
}

impl Part {
    fn covers(self, module_path: &str) -> bool {
        let is_adapter = module_path.contains(".adapter.");
        match self {
            Part::Base => !is_adapter,
            Part::Adapters => is_adapter,
        }
    }
}

/// Tensors read from a checkpoint, named by module path, in PyTorch layout.
pub(crate) struct Checkpoint {
    /// The file or directory, for messages.
    pub name: String,
    /// The tensors.
    pub tensors: Vec<TensorSnapshot>,
    /// How a module path is spelled in the checkpoint (for messages).
    pub checkpoint_name: fn(&str) -> String,
}

/// Hugging Face keys to module paths: a projection's own weight is the frozen `base_layer` of its
/// [`LoraLinear`](crate::LoraLinear), PEFT's spelling (`q_proj.weight` -> `q_proj.base_layer.weight`).
pub(crate) fn hf_key_remapper() -> KeyRemapper {
    KeyRemapper::new()
        .add_pattern(r"^(.+_proj)\.(weight|bias)$", "${1}.base_layer.${2}")
        // A constant, valid pattern: this cannot fail.
        .unwrap_or_default()
}

/// The Hugging Face key of a module path (the inverse of [`hf_key_remapper`]).
pub(crate) fn hf_key(module_path: &str) -> String {
    module_path.replace(".base_layer.", ".")
}

/// Checks `checkpoint` against the parameters of `module` that `part` covers, then loads them.
///
/// Returns the checkpoint tensors that match no parameter (for a base model they are only logged:
/// transformers' checkpoints may carry buffers such as `rotary_emb.inv_freq`; for adapters they are an
/// error, since dropping adapter weights would silently change the model).
pub(crate) fn apply_checkpoint<B: Backend, M: Module<B>>(
    mut module: M,
    checkpoint: Checkpoint,
    part: Part,
) -> Result<(M, Vec<String>), LlamaError> {
    let Checkpoint { name: source_name, tensors, checkpoint_name } = checkpoint;
    // Enum variants (`BaseLinear::Dense`) are not part of checkpoint paths.
    let expected: BTreeMap<String, Vec<usize>> = float_params::<B, M>(&module, EnumVariants::Skip)
        .into_iter()
        .map(|param| (param.name(), param.pytorch_shape()))
        .filter(|(path, _)| part.covers(path))
        .collect();

    let mut found: BTreeMap<String, TensorSnapshot> = BTreeMap::new();
    let mut unused = Vec::new();
    for snapshot in tensors {
        let path = snapshot.full_path();
        if expected.contains_key(&path) {
            found.insert(path, snapshot);
        } else {
            unused.push(checkpoint_name(&path));
        }
    }
    unused.sort();

    let missing: Vec<String> =
        expected.keys().filter(|path| !found.contains_key(*path)).map(|path| checkpoint_name(path)).collect();
    if !missing.is_empty() {
        return Err(LlamaError::MissingTensors { source_name, tensors: missing });
    }
    for (path, shape) in &expected {
        let snapshot = &found[path];
        if snapshot.shape.as_slice() != shape.as_slice() {
            return Err(LlamaError::ShapeMismatch {
                source_name,
                tensor: checkpoint_name(path),
                expected: shape.clone(),
                found: snapshot.shape.to_vec(),
            });
        }
    }
    if part == Part::Adapters && !unused.is_empty() {
        return Err(LlamaError::UnexpectedTensors { source_name, tensors: unused });
    }
    for tensor in &unused {
        tracing::warn!(checkpoint = %source_name, tensor, "checkpoint tensor matches no model parameter; ignored");
    }

    let snapshots = found.into_values().map(as_f32).collect();
    // skip_enum_variants: `…q_proj.base_layer.weight` reaches `BaseLinear::Dense`'s weight.
    let result = module.apply(snapshots, None, Some(Box::new(PyTorchToBurnAdapter)), true);
    if let Some(error) = result.errors.first() {
        let path = match error {
            ApplyError::ShapeMismatch { path, .. }
            | ApplyError::DTypeMismatch { path, .. }
            | ApplyError::AdapterError { path, .. }
            | ApplyError::LoadError { path, .. } => path,
        };
        return Err(LlamaError::TensorLoad { source_name, tensor: checkpoint_name(path), reason: error.to_string() });
    }
    if let Some((path, _)) = result.missing.iter().find(|(path, _)| part.covers(path)) {
        return Err(LlamaError::MissingTensors { source_name, tensors: vec![checkpoint_name(path)] });
    }
    Ok((module, unused))
}

/// A snapshot whose data is converted to `f32` when read (checkpoints may be f16, bf16 or f64; the
/// models here compute in f32).
fn as_f32(snapshot: TensorSnapshot) -> TensorSnapshot {
    if snapshot.dtype == DType::F32 || !snapshot.dtype.is_float() {
        return snapshot;
    }
    let read = snapshot.clone_data_fn();
    TensorSnapshot::from_closure(
        Rc::new(move || read().map(|data| data.convert::<f32>())),
        DType::F32,
        snapshot.shape.clone(),
        snapshot.path_stack.clone().unwrap_or_default(),
        snapshot.container_stack.clone().unwrap_or_default(),
        snapshot.tensor_id.unwrap_or_default(),
    )
}

/// Reads safetensors files through burn-store, renaming keys with `remapper`.
pub(crate) fn read_safetensors(files: &[PathBuf], remapper: &KeyRemapper) -> Result<Vec<TensorSnapshot>, LlamaError> {
    let mut tensors = Vec::new();
    for file in files {
        let mut store = SafetensorsStore::from_file(file.clone()).remap(remapper.clone());
        let snapshots = store
            .get_all_snapshots()
            .map_err(|e| LlamaError::Safetensors { path: file.clone(), reason: e.to_string() })?;
        tensors.extend(snapshots.values().cloned());
    }
    Ok(tensors)
}

impl<B: Backend> Llama<B> {
    /// Loads a Hugging Face Llama checkpoint (`config.json` and safetensors, one file or sharded) from
    /// a hub id or a local directory, resolving hub files cache-first (see [`polarity_hub`]).
    pub fn from_pretrained(source: &RepoSource, device: &B::Device) -> Result<Self, LlamaError> {
        let config = LlamaConfig::from_hf_file(&source.file("config.json")?)?;
        let files = source.safetensors_files()?;
        config.init(device)?.load_safetensors(&files, &source.to_string())
    }

    /// Loads Hugging Face-named safetensors `files` into this model (all its non-adapter parameters
    /// must be present with matching shapes). `source_name` is used in error messages.
    pub fn load_safetensors(self, files: &[PathBuf], source_name: &str) -> Result<Self, LlamaError> {
        let tensors = read_safetensors(files, &hf_key_remapper())?;
        let checkpoint = Checkpoint { name: source_name.to_string(), tensors, checkpoint_name: hf_key };
        apply_checkpoint(self, checkpoint, Part::Base).map(|(model, _unused)| model)
    }

    /// Loads a llama.cpp GGUF file: the model (dequantised to f32) and its tokenizer.
    pub fn from_gguf(path: &Path, device: &B::Device) -> Result<(Self, LlamaTokenizer), LlamaError> {
        Self::open_gguf(path, device, GgufProjections::Dequantized)
    }

    /// Loads a llama.cpp GGUF file for QLoRA: the seven projections of every layer keep their GGUF
    /// blocks (`Q4_1`, `Q8_0`, ...) as [`QuantizedMatrix`]es, dequantised on use; embeddings, norms and
    /// the head are dequantised to f32 as in [`from_gguf`](Self::from_gguf). The logits are those of
    /// [`from_gguf`](Self::from_gguf) (the same blocks, decoded by the same code). Projections stored
    /// as F32 in the file load dense (there is nothing to save).
    pub fn from_gguf_quantized(path: &Path, device: &B::Device) -> Result<(Self, LlamaTokenizer), LlamaError> {
        Self::open_gguf(path, device, GgufProjections::Quantized)
    }

    fn open_gguf(
        path: &Path,
        device: &B::Device,
        projections: GgufProjections,
    ) -> Result<(Self, LlamaTokenizer), LlamaError> {
        let gguf = GgufFile::open(path)?;
        let config = LlamaConfig::from_gguf(&gguf)?;
        let tokenizer = LlamaTokenizer::from_gguf(&gguf)?;
        let model = config.init(device)?.load_gguf_tensors(&gguf, &config, &path.display().to_string(), projections)?;
        Ok((model, tokenizer))
    }

    /// Loads the tensors of a parsed GGUF file into this model (built from `config`, typically
    /// [`LlamaConfig::from_gguf`]). Tensors are dequantised lazily, one at a time, as they are applied.
    pub fn load_gguf(self, gguf: &GgufFile, config: &LlamaConfig, source_name: &str) -> Result<Self, LlamaError> {
        self.load_gguf_tensors(gguf, config, source_name, GgufProjections::Dequantized)
    }

    /// [`load_gguf`](Self::load_gguf), keeping the projections' GGUF blocks quantised (see
    /// [`from_gguf_quantized`](Self::from_gguf_quantized)).
    pub fn load_gguf_quantized(
        self,
        gguf: &GgufFile,
        config: &LlamaConfig,
        source_name: &str,
    ) -> Result<Self, LlamaError> {
        self.load_gguf_tensors(gguf, config, source_name, GgufProjections::Quantized)
    }

    fn load_gguf_tensors(
        self,
        gguf: &GgufFile,
        config: &LlamaConfig,
        source_name: &str,
        projections: GgufProjections,
    ) -> Result<Self, LlamaError> {
        let mut tensors = Vec::new();
        let mut quantized = BTreeMap::new();
        for info in &gguf.tensors {
            let Some(hf_name) = hf_name_of_gguf_tensor(&info.name)? else {
                tracing::warn!(gguf = source_name, tensor = %info.name, "GGUF tensor has no Llama counterpart; ignored");
                continue;
            };
            if !info.ggml_type.can_dequantize() {
                return Err(LlamaError::GgufUnsupportedTensorType {
                    tensor: info.name.clone(),
                    ggml_type: info.ggml_type.name().to_string(),
                });
            }
            let Some(tensor) = gguf.tensor(&info.name) else { continue };
            // llama.cpp permutes the rows of q/k for its RoPE layout; the heads decide how to undo it.
            let rope_heads = if info.name.contains(".attn_q.") {
                Some(config.num_attention_heads)
            } else if info.name.contains(".attn_k.") {
                Some(config.num_key_value_heads)
            } else {
                None
            };
            let keep_blocks = projections == GgufProjections::Quantized
                && hf_name.ends_with("_proj.weight")
                && info.dims.len() == 2
                && info.ggml_type != GgmlType::F32;
            if keep_blocks {
                quantized.insert(hf_name, gguf_matrix(&tensor, rope_heads)?);
            } else {
                tensors.push(gguf_snapshot(tensor, &hf_name, rope_heads));
            }
        }
        let model = if quantized.is_empty() { self } else { self.with_quantized_projections(quantized, source_name)? };
        let (tensors, _) = hf_key_remapper().remap(tensors);
        let checkpoint = Checkpoint { name: source_name.to_string(), tensors, checkpoint_name: hf_key };
        apply_checkpoint(model, checkpoint, Part::Base).map(|(model, _unused)| model)
    }

    /// Replaces the base weight of every projection named in `matrices` (Hugging Face names,
    /// `model.layers.0.self_attn.q_proj.weight`) by its quantised matrix, keeping the bias. Matrices
    /// that match no projection are logged and dropped, like unused checkpoint tensors.
    fn with_quantized_projections(
        self,
        mut matrices: BTreeMap<String, QuantizedMatrix>,
        source_name: &str,
    ) -> Result<Self, LlamaError> {
        let Llama { model, lm_head } = self;
        let layers = model
            .layers
            .into_iter()
            .enumerate()
            .map(|(index, layer)| {
                layer.try_map_projections(|name, projection| {
                    let key = format!("model.layers.{index}.{name}.weight");
                    let Some(matrix) = matrices.remove(&key) else { return Ok(projection) };
                    let [d_input, d_output] = projection.dims();
                    if matrix.dims() != [d_output, d_input] {
                        return Err(LlamaError::ShapeMismatch {
                            source_name: source_name.to_string(),
                            tensor: key,
                            expected: vec![d_output, d_input],
                            found: matrix.dims().to_vec(),
                        });
                    }
                    let bias = projection.base_layer.bias().cloned();
                    Ok(LoraLinear {
                        base_layer: BaseLinear::Quantized(QuantizedLinear::new(matrix, bias)?),
                        ..projection
                    })
                })
            })
            .collect::<Result<Vec<_>, LlamaError>>()?;
        for tensor in matrices.keys() {
            tracing::warn!(checkpoint = %source_name, tensor, "checkpoint tensor matches no model parameter; ignored");
        }
        Ok(Llama { model: LlamaModel { layers, ..model }, lm_head })
    }
}

/// Whether the GGUF loader decodes the projection weights to f32 or keeps their blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GgufProjections {
    Dequantized,
    Quantized,
}

/// A GGUF matrix kept in its blocks, its rows un-permuted when `rope_heads` says so (q/k).
fn gguf_matrix(tensor: &GgufTensor, rope_heads: Option<usize>) -> Result<QuantizedMatrix, LlamaError> {
    let &[rows, cols] = tensor.info.shape().as_slice() else {
        return Err(LlamaError::GgufInvalid(format!("tensor {:?} is not a matrix", tensor.info.name)));
    };
    let matrix =
        QuantizedMatrix::from_gguf_blocks(tensor.info.ggml_type, tensor.bytes(), rows, cols).map_err(|e| match e {
            LlamaError::GgufUnsupportedTensorType { ggml_type, .. } => {
                LlamaError::GgufUnsupportedTensorType { tensor: tensor.info.name.clone(), ggml_type }
            }
            other => other,
        })?;
    match rope_heads {
        Some(heads) => matrix.unpermute_rope_rows(heads),
        None => Ok(matrix),
    }
}

/// A lazily dequantised GGUF tensor under its Hugging Face name.
fn gguf_snapshot(tensor: GgufTensor, hf_name: &str, rope_heads: Option<usize>) -> TensorSnapshot {
    let shape = tensor.info.shape();
    let read_shape = shape.clone();
    let read = move || {
        let values = tensor.to_f32()?;
        let values = match (rope_heads, read_shape.as_slice()) {
            (Some(heads), &[rows, cols]) => unpermute_rope_rows(&values, rows, cols, heads)?,
            _ => values,
        };
        Ok(TensorData::new(values, read_shape.clone()))
    };
    TensorSnapshot::from_closure(
        Rc::new(move || read().map_err(|e: LlamaError| burn_store::TensorSnapshotError::DataError(e.to_string()))),
        DType::F32,
        shape.into(),
        hf_name.split('.').map(str::to_string).collect(),
        Vec::new(),
        ParamId::new(),
    )
}

/// The Hugging Face name of a llama.cpp tensor (`blk.3.attn_q.weight` ->
/// `model.layers.3.self_attn.q_proj.weight`), `None` for tensors Llama does not use.
pub fn hf_name_of_gguf_tensor(gguf_name: &str) -> Result<Option<String>, LlamaError> {
    let global = match gguf_name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        "rope_freqs.weight" => {
            return Err(LlamaError::Unsupported(
                "GGUF rope_freqs.weight (llama.cpp's stored RoPE frequency factors)".into(),
            ));
        }
        _ => None,
    };
    if let Some(name) = global {
        return Ok(Some(name.to_string()));
    }
    let Some(rest) = gguf_name.strip_prefix("blk.") else { return Ok(None) };
    let Some((layer, rest)) = rest.split_once('.') else { return Ok(None) };
    if layer.parse::<usize>().is_err() {
        return Ok(None);
    }
    let Some((module, param)) = rest.rsplit_once('.') else { return Ok(None) };
    let hf_module = match module {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        _ => return Ok(None),
    };
    Ok(Some(format!("model.layers.{layer}.{hf_module}.{param}")))
}

impl LlamaConfig {
    /// The configuration stored in a GGUF file's `llama.*` metadata, resolved as transformers' GGUF
    /// loader does (`rope.dimension_count` is the head width; no `output.weight` means tied embeddings).
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self, LlamaError> {
        let architecture = gguf.str("general.architecture")?;
        if architecture != "llama" {
            return Err(LlamaError::Unsupported(format!("GGUF architecture {architecture:?} (expected \"llama\")")));
        }
        let key = |name: &str| format!("llama.{name}");
        let heads = gguf.usize(&key("attention.head_count"))?;
        let vocab_size = match gguf.opt_usize(&key("vocab_size"))? {
            Some(size) => size,
            None => gguf.strings("tokenizer.ggml.tokens")?.len(),
        };
        let rope_scaling: Option<Llama3RopeScaling> = match gguf.get(&key("rope.scaling.type")).and_then(|v| v.as_str())
        {
            None | Some("none") => None,
            Some(other) => return Err(LlamaError::Unsupported(format!("GGUF RoPE scaling type {other:?}"))),
        };
        let config = LlamaConfig {
            vocab_size,
            hidden_size: gguf.usize(&key("embedding_length"))?,
            intermediate_size: gguf.usize(&key("feed_forward_length"))?,
            num_hidden_layers: gguf.usize(&key("block_count"))?,
            num_attention_heads: heads,
            num_key_value_heads: gguf.opt_usize(&key("attention.head_count_kv"))?.unwrap_or(heads),
            head_dim: match gguf.opt_usize(&key("attention.key_length"))? {
                Some(width) => Some(width),
                None => gguf.opt_usize(&key("rope.dimension_count"))?,
            },
            rms_norm_eps: gguf.opt_f64(&key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5),
            rope_theta: gguf.opt_f64(&key("rope.freq_base"))?.unwrap_or(10000.0),
            rope_scaling,
            max_position_embeddings: gguf.opt_usize(&key("context_length"))?.unwrap_or(2048),
            tie_word_embeddings: gguf.tensor_info("output.weight").is_none(),
            attention_bias: gguf.tensor_info("blk.0.attn_q.bias").is_some(),
            mlp_bias: gguf.tensor_info("blk.0.ffn_up.bias").is_some(),
        };
        config.validate()?;
        Ok(config)
    }
}
