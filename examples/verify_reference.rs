//! Compares polarity's models with a PyTorch + transformers reference fixture.
//!
//! ```text
//! HF_HOME=../shared/hf HF_HUB_OFFLINE=1 \
//!     cargo run --release --example verify_reference -- ../shared/fixtures/minilm-imdb-128
//! cargo run --release --example verify_reference -- ../shared/fixtures/tiny-bert-cls --model path/to/model
//! cargo run --release --example verify_reference -- path/to/llama3-tokenizer-ids   # kind tokenizer-ids
//! ```
//!
//! Reads the fixture's `meta.json` `kind`, runs the matching model family on the fixture's inputs and
//! prints one line per compared tensor: `name max_abs_err tolerance ok|FAIL` (for `tokenizer-ids`, one
//! line per tokenizer source, the error counting the cases whose ids differ). Exits with 1 when any
//! check fails and with 2 when the fixture or model cannot be used at all.

mod common;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use polarity_core::reference::{Fixture, TensorCheck};

/// Verify a model against a reference fixture.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The fixture directory (with meta.json, and reference.safetensors unless the kind needs none).
    fixture_dir: PathBuf,
    /// Run this model (or, for tokenizer-ids, tokenizer) instead of the fixture's: a hub id or a local path.
    #[arg(long)]
    model: Option<String>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match verify(&args) {
        Ok(checks) => {
            for check in &checks {
                println!("{check}");
            }
            if checks.iter().all(|check| check.ok) { ExitCode::SUCCESS } else { ExitCode::from(1) }
        }
        Err(error) => {
            eprintln!("{}", common::error_report(&error));
            ExitCode::from(2)
        }
    }
}

fn verify(args: &Args) -> anyhow::Result<Vec<TensorCheck>> {
    let fixture = Fixture::open_meta(&args.fixture_dir)?;
    let model = args.model.as_deref();
    let checks = match fixture.kind()? {
        polarity_encoder::reference::HIDDEN_STATES_KIND | polarity_encoder::reference::SEQUENCE_CLASSIFICATION_KIND => {
            polarity_encoder::reference::verify(&args.fixture_dir, model)?
        }
        polarity_llama::reference::LORA_KIND
        | polarity_llama::reference::PROMPTS_KIND
        | polarity_llama::reference::TOKEN_IDS_KIND => polarity_llama::reference::verify(&args.fixture_dir, model)?,
        other => anyhow::bail!("no model family handles fixture kind {other:?}"),
    };
    anyhow::ensure!(!checks.is_empty(), "the fixture had nothing to compare");
    Ok(checks)
}
