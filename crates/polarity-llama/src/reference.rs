//! Verification against PyTorch + transformers reference fixtures (see `shared/fixtures`).
//!
//! Three fixture kinds are handled, for any Llama configuration in those formats:
//!
//! - `causal-lm-lora`: a Hugging Face model directory and a PEFT adapter; compares the base logits,
//!   the logits with the adapter, the logits after merging it, the answer-only loss and the adapter
//!   gradients of that loss;
//! - `causal-lm-prompts`: a GGUF file (or a Hugging Face checkpoint) and prompts; compares the prompt
//!   token ids, the next-token logits after each prompt, the label-word scores and a greedy continuation;
//! - `tokenizer-ids`: texts and their reference token ids, all in `meta.json` (no
//!   `reference.safetensors`), checked against a `tokenizer.json` and optionally a GGUF vocabulary
//!   ([`verify_token_ids`]).
//!
//! Paths in `meta.json` that are not absolute are looked up, in order, in the fixture directory, in
//! the shared directory that holds the fixture (`shared/fixtures/NAME` -> `shared`), in the parent
//! of `$HF_HOME` (the shared directory holds `hf/` beside `models/`), and in `../shared` from the
//! working directory (the project's convention); the first that exists is used.
//!
//! [`verify`] runs on [`polarity_core::backend::DefaultBackend`] (the CPU, or CUDA with the `cuda`
//! feature), [`verify_on`] on any backend; gradients use burn's autodiff on top of it.

use std::path::{Path, PathBuf};

use burn::backend::Autodiff;
use burn::prelude::*;
use polarity_core::backend::{DefaultBackend, default_device};
use polarity_core::reference::{Fixture, TensorCheck, Tolerance};
use polarity_hub::{RepoKind, RepoSource};
use serde_json::Value;

use polarity_tokenize::PaddingBatcher;

use crate::{LabelWords, Llama, LlamaError, LlamaTokenizer, causal_lm_loss};

/// The `meta.json` kind of a LoRA fixture.
pub const LORA_KIND: &str = "causal-lm-lora";
/// The `meta.json` kind of a prompts fixture.
pub const PROMPTS_KIND: &str = "causal-lm-prompts";
/// The `meta.json` kind of a token-ids fixture.
pub const TOKEN_IDS_KIND: &str = "tokenizer-ids";

/// Logits of small float32 models: transformers and burn agree to about 1e-5.
pub const LOGITS_TOLERANCE: f64 = 1e-4;
/// The mean cross-entropy.
pub const LOSS_TOLERANCE: f64 = 1e-5;
/// Gradients, relative to the largest reference magnitude.
pub const GRADIENT_TOLERANCE: f64 = 1e-4;
/// Logits of a real 30-layer model over a few hundred tokens, where float32 rounding accumulates.
pub const PROMPT_LOGITS_TOLERANCE: f64 = 1e-3;

/// Runs the model a fixture describes on the default backend and compares every reference tensor.
///
/// `model_override` replaces the fixture's model: a directory or hub id of a Hugging Face checkpoint,
/// or (for `causal-lm-prompts`) a `.gguf` file; for `tokenizer-ids` it replaces the `tokenizer`.
pub fn verify(fixture_dir: &Path, model_override: Option<&str>) -> Result<Vec<TensorCheck>, LlamaError> {
    verify_on::<DefaultBackend>(fixture_dir, model_override, &default_device()?)
}

/// [`verify`] on the backend `B`.
pub fn verify_on<B: Backend>(
    fixture_dir: &Path,
    model_override: Option<&str>,
    device: &B::Device,
) -> Result<Vec<TensorCheck>, LlamaError> {
    if Fixture::open_meta(fixture_dir)?.kind()? == TOKEN_IDS_KIND {
        return verify_token_ids(fixture_dir, model_override);
    }
    let fixture = Fixture::open(fixture_dir)?;
    match fixture.kind()? {
        LORA_KIND => verify_lora::<B>(&fixture, model_override, device),
        PROMPTS_KIND => verify_prompts::<B>(&fixture, model_override, device),
        other => Err(fixture_error(&fixture, format!("kind {other:?} is not a causal-LM fixture"))),
    }
}

fn fixture_error(fixture: &Fixture, what: impl Into<String>) -> LlamaError {
    LlamaError::Fixture { dir: fixture.dir.clone(), what: what.into() }
}

/// Where a relative path from meta.json may be, in the order of the module documentation.
fn path_candidates(fixture: &Fixture, relative: &str) -> Vec<PathBuf> {
    let mut bases = vec![fixture.dir.clone()];
    bases.extend(fixture.dir.parent().and_then(Path::parent).map(Path::to_path_buf));
    bases.extend(std::env::var_os("HF_HOME").and_then(|home| PathBuf::from(home).parent().map(Path::to_path_buf)));
    bases.push(PathBuf::from("../shared"));
    bases.iter().map(|base| base.join(relative)).collect()
}

