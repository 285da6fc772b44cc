//! Scaled dot-product attention on the projections' `[batch, seq, heads * head_dim]` layout: its mask,
//! the fused forward kernels (padded, packed, and saving the weights for training), the fused backward
//! kernel and autodiff node, and the composed reference.

use std::cell::OnceCell;
use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::nn::Dropout;
use burn::prelude::*;
use burn::tensor::FloatDType;
use burn::tensor::activation::softmax;
use burn_flex::{Flex, FlexTensor};

use crate::autocast::{compute_dtype, matmul};
use crate::autodiff::{fused_node, into_autodiff, into_tensor};
use crate::dispatch::{Op, Path};
use crate::flex::{self, new_flex};
use crate::ops::dropout::{self, random_seed};
use crate::packed_product::bf16_products_available;
use cpu::{AttentionShape, Products, WeightDropout};

static ATTENTION: Op = Op::new("attention");

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
/// For sequences packed without their padding (`PackedSequences`),
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
/// it. In inference under bf16 autocast on a CPU with AVX512-BF16 the kernel's two products take bf16
/// operands with f32 accumulation (the softmax stays f32), as PyTorch's autocast runs attention. On
/// other backends it is [`composed`].
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
        && num_heads.is_multiple_of(kv_heads)
        && q_width == num_heads * head_dim
        && key.dims() == [batch, seq_len, kv_heads * head_dim]
        && value.dims() == key.dims()
        && mask.padding.as_ref().is_none_or(|padding| padding.dims() == [batch, seq_len])
        && mask.packed.as_ref().is_none_or(|lengths| batch == 1 && lengths.iter().sum::<usize>() == seq_len);
    if !fits {
        return composed(query, key, value, heads, mask, dropout);
    }
    let training = match ATTENTION.path::<B>([query.dtype(), key.dtype(), value.dtype()]) {
        Path::FlexInference => false,
        Path::FlexAutodiff => true,
        Path::Composed => return composed(query, key, value, heads, mask, dropout),
    };
    let shape = AttentionShape { batch, seq_len, heads: num_heads, kv_heads, head_dim, causal: mask.causal };
    if let Some(lengths) = &mask.packed {
        // Packing is an inference layout (`PackedSequences::for_inference`); training takes the
        // composed path with the block-diagonal bias.
        if training {
            return composed(query, key, value, heads, mask, dropout);
        }
        let (query, key, value) = (flex::into_flex(query), flex::into_flex(key), flex::into_flex(value));
        let mut output = vec![0f32; batch * seq_len * q_width];
        cpu::attention_packed(query.storage(), key.storage(), value.storage(), lengths, shape, products(), &mut output);
        return flex::from_flex(new_flex(output, [batch, seq_len, q_width].into()));
    }
    let keep = mask.keep(batch, seq_len);
    if keep.len() != batch * seq_len {
        // A mask built for other inputs: let the composed path report the mismatch.
        return composed(query, key, value, heads, mask, dropout);
    }
    if training {
        let dropout = dropout
            .filter(|layer| layer.prob > 0.0)
            .map(|layer| WeightDropout { seed: random_seed::<B>(&query.device()), keep: 1.0 - layer.prob });
        return on_autodiff(query, key, value, keep, shape, dropout);
    }
    let (query, key, value) = (flex::into_flex(query), flex::into_flex(key), flex::into_flex(value));
    let mut output = vec![0f32; batch * seq_len * q_width];
    cpu::attention(query.storage(), key.storage(), value.storage(), keep, shape, products(), &mut output);
    flex::from_flex(new_flex(output, [batch, seq_len, q_width].into()))
}

/// The products of an inference call: bf16 under bf16 autocast where the CPU has AVX512-BF16 (as the
/// linear layers), f32 otherwise.
fn products() -> Products {
    match compute_dtype() {
        Some(FloatDType::BF16) if bf16_products_available() => Products::Bf16,
        _ => Products::F32,
    }
}

