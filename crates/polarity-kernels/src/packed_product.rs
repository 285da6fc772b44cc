//! Linear-layer products on weights packed once for a register-blocked kernel, in two formats:
//!
//! - [`Bf16`]: bfloat16 operands and float32 accumulation, for CPUs with AVX512-BF16 (AMD Zen 4 and
//!   later, Intel Cooper Lake, Sapphire Rapids and later). One `vdpbf16ps` multiplies 32 bf16 pairs
//!   and adds them to 16 f32 lanes: twice the multiply-adds of an f32 FMA on the same register width,
//!   from half the bytes. Under [`autocast`](crate::autocast::autocast)`(Some(FloatDType::BF16), ..)`
//!   the linear layers of the CPU default run here, in inference and in training, and in inference
//!   attention's per-head products: the activations are rounded to bf16 (round to nearest even, as
//!   PyTorch's autocast casts) and the products accumulate in f32, the bias added with the first pass
//!   over each tile and the residual (if any) as the tile's starting values; an epilogue can finish
//!   each output block while it is in cache (the GELU of the feed-forward layer, rounded to bf16
//!   pairs for the next product).
//! - [`F32`]: float32 FMA on AVX-512 CPUs, for the frozen weights of float32 training (a LoRA
//!   model's base): of the weight and its transpose, the one whose rows are contiguous is read in
//!   place and the other packed once, instead of the `gemm` crate's packing in every product of
//!   every step.
//!
//! The weights are laid out for the kernel once per weight, not per call: the packed copy is kept in
//! a process-wide cache (one per format) keyed by the weight's buffer and view. The cache holds a
//! reference to that buffer, so the buffer cannot be freed and reused, nor written in place
//! (burn-flex copies a shared buffer before writing): a cached entry always matches the weight's
//! values. An entry is dropped once the cache holds the last reference to its buffer (checked on
//! every insertion), or by [`clear_packed_weights`]. A packed copy takes the weight's size in f32
//! and half of it in bf16.
//!
//! Layouts (`MR` x `NR` tiles of the output, 8 x 48; a *word* is a bf16 pair or one f32):
//! - weight `[k, n]` -> panels of `NR` columns, each `[depth][NR]` words: in bf16 `depth = ceil(k / 2)`
//!   pairs `(w[2p, j], w[2p + 1, j])` (an odd `k` padded with a zero), in f32 `depth = k`; the last
//!   panel's missing columns are zeros;
//! - an f32 weight with contiguous rows needs no panels: the kernel reads its rows in place (the
//!   tiles past its last full `NR` columns through a zero-padded copy);
//! - input `[m, k]` -> rows of `depth` words (bf16: converted, a pair `(x[i, 2p], x[i, 2p + 1])` is one
//!   32-bit word, broadcast to all lanes by the kernel; f32: the input itself).

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashMap;
use std::fmt::Debug;
use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use burn::tensor::Bytes;
use burn_flex::FlexTensor;
use rayon::prelude::*;

use crate::product::StridedMatrix;

/// Output rows per kernel tile.
const MR: usize = 8;
/// Output columns per kernel tile (three 16-lane registers).
const NR: usize = 48;
/// Rows of the output per task (a multiple of `MR`): with `KC` words, the task's input rows stay in
/// the core's L2 while its weight panels pass through.
const MC: usize = 64;
/// Columns of the output per task (a multiple of `NR`).
const NC: usize = 384;
/// Input words per pass over a tile: one weight panel slice (`KC * NR * 4` bytes, 72 KB) for the
/// tiles of a task's rows.
const KC: usize = 384;
/// Products below this many multiply-adds run on the calling thread.
const PARALLEL_PRODUCT: usize = 192 * 192 * 192;

/// A packed format: the word the kernel multiplies, how weights and inputs become words, the kernel.
pub(crate) trait Format: Debug + Send + Sync + 'static {
    /// A panel element: a bf16 pair or one f32.
    type Word: Copy + Default + Send + Sync + 'static;
    /// Rows of the weight (elements of an input row) per word.
    const ROWS_PER_WORD: usize;
    /// Whether this CPU runs the kernel.
    fn available() -> bool;
    /// This format's packed copies.
    fn cache() -> &'static Cache<Self::Word>;
    /// Fills `panel` (`[depth][NR]` words) with the columns `columns` of `matrix`.
    fn pack_panel(matrix: StridedMatrix, columns: Range<usize>, panel: &mut [Self::Word]);
    /// The input rows `[rows, k]` as rows of `k.div_ceil(ROWS_PER_WORD)` words.
    fn input_words(input: &[f32], k: usize, parallel: bool) -> Cow<'_, [Self::Word]>;
    /// `matrix` read where it lies, when this format can (its rows contiguous, in f32).
    fn in_place<'a>(_matrix: &StridedMatrix<'a>) -> Option<WeightView<'a, Self::Word>> {
        None
    }
    /// `c[MR, NR] (+)= a[MR, depth words] x b[depth words, NR] (+ bias)` (see [`InputTile`] and
    /// [`TileStart`]), `b` rows of `NR` words at stride `b.stride` words (a panel slice, or a matrix read
    /// in place), `c` rows at stride `c_stride` floats.
    ///
    /// # Safety
    /// [`Format::available`]; the pointers reach the elements described.
    unsafe fn kernel(
        depth: usize,
        a: InputTile<Self::Word>,
        b: Words<Self::Word>,
        c: *mut f32,
        c_stride: usize,
        start: TileStart,
    );
}

/// Rows of words from `start`, `stride` words apart.
#[derive(Clone, Copy)]
pub(crate) struct Words<W> {
    start: *const W,
    stride: usize,
}

/// What a kernel call's sums are added to: the tile's values (`accumulate`; otherwise they are
/// overwritten) and a bias row of `NR` floats (`bias`, null for none).
#[derive(Clone, Copy)]
pub(crate) struct TileStart {
    accumulate: bool,
    bias: *const f32,
}

/// bf16 operands (pairs in 32-bit words), f32 accumulation: AVX512-BF16.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bf16;

/// f32 operands, FMA: AVX-512.
#[derive(Debug, Clone, Copy)]
pub(crate) struct F32;

