//! Reading and writing transformers' `config.json`.
//!
//! The architecture configs ([`BertConfig`](crate::bert::BertConfig),
//! [`DistilBertConfig`](crate::distilbert::DistilBertConfig)) are burn `Config`s; each architecture
//! reads `config.json` through a `#[derive(Deserialize)]` struct with transformers' field names and
//! defaults ([`HfConfigJson::deserialize`]), and writes it back field by field ([`HfConfig::to_hf`]).
//! Errors name the file and the field: a missing required field is
//! [`EncoderError::MissingConfigField`], a value of the wrong type [`EncoderError::InvalidConfigField`].
//!
//! Every value is checked here, where it is read, before a model is built from it ([`limits`]): sizes
//! within generous bounds (and the parameter count they imply), probabilities in `[0, 1)`, epsilons finite
//! and positive. An out-of-range value is [`EncoderError::InvalidConfigField`] naming the file, the field
//! and the value.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};
use serde::{Deserialize, forward_to_deserialize_any};
use serde_json::{Map, Value};

use crate::EncoderError;

/// A parsed `config.json` and the file it came from.
#[derive(Clone, Debug)]
pub struct HfConfigJson {
    path: PathBuf,
    fields: Map<String, Value>,
}

/// The fields every transformers config may have that this crate reads the same way for every
/// architecture.
#[derive(Deserialize)]
struct CommonFields {
    #[serde(default)]
    model_type: Option<String>,
    /// Class names by index; its size is the number of labels when present.
    #[serde(default)]
    id2label: Option<Map<String, Value>>,
    #[serde(default = "default_num_labels")]
    num_labels: usize,
}

/// transformers' `PretrainedConfig` default.
fn default_num_labels() -> usize {
    2
}

/// The bounds `config.json` values are checked against: far above any real encoder (BERT-large has 24
/// layers of width 1024, XLM-R a 250,002-token vocabulary), far below what would exhaust memory or
/// overflow a size computation.
pub mod limits {
    /// The largest `config.json` read, in bytes.
    pub const MAX_CONFIG_BYTES: u64 = 16 << 20;
    /// Vocabulary entries (`vocab_size`).
    pub const MAX_VOCAB_SIZE: usize = 1 << 22;
    /// Hidden width (`hidden_size`, `dim`).
    pub const MAX_HIDDEN_SIZE: usize = 1 << 16;
    /// Transformer layers (`num_hidden_layers`, `n_layers`).
    pub const MAX_LAYERS: usize = 1024;
    /// Feed-forward width (`intermediate_size`, `hidden_dim`).
    pub const MAX_INTERMEDIATE_SIZE: usize = 1 << 18;
    /// Positions (`max_position_embeddings`).
    pub const MAX_POSITIONS: usize = 1 << 20;
    /// Segment ids (`type_vocab_size`).
    pub const MAX_TYPE_VOCAB_SIZE: usize = 1 << 12;
    /// Classes (`num_labels`, or the size of `id2label`).
    pub const MAX_LABELS: usize = 1 << 16;
    /// Parameters the sizes imply together (the largest encoders have about 10 billion).
    pub const MAX_PARAMETERS: u64 = 20_000_000_000;
}

impl HfConfigJson {
    /// Reads and parses `path`, a regular file of at most [`limits::MAX_CONFIG_BYTES`].
    pub fn read(path: &Path) -> Result<Self, EncoderError> {
        let text = polarity_hub::files::read_regular_to_string_within(path, limits::MAX_CONFIG_BYTES)
            .map_err(|source| EncoderError::Io { path: path.to_path_buf(), source })?;
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

    /// The config as `T`, a `#[derive(Deserialize)]` struct with transformers' field names. Fields that
    /// are `null` count as absent (serde defaults apply), as in transformers; unknown fields are ignored.
    ///
    /// Errors: [`EncoderError::MissingConfigField`] for a required field that is absent, and
    /// [`EncoderError::InvalidConfigField`] for a value of the wrong type, each naming the field.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, EncoderError> {
        T::deserialize(Fields(&self.fields)).map_err(|error| match error {
            FieldError::Missing(field) => EncoderError::MissingConfigField { path: self.path.clone(), field },
            FieldError::Invalid { field, problem } => self.invalid(field, problem),
            FieldError::Other(reason) => EncoderError::InvalidConfig { path: self.path.clone(), reason },
        })
    }

