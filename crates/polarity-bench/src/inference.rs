//! Measuring inference: [`InferenceBench`] runs a workload batch by batch and times every batch.

use std::fmt;
use std::ops::Range;
use std::time::{Duration, Instant};

use burn::prelude::*;
use polarity_core::Classifier;
use polarity_finetune::AnswerTally;
use polarity_llama::{Llama, LlamaTokenizer, generate_answers_for_ids};
use polarity_metrics::ClassificationReport;
use polarity_tokenize::TokenizedExample;
use polarity_train::BatchScorer;
use serde::{Deserialize, Serialize};

use crate::hardware::device_memory_bytes;
use crate::{BenchError, LatencySummary, Throughput, peak_rss_bytes};

/// How an inference benchmark batches and repeats its workload.
///
/// Every batch is timed on its own. The first `warmup_batches` batches (cycling through the workload if
/// it has fewer) run before measuring and count nowhere; then the whole workload runs `repeats` times,
/// in order, `batch_size` examples per batch (the last batch may be short).
///
/// Products run in whatever precision the caller set: wrap a call in `polarity_kernels::autocast` for
/// bf16/f16, and record the precision in the [`HardwareRecord`](crate::HardwareRecord).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InferenceBench {
    /// Examples per batch (at least 1).
    pub batch_size: usize,
    /// Batches run before measuring (caches, allocator, lazily initialised weights).
    pub warmup_batches: usize,
    /// Measured passes over the whole workload (at least 1).
    pub repeats: usize,
}

impl InferenceBench {
    /// Batches of `batch_size`, one warm-up batch, one measured pass.
    pub fn new(batch_size: usize) -> Self {
        Self { batch_size, warmup_batches: 1, repeats: 1 }
    }

    /// Sets the number of warm-up batches.
    pub fn with_warmup_batches(mut self, warmup_batches: usize) -> Self {
        self.warmup_batches = warmup_batches;
        self
    }

    /// Sets the number of measured passes.
    pub fn with_repeats(mut self, repeats: usize) -> Self {
        self.repeats = repeats;
        self
    }

    /// An error unless `batch_size` and `repeats` are at least 1.
    pub fn validate(&self) -> Result<(), BenchError> {
        let invalid = |field, value: usize| BenchError::InvalidSetting {
            field,
            value: value.to_string(),
            reason: "must be at least 1",
        };
        if self.batch_size == 0 {
            return Err(invalid("batch_size", self.batch_size));
        }
        if self.repeats == 0 {
            return Err(invalid("repeats", self.repeats));
        }
        Ok(())
    }

    /// Measures `scorer`'s class scores of `model` on `data` (tokenized up front; tokenization excluded).
    ///
    /// Each batch is padded and scored by the [`BatchScorer`] (as evaluation does it) and its scores are
    /// read back to the host, so a batch's time includes all of its work on any backend.
    pub fn measure_scorer<B, M, S>(
        &self,
        scorer: &S,
        model: &M,
        data: &[TokenizedExample],
        device: &B::Device,
    ) -> Result<InferenceMeasurement, BenchError>
    where
        B: Backend,
        S: BatchScorer<B, M>,
    {
        let timings = self.run(data.len(), "the tokenized examples", |range, _| {
            let batch: Vec<&TokenizedExample> = data[range].iter().collect();
            let scores = scorer.class_scores(model, &batch, device)?;
            let dims = scores.dims();
            if dims != [batch.len(), 2] {
                return Err(BenchError::Scores(format!(
                    "expected shape [{}, 2], the model gave {dims:?}",
                    batch.len()
                )));
            }
            scores
                .into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .map_err(|e| BenchError::Scores(format!("cannot read them back: {e:?}")))?;
            Ok(())
        })?;
        let (tokens, padded) = self.token_counts(data);
        Ok(timings.into_measurement(self, MeasuredPath::ClassScores, data.len(), Some(tokens), Some(padded)))
    }

    /// Measures a text [`Classifier`]'s `predict` on `texts`, tokenization included (the classifier
    /// tokenizes inside `predict`). The classifier's own tokens are not visible here, so the measurement
    /// has no token count; add one with [`InferenceMeasurement::with_tokens`].
    pub fn measure_classifier<C: Classifier>(
        &self,
        classifier: &C,
        texts: &[&str],
    ) -> Result<InferenceMeasurement, BenchError> {
        let timings = self.run(texts.len(), "the list of texts", |range, _| {
            let chunk = &texts[range];
            let predictions = classifier.predict(chunk).map_err(|e| BenchError::Classifier(Box::new(e)))?;
            if predictions.len() != chunk.len() {
                return Err(BenchError::PredictionCount { texts: chunk.len(), predictions: predictions.len() });
            }
            Ok(())
        })?;
        Ok(timings.into_measurement(self, MeasuredPath::Classifier, texts.len(), None, None))
    }

