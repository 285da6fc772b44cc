//! Generic layers, independent of any model architecture: the building blocks of adaptable
//! projections.
//!
//! - [`BaseLinear`]: the frozen base of a projection, dense or quantised;
//! - [`TokenEmbedding`]: a token embedding table, dense or quantised ([`QuantizedEmbedding`], decoded
//!   row by row on lookup);
//! - [`quant`]: [`QuantizedLinear`] over a [`QuantizedMatrix`] (NF4, or the blocks of a GGUF file),
//!   dequantised on use (QLoRA's frozen base);
//! - [`random`]: seeded random weights drawn in parallel ([`random::RandomStream`]), for models built
//!   at their real shape without their weights;
//! - [`lora`]: [`LoraLinear`] (a base plus an optional [`LoraAdapter`]) and [`LoraConfig`], whose
//!   target module names the model supplies.
//!
//! Nothing here knows Llama: the model composes these layers (`crate::llama`) and checkpoint I/O
//! (`crate::checkpoint`) fills them.

pub mod embedding;
pub mod linear;
pub mod lora;
pub mod quant;
pub mod random;

pub use embedding::{QuantizedEmbedding, TokenEmbedding};
pub use linear::BaseLinear;
pub use lora::{LoraAdapter, LoraConfig, LoraLinear};
pub use quant::{QuantFormat, QuantizedLinear, QuantizedMatrix, WeightMemory};
