//! Stage 3: padding a batch to its longest row.

use burn::data::dataloader::batcher::Batcher;
use burn::prelude::*;
use burn::tensor::Device;
use polarity_core::{LabelledBatch, Sentiment, TokenBatch};

use crate::TokenIds;

/// An encoded example: token ids and, for training and evaluation, the gold label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenizedExample {
    /// The unpadded token ids.
    pub tokens: TokenIds,
    /// The gold label.
    pub label: Sentiment,
}

/// Pads each batch to its longest row (right padding) and builds the tensors.
///
/// No fixed-length padding: a batch of short reviews stays short.
#[derive(Clone, Copy, Debug)]
pub struct PaddingBatcher {
    /// The id written into padding positions.
    pub pad_id: u32,
}

impl PaddingBatcher {
    /// A batcher padding with `pad_id`.
    pub fn new(pad_id: u32) -> Self {
        Self { pad_id }
    }

    /// The padded `[batch, longest]` tensors of `rows`.
    pub fn pad<B: Backend>(&self, rows: &[&TokenIds], device: &Device<B>) -> TokenBatch<B> {
        self.pad_rows(rows.iter().map(|row| (row.ids.as_slice(), Some(row.type_ids.as_slice()))), rows.len(), device)
    }

    /// The padded `[batch, longest]` tensors of bare id rows (a causal LM's prompts): every type id 0.
    pub fn pad_ids<B: Backend, R: AsRef<[u32]>>(&self, rows: &[R], device: &Device<B>) -> TokenBatch<B> {
        self.pad_rows(rows.iter().map(|row| (row.as_ref(), None)), rows.len(), device)
    }

    fn pad_rows<'a, B: Backend>(
        &self,
        rows: impl Iterator<Item = (&'a [u32], Option<&'a [u32]>)> + Clone,
        batch: usize,
        device: &Device<B>,
    ) -> TokenBatch<B> {
        let longest = rows.clone().map(|(ids, _)| ids.len()).max().unwrap_or(0);
        let mut input_ids = vec![self.pad_id as i64; batch * longest];
        let mut attention_mask = vec![0i64; batch * longest];
        let mut token_type_ids = vec![0i64; batch * longest];
        for (row, (ids, type_ids)) in rows.enumerate() {
            let start = row * longest;
            for (offset, &id) in ids.iter().enumerate() {
                input_ids[start + offset] = id as i64;
                attention_mask[start + offset] = 1;
                token_type_ids[start + offset] = type_ids.and_then(|types| types.get(offset)).map_or(0, |&t| t as i64);
            }
        }
        let tensor =
            |values: Vec<i64>| Tensor::<B, 2, Int>::from_data(TensorData::new(values, [batch, longest]), device);
        TokenBatch {
            input_ids: tensor(input_ids),
            attention_mask: tensor(attention_mask),
            token_type_ids: tensor(token_type_ids),
        }
    }
}

impl<B: Backend> Batcher<B, TokenizedExample, LabelledBatch<B>> for PaddingBatcher {
    fn batch(&self, items: Vec<TokenizedExample>, device: &Device<B>) -> LabelledBatch<B> {
        let rows: Vec<&TokenIds> = items.iter().map(|item| &item.tokens).collect();
        let labels: Vec<i64> = items.iter().map(|item| item.label.index() as i64).collect();
        LabelledBatch {
            tokens: self.pad(&rows, device),
            labels: Tensor::from_data(TensorData::new(labels, [items.len()]), device),
        }
    }
}

impl<B: Backend> Batcher<B, TokenIds, TokenBatch<B>> for PaddingBatcher {
    fn batch(&self, items: Vec<TokenIds>, device: &Device<B>) -> TokenBatch<B> {
        let rows: Vec<&TokenIds> = items.iter().collect();
        self.pad(&rows, device)
    }
}
