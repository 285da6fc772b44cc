//! QLoRA: a frozen base kept quantised in memory while LoRA adapters train.
//!
//! QLoRA (Dettmers et al., 2023) stores the frozen base weights in 4 bits and dequantises each one when
//! a layer runs; only the adapters are f32 and trainable. burn's own quantised tensors cannot do this
//! here: in burn 0.21 the autodiff backend leaves `dequantize`/`quantize_dynamic` as `todo!()`, and
//! burn-flex stores a quantised value as one `i8` anyway. So this module keeps the packed blocks on
//! the host itself:
//!
//! - [`QuantizedMatrix`]: a frozen `[out_features, in_features]` weight (PyTorch/GGUF row-major
//!   layout) in one of two formats: the blocks of a llama.cpp GGUF file exactly as read (`Q4_0`,
//!   `Q4_1`, `Q8_0`, `Q4_K`, ... whatever [`gguf::dequantize`] decodes), or NF4 as QLoRA and
//!   bitsandbytes define it for bases loaded from f32/bf16 safetensors. Blocks run along a row and
//!   never straddle two, so rows can be permuted (llama.cpp's RoPE layout) and decoded independently.
//! - [`QuantizedLinear`]: a burn module holding such a matrix as a non-parameter (optimisers and
//!   module visitors never see it; `valid()`, `fork` and `to_device` just clone the `Arc`'d bytes) plus
//!   the optional bias. Its forward pass dequantises the weight into a fresh tensor
//!   ([`Tensor::from_data`], an untracked constant under autodiff, so no gradient reaches it) and
//!   multiplies.
//! - [`WeightMemory`]: where a model's weight memory goes, dense parameters against quantised matrices.
//!
//! This module knows no model: the Llama side (quantising a model's frozen base, loading GGUF
//! projections quantised) is `Llama::quantize_frozen_base` and `Llama::from_gguf_quantized`.
//!
//! The trade is memory for time: every forward pass decodes every quantised projection it uses, in
//! parallel on rayon's threads. For SmolLM2-135M's 106M projection weights on 2 (shared) cores that is
//! about 0.1 s row-major and 0.25-0.3 s into the transposed layout that few-row inputs multiply faster
//! (see [`QuantizedLinear::forward`]); a 15-token forward pass takes about 0.45 s against 0.3 s with
//! the f32 base. The backward pass decodes nothing, but for a reason that limits the saving while
//! training: burn's autodiff `linear`/`matmul` keep their weight operand to form the input's gradient,
//! so within one training step the f32 copies of the projections it used stay alive from the forward
//! pass until the backward pass has consumed them. The 4-bit saving therefore holds between steps, for
//! evaluation and inference, and for everything the process keeps (optimiser state covers adapters
//! only), but not at the peak of a training step. Removing that peak needs a custom autodiff op that
//! saves the packed matrix and dequantises again in backward (what bitsandbytes' `MatMul4Bit` does);
//! burn 0.21 only allows that through a backend extension trait, which every generic `B: Backend` in
//! this crate would then have to carry.
//!
//! ```
//! use polarity_llama::quant::{NF4_BLOCK_SIZE, QuantizedMatrix};
//!
//! let values: Vec<f32> = (0..4 * 128).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
//! let matrix = QuantizedMatrix::quantize_nf4(&values, 4, 128).unwrap();
//! assert_eq!(matrix.dims(), [4, 128]);
//! // 4 bits per value plus one f32 scale per 64 values: 4.5 bits per weight.
//! assert_eq!(matrix.stored_bytes(), 4 * 128 / 2 + 4 * 128 / NF4_BLOCK_SIZE * 4);
//! let restored = matrix.dequantize();
//! assert!(values.iter().zip(&restored).all(|(a, b)| (a - b).abs() <= 0.16));
//! ```

use std::fmt;
use std::sync::Arc;

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::Linear;
use burn::prelude::*;
use polarity_kernels::FrozenMatrix;
use polarity_kernels::linear_with;
use rayon::prelude::*;

use crate::LlamaError;
use crate::gguf::{self, GgmlType, rope_unpermuted_row_order};
use crate::layers::random::RandomStream;

/// Values per NF4 block (bitsandbytes' default `blocksize` for 4-bit weights, as in QLoRA).
pub const NF4_BLOCK_SIZE: usize = 64;

