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
//!     trainer_state.json     epoch, step, loss sums, history, best epoch, config, data fingerprint and the
//!                            model's signature (its type and every parameter's name and shape)
//! best-epoch-2.mpk           the best epoch's model (when a best metric is set)
//! ```
//!
//! A checkpoint is written into a temporary folder and renamed into place, and `latest` is replaced
//! atomically afterwards, so a run killed while saving leaves the previous checkpoint usable. The
//! learning-rate schedule is a function of the global step and the batch order a function of
//! `(seed, epoch)`, so `(epoch, steps_in_epoch, global_step)` is the whole data/schedule position;
//! dropout is reseeded from `(seed, step)` before every step.
//!
//! What a resume checks before it loads anything (each refusal is a [`TrainError`] naming the file and what is
//! wrong; nothing in the directory is changed by a refused resume):
//!
//! - `latest` is read without blocking and must be a regular file of at most [`MAX_LATEST_BYTES`] holding a
//!   `checkpoint-<step>` name: a FIFO, a directory, an absolute path or a name with `..` is refused, never followed;
//!   the folder it names must be a real directory inside the checkpoint directory (not a symbolic link);
//! - every file read (`trainer_state.json`, the `.mpk` records) must be a regular file;
//! - the state's format, configuration, data fingerprint and total steps must match the run;
//! - the state's [`ModelSignature`] must match the model's: the error names the first parameter that differs
//!   (a checkpoint of another model shape is never loaded into this one), and the loaded records are checked
//!   against it again;
//! - the position (epoch, step in epoch, global step, history length, best epoch) must lie inside the run: a state
//!   claiming an epoch or a step past the end is refused, not taken for a finished run.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::optim::Optimizer;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Bool, Int, Tensor};
use polarity_core::EpochReport;
use polarity_hub::files;
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

/// The largest `latest` file read: it holds one `checkpoint-<step>` name.
pub const MAX_LATEST_BYTES: usize = 256;

/// The trainer-state format this build writes and reads (2: with the model signature).
const FORMAT: u32 = 2;

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

/// One parameter of a model: its path in the module tree (`encoder.layers.0.attention.query.weight`) and shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamShape {
    /// The field names from the root module down, joined by dots (vector elements by their index).
    pub name: String,
    /// The parameter's shape.
    pub shape: Vec<usize>,
}

/// What a checkpoint records of its model's architecture: the model's type and every parameter's name and
/// shape, in the module's visiting order. A resume compares it with the model it is given and refuses a
/// checkpoint of another architecture or shape, naming the first parameter that differs.
///
/// Computing it never materialises lazily initialised parameters (their declared shape is read).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSignature {
    /// The model's type name, without its module path and generic arguments (`EncoderClassifier`).
    pub architecture: String,
    /// Every parameter (float, int and bool), in visiting order.
    pub params: Vec<ParamShape>,
}

struct SignatureVisitor {
    path: Vec<String>,
    params: Vec<ParamShape>,
}

impl SignatureVisitor {
    fn push(&mut self, shape: Vec<usize>) {
        self.params.push(ParamShape { name: self.path.join("."), shape });
    }
}

impl<B: burn::tensor::backend::Backend> ModuleVisitor<B> for SignatureVisitor {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.push(param.lazy_shape().to_vec());
    }

    fn visit_int<const D: usize>(&mut self, param: &Param<Tensor<B, D, Int>>) {
        self.push(param.lazy_shape().to_vec());
    }

    fn visit_bool<const D: usize>(&mut self, param: &Param<Tensor<B, D, Bool>>) {
        self.push(param.lazy_shape().to_vec());
    }
}

/// `polarity_encoder::EncoderClassifier<burn_autodiff::Autodiff<..>>` -> `EncoderClassifier`.
fn short_type_name(full: &str) -> String {
    let without_generics = full.split('<').next().unwrap_or(full);
    without_generics.rsplit("::").next().unwrap_or(without_generics).to_string()
}

impl ModelSignature {
    /// The signature of `model`.
    pub fn of<B: burn::tensor::backend::Backend, M: Module<B>>(model: &M) -> Self {
        let mut visitor = SignatureVisitor { path: Vec::new(), params: Vec::new() };
        model.visit(&mut visitor);
        Self { architecture: short_type_name(std::any::type_name::<M>()), params: visitor.params }
    }

