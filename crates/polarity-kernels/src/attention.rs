//! Attention on the projections' `[batch, seq, heads * head_dim]` layout, and its mask.

use std::cell::OnceCell;

use burn::nn::Dropout;
use burn::prelude::*;

use crate::cpu::{self, AttentionShape, WeightDropout};
use crate::{autodiff, composed, flex};

/// How the heads of an attention layer are laid out in its projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionHeads {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (`heads` for multi-head attention, fewer for grouped-query attention; must
    /// divide `heads`).
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
}

/// Which keys each query may attend to: all real (non-padding) keys, and for a causal mask only those
/// at or before the query's position.
///
/// Built once per forward pass and shared by all layers: the composed path materialises its additive
/// bias (`[batch, heads, seq, seq]`, the most negative float where blocked, as transformers does) on
/// first use and reuses it; the CPU kernel reads a `[batch, seq]` row of key flags instead.
///
/// ```
/// use burn::backend::Flex;
/// use burn::prelude::*;
/// use polarity_kernels::{attention, AttentionHeads, AttentionMask};
///
/// let device = Default::default();
/// let padding = Tensor::<Flex, 2, Int>::from_data([[1, 1, 1], [1, 1, 0]], &device); // row 2: 2 tokens
/// let mask = AttentionMask::bidirectional(padding);
/// let heads = AttentionHeads { heads: 2, kv_heads: 2, head_dim: 4 };
/// let x = Tensor::<Flex, 3>::ones([2, 3, 8], &device);
/// let context = attention(x.clone(), x.clone(), x, heads, &mask, None);
/// assert_eq!(context.dims(), [2, 3, 8]);
/// ```
///
/// For sequences packed without their padding ([`PackedSequences`](crate::PackedSequences)),
/// [`AttentionMask::packed`] lets each token see the tokens of its own sequence only.
#[derive(Debug)]
pub struct AttentionMask<B: Backend> {
    padding: Option<Tensor<B, 2, Int>>,
    /// The lengths of packed sequences laid one after another along a batch of one.
    packed: Option<Vec<usize>>,
    causal: bool,
    bias: OnceCell<([usize; 3], Option<Tensor<B, 4>>)>,
    keep: OnceCell<Vec<f32>>,
}

impl<B: Backend> AttentionMask<B> {
    /// Encoder attention: every query sees every real key. `attention_mask` is `[batch, seq]`,
    /// 1 for a token and 0 for padding.
    pub fn bidirectional(attention_mask: Tensor<B, 2, Int>) -> Self {
        Self {
            padding: Some(attention_mask),
            packed: None,
            causal: false,
            bias: OnceCell::new(),
            keep: OnceCell::new(),
        }
    }

    /// Decoder attention: query `i` sees keys `0..=i`, and with an `attention_mask` only the real ones.
    pub fn causal(attention_mask: Option<Tensor<B, 2, Int>>) -> Self {
        Self { padding: attention_mask, packed: None, causal: true, bias: OnceCell::new(), keep: OnceCell::new() }
    }

    /// Attention within packed sequences: the inputs are `[1, total, width]`, `lengths[i]` tokens of
    /// sequence `i` one after another (`total` is their sum, no padding), and each token sees every
    /// token of its own sequence (with `causal`, those at or before it).
    pub fn packed(lengths: Vec<usize>, causal: bool) -> Self {
        Self { padding: None, packed: Some(lengths), causal, bias: OnceCell::new(), keep: OnceCell::new() }
    }

    /// The additive bias `[batch, heads, seq, seq]` (`None` when nothing is masked), cached for the
    /// first head count asked for.
    pub(crate) fn bias(&self, dims: [usize; 3], device: &B::Device) -> Option<Tensor<B, 4>> {
        let (cached, bias) = self.bias.get_or_init(|| (dims, self.build_bias(dims, device)));
        if *cached == dims { bias.clone() } else { self.build_bias(dims, device) }
    }

    fn build_bias(&self, [batch, heads, seq_len]: [usize; 3], device: &B::Device) -> Option<Tensor<B, 4>> {
        if let Some(lengths) = &self.packed {
            return Some(packed_bias(lengths, self.causal, [batch, heads, seq_len], device));
        }
        let padding = self.padding.as_ref().map(|mask| mask.clone().equal_elem(0).reshape([batch, 1, 1, seq_len]));
        let future = self
            .causal
            .then(|| Tensor::<B, 2, Bool>::tril_mask([seq_len, seq_len], 0, device).reshape([1, 1, seq_len, seq_len]));
        let shape = [batch, heads, seq_len, seq_len];
        let blocked = match (padding, future) {
            (Some(padding), Some(future)) => padding.expand(shape).bool_or(future.expand(shape)),
            (Some(blocked), None) | (None, Some(blocked)) => blocked.expand(shape),
            (None, None) => return None,
        };
        Some(Tensor::zeros(shape, device).mask_fill(blocked, f32::MIN))
    }

    /// `[batch * seq]` flags, 1.0 for a real key (all ones without a padding mask).
    fn keep(&self, batch: usize, seq_len: usize) -> &[f32] {
        self.keep.get_or_init(|| match &self.padding {
            Some(mask) => mask.clone().into_data().iter::<i64>().map(|m| if m != 0 { 1.0 } else { 0.0 }).collect(),
            None => vec![1.0; batch * seq_len],
        })
    }
}

