use std::path::PathBuf;

use thiserror::Error;

/// Everything that can go wrong while loading or slicing a dataset.
#[derive(Debug, Error)]
pub enum DataError {
    /// A file or directory that should exist does not.
    #[error("{what} not found: {path}")]
    NotFound {
        /// What was expected there ("aclImdb split directory", "CSV file", ...).
        what: &'static str,
        /// The missing path.
        path: PathBuf,
    },
    /// Reading a file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A review file that is not valid UTF-8.
    #[error("review file {path} is not valid UTF-8 (invalid byte at offset {offset})")]
    NonUtf8 {
        /// The file.
        path: PathBuf,
        /// Byte offset of the first invalid sequence.
        offset: usize,
    },
    /// A table that lacks a required column.
    #[error("{path}: no column {column:?} (columns: {available})")]
    MissingColumn {
        /// The table file.
        path: PathBuf,
        /// The column asked for.
        column: String,
        /// The columns it has, comma-separated.
        available: String,
    },
    /// A column of the wrong type (a numeric text column, a float label column, ...).
    #[error("{path}: column {column:?} has type {found}, expected {expected}")]
    ColumnType {
        /// The table file.
        path: PathBuf,
        /// The column.
        column: String,
        /// Its type.
        found: String,
        /// What polarity needs.
        expected: &'static str,
    },
    /// A label that is not 0/1 (or negative/positive).
    #[error("{path}: row {row} has label {label}, expected 0 (negative) or 1 (positive)")]
    InvalidLabel {
        /// The table file.
        path: PathBuf,
        /// 0-based row index.
        row: usize,
        /// The offending value, as written.
        label: String,
    },
    /// A row with a missing (null) text or label.
    #[error("{path}: row {row} has no {column}")]
    NullValue {
        /// The table file.
        path: PathBuf,
        /// 0-based row index.
        row: usize,
        /// The column with the null.
        column: String,
    },
    /// polars could not parse the file.
    #[error("{path}: cannot parse as {format}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// "parquet" or "CSV".
        format: &'static str,
        /// polars' message.
        reason: String,
    },
    /// A file extension that names no supported table format.
    #[error("{path}: unknown table format (expected .csv, .tsv or .parquet)")]
    UnknownFormat {
        /// The file.
        path: PathBuf,
    },
    /// A source with no examples: training or evaluating on it would be meaningless.
    #[error("{source_name} has no examples")]
    Empty {
        /// Which dataset or file.
        source_name: String,
    },
    /// A subset larger than what the data holds.
    #[error("a balanced subset of {requested} needs {needed} {label} examples but only {available} exist")]
    SubsetTooLarge {
        /// Total size asked for.
        requested: usize,
        /// How many of `label` that needs.
        needed: usize,
        /// How many of `label` there are.
        available: usize,
        /// The label that runs short.
        label: polarity_core::Sentiment,
    },
    /// Subset sizes whose sum overflows (sizes near `usize::MAX`, from flags).
    #[error("subset sizes {sizes:?} add up to more than any dataset can hold ({available} examples here)")]
    SubsetSizesOverflow {
        /// The sizes asked for.
        sizes: Vec<usize>,
        /// The examples the dataset holds.
        available: usize,
    },
    /// A validation fraction outside (0, 1), or one that leaves a side empty.
    #[error("validation fraction {fraction} of {rows} rows leaves an empty side; use a fraction in (0, 1)")]
    InvalidFraction {
        /// The fraction asked for.
        fraction: f64,
        /// Rows available.
        rows: usize,
    },
    /// The hub could not provide the file.
    #[error(transparent)]
    Hub(#[from] polarity_hub::HubError),
}
