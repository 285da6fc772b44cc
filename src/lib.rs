//! # polarity
//!
//! Fine-tune and benchmark transformer sentiment classifiers on IMDB, in Rust with
//! [burn](https://burn.dev), and answer one practical question with measured numbers: *which model gives
//! the best accuracy for the latency and cost I can afford?*
//!
//! This crate gathers the workspace's crates under one roof for the examples and benches; depend on
//! the individual crates to take only what you need:
//!
//! | module | crate | job |
//! |---|---|---|
//! | (root) | `polarity-core` | labels, examples, predictions, batches, the `Classifier` / `FineTuner` / `ExampleSource` traits, backends |
//! | [`hub`] | `polarity-hub` | hub ids or local directories, cache first, offline-aware |
//! | [`kernels`] | `polarity-kernels` | the models' ops: fused CPU kernels, attention, mixed-precision autocast |
//! | [`data`] | `polarity-data` | IMDB from the hub, aclImdb folders, CSV/parquet; subsets, splits, statistics |
//! | [`tokenize`] | `polarity-tokenize` | tokenizer.json, truncation, bucketing, padding, prompts |
//! | [`metrics`] | `polarity-metrics` | accuracy, per-class P/R/F1, macro-F1, confusion matrix |
//! | [`encoder`] | `polarity-encoder` | BERT and DistilBERT classifiers, HF weights in and out |
//! | [`llama`] | `polarity-llama` | Llama causal LMs, GGUF, LoRA adapters, label-word scoring |
//! | [`train`] | `polarity-train` | fine-tuning with per-epoch evaluation and resumable checkpoints |
//! | [`finetune`] | `polarity-finetune` | the recipes: `EncoderFineTune`, `LoraFineTune`, run reports |
//! | [`bench`] | `polarity-bench` | the benchmark harness: throughput, latency percentiles, memory, hardware record, reference workloads |

pub use polarity_bench as bench;
pub use polarity_core::*;
pub use polarity_data as data;
pub use polarity_encoder as encoder;
pub use polarity_finetune as finetune;
pub use polarity_hub as hub;
pub use polarity_kernels as kernels;
pub use polarity_llama as llama;
pub use polarity_metrics as metrics;
pub use polarity_tokenize as tokenize;
pub use polarity_train as train;
