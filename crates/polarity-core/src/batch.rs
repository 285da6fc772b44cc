use burn::prelude::*;

/// A right-padded batch of token ids, as every model family consumes it.
///
/// All three tensors are `[batch, seq_len]`; `attention_mask` is 1 on real tokens and 0 on padding.
#[derive(Clone, Debug)]
pub struct TokenBatch<B: Backend> {
    /// Token ids, padded with the tokenizer's pad id.
    pub input_ids: Tensor<B, 2, Int>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Tensor<B, 2, Int>,
    /// Segment ids (all 0 for single-sentence classification).
    pub token_type_ids: Tensor<B, 2, Int>,
}

impl<B: Backend> TokenBatch<B> {
    /// `[batch, seq_len]`.
    pub fn dims(&self) -> [usize; 2] {
        self.input_ids.dims()
    }
}

/// A token batch with its gold class indices (`[batch]`, 0 = negative, 1 = positive).
#[derive(Clone, Debug)]
pub struct LabelledBatch<B: Backend> {
    /// The inputs.
    pub tokens: TokenBatch<B>,
    /// The gold class index of each row.
    pub labels: Tensor<B, 1, Int>,
}
