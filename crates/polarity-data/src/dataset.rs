use std::fmt;

use burn::data::dataset::Dataset;
use polarity_core::{Example, Sentiment};
use serde::{Deserialize, Serialize};

use crate::DataError;

/// The two IMDB splits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// 25,000 reviews.
    Train,
    /// 25,000 reviews.
    Test,
}

impl Split {
    /// Both splits.
    pub const ALL: [Split; 2] = [Split::Train, Split::Test];

    /// `train` or `test`, as in file and directory names.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An in-memory list of labelled reviews with a name for messages and reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImdbDataset {
    name: String,
    examples: Vec<Example>,
}

impl ImdbDataset {
    /// A dataset of `examples`; an empty list is an error (see [`DataError::Empty`]).
    pub fn new(name: impl Into<String>, examples: Vec<Example>) -> Result<Self, DataError> {
        let name = name.into();
        if examples.is_empty() {
            return Err(DataError::Empty { source_name: name });
        }
        Ok(Self { name, examples })
    }

    /// Where the examples came from (`stanfordnlp/imdb:train`, a file path, ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The examples, in order.
    pub fn examples(&self) -> &[Example] {
        &self.examples
    }

    /// Takes the examples out.
    pub fn into_examples(self) -> Vec<Example> {
        self.examples
    }

    /// `[negative, positive]` counts.
    pub fn label_counts(&self) -> [usize; 2] {
        let mut counts = [0; 2];
        for example in &self.examples {
            counts[example.label.index()] += 1;
        }
        counts
    }

    /// The texts, borrowed, in order.
    pub fn texts(&self) -> Vec<&str> {
        self.examples.iter().map(|e| e.text.as_str()).collect()
    }

    /// The labels, in order.
    pub fn labels(&self) -> Vec<Sentiment> {
        self.examples.iter().map(|e| e.label).collect()
    }

    /// Replaces IMDB's `<br />` line breaks by spaces.
    ///
    /// Off by default (the reference pipeline trains on the raw text); opt in explicitly.
    pub fn with_html_breaks_cleaned(mut self) -> Self {
        for example in &mut self.examples {
            example.text = clean_html_breaks(&example.text);
        }
        self
    }

    /// A dataset from parts known to be non-empty.
    pub(crate) fn from_parts(name: String, examples: Vec<Example>) -> Self {
        debug_assert!(!examples.is_empty());
        Self { name, examples }
    }

    pub(crate) fn renamed(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
}

impl Dataset<Example> for ImdbDataset {
    fn get(&self, index: usize) -> Option<Example> {
        self.examples.get(index).cloned()
    }

    fn len(&self) -> usize {
        self.examples.len()
    }
}

/// Replaces every HTML line break (`<br />`, `<br/>`, `<br>`, any case) with one space, and
/// collapses the runs of spaces that leaves.
///
/// ```
/// assert_eq!(polarity_data::clean_html_breaks("Great.<br /><br />Really."), "Great. Really.");
/// ```
pub fn clean_html_breaks(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('<') {
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        match html_break_len(tail) {
            Some(len) => {
                if !out.ends_with(' ') {
                    out.push(' ');
                }
                rest = tail[len..].trim_start_matches(' ');
            }
            None => {
                out.push('<');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The byte length of an HTML break at the start of `s`, if there is one.
fn html_break_len(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    if bytes.len() < 4 || !bytes[1..3].eq_ignore_ascii_case(b"br") {
        return None;
    }
    let mut i = 3;
    while i < bytes.len() && bytes[i] == b' ' {
        i += 1;
    }
    if i < bytes.len() && bytes[i] == b'/' {
        i += 1;
    }
    (i < bytes.len() && bytes[i] == b'>').then_some(i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_breaks_become_single_spaces() {
        assert_eq!(clean_html_breaks("a<br /><br />b"), "a b");
        assert_eq!(clean_html_breaks("a <BR/> b<br>c"), "a b c");
        assert_eq!(clean_html_breaks("x < y <b>bold</b> <br"), "x < y <b>bold</b> <br");
        assert_eq!(clean_html_breaks("no tags"), "no tags");
    }

    #[test]
    fn empty_dataset_is_an_error_and_counts_are_per_label() {
        assert!(matches!(ImdbDataset::new("nothing", vec![]), Err(DataError::Empty { .. })));
        let ds = ImdbDataset::new(
            "three",
            vec![
                Example::new("good<br />film", Sentiment::Positive),
                Example::new("bad", Sentiment::Negative),
                Example::new("fine", Sentiment::Positive),
            ],
        )
        .unwrap();
        assert_eq!(ds.label_counts(), [1, 2]);
        assert_eq!(Dataset::len(&ds), 3);
        assert_eq!(ds.get(1).unwrap().text, "bad");
        assert!(ds.get(3).is_none());
        assert_eq!(ds.with_html_breaks_cleaned().examples()[0].text, "good film");
    }
}