/// Whether this CPU runs bf16 products ([`autocast`](crate::autocast::autocast) with
/// `FloatDType::BF16` makes the CPU default's linear layers faster only where it does).
///
/// ```
/// // On any machine: true only with AVX512-BF16 (and AVX512F/BW) present.
/// let _fast = polarity_kernels::bf16_products_available();
/// ```
pub fn bf16_products_available() -> bool {
    Bf16::available()
}

#[cfg(target_arch = "x86_64")]
fn detect_bf16() -> bool {
    std::arch::is_x86_feature_detected!("avx512bf16")
        && std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
}

#[cfg(target_arch = "x86_64")]
fn detect_f32() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

#[cfg(not(target_arch = "x86_64"))]
fn detect_bf16() -> bool {
    false
}

#[cfg(not(target_arch = "x86_64"))]
fn detect_f32() -> bool {
    false
}

/// Drops every packed weight the process holds, in both formats (and with them the caches'
/// references to the weights' buffers). Entries of dropped models go on their own at the next
/// insertion; this frees them now, e.g. after the last inference or training of a long-running program.
pub fn clear_packed_weights() {
    lock(Bf16::cache()).clear();
    lock(F32::cache()).clear();
}

/// The packed copies held now, in both formats (for tests and diagnostics).
pub fn packed_weight_count() -> usize {
    lock(Bf16::cache()).len() + lock(F32::cache()).len()
}

static KEEP_PACKED_WEIGHTS: AtomicBool = AtomicBool::new(true);

/// Whether weights packed for the kernel are kept for the next products (the default) or packed per
/// product; `false` also drops the copies held now.
///
/// Kept copies make bf16 inference and a LoRA model's frozen base fast, at a memory cost: a frozen
/// float32 weight in training is held twice (the weight and a packed copy of it or of its transpose,
/// the other read in place), a bf16 weight's two packed copies take its size. Without keeping, bf16
/// products pack their weight per call and frozen float32 weights keep burn's product; the values are
/// the same up to float rounding.
///
/// ```
/// polarity_kernels::set_keep_packed_weights(false);
/// assert_eq!(polarity_kernels::packed_weight_count(), 0);
/// polarity_kernels::set_keep_packed_weights(true);
/// ```
pub fn set_keep_packed_weights(keep: bool) {
    KEEP_PACKED_WEIGHTS.store(keep, Ordering::Relaxed);
    if !keep {
        clear_packed_weights();
    }
}

/// Whether packed weights are kept ([`set_keep_packed_weights`]).
pub fn keeps_packed_weights() -> bool {
    KEEP_PACKED_WEIGHTS.load(Ordering::Relaxed)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A weight `[k, n]` in the kernel's panel layout.
#[derive(Debug)]
pub(crate) struct PackedWeight<W> {
    k: usize,
    n: usize,
    /// Words per panel row: `k.div_ceil(ROWS_PER_WORD)`.
    depth: usize,
    panels: Vec<W>,
}

impl<W> PackedWeight<W> {
    fn view(&self) -> WeightView<'_, W> {
        WeightView { k: self.k, n: self.n, depth: self.depth, source: WeightSource::Panels(&self.panels) }
    }
}

/// A `[k, n]` weight as the kernel reads it: packed panels, or a row-major f32 matrix in place.
pub(crate) struct WeightView<'a, W> {
    k: usize,
    n: usize,
    depth: usize,
    source: WeightSource<'a, W>,
}

enum WeightSource<'a, W> {
    /// [`pack`]'s panels.
    Panels(&'a [W]),
    /// Row `i` (one word per element) at `words[offset + i * row_stride..]`.
    Rows { words: &'a [W], offset: usize, row_stride: usize },
}

impl<W: Copy + Default> WeightView<'_, W> {
    /// The rows `first..first + pass` of the columns `tile_col..tile_col + NR`: a panel slice, the matrix
    /// itself where the tile's columns lie inside it, or else a zero-padded copy of them.
    fn panel(&self, tile_col: usize, first: usize, pass: usize) -> (Cow<'_, [W]>, usize) {
        match self.source {
            WeightSource::Panels(panels) => {
                (Cow::Borrowed(&panels[(tile_col / NR) * self.depth * NR + first * NR..][..pass * NR]), NR)
            }
            WeightSource::Rows { words, offset, row_stride } => {
                let start = offset + first * row_stride + tile_col;
                if tile_col + NR <= self.n {
                    (Cow::Borrowed(&words[start..start + (pass - 1) * row_stride + NR]), row_stride)
                } else {
                    let width = self.n - tile_col;
                    let mut copy = vec![W::default(); pass * NR];
                    for (row, out) in copy.chunks_exact_mut(NR).enumerate() {
                        out[..width].copy_from_slice(&words[start + row * row_stride..][..width]);
                    }
                    (Cow::Owned(copy), NR)
                }
            }
        }
    }
}

/// Identifies a weight view: its buffer, offset, strides and shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct WeightKey {
    buffer: usize,
    offset: usize,
    strides: [isize; 2],
    dims: [usize; 2],
}

/// A format's packed copies by weight view.
pub(crate) type Cache<W> = Mutex<HashMap<WeightKey, CacheEntry<W>>>;

pub(crate) struct CacheEntry<W> {
    /// Keeps the buffer alive and shared, so that its address is not reused and it is not written in place.
    buffer: Arc<Bytes>,
    packed: Arc<PackedWeight<W>>,
}

/// The packed copy of `weight` (a float32 `[k, n]` burn-flex view read as `matrix`), packing it on first use
/// (on every use where packed weights are not [kept](keeps_packed_weights)).
fn packed<F: Format>(weight: &FlexTensor, matrix: StridedMatrix) -> Arc<PackedWeight<F::Word>> {
    if !keeps_packed_weights() {
        return Arc::new(pack::<F>(matrix));
    }
    let buffer = weight.data_arc();
    let key = WeightKey {
        buffer: Arc::as_ptr(&buffer) as usize,
        offset: matrix.offset,
        strides: [matrix.row_stride, matrix.col_stride],
        dims: [matrix.rows, matrix.cols],
    };
    if let Some(entry) = lock(F::cache()).get(&key) {
        return Arc::clone(&entry.packed);
    }
    // Packed outside the lock: other threads' products need not wait (two threads packing the same
    // weight at once both succeed, and the second insertion replaces the first with equal values).
    let packed = Arc::new(pack::<F>(matrix));
    let mut cache = lock(F::cache());
    cache.retain(|_, entry| Arc::strong_count(&entry.buffer) > 1);
    cache.insert(key, CacheEntry { buffer, packed: Arc::clone(&packed) });
    packed
}

