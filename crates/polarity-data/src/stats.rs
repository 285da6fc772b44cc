//! Summaries of a split: rows, label balance, and length percentiles.

use serde::{Deserialize, Serialize};

use crate::ImdbDataset;

/// Percentiles of a list of lengths (numpy's default linear interpolation).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LengthSummary {
    /// Shortest.
    pub min: usize,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Longest.
    pub max: usize,
    /// Arithmetic mean.
    pub mean: f64,
}

impl LengthSummary {
    /// The summary of `lengths`, or `None` when there are none.
    ///
    /// ```
    /// let s = polarity_data::stats::LengthSummary::from_lengths(&[1, 2, 3, 4]).unwrap();
    /// assert_eq!((s.min, s.p50, s.max), (1, 2.5, 4));
    /// ```
    pub fn from_lengths(lengths: &[usize]) -> Option<Self> {
        let mut sorted = lengths.to_vec();
        sorted.sort_unstable();
        let (&min, &max) = (sorted.first()?, sorted.last()?);
        let mean = sorted.iter().sum::<usize>() as f64 / sorted.len() as f64;
        Some(Self {
            min,
            p50: percentile(&sorted, 50.0),
            p90: percentile(&sorted, 90.0),
            p99: percentile(&sorted, 99.0),
            max,
            mean,
        })
    }
}

/// `q`-th percentile of sorted, non-empty values, interpolating linearly between ranks.
fn percentile(sorted: &[usize], q: f64) -> f64 {
    let rank = q / 100.0 * (sorted.len() - 1) as f64;
    let (lower, upper) = (rank.floor() as usize, rank.ceil() as usize);
    let weight = rank - lower as f64;
    sorted[lower] as f64 * (1.0 - weight) + sorted[upper] as f64 * weight
}

/// Rows, balance and character lengths of a split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitStats {
    /// Number of examples.
    pub rows: usize,
    /// Number of positive examples.
    pub positive: usize,
    /// Number of negative examples.
    pub negative: usize,
    /// `positive / rows`.
    pub positive_fraction: f64,
    /// Review lengths in characters (Unicode scalar values).
    pub chars: LengthSummary,
}

impl SplitStats {
    /// The statistics of `dataset`.
    pub fn of(dataset: &ImdbDataset) -> Self {
        let [negative, positive] = dataset.label_counts();
        let rows = negative + positive;
        let char_lengths: Vec<usize> = dataset.examples().iter().map(|e| e.text.chars().count()).collect();
        Self {
            rows,
            positive,
            negative,
            positive_fraction: positive as f64 / rows as f64,
            chars: LengthSummary::from_lengths(&char_lengths).expect("an ImdbDataset is never empty"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_match_numpy_linear_interpolation() {
        // numpy.percentile(range(1, 101), [50, 90, 99]) == [50.5, 90.1, 99.01]
        let lengths: Vec<usize> = (1..=100).collect();
        let s = LengthSummary::from_lengths(&lengths).unwrap();
        assert!((s.p50 - 50.5).abs() < 1e-9 && (s.p90 - 90.1).abs() < 1e-9 && (s.p99 - 99.01).abs() < 1e-9);
        assert_eq!((s.min, s.max), (1, 100));
        assert!((s.mean - 50.5).abs() < 1e-9);
        assert_eq!(LengthSummary::from_lengths(&[7]).unwrap().p99, 7.0);
        assert!(LengthSummary::from_lengths(&[]).is_none());
    }
}
