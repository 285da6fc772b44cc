//! Metrics against values computed by hand from sklearn's definitions (zero_division = 0).

use polarity_core::Sentiment::{self, Negative, Positive};
use polarity_metrics::{ConfusionMatrix, MetricsError};

fn matrix(gold: &[Sentiment], predicted: &[Sentiment]) -> ConfusionMatrix {
    let mut m = ConfusionMatrix::default();
    m.update(gold, predicted).unwrap();
    m
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[test]
fn mixed_predictions_match_hand_computed_values() {
    // gold:      P P P P N N N
    // predicted: P P P N P N N   -> tp(P)=3 fn(P)=1 fp(P)=1, tp(N)=2 fn(N)=1 fp(N)=1
    let gold = [Positive, Positive, Positive, Positive, Negative, Negative, Negative];
    let predicted = [Positive, Positive, Positive, Negative, Positive, Negative, Negative];
    let r = matrix(&gold, &predicted).report();
    assert_eq!(r.total, 7);
    assert!(close(r.accuracy, 5.0 / 7.0));
    let [neg, pos] = r.per_class;
    assert!(close(pos.precision, 3.0 / 4.0) && close(pos.recall, 3.0 / 4.0) && close(pos.f1, 0.75));
    assert!(close(neg.precision, 2.0 / 3.0) && close(neg.recall, 2.0 / 3.0) && close(neg.f1, 2.0 / 3.0));
    assert_eq!((neg.support, pos.support), (3, 4));
    assert!(close(r.macro_f1, (0.75 + 2.0 / 3.0) / 2.0));
    assert!(close(r.macro_precision, (0.75 + 2.0 / 3.0) / 2.0));
    assert_eq!(r.confusion.counts, [[2, 1], [1, 3]]);
}

#[test]
fn a_class_never_predicted_scores_zero_without_nan() {
    // Always "positive" on a balanced set: negative has precision 0/0 -> 0, recall 0, f1 0.
    let gold = [Positive, Negative, Positive, Negative];
    let r = matrix(&gold, &[Positive; 4]).report();
    let [neg, pos] = r.per_class;
    assert_eq!((neg.precision, neg.recall, neg.f1), (0.0, 0.0, 0.0));
    assert!(close(pos.precision, 0.5) && close(pos.recall, 1.0) && close(pos.f1, 2.0 / 3.0));
    assert!(close(r.accuracy, 0.5));
    assert!(close(r.macro_f1, 1.0 / 3.0));
    assert!(close(r.macro_recall, 0.5));
}

#[test]
fn a_class_absent_from_gold_but_predicted_counts_in_the_macro_average() {
    // sklearn: f1_score([1,1,1], [1,0,1], average="macro") == (0 + 0.8) / 2
    let r = matrix(&[Positive; 3], &[Positive, Negative, Positive]).report();
    let [neg, pos] = r.per_class;
    assert_eq!(neg.support, 0);
    assert_eq!((neg.precision, neg.recall, neg.f1), (0.0, 0.0, 0.0));
    assert!(close(pos.f1, 0.8));
    assert!(close(r.macro_f1, 0.4));
}

#[test]
fn a_class_absent_everywhere_is_left_out_of_the_macro_average() {
    // sklearn's labels=None uses only labels seen: f1_score([1,1], [1,1], average="macro") == 1.0
    let r = matrix(&[Positive; 2], &[Positive; 2]).report();
    assert!(close(r.macro_f1, 1.0));
    assert!(close(r.accuracy, 1.0));
}

#[test]
fn empty_input_gives_zeros() {
    let r = ConfusionMatrix::default().report();
    assert_eq!(r.total, 0);
    assert_eq!((r.accuracy, r.macro_f1, r.macro_precision, r.macro_recall), (0.0, 0.0, 0.0, 0.0));
    assert!(r.per_class.iter().all(|m| m.f1 == 0.0 && m.support == 0));
    let mut m = ConfusionMatrix::default();
    m.update(&[], &[]).unwrap();
    assert_eq!(m.report(), r);
}

#[test]
fn streaming_and_merging_equal_one_pass() {
    let gold = [Positive, Negative, Negative, Positive, Positive, Negative];
    let predicted = [Positive, Positive, Negative, Negative, Positive, Negative];
    let whole = matrix(&gold, &predicted);
    let mut first = matrix(&gold[..2], &predicted[..2]);
    let second = matrix(&gold[2..], &predicted[2..]);
    first.merge(&second);
    assert_eq!(first, whole);
    let mut streamed = ConfusionMatrix::default();
    for (g, p) in gold.iter().zip(&predicted) {
        streamed.push(*g, *p);
    }
    assert_eq!(streamed.report(), whole.report());
}

#[test]
fn mismatched_lengths_are_a_typed_error() {
    let err = ConfusionMatrix::default().update(&[Positive], &[]).unwrap_err();
    assert_eq!(err, MetricsError::LengthMismatch { gold: 1, predicted: 0 });
    assert!(err.to_string().contains("1 gold labels but 0 predictions"));
}

#[test]
fn report_renders_a_table_and_round_trips_through_json() {
    let r = matrix(&[Positive, Negative], &[Positive, Positive]).report();
    let table = r.to_string();
    assert!(table.contains("macro avg") && table.contains("accuracy") && table.contains("confusion"), "{table}");
    let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
    assert_eq!(json["accuracy"], 0.5);
    assert_eq!(json["confusion"]["counts"][0][1], 1);
    assert_eq!(json["per_class"][1]["label"], "positive");
    let back: polarity_metrics::ClassificationReport = serde_json::from_str(&r.to_json()).unwrap();
    assert_eq!(back, r);
}
