//! report.md and the chart: the comparison for people.

use std::fmt::Write as _;
use std::path::Path;

use super::report::{ComparisonReport, Quantity, ReferenceRow, RowOutcome, RowReport};
use crate::BenchError;
use crate::chart::{ChartPoint, write_chart};

/// `1234567` -> `1.23M`.
fn count(value: f64) -> String {
    match value {
        v if v >= 1e9 => format!("{:.2}B", v / 1e9),
        v if v >= 1e6 => format!("{:.1}M", v / 1e6),
        v if v >= 1e3 => format!("{:.1}k", v / 1e3),
        v => format!("{v:.0}"),
    }
}

/// Seconds as `42.0 s`, `12.3 min` or `4.56 h`.
fn duration(seconds: f64) -> String {
    match seconds {
        s if s >= 7200.0 => format!("{:.2} h", s / 3600.0),
        s if s >= 120.0 => format!("{:.1} min", s / 60.0),
        s => format!("{s:.1} s"),
    }
}

/// A rate with three significant digits.
fn rate(value: f64) -> String {
    match value {
        v if v >= 100.0 => format!("{v:.0}"),
        v if v >= 10.0 => format!("{v:.1}"),
        v if v >= 1.0 => format!("{v:.2}"),
        v => format!("{v:.3}"),
    }
}

fn gigabytes(bytes: f64) -> String {
    format!("{:.2} GB", bytes / 1e9)
}

/// A cell: the value formatted, or the reason it is missing.
fn cell(quantity: &Quantity, format: impl Fn(f64) -> String) -> String {
    match quantity.value {
        Some(value) => format(value),
        None => quantity.how.clone(),
    }
}

/// A cell with the reference implementation's number and the ratio (ours / theirs) beside it.
fn with_reference(ours: &Quantity, theirs: Option<f64>, format: impl Fn(f64) -> String, ratio: bool) -> String {
    let mine = cell(ours, &format);
    match (ours.value, theirs) {
        (Some(value), Some(reference)) if ratio && reference > 0.0 => {
            format!("{mine} (PyTorch {}, {:.2}x)", format(reference), value / reference)
        }
        (_, Some(reference)) => format!("{mine} (PyTorch {})", format(reference)),
        _ => mine,
    }
}

impl ComparisonReport {
    /// The reference implementation's numbers for `row`, if given.
    fn reference_row(&self, row: &str) -> Option<&ReferenceRow> {
        self.reference.as_ref()?.rows.get(row)
    }

    /// report.md: the table, the estimates of the full setup, per-row details, failures and the hardware
    /// record. Every number in it is in report.json.
    pub fn to_markdown(&self) -> String {
        let mut md = String::new();
        let hw = &self.hardware;
        let _ = writeln!(md, "# IMDB comparison ({} preset)\n", self.preset);
        let _ = writeln!(
            md,
            "Measured {} on {} ({} logical cores, {}), backend {}, {} products; polarity {} with burn {}.\n",
            hw.measured_at,
            hw.cpu_model.as_deref().unwrap_or("an unknown CPU"),
            hw.logical_cores,
            hw.simd.name(),
            hw.backend,
            hw.precision,
            hw.git_commit,
            hw.burn_version
        );
        let has_reference = self.reference.is_some();
        let _ = writeln!(
            md,
            "| model | type | parameters | tuning | weights | accuracy | macro-F1 | training time | train samples/s | \
             inference samples/s | peak memory |"
        );
        let _ = writeln!(md, "|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|");
        for outcome in &self.rows {
            let spec = outcome.spec();
            let Some(row) = outcome.finished() else {
                let _ = writeln!(md, "| {} | {} | | | | failed (below) | | | | | |", spec.model(), spec.model_type());
                continue;
            };
            let theirs = self.reference_row(&spec.name);
            let pick = |f: fn(&ReferenceRow) -> Option<f64>| theirs.and_then(f);
            let _ = writeln!(
                md,
                "| {} | {} ({}) | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                spec.model(),
                row.model_type,
                row.architecture,
                cell(&row.parameters, count),
                row.tuning,
                row.init,
                with_reference(&row.accuracy, pick(|r| r.accuracy), |v| format!("{v:.4}"), false),
                with_reference(&row.macro_f1, pick(|r| r.macro_f1), |v| format!("{v:.4}"), false),
                with_reference(&row.train_seconds, pick(|r| r.train_seconds), duration, false),
                with_reference(&row.train_samples_per_second, pick(|r| r.train_samples_per_second), rate, true),
                with_reference(&row.inference_samples_per_second, pick(|r| r.inference_samples_per_second), rate, true),
                with_reference(&row.peak_rss_bytes, pick(|r| r.peak_rss_bytes), gigabytes, false),
            );
        }
        if has_reference {
            let tool = self.reference.as_ref().map_or("", |r| r.tool.as_str());
            let _ = writeln!(
                md,
                "\nIn parentheses: the same rows run by `scripts/reference_hf.py` ({tool}) on the same reviews, and \
                 polarity's rate over PyTorch's."
            );
        }
        let _ = writeln!(
            md,
            "\nWeights `random` mean seeded random weights of the model's real shape (from its config.json): speed \
             and memory are measured, accuracy is not. Training time counts the optimiser steps; inference \
             samples/s is the benchmark described per row below (tokenization excluded); peak memory is the \
             resident set of the process that ran the row alone.\n"
        );
        self.estimates_markdown(&mut md);
        for outcome in &self.rows {
            match outcome {
                RowOutcome::Finished(row) => row_details(&mut md, row),
                RowOutcome::Failed(failure) => {
                    let _ = writeln!(
                        md,
                        "## {} — failed\n\n{} ({}): `{}`\n",
                        failure.spec.name,
                        failure.spec.model(),
                        failure.spec.model_type(),
                        failure.error.replace('`', "'")
                    );
                }
            }
        }
        let _ = writeln!(md, "## Hardware and software\n\n```text\n{hw}\n```");
        md
    }

