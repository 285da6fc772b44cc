//! Any CSV or parquet table with a text column and a label column (read with polars).

use std::fs::File;
use std::path::Path;

use polarity_core::{Example, Sentiment};
use polars::prelude::*;

use crate::{DataError, ImdbDataset};

/// Which columns hold the review and its label.
///
/// Labels may be integers (0 = negative, 1 = positive) or strings (`negative`/`positive`, `0`/`1`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableColumns {
    /// The review column (`text` by default).
    pub text: String,
    /// The label column (`label` by default).
    pub label: String,
}

impl Default for TableColumns {
    fn default() -> Self {
        Self { text: "text".into(), label: "label".into() }
    }
}

/// The on-disk table formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableFormat {
    /// Comma-separated values with a header row.
    Csv,
    /// Tab-separated values with a header row.
    Tsv,
    /// Apache parquet.
    Parquet,
}

impl TableFormat {
    /// The format named by a file's extension.
    pub fn from_path(path: &Path) -> Result<Self, DataError> {
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("csv") => Ok(TableFormat::Csv),
            Some("tsv") => Ok(TableFormat::Tsv),
            Some("parquet" | "pq") => Ok(TableFormat::Parquet),
            _ => Err(DataError::UnknownFormat { path: path.to_path_buf() }),
        }
    }
}

/// Loads `path` (format from its extension) into a dataset, one example per row.
pub fn load(path: impl AsRef<Path>, columns: &TableColumns) -> Result<ImdbDataset, DataError> {
    let path = path.as_ref();
    let format = TableFormat::from_path(path)?;
    if !path.is_file() {
        return Err(DataError::NotFound { what: "table file", path: path.to_path_buf() });
    }
    let frame = match format {
        TableFormat::Parquet => read_parquet(path, columns)?,
        TableFormat::Csv => read_csv(path, b',')?,
        TableFormat::Tsv => read_csv(path, b'\t')?,
    };
    let examples = examples_from_frame(&frame, path, columns)?;
    ImdbDataset::new(path.display().to_string(), examples)
}

fn read_parquet(path: &Path, columns: &TableColumns) -> Result<DataFrame, DataError> {
    let parse_error =
        |e: PolarsError| DataError::Parse { path: path.to_path_buf(), format: "parquet", reason: e.to_string() };
    let file = File::open(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
    let mut reader = ParquetReader::new(file);
    // Check the schema first so a missing column is named, and read only the two columns we need.
    let schema = reader.schema().map_err(parse_error)?;
    let available: Vec<String> = schema.iter_names().map(|n| n.to_string()).collect();
    for column in [&columns.text, &columns.label] {
        if !available.contains(column) {
            return Err(missing_column(path, column, &available));
        }
    }
    reader.with_columns(Some(vec![columns.text.clone(), columns.label.clone()])).finish().map_err(parse_error)
}

fn read_csv(path: &Path, separator: u8) -> Result<DataFrame, DataError> {
    let parse_error =
        |e: PolarsError| DataError::Parse { path: path.to_path_buf(), format: "CSV", reason: e.to_string() };
    CsvReadOptions::default()
        .with_has_header(true)
        .map_parse_options(|options| options.with_separator(separator))
        .try_into_reader_with_file_path(Some(path.to_path_buf()))
        .map_err(parse_error)?
        .finish()
        .map_err(parse_error)
}

fn missing_column(path: &Path, column: &str, available: &[String]) -> DataError {
    DataError::MissingColumn { path: path.to_path_buf(), column: column.to_string(), available: available.join(", ") }
}

fn column<'a>(frame: &'a DataFrame, path: &Path, name: &str) -> Result<&'a Column, DataError> {
    frame.column(name).map_err(|_| {
        let available: Vec<String> = frame.get_column_names().iter().map(|n| n.to_string()).collect();
        missing_column(path, name, &available)
    })
}

fn examples_from_frame(frame: &DataFrame, path: &Path, columns: &TableColumns) -> Result<Vec<Example>, DataError> {
    let text_column = column(frame, path, &columns.text)?;
    let label_column = column(frame, path, &columns.label)?;
    let type_error = |column: &str, found: &DataType, expected| DataError::ColumnType {
        path: path.to_path_buf(),
        column: column.to_string(),
        found: found.to_string(),
        expected,
    };
    let texts = text_column.str().map_err(|_| type_error(&columns.text, text_column.dtype(), "string"))?;
    let labels = labels_of(label_column, path)
        .map_err(|e| e.unwrap_or_else(|| type_error(&columns.label, label_column.dtype(), "integer or string")))?;
    let null =
        |row: usize, column: &str| DataError::NullValue { path: path.to_path_buf(), row, column: column.to_string() };
    texts
        .iter()
        .zip(labels)
        .enumerate()
        .map(|(row, (text, label))| {
            let text = text.ok_or_else(|| null(row, &columns.text))?;
            let label = label.ok_or_else(|| null(row, &columns.label))?;
            Ok(Example { text: text.to_string(), label, rating: None })
        })
        .collect()
}

/// The labels of a column; `Err(None)` for a column of a type that cannot hold labels.
fn labels_of(column: &Column, path: &Path) -> Result<Vec<Option<Sentiment>>, Option<DataError>> {
    let invalid = |row: usize, label: String| DataError::InvalidLabel { path: path.to_path_buf(), row, label };
    let dtype = column.dtype();
    if dtype.is_integer() {
        let cast = column.cast(&DataType::Int64).map_err(|_| None)?;
        let values = cast.i64().map_err(|_| None)?;
        values
            .iter()
            .enumerate()
            .map(|(row, v)| v.map(|v| Sentiment::from_label(v).map_err(|_| invalid(row, v.to_string()))).transpose())
            .collect::<Result<_, _>>()
            .map_err(Some)
    } else if matches!(dtype, DataType::String) {
        let values = column.str().map_err(|_| None)?;
        values
            .iter()
            .enumerate()
            .map(|(row, v)| v.map(|v| v.parse::<Sentiment>().map_err(|_| invalid(row, format!("{v:?}")))).transpose())
            .collect::<Result<_, _>>()
            .map_err(Some)
    } else {
        Err(None)
    }
}
