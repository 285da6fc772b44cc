//! Resumable checkpoints: model, optimiser state, schedule position and data position.
//!
//! Layout of a checkpoint directory (`CheckpointConfig::dir`):
//!
//! ```text
//! latest                     the name of the newest complete checkpoint ("checkpoint-120")
//! checkpoint-120/
//!     model.mpk              the model record (burn NamedMpkFileRecorder, full precision)
//!     optimizer-decay.mpk    AdamW state of the weight-decayed parameters
//!     optimizer-no-decay.mpk AdamW state of biases and norm weights
//!     trainer_state.json     epoch, step, loss sums, history, best epoch, config and data fingerprint
//! best-epoch-2.mpk           the best epoch's model (when a best metric is set)
//! ```
//!
//! A checkpoint is written into a temporary folder and renamed into place, and `latest` is replaced
//! atomically afterwards, so a run killed while saving leaves the previous checkpoint usable. The
//! learning-rate schedule is a function of the global step and the batch order a function of
//! `(seed, epoch)`, so `(epoch, steps_in_epoch, global_step)` is the whole data/schedule position;
//! dropout is reseeded from `(seed, step)` before every step.

use std::fs;
use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use burn::optim::Optimizer;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::AutodiffBackend;
use polarity_core::EpochReport;
use polarity_metrics::ClassificationReport;
use polarity_tokenize::TokenizedExample;
use serde::{Deserialize, Serialize};

use crate::{LossScaler, TrainError, TrainerConfig};

/// The model record in a checkpoint folder.
pub const MODEL_FILE: &str = "model";
/// The optimiser state of the weight-decayed parameters.
pub const OPTIMIZER_DECAY_FILE: &str = "optimizer-decay";
/// The optimiser state of the parameters without weight decay.
pub const OPTIMIZER_NO_DECAY_FILE: &str = "optimizer-no-decay";
/// The trainer's state.
pub const STATE_FILE: &str = "trainer_state.json";
/// The file naming the newest checkpoint.
pub const LATEST_FILE: &str = "latest";

const FORMAT: u32 = 1;

type FileRecorder = NamedMpkFileRecorder<FullPrecisionSettings>;

/// What identifies the data a run trains on: counts and a hash of the token ids and labels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Fingerprint {
    pub train_examples: usize,
    pub train_hash: u64,
    pub eval_examples: Option<usize>,
    pub eval_hash: Option<u64>,
}

fn hash_examples(examples: &[TokenizedExample]) -> u64 {
    // FNV-1a over lengths, ids and labels: cheap, stable across platforms and Rust versions.
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    let mut eat = |value: u64| {
        for byte in value.to_le_bytes() {
            hash ^= byte as u64;
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for example in examples {
        eat(example.tokens.len() as u64);
        for &id in &example.tokens.ids {
            eat(id as u64);
        }
        eat(example.label.index() as u64);
    }
    hash
}

impl Fingerprint {
    pub fn of(train: &[TokenizedExample], eval: Option<&[TokenizedExample]>) -> Self {
        Self {
            train_examples: train.len(),
            train_hash: hash_examples(train),
            eval_examples: eval.map(<[_]>::len),
            eval_hash: eval.map(hash_examples),
        }
    }
}

/// The best epoch so far.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Best {
    /// 1-based epoch.
    pub epoch: usize,
    /// Its metric value.
    pub value: f64,
}

/// Everything but tensors that a resumed run needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct TrainState {
    pub format: u32,
    pub config: serde_json::Value,
    pub data: Fingerprint,
    pub total_steps: usize,
    /// 0-based epoch in progress (`epochs` once finished).
    pub epoch: usize,
    /// Optimiser steps completed in that epoch.
    pub steps_in_epoch: usize,
    /// Optimiser steps completed in the run.
    pub global_step: usize,
    /// Sum of the step losses of the epoch in progress.
    pub epoch_loss_sum: f64,
    /// Training examples seen in the epoch in progress.
    pub epoch_samples: usize,
    /// Training seconds of the epoch in progress.
    pub epoch_train_seconds: f64,
    pub history: Vec<EpochReport>,
    pub eval_reports: Vec<ClassificationReport>,
    pub best: Option<Best>,
    /// The f16 loss scale and its bookkeeping (f16 runs only).
    #[serde(default)]
    pub loss_scaler: Option<LossScaler>,
}