/// A path from meta.json: the first of [`path_candidates`] that exists, else its place in the
/// fixture directory (whose absence the caller reports).
fn fixture_path(fixture: &Fixture, relative: &str) -> PathBuf {
    path_candidates(fixture, relative)
        .into_iter()
        .find(|path| path.exists())
        .unwrap_or_else(|| fixture.dir.join(relative))
}

fn int_tensor<B: Backend, const D: usize>(
    fixture: &Fixture,
    name: &str,
    device: &B::Device,
) -> Result<Tensor<B, D, Int>, LlamaError> {
    let (shape, values) = fixture.i64(name)?;
    if shape.len() != D {
        return Err(fixture_error(fixture, format!("{name} has shape {shape:?}, expected rank {D}")));
    }
    Ok(Tensor::from_data(TensorData::new(values.to_vec(), shape.to_vec()), device))
}

/// Compares `ours` with the fixture tensor `reference`; a shape difference fails the check.
fn compare(
    fixture: &Fixture,
    name: &str,
    reference: &str,
    ours: TensorData,
    tolerance: f64,
    mode: Tolerance,
) -> Result<TensorCheck, LlamaError> {
    let (shape, expected) = fixture.f32(reference)?;
    let ours_shape = ours.shape.to_vec();
    let values: Vec<f32> =
        ours.convert::<f32>().into_vec().map_err(|e| fixture_error(fixture, format!("{name}: {e:?}")))?;
    let mut check = TensorCheck::compare(name, &values, expected, tolerance, mode);
    if ours_shape != shape {
        check.max_abs_err = f64::INFINITY;
        check.ok = false;
    }
    Ok(check)
}

fn verify_lora<B: Backend>(
    fixture: &Fixture,
    model_override: Option<&str>,
    device: &B::Device,
) -> Result<Vec<TensorCheck>, LlamaError> {
    let model_spec = match model_override {
        Some(spec) => spec.to_string(),
        None => fixture_path(fixture, fixture.meta_str("model_dir")?).display().to_string(),
    };
    let adapter_dir = fixture_path(fixture, fixture.meta_str("adapter_dir")?);
    let base = Llama::<Autodiff<B>>::from_pretrained(&RepoSource::parse(&model_spec, RepoKind::Model), device)?;

    // Ids past the embedding table would index out of it inside the forward pass: refused here.
    fixture.token_ids("input_ids", base.vocab_size())?;
    let vocab = i64::try_from(base.vocab_size()).unwrap_or(i64::MAX);
    fixture.i64_in("lora_labels", 0..vocab, &[crate::IGNORE_INDEX])?;
    let input_ids = int_tensor::<Autodiff<B>, 2>(fixture, "input_ids", device)?;
    let attention_mask = int_tensor::<Autodiff<B>, 2>(fixture, "attention_mask", device)?;
    let labels = int_tensor::<Autodiff<B>, 2>(fixture, "lora_labels", device)?;
    let mut checks = Vec::new();

    let logits = base.inference().forward(input_ids.clone().inner(), Some(attention_mask.clone().inner()));
    checks.push(compare(fixture, "logits", "logits", logits.into_data(), LOGITS_TOLERANCE, Tolerance::Absolute)?);

    let (lora, _config) = base.load_lora(&RepoSource::Local(adapter_dir))?;
    let lora_logits = lora.forward(input_ids.clone(), Some(attention_mask.clone()));
    checks.push(compare(
        fixture,
        "lora_logits",
        "lora_logits",
        lora_logits.to_data(),
        LOGITS_TOLERANCE,
        Tolerance::Absolute,
    )?);

    let loss = causal_lm_loss(lora_logits, labels);
    checks.push(compare(fixture, "lora_loss", "lora_loss", loss.to_data(), LOSS_TOLERANCE, Tolerance::Absolute)?);

    let grads = loss.backward();
    let gradients = lora.lora_gradients(&grads);
    for reference in fixture.names().into_iter().filter(|name| name.starts_with("grad.")) {
        let parameter = &reference["grad.".len()..];
        let check = match gradients.iter().find(|(name, _)| name == parameter) {
            Some((_, grad)) => {
                compare(fixture, reference, reference, grad.clone(), GRADIENT_TOLERANCE, Tolerance::Relative)?
            }
            None => TensorCheck::compare(reference, &[], &[0.0], GRADIENT_TOLERANCE, Tolerance::Relative),
        };
        checks.push(check);
    }

    let merged = lora.merge_lora().inference();
    let merged_logits = merged.forward(input_ids.inner(), Some(attention_mask.inner()));
    checks.push(compare(
        fixture,
        "merged_logits",
        "merged_logits",
        merged_logits.into_data(),
        LOGITS_TOLERANCE,
        Tolerance::Absolute,
    )?);
    Ok(checks)
}