    /// `None` when `self` (a checkpoint's) and `model` (this run's) agree, else the first difference, as a
    /// sentence: the architectures, then the first parameter whose name or shape differs, then a missing or
    /// extra parameter.
    pub fn difference(&self, model: &ModelSignature) -> Option<String> {
        if self.architecture != model.architecture {
            return Some(format!(
                "the checkpoint holds a {} model, this run trains a {}",
                self.architecture, model.architecture
            ));
        }
        for (index, (saved, now)) in self.params.iter().zip(&model.params).enumerate() {
            if saved.name != now.name {
                return Some(format!(
                    "parameter {index} is {} {:?} in the checkpoint but {} {:?} in this model",
                    saved.name, saved.shape, now.name, now.shape
                ));
            }
            if saved.shape != now.shape {
                return Some(format!(
                    "parameter {} has shape {:?} in the checkpoint but {:?} in this model",
                    saved.name, saved.shape, now.shape
                ));
            }
        }
        let (saved, now) = (self.params.len(), model.params.len());
        if saved > now {
            return Some(format!(
                "the checkpoint has {saved} parameters, this model {now}: {} is not in this model",
                self.params[now].name
            ));
        }
        if now > saved {
            return Some(format!(
                "the checkpoint has {saved} parameters, this model {now}: {} is not in the checkpoint",
                model.params[saved].name
            ));
        }
        None
    }
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
    /// The model's type and parameter shapes.
    pub model: ModelSignature,
    /// The ranks of the data-parallel group that wrote it (each rank's shard depends on it).
    #[serde(default = "one_rank")]
    pub world_size: usize,
}

fn one_rank() -> usize {
    1
}

/// Where a run's steps fall: what a resumed state's position is checked against.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RunShape {
    pub epochs: usize,
    pub steps_per_epoch: usize,
    /// Whether the run evaluates after every epoch.
    pub evaluates: bool,
}