impl TrainState {
    pub fn fresh(config: &TrainerConfig, data: Fingerprint, total_steps: usize) -> Self {
        Self {
            format: FORMAT,
            config: config.trajectory(),
            data,
            total_steps,
            epoch: 0,
            steps_in_epoch: 0,
            global_step: 0,
            epoch_loss_sum: 0.0,
            epoch_samples: 0,
            epoch_train_seconds: 0.0,
            history: Vec::new(),
            eval_reports: Vec::new(),
            best: None,
            loss_scaler: config
                .precision
                .needs_loss_scaling()
                .then(|| LossScaler::new(config.initial_loss_scale, 2000)),
        }
    }

    /// An error unless `self` (loaded from `path`) continues the run `fresh` describes.
    pub fn check_resumes(&self, fresh: &TrainState, path: &Path) -> Result<(), TrainError> {
        let mismatch = |what: String| Err(TrainError::ResumeMismatch { path: path.to_path_buf(), what });
        if self.format != FORMAT {
            return mismatch(format!("checkpoint format {} (this build reads {FORMAT})", self.format));
        }
        if self.config != fresh.config {
            let (saved, now) = (&self.config, &fresh.config);
            let keys: std::collections::BTreeSet<&String> =
                saved.as_object().into_iter().chain(now.as_object()).flat_map(|map| map.keys()).collect();
            let differences: Vec<String> = keys
                .into_iter()
                .filter(|key| saved.get(key.as_str()) != now.get(key.as_str()))
                .map(|key| {
                    let show = |v: Option<&serde_json::Value>| v.map_or_else(|| "unset".to_string(), |v| v.to_string());
                    format!(
                        "{key} {} (checkpoint) vs {} (now)",
                        show(saved.get(key.as_str())),
                        show(now.get(key.as_str()))
                    )
                })
                .collect();
            return mismatch(format!("the configuration differs: {}", differences.join(", ")));
        }
        if self.data != fresh.data {
            return mismatch(format!(
                "the checkpoint was written for different data: {:?} vs now {:?}",
                self.data, fresh.data
            ));
        }
        if self.total_steps != fresh.total_steps {
            return mismatch(format!("{} total steps vs now {}", self.total_steps, fresh.total_steps));
        }
        Ok(())
    }
}

/// The name of the best-model file of 1-based `epoch` (without the recorder's extension).
pub(crate) fn best_file(dir: &Path, epoch: usize) -> PathBuf {
    dir.join(format!("best-epoch-{epoch}"))
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> TrainError + '_ {
    move |e| TrainError::checkpoint(path, e)
}

/// The newest complete checkpoint in `dir`, if any: the one `latest` names, or, should that be
/// missing (a run killed while replacing a checkpoint), the complete `checkpoint-<step>` with the
/// highest step.
pub fn latest_checkpoint(dir: &Path) -> Result<Option<PathBuf>, TrainError> {
    let latest = dir.join(LATEST_FILE);
    match fs::read_to_string(&latest) {
        Ok(name) => {
            let path = dir.join(name.trim());
            if path.join(STATE_FILE).is_file() {
                return Ok(Some(path));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(TrainError::checkpoint(&latest, e)),
    }
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(TrainError::checkpoint(dir, e)),
    };
    let mut newest: Option<(usize, PathBuf)> = None;
    for entry in entries {
        let path = entry.map_err(io(dir))?.path();
        let step = path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.strip_prefix("checkpoint-"))
            .and_then(|step| step.parse::<usize>().ok());
        if let Some(step) = step
            && path.join(STATE_FILE).is_file()
            && newest.as_ref().is_none_or(|(newest_step, _)| step > *newest_step)
        {
            newest = Some((step, path));
        }
    }
    Ok(newest.map(|(_, path)| path))
}

pub(crate) fn load_state(checkpoint: &Path) -> Result<TrainState, TrainError> {
    let path = checkpoint.join(STATE_FILE);
    let text = fs::read_to_string(&path).map_err(io(&path))?;
    serde_json::from_str(&text).map_err(|e| TrainError::checkpoint(&path, format!("not a trainer state: {e}")))
}

/// Loads a model record saved at `path` (without extension) into `model`.
pub(crate) fn load_model<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: M,
    path: &Path,
    device: &B::Device,
) -> Result<M, TrainError> {
    let record = FileRecorder::new()
        .load::<M::Record>(path.to_path_buf(), device)
        .map_err(|e| TrainError::checkpoint(path, e))?;
    Ok(model.load_record(record))
}

