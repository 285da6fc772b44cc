//! Timing primitives: per-batch latency percentiles and throughput.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::BenchError;

/// Per-batch latency in milliseconds: mean, nearest-rank percentiles, extremes.
///
/// Percentiles use the **nearest-rank** method: the p-th percentile of `n` sorted values is the value of
/// rank `ceil(p / 100 * n)` (1-based), so it is always one of the measured latencies (p50 of
/// `[10, 20, 30, 40]` ms is 20 ms, p95 is 40 ms).
///
/// ```
/// use std::time::Duration;
/// use polarity_bench::LatencySummary;
///
/// let latencies: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
/// let summary = LatencySummary::from_durations(&latencies)?;
/// assert_eq!((summary.p50_ms, summary.p95_ms, summary.p99_ms), (50.0, 95.0, 99.0));
/// assert_eq!((summary.min_ms, summary.max_ms, summary.mean_ms), (1.0, 100.0, 50.5));
/// assert!(LatencySummary::from_durations(&[]).is_err());
/// # Ok::<(), polarity_bench::BenchError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Number of latencies summarised.
    pub count: usize,
    /// Arithmetic mean.
    pub mean_ms: f64,
    /// Median (nearest rank).
    pub p50_ms: f64,
    /// 95th percentile (nearest rank).
    pub p95_ms: f64,
    /// 99th percentile (nearest rank).
    pub p99_ms: f64,
    /// Fastest.
    pub min_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

impl LatencySummary {
    /// The summary of `durations`; an empty list is [`BenchError::EmptyInput`].
    pub fn from_durations(durations: &[Duration]) -> Result<Self, BenchError> {
        if durations.is_empty() {
            return Err(BenchError::EmptyInput { what: "the list of latencies" });
        }
        let mut millis: Vec<f64> = durations.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        millis.sort_by(f64::total_cmp);
        Ok(Self {
            count: millis.len(),
            mean_ms: millis.iter().sum::<f64>() / millis.len() as f64,
            p50_ms: nearest_rank(&millis, 50.0),
            p95_ms: nearest_rank(&millis, 95.0),
            p99_ms: nearest_rank(&millis, 99.0),
            min_ms: millis[0],
            max_ms: millis[millis.len() - 1],
        })
    }
}

impl fmt::Display for LatencySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms (mean {:.1}, min {:.1}, max {:.1}; {} batches)",
            self.p50_ms, self.p95_ms, self.p99_ms, self.mean_ms, self.min_ms, self.max_ms, self.count
        )
    }
}

/// The nearest-rank `p`-th percentile of non-empty ascending `sorted`.
fn nearest_rank(sorted: &[f64], p: f64) -> f64 {
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Samples and tokens per second of wall-clock time.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Throughput {
    /// Examples per second.
    pub samples_per_second: f64,
    /// Input tokens (padding excluded) per second, where the tokens were counted.
    pub tokens_per_second: Option<f64>,
}

impl Throughput {
    /// The rates of `samples` examples and `tokens` tokens processed in `seconds` (a time under a
    /// nanosecond, the clock's resolution, counts as one, so the rates stay finite).
    pub fn new(samples: usize, tokens: Option<usize>, seconds: f64) -> Self {
        let seconds = seconds.max(1e-9);
        Self {
            samples_per_second: samples as f64 / seconds,
            tokens_per_second: tokens.map(|tokens| tokens as f64 / seconds),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles_on_known_inputs() {
        let sorted = [10.0, 20.0, 30.0, 40.0];
        assert_eq!(nearest_rank(&sorted, 50.0), 20.0);
        assert_eq!(nearest_rank(&sorted, 95.0), 40.0);
        assert_eq!(nearest_rank(&sorted, 0.0), 10.0);
        assert_eq!(nearest_rank(&sorted, 100.0), 40.0);
        assert_eq!(nearest_rank(&[7.0], 99.0), 7.0);
        // Five values: p50 is rank ceil(2.5) = 3.
        assert_eq!(nearest_rank(&[1.0, 2.0, 3.0, 4.0, 5.0], 50.0), 3.0);
    }

    #[test]
    fn a_summary_sorts_its_input() {
        let durations: Vec<Duration> = [30, 10, 40, 20].into_iter().map(Duration::from_millis).collect();
        let summary = LatencySummary::from_durations(&durations).unwrap();
        assert_eq!(summary.count, 4);
        assert_eq!((summary.p50_ms, summary.p95_ms, summary.p99_ms), (20.0, 40.0, 40.0));
        assert_eq!((summary.min_ms, summary.max_ms, summary.mean_ms), (10.0, 40.0, 25.0));
    }

    #[test]
    fn an_empty_list_is_an_error() {
        assert!(matches!(LatencySummary::from_durations(&[]), Err(BenchError::EmptyInput { .. })));
    }

    #[test]
    fn throughput_of_zero_seconds_is_finite() {
        let rates = Throughput::new(10, Some(100), 0.0);
        assert!(rates.samples_per_second.is_finite() && rates.samples_per_second > 0.0);
        assert_eq!(Throughput::new(10, None, 2.0), Throughput { samples_per_second: 5.0, tokens_per_second: None });
    }
}