/// The 16 NormalFloat4 values: quantiles of N(0, 1) rescaled to [-1, 1], with an exact zero
/// (QLoRA paper, appendix E; bitsandbytes' `get_4bit_type("nf4")`). Code `i` stands for
/// `NF4_CODEBOOK[i] * absmax` of its block.
// The digits are bitsandbytes' (float64) spelling, so the table can be checked against the source.
#[allow(clippy::excessive_precision)]
pub const NF4_CODEBOOK: [f32; 16] = [
    -1.0,
    -0.696_192_800_998_687_7,
    -0.525_073_051_452_636_7,
    -0.394_917_488_098_144_53,
    -0.284_441_381_692_886_35,
    -0.184_773_430_228_233_34,
    -0.091_050_036_251_544_95,
    0.0,
    0.079_580_299_556_255_34,
    0.160_930_201_411_247_25,
    0.246_112_301_945_686_34,
    0.337_915_241_718_292_24,
    0.440_709_829_330_444_34,
    0.562_617_003_917_694_1,
    0.722_956_836_223_602_3,
    1.0,
];

/// The midpoints between neighbouring codebook values: a normalised value above `NF4_THRESHOLDS[i]`
/// rounds to a code above `i` (bitsandbytes' `dQuantizeNF4` decision tree uses the same midpoints,
/// with ties going to the lower code).
const NF4_THRESHOLDS: [f32; 15] = {
    let mut thresholds = [0.0; 15];
    let mut i = 0;
    while i < 15 {
        thresholds[i] = (NF4_CODEBOOK[i] + NF4_CODEBOOK[i + 1]) / 2.0;
        i += 1;
    }
    thresholds
};

/// The largest NF4 rounding error relative to the block's absmax: half the widest codebook gap
/// (between -1 and -0.696). Every dequantised value is within `NF4_MAX_RELATIVE_ERROR * absmax` of
/// the original.
pub const NF4_MAX_RELATIVE_ERROR: f32 = (NF4_CODEBOOK[1] - NF4_CODEBOOK[0]) / 2.0;

/// Decoding is split into tasks of about this many values (small matrices stay on one thread).
const VALUES_PER_TASK: usize = 1 << 15;

/// From this many input rows on, a product by a quantised matrix ([`QuantizedLinear::forward`], also
/// under autodiff) decodes row-major and multiplies by a transposed view; below, it decodes straight
/// into the contiguous transposed layout.
const ROW_MAJOR_DECODE_MIN_ROWS: usize = 128;

/// A product by a quantised matrix ([`QuantizedLinear::forward`]) decodes at most this many values at
/// once (256 MB as f32): larger matrices are multiplied in bands of rows.
pub const MAX_DECODED_VALUES: usize = 1 << 26;

/// How a [`QuantizedMatrix`] stores its values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuantFormat {
    /// 4-bit NormalFloat: blocks of [`NF4_BLOCK_SIZE`] values, one f32 absmax scale per block, two
    /// codes per byte (the first value of a pair in the high nibble, as bitsandbytes packs them).
    Nf4,
    /// The blocks of a GGUF file, as stored there (see [`GgmlType`] for the layouts).
    Gguf(GgmlType),
}

impl QuantFormat {
    /// Values per block.
    pub fn block_len(self) -> usize {
        match self {
            QuantFormat::Nf4 => NF4_BLOCK_SIZE,
            QuantFormat::Gguf(ggml_type) => ggml_type.block_len(),
        }
    }
}

impl fmt::Display for QuantFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuantFormat::Nf4 => f.write_str("NF4"),
            QuantFormat::Gguf(ggml_type) => write!(f, "{ggml_type}"),
        }
    }
}

/// The packed data; `Arc`'d so that cloning a module (or `valid()`, `fork`) shares it.
#[derive(Clone)]
enum Storage {
    Nf4 {
        /// `rows * cols / 2` bytes, row-major, two codes per byte.
        codes: Arc<[u8]>,
        /// `rows * cols / 64` scales, row-major.
        absmax: Arc<[f32]>,
    },
    Gguf {
        ggml_type: GgmlType,
        /// `rows * cols / block_len` blocks of `block_bytes`, row-major.
        blocks: Arc<[u8]>,
    },
}

/// A frozen `[rows, cols]` = `[out_features, in_features]` weight matrix, quantised, on the host.
///
/// Rows are whole blocks: `cols` is a multiple of the format's block length, which is checked when the
/// matrix is built, so [`dequantize`](Self::dequantize) cannot fail afterwards.
#[derive(Clone)]
pub struct QuantizedMatrix {
    rows: usize,
    cols: usize,
    storage: Storage,
}

impl fmt::Debug for QuantizedMatrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuantizedMatrix")
            .field("format", &self.format())
            .field("dims", &self.dims())
            .field("stored_bytes", &self.stored_bytes())
            .finish()
    }
}

/// Checks that `[rows, cols]` in `format` is whole blocks per row; returns the element count.
fn check_block_shape(format: QuantFormat, rows: usize, cols: usize) -> Result<usize, LlamaError> {
    let block_size = format.block_len();
    if !cols.is_multiple_of(block_size) {
        return Err(LlamaError::QuantBlockSize { format: format.to_string(), rows, cols, block_size });
    }
    rows.checked_mul(cols).ok_or_else(|| {
        LlamaError::InvalidConfig(format!("a [{rows}, {cols}] matrix has more values than fit in memory"))
    })
}

