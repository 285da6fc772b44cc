//! Reading and writing transformers' `config.json`.
//!
//! The architecture configs ([`BertConfig`](crate::bert::BertConfig),
//! [`DistilBertConfig`](crate::distilbert::DistilBertConfig)) are burn `Config`s; this module maps them
//! from and to the Hugging Face JSON, field by field, so that every missing or malformed field becomes
//! an [`EncoderError`] naming it.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::EncoderError;

/// A parsed `config.json`, with typed accessors that name the file and field in their errors.
#[derive(Clone, Debug)]
pub struct HfConfigJson {
    path: PathBuf,
    fields: Map<String, Value>,
}

impl HfConfigJson {
    /// Reads and parses `path`.
    pub fn read(path: &Path) -> Result<Self, EncoderError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| EncoderError::Io { path: path.to_path_buf(), source })?;
        Self::parse(&text, path)
    }

    /// Parses `text`; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, EncoderError> {
        let invalid = |reason: String| EncoderError::InvalidConfig { path: path.to_path_buf(), reason };
        match serde_json::from_str::<Value>(text).map_err(|e| invalid(e.to_string()))? {
            Value::Object(fields) => Ok(Self { path: path.to_path_buf(), fields }),
            other => Err(invalid(format!("expected a JSON object, found {}", json_kind(&other)))),
        }
    }

    /// The file this config was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `model_type` (`"bert"`, `"distilbert"`, ...), if present.
    pub fn model_type(&self) -> Result<Option<&str>, EncoderError> {
        self.optional_str("model_type")
    }

    /// Fails unless `model_type` is absent or equal to `expected`.
    pub fn expect_model_type(&self, expected: &str) -> Result<(), EncoderError> {
        match self.model_type()? {
            Some(found) if found != expected => {
                Err(self.invalid("model_type", format!("is {found:?}, but this model is {expected:?}")))
            }
            _ => Ok(()),
        }
    }

    /// A non-negative integer field that must be present.
    pub fn required_usize(&self, field: &'static str) -> Result<usize, EncoderError> {
        self.optional_usize(field)?.ok_or_else(|| EncoderError::MissingConfigField { path: self.path.clone(), field })
    }

    /// A non-negative integer field, or `default` when absent or `null`.
    pub fn usize_or(&self, field: &'static str, default: usize) -> Result<usize, EncoderError> {
        Ok(self.optional_usize(field)?.unwrap_or(default))
    }

    /// A number field, or `default` when absent or `null`.
    pub fn f64_or(&self, field: &'static str, default: f64) -> Result<f64, EncoderError> {
        Ok(self.optional_f64(field)?.unwrap_or(default))
    }

    /// A number field that may be absent or `null`.
    pub fn optional_f64(&self, field: &'static str) -> Result<Option<f64>, EncoderError> {
        match self.fields.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => value
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.invalid(field, format!("should be a number, found {}", json_kind(value)))),
        }
    }

    /// A boolean field, or `default` when absent or `null`.
    pub fn bool_or(&self, field: &'static str, default: bool) -> Result<bool, EncoderError> {
        match self.fields.get(field) {
            None | Some(Value::Null) => Ok(default),
            Some(value) => value
                .as_bool()
                .ok_or_else(|| self.invalid(field, format!("should be a boolean, found {}", json_kind(value)))),
        }
    }

    /// A string field, or `default` when absent or `null`.
    pub fn str_or<'a>(&'a self, field: &'static str, default: &'a str) -> Result<&'a str, EncoderError> {
        Ok(self.optional_str(field)?.unwrap_or(default))
    }

    /// The number of classes, as transformers derives it: the size of `id2label` when present,
    /// else `num_labels`, else 2.
    pub fn num_labels(&self) -> Result<usize, EncoderError> {
        match self.fields.get("id2label") {
            Some(Value::Object(labels)) if !labels.is_empty() => Ok(labels.len()),
            Some(Value::Object(_)) | None | Some(Value::Null) => self.usize_or("num_labels", 2),
            Some(other) => Err(self.invalid("id2label", format!("should be an object, found {}", json_kind(other)))),
        }
    }

    /// An [`EncoderError::InvalidConfigField`] for `field`.
    pub fn invalid(&self, field: &'static str, problem: impl Into<String>) -> EncoderError {
        EncoderError::InvalidConfigField { path: self.path.clone(), field, problem: problem.into() }
    }

    fn optional_usize(&self, field: &'static str) -> Result<Option<usize>, EncoderError> {
        match self.fields.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => value
                .as_u64()
                .and_then(|v| usize::try_from(v).ok())
                .map(Some)
                .ok_or_else(|| self.invalid(field, format!("should be a non-negative integer, found {value}"))),
        }
    }

    fn optional_str(&self, field: &'static str) -> Result<Option<&str>, EncoderError> {
        match self.fields.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.invalid(field, format!("should be a string, found {}", json_kind(other)))),
        }
    }
}

