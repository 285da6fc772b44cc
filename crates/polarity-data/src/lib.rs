//! polarity-data
