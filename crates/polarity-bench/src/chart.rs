//! Placeholder until the chart lands.
use std::path::Path;

use crate::BenchError;

/// One point of the chart.
pub struct ChartPoint {
    /// The row's name.
    pub label: String,
    /// Inference samples per second.
    pub samples_per_second: f64,
    /// Accuracy, where measured.
    pub accuracy: Option<f64>,
}

/// Writes the chart as SVG and PNG.
pub fn write_chart(_title: &str, _points: &[ChartPoint], _svg: &Path, _png: &Path) -> Result<(), BenchError> {
    Ok(())
}