fn pack<F: Format>(matrix: StridedMatrix) -> PackedWeight<F::Word> {
    let (k, n) = (matrix.rows, matrix.cols);
    let depth = k.div_ceil(F::ROWS_PER_WORD);
    let mut panels = vec![F::Word::default(); n.div_ceil(NR) * depth * NR];
    fill_panels::<F>(matrix, depth, &mut panels, true);
    PackedWeight { k, n, depth, panels }
}

/// Packs `matrix` (`[k, n]`) into `panels` (`n.div_ceil(NR)` panels of `depth * NR` words), one task per
/// panel on all cores if `parallel`.
fn fill_panels<F: Format>(matrix: StridedMatrix, depth: usize, panels: &mut [F::Word], parallel: bool) {
    if panels.is_empty() {
        return;
    }
    let n = matrix.cols;
    let fill =
        |(index, panel): (usize, &mut [F::Word])| F::pack_panel(matrix, index * NR..n.min(index * NR + NR), panel);
    if parallel {
        panels.par_chunks_mut(depth * NR).enumerate().for_each(fill);
    } else {
        panels.chunks_mut(depth * NR).enumerate().for_each(fill);
    }
}

/// Element `(row, col)` of a strided matrix.
fn element(matrix: &StridedMatrix, row: usize, col: usize) -> f32 {
    let index = matrix.offset as isize + row as isize * matrix.row_stride + col as isize * matrix.col_stride;
    matrix.data[index as usize]
}

/// Whether a matrix is read along its rows (a row-major matrix: a weight, an activation) rather than
/// down its columns (a transposed view).
fn along_rows(matrix: &StridedMatrix) -> bool {
    matrix.col_stride.unsigned_abs() <= matrix.row_stride.unsigned_abs()
}

/// Whether each row's elements lie next to each other, rows in increasing order (a row-major matrix).
fn rows_contiguous(matrix: &StridedMatrix) -> bool {
    matrix.col_stride == 1 && matrix.row_stride > 0
}

/// Whether each column's elements lie next to each other, columns in increasing order (the transpose of a
/// row-major matrix).
fn columns_contiguous(matrix: &StridedMatrix) -> bool {
    matrix.row_stride == 1 && matrix.col_stride > 0
}

/// Row `row`'s elements in `columns` of a matrix whose rows are contiguous.
fn contiguous_row<'a>(matrix: &StridedMatrix<'a>, row: usize, columns: &Range<usize>) -> &'a [f32] {
    let start = matrix.offset + row * matrix.row_stride as usize + columns.start;
    &matrix.data[start..start + columns.len()]
}

impl Format for Bf16 {
    type Word = u32;
    const ROWS_PER_WORD: usize = 2;

    fn available() -> bool {
        static AVAILABLE: OnceLock<bool> = OnceLock::new();
        *AVAILABLE.get_or_init(detect_bf16)
    }

    fn cache() -> &'static Cache<u32> {
        static CACHE: OnceLock<Cache<u32>> = OnceLock::new();
        CACHE.get_or_init(Default::default)
    }

    fn pack_panel(matrix: StridedMatrix, columns: Range<usize>, panel: &mut [u32]) {
        let k = matrix.rows;
        let word = |pair: usize, col: usize| {
            let low = bf16_bits(element(&matrix, 2 * pair, col)) as u32;
            let high = if 2 * pair + 1 < k { bf16_bits(element(&matrix, 2 * pair + 1, col)) as u32 } else { 0 };
            low | (high << 16)
        };
        if rows_contiguous(&matrix) {
            // Two rows' floats at a time, vectorised.
            for (pair, out) in panel.chunks_exact_mut(NR).enumerate() {
                let row = |index| contiguous_row(&matrix, index, &columns);
                let high = (2 * pair + 1 < k).then(|| row(2 * pair + 1));
                convert_row_pair(row(2 * pair), high, &mut out[..columns.len()]);
            }
        } else if columns_contiguous(&matrix) {
            // A transposed row-major matrix (keys as the product's `kᵀ`): each column converted
            // vectorised, then spread over the panel's rows.
            let mut words = vec![MaybeUninit::uninit(); k.div_ceil(2)];
            for (offset, col) in columns.enumerate() {
                let start = matrix.offset + col * matrix.col_stride as usize;
                convert_row(&matrix.data[start..start + k], 1.0, &mut words);
                for (pair, word) in words.iter().enumerate() {
                    // SAFETY: `convert_row` wrote every word.
                    panel[pair * NR + offset] = unsafe { word.assume_init() };
                }
            }
        } else if along_rows(&matrix) {
            for (pair, out) in panel.chunks_exact_mut(NR).enumerate() {
                columns.clone().zip(out.iter_mut()).for_each(|(col, slot)| *slot = word(pair, col));
            }
        } else {
            for (offset, col) in columns.enumerate() {
                (0..k.div_ceil(2)).for_each(|pair| panel[pair * NR + offset] = word(pair, col));
            }
        }
    }

    fn input_words(input: &[f32], k: usize, parallel: bool) -> Cow<'_, [u32]> {
        Cow::Owned(converted_rows(input, k, parallel))
    }

    unsafe fn kernel(depth: usize, a: InputTile<u32>, b: Words<u32>, c: *mut f32, c_stride: usize, start: TileStart) {
        // SAFETY: forwarded from the caller.
        unsafe { bf16_kernel(depth, a, b, c, c_stride, start) }
    }
}

impl Format for F32 {
    type Word = f32;
    const ROWS_PER_WORD: usize = 1;

    fn available() -> bool {
        static AVAILABLE: OnceLock<bool> = OnceLock::new();
        *AVAILABLE.get_or_init(detect_f32)
    }

