//! Llama causal language models in burn, for sentiment classification by prompting and LoRA tuning.
//!
//! - [`llama`]: the model ([`Llama`], configured by [`LlamaConfig`] from a Hugging Face `config.json`):
//!   RMSNorm, SwiGLU, grouped-query attention, RoPE with `llama3` scaling, tied or untied embeddings,
//!   causal + padding masks for right-padded batches;
//! - checkpoints: Hugging Face safetensors, single or sharded, by hub id or directory
//!   ([`Llama::from_pretrained`]), and llama.cpp GGUF files ([`Llama::from_gguf`], reader in [`gguf`]),
//!   with the GGUF tokenizer rebuilt as a [`tokenizers::Tokenizer`] ([`LlamaTokenizer`]);
//! - [`lora`]: PEFT-compatible LoRA adapters (attach, train only the adapters, save/load, merge);
//! - [`quant`]: QLoRA, a frozen base kept quantised in memory (NF4, or the GGUF file's own blocks)
//!   while the adapters train ([`Llama::quantize_frozen_base`], [`Llama::from_gguf_quantized`]);
//! - [`scoring`]: zero-shot classification, by the next-token logits of the label words
//!   ([`LabelWords`]) or by greedy generation with answer parsing;
//! - [`reference`]: comparison with PyTorch/transformers reference fixtures.
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

mod error;
pub mod gguf;
pub mod llama;
mod load;
pub mod lora;
mod prompt;
pub mod quant;
pub mod reference;
pub mod scoring;
mod tokenizer;

pub use error::LlamaError;
pub use llama::{IGNORE_INDEX, Llama, Llama3RopeScaling, LlamaConfig, causal_lm_loss};
pub use load::hf_name_of_gguf_tensor;
pub use lora::{BaseLinear, LoraAdapter, LoraConfig, LoraLinear};
pub use prompt::PromptEncoder;
pub use quant::{QuantFormat, QuantizedLinear, QuantizedMatrix, WeightMemory};
pub use scoring::{
    GeneratedAnswers, LabelWords, generate_answers, generate_answers_for_ids, parse_answer, right_padded_batch,
};
pub use tokenizer::LlamaTokenizer;