/// The model and tokenizer of a `causal-lm-prompts` fixture: a GGUF file, or a Hugging Face checkpoint
/// with `tokenizer.json`.
fn prompt_model<B: Backend>(
    fixture: &Fixture,
    model_override: Option<&str>,
    device: &B::Device,
) -> Result<(Llama<B>, LlamaTokenizer), LlamaError> {
    let spec = match model_override {
        Some(spec) => spec.to_string(),
        None => fixture.meta_str("model_path")?.to_string(),
    };
    if spec.ends_with(".gguf") {
        let path = if Path::new(&spec).exists() { PathBuf::from(&spec) } else { fixture_path(fixture, &spec) };
        return Llama::from_gguf(&path, device);
    }
    let source = RepoSource::parse(&spec, RepoKind::Model);
    let tokenizer = LlamaTokenizer::from_file(&source.file("tokenizer.json")?)?;
    let model = Llama::from_pretrained(&source, device)?;
    tokenizer.check_vocab(model.vocab_size(), &spec)?;
    Ok((model, tokenizer))
}

fn verify_prompts<B: Backend>(
    fixture: &Fixture,
    model_override: Option<&str>,
    device: &B::Device,
) -> Result<Vec<TensorCheck>, LlamaError> {
    let (model, tokenizer) = prompt_model::<B>(fixture, model_override, device)?;
    let mut checks = Vec::new();

    let prompts: Vec<&str> = fixture
        .meta
        .get("prompts")
        .and_then(Value::as_array)
        .and_then(|items| items.iter().map(Value::as_str).collect())
        .ok_or_else(|| fixture_error(fixture, "meta.json has no array of string \"prompts\""))?;
    let encoded = prompts.iter().map(|prompt| tokenizer.encode(prompt)).collect::<Result<Vec<_>, _>>()?;
    let (id_shape, reference_ids) = fixture.i64("prompt_ids")?;
    let width = id_shape.get(1).copied().unwrap_or(0).max(encoded.iter().map(Vec::len).max().unwrap_or(0));
    let padded: Vec<i64> = encoded
        .iter()
        .flat_map(|row| row.iter().map(|&id| i64::from(id)).chain(std::iter::repeat(0)).take(width))
        .collect();
    checks.push(TensorCheck::exact("prompt_ids", &padded, reference_ids));
    let lengths: Vec<i64> = encoded.iter().map(|row| row.len() as i64).collect();
    checks.push(TensorCheck::exact("prompt_lengths", &lengths, fixture.i64("prompt_lengths")?.1));

    let label_words = LabelWords::from_tokenizer(&tokenizer)?;
    let label_ids = fixture.meta.get("label_token_ids");
    let reference_label = |word: &str| {
        label_ids
            .and_then(|ids| ids.get(word))
            .and_then(Value::as_array)
            .and_then(|ids| ids.first())
            .and_then(Value::as_i64)
    };
    if let (Some(negative), Some(positive)) = (reference_label("negative"), reference_label("positive")) {
        let ours = label_words.ids().map(i64::from);
        checks.push(TensorCheck::exact("label_token_ids", &ours, &[negative, positive]));
    }

    let batch = PaddingBatcher::new(0).pad_ids::<B, _>(&encoded, device);
    let last_logits = model.last_token_logits(batch.input_ids, batch.attention_mask);
    let label_scores = label_words.select(last_logits.clone());
    checks.push(compare(
        fixture,
        "last_logits",
        "last_logits",
        last_logits.into_data(),
        PROMPT_LOGITS_TOLERANCE,
        Tolerance::Absolute,
    )?);

    if let Some(rows) = fixture.meta.get("rows").and_then(Value::as_array) {
        let reference_scores: Vec<f32> = rows
            .iter()
            .flat_map(|row| ["score_negative", "score_positive"].map(|key| row.get(key).and_then(Value::as_f64)))
            .map(|score| score.map(|s| s as f32))
            .collect::<Option<_>>()
            .ok_or_else(|| fixture_error(fixture, "meta.json rows lack score_negative/score_positive"))?;
        let ours: Vec<f32> = label_scores.into_data().convert::<f32>().into_vec().unwrap_or_default();
        checks.push(TensorCheck::compare(
            "label_scores",
            &ours,
            &reference_scores,
            PROMPT_LOGITS_TOLERANCE,
            Tolerance::Absolute,
        ));
    }

    if let Some(greedy_prompt) = fixture.meta.get("greedy").and_then(|g| g.get("prompt")).and_then(Value::as_str) {
        let (_, reference) = fixture.i64("greedy_ids")?;
        let prompt = tokenizer.encode(greedy_prompt)?;
        let new_tokens = reference.len().saturating_sub(prompt.len());
        let generated = model.generate_greedy(std::slice::from_ref(&prompt), new_tokens, None, device);
        let ours: Vec<i64> = prompt.iter().chain(generated.iter().flatten()).map(|&id| i64::from(id)).collect();
        checks.push(TensorCheck::exact("greedy_ids", &ours, reference));
    }
    Ok(checks)
}