    /// Measures greedy generation of at most `max_new_tokens` tokens after each prompt of `data` (tokenized
    /// prompts, `batch_size` per generation call; the reference uses batch 1), the answers parsed with
    /// [`polarity_llama::parse_answer`] and scored against the gold labels of the first measured pass.
    /// An answer naming no single label counts as wrong and as unparseable.
    pub fn measure_generation<B: Backend>(
        &self,
        model: &Llama<B>,
        tokenizer: &LlamaTokenizer,
        data: &[TokenizedExample],
        max_new_tokens: usize,
        device: &B::Device,
    ) -> Result<GenerationMeasurement, BenchError> {
        if max_new_tokens == 0 {
            return Err(BenchError::InvalidSetting {
                field: "max_new_tokens",
                value: "0".into(),
                reason: "an answer needs at least one token",
            });
        }
        let prompts: Vec<Vec<u32>> = data.iter().map(|item| item.tokens.ids.clone()).collect();
        let mut tally = AnswerTally::default();
        let timings = self.run(data.len(), "the tokenized prompts", |range, repeat| {
            let answers = generate_answers_for_ids(model, tokenizer, &prompts[range.clone()], max_new_tokens, device)?;
            if repeat == Some(0) {
                tally.add(&data[range], &answers);
            }
            Ok(())
        })?;
        let (tokens, padded) = self.token_counts(data);
        let measurement =
            timings.into_measurement(self, MeasuredPath::Generation, data.len(), Some(tokens), Some(padded));
        Ok(GenerationMeasurement {
            measurement,
            max_new_tokens,
            report: tally.matrix.report(),
            unparseable: tally.unparseable,
        })
    }

    /// Real and padded tokens of one pass over `data` in this bench's batches.
    fn token_counts(&self, data: &[TokenizedExample]) -> (usize, usize) {
        let real = data.iter().map(|item| item.tokens.len()).sum();
        let padded = data
            .chunks(self.batch_size.max(1))
            .map(|batch| batch.len() * batch.iter().map(|item| item.tokens.len()).max().unwrap_or(0))
            .sum();
        (real, padded)
    }

    /// Runs the warm-up batches, then `repeats` timed passes; `batch` gets each batch's item range and,
    /// when measured, the pass number (`None` during warm-up).
    fn run<F>(&self, items: usize, what: &'static str, mut batch: F) -> Result<Timings, BenchError>
    where
        F: FnMut(Range<usize>, Option<usize>) -> Result<(), BenchError>,
    {
        self.validate()?;
        if items == 0 {
            return Err(BenchError::EmptyInput { what });
        }
        let ranges: Vec<Range<usize>> =
            (0..items).step_by(self.batch_size).map(|start| start..(start + self.batch_size).min(items)).collect();
        for warmup in 0..self.warmup_batches {
            batch(ranges[warmup % ranges.len()].clone(), None)?;
        }
        let mut latencies: Vec<Duration> = Vec::with_capacity(ranges.len() * self.repeats);
        let mut pass_seconds = Vec::with_capacity(self.repeats);
        for repeat in 0..self.repeats {
            let pass = Instant::now();
            for range in &ranges {
                let started = Instant::now();
                batch(range.clone(), Some(repeat))?;
                latencies.push(started.elapsed());
            }
            pass_seconds.push(pass.elapsed().as_secs_f64());
        }
        Ok(Timings { batches: ranges.len(), latency: LatencySummary::from_durations(&latencies)?, pass_seconds })
    }
}

/// What [`InferenceBench::run`] timed.
struct Timings {
    batches: usize,
    latency: LatencySummary,
    pass_seconds: Vec<f64>,
}

impl Timings {
    fn into_measurement(
        self,
        bench: &InferenceBench,
        path: MeasuredPath,
        samples: usize,
        tokens: Option<usize>,
        padded_tokens: Option<usize>,
    ) -> InferenceMeasurement {
        let total_seconds: f64 = self.pass_seconds.iter().sum();
        let repeats = bench.repeats;
        InferenceMeasurement {
            path,
            tokenization_included: path == MeasuredPath::Classifier,
            batch_size: bench.batch_size,
            warmup_batches: bench.warmup_batches,
            repeats,
            samples,
            tokens,
            padded_tokens,
            batches: self.batches,
            total_seconds,
            pass_seconds: self.pass_seconds,
            throughput: Throughput::new(samples * repeats, tokens.map(|t| t * repeats), total_seconds),
            latency: self.latency,
            peak_rss_bytes: peak_rss_bytes(),
            device_memory_bytes: device_memory_bytes(),
        }
    }
}

/// What an inference measurement ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MeasuredPath {
    /// A [`BatchScorer`]'s class scores on tokenized examples (tokenization excluded).
    ClassScores,
    /// A text [`Classifier`]'s `predict` (tokenization included).
    Classifier,
    /// Greedy generation and answer parsing on tokenized prompts (tokenization excluded).
    Generation,
}

