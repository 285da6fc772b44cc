use serde::{Deserialize, Serialize};

use crate::Sentiment;

/// One labelled review.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    /// The review text, as stored (IMDB keeps its `<br />` tags unless a clean-up is asked for).
    pub text: String,
    /// The gold label.
    pub label: Sentiment,
    /// The star rating (1-10) where the source keeps one, as aclImdb's file names do.
    pub rating: Option<u8>,
}

impl Example {
    /// An example without a star rating.
    pub fn new(text: impl Into<String>, label: Sentiment) -> Self {
        Self { text: text.into(), label, rating: None }
    }
}

/// What a classifier says about one text.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// The predicted label (the argmax).
    pub label: Sentiment,
    /// The model's probability for `label`, in `[0.5, 1]`.
    pub probability: f32,
}

impl Prediction {
    /// The prediction from two class scores `[negative, positive]` (logits, or label-word scores),
    /// through a softmax. Ties go to `Negative`, as `argmax` picks the first maximum.
    pub fn from_logits(logits: [f32; 2]) -> Self {
        let [negative, positive] = logits;
        // softmax over two classes = sigmoid of the difference; stable for large margins.
        let p_positive = 1.0 / (1.0 + (negative - positive).exp());
        if positive > negative {
            Self { label: Sentiment::Positive, probability: p_positive }
        } else {
            Self { label: Sentiment::Negative, probability: 1.0 - p_positive }
        }
    }

    /// The probability of the positive class.
    pub fn positive_probability(&self) -> f32 {
        match self.label {
            Sentiment::Positive => self.probability,
            Sentiment::Negative => 1.0 - self.probability,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prediction_is_the_softmax_argmax() {
        let p = Prediction::from_logits([0.0, 0.0]);
        assert_eq!(p.label, Sentiment::Negative);
        assert!((p.probability - 0.5).abs() < 1e-6);

        let p = Prediction::from_logits([1.0, 3.0]);
        assert_eq!(p.label, Sentiment::Positive);
        let expected = 3f32.exp() / (1f32.exp() + 3f32.exp());
        assert!((p.probability - expected).abs() < 1e-6);
        assert!((p.positive_probability() - expected).abs() < 1e-6);

        let p = Prediction::from_logits([200.0, -200.0]);
        assert_eq!(p.label, Sentiment::Negative);
        assert_eq!(p.probability, 1.0);
        assert!(p.probability.is_finite());
    }
}