/// The root mean square of the 16 NF4 values (about 0.517): the standard deviation of uniformly random
/// codes at scale 1, up to their small mean.
fn nf4_codebook_rms() -> f32 {
    (NF4_CODEBOOK.iter().map(|c| c * c).sum::<f32>() / NF4_CODEBOOK.len() as f32).sqrt()
}

/// The NF4 code of a value already divided by its block's absmax (so in [-1, 1]).
fn nf4_code(normalised: f32) -> u8 {
    // The number of midpoints strictly below the value is the index of the nearest codebook entry.
    NF4_THRESHOLDS.partition_point(|&threshold| normalised > threshold) as u8
}

/// Writes into a slice through [`Extend`], so [`gguf::decode_blocks`] can fill part of a larger buffer.
struct SliceSink<'a> {
    out: &'a mut [f32],
    len: usize,
}

impl Extend<f32> for SliceSink<'_> {
    fn extend<I: IntoIterator<Item = f32>>(&mut self, values: I) {
        let free = self.out.get_mut(self.len..).unwrap_or_default();
        let mut written = 0;
        for (slot, value) in free.iter_mut().zip(values) {
            *slot = value;
            written += 1;
        }
        self.len += written;
    }
}

impl QuantizedMatrix {
    /// Quantises a row-major `[rows, cols]` matrix to NF4 as bitsandbytes does (without QLoRA's
    /// "double quantisation" of the scales, so 4.5 bits per weight): each block of 64 consecutive
    /// values keeps its absolute maximum as an f32 scale, and each value becomes the nearest of the 16
    /// [`NF4_CODEBOOK`] entries after division by that scale. An all-zero block has scale 0 and
    /// dequantises to zeros.
    ///
    /// Errors: `cols` not a multiple of 64, `values.len() != rows * cols`, or a NaN/infinite value.
    pub fn quantize_nf4(values: &[f32], rows: usize, cols: usize) -> Result<Self, LlamaError> {
        let len = check_block_shape(QuantFormat::Nf4, rows, cols)?;
        if values.len() != len {
            return Err(LlamaError::QuantDataLength {
                format: "NF4".into(),
                rows,
                cols,
                unit: "values",
                expected: len,
                found: values.len(),
            });
        }
        if let Some((index, &value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(LlamaError::QuantNonFinite { index, value });
        }
        let mut codes = vec![0u8; len / 2];
        let mut absmax = vec![0f32; len / NF4_BLOCK_SIZE];
        codes
            .par_chunks_mut(NF4_BLOCK_SIZE / 2)
            .zip(absmax.par_iter_mut())
            .zip(values.par_chunks(NF4_BLOCK_SIZE))
            .with_min_len(VALUES_PER_TASK / NF4_BLOCK_SIZE)
            .for_each(|((codes, absmax), block)| {
                let max = block.iter().fold(0f32, |max, v| max.max(v.abs()));
                *absmax = max;
                // bitsandbytes multiplies by the reciprocal of the scale.
                let inverse = if max > 0.0 { 1.0 / max } else { 0.0 };
                for (byte, pair) in codes.iter_mut().zip(block.chunks_exact(2)) {
                    *byte = (nf4_code(pair[0] * inverse) << 4) | nf4_code(pair[1] * inverse);
                }
            });
        Ok(Self { rows, cols, storage: Storage::Nf4 { codes: codes.into(), absmax: absmax.into() } })
    }

    /// An NF4 matrix from its parts, as [`packed_bytes`](Self::packed_bytes) and
    /// [`nf4_absmax`](Self::nf4_absmax) return them: `rows * cols / 2` bytes of codes (two per byte,
    /// the first value of a pair in the high nibble) and `rows * cols / 64` block scales, row-major.
    /// Value `j` of block `b` is `NF4_CODEBOOK[code] * absmax[b]`.
    ///
    /// Errors: `cols` not a multiple of 64 ([`LlamaError::QuantBlockSize`]), a wrong number of codes or
    /// scales ([`LlamaError::QuantDataLength`]), or a scale that is negative, NaN or infinite
    /// ([`LlamaError::QuantInvalidScale`]).
    pub fn from_nf4_parts(
        codes: impl Into<Arc<[u8]>>,
        absmax: impl Into<Arc<[f32]>>,
        rows: usize,
        cols: usize,
    ) -> Result<Self, LlamaError> {
        let len = check_block_shape(QuantFormat::Nf4, rows, cols)?;
        let (codes, absmax) = (codes.into(), absmax.into());
        let length_error = |unit, expected, found| LlamaError::QuantDataLength {
            format: "NF4".into(),
            rows,
            cols,
            unit,
            expected,
            found,
        };
        if codes.len() != len / 2 {
            return Err(length_error("code bytes", len / 2, codes.len()));
        }
        if absmax.len() != len / NF4_BLOCK_SIZE {
            return Err(length_error("absmax scales", len / NF4_BLOCK_SIZE, absmax.len()));
        }
        if let Some((block, &value)) = absmax.iter().enumerate().find(|(_, v)| !(v.is_finite() && **v >= 0.0)) {
            return Err(LlamaError::QuantInvalidScale { block, value });
        }
        Ok(Self { rows, cols, storage: Storage::Nf4 { codes, absmax } })
    }

    /// A random `[rows, cols]` NF4 matrix drawn directly in its 4-bit form, never as f32: uniformly
    /// random codes (NF4's 16 values are the quantiles of a normal distribution, so uniform codes are
    /// what normally distributed weights quantise to) and every block scale
    /// `std / sqrt(mean(NF4_CODEBOOK²))`, so the values have standard deviation `std` (and a mean of
    /// `0.045 * std`: the codebook has 8 positive values and 7 negative ones). Deterministic for
    /// `stream`, drawn in parallel: about 0.1 s per 100 million values on 2 cores.
    ///
    /// This is for measuring speed and memory at a model's real shape without its weights; such
    /// a matrix holds no knowledge.
    ///
    /// Errors: `cols` not a multiple of 64, or `std` negative, NaN or infinite.
    pub fn random_nf4(rows: usize, cols: usize, std: f32, stream: &RandomStream) -> Result<Self, LlamaError> {
        let len = check_block_shape(QuantFormat::Nf4, rows, cols)?;
        let scale = std / nf4_codebook_rms();
        if !(scale.is_finite() && scale >= 0.0) {
            return Err(LlamaError::QuantInvalidScale { block: 0, value: scale });
        }
        let mut codes = vec![0u8; len / 2];
        stream.fill_bytes(&mut codes);
        Self::from_nf4_parts(codes, vec![scale; len / NF4_BLOCK_SIZE], rows, cols)
    }

    /// Keeps `bytes`, the data of a row-major `[rows, cols]` GGUF tensor of type `ggml_type` (GGUF
    /// `dims = [cols, rows]`), as it is in the file.
    ///
    /// Errors: a type [`gguf::dequantize`] cannot decode ([`LlamaError::GgufUnsupportedTensorType`],
    /// with an empty tensor name for the caller to fill in), rows that are not whole blocks, or a byte
    /// count that does not match the shape.
    pub fn from_gguf_blocks(ggml_type: GgmlType, bytes: &[u8], rows: usize, cols: usize) -> Result<Self, LlamaError> {
        if !ggml_type.can_dequantize() {
            return Err(LlamaError::GgufUnsupportedTensorType {
                tensor: String::new(),
                ggml_type: ggml_type.name().to_string(),
            });
        }
        let format = QuantFormat::Gguf(ggml_type);
        let len = check_block_shape(format, rows, cols)?;
        let expected = (len / ggml_type.block_len()).saturating_mul(ggml_type.block_bytes());
        if bytes.len() != expected {
            return Err(LlamaError::QuantDataLength {
                format: format.to_string(),
                rows,
                cols,
                unit: "bytes",
                expected,
                found: bytes.len(),
            });
        }
        Ok(Self { rows, cols, storage: Storage::Gguf { ggml_type, blocks: bytes.into() } })
    }

    /// `[rows, cols]` = `[out_features, in_features]`.
    pub fn dims(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    /// The storage format.
    pub fn format(&self) -> QuantFormat {
        match &self.storage {
            Storage::Nf4 { .. } => QuantFormat::Nf4,
            Storage::Gguf { ggml_type, .. } => QuantFormat::Gguf(*ggml_type),
        }
    }

    /// The bytes held: packed codes or blocks, plus NF4's scales.
    pub fn stored_bytes(&self) -> usize {
        match &self.storage {
            Storage::Nf4 { codes, absmax } => codes.len() + std::mem::size_of_val::<[f32]>(absmax),
            Storage::Gguf { blocks, .. } => blocks.len(),
        }
    }

    /// The bytes the same matrix takes as dense f32.
    pub fn dense_f32_bytes(&self) -> usize {
        self.rows * self.cols * std::mem::size_of::<f32>()
    }

    /// Stored bits per weight (4.5 for NF4, 5 for Q4_1, 4.5 for Q4_0, 8.5 for Q8_0).
    pub fn bits_per_weight(&self) -> f64 {
        let values = self.rows * self.cols;
        if values == 0 { 0.0 } else { self.stored_bytes() as f64 * 8.0 / values as f64 }
    }

    /// The packed data: NF4 codes (two per byte, first value in the high nibble) or the GGUF blocks.
    pub fn packed_bytes(&self) -> &[u8] {
        match &self.storage {
            Storage::Nf4 { codes, .. } => codes,
            Storage::Gguf { blocks, .. } => blocks,
        }
    }

    /// NF4's per-block absmax scales, row-major (`None` for GGUF blocks, whose scales are inside them).
    pub fn nf4_absmax(&self) -> Option<&[f32]> {
        match &self.storage {
            Storage::Nf4 { absmax, .. } => Some(absmax),
            Storage::Gguf { .. } => None,
        }
    }

    /// Bytes of packed data per row (codes or blocks; NF4 scales are counted separately).
    fn packed_row_bytes(&self) -> usize {
        match &self.storage {
            Storage::Nf4 { .. } => self.cols / 2,
            Storage::Gguf { ggml_type, .. } => self.cols / ggml_type.block_len() * ggml_type.block_bytes(),
        }
    }

    /// The values as dense f32, row-major `[rows, cols]`, decoded in parallel (rayon, whole rows per
    /// task). Cannot fail: the format and sizes were checked when the matrix was built.
    pub fn dequantize(&self) -> Vec<f32> {
        self.decode_rows(0, self.rows)
    }

    /// Rows `first..first + rows` as dense f32, row-major `[rows, cols]` (the caller keeps the range
    /// inside the matrix).
    fn decode_rows(&self, first: usize, rows: usize) -> Vec<f32> {
        let mut out = vec![0f32; rows * self.cols];
        if out.is_empty() {
            return out;
        }
        let rows_per_task = (VALUES_PER_TASK / self.cols).max(1);
        out.par_chunks_mut(self.cols)
            .enumerate()
            .with_min_len(rows_per_task)
            .for_each(|(row, out)| self.decode_span(first + row, 0, out));
        out
    }

    /// Rows `rows` of the matrix, decoded one after the other (`rows.len() * cols` values, row-major):
    /// a table lookup that decodes nothing else. A row index outside the matrix gives a row of NaN,
    /// which no weight can be, so the mistake shows in every result computed from it.
    pub fn dequantize_rows(&self, rows: &[usize]) -> Vec<f32> {
        let mut out = vec![0f32; rows.len() * self.cols];
        if out.is_empty() {
            return out;
        }
        let rows_per_task = (VALUES_PER_TASK / self.cols).max(1);
        out.par_chunks_mut(self.cols).zip(rows.par_iter()).with_min_len(rows_per_task).for_each(|(out, &row)| {
            if row < self.rows {
                self.decode_span(row, 0, out);
            } else {
                out.fill(f32::NAN);
            }
        });
        out
    }

    /// The values transposed, row-major `[cols, rows]`: burn's `[d_input, d_output]` layout of a
    /// linear weight, contiguous. Bands of 64 columns are decoded in parallel; within a band, tiles of
    /// 128 rows are decoded and written out column by column. About 2.5 times the time of
    /// [`dequantize`](Self::dequantize) (1.3 ms against 0.5 ms for a 1536 x 576 matrix on 2 cores).
    pub fn dequantize_transposed(&self) -> Vec<f32> {
        self.decode_rows_transposed(0, self.rows)
    }

    /// Rows `first..first + rows` transposed, row-major `[cols, rows]` (the caller keeps the range
    /// inside the matrix).
    fn decode_rows_transposed(&self, first: usize, rows: usize) -> Vec<f32> {
        const TILE_ROWS: usize = 128;
        let cols = self.cols;
        let mut out = vec![0f32; rows * cols];
        if out.is_empty() {
            return out;
        }
        // Columns per task: whole blocks, at least 64.
        let block = self.format().block_len();
        let band = 64usize.div_ceil(block) * block;
        out.par_chunks_mut(band * rows).enumerate().for_each(|(task, out)| {
            let col = task * band;
            let width = out.len() / rows;
            let mut tile = vec![0f32; TILE_ROWS * width];
            for row in (0..rows).step_by(TILE_ROWS) {
                let height = TILE_ROWS.min(rows - row);
                for (i, tile_row) in tile.chunks_exact_mut(width).take(height).enumerate() {
                    self.decode_span(first + row + i, col, tile_row);
                }
                for (j, column) in out.chunks_exact_mut(rows).enumerate() {
                    for (value, &decoded) in column[row..row + height].iter_mut().zip(tile[j..].iter().step_by(width)) {
                        *value = decoded;
                    }
                }
            }
        });
        out
    }

    /// Decodes `out.len()` values of row `row` from column `col` on; both are whole blocks (callers
    /// split rows at block boundaries).
    fn decode_span(&self, row: usize, col: usize, out: &mut [f32]) {
        let start = row * self.cols + col;
        let end = start + out.len();
        match &self.storage {
            Storage::Nf4 { codes, absmax } => {
                let codes = &codes[start / 2..end / 2];
                let scales = &absmax[start / NF4_BLOCK_SIZE..end / NF4_BLOCK_SIZE];
                let blocks = out.chunks_exact_mut(NF4_BLOCK_SIZE).zip(codes.chunks_exact(NF4_BLOCK_SIZE / 2));
                for ((out, codes), &scale) in blocks.zip(scales) {
                    for (pair, &byte) in out.chunks_exact_mut(2).zip(codes) {
                        pair[0] = NF4_CODEBOOK[usize::from(byte >> 4)] * scale;
                        pair[1] = NF4_CODEBOOK[usize::from(byte & 0x0f)] * scale;
                    }
                }
            }
            Storage::Gguf { ggml_type, blocks } => {
                let (block_len, block_bytes) = (ggml_type.block_len(), ggml_type.block_bytes());
                let bytes = &blocks[start / block_len * block_bytes..end / block_len * block_bytes];
                let mut sink = SliceSink { out, len: 0 };
                // Unreachable: the type was checked with `can_dequantize` at construction.
                if gguf::decode_blocks(*ggml_type, bytes, &mut sink).is_err() {
                    sink.out.fill(f32::NAN);
                }
            }
        }
    }

    /// The matrix with row `r` taken from row `order[r]`; `order` must be a permutation of `0..rows`.
    /// Moves bytes only: every row is whole blocks.
    fn permute_rows(&self, order: &[usize]) -> Self {
        let permute = |data: &[u8], row_len: usize| -> Arc<[u8]> {
            order.iter().flat_map(|&source| &data[source * row_len..(source + 1) * row_len]).copied().collect()
        };
        let storage = match &self.storage {
            Storage::Nf4 { codes, absmax } => {
                let scales_per_row = self.cols / NF4_BLOCK_SIZE;
                let absmax = order
                    .iter()
                    .flat_map(|&source| &absmax[source * scales_per_row..(source + 1) * scales_per_row])
                    .copied()
                    .collect();
                Storage::Nf4 { codes: permute(codes, self.cols / 2), absmax }
            }
            Storage::Gguf { ggml_type, blocks } => {
                Storage::Gguf { ggml_type: *ggml_type, blocks: permute(blocks, self.packed_row_bytes()) }
            }
        };
        Self { rows: self.rows, cols: self.cols, storage }
    }

    /// Reverses llama.cpp's RoPE row permutation of a `q_proj`/`k_proj` weight (see
    /// [`gguf::unpermute_rope_rows`]) on the packed bytes, so the blocks stay quantised: `heads` is
    /// the number of query heads for `q_proj`, of key/value heads for `k_proj`.
    pub fn unpermute_rope_rows(&self, heads: usize) -> Result<Self, LlamaError> {
        Ok(self.permute_rows(&rope_unpermuted_row_order(self.rows, heads)?))
    }
}

/// A frozen linear layer whose weight is a [`QuantizedMatrix`]: `y = x Wᵀ + b`, with `W` dequantised
/// on every call.
///
/// The matrix is a `#[module(skip)]` field: it has no [`Param`], so optimisers, gradient maps,
/// burn-store snapshots and records never see it (its record is empty), and `valid()`, `fork` and
/// `to_device` carry it over unchanged (a cheap `Arc` clone). The dequantised weight is created on the
/// input's device. The bias, if any, stays an ordinary (f32) parameter.
#[derive(Module, Debug)]
pub struct QuantizedLinear<B: Backend> {
    /// The frozen `[out_features, in_features]` weight.
    #[module(skip)]
    pub matrix: QuantizedMatrix,
    /// `[out_features]`, if the layer has a bias.
    pub bias: Option<Param<Tensor<B, 1>>>,
}

impl<B: Backend> QuantizedLinear<B> {
    /// A layer from a matrix and an optional bias of `out_features` values.
    pub fn new(matrix: QuantizedMatrix, bias: Option<Param<Tensor<B, 1>>>) -> Result<Self, LlamaError> {
        let [rows, _] = matrix.dims();
        if let Some(bias) = &bias
            && bias.lazy_shape().dims::<1>() != [rows]
        {
            return Err(LlamaError::InvalidConfig(format!(
                "bias of shape {:?} for a quantised matrix with {rows} output features",
                bias.lazy_shape().dims::<1>()
            )));
        }
        Ok(Self { matrix, bias })
    }

    /// Quantises a dense layer's weight to NF4 (see [`QuantizedMatrix::quantize_nf4`]); the bias is
    /// kept as it is, frozen (no gradient).
    pub fn quantize_nf4(layer: Linear<B>) -> Result<Self, LlamaError> {
        let [d_input, d_output] = layer.weight.lazy_shape().dims();
        // burn stores [in, out]; the matrix is PyTorch's [out, in].
        let data = layer.weight.val().transpose().into_data().convert::<f32>();
        let values = data
            .into_vec::<f32>()
            .map_err(|e| LlamaError::Unsupported(format!("reading a linear weight as f32: {e:?}")))?;
        let matrix = QuantizedMatrix::quantize_nf4(&values, d_output, d_input)?;
        Self::new(matrix, layer.bias.map(|bias| bias.set_require_grad(false)))
    }

    /// `[d_input, d_output]`, like burn's [`Linear`] weight.
    pub fn dims(&self) -> [usize; 2] {
        let [rows, cols] = self.matrix.dims();
        [cols, rows]
    }

    /// The dequantised weight on `device` in burn's `[d_input, d_output]` layout, contiguous (see
    /// [`QuantizedMatrix::dequantize_transposed`]). A constant: it does not require gradients.
    pub fn dequantized_weight(&self, device: &B::Device) -> Tensor<B, 2> {
        Tensor::from_data(TensorData::new(self.matrix.dequantize_transposed(), self.dims()), device)
    }

    /// `[..., d_input] -> [..., d_output]`.
    ///
    /// The weight layout follows the number of input rows. burn-flex multiplies a few rows by a
    /// transposed view of the row-major matrix several times slower than by a contiguous
    /// `[d_input, d_output]` one (4.5 ms against 1.2 ms for 15 rows through a 576 -> 1536 projection),
    /// which costs more than decoding straight into that layout; from a few hundred rows on, both
    /// layouts multiply equally fast and the cheaper row-major decoding wins. The view then enters a
    /// 2-D product (the input is flattened), since burn's `linear` would reshape the weight to the
    /// input's rank, which copies a non-contiguous tensor.
    ///
    /// A matrix of more than [`MAX_DECODED_VALUES`] values (an LM head over a large vocabulary: Llama
    /// 3's is 525 million) is multiplied in bands of output rows, each decoded, multiplied and dropped
    /// in turn (and decoded again in the backward pass), and the bands' outputs concatenated: the f32
    /// temporary stays at most 256 MB instead of the whole matrix (2.1 GB for Llama 3's head).
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let bias = self.bias.as_ref().map(Param::val);
        let mut dims = x.dims();
        let rows = dims[..D - 1].iter().product::<usize>();
        let [d_input, d_output] = self.dims();
        dims[D - 1] = d_output;
        let x = x.reshape([rows, d_input]);
        let bands = self.matrix.row_bands();
        let output = if bands.len() <= 1 {
            band_product(x, RowBand { matrix: self.matrix.clone(), first: 0, rows: d_output }, bias)
        } else {
            let products = bands.into_iter().map(|band| band_product(x.clone(), band, None)).collect();
            let product = Tensor::cat(products, 1);
            match bias {
                Some(bias) => product + bias.unsqueeze(),
                None => product,
            }
        };
        output.reshape(dims)
    }

    /// A dense copy (dequantised weight, same bias), frozen.
    pub fn to_linear(&self, device: &B::Device) -> Linear<B> {
        Linear {
            weight: Param::from_tensor(self.dequantized_weight(device)).set_require_grad(false),
            bias: self.bias.clone(),
        }
    }
}

/// `x Mᵀ + bias` for a band of rows `M` of a quantised matrix (`[rows, cols]` -> `[rows, band rows]`).
fn band_product<B: Backend>(x: Tensor<B, 2>, band: RowBand, bias: Option<Tensor<B, 1>>) -> Tensor<B, 2> {
    let (device, input_rows) = (x.device(), x.dims()[0]);
    let band = Arc::new(band);
    // Training on the CPU default: the decoded weight is not kept by the autodiff graph (see
    // `polarity_kernels::frozen_linear`), so the base stays quantised between forward and backward.
    let x = match polarity_kernels::frozen_linear(x, band.clone()) {
        Ok(product) => {
            return match bias {
                Some(bias) => product + bias.unsqueeze(),
                None => product,
            };
        }
        Err(x) => x,
    };
    let [band_rows, cols] = FrozenMatrix::dims(band.as_ref());
    let weight = if band.prefers_transposed(input_rows) {
        Tensor::from_data(TensorData::new(band.decode_transposed(), [cols, band_rows]), &device)
    } else {
        Tensor::<B, 2>::from_data(TensorData::new(band.decode(), [band_rows, cols]), &device).transpose()
    };
    linear_with(x, weight, bias)
}

/// Rows `first..first + rows` of a quantised matrix, decoded on their own: one band of a product with
/// a matrix too large to decode at once (see [`QuantizedLinear::forward`]).
#[derive(Clone, Debug)]
struct RowBand {
    matrix: QuantizedMatrix,
    first: usize,
    rows: usize,
}

impl QuantizedMatrix {
    /// The bands of rows a product decodes one at a time: whole rows of at most
    /// [`MAX_DECODED_VALUES`] values together (one band for most matrices).
    fn row_bands(&self) -> Vec<RowBand> {
        let per_band = (MAX_DECODED_VALUES / self.cols.max(1)).max(1);
        (0..self.rows)
            .step_by(per_band)
            .map(|first| RowBand { matrix: self.clone(), first, rows: per_band.min(self.rows - first) })
            .collect()
    }
}

impl FrozenMatrix for RowBand {
    fn dims(&self) -> [usize; 2] {
        [self.rows, self.matrix.cols]
    }