pub(crate) fn save_model<B: AutodiffBackend, M: AutodiffModule<B>>(model: &M, path: &Path) -> Result<(), TrainError> {
    FileRecorder::new()
        .record(model.clone().into_record(), path.to_path_buf())
        .map_err(|e| TrainError::checkpoint(path, e))
}

pub(crate) fn load_optimizer<B: AutodiffBackend, M: AutodiffModule<B>, O: Optimizer<M, B>>(
    optimizer: O,
    path: &Path,
    device: &B::Device,
) -> Result<O, TrainError> {
    let record = FileRecorder::new()
        .load::<O::Record>(path.to_path_buf(), device)
        .map_err(|e| TrainError::checkpoint(path, e))?;
    Ok(optimizer.load_record(record))
}

fn save_optimizer<B: AutodiffBackend, M: AutodiffModule<B>, O: Optimizer<M, B>>(
    optimizer: &O,
    path: &Path,
) -> Result<(), TrainError> {
    FileRecorder::new().record(optimizer.to_record(), path.to_path_buf()).map_err(|e| TrainError::checkpoint(path, e))
}

/// Writes `checkpoint-<step>/` atomically, points `latest` at it and prunes old checkpoints and
/// best-model files the new checkpoint no longer refers to. Returns the checkpoint's path.
pub(crate) fn save<B: AutodiffBackend, M: AutodiffModule<B>, O: Optimizer<M, B>>(
    dir: &Path,
    keep_last: usize,
    state: &TrainState,
    model: &M,
    decay: &O,
    no_decay: &O,
) -> Result<PathBuf, TrainError> {
    fs::create_dir_all(dir).map_err(io(dir))?;
    let name = format!("checkpoint-{}", state.global_step);
    let tmp = dir.join(format!(".{name}.tmp"));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    save_model::<B, M>(model, &tmp.join(MODEL_FILE))?;
    save_optimizer::<B, M, O>(decay, &tmp.join(OPTIMIZER_DECAY_FILE))?;
    save_optimizer::<B, M, O>(no_decay, &tmp.join(OPTIMIZER_NO_DECAY_FILE))?;
    let state_path = tmp.join(STATE_FILE);
    let json = serde_json::to_string_pretty(state).map_err(|e| TrainError::checkpoint(&state_path, e))?;
    fs::write(&state_path, json).map_err(io(&state_path))?;

    let path = dir.join(&name);
    if path.exists() {
        fs::remove_dir_all(&path).map_err(io(&path))?;
    }
    fs::rename(&tmp, &path).map_err(io(&path))?;
    let latest_tmp = dir.join(format!(".{LATEST_FILE}.tmp"));
    fs::write(&latest_tmp, &name).map_err(io(&latest_tmp))?;
    fs::rename(&latest_tmp, dir.join(LATEST_FILE)).map_err(io(dir))?;

    prune(dir, keep_last, state.global_step, state.best.map(|b| b.epoch))?;
    Ok(path)
}

fn prune(dir: &Path, keep_last: usize, newest: usize, best_epoch: Option<usize>) -> Result<(), TrainError> {
    let mut steps = Vec::new();
    let mut stale_bests = Vec::new();
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(step) = name.strip_prefix("checkpoint-").and_then(|s| s.parse::<usize>().ok()) {
            if step <= newest {
                steps.push(step);
            }
        } else if let Some(epoch) =
            name.strip_prefix("best-epoch-").and_then(|s| s.strip_suffix(".mpk")).and_then(|s| s.parse::<usize>().ok())
            && Some(epoch) != best_epoch
        {
            stale_bests.push(entry.path());
        }
    }
    steps.sort_unstable();
    let excess = steps.len().saturating_sub(keep_last);
    for step in &steps[..excess] {
        let path = dir.join(format!("checkpoint-{step}"));
        fs::remove_dir_all(&path).map_err(io(&path))?;
    }
    for path in stale_bests {
        fs::remove_file(&path).map_err(io(&path))?;
    }
    Ok(())
}

/// Saves the best model of 1-based `epoch` next to the checkpoints.
pub(crate) fn save_best<B: AutodiffBackend, M: AutodiffModule<B>>(
    dir: &Path,
    epoch: usize,
    model: &M,
) -> Result<(), TrainError> {
    fs::create_dir_all(dir).map_err(io(dir))?;
    save_model::<B, M>(model, &best_file(dir, epoch))
}
