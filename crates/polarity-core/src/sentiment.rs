use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::CoreError;

/// The binary IMDB label. The discriminants match the dataset's `label` column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum Sentiment {
    /// `label == 0`.
    Negative = 0,
    /// `label == 1`.
    Positive = 1,
}

impl Sentiment {
    /// Both labels, in class-index order.
    pub const ALL: [Sentiment; 2] = [Sentiment::Negative, Sentiment::Positive];

    /// The class index (0 or 1), as used for logits and confusion matrices.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The label for a class index.
    ///
    /// ```
    /// use polarity_core::Sentiment;
    /// assert_eq!(Sentiment::from_label(1).unwrap(), Sentiment::Positive);
    /// assert!(Sentiment::from_label(2).is_err());
    /// ```
    pub fn from_label(label: i64) -> Result<Self, CoreError> {
        match label {
            0 => Ok(Sentiment::Negative),
            1 => Ok(Sentiment::Positive),
            other => Err(CoreError::InvalidLabel(other)),
        }
    }

    /// The word a causal LM is taught to answer with.
    pub fn word(self) -> &'static str {
        match self {
            Sentiment::Negative => "negative",
            Sentiment::Positive => "positive",
        }
    }
}

impl TryFrom<i64> for Sentiment {
    type Error = CoreError;
    fn try_from(label: i64) -> Result<Self, CoreError> {
        Sentiment::from_label(label)
    }
}

impl FromStr for Sentiment {
    type Err = CoreError;
    /// Parses `negative`/`positive` (any case, surrounding whitespace ignored) or `0`/`1`.
    fn from_str(s: &str) -> Result<Self, CoreError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "negative" | "neg" | "0" => Ok(Sentiment::Negative),
            "positive" | "pos" | "1" => Ok(Sentiment::Positive),
            _ => Err(CoreError::InvalidLabelWord(s.to_string())),
        }
    }
}

impl fmt::Display for Sentiment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip_through_index_and_word() {
        for sentiment in Sentiment::ALL {
            assert_eq!(Sentiment::from_label(sentiment.index() as i64).unwrap(), sentiment);
            assert_eq!(sentiment.word().parse::<Sentiment>().unwrap(), sentiment);
        }
        assert_eq!(Sentiment::from_label(-1), Err(CoreError::InvalidLabel(-1)));
        assert!(" Positive\n".parse::<Sentiment>().is_ok());
        assert!("neutral".parse::<Sentiment>().is_err());
    }
}
