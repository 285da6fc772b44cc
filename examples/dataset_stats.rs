//! Statistics of the IMDB splits: rows, label balance, review lengths in characters and tokens, and the
//! padding that length-bucketed batches save.
//!
//! ```text
//! HF_HOME=../shared/hf HF_HUB_OFFLINE=1 cargo run --release --example dataset_stats -- --json stats.json
//! ```
//!
//! `--json PATH` writes per split [`SplitStats`], the untruncated token [`LengthSummary`], the share of rows
//! truncated at `--max-length` and a [`PaddingReport`].

mod common;

use std::path::PathBuf;

use anyhow::{Context, ensure};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use polarity::data::stats::{LengthSummary, SplitStats};
use polarity::data::{ImdbDataset, Split, acl, hub};
use polarity::tokenize::{Encode, HfTokenizer, PaddingReport};
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(about = "Rows, label balance, length percentiles and bucketing savings of the IMDB splits")]
struct Args {
    /// Hub dataset id (parquet layout of stanfordnlp/imdb) or a local directory with that layout.
    #[arg(long, default_value = hub::IMDB_REPO)]
    dataset: String,
    /// Read an extracted aclImdb/ directory instead of the hub parquet.
    #[arg(long, conflicts_with = "dataset")]
    acl_imdb: Option<PathBuf>,
    /// Tokenizer (hub model id or directory with tokenizer.json) for the token lengths.
    #[arg(long, default_value = "sentence-transformers/all-MiniLM-L6-v2")]
    tokenizer: String,
    /// Truncation length used for the padding estimate.
    #[arg(long, default_value_t = 512)]
    max_length: usize,
    /// Batch size used for the padding estimate.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Only a seeded balanced subset of this many rows per split (quick runs).
    #[arg(long)]
    rows: Option<usize>,
    /// Seed for subsets and batch orders.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Also write the table as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Serialize)]
struct SplitReport {
    #[serde(flatten)]
    base: SplitStats,
    tokens: LengthSummary,
    truncated_fraction: f64,
    padding: PaddingReport,
}

#[derive(Serialize)]
struct Report {
    dataset: String,
    tokenizer: String,
    max_length: usize,
    batch_size: usize,
    seed: u64,
    splits: std::collections::BTreeMap<&'static str, SplitReport>,
}

fn main() -> std::process::ExitCode {
    common::main_with(run)
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let max_batch = polarity_train::MAX_BATCH_SIZE;
    ensure!(
        (1..=max_batch).contains(&args.batch_size),
        "--batch-size {} must be between 1 and {max_batch}",
        args.batch_size
    );
    ensure!(args.max_length >= 1, "--max-length must be at least 1");
    // Untruncated, so the percentiles show the real lengths; truncation is applied for the padding estimate.
    let tokenizer = HfTokenizer::from_pretrained_untruncated(&args.tokenizer)?;

    let mut splits = std::collections::BTreeMap::new();
    for split in Split::ALL {
        let mut data: ImdbDataset = match &args.acl_imdb {
            Some(root) => acl::load_split(root, split)?,
            None => hub::load_split(&args.dataset, split)?,
        };
        if let Some(rows) = args.rows {
            data = data.balanced_subset(rows, args.seed)?;
        }
        let token_lengths = token_lengths(&tokenizer, &data, split)?;
        splits.insert(split.name(), split_report(&data, &token_lengths, &args)?);
    }

    let report = Report {
        dataset: args.acl_imdb.as_ref().map_or(args.dataset.clone(), |p| p.display().to_string()),
        tokenizer: args.tokenizer.clone(),
        max_length: args.max_length,
        batch_size: args.batch_size,
        seed: args.seed,
        splits,
    };
    print_table(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("\nwrote {}", path.display());
    }
    Ok(())
}

fn token_lengths(tokenizer: &HfTokenizer, data: &ImdbDataset, split: Split) -> anyhow::Result<Vec<usize>> {
    let texts = data.texts();
    let bar = ProgressBar::new(texts.len() as u64)
        .with_style(ProgressStyle::with_template("{msg:>6} {bar:40} {pos}/{len} reviews {per_sec} eta {eta}")?);
    bar.set_message(split.name());
    let mut lengths = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(1000) {
        lengths.extend(tokenizer.token_lengths(chunk)?);
        bar.inc(chunk.len() as u64);
    }
    bar.finish();
    Ok(lengths)
}

fn split_report(data: &ImdbDataset, token_lengths: &[usize], args: &Args) -> anyhow::Result<SplitReport> {
    let truncated = token_lengths.iter().filter(|&&n| n > args.max_length).count();
    Ok(SplitReport {
        base: SplitStats::of(data),
        tokens: LengthSummary::from_lengths(token_lengths).context("no rows")?,
        truncated_fraction: truncated as f64 / token_lengths.len() as f64,
        padding: PaddingReport::of(token_lengths, args.batch_size, args.max_length, args.seed)?,
    })
}

fn print_table(report: &Report) {
    println!(
        "\n{} (tokens: {}, max length {}, batch {})",
        report.dataset, report.tokenizer, report.max_length, report.batch_size
    );
    let columns = ["rows", "neg", "pos", "chars p50", "tok p50", "tok p90", "tok p99", "truncated", "pad rand"];
    let header: Vec<String> = columns.iter().map(|c| format!("{c:>9}")).collect();
    println!("{:<6} {} {:>9} {:>9}", "split", header.join(" "), "pad bkt", "saved");
    for (name, s) in Split::ALL.iter().filter_map(|split| Some((split.name(), report.splits.get(split.name())?))) {
        let counts = [s.base.rows, s.base.negative, s.base.positive].map(|n| format!("{n:>9}"));
        let lengths = [s.base.chars.p50, s.tokens.p50, s.tokens.p90, s.tokens.p99].map(|n| format!("{n:>9.0}"));
        let padding = &s.padding;
        let shares =
            [s.truncated_fraction, padding.shuffled_fraction, padding.bucketed_fraction, padding.saved_fraction]
                .map(|share| format!("{:>8.1}%", share * 100.0));
        println!("{name:<6} {} {} {}", counts.join(" "), lengths.join(" "), shares.join(" "));
    }
}
