//! What a recipe run reports: [`RunReport`], printed by the examples and written as JSON.

use std::fmt;
use std::path::Path;

use polarity_core::{Precision, TrainingSummary};
use polarity_train::TrainerConfig;
use serde::{Deserialize, Serialize};

use crate::evaluate::EvaluationReport;
use crate::{DataConfig, EncoderFineTune, FinetuneError, LoraFineTune};

/// The recipe a report came from, with every setting it ran with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum RecipeConfig {
    /// Full fine-tuning of an encoder classifier.
    Encoder(EncoderFineTune),
    /// LoRA or QLoRA tuning of a causal LM.
    Lora(LoraFineTune),
}

impl RecipeConfig {
    /// The recipe's trainer settings.
    pub fn trainer(&self) -> &TrainerConfig {
        match self {
            Self::Encoder(recipe) => &recipe.trainer,
            Self::Lora(recipe) => &recipe.trainer,
        }
    }
}

/// The reviews a run used.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataReport {
    /// The dataset and the subsets asked for.
    pub config: DataConfig,
    /// Training reviews actually used.
    pub train: usize,
    /// Validation reviews (0 when the best epoch was picked on the test subset, or not at all).
    pub validation: usize,
    /// Test reviews.
    pub test: usize,
    /// Mean tokens per training input (special tokens and prompt included, padding excluded).
    pub mean_train_tokens: f64,
    /// Causal LMs: training and test reviews shortened to fit the maximum prompt length.
    pub shortened: Option<[usize; 2]>,
}

/// Where a recipe's starting weights come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WeightInit {
    /// The checkpoint's weights; weights that are missing are an error
    /// ([`FinetuneError::NoWeights`](crate::FinetuneError::NoWeights) for an encoder), never replaced by
    /// random ones.
    #[default]
    Pretrained,
    /// Seeded random weights of the shape the model's `config.json` describes: measures speed and memory at
    /// a model's real shape where its weights are not available. Accuracy of such a model means nothing.
    ///
    /// [`EncoderFineTune`](crate::EncoderFineTune) builds the classifier from `config.json` alone, as
    /// transformers' `*ForSequenceClassification` is built from a config (weights `N(0,
    /// initializer_range)`, biases zero, layer norms the identity), seeded by the trainer's seed; it reads
    /// no weights file and reports 0 tensors loaded.
    Random,
}

impl WeightInit {
    /// `pretrained` or `random`.
    pub fn name(self) -> &'static str {
        match self {
            WeightInit::Pretrained => "pretrained",
            WeightInit::Random => "random",
        }
    }
}

impl fmt::Display for WeightInit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The model a run trained.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelReport {
    /// Hub id, directory or GGUF file.
    pub source: String,
    /// Where the starting weights came from.
    #[serde(default)]
    pub init: WeightInit,
    /// `bert`, `distilbert` or `llama`.
    pub architecture: String,
    /// The burn backend (`flex (cpu)`, `cuda`, ...).
    pub backend: String,
    /// The type of the matrix products.
    pub precision: Precision,
    /// All parameters, counted on the loaded model (a quantised base counts its weights, not its bytes).
    pub parameters: usize,
    /// Parameters the optimiser updates.
    pub trainable_parameters: usize,
    /// Checkpoint tensors loaded, where the loader reports them.
    pub tensors_loaded: Option<usize>,
    /// Parameters the checkpoint did not have, freshly initialised (an encoder's new classification head;
    /// every parameter with [`WeightInit::Random`]).
    pub tensors_initialised: Vec<String>,
    /// Causal LMs: bytes of the weights in memory.
    pub weight_memory: Option<WeightMemoryReport>,
}

/// Bytes of a causal LM's weights in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightMemoryReport {
    /// Weights held as dense floats.
    pub dense_bytes: usize,
    /// Frozen weights held quantised (QLoRA).
    pub quantized_bytes: usize,
    /// What the quantised weights would take as f32.
    pub quantized_as_f32_bytes: usize,
}

/// Wall-clock seconds of each phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// Loading the model and tokenizer.
    pub load_seconds: f64,
    /// Tokenizing every subset.
    pub tokenize_seconds: f64,
    /// Optimiser steps (per-epoch evaluation and checkpoints excluded).
    pub train_seconds: f64,
    /// The whole run, from loading to the last evaluation.
    pub total_seconds: f64,
}

/// Everything one recipe run measured: its settings, data, model, training and final evaluation.
///
/// This is the JSON schema of the examples' `--json` output (serde field names as documented here;
/// seconds in seconds, memory in bytes, rates per second of wall-clock time).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunReport {
    /// The recipe and every setting it ran with.
    pub recipe: RecipeConfig,
    /// The reviews used.
    pub data: DataReport,
    /// The model trained.
    pub model: ModelReport,
    /// Causal LMs: the base model's evaluation before tuning, where asked for.
    pub zero_shot: Option<EvaluationReport>,
    /// The final evaluation of the returned model on the test subset.
    pub evaluation: EvaluationReport,
    /// Epochs, steps, best epoch, loss scale.
    pub training: TrainingSummary,
    /// Wall-clock time of each phase.
    pub timings: Timings,
    /// The process's peak resident memory at the end of the run (Linux), in bytes.
    pub peak_rss_bytes: Option<u64>,
}