    fn estimates_markdown(&self, md: &mut String) {
        let estimates: Vec<&RowReport> =
            self.rows.iter().filter_map(RowOutcome::finished).filter(|r| r.full_setup_estimate.is_some()).collect();
        if estimates.is_empty() {
            return;
        }
        let _ = writeln!(
            md,
            "## Estimated time of the full reference setup (estimates, not measurements)\n\n25,000 training reviews \
             x 3 epochs (encoders) or 1 epoch (the LM), then 25,000 test predictions, extrapolated from each row's \
             measured throughput on this machine at the row's maximum length:\n"
        );
        let _ = writeln!(md, "| model | training (estimate) | testing (estimate) | total (estimate) | formula |");
        let _ = writeln!(md, "|---|---:|---:|---:|---|");
        for row in estimates {
            if let Some(estimate) = &row.full_setup_estimate {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} |",
                    row.spec.model(),
                    duration(estimate.train_seconds),
                    duration(estimate.test_seconds),
                    duration(estimate.total_seconds),
                    estimate.formula
                );
            }
        }
        let _ = writeln!(md);
    }

    /// The chart: accuracy against inference samples/s (log x), one labelled point per finished row; rows
    /// without an accuracy sit on their own band.
    pub fn write_chart(&self, svg: &Path, png: &Path) -> Result<(), BenchError> {
        let points: Vec<ChartPoint> = self
            .rows
            .iter()
            .filter_map(RowOutcome::finished)
            .filter_map(|row| {
                Some(ChartPoint {
                    label: row.spec.name.clone(),
                    samples_per_second: row.inference_samples_per_second.value?,
                    accuracy: row.accuracy.value,
                })
            })
            .collect();
        if points.is_empty() {
            return Ok(());
        }
        let title = format!("IMDB: accuracy against inference speed, {}", self.hardware.backend);
        write_chart(&title, &points, svg, png)
    }
}

fn row_details(md: &mut String, row: &RowReport) {
    let spec = &row.spec;
    let run = &row.run;
    let _ = writeln!(md, "## {}\n", spec.name);
    let _ = writeln!(md, "- model: {} ({}, {})", spec.model(), row.model_type, row.architecture);
    let _ = writeln!(md, "- weights: {}", row.weights);
    let _ = writeln!(
        md,
        "- parameters: {} ({} trainable)",
        cell(&row.parameters, |v| format!("{v:.0}")),
        cell(&row.trainable_parameters, |v| format!("{v:.0}"))
    );
    let _ = writeln!(md, "- tuning: {}", row.tuning);
    let _ = writeln!(
        md,
        "- data: {} training / {} test reviews of {} (balanced, seed {}), max length {}",
        run.data.train,
        run.data.test,
        run.data.config.dataset,
        run.data.config.seed,
        spec.max_length()
    );
    match (row.accuracy.value, row.macro_f1.value) {
        (Some(accuracy), Some(f1)) => {
            let _ = writeln!(
                md,
                "- accuracy {accuracy:.4}, macro-F1 {f1:.4} ({}); confusion (rows gold negative/positive) {:?}",
                row.accuracy.how, run.evaluation.report.confusion.counts
            );
        }
        _ => {
            let _ = writeln!(md, "- accuracy: {}", row.accuracy.how);
        }
    }
    let _ = writeln!(
        md,
        "- training: {} ({}), {} samples/s",
        cell(&row.train_seconds, duration),
        row.train_seconds.how,
        cell(&row.train_samples_per_second, rate)
    );
    let latency = &row.inference.latency;
    let _ = writeln!(
        md,
        "- inference: {} samples/s, {} tokens/s ({}); batch latency p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms",
        cell(&row.inference_samples_per_second, rate),
        cell(&row.inference_tokens_per_second, rate),
        row.inference_samples_per_second.how,
        latency.p50_ms,
        latency.p95_ms,
        latency.p99_ms
    );
    if let Some(generation) = &row.generation {
        let m = &generation.measurement;
        let answers = match row.init {
            polarity_finetune::WeightInit::Pretrained => {
                format!(", accuracy {:.4}, {} unparseable answers", generation.report.accuracy, generation.unparseable)
            }
            polarity_finetune::WeightInit::Random => String::new(),
        };
        let _ = writeln!(
            md,
            "- generation: {} prompts at batch {}, at most {} new tokens, {} samples/s, p50 {:.0} ms{answers}",
            m.samples,
            m.batch_size,
            generation.max_new_tokens,
            rate(m.throughput.samples_per_second),
            m.latency.p50_ms
        );
    }
    if let Some(memory) = run.model.weight_memory {
        let _ = writeln!(
            md,
            "- weights in memory: {} quantised ({} as f32) + {} dense",
            gigabytes(memory.quantized_bytes as f64),
            gigabytes(memory.quantized_as_f32_bytes as f64),
            gigabytes(memory.dense_bytes as f64)
        );
    }
    let _ = writeln!(md, "- peak memory: {} ({})", cell(&row.peak_rss_bytes, gigabytes), row.peak_rss_bytes.how);
    let _ = writeln!(
        md,
        "- time: loading {}, training {}, whole row {}\n",
        duration(run.timings.load_seconds),
        duration(run.timings.train_seconds),
        duration(row.wall_seconds)
    );
}
