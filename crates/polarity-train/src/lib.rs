//! The shared trainer of polarity: what Hugging Face's `Trainer` does for sequence classification,
//! in burn, generic over the autodiff backend (training is a type-level choice: `Autodiff<B>`).
//!
//! One optimiser step of [`Trainer::fit`]:
//!
//! 1. the backend is reseeded from `(seed, step)` (dropout), so a run is a pure function of its seed
//!    and a resumed run replays exactly what an uninterrupted one does;
//! 2. `grad_accum` micro-batches, each loss weighted by its share of the step's examples, so that
//!    accumulating two micro-batches of 4 equals one batch of 8 (burn's
//!    [`GradientsAccumulator`](burn::optim::GradientsAccumulator) sums them);
//!    a non-finite loss stops the run with [`TrainError::NonFiniteLoss`] naming the step;
//! 3. clipping by the **global** gradient norm ([`clip_grad_norm`], like `torch.nn.utils.clip_grad_norm_`;
//!    burn's own `GradientClipping::Norm` clips each parameter separately);
//! 4. AdamW (burn's [`AdamWConfig`](burn::optim::AdamWConfig)) at the learning rate of
//!    [`LinearWarmupDecay`] (HF's `get_linear_schedule_with_warmup`, a burn `LrScheduler`), with HF's
//!    parameter groups: biases and LayerNorm weights get no weight decay ([`ParamGroups`]). burn's
//!    AdamW has no parameter groups, so the trainer runs two AdamW instances, one per group.
//!
//! With [`TrainerConfig::precision`] set to bf16 or f16 the forward passes (training and evaluation)
//! run under [`polarity_kernels::autocast`]: products in half precision, parameters, gradients and
//! optimiser state in f32 (HF's `--bf16` / `--fp16`). f16 adds dynamic loss scaling ([`LossScaler`],
//! PyTorch's `GradScaler`): a step whose scaled gradients overflow is skipped and the scale halved,
//! instead of stopping the run.
//!
//! Batches are length-bucketed for training ([`TrainOrder`], [`polarity_tokenize::LengthBucketed`],
//! reseeded every epoch) and in order for evaluation. After each epoch the model is evaluated
//! (accuracy, macro-F1 via [`polarity_metrics`]), an [`EpochReport`](polarity_core::EpochReport) is
//! recorded and, with [`TrainerConfig::best_metric`], the best epoch's model is kept and returned
//! (HF's `load_best_model_at_end`). With [`CheckpointConfig`] the run writes resumable checkpoints
//! (model, both optimisers' state, schedule and data position) every N steps and at every epoch end
//! (see [`checkpoint`]); an indicatif progress bar shows loss, learning rate, gradient norm and
//! samples/s.
//!
//! Data parallelism ([`Trainer::with_collective`], [`Collective`]): each rank reads its share of every
//! global batch of `batch_size x world_size`, the trainable parameters' gradients are summed over the
//! ranks between step 2 and 3 (one reduction per optimiser step, in module order), evaluation is sharded
//! and merged, and rank 0 alone writes checkpoints. Ranks are threads of one process ([`LocalGroup`]) or
//! MPI processes (`MpiCollective`, feature `mpi`; [`world_from_env`] finds them under `mpirun`).
//!
//! The model contract is the [`Objective`] trait: a scalar loss for a micro-batch of
//! [`TokenizedExample`](polarity_tokenize::TokenizedExample)s, and class scores `[batch, 2]` for
//! evaluation ([`BatchScorer`]). [`CrossEntropyObjective`] implements it for every
//! [`ClassScorer`](polarity_core::ClassScorer) (encoder classifiers); a causal LM brings its own
//! objective (say, next-token cross-entropy on the answer's label word) and reuses everything else.
//! [`TextFineTuner`] implements polarity-core's [`FineTuner`](polarity_core::FineTuner) on top, and
//! its result is a text [`Classifier`](polarity_core::Classifier) ([`TextClassifier`]).
//!
//! Not taken from burn-train: its `Learner` checkpoints per epoch only (no mid-epoch resume), clips
//! per parameter, has no parameter groups and renders its own TUI; the pieces used here are
//! burn-optim's (AdamW, the optimiser adaptor and its records, `GradientsParams`,
//! `GradientsAccumulator`, the `LrScheduler` trait) and burn's file recorders.
//!
//! Where this differs from HF Trainer: micro-batch losses are weighted by example count (HF divides
//! by `gradient_accumulation_steps`; the same unless the last micro-batch is short); evaluation runs
//! once per epoch (HF's `eval_strategy="epoch"`, no `eval_steps`); checkpoints hold the whole model
//! record, frozen parameters included; dropout draws from burn's RNG, not torch's.
//!
//! ```
//! use burn::backend::{Autodiff, NdArray};
//! use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
//! use burn::prelude::*;
//! use polarity_core::{ClassScorer, Sentiment, TokenBatch};
//! use polarity_tokenize::{TokenIds, TokenizedExample};
//! use polarity_train::{CrossEntropyObjective, Trainer, TrainerConfig, Warmup};
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
//! type B = Autodiff<NdArray<f32>>;
//! let device = Default::default();
//! let model = Bag::<B> {
//!     embedding: EmbeddingConfig::new(8, 4).init(&device),
//!     head: LinearConfig::new(4, 2).init(&device),
//! };
//! // Token 1 means positive, token 2 negative (0 is padding).
//! let example = |token: u32, label| TokenizedExample {
//!     tokens: TokenIds { ids: vec![3, token, 4], type_ids: vec![0; 3] },
//!     label,
//! };
//! let data: Vec<TokenizedExample> =
//!     (0..16).map(|i| if i % 2 == 0 { example(1, Sentiment::Positive) } else { example(2, Sentiment::Negative) }).collect();
//!
//! let config = TrainerConfig::default()
//!     .with_epochs(5)
//!     .with_batch_size(4)
//!     .with_learning_rate(0.05)
//!     .with_warmup(Warmup::Ratio(0.1))
//!     .with_progress(false);
//! let outcome = Trainer::<B>::new(config, device).fit(model, &CrossEntropyObjective::new(0), &data, Some(&data))?;
//! assert_eq!(outcome.history.len(), 5);
//! assert_eq!(outcome.history.last().unwrap().eval_accuracy, Some(1.0));
//! # Ok::<(), polarity_train::TrainError>(())
//! ```

