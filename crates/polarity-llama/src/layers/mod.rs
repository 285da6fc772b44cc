//! Generic layers, independent of any model architecture: the building blocks of adaptable
//! projections.
//!
//! - [`BaseLinear`]: the frozen base of a projection, dense or quantised;
//! - [`quant`]: [`QuantizedLinear`] over a [`QuantizedMatrix`] (NF4, or the blocks of a GGUF file),
//!   dequantised on use (QLoRA's frozen base);
//! - [`lora`]: [`LoraLinear`] (a base plus an optional [`LoraAdapter`]) and [`LoraConfig`], whose
//!   target module names the model supplies.
//!
//! Nothing here knows Llama: the model composes these layers (`crate::llama`) and checkpoint I/O
//! (`crate::checkpoint`) fills them.

pub mod linear;
pub mod lora;
pub mod quant;

pub use linear::BaseLinear;
pub use lora::{LoraAdapter, LoraConfig, LoraLinear};
pub use quant::{QuantFormat, QuantizedLinear, QuantizedMatrix, WeightMemory};
