//! Right-padded batches without their padding, for encoder inference.
//!
//! A batch padded to its longest sequence spends the padding's share of every linear layer, norm and
//! activation on rows whose results are thrown away, and attention spends more (it is quadratic in
//! the padded length). Packing the real tokens of all sequences one after another (`[1, total,
//! width]`) and attending within each sequence ([`AttentionMask::packed`]) computes the same values
//! at the real positions with only the real tokens' work. On IMDB reviews cut at 256 tokens a batch
//! of 32 is about 11 % padding, at 512 about half.

use burn::prelude::*;
use burn::tensor::IndexingUpdateOp;

use crate::dispatch::{Path, path_of};
use crate::ops::attention::AttentionMask;

/// The real tokens of a right-padded `[batch, seq]` batch, packed one sequence after another.
///
/// ```
/// use burn::backend::Flex;
/// use burn::prelude::*;
/// use polarity_kernels::PackedSequences;
///
/// let device = Default::default();
/// let mask = Tensor::<Flex, 2, Int>::from_data([[1, 1, 1], [1, 0, 0]], &device);
/// let packed = PackedSequences::new(&mask).expect("right-padded, non-empty rows");
/// assert_eq!(packed.lengths(), [3, 1]);
/// let ints = |t: Tensor<Flex, 1, Int>| t.into_data().iter::<i64>().collect::<Vec<_>>();
/// assert_eq!(ints(packed.positions()), [0, 1, 2, 0]); // each token's position in its sequence
/// assert_eq!(ints(packed.last_tokens()), [2, 3]); // each sequence's last packed row
///
/// let hidden = Tensor::<Flex, 3>::ones([2, 3, 4], &device);
/// let rows = packed.pack(hidden);
/// assert_eq!(rows.dims(), [1, 4, 4]);
/// // ... layers on `rows` with `packed.attention_mask()` ...
/// let restored = packed.unpack(rows);
/// assert_eq!(restored.dims(), [2, 3, 4]); // zeros at the padded positions
/// ```
#[derive(Debug, Clone)]
pub struct PackedSequences<B: Backend> {
    lengths: Vec<usize>,
    batch: usize,
    seq_len: usize,
    /// The flat `[batch * seq]` index of every real token, in packed order.
    rows: Tensor<B, 1, Int>,
}

impl<B: Backend> PackedSequences<B> {
    /// Packs `attention_mask` (`[batch, seq]`, 1 for a token, 0 for padding) when every row is a
    /// non-empty run of ones followed only by zeros and at least one position is padding; `None`
    /// otherwise: nothing to save, or a layout where packing would change results (a row without
    /// tokens gets uniform attention in transformers; with left padding, BERT's pooler reads a padded
    /// first position).
    pub fn new(attention_mask: &Tensor<B, 2, Int>) -> Option<Self> {
        let [batch, seq_len] = attention_mask.dims();
        let flags = attention_mask.to_data().convert::<i64>();
        let flags = flags.as_slice::<i64>().ok()?;
        let mut lengths = Vec::with_capacity(batch);
        for row in flags.chunks_exact(seq_len.max(1)).take(batch) {
            let len = row.iter().take_while(|&&flag| flag != 0).count();
            if len == 0 || row[len..].iter().any(|&flag| flag != 0) {
                return None;
            }
            lengths.push(len);
        }
        if lengths.len() != batch || lengths.iter().sum::<usize>() == batch * seq_len {
            return None;
        }
        let rows: Vec<i64> = lengths
            .iter()
            .enumerate()
            .flat_map(|(b, &len)| (0..len).map(move |position| (b * seq_len + position) as i64))
            .collect();
        let count = rows.len();
        let rows = Tensor::from_data(TensorData::new(rows, [count]), &attention_mask.device());
        Some(Self { lengths, batch, seq_len, rows })
    }

    /// [`new`](Self::new) where packing pays and the packed attention kernel runs: inference (no
    /// autodiff) on float32 burn-flex tensors like `hidden`. Elsewhere `None`: other backends keep the
    /// padded layout (their attention would need a `[total, total]` bias), and training keeps it so
    /// that dropout draws the same masks as on the padded batch.
    pub fn for_inference(attention_mask: &Tensor<B, 2, Int>, hidden: &Tensor<B, 3>) -> Option<Self> {
        if path_of(hidden) != Path::FlexInference {
            return None;
        }
        Self::new(attention_mask)
    }

    /// The number of real tokens of each sequence.
    pub fn lengths(&self) -> &[usize] {
        &self.lengths
    }

    /// Bidirectional attention within each packed sequence (encoders).
    pub fn attention_mask(&self) -> AttentionMask<B> {
        AttentionMask::packed(self.lengths.clone(), false)
    }

    /// Causal attention within each packed sequence (decoders).
    pub fn causal_attention_mask(&self) -> AttentionMask<B> {
        AttentionMask::packed(self.lengths.clone(), true)
    }

    /// Each packed token's position inside its own sequence, `[total]` (`0..len` per sequence).
    pub fn positions(&self) -> Tensor<B, 1, Int> {
        let positions: Vec<i64> = self.lengths.iter().flat_map(|&len| 0..len as i64).collect();
        let count = positions.len();
        Tensor::from_data(TensorData::new(positions, [count]), &self.rows.device())
    }

    /// The packed row of each sequence's last token, `[batch]`.
    pub fn last_tokens(&self) -> Tensor<B, 1, Int> {
        let ends: Vec<i64> = self
            .lengths
            .iter()
            .scan(0i64, |end, &len| {
                *end += len as i64;
                Some(*end - 1)
            })
            .collect();
        Tensor::from_data(TensorData::new(ends, [self.batch]), &self.rows.device())
    }

    /// `[batch, seq, width]` -> `[1, total, width]`: the real tokens' rows, sequence after sequence.
    pub fn pack(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, seq_len, width] = x.dims();
        assert_eq!([batch, seq_len], [self.batch, self.seq_len], "packing a tensor of another batch shape");
        let total = self.rows.dims()[0];
        x.reshape([batch * seq_len, width]).select(0, self.rows.clone()).reshape([1, total, width])
    }

    /// `[1, total, width]` -> `[batch, seq, width]`, zeros at the padded positions.
    pub fn unpack(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [_, total, width] = x.dims();
        let rows = self.batch * self.seq_len;
        Tensor::zeros([rows, width], &x.device())
            .select_assign(0, self.rows.clone(), x.reshape([total, width]), IndexingUpdateOp::Add)
            .reshape([self.batch, self.seq_len, width])
    }
}
