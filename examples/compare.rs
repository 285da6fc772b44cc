//! The IMDB comparison table: every row fine-tuned and measured the same way on this machine, written as
//! report.md, report.json, chart.svg and chart.png ([`polarity_bench::compare`]).
//!
//! ```text
//! HF_HOME=../shared/hf HF_HUB_OFFLINE=1 cargo run --release --example compare              # ~15 min on 2 cores
//! HF_HOME=../shared/hf HF_HUB_OFFLINE=1 cargo run --release --example compare -- --resume compare-out
//! cargo run --release --example compare -- --models minilm,all-minilm-l6-v2 --out quick
//! cargo run --release --features cuda --example compare -- --preset reference --out reference  # GPU + weights
//! ```
//!
//! Each row runs in a process of its own (this program, with `--row NAME`), so its peak memory is its
//! own and a crash or an out-of-memory kill ends that row only; each row's result is saved as soon as it
//! ends, and `--resume DIR` skips the rows already finished. The default preset's reference models
//! (BERT-base, DistilBERT, Llama-3-8B-Instruct) run with random weights of their real shape, asked for by
//! the preset by name: their speed and memory are measured, their accuracy is not. `--reference FILE`
//! (from `scripts/reference_hf.py`) adds PyTorch's numbers and the ratios.

mod common;

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use polarity_bench::HardwareRecord;
use polarity_bench::compare::{
    Plan, Preset, PresetOptions, ReferenceResults, ResultsDir, RowOutcome, RowSpec, read_json, run_row,
};
use polarity_core::backend::default_backend_name;
use polarity_finetune::{RecipeConfig, WeightInit};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum PresetArg {
    /// Fits in 30 minutes on a 2-core CPU: MiniLM and SmolLM2 with their weights, the reference models at
    /// their real shapes with random weights.
    Default,
    /// A few minutes on a 2-core CPU: MiniLM, SmolLM2 and DistilBERT (random weights) on small subsets.
    Quick,
    /// The reference models at GPU sizes with random weights (scripts/gpu-check.sh).
    Gpu,
    /// The reference setup (25k/25k, reference hyper-parameters) for a GPU machine with the weights.
    Reference,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum InitArg {
    /// The checkpoint's weights (an error where they are missing).
    Pretrained,
    /// Seeded random weights of the shape config.json describes (speed and memory only).
    Random,
}

/// Run the IMDB comparison and write report.md, report.json, chart.svg and chart.png.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The folder the results go into (a new comparison; see --resume).
    #[arg(long, default_value = "compare-out", conflicts_with = "resume")]
    out: PathBuf,
    /// Continue the comparison in this folder: its plan, skipping the rows already finished.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Which rows, with which settings.
    #[arg(long, value_enum, default_value = "default")]
    preset: PresetArg,
    /// Only these rows, comma-separated: names of the preset's rows, or any hub id, directory or .gguf file of
    /// a supported architecture (BERT, DistilBERT, Llama), which gets the preset's settings for its family.
    #[arg(long, value_delimiter = ',')]
    models: Vec<String>,
    /// Where the weights of the rows named by model in --models come from (the preset's own rows say it
    /// themselves).
    #[arg(long, value_enum, default_value = "pretrained")]
    init: InitArg,
    /// The reference preset's maximum length in tokens (256 or 512).
    #[arg(long, default_value_t = 256)]
    max_length: usize,
    /// The folder holding models/SmolLM2-135M-Instruct.Q4_1.gguf.
    #[arg(long, default_value = "../shared")]
    shared: PathBuf,
    /// PyTorch's numbers for the same rows (scripts/reference_hf.py's output).
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Run the rows in this process instead of one process each (peak memory then accumulates).
    #[arg(long)]
    in_process: bool,
    /// Internal: run this one row of the plan in --out and save its outcome.
    #[arg(long, hide = true)]
    row: Option<String>,
}