    fn cache() -> &'static Cache<f32> {
        static CACHE: OnceLock<Cache<f32>> = OnceLock::new();
        CACHE.get_or_init(Default::default)
    }

    fn pack_panel(matrix: StridedMatrix, columns: Range<usize>, panel: &mut [f32]) {
        let width = columns.len();
        if rows_contiguous(&matrix) {
            for (row, out) in panel.chunks_exact_mut(NR).enumerate() {
                out[..width].copy_from_slice(contiguous_row(&matrix, row, &columns));
            }
        } else if along_rows(&matrix) {
            for (row, out) in panel.chunks_exact_mut(NR).enumerate() {
                columns.clone().zip(out.iter_mut()).for_each(|(col, slot)| *slot = element(&matrix, row, col));
            }
        } else {
            for (offset, col) in columns.enumerate() {
                (0..matrix.rows).for_each(|row| panel[row * NR + offset] = element(&matrix, row, col));
            }
        }
    }

    fn input_words(input: &[f32], _k: usize, _parallel: bool) -> Cow<'_, [f32]> {
        Cow::Borrowed(input)
    }

    fn in_place<'a>(matrix: &StridedMatrix<'a>) -> Option<WeightView<'a, f32>> {
        (rows_contiguous(matrix) && matrix.rows > 0).then_some(WeightView {
            k: matrix.rows,
            n: matrix.cols,
            depth: matrix.rows,
            source: WeightSource::Rows {
                words: matrix.data,
                offset: matrix.offset,
                row_stride: matrix.row_stride as usize,
            },
        })
    }

    unsafe fn kernel(depth: usize, a: InputTile<f32>, b: Words<f32>, c: *mut f32, c_stride: usize, start: TileStart) {
        // SAFETY: forwarded from the caller.
        unsafe { f32_kernel(depth, a, b, c, c_stride, start) }
    }
}

/// `x` rounded to the nearest bf16 (ties to even), as its upper 16 bits; NaN stays a (quiet) NaN.
fn bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}

/// A product's left operand: row-major `[rows, k]` floats, or rows already in the format's words
/// (`k.div_ceil(ROWS_PER_WORD)` per row: the bf16 output of [`new_activated_product`]).
#[derive(Clone, Copy)]
pub(crate) enum Input<'a, W> {
    Floats(&'a [f32]),
    Words(&'a [W]),
}

impl<W> Input<'_, W> {
    /// The rows of this operand by a `[k, n]` matrix (`k > 0`, checked with the operand's length).
    fn rows<F: Format<Word = W>>(&self, matrix: &StridedMatrix) -> usize {
        let k = matrix.rows;
        let (len, width) = match self {
            Input::Floats(floats) => (floats.len(), k),
            Input::Words(words) => (words.len(), k.div_ceil(F::ROWS_PER_WORD)),
        };
        assert!(k > 0 && len.is_multiple_of(width), "input of {len} elements by a matrix of {k} rows");
        assert!(matrix.in_bounds());
        len / width
    }
}

/// `output += input x weight (+ bias)` in format `F`, for `input: [rows, k]`, the float32 `[k, n]`
/// burn-flex weight `weight` (read as `matrix`, its view; packed once and kept), `bias: [n]` and
/// row-major `output: [rows, n]`. Call only where `F` is [available](Format::available).
pub(crate) fn add_product<F: Format>(
    input: Input<F::Word>,
    weight: &FlexTensor,
    matrix: StridedMatrix,
    bias: Option<&[f32]>,
    output: &mut [f32],
) {
    let rows = input.rows::<F>(&matrix);
    assert_eq!(output.len(), rows * matrix.cols);
    let output = Output { values: SharedOutput(output.as_mut_ptr()), accumulate: true, bias, epilogue: None };
    product::<F>(input, rows, matrix, output, || packed::<F>(weight, matrix));
}

/// `input x weight (+ bias)` as [`add_product`] computes it, into a new row-major `[rows, n]` buffer
/// (written once by the kernel: no zero fill, no pass adding the bias).
pub(crate) fn new_product<F: Format>(
    input: Input<F::Word>,
    weight: &FlexTensor,
    matrix: StridedMatrix,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let rows = input.rows::<F>(&matrix);
    written(rows * matrix.cols, |values| {
        let output = Output { values, accumulate: false, bias, epilogue: None };
        product::<F>(input, rows, matrix, output, || packed::<F>(weight, matrix));
    })
}

/// `activation(input x weight + bias)` rounded to bf16, as rows of `n / 2` bf16 pairs (`n` even; an
/// [`Input::Words`] operand of the next product): the product as [`new_product`] computes it in bf16,
/// each task applying `activation` (in place, on f32 values) to its output block and converting it
/// while the block is in cache.
pub(crate) fn new_activated_product(
    input: Input<u32>,
    weight: &FlexTensor,
    matrix: StridedMatrix,
    bias: Option<&[f32]>,
    activation: fn(&mut [f32]),
) -> Vec<u32> {
    let rows = input.rows::<Bf16>(&matrix);
    let n = matrix.cols;
    assert!(n.is_multiple_of(2), "bf16 pairs of an odd width ({n})");
    let mut words = Vec::<u32>::with_capacity(rows * n / 2);
    let pairs = SharedOutput(words.as_mut_ptr());
    // The f32 sums, read back by the tasks' epilogues only.
    let mut sums = Vec::<f32>::with_capacity(rows * n);
    let values = SharedOutput(sums.as_mut_ptr());
    let epilogue = move |block_rows: Range<usize>, columns: Range<usize>| {
        for row in block_rows {
            // SAFETY: the block's rows and columns lie inside the `[rows, n]` output, whose sums the task
            // has just written, and this task alone touches them (and their `n / 2`-word rows of pairs,
            // `columns` starting at a multiple of `NC`, an even number).
            unsafe {
                let sums = std::slice::from_raw_parts_mut(values.at(row * n + columns.start), columns.len());
                activation(sums);
                let out = pairs.at((row * n + columns.start) / 2).cast::<MaybeUninit<u32>>();
                convert_row(sums, 1.0, std::slice::from_raw_parts_mut(out, columns.len() / 2));
            }
        }
    };
    let output = Output { values, accumulate: false, bias, epilogue: Some(&epilogue) };
    product::<Bf16>(input, rows, matrix, output, || packed::<Bf16>(weight, matrix));
    // SAFETY: the capacity is `rows * n / 2` words, and the epilogues converted every block of the
    // output (the tasks cover it).
    unsafe { words.set_len(rows * n / 2) };
    words
}