    /// `model_type` (`"bert"`, `"distilbert"`, ...), if present.
    pub fn model_type(&self) -> Result<Option<String>, EncoderError> {
        Ok(self.deserialize::<CommonFields>()?.model_type)
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

    /// The number of classes, as transformers derives it: the size of `id2label` when present and not
    /// empty, else `num_labels`, else 2; between 1 and [`limits::MAX_LABELS`].
    pub fn num_labels(&self) -> Result<usize, EncoderError> {
        let common = self.deserialize::<CommonFields>()?;
        match common.id2label.filter(|labels| !labels.is_empty()) {
            Some(labels) => self.check_size("id2label", labels.len(), 1, limits::MAX_LABELS),
            None => self.check_size("num_labels", common.num_labels, 1, limits::MAX_LABELS),
        }
    }

    /// `value` of `field` if it is in `min..=max`, else [`EncoderError::InvalidConfigField`] naming both.
    pub fn check_size(&self, field: &'static str, value: usize, min: usize, max: usize) -> Result<usize, EncoderError> {
        if (min..=max).contains(&value) {
            Ok(value)
        } else {
            Err(self.invalid(field, format!("is {value}, expected {min} to {max}")))
        }
    }

    /// `value` of `field` if it is a probability a dropout can use: finite, in `[0, 1)` (1 would zero
    /// every activation; burn's dropout panics outside `[0, 1]`).
    pub fn check_probability(&self, field: &'static str, value: f64) -> Result<f64, EncoderError> {
        if (0.0..1.0).contains(&value) {
            Ok(value)
        } else {
            Err(self.invalid(field, format!("is {value}, expected a probability in [0, 1)")))
        }
    }

    /// `value` of `field` if it is finite and positive (a layer-norm epsilon).
    pub fn check_positive(&self, field: &'static str, value: f64) -> Result<f64, EncoderError> {
        if value.is_finite() && value > 0.0 {
            Ok(value)
        } else {
            Err(self.invalid(field, format!("is {value}, expected a finite number above 0")))
        }
    }

    /// `value` of `field` if it is finite and not negative (a standard deviation).
    pub fn check_non_negative(&self, field: &'static str, value: f64) -> Result<f64, EncoderError> {
        if value.is_finite() && value >= 0.0 {
            Ok(value)
        } else {
            Err(self.invalid(field, format!("is {value}, expected a finite number of at least 0")))
        }
    }

    /// Fails unless `heads` divides `hidden` (the heads split the hidden width evenly).
    pub fn check_heads(
        &self,
        field: &'static str,
        heads: usize,
        hidden_field: &str,
        hidden: usize,
    ) -> Result<(), EncoderError> {
        if heads == 0 || heads > hidden || !hidden.is_multiple_of(heads) {
            return Err(self.invalid(field, format!("is {heads}, which does not divide {hidden_field} {hidden}")));
        }
        Ok(())
    }

    /// Fails when the parameters the sizes imply exceed [`limits::MAX_PARAMETERS`]; `count` computes them
    /// with checked arithmetic (`None` on overflow).
    pub fn check_parameter_count(&self, field: &'static str, count: Option<u64>) -> Result<(), EncoderError> {
        match count {
            Some(count) if count <= limits::MAX_PARAMETERS => Ok(()),
            Some(count) => Err(self.invalid(
                field,
                format!("and the other sizes imply {count} parameters, more than {}", limits::MAX_PARAMETERS),
            )),
            None => Err(self.invalid(field, "and the other sizes imply more parameters than a u64 holds")),
        }
    }

    /// An [`EncoderError::InvalidConfigField`] for `field`.
    pub fn invalid(&self, field: &'static str, problem: impl Into<String>) -> EncoderError {
        EncoderError::InvalidConfigField { path: self.path.clone(), field, problem: problem.into() }
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

/// A deserialisation error that keeps the field it is about (serde_json's own errors do not say which
/// field of a struct failed).
#[derive(Debug)]
enum FieldError {
    /// A required field is absent (or `null`).
    Missing(&'static str),
    /// A field's value has the wrong type or an invalid value.
    Invalid { field: &'static str, problem: String },
    /// Anything else.
    Other(String),
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldError::Missing(field) => write!(f, "missing field {field:?}"),
            FieldError::Invalid { field, problem } => write!(f, "field {field:?}: {problem}"),
            FieldError::Other(reason) => f.write_str(reason),
        }
    }
}

impl std::error::Error for FieldError {}

impl de::Error for FieldError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        FieldError::Other(msg.to_string())
    }

    fn missing_field(field: &'static str) -> Self {
        FieldError::Missing(field)
    }
}

/// The top-level JSON object as a serde deserializer that attributes value errors to their field.
struct Fields<'a>(&'a Map<String, Value>);