/// The additive bias of packed sequences: block-diagonal, blocked across sequences (and, causal,
/// above the diagonal).
fn packed_bias<B: Backend>(lengths: &[usize], causal: bool, shape: [usize; 3], device: &B::Device) -> Tensor<B, 4> {
    let [batch, heads, total] = shape;
    let sequence_of: Vec<usize> =
        lengths.iter().enumerate().flat_map(|(i, &len)| std::iter::repeat_n(i, len)).collect();
    let mut bias = vec![f32::MIN; total * total];
    for (i, row) in bias.chunks_exact_mut(total).enumerate().take(sequence_of.len()) {
        for (j, value) in row.iter_mut().enumerate().take(sequence_of.len()) {
            if sequence_of[i] == sequence_of[j] && !(causal && j > i) {
                *value = 0.0;
            }
        }
    }
    Tensor::<B, 2>::from_data(TensorData::new(bias, [total, total]), device)
        .reshape([1, 1, total, total])
        .expand([batch, heads, total, total])
}

/// Scaled dot-product attention, `softmax(q k^T / sqrt(head_dim) + mask) v`, on the projections'
/// layout: `query` is `[batch, seq, heads * head_dim]`, `key` and `value` `[batch, seq, kv_heads *
/// head_dim]`; the result is `[batch, seq, heads * head_dim]`, ready for the output projection.
///
/// On burn-flex (float32) one fused CPU kernel runs per `(batch, head)`: scores, mask, softmax and
/// the weighted sum, without materialising split heads, repeated key/value heads, the bias or the
/// merged output. Under autodiff over burn-flex the kernel is one graph node with a fused backward
/// pass, and `dropout` (burn's dropout is only active under autodiff) is applied to the weights inside
/// it. On other backends it is [`composed::attention`].
pub fn attention<B: Backend>(
    query: Tensor<B, 3>,
    key: Tensor<B, 3>,
    value: Tensor<B, 3>,
    heads: AttentionHeads,
    mask: &AttentionMask<B>,
    dropout: Option<&Dropout>,
) -> Tensor<B, 3> {
    let [batch, seq_len, q_width] = query.dims();
    let AttentionHeads { heads: num_heads, kv_heads, head_dim } = heads;
    // Empty inputs, or shapes that disagree, go to the composed path (burn reports the mismatch).
    let fits = batch * seq_len * head_dim > 0
        && kv_heads > 0
        && num_heads % kv_heads == 0
        && q_width == num_heads * head_dim
        && key.dims() == [batch, seq_len, kv_heads * head_dim]
        && value.dims() == key.dims()
        && mask.padding.as_ref().is_none_or(|padding| padding.dims() == [batch, seq_len])
        && mask.packed.as_ref().is_none_or(|lengths| batch == 1 && lengths.iter().sum::<usize>() == seq_len);
    let training = autodiff::accepts(&query) && autodiff::accepts(&key) && autodiff::accepts(&value);
    let inference = flex::accepts(&query) && flex::accepts(&key) && flex::accepts(&value);
    if !(fits && (training || inference)) {
        return composed::attention(query, key, value, heads, mask, dropout);
    }
    let shape = AttentionShape { batch, seq_len, heads: num_heads, kv_heads, head_dim, causal: mask.causal };
    if let Some(lengths) = &mask.packed {
        // Packing is an inference layout (`PackedSequences::for_inference`); training takes the
        // composed path with the block-diagonal bias.
        if training {
            return composed::attention(query, key, value, heads, mask, dropout);
        }
        let (query, key, value) = (flex::into_flex(query), flex::into_flex(key), flex::into_flex(value));
        let mut output = vec![0f32; batch * seq_len * q_width];
        cpu::attention_packed(query.storage(), key.storage(), value.storage(), lengths, shape, &mut output);
        return flex::from_flex(flex::new_flex(output, [batch, seq_len, q_width].into()));
    }
    let keep = mask.keep(batch, seq_len);
    if keep.len() != batch * seq_len {
        // A mask built for other inputs: let the composed path report the mismatch.
        return composed::attention(query, key, value, heads, mask, dropout);
    }
    if training {
        let dropout = dropout
            .filter(|layer| layer.prob > 0.0)
            .map(|layer| WeightDropout { seed: crate::random_seed::<B>(&query.device()), keep: 1.0 - layer.prob });
        return autodiff::attention(query, key, value, keep, shape, dropout);
    }
    let (query, key, value) = (flex::into_flex(query), flex::into_flex(key), flex::into_flex(value));
    let mut output = vec![0f32; batch * seq_len * q_width];
    cpu::attention(query.storage(), key.storage(), value.storage(), keep, shape, &mut output);
    flex::from_flex(flex::new_flex(output, [batch, seq_len, q_width].into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    #[test]
    fn the_bias_blocks_padding_keys_and_for_causal_masks_future_keys() {
        let device = Default::default();
        let padding = || Tensor::<NdArray, 2, Int>::from_ints([[1, 1, 0]], &device);
        let bias = AttentionMask::bidirectional(padding()).bias([1, 2, 3], &device).unwrap();
        let (o, m) = (0.0, f32::MIN);
        assert_eq!(bias.into_data().to_vec::<f32>().unwrap(), [o, o, m].repeat(6));
        let bias = AttentionMask::causal(Some(padding())).bias([1, 1, 3], &device).unwrap();
        assert_eq!(bias.into_data().to_vec::<f32>().unwrap(), [o, m, m, o, o, m, o, o, m]);
        let bias = AttentionMask::<NdArray>::causal(None).bias([1, 1, 2], &device).unwrap();
        assert_eq!(bias.into_data().to_vec::<f32>().unwrap(), [o, m, o, o]);
    }
}