    fn decode(&self) -> Vec<f32> {
        self.matrix.decode_rows(self.first, self.rows)
    }

    fn decode_transposed(&self) -> Vec<f32> {
        self.matrix.decode_rows_transposed(self.first, self.rows)
    }

    fn prefers_transposed(&self, input_rows: usize) -> bool {
        input_rows < ROW_MAJOR_DECODE_MIN_ROWS
    }
}

impl FrozenMatrix for QuantizedMatrix {
    fn dims(&self) -> [usize; 2] {
        QuantizedMatrix::dims(self)
    }

    fn decode(&self) -> Vec<f32> {
        self.dequantize()
    }

    fn decode_transposed(&self) -> Vec<f32> {
        self.dequantize_transposed()
    }

    fn prefers_transposed(&self, input_rows: usize) -> bool {
        input_rows < ROW_MAJOR_DECODE_MIN_ROWS
    }
}

/// Where a model's weight memory goes: dense parameters and quantised matrices.
///
/// ```text
/// base: {quantized_bytes} quantized vs {quantized_f32_bytes} f32, {saved_bytes()} saved
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WeightMemory {
    /// Bytes of the dense parameters (embeddings not quantised, norms, `lm_head`, projections not
    /// quantised, biases, LoRA adapters), at their dtype.
    pub dense_bytes: usize,
    /// The number of dense parameter values.
    pub dense_params: usize,
    /// Bytes held by quantised matrices (projections, and a quantised embedding table; packed blocks
    /// and scales).
    pub quantized_bytes: usize,
    /// What the quantised matrices would take as dense f32.
    pub quantized_f32_bytes: usize,
    /// The number of quantised matrices.
    pub quantized_matrices: usize,
}

impl WeightMemory {
    /// Everything held: dense plus quantised bytes.
    pub fn total_bytes(&self) -> usize {
        self.dense_bytes + self.quantized_bytes
    }