impl<'de, 'a: 'de> de::Deserializer<'de> for Fields<'a> {
    type Error = FieldError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, FieldError> {
        self.deserialize_struct("", &[], visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, FieldError> {
        // `null` is "not set" in transformers' configs: skipping it lets serde's defaults apply.
        let entries = self.0.iter().filter(|(_, value)| !value.is_null());
        visitor.visit_map(Entries { entries, fields, current: None })
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
        unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

/// The entries of the object, remembering the current key for error messages.
struct Entries<'a, I> {
    entries: I,
    fields: &'static [&'static str],
    current: Option<(&'a String, &'a Value)>,
}

impl<'de, 'a: 'de, I: Iterator<Item = (&'a String, &'a Value)>> MapAccess<'de> for Entries<'a, I> {
    type Error = FieldError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, FieldError> {
        let Some((key, value)) = self.entries.next() else { return Ok(None) };
        self.current = Some((key, value));
        seed.deserialize(key.as_str().into_deserializer()).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, FieldError> {
        let Some((key, value)) = self.current.take() else {
            return Err(FieldError::Other("a value was read before its key".into()));
        };
        seed.deserialize(value).map_err(|error| {
            // The struct's own spelling of the field is `'static`; an unknown field is never read.
            match self.fields.iter().find(|field| **field == key.as_str()) {
                Some(field) => FieldError::Invalid { field, problem: error.to_string() },
                None => FieldError::Other(format!("field {key:?}: {error}")),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> HfConfigJson {
        HfConfigJson::parse(text, Path::new("config.json")).unwrap()
    }

    #[derive(Deserialize, Debug)]
    struct Sizes {
        hidden_size: usize,
        #[serde(default = "default_eps")]
        layer_norm_eps: f64,
        #[serde(default)]
        dropout: Option<f64>,
    }

    fn default_eps() -> f64 {
        1e-12
    }

    #[test]
    fn fields_are_named_in_errors() {
        let c =
            config(r#"{"hidden_size": 32, "layer_norm_eps": null, "num_labels": 3, "dropout": null, "extra": [1]}"#);
        let sizes: Sizes = c.deserialize().unwrap();
        assert_eq!((sizes.hidden_size, sizes.layer_norm_eps, sizes.dropout), (32, 1e-12, None));
        assert_eq!(c.num_labels().unwrap(), 3);

        let missing = config(r#"{"layer_norm_eps": 1e-5}"#).deserialize::<Sizes>().unwrap_err();
        assert!(matches!(missing, EncoderError::MissingConfigField { field: "hidden_size", .. }), "{missing}");
        let null = config(r#"{"hidden_size": null}"#).deserialize::<Sizes>().unwrap_err();
        assert!(matches!(null, EncoderError::MissingConfigField { field: "hidden_size", .. }), "{null}");

        let invalid = config(r#"{"hidden_size": 32, "layer_norm_eps": "tiny"}"#).deserialize::<Sizes>().unwrap_err();
        assert!(matches!(invalid, EncoderError::InvalidConfigField { field: "layer_norm_eps", .. }), "{invalid}");
        let negative = config(r#"{"hidden_size": -1}"#).deserialize::<Sizes>().unwrap_err();
        assert!(matches!(negative, EncoderError::InvalidConfigField { field: "hidden_size", .. }), "{negative}");
        assert!(negative.to_string().contains("config.json"), "{negative}");
    }

    #[test]
    fn num_labels_follows_id2label_first() {
        assert_eq!(config(r#"{"id2label": {"0": "a", "1": "b", "2": "c"}, "num_labels": 2}"#).num_labels().unwrap(), 3);
        assert_eq!(config(r#"{"id2label": {}, "num_labels": 4}"#).num_labels().unwrap(), 4);
        assert_eq!(config("{}").num_labels().unwrap(), 2);
        let err = config(r#"{"id2label": [1]}"#).num_labels().unwrap_err();
        assert!(matches!(err, EncoderError::InvalidConfigField { field: "id2label", .. }), "{err}");
    }

    #[test]
    fn model_types_are_checked() {
        assert_eq!(config(r#"{"model_type": "bert"}"#).model_type().unwrap().as_deref(), Some("bert"));
        let err = config(r#"{"model_type": "bert"}"#).expect_model_type("distilbert").unwrap_err();
        assert!(matches!(err, EncoderError::InvalidConfigField { field: "model_type", .. }), "{err}");
        assert!(config(r#"{"model_type": 3}"#).model_type().is_err());
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