/// [`new_product`] without a bias for a matrix used once (a weight that changes every step, a transpose
/// needed by one backward pass): packed for this call and not cached.
pub(crate) fn new_product_once<F: Format>(input: &[f32], matrix: StridedMatrix) -> Vec<f32> {
    let input = Input::Floats(input);
    let rows = input.rows::<F>(&matrix);
    written(rows * matrix.cols, |values| {
        let output = Output { values, accumulate: false, bias: None, epilogue: None };
        product::<F>(input, rows, matrix, output, || Arc::new(pack::<F>(matrix)));
    })
}

/// A new buffer of `len` floats, every one of them written by `write` (a product that does not
/// accumulate: see [`run_tasks`]).
fn written(len: usize, write: impl FnOnce(SharedOutput)) -> Vec<f32> {
    let mut values = Vec::<f32>::with_capacity(len);
    write(SharedOutput(values.as_mut_ptr()));
    // SAFETY: the capacity is `len`, and `write` initialised all `len` floats.
    unsafe { values.set_len(len) };
    values
}

/// `output (+)= input x matrix (+ bias)` for `rows` input rows ([`Input::rows`]), reading `matrix` in
/// place where the format can and from `packed()` otherwise; `output` reaches `rows * n` floats.
fn product<F: Format>(
    input: Input<F::Word>,
    rows: usize,
    matrix: StridedMatrix,
    output: Output,
    packed: impl FnOnce() -> Arc<PackedWeight<F::Word>>,
) {
    assert!(F::available(), "{} products need their CPU features", std::any::type_name::<F>());
    match F::in_place(&matrix) {
        Some(view) => multiply::<F>(input, rows, &view, output),
        None => multiply::<F>(input, rows, &packed().view(), output),
    }
}

/// `lhsᵀ x rhs` in format `F` for `lhs: [rows, m]` and `rhs: [rows, n]` (the weight gradient `xᵀ dy`
/// of a linear layer), as a new row-major `[m, n]` buffer: both operands are packed into panels for
/// this call, `lhs`'s panels read as the kernel's input rows.
pub(crate) fn new_transposed_product_once<F: Format>(lhs: StridedMatrix, rhs: StridedMatrix) -> Vec<f32> {
    assert!(F::available(), "{} products need their CPU features", std::any::type_name::<F>());
    assert!(lhs.in_bounds() && rhs.in_bounds() && lhs.rows == rhs.rows);
    let (m, n) = (lhs.cols, rhs.cols);
    if lhs.rows == 0 || m == 0 || n == 0 {
        return vec![0.0; m * n];
    }
    let (lhs, rhs) = (pack::<F>(lhs), pack::<F>(rhs));
    let input = InputTiles { words: &lhs.panels, depth: lhs.depth, layout: InputLayout::Panels };
    written(m * n, |values| {
        run_tasks::<F>(&input, m, &rhs.view(), Output { values, accumulate: false, bias: None, epilogue: None })
    })
}

/// `output = (scale * input) x matrix` in bf16 for the small products of one attention head, on the
/// calling thread (above the parallel threshold, on all cores): `input: [rows, k]` with contiguous rows
/// (a head's queries, or its softmax weights), `matrix: [k, n]` read through its strides (the keys'
/// transpose, or the values), both converted into this thread's scratch buffers; `output` row-major
/// `[rows, n]`. Call only where [`bf16_products_available`].
pub(crate) fn small_bf16_product(input: StridedMatrix, scale: f32, matrix: StridedMatrix, output: &mut [f32]) {
    thread_local! {
        /// The converted input and the packed matrix, reused from call to call (taken while in use,
        /// so that a product nested inside another's parallel loop gets buffers of its own).
        static SCRATCH: Cell<(Vec<u32>, Vec<u32>)> = const { Cell::new((Vec::new(), Vec::new())) };
    }
    assert!(Bf16::available(), "bf16 products need AVX512-BF16");
    let ([rows, k], n) = ([input.rows, input.cols], matrix.cols);
    assert!(k > 0 && matrix.rows == k && output.len() == rows * n);
    assert!(input.in_bounds() && matrix.in_bounds() && rows_contiguous(&input));
    if rows == 0 || n == 0 {
        return;
    }
    let depth = k.div_ceil(2);
    let (mut words, mut panels) = SCRATCH.take();
    words.resize(rows * depth, 0);
    for (row, out) in words.chunks_exact_mut(depth).enumerate() {
        convert_row(contiguous_row(&input, row, &(0..k)), scale, as_uninit(out));
    }
    // The columns past `n` in the last panel keep stale words: they only reach the scratch columns of
    // edge tiles, which are not copied out.
    panels.resize(n.div_ceil(NR) * depth * NR, 0);
    fill_panels::<Bf16>(matrix, depth, &mut panels, false);
    let view = WeightView { k, n, depth, source: WeightSource::Panels(&panels) };
    let input = InputTiles { words: &words, depth, layout: InputLayout::Rows };
    let output = Output { values: SharedOutput(output.as_mut_ptr()), accumulate: false, bias: None, epilogue: None };
    run_tasks::<Bf16>(&input, rows, &view, output);
    SCRATCH.set((words, panels));
}

/// `words` as slots to write words into.
fn as_uninit(words: &mut [u32]) -> &mut [MaybeUninit<u32>] {
    // SAFETY: `MaybeUninit<u32>` has `u32`'s layout, and the callers write initialised words only.
    unsafe { &mut *(words as *mut [u32] as *mut [MaybeUninit<u32>]) }
}

/// Where a product's sums go: `rows * n` floats at `values`, added to (`accumulate`) or written over,
/// and `bias` (`n` floats) added once; `epilogue(rows, columns)` runs on each finished output block.
#[derive(Clone, Copy)]
struct Output<'a> {
    values: SharedOutput,
    accumulate: bool,
    bias: Option<&'a [f32]>,
    epilogue: Option<&'a (dyn Fn(Range<usize>, Range<usize>) + Sync)>,
}

fn multiply<F: Format>(input: Input<F::Word>, rows: usize, weight: &WeightView<F::Word>, output: Output) {
    let (k, n) = (weight.k, weight.n);
    if rows == 0 || n == 0 {
        return;
    }
    let words = match input {
        Input::Floats(floats) => F::input_words(floats, k, rows * k * n >= PARALLEL_PRODUCT),
        Input::Words(words) => Cow::Borrowed(words),
    };
    run_tasks::<F>(&InputTiles { words: &words, depth: weight.depth, layout: InputLayout::Rows }, rows, weight, output);
}

