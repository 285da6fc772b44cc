//! Llama causal language models in burn, for sentiment classification by prompting and LoRA tuning.
//!
//! - [`layers`]: generic layers that know no model: the frozen base of a projection ([`BaseLinear`]),
//!   [`lora`] (PEFT-compatible LoRA adapters, [`LoraLinear`]) and [`quant`] (QLoRA's quantised frozen
//!   base, NF4 or a GGUF file's own blocks, [`QuantizedLinear`]);
//! - [`llama`]: the model ([`Llama`], configured by [`LlamaConfig`] from a Hugging Face `config.json`):
//!   RMSNorm, SwiGLU, grouped-query attention, RoPE with `llama3` scaling, tied or untied embeddings,
//!   causal + padding masks for right-padded batches; LoRA on its projections ([`Llama::with_lora`],
//!   [`Llama::merge_lora`]) and its frozen base quantised ([`Llama::quantize_frozen_base`]);
//! - [`checkpoint`]: Hugging Face safetensors, single or sharded, by hub id or directory
//!   ([`Llama::from_pretrained`]), llama.cpp GGUF files ([`Llama::from_gguf`],
//!   [`Llama::from_gguf_quantized`]; format reader in [`gguf`]), with the GGUF tokenizer rebuilt as a
//!   [`tokenizers::Tokenizer`] ([`LlamaTokenizer`]), and PEFT adapters ([`Llama::load_lora`],
//!   [`Llama::save_lora`]);
//! - [`scoring`]: zero-shot classification, by the next-token logits of the label words
//!   ([`LabelWords`]) or by greedy generation with answer parsing;
//! - [`reference`]: comparison with PyTorch/transformers reference fixtures.
//!
//! Modules depend on each other in one direction: `error` and the format parser `gguf` at the bottom,
//! then `layers`, `llama`, `checkpoint`, and scoring and prompts on top (training objectives live in
//! polarity-finetune, above the trainer).
//!
//! ```no_run
//! use burn::backend::NdArray;
//! use polarity_core::Sentiment;
//! use polarity_llama::{LabelWords, Llama, LlamaError};
//!
//! # fn main() -> Result<(), LlamaError> {
//! let device = Default::default();
//! let path = std::path::Path::new("../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf");
//! let (model, tokenizer) = Llama::<NdArray>::from_gguf(path, &device)?;
//!
//! let prompt = "Review: A quiet, moving film.\nAnswer (positive or negative):";
//! let ids = tokenizer.encode(prompt)?;
//! let labels = LabelWords::from_tokenizer(&tokenizer)?;
//! let scores = labels.scores(&model, &[ids], &device); // [1, 2]: negative, positive
//! let [negative, positive] = scores.into_data().to_vec::<f32>().unwrap()[..] else { unreachable!() };
//! let answer = if positive > negative { Sentiment::Positive } else { Sentiment::Negative };
//! println!("{answer}");
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod checkpoint;
mod error;
pub mod gguf;
pub mod layers;
pub mod llama;
mod prompt;
pub mod reference;
pub mod scoring;
mod tokenizer;

pub use checkpoint::{ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, hf_name_of_gguf_tensor};
pub use error::LlamaError;
pub use layers::{
    BaseLinear, LoraAdapter, LoraConfig, LoraLinear, QuantFormat, QuantizedEmbedding, QuantizedLinear, QuantizedMatrix,
    TokenEmbedding, WeightMemory, lora, quant,
};
pub use llama::{
    IGNORE_INDEX, LLAMA_DEFAULT_TARGET_MODULES, LLAMA_TARGET_MODULES, Llama, Llama3RopeScaling, LlamaConfig,
    causal_lm_loss,
};
pub use polarity_checkpoint::{CheckpointError, LoadReport, TensorInfo};
pub use prompt::PromptEncoder;
pub use scoring::{GeneratedAnswers, LabelWords, generate_answers, generate_answers_for_ids, parse_answer};
pub use tokenizer::{GgufPreTokenizer, LLAMA3_SPLIT_REGEX, LlamaTokenizer};
