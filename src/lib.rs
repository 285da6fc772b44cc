//! polarity
