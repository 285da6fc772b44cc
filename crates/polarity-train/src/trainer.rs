//! The training loop.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::lr_scheduler::LrScheduler;
use burn::module::{AutodiffModule, ParamId};
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use polarity_core::backend::with_seed;
use polarity_core::{CommunicationReport, EpochReport, TrainingSummary};
use polarity_kernels::autocast::autocast;
use polarity_metrics::ClassificationReport;
use polarity_tokenize::TokenizedExample;

use crate::checkpoint::{self, Best, Fingerprint, ModelSignature, RunShape, TrainState};
use crate::distributed::{Collective, SingleProcess, all_reduce_grads, check_replicas, shard_range};
use crate::eval::evaluate_sharded;
use crate::grads::{ParamGroups, clip_factor, grad_norm, scale_grads, split_grads};
use crate::{BestMetric, LinearWarmupDecay, LossScaler, Objective, TrainError, TrainerConfig};

/// What a training run returns.
#[derive(Debug)]
pub struct TrainOutcome<M> {
    /// The trained model: the best epoch's when [`TrainerConfig::best_metric`] is set and an
    /// evaluation set was given, else the last one.
    pub model: M,
    /// One report per epoch (also those completed before a resume).
    pub history: Vec<EpochReport>,
    /// The evaluation report of each epoch, where an evaluation set was given.
    pub eval_reports: Vec<ClassificationReport>,
    /// The 1-based epoch whose model [`model`](Self::model) is, when the best one was kept.
    pub best_epoch: Option<usize>,
    /// Optimiser steps taken in the whole run.
    pub global_steps: usize,
    /// The checkpoint the run resumed from, if any.
    pub resumed_from: Option<PathBuf>,
    /// f16 runs: the loss scale at the end and the steps skipped because their gradients overflowed.
    pub loss_scaler: Option<LossScaler>,
    /// Data-parallel runs: the bytes and seconds of the gradient reductions.
    pub communication: Option<CommunicationReport>,
}

impl<M> TrainOutcome<M> {
    /// What the run did, without the model: the part of the outcome a report keeps.
    pub fn summary(&self) -> TrainingSummary {
        TrainingSummary {
            history: self.history.clone(),
            best_epoch: self.best_epoch,
            global_steps: self.global_steps,
            loss_scale: self.loss_scaler.map(|scaler| scaler.scale()),
            skipped_steps: self.loss_scaler.map_or(0, |scaler| scaler.skipped_steps()),
            resumed_from: self.resumed_from.clone(),
            communication: self.communication,
        }
    }

    /// Seconds spent training (evaluation and checkpointing excluded), summed over epochs.
    pub fn train_seconds(&self) -> f64 {
        self.summary().train_seconds()
    }

    /// Training examples per second over the whole run.
    pub fn train_samples_per_second(&self) -> f64 {
        self.summary().train_samples_per_second()
    }
}

/// The Hugging Face Trainer loop, generic over the autodiff backend.
///
/// See the [crate documentation](crate) for what a step does and an example.
#[derive(Clone, Debug)]
pub struct Trainer<B: AutodiffBackend> {
    config: TrainerConfig,
    device: B::Device,
    interrupt_after: Option<usize>,
    collective: Arc<dyn Collective>,
}

/// An error unless the model loaded from `file` has the parameters `expected` (the run's model's): a record whose
/// tensors differ in shape from its trainer state is refused before it trains or is exported.
fn check_loaded<B: AutodiffBackend, M: AutodiffModule<B>>(
    expected: &ModelSignature,
    model: &M,
    file: &Path,
) -> Result<(), TrainError> {
    match ModelSignature::of::<B, M>(model).difference(expected) {
        None => Ok(()),
        Some(difference) => Err(TrainError::ResumeMismatch {
            path: file.to_path_buf(),
            what: format!("the record is of another model: {difference}"),
        }),
    }
}

