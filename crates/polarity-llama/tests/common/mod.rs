//! What the tiny-llama tests share: the fixture's inputs as tensors.

use burn::prelude::*;
use polarity_core::reference::Fixture;

/// The fixture's right-padded rows, their mask and the answer-only labels.
pub struct Inputs<B: Backend> {
    pub input_ids: Tensor<B, 2, Int>,
    pub attention_mask: Tensor<B, 2, Int>,
    pub labels: Tensor<B, 2, Int>,
}

pub fn inputs<B: Backend>(fixture: &Fixture) -> Inputs<B> {
    let device = Default::default();
    let tensor = |name: &str| {
        let (shape, values) = fixture.i64(name).unwrap();
        Tensor::<B, 2, Int>::from_data(TensorData::new(values.to_vec(), shape.to_vec()), &device)
    };
    Inputs { input_ids: tensor("input_ids"), attention_mask: tensor("attention_mask"), labels: tensor("lora_labels") }
}