/// How the kernel's input operand, `rows` x `depth` words, is laid out.
#[derive(Clone, Copy)]
enum InputLayout {
    /// Row after row (`multiply`'s input words).
    Rows,
    /// [`pack`]'s panels of a matrix whose columns are the input rows (`add_transposed_product_once`).
    Panels,
}

/// The kernel's input operand.
struct InputTiles<'a, W> {
    words: &'a [W],
    depth: usize,
    layout: InputLayout,
}

impl<W> InputTiles<'_, W> {
    /// The words from word `first` of row `row` (a multiple of `MR`) on, with the strides between rows
    /// and between words of a row. A tile never crosses a panel (`NR` is a multiple of `MR`).
    fn tile(&self, row: usize, first: usize) -> (&[W], usize, usize) {
        match self.layout {
            InputLayout::Rows => (&self.words[row * self.depth + first..], self.depth, 1),
            InputLayout::Panels => {
                let start = (row / NR) * self.depth * NR + first * NR + row % NR;
                (&self.words[start..], 1, NR)
            }
        }
    }
}

/// `output (+)= input x weight (+ bias)` for `rows` input rows, in `[MC, NC]` blocks on all cores
/// (for products above the parallel threshold). Every output float is written, also where `output`
/// does not accumulate (`weight.depth > 0`).
fn run_tasks<F: Format>(input: &InputTiles<F::Word>, rows: usize, weight: &WeightView<F::Word>, output: Output) {
    let n = weight.n;
    assert_eq!(input.depth, weight.depth);
    assert!(weight.depth > 0 && output.bias.is_none_or(|bias| bias.len() == n));
    let parallel = rows * weight.k * n >= PARALLEL_PRODUCT;
    let tasks: Vec<[usize; 2]> =
        (0..rows.div_ceil(MC)).flat_map(|i| (0..n.div_ceil(NC)).map(move |j| [i * MC, j * NC])).collect();
    let run = |&[row, col]: &[usize; 2]| {
        // SAFETY: tasks cover disjoint `[MC, NC]` blocks of the output, which reaches `rows * n` floats.
        unsafe { block::<F>(input, weight, output, rows, [row, col]) }
    };
    if parallel {
        tasks.par_iter().for_each(run);
    } else {
        tasks.iter().for_each(run);
    }
}

/// The output pointer shared by the tasks, each writing its own block.
#[derive(Clone, Copy)]
struct SharedOutput<T = f32>(*mut T);
// SAFETY: the tasks write disjoint blocks (see `run_tasks`).
unsafe impl<T> Send for SharedOutput<T> {}
unsafe impl<T> Sync for SharedOutput<T> {}

impl<T> SharedOutput<T> {
    /// The pointer to element `index` (a method, so that closures capture the shared wrapper rather
    /// than its raw pointer).
    ///
    /// # Safety
    /// `index` lies inside the buffer.
    unsafe fn at(self, index: usize) -> *mut T {
        // SAFETY: forwarded from the caller.
        unsafe { self.0.add(index) }
    }
}

/// One task: the output block at `[row, col]` (at most `MC` x `NC`), all of `k`. The first pass over
/// `k` adds the bias and, unless the output accumulates, writes the block over.
///
/// # Safety
/// `output.values` points at `rows * weight.n` floats; no other thread touches this block; `F` is available.
unsafe fn block<F: Format>(
    input: &InputTiles<F::Word>,
    weight: &WeightView<F::Word>,
    output: Output,
    rows: usize,
    [row, col]: [usize; 2],
) {
    let (n, depth) = (weight.n, weight.depth);
    let (row_end, col_end) = ((row + MC).min(rows), (col + NC).min(n));
    let mut first = 0;
    while first < depth {
        let pass = KC.min(depth - first);
        for tile_col in (col..col_end).step_by(NR) {
            let (panel, panel_stride) = weight.panel(tile_col, first, pass);
            let b = Words { start: panel.as_ptr(), stride: panel_stride };
            let tile_cols = (col_end - tile_col).min(NR);
            // The bias of the tile's columns, through a zero-padded copy for the last columns.
            let mut padded_bias = [0f32; NR];
            let bias = match output.bias.filter(|_| first == 0) {
                Some(bias) if tile_cols == NR => bias[tile_col..].as_ptr(),
                Some(bias) => {
                    padded_bias[..tile_cols].copy_from_slice(&bias[tile_col..col_end]);
                    padded_bias.as_ptr()
                }
                None => std::ptr::null(),
            };
            let start = TileStart { accumulate: output.accumulate || first > 0, bias };
            for tile_row in (row..row_end).step_by(MR) {
                let (words, row_stride, word_stride) = input.tile(tile_row, first);
                let tile_rows = (row_end - tile_row).min(MR);
                // The last rows of an input that is not a multiple of `MR` rows: through a zero-padded
                // copy of the tile's words.
                let mut padded: [F::Word; MR * KC];
                let a = if tile_rows == MR {
                    InputTile { words: words.as_ptr(), row_stride, word_stride }
                } else {
                    padded = [F::Word::default(); MR * KC];
                    for r in 0..tile_rows {
                        for p in 0..pass {
                            padded[p * MR + r] = words[r * row_stride + p * word_stride];
                        }
                    }
                    InputTile { words: padded.as_ptr(), row_stride: 1, word_stride: MR }
                };
                // SAFETY: `output + tile_row * n + tile_col` starts this task's tile; a full tile has
                // `MR` rows of `NR` in-bounds columns at stride `n`; the input tile holds `MR` rows of
                // `pass` words at the given strides, the weight `pass` rows of `NR` words at its stride,
                // the bias (if any) `NR` floats.
                unsafe {
                    let c = output.values.0.add(tile_row * n + tile_col);
                    if tile_rows == MR && tile_cols == NR {
                        F::kernel(pass, a, b, c, n, start);
                    } else {
                        // An edge tile: through a full-size scratch tile.
                        let mut scratch = [0f32; MR * NR];
                        if start.accumulate {
                            for r in 0..tile_rows {
                                std::ptr::copy_nonoverlapping(
                                    c.add(r * n),
                                    scratch.as_mut_ptr().add(r * NR),
                                    tile_cols,
                                );
                            }
                        }
                        F::kernel(pass, a, b, scratch.as_mut_ptr(), NR, start);
                        for r in 0..tile_rows {
                            std::ptr::copy_nonoverlapping(scratch.as_ptr().add(r * NR), c.add(r * n), tile_cols);
                        }
                    }
                }
            }
        }
        first += pass;
    }
    if let Some(epilogue) = output.epilogue {
        epilogue(row..row_end, col..col_end);
    }
}

