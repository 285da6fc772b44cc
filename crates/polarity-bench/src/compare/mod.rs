//! The IMDB comparison: rows of models tuned and measured the same way, saved as they finish, and
//! rendered as one report.
//!
//! A row ([`RowSpec`]) is a fine-tuning recipe with every setting, the seeded balanced IMDB subsets it
//! trains and tests on, and its inference benchmark. [`run_row`] runs the recipe's experiment (training,
//! evaluation on the test subset) and benchmarks the trained model's inference with [`InferenceBench`](crate::InferenceBench),
//! returning a [`RowReport`]: every number a [`Quantity`] (value, unit, how it was measured, or why it was
//! not: random-weight rows have no accuracy), an estimate of the full reference setup's time for rows run
//! smaller, and the row's review ids. [`ResultsDir`] saves each row's [`RowOutcome`] as it ends (an
//! interrupted comparison resumes), and writes the [`ComparisonReport`]: `report.json`, `report.md` (the
//! table, estimates, per-row details, hardware record) and the chart (`chart.svg`, `chart.png`).
//!
//! [`Preset::Default`] fits in 30 minutes on a 2-core CPU; [`Preset::Reference`] is the reference setup
//! for a GPU machine with the weights. `cargo run --release --example compare` is a thin caller.

mod markdown;
mod plan;
mod report;
mod run;
mod store;

pub use plan::{
    BERT_BASE_UNCASED, DISTILBERT_BASE_UNCASED, GenerationSpec, InferenceSpec, LLAMA3_8B_INSTRUCT, MINILM_L6,
    ModelFamily, Preset, PresetOptions, REFERENCE_TEST_REVIEWS, REFERENCE_TRAIN_REVIEWS, RowSpec, SMOLLM2_GGUF,
};
pub use report::{
    ComparisonReport, FullSetupEstimate, NO_WEIGHTS, Quantity, ReferenceResults, ReferenceRow, RowFailure, RowOutcome,
    RowReport, RowReviews,
};
pub use run::{run_row, run_row_on};
pub use store::{PLAN_FILE, Plan, REPORT_JSON, REPORT_MD, ResultsDir, read_json};