#![warn(missing_docs)]

pub mod checkpoint;
mod config;
mod distributed;
mod error;
mod eval;
mod finetune;
mod grads;
#[cfg(feature = "mpi")]
mod mpi;
mod objective;
mod scaler;
mod schedule;
mod trainer;

pub use config::{
    BestMetric, CheckpointConfig, MAX_BATCH_SIZE, MAX_CHUNK_BATCHES, MAX_EPOCHS, MAX_GRAD_ACCUM, TrainOrder,
    TrainerConfig, Warmup,
};
pub use distributed::{
    Collective, LocalGroup, LocalRank, SingleProcess, WORLD_SIZE_VARIABLES, all_reduce_counts, shard_range,
    world_from_env,
};
pub use error::TrainError;
pub use eval::{Evaluation, evaluate, evaluate_sharded, predict};
pub use finetune::{TextClassifier, TextFineTuner, tokenize_examples};
pub use grads::{ParamGroups, ParamInfo, clip_factor, clip_grad_norm, grad_norm, scale_grads, split_grads};
#[cfg(feature = "mpi")]
pub use mpi::MpiCollective;
pub use objective::{BatchScorer, CrossEntropyObjective, Objective, label_tensor};
pub use scaler::LossScaler;
pub use schedule::LinearWarmupDecay;
pub use trainer::{TrainOutcome, Trainer};