impl TrainState {
    pub fn fresh(
        config: &TrainerConfig,
        data: Fingerprint,
        total_steps: usize,
        model: ModelSignature,
        world_size: usize,
    ) -> Self {
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
            model,
            world_size,
        }
    }

    /// An error unless `self` (loaded from `path`) continues the run `fresh` describes, whose shape is `run`.
    pub fn check_resumes(&self, fresh: &TrainState, path: &Path, run: RunShape) -> Result<(), TrainError> {
        let mismatch = |what: String| Err(TrainError::ResumeMismatch { path: path.to_path_buf(), what });
        if self.format != FORMAT {
            return mismatch(format!("checkpoint format {} (this build reads {FORMAT})", self.format));
        }
        if let Some(difference) = self.model.difference(&fresh.model) {
            return mismatch(format!("the checkpoint is of another model: {difference}"));
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
        if self.world_size != fresh.world_size {
            return mismatch(format!(
                "it was written by a data-parallel run of {} rank(s) and this run has {}: each rank's share of \
                 the batches depends on the number of ranks, so resume with {} rank(s)",
                self.world_size, fresh.world_size, self.world_size
            ));
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
        self.check_position(run).or_else(|what| mismatch(format!("its trainer state is inconsistent: {what}")))
    }

    /// An error (a sentence) unless the state's position lies inside a run of `run`'s shape.
    fn check_position(&self, run: RunShape) -> Result<(), String> {
        let RunShape { epochs, steps_per_epoch, evaluates } = run;
        if self.epoch > epochs {
            return Err(format!("epoch {} is past the run's last epoch ({epochs})", self.epoch));
        }
        if self.steps_in_epoch > steps_per_epoch {
            return Err(format!(
                "{} steps into epoch {} but an epoch has {steps_per_epoch} steps",
                self.steps_in_epoch,
                self.epoch + 1
            ));
        }
        if self.epoch == epochs && self.steps_in_epoch != 0 {
            return Err(format!("{} steps into epoch {} of a {epochs}-epoch run", self.steps_in_epoch, epochs + 1));
        }
        let expected = self.epoch.checked_mul(steps_per_epoch).and_then(|done| done.checked_add(self.steps_in_epoch));
        if expected != Some(self.global_step) {
            return Err(format!(
                "global step {} does not match epoch {} step {} at {steps_per_epoch} steps per epoch",
                self.global_step, self.epoch, self.steps_in_epoch
            ));
        }
        if self.global_step > self.total_steps {
            return Err(format!("global step {} is past the run's {} steps", self.global_step, self.total_steps));
        }
        if self.history.len() != self.epoch {
            return Err(format!("{} epoch reports for {} finished epochs", self.history.len(), self.epoch));
        }
        let reports = if evaluates { self.epoch } else { 0 };
        if self.eval_reports.len() != reports {
            return Err(format!("{} evaluation reports, expected {reports}", self.eval_reports.len()));
        }
        if let Some(best) = self.best
            && (best.epoch == 0 || best.epoch > self.epoch || !best.value.is_finite())
        {
            return Err(format!("best epoch {} ({}) is not a finished epoch", best.epoch, best.value));
        }
        for (name, value) in
            [("epoch_loss_sum", self.epoch_loss_sum), ("epoch_train_seconds", self.epoch_train_seconds)]
        {
            if !(value.is_finite() && value >= 0.0) {
                return Err(format!("{name} {value} is not a finite non-negative number"));
            }
        }
        if let Some(scaler) = self.loss_scaler
            && !(scaler.scale().is_finite() && scaler.scale() > 0.0)
        {
            return Err(format!("loss scale {} is not finite and positive", scaler.scale()));
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

/// The newest complete checkpoint in `dir`, if any: the one `latest` names, or, should the folder it names be
/// missing (a run killed while replacing a checkpoint), the complete `checkpoint-<step>` with the highest step.
///
/// `latest` is read without blocking; a `latest` that is not a regular file (a FIFO, a directory), is longer than
/// [`MAX_LATEST_BYTES`], or does not hold a plain `checkpoint-<step>` name (an absolute path, a name with `..`) is
/// an error: it is never followed outside `dir`. The folder it names must be a real directory (not a link) whose
/// trainer state is a regular file. When looking for the newest checkpoint, only real directories with a regular
/// trainer-state file count (a symbolic link named `checkpoint-<step>` is skipped).
pub fn latest_checkpoint(dir: &Path) -> Result<Option<PathBuf>, TrainError> {
    let latest = dir.join(LATEST_FILE);
    if let Some(name) = read_latest(&latest)? {
        let path = files::join_inside(dir, &name).map_err(|e| TrainError::checkpoint(&latest, e))?;
        if step_of(&name).is_none() {
            return Err(TrainError::checkpoint(&latest, format!("names {name:?}, not a checkpoint-<step> folder")));
        }
        match fs::symlink_metadata(&path) {
            Ok(metadata) if metadata.is_dir() => {
                // The folder is renamed into place only once complete: a state file that is not a regular
                // file is damage, not a checkpoint being written.
                let state = path.join(STATE_FILE);
                files::open_regular(&state).map_err(|e| TrainError::checkpoint(&state, e))?;
                return Ok(Some(path));
            }
            Ok(_) => {
                return Err(TrainError::checkpoint(
                    &latest,
                    format!("names {name:?}, which is not a directory inside {} (a link or a file)", dir.display()),
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(latest = %latest.display(), "{name} is missing; looking for the newest complete checkpoint");
            }
            Err(e) => return Err(TrainError::checkpoint(&path, e)),
        }
    }
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(TrainError::checkpoint(dir, e)),
    };
    let mut newest: Option<(usize, PathBuf)> = None;
    for entry in entries {
        let path = entry.map_err(io(dir))?.path();
        let step = path.file_name().and_then(|name| name.to_str()).and_then(step_of);
        if let Some(step) = step
            && is_complete(&path)
            && newest.as_ref().is_none_or(|(newest_step, _)| step > *newest_step)
        {
            newest = Some((step, path));
        }
    }
    Ok(newest.map(|(_, path)| path))
}

/// The step of a `checkpoint-<step>` name.
fn step_of(name: &str) -> Option<usize> {
    name.strip_prefix("checkpoint-")
        .filter(|step| step.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
}

/// A real directory (not a link) holding a regular trainer-state file.
fn is_complete(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|metadata| metadata.is_dir()) && files::is_regular_file(&path.join(STATE_FILE))
}

/// The trimmed content of `latest`, `None` if there is none.
fn read_latest(latest: &Path) -> Result<Option<String>, TrainError> {
    let file = match files::open_regular(latest) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(TrainError::checkpoint(latest, e)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_LATEST_BYTES as u64 + 1).read_to_end(&mut bytes).map_err(io(latest))?;
    if bytes.len() > MAX_LATEST_BYTES {
        return Err(TrainError::checkpoint(
            latest,
            format!("longer than {MAX_LATEST_BYTES} bytes: not a checkpoint name"),
        ));
    }
    let name = String::from_utf8(bytes).map_err(|_| TrainError::checkpoint(latest, "not UTF-8 text"))?;
    Ok(Some(name.trim().to_string()))
}

pub(crate) fn load_state(checkpoint: &Path) -> Result<TrainState, TrainError> {
    let path = checkpoint.join(STATE_FILE);
    let text = files::read_regular_to_string(&path).map_err(io(&path))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| TrainError::checkpoint(&path, format!("not JSON: {e}")))?;
    // The format first, so that an older checkpoint is named as such rather than as a missing field.
    let format = value.get("format").and_then(serde_json::Value::as_u64);
    if format != Some(u64::from(FORMAT)) {
        let found = format.map_or_else(|| "no format".to_string(), |format| format!("format {format}"));
        return Err(TrainError::ResumeMismatch {
            path: checkpoint.to_path_buf(),
            what: format!("its trainer state has {found}; this build reads format {FORMAT} (start a new run)"),
        });
    }
    serde_json::from_value(value).map_err(|e| TrainError::checkpoint(&path, format!("not a trainer state: {e}")))
}

/// The file a recorder reads for `path` (without extension), checked to be a regular file first, so that
/// the recorder never blocks on a FIFO or reads a directory.
fn check_record_file<B: burn::tensor::backend::Backend>(path: &Path) -> Result<(), TrainError> {
    let mut file = path.to_path_buf();
    file.set_extension(<FileRecorder as burn::record::FileRecorder<B>>::file_extension());
    files::open_regular(&file).map(drop).map_err(|e| TrainError::checkpoint(&file, e))
}

/// Loads a model record saved at `path` (without extension) into `model`.
pub(crate) fn load_model<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: M,
    path: &Path,
    device: &B::Device,
) -> Result<M, TrainError> {
    check_record_file::<B>(path)?;
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
    check_record_file::<B>(path)?;
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