/// `MR` input rows of a tile: word `p` of row `r` at `words + r * row_stride + p * word_stride`.
#[derive(Clone, Copy)]
pub(crate) struct InputTile<W> {
    words: *const W,
    row_stride: usize,
    word_stride: usize,
}

/// The row-major `input` (rows of `k` floats) as rows of `k.div_ceil(2)` bf16 pairs, on all cores if
/// `parallel`; each word written once (no zero fill first).
fn converted_rows(input: &[f32], k: usize, parallel: bool) -> Vec<u32> {
    let pairs = k.div_ceil(2);
    let len = input.len() / k * pairs;
    let mut converted = Vec::with_capacity(len);
    let convert = |(source, target): (&[f32], &mut [MaybeUninit<u32>])| {
        for (row, out) in source.chunks_exact(k).zip(target.chunks_exact_mut(pairs)) {
            convert_row(row, 1.0, out);
        }
    };
    let task_rows = 64;
    let target = &mut converted.spare_capacity_mut()[..len];
    if parallel {
        input.par_chunks(task_rows * k).zip(target.par_chunks_mut(task_rows * pairs)).for_each(convert);
    } else {
        input.chunks(task_rows * k).zip(target.chunks_mut(task_rows * pairs)).for_each(convert);
    }
    // SAFETY: the capacity is `len`, and every row of every chunk was converted into it.
    unsafe { converted.set_len(len) };
    converted
}

/// One input row times `scale` to bf16 pairs (the last pair's high half zero when the row's width is
/// odd); `out` holds `row.len().div_ceil(2)` words.
fn convert_row(row: &[f32], scale: f32, out: &mut [MaybeUninit<u32>]) {
    assert_eq!(out.len(), row.len().div_ceil(2));
    #[cfg(target_arch = "x86_64")]
    if Bf16::available() {
        // SAFETY: the CPU has the features `convert_row_avx512` is compiled for.
        return unsafe { convert_row_avx512(row, scale, out) };
    }
    convert_row_scalar(row, scale, out);
}

/// Two rows to bf16 pairs column by column: `out[c] = (low[c], high[c])`, `high` zero when absent.
fn convert_row_pair(low: &[f32], high: Option<&[f32]>, out: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    if Bf16::available() {
        // SAFETY: the CPU has the features `convert_row_pair_avx512` is compiled for.
        return unsafe { convert_row_pair_avx512(low, high, out) };
    }
    convert_row_pair_scalar(low, high, out);
}

fn convert_row_pair_scalar(low: &[f32], high: Option<&[f32]>, out: &mut [u32]) {
    for (c, word) in out.iter_mut().enumerate() {
        let upper = high.map_or(0, |high| bf16_bits(high[c]) as u32);
        *word = bf16_bits(low[c]) as u32 | (upper << 16);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512bf16,avx512f,avx512bw")]
fn convert_row_pair_avx512(low: &[f32], high: Option<&[f32]>, out: &mut [u32]) {
    use std::arch::x86_64::*;
    assert!(low.len() >= out.len() && high.is_none_or(|high| high.len() >= out.len()));
    let whole = out.len() / 16 * 16;
    for start in (0..whole).step_by(16) {
        // SAFETY: `start + 16 <= out.len()`, which both rows reach (asserted); unaligned loads and stores.
        unsafe {
            let widen = |values: __m512| {
                _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(values)))
            };
            let lower = widen(_mm512_loadu_ps(low.as_ptr().add(start)));
            let word = match high {
                Some(high) => {
                    _mm512_or_si512(lower, _mm512_slli_epi32(widen(_mm512_loadu_ps(high.as_ptr().add(start))), 16))
                }
                None => lower,
            };
            _mm512_storeu_si512(out.as_mut_ptr().add(start).cast(), word);
        }
    }
    convert_row_pair_scalar(&low[whole..], high.map(|high| &high[whole..]), &mut out[whole..]);
}

