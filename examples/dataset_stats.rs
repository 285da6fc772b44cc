//! Statistics of the IMDB splits: rows, label balance, review lengths in characters and tokens, and the
//! padding that length-bucketed batches save.
//!
//! ```text
//! HF_HOME=../shared/hf HF_HUB_OFFLINE=1 cargo run --release --example dataset_stats -- --json stats.json
//! ```
//!
//! JSON schema (`--json PATH`), one object per split under `splits`:
//!
//! ```text
//! {
//!   "dataset": "stanfordnlp/imdb", "tokenizer": "sentence-transformers/all-MiniLM-L6-v2",
//!   "max_length": 512, "batch_size": 32, "seed": 42,
//!   "splits": {
//!     "train": {
//!       "rows": 25000, "positive": 12500, "negative": 12500, "positive_fraction": 0.5,
//!       "chars":  {"min", "p50", "p90", "p99", "max", "mean"},   // review length in characters
//!       "tokens": {"min", "p50", "p90", "p99", "max", "mean"},   // untruncated token count, special tokens included
//!       "truncated_fraction": 0.14,                              // rows longer than max_length tokens
//!       "padding": {"batch_size", "max_length",
//!                   "shuffled_fraction",                         // padding share, random batches padded to their longest
//!                   "bucketed_fraction",                         // the same with length-bucketed batches
//!                   "saved_fraction"}                            // 1 - bucketed / shuffled padded positions
//!     },
//!     "test": { ... }
//!   }
//! }
//! ```

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use polarity::data::stats::{LengthSummary, SplitStats};
use polarity::data::{ImdbDataset, Split, acl, hub};
use polarity::tokenize::{BatchOrder, Encode, HfTokenizer, LengthBucketed, Shuffled, padding_fraction};
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
struct Padding {
    batch_size: usize,
    max_length: usize,
    shuffled_fraction: f64,
    bucketed_fraction: f64,
    saved_fraction: f64,
}

#[derive(Serialize)]
struct SplitReport {
    #[serde(flatten)]
    base: SplitStats,
    tokens: LengthSummary,
    truncated_fraction: f64,
    padding: Padding,
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

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let args = Args::parse();
    // Untruncated, so the percentiles show the real lengths; truncation is applied for the padding estimate.
    let tokenizer_path =
        polarity::hub::RepoSource::parse(&args.tokenizer, polarity::hub::RepoKind::Model).file("tokenizer.json")?;
    let tokenizer = HfTokenizer::new(
        tokenizers::Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| anyhow::anyhow!("cannot load {}: {e}", tokenizer_path.display()))?,
        None,
    )?;

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
    let truncated: Vec<usize> = token_lengths.iter().map(|&n| n.min(args.max_length)).collect();
    let shuffled = padding_fraction(&truncated, &Shuffled { seed: args.seed }.batches(&truncated, args.batch_size)?);
    let bucketed = padding_fraction(&truncated, &LengthBucketed::new(args.seed).batches(&truncated, args.batch_size)?);
    // Padded positions per real token: p / (1 - p); the saving compares those.
    let waste = |p: f64| p / (1.0 - p);
    Ok(SplitReport {
        base: SplitStats::of(data),
        tokens: LengthSummary::from_lengths(token_lengths).context("no rows")?,
        truncated_fraction: token_lengths.iter().filter(|&&n| n > args.max_length).count() as f64
            / token_lengths.len() as f64,
        padding: Padding {
            batch_size: args.batch_size,
            max_length: args.max_length,
            shuffled_fraction: shuffled,
            bucketed_fraction: bucketed,
            saved_fraction: if shuffled > 0.0 { 1.0 - waste(bucketed) / waste(shuffled) } else { 0.0 },
        },
    })
}

fn print_table(report: &Report) {
    println!(
        "\n{} (tokens: {}, max length {}, batch {})",
        report.dataset, report.tokenizer, report.max_length, report.batch_size
    );
    println!(
        "{:<6} {:>7} {:>7} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "split",
        "rows",
        "neg",
        "pos",
        "chars p50",
        "tok p50",
        "tok p90",
        "tok p99",
        "truncated",
        "pad rand",
        "pad bkt",
        "saved"
    );
    for (name, s) in Split::ALL.iter().filter_map(|split| Some((split.name(), report.splits.get(split.name())?))) {
        println!(
            "{:<6} {:>7} {:>7} {:>7} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>8.1}% {:>8.1}% {:>8.1}% {:>8.1}%",
            name,
            s.base.rows,
            s.base.negative,
            s.base.positive,
            s.base.chars.p50,
            s.tokens.p50,
            s.tokens.p90,
            s.tokens.p99,
            s.truncated_fraction * 100.0,
            s.padding.shuffled_fraction * 100.0,
            s.padding.bucketed_fraction * 100.0,
            s.padding.saved_fraction * 100.0,
        );
    }
}