/// Scaled dot-product attention on `[batch, seq, heads * head_dim]` projections: heads split,
/// key/value heads repeated for grouped-query attention, `softmax(q k^T / sqrt(d) + bias)` with the
/// mask's additive bias, dropout on the weights (active only under autodiff), heads merged back.
pub fn composed<B: Backend>(
    query: Tensor<B, 3>,
    key: Tensor<B, 3>,
    value: Tensor<B, 3>,
    heads: AttentionHeads,
    mask: &AttentionMask<B>,
    dropout: Option<&Dropout>,
) -> Tensor<B, 3> {
    let AttentionHeads { heads: num_heads, kv_heads, head_dim } = heads;
    let [batch, seq_len, _] = query.dims();
    let split = |x: Tensor<B, 3>, n: usize| x.reshape([batch, seq_len, n, head_dim]).swap_dims(1, 2);
    let groups = num_heads / kv_heads.max(1);
    let query = split(query, num_heads);
    let key = repeat_kv(split(key, kv_heads), groups);
    let value = repeat_kv(split(value, kv_heads), groups);
    let scale = (head_dim as f64).sqrt().recip();
    let mut scores = matmul(query, key.swap_dims(2, 3)).mul_scalar(scale);
    if let Some(bias) = mask.bias([batch, num_heads, seq_len], &scores.device()) {
        scores = scores + bias;
    }
    let mut weights = softmax(scores, 3);
    if let Some(dropout) = dropout {
        weights = dropout::dropout(dropout, weights);
    }
    matmul(weights, value).swap_dims(1, 2).reshape([batch, seq_len, num_heads * head_dim])
}

/// Repeats each key/value head `groups` times, `[b, kv_heads, s, d] -> [b, kv_heads * groups, s, d]`,
/// so query head `h` meets key/value head `h / groups` (transformers' `repeat_kv`).
fn repeat_kv<B: Backend>(x: Tensor<B, 4>, groups: usize) -> Tensor<B, 4> {
    if groups == 1 {
        return x;
    }
    let [batch, kv_heads, seq_len, head_dim] = x.dims();
    x.unsqueeze_dim::<5>(2).expand([batch, kv_heads, groups, seq_len, head_dim]).reshape([
        batch,
        kv_heads * groups,
        seq_len,
        head_dim,
    ])
}

/// What the backward pass needs: the inputs, the softmax weights and the dropout seed.
#[derive(Debug, Clone)]
struct Saved {
    query: FlexTensor,
    key: FlexTensor,
    value: FlexTensor,
    weights: Arc<Vec<f32>>,
    shape: AttentionShape,
    dropout: Option<WeightDropout>,
}

#[derive(Debug)]
struct FusedAttention;

impl Backward<Flex, 3> for FusedAttention {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let Saved { query, key, value, weights, shape, dropout } = ops.state;
        let grad_output = grads.consume::<Flex>(&ops.node).to_contiguous();
        let mut grad_query = vec![0f32; query.storage::<f32>().len()];
        let mut grad_key = vec![0f32; key.storage::<f32>().len()];
        let mut grad_value = vec![0f32; grad_key.len()];
        cpu::attention_backward(
            query.storage(),
            key.storage(),
            value.storage(),
            &weights,
            shape,
            dropout,
            grad_output.storage(),
            [&mut grad_query, &mut grad_key, &mut grad_value],
        );
        let [query_node, key_node, value_node] = ops.parents;
        for (node, grad, like) in
            [(query_node, grad_query, &query), (key_node, grad_key, &key), (value_node, grad_value, &value)]
        {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, new_flex(grad, like.layout().shape().clone()));
            }
        }
    }
}