/// One inference benchmark: throughput, per-batch latency and memory.
///
/// Counts are of one pass over the workload (each example and token counted once); rates are over all
/// measured passes (`repeats` times the counts over `total_seconds`). Warm-up batches count nowhere.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InferenceMeasurement {
    /// What ran.
    pub path: MeasuredPath,
    /// Whether the timed work includes tokenizing the texts.
    pub tokenization_included: bool,
    /// Examples per batch.
    pub batch_size: usize,
    /// Batches run before measuring (not counted).
    pub warmup_batches: usize,
    /// Measured passes over the workload.
    pub repeats: usize,
    /// Examples in one pass.
    pub samples: usize,
    /// Input tokens in one pass (special tokens and prompt included, padding excluded), where counted.
    pub tokens: Option<usize>,
    /// Tokens in one pass's padded batches (batch size times its longest input, summed), where counted.
    pub padded_tokens: Option<usize>,
    /// Batches in one pass.
    pub batches: usize,
    /// Wall-clock seconds of all measured passes.
    pub total_seconds: f64,
    /// Wall-clock seconds of each measured pass.
    pub pass_seconds: Vec<f64>,
    /// Samples and tokens per second over the measured passes.
    pub throughput: Throughput,
    /// Per-batch latency over every measured batch.
    pub latency: LatencySummary,
    /// The process's peak resident memory at the end (Linux `VmHWM`), in bytes.
    pub peak_rss_bytes: Option<u64>,
    /// Device memory this process held at the end (`cuda` builds, where `nvidia-smi` lists the process).
    pub device_memory_bytes: Option<u64>,
}

impl InferenceMeasurement {
    /// Records `tokens` input tokens per pass (counted outside the measurement, say for a
    /// [`Classifier`] measured with [`InferenceBench::measure_classifier`]) and their rate.
    pub fn with_tokens(mut self, tokens: usize) -> Self {
        self.tokens = Some(tokens);
        self.throughput = Throughput::new(self.samples * self.repeats, Some(tokens * self.repeats), self.total_seconds);
        self
    }

    /// Writes the measurement as pretty JSON to `path`, creating its folder.
    pub fn write_json(&self, path: &std::path::Path) -> Result<(), BenchError> {
        crate::error::write_json(self, path)
    }
}

impl fmt::Display for InferenceMeasurement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tokenization = if self.tokenization_included { ", tokenization included" } else { "" };
        writeln!(
            f,
            "{} samples in {} batches of {} x {} passes ({} warm-up batches{tokenization}): {:.2} s",
            self.samples, self.batches, self.batch_size, self.repeats, self.warmup_batches, self.total_seconds
        )?;
        write!(f, "throughput  {:.2} samples/s", self.throughput.samples_per_second)?;
        if let Some(tokens_per_second) = self.throughput.tokens_per_second {
            write!(f, ", {tokens_per_second:.0} tokens/s")?;
        }
        writeln!(f)?;
        write!(f, "latency     {}", self.latency)?;
        if let Some(bytes) = self.peak_rss_bytes {
            write!(f, "\npeak RSS    {:.2} GB", bytes as f64 / 1e9)?;
        }
        if let Some(bytes) = self.device_memory_bytes {
            write!(f, "\ndevice mem  {:.2} GB", bytes as f64 / 1e9)?;
        }
        Ok(())
    }
}

/// A generation benchmark: the measurement and what the answers were worth.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerationMeasurement {
    /// Throughput, latency and memory (tokens are the prompts').
    pub measurement: InferenceMeasurement,
    /// The most tokens written after each prompt.
    pub max_new_tokens: usize,
    /// Accuracy, macro-F1 and confusion matrix of the first measured pass (unparseable answers count as
    /// wrong).
    pub report: ClassificationReport,
    /// Answers of the first measured pass that named neither label, or both.
    pub unparseable: usize,
}

impl GenerationMeasurement {
    /// Writes the measurement as pretty JSON to `path`, creating its folder.
    pub fn write_json(&self, path: &std::path::Path) -> Result<(), BenchError> {
        crate::error::write_json(self, path)
    }
}

impl fmt::Display for GenerationMeasurement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.measurement)?;
        write!(
            f,
            "answers     accuracy {:.4}, macro-F1 {:.4}, {} unparseable (at most {} new tokens)",
            self.report.accuracy, self.report.macro_f1, self.unparseable, self.max_new_tokens
        )
    }
}
