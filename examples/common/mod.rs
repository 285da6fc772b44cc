//! What the examples share: logging set-up, error reporting, dataset subsets and JSON output.

// Each example uses only some of these.
#![allow(dead_code)]

use std::path::Path;

/// mimalloc keeps freed pages for reuse. With glibc's allocator every large tensor buffer (the
/// attention scores of one layer are ~100 MB at batch 32 x 256) is a fresh `mmap`, and page faults
/// took ~12 % of an encoder forward pass (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tells mimalloc never to return freed pages to the OS. By default it does so a second after a free;
/// a training step takes seconds, so every step re-faulted (and the kernel re-zeroed) gigabytes of
/// activations: a MiniLM step ran 2.25 samples/s with the default and 2.89 without purging.
fn keep_freed_memory() {
    // `mi_option_purge_delay` in mimalloc.h (v3); libmimalloc-sys has no constant for it.
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: sets a process-wide integer option; mimalloc reads options atomically.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, -1) };
}
use std::process::ExitCode;

use anyhow::Context;
use polarity_data::{ImdbDataset, Split, hub};
use serde::Serialize;

/// Logs to stderr at `RUST_LOG`'s level (default `warn`), runs `run` and turns an error into a
/// one-line message (with its causes) and a failing exit code.
pub fn main_with(run: impl FnOnce() -> anyhow::Result<()>) -> ExitCode {
    keep_freed_memory();
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

/// Writes `value` as pretty JSON to `path`, creating its folder.
pub fn write_json(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let json = serde_json::to_string_pretty(value)?;
    std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))
}