fn convert_row_scalar(row: &[f32], scale: f32, out: &mut [MaybeUninit<u32>]) {
    for (pair, word) in row.chunks(2).zip(out.iter_mut()) {
        let low = bf16_bits(pair[0] * scale) as u32;
        let high = pair.get(1).map_or(0, |x| bf16_bits(*x * scale) as u32);
        word.write(low | (high << 16));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512bf16,avx512f,avx512bw")]
fn convert_row_avx512(row: &[f32], scale: f32, out: &mut [MaybeUninit<u32>]) {
    use std::arch::x86_64::*;
    let whole = row.len() / 32 * 32;
    for (source, target) in row[..whole].chunks_exact(32).zip(out.chunks_exact_mut(16)) {
        // SAFETY: `source` holds 32 floats and `target` 16 words (64 bytes); unaligned loads and stores.
        unsafe {
            let scale = _mm512_set1_ps(scale);
            let low = _mm512_mul_ps(_mm512_loadu_ps(source.as_ptr()), scale);
            let high = _mm512_mul_ps(_mm512_loadu_ps(source.as_ptr().add(16)), scale);
            // The second argument fills the lower 16 elements: the row's order is kept.
            let converted = _mm512_cvtne2ps_pbh(high, low);
            _mm512_storeu_si512(target.as_mut_ptr().cast(), std::mem::transmute::<__m512bh, __m512i>(converted));
        }
    }
    convert_row_scalar(&row[whole..], scale, &mut out[whole / 2..]);
}

/// Stores a kernel's accumulators `sums` into the output tile `c` (rows at stride `c_stride`): added to
/// its values where `start` accumulates, the bias row added where it has one. A macro, so that it is
/// part of each kernel's body (a call would spill the 24 accumulators to the stack).
///
/// Safety (of the expansion): `c` reaches `MR` rows of `NR` floats at stride `c_stride`, `start.bias`
/// (unless null) `NR` floats; inside an `unsafe` block of an AVX-512F function.
#[cfg(target_arch = "x86_64")]
macro_rules! store_sums {
    ($sums:ident, $c:ident, $c_stride:ident, $start:ident) => {
        if !$start.bias.is_null() {
            let bias: [__m512; NR / 16] = std::array::from_fn(|v| _mm512_loadu_ps($start.bias.add(16 * v)));
            for sum in &mut $sums {
                sum.iter_mut().zip(&bias).for_each(|(lane, bias)| *lane = _mm512_add_ps(*lane, *bias));
            }
        }
        for (r, sum) in $sums.iter().enumerate() {
            for (v, lane) in sum.iter().enumerate() {
                let out = $c.add(r * $c_stride + 16 * v);
                let value = if $start.accumulate { _mm512_add_ps(_mm512_loadu_ps(out), *lane) } else { *lane };
                _mm512_storeu_ps(out, value);
            }
        }
    };
}
#[cfg(not(target_arch = "x86_64"))]
unsafe fn bf16_kernel(_: usize, _: InputTile<u32>, _: Words<u32>, _: *mut f32, _: usize, _: TileStart) {
    unreachable!("bf16 products are only offered on x86_64 with AVX512-BF16")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn f32_kernel(_: usize, _: InputTile<f32>, _: Words<f32>, _: *mut f32, _: usize, _: TileStart) {
    unreachable!("packed f32 products are only offered on x86_64 with AVX-512")
}

/// [`Format::kernel`] for [`Bf16`]: per pair of input columns, `MR` broadcasts of an input pair, each
/// `vdpbf16ps` into three 16-lane accumulators.
///
/// # Safety
/// The CPU has AVX512-BF16; the pointers reach the elements described.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512bf16,avx512f")]
unsafe fn bf16_kernel(depth: usize, a: InputTile<u32>, b: Words<u32>, c: *mut f32, c_stride: usize, start: TileStart) {
    use std::arch::x86_64::*;
    // SAFETY: in bounds by the caller's contract; unaligned loads and stores throughout.
    unsafe {
        let mut sums = [[_mm512_setzero_ps(); NR / 16]; MR];
        for pair in 0..depth {
            let row = b.start.add(pair * b.stride);
            let pairs = a.words.add(pair * a.word_stride);
            let columns: [__m512bh; NR / 16] =
                std::array::from_fn(|v| std::mem::transmute(_mm512_loadu_si512(row.add(16 * v).cast())));
            for (r, sum) in sums.iter_mut().enumerate() {
                let broadcast: __m512bh = std::mem::transmute(_mm512_set1_epi32(*pairs.add(r * a.row_stride) as i32));
                for (lane, column) in sum.iter_mut().zip(&columns) {
                    *lane = _mm512_dpbf16_ps(*lane, broadcast, *column);
                }
            }
        }
        store_sums!(sums, c, c_stride, start);
    }
}

/// [`Format::kernel`] for [`F32`]: per input column, `MR` broadcasts, each an FMA into three 16-lane
/// accumulators.
///
/// # Safety
/// The CPU has AVX-512F; the pointers reach the elements described.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn f32_kernel(depth: usize, a: InputTile<f32>, b: Words<f32>, c: *mut f32, c_stride: usize, start: TileStart) {
    use std::arch::x86_64::*;
    // SAFETY: in bounds by the caller's contract; unaligned loads and stores throughout.
    unsafe {
        let mut sums = [[_mm512_setzero_ps(); NR / 16]; MR];
        for index in 0..depth {
            let row = b.start.add(index * b.stride);
            let values = a.words.add(index * a.word_stride);
            let columns: [__m512; NR / 16] = std::array::from_fn(|v| _mm512_loadu_ps(row.add(16 * v)));
            for (r, sum) in sums.iter_mut().enumerate() {
                let broadcast = _mm512_set1_ps(*values.add(r * a.row_stride));
                for (lane, column) in sum.iter_mut().zip(&columns) {
                    *lane = _mm512_fmadd_ps(broadcast, *column, *lane);
                }
            }
        }
        store_sums!(sums, c, c_stride, start);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `x` through bf16 and back.
    fn rounded(x: f32) -> f32 {
        f32::from_bits((bf16_bits(x) as u32) << 16)
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(rounded(1.0), 1.0);
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0).
        assert_eq!(rounded(1.0 + 1.0 / 256.0), 1.0);
        // 1 + 3 * 2^-8 lies halfway between 1 + 2^-7 and 1 + 2^-6: to the even one, 1 + 2^-6.
        assert_eq!(rounded(1.0 + 3.0 / 256.0), 1.0 + 1.0 / 64.0);
        assert_eq!(rounded(-2.5), -2.5);
        assert!(rounded(f32::NAN).is_nan());
        assert_eq!(rounded(f32::INFINITY), f32::INFINITY);
    }

    #[test]
    fn the_vector_pair_conversion_matches_the_scalar_one() {
        if !Bf16::available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        let row = |seed: usize| -> Vec<f32> {
            (0..45).map(|i| ((i * 7919 + seed) % 1013) as f32 * 0.37 - 150.0 + 1.0 / (i + 1) as f32).collect()
        };
        let (low, high) = (row(1), row(2));
        for high in [Some(high.as_slice()), None] {
            let (mut vector, mut scalar) = (vec![0u32; 45], vec![0u32; 45]);
            convert_row_pair(&low, high, &mut vector);
            convert_row_pair_scalar(&low, high, &mut scalar);
            assert_eq!(vector, scalar);
        }
    }

    #[test]
    fn the_vector_conversion_matches_the_scalar_one() {
        if !Bf16::available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        let row: Vec<f32> = (0..77).map(|i| ((i * 7919) % 1013) as f32 * 0.37 - 150.0 + 1.0 / (i + 1) as f32).collect();
        let scalar: Vec<u32> = row
            .chunks(2)
            .map(|pair| bf16_bits(pair[0]) as u32 | (pair.get(1).map_or(0, |x| bf16_bits(*x) as u32) << 16))
            .collect();
        assert_eq!(converted_rows(&row, 77, false), scalar);
        let rows: Vec<f32> = row.iter().chain(&row).chain(&row).copied().collect();
        assert_eq!(converted_rows(&rows, 77, true), [&scalar[..], &scalar, &scalar].concat());
    }
}