fn main() -> ExitCode {
    common::main_with(run)
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(name) = &args.row {
        return run_one_row(&ResultsDir::new(&args.out), name);
    }
    let (results, plan) = match &args.resume {
        Some(dir) => {
            let results = ResultsDir::new(dir);
            let plan = results.load_plan().context("--resume needs the folder of an earlier comparison")?;
            (results, plan)
        }
        None => {
            let results = ResultsDir::new(&args.out);
            if results.path().join(polarity_bench::compare::PLAN_FILE).exists() {
                bail!(
                    "{} already holds a comparison: continue it with --resume {0}, or choose another --out",
                    args.out.display()
                );
            }
            let plan = plan(&args)?;
            results.save_plan(&plan)?;
            (results, plan)
        }
    };
    let reference: Option<ReferenceResults> = args.reference.as_deref().map(read_json).transpose()?;

    let mut failed = 0;
    for (index, spec) in plan.rows.iter().enumerate() {
        let position = format!("[{}/{}] {}", index + 1, plan.rows.len(), spec.name);
        if results.finished_row(spec)?.is_some() {
            println!("{position}: finished earlier, kept");
            continue;
        }
        println!("{position}: {} ({}, {} weights), {}", spec.model(), spec.model_type(), spec.init(), spec.tuning());
        let outcome = if args.in_process { run_here(spec) } else { run_in_child(&results, spec)? };
        results.save_row(&outcome)?;
        match &outcome {
            RowOutcome::Finished(row) => println!(
                "{position}: done in {:.0} s: accuracy {}, inference {:.2} samples/s, peak {:.2} GB",
                row.wall_seconds,
                row.accuracy.value.map_or_else(|| row.accuracy.how.clone(), |v| format!("{v:.4}")),
                row.inference_samples_per_second.value.unwrap_or(f64::NAN),
                row.peak_rss_bytes.value.unwrap_or(f64::NAN) / 1e9
            ),
            RowOutcome::Failed(failure) => {
                failed += 1;
                println!("{position}: failed: {}", failure.error);
            }
        }
    }

    let precision = match &plan.rows.first().map(|spec| &spec.recipe) {
        Some(RecipeConfig::Encoder(recipe)) => recipe.trainer.precision,
        Some(RecipeConfig::Lora(recipe)) => recipe.trainer.precision,
        None => Default::default(),
    };
    let hardware = HardwareRecord::detect(default_backend_name(), precision);
    let report = results.gather(&plan, hardware, reference)?;
    results.write_report(&report)?;
    let markdown = report.to_markdown();
    let table: Vec<&str> = markdown.lines().take_while(|line| !line.starts_with("## ")).collect();
    println!("\n{}\nreport.md, report.json, chart.svg, chart.png in {}", table.join("\n"), results.path().display());
    if failed > 0 {
        bail!(
            "{failed} of {} rows failed (report.md says why); --resume {} runs them again",
            plan.rows.len(),
            results.path().display()
        );
    }
    Ok(())
}

/// The rows of the preset, or those --models names.
fn plan(args: &Args) -> anyhow::Result<Plan> {
    let (preset, preset_name) = match args.preset {
        PresetArg::Default => (Preset::Default, "default"),
        PresetArg::Quick => (Preset::Quick, "quick"),
        PresetArg::Gpu => (Preset::Gpu, "gpu"),
        PresetArg::Reference => (Preset::Reference, "reference"),
    };
    let options = PresetOptions { shared_dir: args.shared.clone(), max_length: args.max_length, ..Default::default() };
    let rows = preset.rows(&options);
    if args.models.is_empty() {
        return Ok(Plan { preset: preset_name.into(), rows });
    }
    let init = match args.init {
        InitArg::Pretrained => WeightInit::Pretrained,
        InitArg::Random => WeightInit::Random,
    };
    let mut picked: Vec<RowSpec> = Vec::new();
    for model in &args.models {
        let row = match rows.iter().find(|row| &row.name == model) {
            Some(row) => row.clone(),
            None => preset.row_for_model(model, init, &options).with_context(|| {
                let names: Vec<&str> = rows.iter().map(|row| row.name.as_str()).collect();
                format!("--models {model}: neither a row of the preset ({}) nor a usable model", names.join(", "))
            })?,
        };
        if picked.iter().any(|other| other.name == row.name) {
            bail!("--models names row {} twice", row.name);
        }
        picked.push(row);
    }
    Ok(Plan { preset: format!("{preset_name}, rows picked by --models"), rows: picked })
}

/// Runs `spec` in this process.
fn run_here(spec: &RowSpec) -> RowOutcome {
    match run_row(spec) {
        Ok(report) => RowOutcome::Finished(Box::new(report)),
        Err(error) => RowOutcome::failed(spec, error_chain(&error)),
    }
}

/// Runs `spec` in a process of its own (this program with `--row`), which saves its outcome.
fn run_in_child(results: &ResultsDir, spec: &RowSpec) -> anyhow::Result<RowOutcome> {
    let exe = std::env::current_exe().context("finding this program to run the row in a process of its own")?;
    let status = Command::new(&exe)
        .arg("--out")
        .arg(results.path())
        .arg("--row")
        .arg(&spec.name)
        .status()
        .with_context(|| format!("starting {}", exe.display()))?;
    Ok(match results.load_row(spec)? {
        Some(outcome) if status.success() || outcome.finished().is_none() => outcome,
        _ => RowOutcome::failed(
            spec,
            format!("the row's process ended ({status}) without a result; killed for lack of memory?"),
        ),
    })
}

/// The child's side: one row of the plan in `results`, its outcome saved.
fn run_one_row(results: &ResultsDir, name: &str) -> anyhow::Result<()> {
    let plan = results.load_plan()?;
    let spec = plan.rows.iter().find(|spec| spec.name == name).with_context(|| format!("no row {name} in the plan"))?;
    let outcome = run_here(spec);
    results.save_row(&outcome)?;
    match outcome {
        RowOutcome::Finished(_) => Ok(()),
        RowOutcome::Failed(failure) => bail!("{}", failure.error),
    }
}

/// An error and its causes on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
