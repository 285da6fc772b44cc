//! Tokenization for polarity, as a pipeline of small stages, one module each:
//!
//! 1. [`encode`]: text to token ids. [`Encode`] is the stage's trait; [`HfTokenizer`] implements it for
//!    any `tokenizer.json` (by hub id or path) with truncation to a maximum length and **no hidden
//!    padding** (MiniLM's tokenizer.json pads every input to 128 by itself; we switch that off so
//!    batches are padded only as far as they need). Batch encoding runs in parallel (rayon).
//! 2. [`order`]: which examples go into which batch. [`BatchOrder`] is the stage's trait;
//!    [`LengthBucketed`] sorts by length inside shuffled chunks, which cuts padding on IMDB's skewed
//!    lengths, and [`padding_fraction`] measures what that saves.
//! 3. [`batcher`]: padding one batch to its longest row into burn tensors ([`PaddingBatcher`], a burn
//!    [`Batcher`](burn::data::dataloader::batcher::Batcher)).
//! 4. [`prompt`]: the causal-LM prompt, truncating the review (never the instruction) to fit, and the
//!    token ids of the label words.
//!
//! ```no_run
//! use polarity_tokenize::{Encode, HfTokenizer};
//!
//! let tokenizer = HfTokenizer::from_pretrained("sentence-transformers/all-MiniLM-L6-v2", 256)?;
//! let encoded = tokenizer.encode_batch(&["A moving film.", "Two hours I will never get back."])?;
//! assert_eq!(encoded[0].ids.len(), 6); // [CLS] a moving film . [SEP], unpadded
//! # Ok::<(), polarity_tokenize::TokenizeError>(())
//! ```

pub mod batcher;
pub mod encode;
mod error;
pub mod order;
pub mod prompt;

pub use batcher::{PaddingBatcher, TokenizedExample};
pub use encode::{
    Encode, HfTokenizer, MAX_TOKENIZER_BYTES, ModelLimits, TokenIds, parse_tokenizer_json, read_tokenizer_json,
};
pub use error::TokenizeError;
pub use order::{BatchOrder, InOrder, LengthBucketed, PaddingReport, Shuffled, padding_fraction};
pub use prompt::{DEFAULT_TEMPLATE, PromptTemplate, label_word_ids};