/// A step's dropout seed: a SplitMix64 mix of the run's seed, the step and the rank (rank 0's seeds are
/// those of a single process; other ranks draw other masks for their examples).
fn step_seed(seed: u64, step: usize, rank: usize) -> u64 {
    let seed = seed ^ (rank as u64).wrapping_mul(0xd1b5_4a32_d192_ed03);
    let mut z = seed ^ (step as u64).wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl<B: AutodiffBackend> Trainer<B> {
    /// A trainer running on `device`.
    pub fn new(config: TrainerConfig, device: B::Device) -> Self {
        Self { config, device, interrupt_after: None, collective: Arc::new(SingleProcess) }
    }

    /// Makes this trainer one rank of a data-parallel group (see [`Collective`]): each rank reads its shard
    /// of every global batch of `batch_size x world_size` examples ([`TrainerConfig::batch_size`] is the
    /// batch of one rank, as HF's `per_device_train_batch_size`), the gradients are summed over the ranks
    /// before every optimiser step, evaluation is sharded, and only rank 0 writes checkpoints and draws
    /// the progress bar. Every rank must start from the same model (same weights, seeded).
    pub fn with_collective(mut self, collective: Arc<dyn Collective>) -> Self {
        self.collective = collective;
        self
    }

    /// This trainer's place in its data-parallel group ([`SingleProcess`] unless
    /// [`with_collective`](Self::with_collective) set another).
    pub fn collective(&self) -> &dyn Collective {
        self.collective.as_ref()
    }

    /// The configuration.
    pub fn config(&self) -> &TrainerConfig {
        &self.config
    }

    /// The device.
    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// Stops the run with [`TrainError::Interrupted`] right after global optimiser step `step`, as if
    /// the process had been killed there (checkpoints written up to then stay; nothing else is saved).
    /// For testing resumption.
    pub fn interrupt_after(mut self, step: usize) -> Self {
        self.interrupt_after = Some(step);
        self
    }

    /// Optimiser steps per epoch for `examples` training examples: `ceil(ceil(examples / global batch) /
    /// accum)`, the global batch being `batch_size x world_size` (a last, partial accumulation still makes a
    /// step, as in HF Trainer).
    pub fn steps_per_epoch(&self, examples: usize) -> usize {
        let global_batch = self.config.batch_size.max(1).saturating_mul(self.collective.world_size());
        examples.div_ceil(global_batch).div_ceil(self.config.grad_accum.max(1))
    }

    /// Trains `model` on `train`, evaluating on `eval` after every epoch.
    ///
    /// Each optimiser step: reseed the backend from `(seed, step)` (dropout), run `grad_accum`
    /// micro-batches, each loss weighted by its share of the step's examples (so accumulation equals one
    /// big batch), stop on a non-finite loss, clip the global gradient norm, then AdamW with the
    /// scheduled learning rate: decayed parameters and biases/norm weights in two groups. Forward
    /// passes run under the configured [`precision`](TrainerConfig::precision); with f16 the loss is
    /// scaled and a step whose gradients overflow is skipped ([`LossScaler`]).
    ///
    /// In a data-parallel group ([`with_collective`](Self::with_collective)) every rank calls `fit` with
    /// the same data; a rank that fails tells the others, whose runs then stop with
    /// [`TrainError::Collective`] instead of waiting for it.
    pub fn fit<M, O>(
        &self,
        model: M,
        objective: &O,
        train: &[TokenizedExample],
        eval: Option<&[TokenizedExample]>,
    ) -> Result<TrainOutcome<M>, TrainError>
    where
        M: AutodiffModule<B>,
        O: Objective<B, M>,
    {
        let outcome = self.fit_rank(model, objective, train, eval);
        if let Err(error) = &outcome
            && self.collective.world_size() > 1
        {
            self.collective.abort(&error.to_string());
        }
        outcome
    }

    fn fit_rank<M, O>(
        &self,
        model: M,
        objective: &O,
        train: &[TokenizedExample],
        eval: Option<&[TokenizedExample]>,
    ) -> Result<TrainOutcome<M>, TrainError>
    where
        M: AutodiffModule<B>,
        O: Objective<B, M>,
    {
        let config = &self.config;
        let collective = self.collective.as_ref();
        let (rank, world_size) = (collective.rank(), collective.world_size());
        let writes = rank == 0;
        let global_batch = config.batch_size.checked_mul(world_size).ok_or_else(|| {
            TrainError::InvalidConfig(format!("batch size {} x {world_size} ranks overflows", config.batch_size))
        })?;
        config.validate()?;
        let compute_dtype = config.precision.compute_dtype();
        if train.is_empty() {
            return Err(TrainError::EmptyDataset { which: "training set" });
        }
        if eval.is_some_and(<[_]>::is_empty) {
            return Err(TrainError::EmptyDataset { which: "evaluation set" });
        }
        let lengths: Vec<usize> = train.iter().map(|item| item.tokens.len()).collect();
        let steps_per_epoch = self.steps_per_epoch(train.len());
        let total_steps = steps_per_epoch.checked_mul(config.epochs).ok_or_else(|| {
            TrainError::InvalidConfig(format!(
                "{} epochs of {steps_per_epoch} steps overflow the step counter",
                config.epochs
            ))
        })?;
        let mut schedule = LinearWarmupDecay::new(config.learning_rate, config.warmup.steps(total_steps), total_steps);
        let adamw = |weight_decay: f64| {
            AdamWConfig::new()
                .with_beta_1(config.beta1 as f32)
                .with_beta_2(config.beta2 as f32)
                .with_epsilon(config.epsilon as f32)
                .with_weight_decay(weight_decay as f32)
        };
        let mut decay_optimizer = adamw(config.weight_decay).init::<B, M>();
        let mut plain_optimizer = adamw(0.0).init::<B, M>();

        let mut model = model;
        let signature = ModelSignature::of::<B, M>(&model);
        let mut state =
            TrainState::fresh(config, Fingerprint::of(train, eval), total_steps, signature.clone(), world_size);
        let mut best_model: Option<M> = None;
        let mut resumed_from = None;
        let existing = match &config.checkpoint {
            Some(checkpointing) => checkpoint::latest_checkpoint(&checkpointing.dir)?,
            None => None,
        };
        if let (Some(checkpointing), Some(path)) = (&config.checkpoint, existing) {
            if !checkpointing.resume {
                // A fresh run would prune the earlier run's checkpoints: refuse rather than lose them.
                return Err(TrainError::checkpoint(
                    &checkpointing.dir,
                    format!(
                        "already holds {} of an earlier run; resume it (resume = true, --resume) or choose another \
                         directory",
                        path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into())
                    ),
                ));
            }
            let loaded = checkpoint::load_state(&path)?;
            let run = RunShape { epochs: config.epochs, steps_per_epoch, evaluates: eval.is_some() };
            loaded.check_resumes(&state, &path, run)?;
            let model_file = path.join(checkpoint::MODEL_FILE);
            model = checkpoint::load_model::<B, M>(model, &model_file, &self.device)?;
            check_loaded(&signature, &model, &model_file)?;
            decay_optimizer = checkpoint::load_optimizer::<B, M, _>(
                decay_optimizer,
                &path.join(checkpoint::OPTIMIZER_DECAY_FILE),
                &self.device,
            )?;
            plain_optimizer = checkpoint::load_optimizer::<B, M, _>(
                plain_optimizer,
                &path.join(checkpoint::OPTIMIZER_NO_DECAY_FILE),
                &self.device,
            )?;
            if let Some(best) = loaded.best {
                let file = checkpoint::best_file(&checkpointing.dir, best.epoch);
                let best = checkpoint::load_model::<B, M>(model.clone(), &file, &self.device)?;
                check_loaded(&signature, &best, &file)?;
                best_model = Some(best);
            }
            tracing::info!(checkpoint = %path.display(), step = loaded.global_step, "resuming");
            state = loaded;
            resumed_from = Some(path);
        }
        if world_size > 1 {
            check_replicas::<B, M>(collective, &model)?;
        }
        schedule = schedule.at_step(state.global_step);
        // After a resume the parameter ids are the checkpoint's, so group them only now.
        let no_decay: HashSet<ParamId> = ParamGroups::of::<B, M>(&model).no_decay_ids();

        let bar = self.progress_bar(total_steps, state.global_step, writes);
        let mut communication = (world_size > 1).then_some(CommunicationReport { world_size, ..Default::default() });
        let mut last_checkpoint = resumed_from.clone();

        while state.epoch < config.epochs {
            let epoch = state.epoch;
            let order = config.train_order.batches(&lengths, global_batch, config.seed, epoch)?;
            for step_batches in order.chunks(config.grad_accum).skip(state.steps_in_epoch) {
                let started = Instant::now();
                // Under the process's lock, so never in the middle of another thread's seeded model
                // construction (the generator is one per process on the CPU backends).
                with_seed::<B, _>(&self.device, step_seed(config.seed, state.global_step, rank), || ());
                let step = state.global_step + 1;
                let step_samples: usize = step_batches.iter().map(Vec::len).sum();
                let mut accumulator = GradientsAccumulator::<M>::new();
                let mut single: Option<GradientsParams> = None;
                let mut step_loss = 0.0;
                // f16: the loss is scaled up before the backward pass and the gradients down after.
                let loss_scale = state.loss_scaler.map_or(1.0, |scaler| scaler.scale());
                // Each loss is weighted by its share of the step's examples over all ranks, so that the
                // gradients summed over micro-batches and ranks are those of the whole global batch.
                let weighted = step_batches.len() > 1 || world_size > 1;
                for (micro_batch, global_indices) in step_batches.iter().enumerate() {
                    let indices = &global_indices[shard_range(global_indices.len(), rank, world_size)];
                    if indices.is_empty() {
                        continue;
                    }
                    let items: Vec<&TokenizedExample> = indices.iter().map(|&i| &train[i]).collect();
                    let loss = autocast(compute_dtype, || objective.loss(&model, &items, &self.device))?;
                    if loss.dims() != [1] {
                        return Err(TrainError::Model(format!("the loss has shape {:?}, expected [1]", loss.dims())));
                    }
                    let value: f64 = loss.clone().into_scalar().elem();
                    if !value.is_finite() {
                        return Err(TrainError::NonFiniteLoss { epoch: epoch + 1, step, micro_batch, loss: value });
                    }
                    let weight = items.len() as f64 / step_samples as f64;
                    step_loss += value * weight;
                    let share = if weighted { weight } else { 1.0 };
                    let factor = share * loss_scale;
                    let loss = if factor != 1.0 { loss.mul_scalar(factor) } else { loss };
                    let grads = GradientsParams::from_grads(loss.backward(), &model);
                    if step_batches.len() > 1 {
                        accumulator.accumulate(&model, grads);
                    } else {
                        single = Some(grads);
                    }
                }
                let mut grads = single.unwrap_or_else(|| accumulator.grads());
                if let Some(communication) = communication.as_mut() {
                    let reduce_started = Instant::now();
                    let mut extras = [step_loss as f32];
                    let (summed, bytes) =
                        all_reduce_grads::<B, M>(collective, &model, grads, &mut extras, &self.device)?;
                    grads = summed;
                    step_loss = f64::from(extras[0]);
                    communication.bytes_per_step = bytes;
                    communication.steps += 1;
                    communication.seconds += reduce_started.elapsed().as_secs_f64();
                }
                let norm = grad_norm::<B, M>(&model, &grads) / loss_scale;
                let apply = match state.loss_scaler.as_mut() {
                    Some(scaler) => {
                        let apply = scaler.update(norm.is_finite());
                        if !apply {
                            tracing::warn!(
                                step,
                                scale = scaler.scale(),
                                "f16 gradients overflowed: step skipped, loss scale halved"
                            );
                        }
                        apply
                    }
                    None if !norm.is_finite() => {
                        return Err(TrainError::NonFiniteGradNorm { epoch: epoch + 1, step, norm });
                    }
                    None => true,
                };
                // The schedule advances on skipped steps too: it stays a function of the global step.
                let lr = schedule.step();
                if apply {
                    let factor = config.max_grad_norm.map_or(1.0, |max_norm| clip_factor(norm, max_norm)) / loss_scale;
                    let grads = if factor != 1.0 { scale_grads::<B, M>(&model, grads, factor) } else { grads };
                    let (decayed, plain) = split_grads::<B, M>(&model, grads, &no_decay);
                    model = decay_optimizer.step(lr, model, decayed);
                    model = plain_optimizer.step(lr, model, plain);
                }

                state.global_step = step;
                state.steps_in_epoch += 1;
                state.epoch_loss_sum += step_loss;
                state.epoch_samples += step_samples;
                state.epoch_train_seconds += started.elapsed().as_secs_f64();
                bar.inc(1);
                bar.set_message(format!(
                    "epoch {}/{} loss {:.4} lr {:.2e} grad-norm {:.3} {:.1} samples/s",
                    epoch + 1,
                    config.epochs,
                    state.epoch_loss_sum / state.steps_in_epoch as f64,
                    lr,
                    norm,
                    state.epoch_samples as f64 / state.epoch_train_seconds.max(f64::MIN_POSITIVE),
                ));
                tracing::debug!(step, loss = step_loss, lr, grad_norm = norm, "step");

                if let Some(checkpointing) = &config.checkpoint
                    && writes
                    && checkpointing.every_steps > 0
                    && step.is_multiple_of(checkpointing.every_steps)
                {
                    last_checkpoint = Some(checkpoint::save::<B, M, _>(
                        &checkpointing.dir,
                        checkpointing.keep_last,
                        &state,
                        &model,
                        &decay_optimizer,
                        &plain_optimizer,
                    )?);
                }
                if self.interrupt_after == Some(step) {
                    bar.abandon();
                    return Err(TrainError::Interrupted { step, checkpoint: last_checkpoint });
                }
            }

            // End of epoch: evaluate, report, keep the best.
            let evaluation = match eval {
                Some(data) => Some(autocast(config.evaluation_precision().compute_dtype(), || {
                    evaluate_sharded::<B::InnerBackend, M::InnerModule, O>(
                        collective,
                        objective,
                        &model.valid(),
                        data,
                        config.eval_batch_size,
                        &self.device,
                    )
                })?),
                None => None,
            };
            // The bf16 copies packed for this evaluation belong to weights the next step replaces.
            polarity_kernels::clear_packed_weights();
            let report = EpochReport {
                epoch: epoch + 1,
                train_loss: state.epoch_loss_sum / state.steps_in_epoch.max(1) as f64,
                eval_accuracy: evaluation.as_ref().map(|e| e.report.accuracy),
                eval_macro_f1: evaluation.as_ref().map(|e| e.report.macro_f1),
                train_seconds: state.epoch_train_seconds,
                train_samples_per_second: state.epoch_samples as f64 / state.epoch_train_seconds.max(f64::MIN_POSITIVE),
            };
            bar.println(format!(
                "epoch {}/{}: train loss {:.4}{}, {:.1}s, {:.1} samples/s",
                report.epoch,
                config.epochs,
                report.train_loss,
                match (report.eval_accuracy, report.eval_macro_f1) {
                    (Some(accuracy), Some(f1)) => format!(", eval accuracy {accuracy:.4}, macro-F1 {f1:.4}"),
                    _ => String::new(),
                },
                report.train_seconds,
                report.train_samples_per_second,
            ));
            tracing::info!(?report, "epoch done");
            if let (Some(metric), Some(evaluation)) = (config.best_metric, &evaluation) {
                let value = match metric {
                    BestMetric::Accuracy => evaluation.report.accuracy,
                    BestMetric::MacroF1 => evaluation.report.macro_f1,
                };
                if state.best.is_none_or(|best| value > best.value) {
                    state.best = Some(Best { epoch: epoch + 1, value });
                    if let Some(checkpointing) = &config.checkpoint
                        && writes
                    {
                        checkpoint::save_best::<B, M>(&checkpointing.dir, epoch + 1, &model)?;
                    }
                    best_model = Some(model.clone());
                }
            }
            state.history.push(report);
            if let Some(evaluation) = evaluation {
                state.eval_reports.push(evaluation.report);
            }
            state.epoch += 1;
            state.steps_in_epoch = 0;
            state.epoch_loss_sum = 0.0;
            state.epoch_samples = 0;
            state.epoch_train_seconds = 0.0;
            if let Some(checkpointing) = &config.checkpoint
                && writes
            {
                last_checkpoint = Some(checkpoint::save::<B, M, _>(
                    &checkpointing.dir,
                    checkpointing.keep_last,
                    &state,
                    &model,
                    &decay_optimizer,
                    &plain_optimizer,
                )?);
            }
        }
        bar.finish_and_clear();

        let best_epoch = match (config.best_metric, best_model) {
            (Some(_), Some(best)) => {
                model = best;
                state.best.map(|b| b.epoch)
            }
            _ => None,
        };
        Ok(TrainOutcome {
            model,
            history: state.history,
            eval_reports: state.eval_reports,
            best_epoch,
            global_steps: state.global_step,
            resumed_from,
            loss_scaler: state.loss_scaler,
            communication,
        })
    }

    /// The run's progress bar, drawn when configured and `draws` (rank 0 of a group).
    fn progress_bar(&self, total_steps: usize, position: usize, draws: bool) -> ProgressBar {
        let bar = ProgressBar::with_draw_target(
            Some(total_steps as u64),
            if self.config.progress && draws { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() },
        );
        let style = ProgressStyle::with_template("[{elapsed_precise}] {wide_bar} {pos}/{len} steps (eta {eta}) {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_position(position as u64);
        bar
    }
}

#[cfg(test)]
mod tests {
    use super::step_seed;

    #[test]
    fn step_seeds_differ_by_step_and_seed() {
        assert_ne!(step_seed(42, 0, 0), step_seed(42, 1, 0));
        assert_ne!(step_seed(42, 0, 0), step_seed(43, 0, 0));
        assert_ne!(step_seed(42, 0, 0), step_seed(42, 0, 1));
        assert_eq!(step_seed(42, 7, 1), step_seed(42, 7, 1));
    }
}