/// A config that can be read from and written to transformers' `config.json`.
pub trait HfConfig: Sized {
    /// transformers' `model_type` for this architecture.
    const MODEL_TYPE: &'static str;

    /// Builds the config from a parsed `config.json`, failing on missing or invalid fields.
    fn from_hf(config: &HfConfigJson) -> Result<Self, EncoderError>;

    /// The `config.json` fields transformers needs to rebuild the architecture (without
    /// `architectures` and the label maps, which the caller adds).
    fn to_hf(&self) -> Map<String, Value>;

    /// Reads `config.json` from `path`.
    fn from_hf_file(path: &Path) -> Result<Self, EncoderError> {
        Self::from_hf(&HfConfigJson::read(path)?)
    }
}

/// `id2label` and `label2id` for `num_labels` classes: the polarity sentiment words for the binary
/// case (index 0 = negative, 1 = positive, as `polarity_core::Sentiment`), `LABEL_i` otherwise.
pub(crate) fn label_maps(num_labels: usize) -> (Map<String, Value>, Map<String, Value>) {
    let name = |i: usize| match (num_labels, i) {
        (2, 0) => polarity_core::Sentiment::Negative.word().to_string(),
        (2, 1) => polarity_core::Sentiment::Positive.word().to_string(),
        _ => format!("LABEL_{i}"),
    };
    let id2label = (0..num_labels).map(|i| (i.to_string(), Value::from(name(i)))).collect();
    let label2id = (0..num_labels).map(|i| (name(i), Value::from(i))).collect();
    (id2label, label2id)
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> HfConfigJson {
        HfConfigJson::parse(text, Path::new("config.json")).unwrap()
    }

    #[test]
    fn accessors_name_the_field_in_errors() {
        let c = config(r#"{"hidden_size": 32, "layer_norm_eps": "tiny", "num_labels": 3, "dropout": null}"#);
        assert_eq!(c.required_usize("hidden_size").unwrap(), 32);
        let missing = c.required_usize("vocab_size").unwrap_err();
        assert!(matches!(missing, EncoderError::MissingConfigField { field: "vocab_size", .. }), "{missing}");
        let invalid = c.f64_or("layer_norm_eps", 1e-12).unwrap_err();
        assert!(invalid.to_string().contains("layer_norm_eps"), "{invalid}");
        assert_eq!(c.f64_or("dropout", 0.1).unwrap(), 0.1);
        assert_eq!(c.num_labels().unwrap(), 3);
        assert!(c.required_usize("num_labels").is_ok());
        assert!(config("{}").required_usize("hidden_size").is_err());
    }

    #[test]
    fn num_labels_follows_id2label_first() {
        assert_eq!(config(r#"{"id2label": {"0": "a", "1": "b", "2": "c"}, "num_labels": 2}"#).num_labels().unwrap(), 3);
        assert_eq!(config("{}").num_labels().unwrap(), 2);
    }

    #[test]
    fn non_objects_are_rejected() {
        let err = HfConfigJson::parse("[1, 2]", Path::new("c.json")).unwrap_err();
        assert!(matches!(err, EncoderError::InvalidConfig { .. }), "{err}");
        assert!(HfConfigJson::parse("{", Path::new("c.json")).is_err());
    }

    #[test]
    fn binary_label_maps_use_sentiment_words() {
        let (id2label, label2id) = label_maps(2);
        assert_eq!(id2label["0"], "negative");
        assert_eq!(id2label["1"], "positive");
        assert_eq!(label2id["positive"], 1);
        assert_eq!(label_maps(3).0["2"], "LABEL_2");
    }
}
