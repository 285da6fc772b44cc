//! What the examples share: logging set-up, error reporting, dataset subsets and JSON output.

// Each example uses only some of these.
#![allow(dead_code)]

use std::path::Path;

mod allocator;
use std::process::ExitCode;

use anyhow::Context;
use polarity_data::{ImdbDataset, Split, hub};
use serde::Serialize;

/// Logs to stderr at `RUST_LOG`'s level (default `warn`), runs `run` and turns an error into a
/// one-line message (with its causes) and a failing exit code.
pub fn main_with(run: impl FnOnce() -> anyhow::Result<()>) -> ExitCode {
    allocator::keep_freed_memory();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// A seeded balanced subset of `size` reviews of `split` of `dataset` (hub id or directory).
pub fn balanced_split(dataset: &str, split: Split, size: usize, seed: u64) -> anyhow::Result<ImdbDataset> {
    let data = hub::load_split(dataset, split).with_context(|| format!("loading {dataset} {split}"))?;
    data.balanced_subset(size, seed).with_context(|| format!("drawing {size} balanced {split} reviews"))
}

/// `N` disjoint seeded balanced subsets of `split` (the first is [`balanced_split`]'s for the same seed).
pub fn balanced_splits<const N: usize>(
    dataset: &str,
    split: Split,
    sizes: [usize; N],
    seed: u64,
) -> anyhow::Result<[ImdbDataset; N]> {
    let data = hub::load_split(dataset, split).with_context(|| format!("loading {dataset} {split}"))?;
    let subsets =
        data.balanced_subsets(&sizes, seed).with_context(|| format!("drawing {sizes:?} balanced {split} reviews"))?;
    subsets.try_into().map_err(|_| anyhow::anyhow!("expected {N} subsets"))
}

/// Writes `value` as pretty JSON to `path`, creating its folder.
pub fn write_json(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let json = serde_json::to_string_pretty(value)?;
    std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))
}