    /// What the same weights would take with every quantised matrix dense in f32.
    pub fn f32_equivalent_bytes(&self) -> usize {
        self.dense_bytes + self.quantized_f32_bytes
    }

    /// Every weight, dense or quantised: the model's parameter count (a quantised matrix counts its
    /// values, not its bytes).
    pub fn parameters(&self) -> usize {
        self.dense_params + self.quantized_f32_bytes / std::mem::size_of::<f32>()
    }

    /// Bytes saved by quantisation.
    pub fn saved_bytes(&self) -> usize {
        self.quantized_f32_bytes.saturating_sub(self.quantized_bytes)
    }

    /// Stored bits per quantised weight (0 when nothing is quantised).
    pub fn quantized_bits_per_weight(&self) -> f64 {
        let weights = self.quantized_f32_bytes / std::mem::size_of::<f32>();
        if weights == 0 { 0.0 } else { self.quantized_bytes as f64 * 8.0 / weights as f64 }
    }
}

impl fmt::Display for WeightMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mb = |bytes: usize| bytes as f64 / 1e6;
        write!(
            f,
            "base: {:.1} MB quantized vs {:.1} MB f32, {:.1} MB saved ({:.2} bits/weight); dense parameters {:.1} MB; total {:.1} MB",
            mb(self.quantized_bytes),
            mb(self.quantized_f32_bytes),
            mb(self.saved_bytes()),
            self.quantized_bits_per_weight(),
            mb(self.dense_bytes),
            mb(self.total_bytes()),
        )
    }
}

impl WeightMemory {
    /// The dense parameters of `module`, counted at their shape without drawing lazily initialised ones
    /// (quantised matrices are not parameters: add them with [`add_quantized`](Self::add_quantized)).
    pub fn of_dense_params<B: Backend, M: Module<B>>(module: &M) -> Self {
        let mut dense = DenseBytes::default();
        module.visit(&mut dense);
        WeightMemory { dense_bytes: dense.bytes, dense_params: dense.params, ..Default::default() }
    }

    /// Counts one quantised matrix.
    pub fn add_quantized(&mut self, matrix: &QuantizedMatrix) {
        self.quantized_bytes += matrix.stored_bytes();
        self.quantized_f32_bytes += matrix.dense_f32_bytes();
        self.quantized_matrices += 1;
    }
}

/// Sums the dense parameters of a module without materialising lazily initialised ones.
#[derive(Default)]
struct DenseBytes {
    bytes: usize,
    params: usize,
}

impl<B: Backend> ModuleVisitor<B> for DenseBytes {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let values = param.lazy_shape().num_elements();
        let element_bytes =
            if param.is_initialized() { param.val().dtype().size() } else { std::mem::size_of::<B::FloatElem>() };
        self.params += values;
        self.bytes += values * element_bytes;
    }
}