/// The `meta.json` of a `tokenizer-ids` fixture.
#[derive(serde::Deserialize)]
struct TokenIdsMeta {
    /// A hub id, a model directory or a `tokenizer.json` file.
    tokenizer: String,
    /// A GGUF file with the same vocabulary, relative to the shared directory.
    #[serde(default)]
    gguf: Option<String>,
    /// Whether the reference ids include the special tokens the tokenizer adds (BOS).
    add_special_tokens: bool,
    cases: Vec<TokenIdsCase>,
}

#[derive(serde::Deserialize)]
struct TokenIdsCase {
    text: String,
    ids: Vec<u32>,
}

/// Checks a `tokenizer-ids` fixture: its `meta.json` is
/// `{"kind": "tokenizer-ids", "tokenizer": <hub id or path>, "gguf": <path, optional>,
/// "add_special_tokens": bool, "cases": [{"text": ..., "ids": [...]}]}`.
///
/// Each case is tokenized by the `tokenizer.json` of `tokenizer` (or of `tokenizer_override`) and,
/// when `gguf` is given, by [`LlamaTokenizer::from_gguf`] on that file; `add_special_tokens` decides
/// whether BOS is prepended ([`LlamaTokenizer::encode_with`]). Returns one check per source,
/// `tokenizer_json` then `gguf`, whose error is the number of cases whose ids differ (tolerance 0).
/// Relative paths are resolved as the module documentation says.
pub fn verify_token_ids(fixture_dir: &Path, tokenizer_override: Option<&str>) -> Result<Vec<TensorCheck>, LlamaError> {
    let fixture = Fixture::open_meta(fixture_dir)?;
    let meta: TokenIdsMeta = serde_json::from_value(fixture.meta.clone())
        .map_err(|e| fixture_error(&fixture, format!("meta.json is not a tokenizer-ids fixture: {e}")))?;
    if meta.cases.is_empty() {
        return Err(fixture_error(&fixture, "meta.json has no cases"));
    }
    let spec = tokenizer_override.unwrap_or(&meta.tokenizer);
    let mut sources = vec![("tokenizer_json", tokenizer_from_spec(&fixture, spec)?)];
    if let Some(gguf) = &meta.gguf {
        let path = if Path::new(gguf).is_absolute() { PathBuf::from(gguf) } else { fixture_path(&fixture, gguf) };
        if !path.is_file() {
            let tried: Vec<String> =
                path_candidates(&fixture, gguf).iter().map(|path| path.display().to_string()).collect();
            return Err(fixture_error(&fixture, format!("gguf {gguf:?} not found (tried {})", tried.join(", "))));
        }
        sources.push(("gguf", LlamaTokenizer::from_gguf(&crate::gguf::GgufFile::open(&path)?)?));
    }
    let mut checks = Vec::with_capacity(sources.len());
    for (name, tokenizer) in sources {
        let mut differing = 0usize;
        for case in &meta.cases {
            let ids = tokenizer.encode_with(&case.text, meta.add_special_tokens)?;
            if ids != case.ids {
                tracing::info!(source = name, text = case.text, ?ids, expected = ?case.ids, "token ids differ");
                differing += 1;
            }
        }
        checks.push(TensorCheck {
            name: name.to_string(),
            max_abs_err: differing as f64,
            tolerance: 0.0,
            mode: Tolerance::Absolute,
            ok: differing == 0,
        });
    }
    Ok(checks)
}

/// The tokenizer of a `tokenizer` entry: a `tokenizer.json` file, a model directory (either as given
/// or found like other fixture paths), else a hub id.
fn tokenizer_from_spec(fixture: &Fixture, spec: &str) -> Result<LlamaTokenizer, LlamaError> {
    let local = [PathBuf::from(spec), fixture_path(fixture, spec)].into_iter().find(|path| path.exists());
    match local {
        Some(file) if file.is_file() => LlamaTokenizer::from_file(&file),
        Some(dir) => LlamaTokenizer::from_pretrained(&RepoSource::Local(dir)),
        None => LlamaTokenizer::from_pretrained(&RepoSource::hub(spec, RepoKind::Model)),
    }
}
