//! llama.cpp GGUF files: the model (dequantised, or with its projections kept in their GGUF blocks)
//! and its configuration; the tokenizer is rebuilt by [`LlamaTokenizer::from_gguf`].

use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;

use burn::module::ParamId;
use burn::prelude::*;
use burn::tensor::DType;
use polarity_checkpoint::{Checkpoint, CheckpointError, TensorSnapshot};

use super::{LlamaKeys, load};
use crate::gguf::{GgmlType, GgufFile, GgufTensor, unpermute_rope_rows};
use crate::layers::{BaseLinear, LoraLinear, QuantizedLinear, QuantizedMatrix};
use crate::llama::{Llama, Llama3RopeScaling, LlamaConfig, LlamaModel};
use crate::{LlamaError, LlamaTokenizer};

impl<B: Backend> Llama<B> {
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
        let name = gguf.display_name();
        // Before the config: a vocabulary-only file is one clear error, not a missing key or 291 tensors.
        if gguf.tensors.is_empty() {
            return Err(LlamaError::GgufNoTensors { file: name });
        }
        let config = LlamaConfig::from_gguf(&gguf)?;
        let tokenizer = LlamaTokenizer::from_gguf(&gguf)?;
        // config.vocab_size is the embedding table's rows (checked in from_gguf).
        tokenizer.check_vocab(config.vocab_size, &name)?;
        let model = config.init(device)?.load_gguf_tensors(&gguf, &config, &name, projections)?;
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
        if gguf.tensors.is_empty() {
            return Err(LlamaError::GgufNoTensors { file: gguf.display_name() });
        }
        // Layers the config does not have would be dropped with a warning by the checkpoint loader,
        // leaving a model without them: an error, naming the tensors.
        let beyond: Vec<String> = gguf
            .tensors
            .iter()
            .filter(|info| gguf_layer_index(&info.name).is_some_and(|layer| layer >= config.num_hidden_layers))
            .map(|info| info.name.clone())
            .collect();
        if !beyond.is_empty() {
            return Err(LlamaError::GgufLayersBeyondBlockCount {
                file: gguf.display_name(),
                block_count: config.num_hidden_layers,
                tensors: beyond,
            });
        }
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
                tensors.push((hf_name, gguf_snapshot(tensor, rope_heads)));
            }
        }
        let model = if quantized.is_empty() { self } else { self.with_quantized_projections(quantized, source_name)? };
        load(model, Checkpoint::from_snapshots(source_name, tensors), LlamaKeys::Base)
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
                        return Err(CheckpointError::ShapeMismatch {
                            checkpoint: source_name.to_string(),
                            tensor: key,
                            expected: vec![d_output, d_input],
                            found: matrix.dims().to_vec(),
                        }
                        .into());
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
        return Err(LlamaError::GgufTensorData(format!(
            "tensor {:?} {:?} is not a matrix",
            tensor.info.name, tensor.info.dims
        )));
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

/// A lazily dequantised GGUF tensor (the loader gives it its module path).
fn gguf_snapshot(tensor: GgufTensor, rope_heads: Option<usize>) -> TensorSnapshot {
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
        Vec::new(),
        Vec::new(),
        ParamId::new(),
    )
}

/// The layer of a llama.cpp layer tensor (`blk.3.attn_q.weight` -> 3); `None` for other tensors.
fn gguf_layer_index(gguf_name: &str) -> Option<usize> {
    gguf_name.strip_prefix("blk.")?.split_once('.')?.0.parse().ok()
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
    /// loader does (`rope.dimension_count` is the head width; no `output.weight` means tied embeddings),
    /// and [validated](Self::validate) with errors naming the file and the GGUF key.
    ///
    /// The vocabulary size is the embedding table's rows (`token_embd.weight`); a `llama.vocab_size`
    /// that disagrees with them is an error. Without the table (a vocabulary-only file) it is
    /// `llama.vocab_size`, else the number of tokens.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self, LlamaError> {
        let file = gguf.display_name();
        let architecture = gguf.str("general.architecture")?;
        if architecture != "llama" {
            return Err(LlamaError::Unsupported(format!(
                "{file}: GGUF architecture {architecture:?} (expected \"llama\")"
            )));
        }
        let key = |name: &str| format!("llama.{name}");
        let invalid = |field: &str, value: String, reason: String| LlamaError::InvalidConfigValue {
            source_name: file.clone(),
            field: field.to_string(),
            value,
            reason,
        };
        let heads = gguf.usize(&key("attention.head_count"))?;
        let declared_vocab = gguf.opt_usize(&key("vocab_size"))?;
        let embedding_rows = match gguf.tensor_info("token_embd.weight") {
            None => None,
            Some(info) => match info.dims[..] {
                [_, rows] => Some(usize::try_from(rows).unwrap_or(usize::MAX)),
                _ => {
                    return Err(invalid(
                        "token_embd.weight",
                        format!("{:?}", info.dims),
                        "the embedding table must be a matrix".into(),
                    ));
                }
            },
        };
        let vocab_size = match (embedding_rows, declared_vocab) {
            (Some(rows), Some(declared)) if rows != declared => {
                return Err(invalid(
                    &key("vocab_size"),
                    declared.to_string(),
                    format!("the embedding table token_embd.weight has {rows} rows"),
                ));
            }
            (Some(rows), _) => rows,
            (None, Some(declared)) => declared,
            (None, None) => gguf.strings("tokenizer.ggml.tokens")?.len(),
        };
        let rope_scaling: Option<Llama3RopeScaling> = match gguf.get(&key("rope.scaling.type")).and_then(|v| v.as_str())
        {
            None | Some("none") => None,
            Some(other) => return Err(LlamaError::Unsupported(format!("{file}: GGUF RoPE scaling type {other:?}"))),
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
        config.validate_named(&file, |field| gguf_key_of_field(field, embedding_rows.is_some()))?;
        Ok(config)
    }
}

/// The GGUF spelling of a [`LlamaConfig`] field, for error messages.
fn gguf_key_of_field(field: &str, has_embedding: bool) -> String {
    let key = match field {
        "vocab_size" if has_embedding => return "token_embd.weight rows".into(),
        "vocab_size" => "vocab_size",
        "hidden_size" => "embedding_length",
        "intermediate_size" => "feed_forward_length",
        "num_hidden_layers" => "block_count",
        "num_attention_heads" => "attention.head_count",
        "num_key_value_heads" => "attention.head_count_kv",
        "head_dim" => "attention.key_length (or rope.dimension_count)",
        "rms_norm_eps" => "attention.layer_norm_rms_epsilon",
        "rope_theta" => "rope.freq_base",
        "max_position_embeddings" => "context_length",
        other => return other.to_string(),
    };
    format!("llama.{key}")
}
