//! A comparison's folder: the plan, one file per finished row (written as each row ends), and the reports.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::plan::RowSpec;
use super::report::{ComparisonReport, ReferenceResults, RowOutcome};
use crate::{BenchError, HardwareRecord};

/// The plan's file in a results folder.
pub const PLAN_FILE: &str = "plan.json";
/// The machine-readable report.
pub const REPORT_JSON: &str = "report.json";
/// The table and per-row details.
pub const REPORT_MD: &str = "report.md";

/// The folder a comparison writes into:
///
/// ```text
/// DIR/plan.json          the rows, with every setting (a resumed comparison runs this plan)
/// DIR/rows/NAME.json     one RowOutcome per row, written when the row ends
/// DIR/report.json        ComparisonReport
/// DIR/report.md          the table, the per-row details and the hardware record
/// DIR/chart.svg, .png    accuracy against inference samples/s
/// ```
///
/// Every file is written to a temporary name and renamed into place, so an interruption never leaves a
/// half-written row, and a finished row is never overwritten by a later failure of the same row.
#[derive(Clone, Debug)]
pub struct ResultsDir {
    dir: PathBuf,
}

impl ResultsDir {
    /// The folder `dir` (created when something is first written).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Where row `name`'s outcome goes.
    pub fn row_path(&self, name: &str) -> PathBuf {
        self.dir.join("rows").join(format!("{name}.json"))
    }

    /// Writes the plan.
    pub fn save_plan(&self, plan: &Plan) -> Result<(), BenchError> {
        write_atomically(&self.dir.join(PLAN_FILE), plan)
    }

    /// Reads the plan of an earlier run (for `--resume`).
    pub fn load_plan(&self) -> Result<Plan, BenchError> {
        read_json(&self.dir.join(PLAN_FILE))
    }

    /// Saves a row's outcome. A failure never replaces a finished row.
    pub fn save_row(&self, outcome: &RowOutcome) -> Result<(), BenchError> {
        let name = &outcome.spec().name;
        if matches!(outcome, RowOutcome::Failed(_)) && self.finished_row(outcome.spec())?.is_some() {
            return Ok(());
        }
        write_atomically(&self.row_path(name), outcome)
    }

    /// The saved outcome of `spec`'s row, if any.
    pub fn load_row(&self, spec: &RowSpec) -> Result<Option<RowOutcome>, BenchError> {
        let path = self.row_path(&spec.name);
        if !path.exists() {
            return Ok(None);
        }
        let outcome: RowOutcome = read_json(&path)?;
        if outcome.spec() != spec {
            return Err(BenchError::Read {
                path,
                reason: format!(
                    "this result is of another setup of row {:?} than the plan's; move it away or use a new --out",
                    spec.name
                ),
            });
        }
        Ok(Some(outcome))
    }

    /// The saved outcome of `spec`'s row if it finished (what `--resume` skips).
    pub fn finished_row(&self, spec: &RowSpec) -> Result<Option<RowOutcome>, BenchError> {
        Ok(self.load_row(spec)?.filter(|outcome| outcome.finished().is_some()))
    }

    /// The report of `plan`'s rows as saved so far (rows never run count as failed with that reason).
    pub fn gather(
        &self,
        plan: &Plan,
        hardware: HardwareRecord,
        reference: Option<ReferenceResults>,
    ) -> Result<ComparisonReport, BenchError> {
        let rows = plan
            .rows
            .iter()
            .map(|spec| Ok(self.load_row(spec)?.unwrap_or_else(|| RowOutcome::failed(spec, "not run yet"))))
            .collect::<Result<_, BenchError>>()?;
        Ok(ComparisonReport { preset: plan.preset.clone(), hardware, rows, reference })
    }

    /// Writes report.json, report.md, chart.svg and chart.png.
    pub fn write_report(&self, report: &ComparisonReport) -> Result<(), BenchError> {
        write_atomically(&self.dir.join(REPORT_JSON), report)?;
        let markdown = report.to_markdown();
        write_bytes_atomically(&self.dir.join(REPORT_MD), markdown.as_bytes())?;
        report.write_chart(&self.dir.join("chart.svg"), &self.dir.join("chart.png"))
    }
}

/// What a comparison runs: the preset it came from and its rows, in report order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The preset's name (`default`, `quick`, `gpu`, `reference`), with the rows picked from it.
    pub preset: String,
    /// The rows.
    pub rows: Vec<RowSpec>,
}

/// Reads a JSON file into `T`, naming the file in any error.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, BenchError> {
    let read_error = |reason: String| BenchError::Read { path: path.to_path_buf(), reason };
    // A report is kilobytes; the bound keeps a wrong path (a dataset, a device) from being read whole.
    let text =
        polarity_hub::files::read_regular_to_string_within(path, 64 << 20).map_err(|e| read_error(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| read_error(e.to_string()))
}

fn write_atomically<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<(), BenchError> {
    let json = serde_json::to_string_pretty(value)
        .map_err(|e| BenchError::Write { path: path.to_path_buf(), source: e.into() })?;
    write_bytes_atomically(path, (json + "\n").as_bytes())
}

/// Writes `bytes` to a temporary file beside `path` and renames it into place.
pub(crate) fn write_bytes_atomically(path: &Path, bytes: &[u8]) -> Result<(), BenchError> {
    let write_error = |source| BenchError::Write { path: path.to_path_buf(), source };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(write_error)?;
    }
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".partial");
    let temporary = PathBuf::from(temporary);
    std::fs::write(&temporary, bytes).map_err(write_error)?;
    std::fs::rename(&temporary, path).map_err(write_error)
}