/// Fused attention on `Autodiff<Flex>` tensors (see [`attention`]); the dispatch chose `FlexAutodiff`
/// and the caller checked the shapes.
fn on_autodiff<B: Backend>(
    query: Tensor<B, 3>,
    key: Tensor<B, 3>,
    value: Tensor<B, 3>,
    keep: &[f32],
    shape: AttentionShape,
    dropout: Option<WeightDropout>,
) -> Tensor<B, 3> {
    let (query, key, value) = (into_autodiff(query), into_autodiff(key), into_autodiff(value));
    let prep = fused_node(FusedAttention, [&query, &key, &value]);
    let inputs = [&query, &key, &value].map(|x| x.primitive.to_contiguous());
    let [q, k, v] = &inputs;
    let mut output = vec![0f32; q.storage::<f32>().len()];
    let output_shape = q.layout().shape().clone();
    let result = match prep {
        OpsKind::Tracked(prep) => {
            let mut weights = vec![0f32; shape.batch * shape.heads * shape.seq_len * shape.seq_len];
            cpu::attention_saving_weights(
                q.storage(),
                k.storage(),
                v.storage(),
                keep,
                shape,
                dropout,
                &mut output,
                &mut weights,
            );
            let [query, key, value] = inputs;
            let saved = Saved { query, key, value, weights: Arc::new(weights), shape, dropout };
            prep.finish(saved, new_flex(output, output_shape))
        }
        // Nothing to differentiate (no input requires a gradient): the inference kernel, and
        // burn's dropout semantics still apply to the weights.
        OpsKind::UnTracked(prep) => {
            if dropout.is_some() {
                let mut weights = vec![0f32; shape.batch * shape.heads * shape.seq_len * shape.seq_len];
                cpu::attention_saving_weights(
                    q.storage(),
                    k.storage(),
                    v.storage(),
                    keep,
                    shape,
                    dropout,
                    &mut output,
                    &mut weights,
                );
            } else {
                cpu::attention(q.storage(), k.storage(), v.storage(), keep, shape, Products::F32, &mut output);
            }
            prep.finish(new_flex(output, output_shape))
        }
    };
    into_tensor(result)
}

/// The kernels on `f32` slices: one rayon task per `(sequence, head)` block, straight on the
/// projections' layout.
mod cpu {
    use std::cell::RefCell;

    use multiversion::multiversion;
    use rayon::prelude::*;

    use crate::math;
    use crate::ops::dropout::cpu::{dropout_mask_slice, keep_threshold};
    use crate::packed_product::small_bf16_product;
    use crate::product::{StridedMatrix, product};
    use crate::reduce::{LANES, dot};

    /// The maximum of `values` where `keep` is 1 (`-inf` when nothing is kept).
    #[inline(always)]
    fn kept_max(values: &[f32], keep: &[f32]) -> f32 {
        #[inline(always)]
        fn kept(value: f32, keep: f32) -> f32 {
            if keep > 0.0 { value } else { f32::NEG_INFINITY }
        }
        let (value_chunks, value_tail) = values.as_chunks::<LANES>();
        let (keep_chunks, keep_tail) = keep.as_chunks::<LANES>();
        let tail = value_tail.iter().zip(keep_tail).fold(f32::NEG_INFINITY, |a, (v, k)| a.max(kept(*v, *k)));
        let mut lanes = [f32::NEG_INFINITY; LANES];
        for (vs, ks) in value_chunks.iter().zip(keep_chunks) {
            // Fixed-size lanes and a plain compare-select (not `f32::max`, whose NaN rule blocks it):
            // LLVM turns this into vector selects and maxima instead of scalar code.
            for lane in 0..LANES {
                let candidate = kept(vs[lane], ks[lane]);
                lanes[lane] = if candidate > lanes[lane] { candidate } else { lanes[lane] };
            }
        }
        lanes.iter().fold(tail, |a, &b| a.max(b))
    }

    /// The exponentials of a masked softmax of one row in place, `exp(x - max)` where `keep` is 1 and 0
    /// elsewhere, returning the factor that normalises them (`1 / sum`). A row with nothing kept becomes
    /// uniform with factor 1 (transformers' behaviour with a most-negative-float mask).
    #[inline(always)]
    fn masked_exp_row(row: &mut [f32], keep: &[f32]) -> f32 {
        let max = kept_max(row, keep);
        if max == f32::NEG_INFINITY {
            let uniform = 1.0 / row.len() as f32;
            row.fill(uniform);
            return 1.0;
        }
        // The exponentials and their sum in one pass, in lanes as `sum`.
        let (row_chunks, row_tail) = row.as_chunks_mut::<LANES>();
        let (keep_chunks, keep_tail) = keep.as_chunks::<LANES>();
        let mut lanes = [0f32; LANES];
        for (xs, ks) in row_chunks.iter_mut().zip(keep_chunks) {
            for lane in 0..LANES {
                xs[lane] = math::exp(xs[lane] - max) * ks[lane];
                lanes[lane] += xs[lane];
            }
        }
        let mut tail = 0.0;
        for (x, k) in row_tail.iter_mut().zip(keep_tail) {
            *x = math::exp(*x - max) * k;
            tail += *x;
        }
        1.0 / (lanes.iter().sum::<f32>() + tail)
    }

