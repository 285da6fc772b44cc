//! polarity-tokenize
