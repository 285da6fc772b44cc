//! Classification metrics for polarity, with scikit-learn's definitions.
//!
//! [`ConfusionMatrix`] is a streaming accumulator: update it per batch, [`merge`](ConfusionMatrix::merge)
//! two of them (say, from two evaluation threads), then ask for a [`ClassificationReport`] with accuracy,
//! per-class precision/recall/F1 and their macro averages. The report renders as a table (`Display`)
//! and serialises to JSON (`serde`).
//!
//! Definitions follow `sklearn.metrics` with `zero_division=0`: a ratio whose denominator is zero is 0,
//! and the macro average runs over the labels present in the gold labels or the predictions (sklearn's
//! default `labels=None`). An empty input gives zeros everywhere.
//!
//! ```
//! use polarity_core::Sentiment::{Negative, Positive};
//! use polarity_metrics::ConfusionMatrix;
//!
//! let mut matrix = ConfusionMatrix::default();
//! matrix.update(&[Positive, Positive, Negative], &[Positive, Negative, Negative])?;
//! let report = matrix.report();
//! assert!((report.accuracy - 2.0 / 3.0).abs() < 1e-12);
//! assert!((report.macro_f1 - 2.0 / 3.0).abs() < 1e-12);
//! # Ok::<(), polarity_metrics::MetricsError>(())
//! ```

use std::fmt;

use polarity_core::Sentiment;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Errors of metric accumulation.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum MetricsError {
    /// Gold labels and predictions of different lengths.
    #[error("{gold} gold labels but {predicted} predictions: they must pair up one to one")]
    LengthMismatch {
        /// Number of gold labels.
        gold: usize,
        /// Number of predictions.
        predicted: usize,
    },
}

/// Counts of (gold, predicted) pairs: `counts[gold][predicted]`, in class-index order
/// (0 = negative, 1 = positive), as sklearn's `confusion_matrix` lays them out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfusionMatrix {
    /// `counts[gold][predicted]`.
    pub counts: [[u64; 2]; 2],
}

impl ConfusionMatrix {
    /// Adds one (gold, predicted) pair.
    pub fn push(&mut self, gold: Sentiment, predicted: Sentiment) {
        self.counts[gold.index()][predicted.index()] += 1;
    }

    /// Adds a batch of pairs; the slices must have the same length.
    pub fn update(&mut self, gold: &[Sentiment], predicted: &[Sentiment]) -> Result<(), MetricsError> {
        if gold.len() != predicted.len() {
            return Err(MetricsError::LengthMismatch { gold: gold.len(), predicted: predicted.len() });
        }
        for (g, p) in gold.iter().zip(predicted) {
            self.push(*g, *p);
        }
        Ok(())
    }

    /// Adds another accumulator's counts into this one.
    pub fn merge(&mut self, other: &ConfusionMatrix) {
        for (row, other_row) in self.counts.iter_mut().zip(other.counts) {
            for (count, other_count) in row.iter_mut().zip(other_row) {
                *count += other_count;
            }
        }
    }

    /// Number of pairs seen.
    pub fn total(&self) -> u64 {
        self.counts.iter().flatten().sum()
    }

    /// Number of correct predictions.
    pub fn correct(&self) -> u64 {
        self.counts[0][0] + self.counts[1][1]
    }

    /// The metrics of the pairs seen so far.
    pub fn report(&self) -> ClassificationReport {
        let total = self.total();
        let per_class = Sentiment::ALL.map(|class| self.class_metrics(class));
        // sklearn's labels=None: average over the labels that occur in gold or predictions.
        let present: Vec<&ClassMetrics> =
            per_class.iter().filter(|m| m.support > 0 || self.predicted_count(m.label) > 0).collect();
        let macro_of = |f: fn(&ClassMetrics) -> f64| {
            if present.is_empty() { 0.0 } else { present.iter().map(|m| f(m)).sum::<f64>() / present.len() as f64 }
        };
        ClassificationReport {
            total,
            accuracy: ratio(self.correct(), total),
            macro_precision: macro_of(|m| m.precision),
            macro_recall: macro_of(|m| m.recall),
            macro_f1: macro_of(|m| m.f1),
            per_class,
            confusion: *self,
        }
    }

    fn predicted_count(&self, class: Sentiment) -> u64 {
        self.counts[0][class.index()] + self.counts[1][class.index()]
    }

    fn class_metrics(&self, class: Sentiment) -> ClassMetrics {
        let c = class.index();
        let true_positives = self.counts[c][c];
        let support = self.counts[c][0] + self.counts[c][1];
        let predicted = self.predicted_count(class);
        let false_positives = predicted - true_positives;
        let false_negatives = support - true_positives;
        ClassMetrics {
            label: class,
            precision: ratio(true_positives, predicted),
            recall: ratio(true_positives, support),
            // sklearn's F-beta with beta = 1, zero when undefined.
            f1: ratio(2 * true_positives, 2 * true_positives + false_positives + false_negatives),
            support,
        }
    }
}

fn ratio(numerator: u64, denominator: u64) -> f64 {
    if denominator == 0 { 0.0 } else { numerator as f64 / denominator as f64 }
}

/// Precision, recall and F1 of one class.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    /// The class.
    pub label: Sentiment,
    /// `tp / (tp + fp)`, 0 when the class is never predicted.
    pub precision: f64,
    /// `tp / (tp + fn)`, 0 when the class is absent from the gold labels.
    pub recall: f64,
    /// `2 tp / (2 tp + fp + fn)`, 0 when undefined.
    pub f1: f64,
    /// Number of gold examples of this class.
    pub support: u64,
}

/// Everything an evaluation reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassificationReport {
    /// Number of examples.
    pub total: u64,
    /// Fraction of correct predictions.
    pub accuracy: f64,
    /// Unweighted mean of the per-class precisions (over classes present in gold or predictions).
    pub macro_precision: f64,
    /// Unweighted mean of the per-class recalls.
    pub macro_recall: f64,
    /// Unweighted mean of the per-class F1 scores.
    pub macro_f1: f64,
    /// Negative, then positive.
    pub per_class: [ClassMetrics; 2],
    /// The counts the report was computed from.
    pub confusion: ConfusionMatrix,
}

impl ClassificationReport {
    /// The report as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report of plain numbers always serialises")
    }
}

impl fmt::Display for ClassificationReport {
    /// A sklearn-style `classification_report` table followed by the confusion matrix.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:>12} {:>9} {:>9} {:>9} {:>9}", "", "precision", "recall", "f1-score", "support")?;
        for m in &self.per_class {
            writeln!(
                f,
                "{:>12} {:>9.4} {:>9.4} {:>9.4} {:>9}",
                m.label.word(),
                m.precision,
                m.recall,
                m.f1,
                m.support
            )?;
        }
        writeln!(f)?;
        writeln!(f, "{:>12} {:>9} {:>9} {:>9.4} {:>9}", "accuracy", "", "", self.accuracy, self.total)?;
        writeln!(
            f,
            "{:>12} {:>9.4} {:>9.4} {:>9.4} {:>9}",
            "macro avg", self.macro_precision, self.macro_recall, self.macro_f1, self.total
        )?;
        writeln!(f)?;
        writeln!(f, "confusion (rows gold, columns predicted)")?;
        writeln!(f, "{:>12} {:>9} {:>9}", "", "negative", "positive")?;
        for class in Sentiment::ALL {
            let row = self.confusion.counts[class.index()];
            writeln!(f, "{:>12} {:>9} {:>9}", class.word(), row[0], row[1])?;
        }
        Ok(())
    }
}