    /// The operand type of an inference call's two products per head.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Products {
        F32,
        /// bf16 operands, f32 accumulation (bf16 autocast on a CPU with AVX512-BF16).
        Bf16,
    }

    /// The shape of one attention call on `[batch, seq, heads * head_dim]` projections.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct AttentionShape {
        pub batch: usize,
        pub seq_len: usize,
        pub heads: usize,
        pub kv_heads: usize,
        pub head_dim: usize,
        pub causal: bool,
    }

    /// The masked softmax of each `[seq]` row of `scores` in place. With `row_scales`, the rows are left
    /// unnormalised and each row's normalising factor is written there instead: inference applies it to
    /// the row's `[head_dim]` output, a pass over `head_dim` values instead of `seq`.
    #[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma"))]
    fn softmax_rows(scores: &mut [f32], keep: &[f32], causal: bool, mut row_scales: Option<&mut [f32]>) {
        let seq_len = keep.len();
        for (i, row) in scores.chunks_exact_mut(seq_len).enumerate() {
            // Causal: query i sees keys 0..=i only; the rest of the row is zero.
            let visible = if causal { i + 1 } else { seq_len };
            let (seen, unseen) = row.split_at_mut(visible);
            unseen.fill(0.0);
            let scale = masked_exp_row(seen, &keep[..visible]);
            match row_scales.as_deref_mut() {
                Some(scales) => scales[i] = scale,
                None => seen.iter_mut().for_each(|x| *x *= scale),
            }
        }
    }

    /// Dropout on the attention weights inside the kernels: a counter-based mask per `(batch, head)`
    /// block, so the backward pass regenerates exactly the forward's mask instead of storing it.
    #[derive(Debug, Clone, Copy, PartialEq)]
    pub struct WeightDropout {
        pub seed: u64,
        /// Probability of keeping a weight (`1 - p`).
        pub keep: f64,
    }

    impl WeightDropout {
        /// The mask of block `task` (`[seq, seq]`), `1 / keep` where kept.
        fn fill(self, mask: &mut [f32], task: usize) {
            let first = (task * mask.len()) as u64;
            dropout_mask_slice(mask, first, self.seed, keep_threshold(self.keep), (1.0 / self.keep) as f32);
        }
    }

    /// Strides of one head's `[seq, head_dim]` block inside a `[batch, seq, heads * head_dim]` buffer.
    #[derive(Clone, Copy)]
    struct Block {
        offset: usize,
        row_stride: isize,
    }

    impl AttentionShape {
        fn q_width(&self) -> usize {
            self.heads * self.head_dim
        }
        fn kv_width(&self) -> usize {
            self.kv_heads * self.head_dim
        }
        /// Head `h`'s block of the sequence whose first token is row `first_row` of the queries.
        fn q_block(&self, first_row: usize, h: usize) -> Block {
            Block { offset: first_row * self.q_width() + h * self.head_dim, row_stride: self.q_width() as isize }
        }
        fn kv_block(&self, first_row: usize, kv_h: usize) -> Block {
            Block { offset: first_row * self.kv_width() + kv_h * self.head_dim, row_stride: self.kv_width() as isize }
        }
        fn check(&self, q: usize, kv: usize, keep: usize) {
            assert!(self.kv_heads > 0 && self.heads.is_multiple_of(self.kv_heads));
            assert_eq!(q, self.batch * self.seq_len * self.q_width());
            assert_eq!(kv, self.batch * self.seq_len * self.kv_width());
            assert_eq!(keep, self.batch * self.seq_len);
        }
    }

    /// A `*mut f32` that rayon tasks share; each task writes a disjoint set of head blocks.
    #[derive(Clone, Copy)]
    struct SharedMut(*mut f32);
    // SAFETY: tasks write disjoint head blocks and the caller keeps the buffer alive and otherwise
    // untouched until all tasks have joined.
    unsafe impl Send for SharedMut {}
    unsafe impl Sync for SharedMut {}

    impl SharedMut {
        /// Row `i` of a head's `block` of the output: its `d` floats.
        ///
        /// # Safety
        /// The row lies inside the output, this task alone writes it, and no other reference to it is alive.
        unsafe fn row<'a>(self, block: Block, i: usize, d: usize) -> &'a mut [f32] {
            // SAFETY: forwarded from the caller.
            unsafe { std::slice::from_raw_parts_mut(self.0.add(block.offset + i * block.row_stride as usize), d) }
        }
    }

    thread_local! {
        /// Per-thread scratch, reused across calls: the `[seq, seq]` weights, and the dropout mask or the
        /// rows' softmax factors.
        static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
    }

    /// What a forward pass does with one block's softmax weights besides multiplying `v` by them.
    enum WeightUse<'a> {
        /// Inference: the weights stay unnormalised and each row's normalising factor (kept in this `[seq]`
        /// scratch) scales its `[head_dim]` output row instead: a pass over `head_dim` values, not `seq`.
        Inference { row_scales: &'a mut Vec<f32> },
        /// Training: the normalised weights are kept for the backward pass, and dropout (drawn into `mask`)
        /// applies to the product.
        Training { dropout: Option<WeightDropout>, mask: &'a mut Vec<f32> },
    }

    /// One `(sequence, head)` block of an attention call: the sequence's rows in the projections, which
    /// of its keys are real, and the block's index (it seeds the block's dropout mask).
    #[derive(Clone, Copy)]
    struct HeadBlock<'a> {
        first_row: usize,
        keep: &'a [f32],
        head: usize,
        index: usize,
    }

    impl<'a> HeadBlock<'a> {
        /// Block `task = b * heads + h` of a `[batch, seq]` call.
        fn of_batch(task: usize, keep: &'a [f32], shape: AttentionShape) -> Self {
            let (b, s) = (task / shape.heads, shape.seq_len);
            Self { first_row: b * s, keep: &keep[b * s..(b + 1) * s], head: task % shape.heads, index: task }
        }

        /// This block's query head and its key/value head in the projections.
        fn projections(&self, shape: AttentionShape) -> (Block, Block) {
            let kv_head = self.head / (shape.heads / shape.kv_heads);
            (shape.q_block(self.first_row, self.head), shape.kv_block(self.first_row, kv_head))
        }
    }

    /// One `(sequence, head)` block of the forward pass: the softmax weights into `weights` (`[len, len]`
    /// for a sequence of `len` tokens), the weighted values into the output's head columns.
    ///
    /// # Safety
    /// `output` must be valid for the projections' rows and no other task may write this block of it.
    #[allow(clippy::too_many_arguments)]
    unsafe fn attend(
        block: HeadBlock,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        shape: AttentionShape,
        weights: &mut [f32],
        usage: WeightUse,
        output: SharedMut,
    ) {
        let AttentionShape { head_dim: d, causal, .. } = shape;
        let HeadBlock { keep, index, .. } = block;
        let s = keep.len();
        let (qb, kvb) = block.projections(shape);
        let scale = 1.0 / (d as f32).sqrt();
        // SAFETY: the blocks lie inside q, k, v and output (lengths checked by the callers: `s` rows of
        // stride `width` from `h * d < width`), `weights` holds `s * s` floats.
        unsafe {
            // weights = scale * q_bh k_bh^T ([s, d] x [d, s]; k^T is k read with swapped strides)
            product(
                [s, d, s],
                (weights.as_mut_ptr(), s as isize, 1),
                (q.as_ptr().add(qb.offset), qb.row_stride, 1),
                (k.as_ptr().add(kvb.offset), 1, kvb.row_stride),
                scale,
                false,
            );
        }
        let (weights, row_scales): (&[f32], _) = match usage {
            WeightUse::Inference { row_scales } => {
                row_scales.resize(s, 0.0);
                softmax_rows(weights, keep, causal, Some(row_scales));
                (weights, Some(row_scales))
            }
            WeightUse::Training { dropout: Some(dropout), mask } => {
                softmax_rows(weights, keep, causal, None);
                mask.resize(s * s, 0.0);
                dropout.fill(mask, index);
                mask.iter_mut().zip(weights.iter()).for_each(|(m, w)| *m *= w);
                (mask, None)
            }
            WeightUse::Training { dropout: None, .. } => {
                softmax_rows(weights, keep, causal, None);
                (weights, None)
            }
        };
        // SAFETY: as above; this task alone writes block (b, h) of the output.
        unsafe {
            // output_bh = weights v_bh ([s, s] x [s, d])
            product(
                [s, s, d],
                (output.0.add(qb.offset), qb.row_stride, 1),
                (weights.as_ptr(), s as isize, 1),
                (v.as_ptr().add(kvb.offset), kvb.row_stride, 1),
                1.0,
                false,
            );
        }
        if let Some(row_scales) = row_scales {
            for (i, row_scale) in row_scales.iter().enumerate() {
                // SAFETY: as above.
                let row = unsafe { output.row(qb, i, d) };
                row.iter_mut().for_each(|x| *x *= row_scale);
            }
        }
    }

    /// Scaled dot-product attention straight on the projections' layout, one rayon task per
    /// `(batch, head)`: `softmax(q k^T / sqrt(d) + mask) v`, with key/value head `h / (heads / kv_heads)`
    /// serving query head `h` (grouped-query attention without copying keys), written into
    /// `output: [batch, seq, heads * head_dim]`, so no head split, merge or repeat is materialised.
    ///
    /// `keep` is `[batch, seq]`: 1 for a real key, 0 for padding.
    #[allow(clippy::too_many_arguments)] // q, k, v, the mask, the shape, how to multiply, the output
    pub fn attention(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        keep: &[f32],
        shape: AttentionShape,
        products: Products,
        output: &mut [f32],
    ) {
        shape.check(q.len(), k.len(), keep.len());
        assert!(v.len() == k.len() && output.len() == q.len());
        let out = SharedMut(output.as_mut_ptr());
        (0..shape.batch * shape.heads).into_par_iter().for_each(|task| {
            let block = HeadBlock::of_batch(task, keep, shape);
            // SAFETY: `output` outlives the parallel loop and each task writes its own block.
            unsafe { attend_for_inference(block, q, k, v, shape, products, out) };
        });
    }

    /// [`attention`] on packed sequences: `lengths[i]` tokens of sequence `i` one after the other in
    /// `[total, heads * head_dim]` projections (`total` is their sum), each token attending to the
    /// tokens of its own sequence only (and with `shape.causal`, to those at or before it). `shape`'s
    /// `batch` and `seq_len` are unused.
    #[allow(clippy::too_many_arguments)] // as `attention`
    pub fn attention_packed(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        lengths: &[usize],
        shape: AttentionShape,
        products: Products,
        output: &mut [f32],
    ) {
        let total: usize = lengths.iter().sum();
        let packed = AttentionShape { batch: 1, seq_len: total, ..shape };
        packed.check(q.len(), k.len(), total);
        assert!(v.len() == k.len() && output.len() == q.len());
        let ones = vec![1f32; lengths.iter().copied().max().unwrap_or(0)];
        let first_rows: Vec<usize> =
            lengths.iter().scan(0, |next, &len| Some(std::mem::replace(next, *next + len))).collect();
        let out = SharedMut(output.as_mut_ptr());
        (0..lengths.len() * shape.heads).into_par_iter().for_each(|task| {
            let sequence = task / shape.heads;
            let keep = &ones[..lengths[sequence]];
            let block = HeadBlock { first_row: first_rows[sequence], keep, head: task % shape.heads, index: task };
            // SAFETY: `output` outlives the parallel loop and each task writes its own block.
            unsafe { attend_for_inference(block, q, k, v, packed, products, out) };
        });
    }

    /// [`attend`] without autodiff, with this thread's scratch.
    ///
    /// # Safety
    /// As [`attend`].
    unsafe fn attend_for_inference(
        block: HeadBlock,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        shape: AttentionShape,
        products: Products,
        output: SharedMut,
    ) {
        SCRATCH.with_borrow_mut(|(weights, row_scales)| {
            let s = block.keep.len();
            weights.resize(s * s, 0.0);
            let weights = &mut weights[..s * s];
            match products {
                // SAFETY: forwarded from the caller.
                Products::F32 => unsafe {
                    attend(block, q, k, v, shape, weights, WeightUse::Inference { row_scales }, output)
                },
                // SAFETY: forwarded from the caller.
                Products::Bf16 => unsafe { attend_bf16(block, q, k, v, shape, weights, row_scales, output) },
            }
        })
    }

    /// [`attend`] for inference with both products in bf16 (f32 accumulation, the softmax in f32), as
    /// PyTorch's autocast runs attention: `scale * q kᵀ` from the rounded `scale * q` and keys, then the
    /// rounded unnormalised weights times the rounded values, each output row scaled by its softmax
    /// factor on its way into the output.
    ///
    /// # Safety
    /// As [`attend`]; `bf16_products_available()`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn attend_bf16(
        block: HeadBlock,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        shape: AttentionShape,
        weights: &mut [f32],
        scratch: &mut Vec<f32>,
        output: SharedMut,
    ) {
        let AttentionShape { head_dim: d, causal, .. } = shape;
        let s = block.keep.len();
        let (qb, kvb) = block.projections(shape);
        let rows = |data, block: Block| StridedMatrix {
            data,
            offset: block.offset,
            rows: s,
            cols: d,
            row_stride: block.row_stride,
            col_stride: 1,
        };
        let (queries, keys, values) = (rows(q, qb), rows(k, kvb), rows(v, kvb));
        let keys_transposed = StridedMatrix { rows: d, cols: s, row_stride: 1, col_stride: kvb.row_stride, ..keys };
        small_bf16_product(queries, 1.0 / (d as f32).sqrt(), keys_transposed, weights);
        let (row_scales, context) = {
            scratch.resize(s + s * d, 0.0);
            scratch.split_at_mut(s)
        };
        softmax_rows(weights, block.keep, causal, Some(row_scales));
        let weights =
            StridedMatrix { data: weights, offset: 0, rows: s, cols: s, row_stride: s as isize, col_stride: 1 };
        small_bf16_product(weights, 1.0, values, context);
        for (i, (row, row_scale)) in context.chunks_exact(d).zip(row_scales.iter()).enumerate() {
            // SAFETY: row i of this head's block, inside the output by the caller's contract.
            let out = unsafe { output.row(qb, i, d) };
            out.iter_mut().zip(row).for_each(|(out, x)| *out = x * row_scale);
        }
    }

    /// The training forward pass: as [`attention`], with optional dropout on the weights, and the
    /// softmax weights (before dropout) kept in `weights: [batch, heads, seq, seq]` for the backward pass.
    #[allow(clippy::too_many_arguments)] // q, k, v and the outputs, as `attention_backward` takes them.
    pub fn attention_saving_weights(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        keep: &[f32],
        shape: AttentionShape,
        dropout: Option<WeightDropout>,
        output: &mut [f32],
        weights: &mut [f32],
    ) {
        shape.check(q.len(), k.len(), keep.len());
        let block = shape.seq_len * shape.seq_len;
        assert!(v.len() == k.len() && output.len() == q.len() && weights.len() == shape.batch * shape.heads * block);
        let out = SharedMut(output.as_mut_ptr());
        weights.par_chunks_mut(block).enumerate().for_each(|(task, weights)| {
            SCRATCH.with_borrow_mut(|(_, mask)| {
                let block = HeadBlock::of_batch(task, keep, shape);
                // SAFETY: `output` outlives the parallel loop and each task writes its own block.
                unsafe { attend(block, q, k, v, shape, weights, WeightUse::Training { dropout, mask }, out) };
            })
        });
    }

    #[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma"))]
    fn softmax_backward_rows(grad: &mut [f32], weights: &[f32], seq_len: usize) {
        // d scores = P * (dP - rowsum(dP * P)), row by row.
        for (g, p) in grad.chunks_exact_mut(seq_len).zip(weights.chunks_exact(seq_len)) {
            let projection = dot(g, p);
            for (g, p) in g.iter_mut().zip(p) {
                *g = p * (*g - projection);
            }
        }
    }

    /// Gradients of [`attention_saving_weights`] with respect to `q`, `k` and `v`, given the output's
    /// gradient and the saved weights. One rayon task per `(batch, key/value head)`, so that the query
    /// heads sharing a key/value head accumulate into it without races.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_backward(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        weights: &[f32],
        shape: AttentionShape,
        dropout: Option<WeightDropout>,
        grad_output: &[f32],
        [grad_q, grad_k, grad_v]: [&mut [f32]; 3],
    ) {
        let AttentionShape { batch, seq_len: s, heads, kv_heads, head_dim: d, .. } = shape;
        shape.check(q.len(), k.len(), batch * s);
        assert!(v.len() == k.len() && grad_output.len() == q.len() && weights.len() == batch * heads * s * s);
        assert!(grad_q.len() == q.len() && grad_k.len() == k.len() && grad_v.len() == v.len());
        let groups = heads / kv_heads;
        let scale = 1.0 / (d as f32).sqrt();
        let (gq, gk, gv) =
            (SharedMut(grad_q.as_mut_ptr()), SharedMut(grad_k.as_mut_ptr()), SharedMut(grad_v.as_mut_ptr()));
        (0..batch * kv_heads).into_par_iter().for_each(|task| {
            let (b, kv_h) = (task / kv_heads, task % kv_heads);
            let kvb = shape.kv_block(b * s, kv_h);
            let (gq, gk, gv) = (gq, gk, gv);
            SCRATCH.with_borrow_mut(|(grad_weights, mask)| {
                grad_weights.resize(s * s, 0.0);
                mask.resize(s * s, 0.0);
                for (i, h) in (kv_h * groups..(kv_h + 1) * groups).enumerate() {
                    let head_task = b * heads + h;
                    let qb = shape.q_block(b * s, h);
                    let p = &weights[head_task * s * s..(head_task + 1) * s * s];
                    // SAFETY: blocks inside their buffers as in `attend`.
                    unsafe {
                        // grad_weights = grad_out_bh v^T ([s, d] x [d, s])
                        product(
                            [s, d, s],
                            (grad_weights.as_mut_ptr(), s as isize, 1),
                            (grad_output.as_ptr().add(qb.offset), qb.row_stride, 1),
                            (v.as_ptr().add(kvb.offset), 1, kvb.row_stride),
                            1.0,
                            false,
                        );
                    }
                    // The weights the forward pass multiplied v by: P, or P * mask with dropout (the mask,
                    // drawn once, also masks the weights' gradient).
                    let used: &[f32] = match dropout {
                        Some(dropout) => {
                            dropout.fill(mask, head_task);
                            grad_weights.iter_mut().zip(mask.iter()).for_each(|(g, m)| *g *= m);
                            mask.iter_mut().zip(p).for_each(|(m, p)| *m *= p);
                            mask
                        }
                        None => p,
                    };
                    // SAFETY: as above; this task alone writes the (b, kv_h) blocks of grad_k / grad_v
                    // and the (b, h) blocks of grad_q for its heads.
                    unsafe {
                        // grad_v_b,kv_h (+)= used^T grad_out_bh ([s, s]^T x [s, d])
                        product(
                            [s, s, d],
                            (gv.0.add(kvb.offset), kvb.row_stride, 1),
                            (used.as_ptr(), 1, s as isize),
                            (grad_output.as_ptr().add(qb.offset), qb.row_stride, 1),
                            1.0,
                            i > 0,
                        );
                    }
                    softmax_backward_rows(grad_weights, p, s);
                    // SAFETY: as above.
                    unsafe {
                        // grad_q_bh = scale * d_scores k ([s, s] x [s, d])
                        product(
                            [s, s, d],
                            (gq.0.add(qb.offset), qb.row_stride, 1),
                            (grad_weights.as_ptr(), s as isize, 1),
                            (k.as_ptr().add(kvb.offset), kvb.row_stride, 1),
                            scale,
                            false,
                        );
                        // grad_k (+)= scale * d_scores^T q ([s, s]^T x [s, d])
                        product(
                            [s, s, d],
                            (gk.0.add(kvb.offset), kvb.row_stride, 1),
                            (grad_weights.as_ptr(), 1, s as isize),
                            (q.as_ptr().add(qb.offset), qb.row_stride, 1),
                            scale,
                            i > 0,
                        );
                    }
                }
            })
        });
    }
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
