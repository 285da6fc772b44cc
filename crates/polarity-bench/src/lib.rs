//! The benchmark harness of polarity: how fast a classifier runs, on what, with the numbers to compare.
//!
//! - [`InferenceBench`] (a serde config: batch size, warm-up batches, repeats) runs a workload batch by
//!   batch and times every batch, for any [`BatchScorer`](polarity_train::BatchScorer) on tokenized
//!   examples ([`measure_scorer`](InferenceBench::measure_scorer)), any text
//!   [`Classifier`](polarity_core::Classifier) ([`measure_classifier`](InferenceBench::measure_classifier),
//!   tokenization included) and greedy generation with a causal LM
//!   ([`measure_generation`](InferenceBench::measure_generation), answers parsed, unparseable ones
//!   counted). It returns an [`InferenceMeasurement`]: samples/s and tokens/s ([`Throughput`]), per-batch
//!   latency ([`LatencySummary`]: mean, p50/p95/p99, min, max), peak RSS and, in `cuda` builds, device
//!   memory.
//! - [`HardwareRecord`] is what goes next to every number: CPU model, cores, rayon threads, SIMD level
//!   (and AMX), GPU name, backend, precision, burn version (from Cargo.lock at build time), git commit,
//!   rustc version, date.
//! - [`Workload`] defines the reference inference benchmark: [`Workload::encoder_reference`] (500 IMDB
//!   test reviews, batch 32, max length 256) and [`Workload::causal_lm_reference`] (100 reviews, label
//!   scoring at batch 8, generation at batch 1 with at most 4 new tokens). A workload draws its reviews
//!   ([`Workload::draw`]) and records their row numbers ([`ReviewIds`]) so a PyTorch script can take the
//!   same ones.
//! - [`write_chart`] draws the comparison chart of model rows ([`ChartPoint`]: label, samples/s, accuracy)
//!   as SVG and PNG: accuracy against samples/s on a log axis, rows without a measured accuracy (random
//!   weights) on a band of their own. Its text uses a bundled font (DejaVu Sans), so the PNG renders on a
//!   machine without fonts.
//!
//! Every result type is `Serialize + Deserialize`; errors are one enum, [`BenchError`].
//!
//! Measuring a tiny bag-of-embeddings classifier's class scores (the same call measures MiniLM, BERT or a
//! causal LM's label-word scoring):
//!
//! ```
//! use burn::backend::NdArray;
//! use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
//! use burn::prelude::*;
//! use polarity_bench::{HardwareRecord, InferenceBench};
//! use polarity_core::{ClassScorer, Precision, Sentiment, TokenBatch};
//! use polarity_tokenize::{TokenIds, TokenizedExample};
//! use polarity_train::CrossEntropyObjective;
//!
//! /// Mean of token embeddings, then a linear layer.
//! #[derive(Module, Debug)]
//! struct Bag<B: Backend> {
//!     embedding: Embedding<B>,
//!     head: Linear<B>,
//! }
//!
//! impl<B: Backend> ClassScorer<B> for Bag<B> {
//!     fn class_scores(&self, batch: TokenBatch<B>) -> Tensor<B, 2> {
//!         let mask = batch.attention_mask.float().unsqueeze_dim::<3>(2);
//!         let summed = (self.embedding.forward(batch.input_ids) * mask.clone()).sum_dim(1).squeeze_dim::<2>(1);
//!         self.head.forward(summed / mask.sum_dim(1).squeeze_dim::<2>(1))
//!     }
//! }
//!
//! let device = Default::default();
//! let model = Bag::<NdArray> {
//!     embedding: EmbeddingConfig::new(16, 8).init(&device),
//!     head: LinearConfig::new(8, 2).init(&device),
//! };
//! let data: Vec<TokenizedExample> = (0..10)
//!     .map(|i| TokenizedExample { tokens: TokenIds::new(vec![1, 2 + i % 5, 3]), label: Sentiment::ALL[i as usize % 2] })
//!     .collect();
//!
//! let bench = InferenceBench::new(4).with_warmup_batches(1).with_repeats(2);
//! let measurement = bench.measure_scorer(&CrossEntropyObjective::new(0), &model, &data, &device)?;
//! assert_eq!((measurement.samples, measurement.tokens, measurement.batches), (10, Some(30), 3));
//! assert_eq!(measurement.latency.count, 6);
//! println!("{}\n{measurement}", HardwareRecord::detect("ndarray (cpu)", Precision::F32));
//! # Ok::<(), polarity_bench::BenchError>(())
//! ```

#![warn(missing_docs)]

mod chart;
pub mod compare;
mod error;
mod hardware;
mod inference;
mod timing;
mod workload;

pub use chart::{CHART_SIZE, ChartPoint, render_png, render_svg, write_chart};
pub use error::BenchError;
pub use hardware::{BURN_VERSION, GIT_COMMIT, HardwareRecord, RUSTC_VERSION, SimdLevel, device_memory_bytes};
pub use inference::{GenerationMeasurement, InferenceBench, InferenceMeasurement, MeasuredPath};
/// The process's peak resident memory (Linux), as the recipes' reports record it.
pub use polarity_finetune::peak_rss_bytes;
pub use timing::{LatencySummary, Throughput};
pub use workload::{GenerationWorkload, REFERENCE_SEED, ReviewIds, ReviewSelection, Selection, Workload};
