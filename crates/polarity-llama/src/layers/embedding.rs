//! Token embeddings: a dense [`Embedding`], or a [`QuantizedMatrix`] whose rows are decoded on lookup.
//!
//! An embedding table is only ever read a few rows at a time (one per input token), so a quantised
//! table costs no time: a lookup decodes the rows it returns and nothing else, unlike a quantised
//! linear layer, which decodes its whole matrix for every product. For a large vocabulary this is the
//! cheapest memory to save: Llama 3's `[128256, 4096]` table is 2.1 GB as f32 and 0.3 GB as NF4
//! (llama.cpp's 4-bit files keep `token_embd` quantised too; bitsandbytes' QLoRA keeps it in bf16).

use std::marker::PhantomData;

use burn::module::Module;
use burn::nn::Embedding;
use burn::prelude::*;

use crate::layers::quant::QuantizedMatrix;

/// The token embedding table of a model, `[vocab, hidden]`.
///
/// Module paths name the variant (`embed_tokens.Dense.weight`) for burn's own visitors; checkpoint
/// keys leave variant names out, so a dense table is `model.embed_tokens.weight` as in Hugging Face
/// checkpoints. A quantised table has no parameter: checkpoints, optimisers and records never see it.
#[derive(Module, Debug)]
pub enum TokenEmbedding<B: Backend> {
    /// A dense table (burn's [`Embedding`], weight `[vocab, hidden]`).
    Dense(Embedding<B>),
    /// A quantised table, frozen, decoded row by row on lookup.
    Quantized(QuantizedEmbedding<B>),
}

/// A frozen `[vocab, hidden]` embedding table held as a [`QuantizedMatrix`] (one row per token).
///
/// The matrix is a `#[module(skip)]` field, like [`QuantizedLinear`](crate::layers::QuantizedLinear)'s:
/// no parameter, no gradient, shared (`Arc`) by clones, `valid()` and `to_device`.
#[derive(Module, Debug)]
pub struct QuantizedEmbedding<B: Backend> {
    /// The table, `[vocab, hidden]`.
    #[module(skip)]
    pub matrix: QuantizedMatrix,
    backend: PhantomData<B>,
}

impl<B: Backend> QuantizedEmbedding<B> {
    /// A table of `matrix.dims()[0]` tokens of width `matrix.dims()[1]`.
    pub fn new(matrix: QuantizedMatrix) -> Self {
        Self { matrix, backend: PhantomData }
    }

    /// `[batch, seq_len]` token ids to `[batch, seq_len, hidden]` embeddings (a constant under
    /// autodiff: no gradient reaches the table). The ids are read on the host to pick the rows; an id
    /// outside the vocabulary embeds as NaN (see [`QuantizedMatrix::dequantize_rows`]), where a dense
    /// table's lookup would be out of bounds.
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [batch, seq_len] = input_ids.dims();
        let device = input_ids.device();
        let ids: Vec<i64> = input_ids.into_data().convert::<i64>().into_vec().unwrap_or_default();
        let rows: Vec<usize> = ids.iter().map(|&id| usize::try_from(id).unwrap_or(usize::MAX)).collect();
        let [_, hidden] = self.matrix.dims();
        let mut values = self.matrix.dequantize_rows(&rows);
        // Unreachable unless the ids could not be read, which leaves fewer rows than asked for.
        values.resize(batch * seq_len * hidden, f32::NAN);
        Tensor::from_data(TensorData::new(values, [batch, seq_len, hidden]), &device)
    }

    /// The whole table decoded, `[vocab, hidden]` (for a tied head, which needs every row).
    pub fn dequantized_weight(&self, device: &B::Device) -> Tensor<B, 2> {
        Tensor::from_data(TensorData::new(self.matrix.dequantize(), self.matrix.dims()), device)
    }
}

impl<B: Backend> From<Embedding<B>> for TokenEmbedding<B> {
    fn from(embedding: Embedding<B>) -> Self {
        TokenEmbedding::Dense(embedding)
    }
}

impl<B: Backend> From<QuantizedEmbedding<B>> for TokenEmbedding<B> {
    fn from(embedding: QuantizedEmbedding<B>) -> Self {
        TokenEmbedding::Quantized(embedding)
    }
}

impl<B: Backend> TokenEmbedding<B> {
    /// `[batch, seq_len]` token ids to `[batch, seq_len, hidden]` embeddings.
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        match self {
            TokenEmbedding::Dense(embedding) => embedding.forward(input_ids),
            TokenEmbedding::Quantized(embedding) => embedding.forward(input_ids),
        }
    }

    /// `[vocab, hidden]`, without materialising a lazily initialised table.
    pub fn dims(&self) -> [usize; 2] {
        match self {
            TokenEmbedding::Dense(embedding) => embedding.weight.lazy_shape().dims(),
            TokenEmbedding::Quantized(embedding) => embedding.matrix.dims(),
        }
    }

    /// The table as a `[vocab, hidden]` tensor: the parameter's value, or a decoded copy of a quantised
    /// table (on `device`).
    pub fn weight(&self, device: &B::Device) -> Tensor<B, 2> {
        match self {
            TokenEmbedding::Dense(embedding) => embedding.weight.val(),
            TokenEmbedding::Quantized(embedding) => embedding.dequantized_weight(device),
        }
    }

    /// The dense table, if it is not quantised.
    pub fn as_dense(&self) -> Option<&Embedding<B>> {
        match self {
            TokenEmbedding::Dense(embedding) => Some(embedding),
            TokenEmbedding::Quantized(_) => None,
        }
    }

    /// The quantised table, if it is quantised.
    pub fn as_quantized(&self) -> Option<&QuantizedEmbedding<B>> {
        match self {
            TokenEmbedding::Dense(_) => None,
            TokenEmbedding::Quantized(embedding) => Some(embedding),
        }
    }
}