impl RunReport {
    /// Accuracy points gained over zero-shot, where zero-shot was evaluated.
    pub fn improvement_points(&self) -> Option<f64> {
        self.zero_shot.as_ref().map(|zero_shot| 100.0 * (self.evaluation.accuracy() - zero_shot.accuracy()))
    }

    /// Writes the report as pretty JSON to `path`, creating its folder.
    pub fn write_json(&self, path: &Path) -> Result<(), FinetuneError> {
        let write_error = |source| FinetuneError::Write { path: path.to_path_buf(), source };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(write_error)?;
        }
        let json = serde_json::to_string_pretty(self).map_err(|e| write_error(e.into()))?;
        std::fs::write(path, json + "\n").map_err(write_error)
    }
}

/// The peak resident set size of this process (`VmHWM` in `/proc/self/status`), where the OS tells.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kilobytes: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kilobytes * 1024)
}

fn megabytes(bytes: usize) -> f64 {
    bytes as f64 / 1e6
}

impl fmt::Display for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let history = &self.training.history;
        if !history.is_empty() {
            writeln!(
                f,
                "{:>5} {:>10} {:>9} {:>9} {:>9} {:>10}",
                "epoch", "train loss", "accuracy", "macro-F1", "seconds", "samples/s"
            )?;
            for r in history {
                let metric = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.4}"));
                writeln!(
                    f,
                    "{:>5} {:>10.4} {:>9} {:>9} {:>9.1} {:>10.2}",
                    r.epoch,
                    r.train_loss,
                    metric(r.eval_accuracy),
                    metric(r.eval_macro_f1),
                    r.train_seconds,
                    r.train_samples_per_second
                )?;
            }
            writeln!(f)?;
        }
        writeln!(f, "{}", self.evaluation.report)?;
        let model = &self.model;
        let best = self.training.best_epoch.map_or_else(|| "last epoch".to_string(), |e| format!("best epoch {e}"));
        let init = match model.init {
            WeightInit::Pretrained => "",
            WeightInit::Random => ", random weights",
        };
        writeln!(f, "model                {} ({}{init}, {best})", model.source, model.architecture)?;
        let evaluation = match self.recipe.trainer().eval_precision {
            Some(precision) if precision != model.precision => format!(" ({precision} in evaluation)"),
            _ => String::new(),
        };
        writeln!(f, "backend              {}, {} products{evaluation}", model.backend, model.precision)?;
        writeln!(
            f,
            "parameters           {} ({} trainable, {:.3}%)",
            model.parameters,
            model.trainable_parameters,
            100.0 * model.trainable_parameters as f64 / model.parameters.max(1) as f64
        )?;
        if let Some(memory) = model.weight_memory.filter(|memory| memory.quantized_bytes > 0) {
            writeln!(
                f,
                "quantised base       {:.1} MB ({:.1} MB as f32; {:.1} MB dense beside it)",
                megabytes(memory.quantized_bytes),
                megabytes(memory.quantized_as_f32_bytes),
                megabytes(memory.dense_bytes)
            )?;
        }
        let data = &self.data;
        writeln!(
            f,
            "data                 {} train / {} validation / {} test reviews of {}",
            data.train, data.validation, data.test, data.config.dataset
        )?;
        if let Some(zero_shot) = &self.zero_shot {
            writeln!(
                f,
                "zero-shot            accuracy {:.4}, macro-F1 {:.4}{}",
                zero_shot.accuracy(),
                zero_shot.macro_f1(),
                unparseable(zero_shot)
            )?;
        }
        let evaluation = &self.evaluation;
        writeln!(f, "accuracy             {:.4}{}", evaluation.accuracy(), unparseable(evaluation))?;
        writeln!(f, "macro-F1             {:.4}", evaluation.macro_f1())?;
        if let Some(points) = self.improvement_points() {
            writeln!(f, "improvement          {points:+.1} accuracy points over zero-shot")?;
        }
        writeln!(
            f,
            "train time           {:.1}s ({} steps)",
            self.training.train_seconds(),
            self.training.global_steps
        )?;
        writeln!(f, "train samples/s      {:.2}", self.training.train_samples_per_second())?;
        if let Some(communication) = &self.training.communication {
            writeln!(
                f,
                "data parallel        {} ranks; gradient all-reduce {:.1} MB and {:.3}s per step ({:.1}s over {} steps)",
                communication.world_size,
                megabytes(communication.bytes_per_step as usize),
                communication.seconds_per_step(),
                communication.seconds,
                communication.steps
            )?;
        }
        if let Some(scale) = self.training.loss_scale {
            writeln!(f, "f16 loss scale       {scale} ({} steps skipped on overflow)", self.training.skipped_steps)?;
        }
        if let Some(path) = &self.training.resumed_from {
            writeln!(f, "resumed from         {}", path.display())?;
        }
        writeln!(
            f,
            "inference samples/s  {:.2} ({:.0} tokens/s)",
            evaluation.samples_per_second, evaluation.tokens_per_second
        )?;
        if let Some(bytes) = self.peak_rss_bytes {
            writeln!(f, "peak memory (RSS)    {:.2} GB", bytes as f64 / 1e9)?;
        }
        write!(f, "total time           {:.1}s", self.timings.total_seconds)
    }
}

fn unparseable(evaluation: &EvaluationReport) -> String {
    evaluation.unparseable.map_or_else(String::new, |count| format!(" ({count} unparseable answers)"))
}
