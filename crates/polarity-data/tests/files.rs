//! aclImdb directories and CSV/parquet tables, including every kind of bad input.

use std::path::Path;

use polarity_data::table::{self, TableColumns};
use polarity_data::{DataError, Sentiment, Split, acl};
use polars::prelude::*;

fn write(path: &Path, contents: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, contents).unwrap();
}

#[test]
fn acl_imdb_directory_loads_with_ratings() {
    let root = tempfile::tempdir().unwrap();
    write(&root.path().join("train/pos/10_9.txt"), b"Wonderful.");
    write(&root.path().join("train/pos/2_7.txt"), b"Good <br />fun.");
    write(&root.path().join("train/neg/5_1.txt"), b"Awful.");
    write(&root.path().join("train/neg/notes.md"), b"ignored: not a review");
    let data = acl::load_split(root.path(), Split::Train).unwrap();
    let got: Vec<(&str, Sentiment, Option<u8>)> =
        data.examples().iter().map(|e| (e.text.as_str(), e.label, e.rating)).collect();
    assert_eq!(
        got,
        vec![
            ("Awful.", Sentiment::Negative, Some(1)),
            ("Good <br />fun.", Sentiment::Positive, Some(7)),
            ("Wonderful.", Sentiment::Positive, Some(9)),
        ]
    );
}

#[test]
fn acl_imdb_bad_inputs_are_named() {
    let root = tempfile::tempdir().unwrap();
    let err = acl::load_split(root.path(), Split::Test).unwrap_err();
    assert!(matches!(&err, DataError::NotFound { path, .. } if path.ends_with("test")), "{err:?}");

    write(&root.path().join("test/pos/1_8.txt"), b"ok");
    let err = acl::load_split(root.path(), Split::Test).unwrap_err();
    assert!(matches!(&err, DataError::NotFound { path, .. } if path.ends_with("neg")), "{err:?}");

    write(&root.path().join("test/neg/3_2.txt"), b"bad \xff\xfe review");
    let err = acl::load_split(root.path(), Split::Test).unwrap_err();
    match &err {
        DataError::NonUtf8 { path, offset } => {
            assert!(path.ends_with("3_2.txt"));
            assert_eq!(*offset, 4);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("3_2.txt") && err.to_string().contains("UTF-8"));

    let empty = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(empty.path().join("train/pos")).unwrap();
    std::fs::create_dir_all(empty.path().join("train/neg")).unwrap();
    assert!(matches!(acl::load_split(empty.path(), Split::Train), Err(DataError::Empty { .. })));
}

#[test]
fn csv_with_custom_columns_and_string_labels() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reviews.csv");
    write(&path, b"id,review,sentiment\n1,\"Loved it, truly.\",positive\n2,Dull.,negative\n3,Fine,1\n");
    let columns = TableColumns { text: "review".into(), label: "sentiment".into() };
    let data = table::load(&path, &columns).unwrap();
    assert_eq!(data.texts(), vec!["Loved it, truly.", "Dull.", "Fine"]);
    assert_eq!(data.labels(), vec![Sentiment::Positive, Sentiment::Negative, Sentiment::Positive]);

    let err = table::load(&path, &TableColumns::default()).unwrap_err();
    match &err {
        DataError::MissingColumn { column, available, .. } => {
            assert_eq!(column, "text");
            assert!(available.contains("review") && available.contains("sentiment"));
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn csv_label_outside_zero_one_names_the_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.csv");
    write(&path, b"text,label\ngood,1\nmeh,2\n");
    let err = table::load(&path, &TableColumns::default()).unwrap_err();
    assert!(matches!(&err, DataError::InvalidLabel { row: 1, label, .. } if label == "2"), "{err:?}");

    write(&path, b"text,label\ngood,maybe\n");
    let err = table::load(&path, &TableColumns::default()).unwrap_err();
    assert!(matches!(&err, DataError::InvalidLabel { row: 0, .. }), "{err:?}");

    write(&path, b"text,label\ngood,0.5\n");
    let err = table::load(&path, &TableColumns::default()).unwrap_err();
    assert!(matches!(&err, DataError::ColumnType { column, .. } if column == "label"), "{err:?}");

    write(&path, b"text,label\n");
    let err = table::load(&path, &TableColumns::default()).unwrap_err();
    assert!(matches!(&err, DataError::Empty { .. }), "{err:?}");
}

#[test]
fn parquet_round_trip_and_missing_columns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reviews.parquet");
    let mut frame = df!("text" => ["great", "poor"], "label" => [1i64, 0]).unwrap();
    ParquetWriter::new(std::fs::File::create(&path).unwrap()).finish(&mut frame).unwrap();
    let data = table::load(&path, &TableColumns::default()).unwrap();
    assert_eq!(data.labels(), vec![Sentiment::Positive, Sentiment::Negative]);

    let mut no_label = df!("text" => ["great"], "stars" => [9i64]).unwrap();
    ParquetWriter::new(std::fs::File::create(&path).unwrap()).finish(&mut no_label).unwrap();
    let err = table::load(&path, &TableColumns::default()).unwrap_err();
    assert!(
        matches!(&err, DataError::MissingColumn { column, available, .. } if column == "label" && available.contains("stars")),
        "{err:?}"
    );

    let mut bad_label = df!("text" => ["great"], "label" => [-1i64]).unwrap();
    ParquetWriter::new(std::fs::File::create(&path).unwrap()).finish(&mut bad_label).unwrap();
    assert!(matches!(table::load(&path, &TableColumns::default()), Err(DataError::InvalidLabel { row: 0, .. })));
}

#[test]
fn missing_corrupt_and_unknown_files_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = table::load(dir.path().join("absent.parquet"), &TableColumns::default()).unwrap_err();
    assert!(matches!(err, DataError::NotFound { .. }), "{err:?}");

    let corrupt = dir.path().join("corrupt.parquet");
    write(&corrupt, b"this is not parquet at all");
    let err = table::load(&corrupt, &TableColumns::default()).unwrap_err();
    assert!(matches!(err, DataError::Parse { format: "parquet", .. }), "{err:?}");

    let unknown = dir.path().join("reviews.xlsx");
    write(&unknown, b"");
    assert!(matches!(table::load(&unknown, &TableColumns::default()), Err(DataError::UnknownFormat { .. })));
}
