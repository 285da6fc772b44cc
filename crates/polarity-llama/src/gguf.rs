//! A reader for llama.cpp's GGUF files (versions 2 and 3) and the dequantisation of their tensors.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! "GGUF" | version u32 | tensor_count u64 | metadata_kv_count u64
//! metadata_kv_count × (key: string, value_type u32, value)
//! tensor_count × (name: string, n_dims u32, dims u64 × n_dims, ggml_type u32, offset u64)
//! padding to `general.alignment` (default 32)
//! tensor data; each tensor at data_start + offset (a multiple of the alignment)
//! ```
//!
//! Strings are a u64 byte length and UTF-8 bytes; arrays are an element type u32, a u64 count and the
//! elements. `dims[0]` varies fastest, so the row-major shape is `dims` reversed: a linear weight
//! stored as `dims = [in, out]` is the `[out, in]` matrix PyTorch uses.
//!
//! Every count, size and offset read from the file is checked before anything is allocated for it: a
//! truncated or corrupt file is a [`LlamaError`] naming the file (and the key or tensor), never a panic
//! or an oversized allocation. The bounds, each far above what real models use:
//!
//! | what | bound | real files |
//! |---|---|---|
//! | metadata entries | [`MAX_METADATA_ENTRIES`] (65,536), and the bytes left | about 40 |
//! | tensors | [`MAX_TENSORS`] (65,536), and the bytes left | 272 (SmolLM2-135M), about 1,140 (Llama 3.1 405B) |
//! | key and tensor-name length | [`MAX_NAME_LEN`] (65,536 bytes) | under 64 (llama.cpp's `GGML_MAX_NAME`) |
//! | array elements, all arrays together | [`MAX_ARRAY_ELEMENTS`] (2^24) | about 540,000 (Llama 3's vocabulary) |
//! | one array's length | the bytes left / its element's smallest size | |
//! | array nesting | 8 levels | 1 |
//! | tensor rank | 1 to 4 | 1 or 2 |
//! | tensor size | product of dims overflow-checked; data inside the file | |
//!
//! Strings are bounded by the bytes left in the file, so the header can never claim more memory than
//! the file holds (plus 32 bytes of bookkeeping per array element, which the element budget bounds).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::{bf16, f16};

use crate::LlamaError;

/// The alignment of tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// Arrays may nest; deeper nesting than this is treated as corruption rather than recursed into.
const MAX_ARRAY_DEPTH: usize = 8;

/// The most metadata entries a file may declare (real files have a few dozen).
pub const MAX_METADATA_ENTRIES: u64 = 1 << 16;

/// The most tensors a file may declare (Llama 3.1 405B has about 1,140).
pub const MAX_TENSORS: u64 = 1 << 16;

/// The longest metadata key or tensor name, in bytes (llama.cpp limits tensor names to 64).
pub const MAX_NAME_LEN: u64 = 1 << 16;

/// The most array elements in a file's metadata, all arrays and nesting levels together. Each parsed
/// element costs a [`GgufValue`] (32 bytes), so this bounds what the header can make the reader hold to
/// 512 MiB beyond the file itself; Llama 3's vocabulary (tokens, types, merges) is about 540,000.
pub const MAX_ARRAY_ELEMENTS: u64 = 1 << 24;

/// The fewest bytes an entry of the tensor table takes: name length, rank, one dimension, type, offset.
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 8 + 4 + 8;

/// The fewest bytes a metadata entry takes: key length, value type, a one-byte value.
const MIN_METADATA_ENTRY_BYTES: u64 = 8 + 4 + 1;

/// ggml tensors have at most four dimensions.
const MAX_DIMS: u32 = 4;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    /// Type 0.
    U8(u8),
    /// Type 1.
    I8(i8),
    /// Type 2.
    U16(u16),
    /// Type 3.
    I16(i16),
    /// Type 4.
    U32(u32),
    /// Type 5.
    I32(i32),
    /// Type 6.
    F32(f32),
    /// Type 7.
    Bool(bool),
    /// Type 8.
    String(String),
    /// Type 9: elements of one type (possibly arrays themselves).
    Array(Vec<GgufValue>),
    /// Type 10.
    U64(u64),
    /// Type 11.
    I64(i64),
    /// Type 12.
    F64(f64),
}

impl GgufValue {
    /// The GGUF name of the value's type (`u32`, `string`, `array`, ...).
    pub fn type_name(&self) -> &'static str {
        match self {
            GgufValue::U8(_) => "u8",
            GgufValue::I8(_) => "i8",
            GgufValue::U16(_) => "u16",
            GgufValue::I16(_) => "i16",
            GgufValue::U32(_) => "u32",
            GgufValue::I32(_) => "i32",
            GgufValue::F32(_) => "f32",
            GgufValue::Bool(_) => "bool",
            GgufValue::String(_) => "string",
            GgufValue::Array(_) => "array",
            GgufValue::U64(_) => "u64",
            GgufValue::I64(_) => "i64",
            GgufValue::F64(_) => "f64",
        }
    }

    /// Any integer type holding a non-negative value.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer type.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => i64::try_from(v).ok(),
            GgufValue::I8(v) => Some(v.into()),
            GgufValue::I16(v) => Some(v.into()),
            GgufValue::I32(v) => Some(v.into()),
            GgufValue::I64(v) => Some(v),
            _ => None,
        }
    }

    /// `f32` or `f64`.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            _ => None,
        }
    }

    /// A string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// A boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// An array's elements.
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(values) => Some(values),
            _ => None,
        }
    }
}

/// The ggml tensor types whose block layout is known. Ids follow `enum ggml_type` in ggml.h.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// 32 values: f16 scale `d`, 16 bytes of 4-bit values; `x = (q - 8) * d`.
    Q4_0,
    /// 32 values: f16 `d`, f16 minimum `m`, 16 bytes of 4-bit values; `x = q * d + m`.
    Q4_1,
    /// 32 values: f16 `d`, 32 high bits, 16 bytes of low nibbles; `x = (q - 16) * d`.
    Q5_0,
    /// 32 values: f16 `d`, f16 `m`, 32 high bits, 16 bytes of low nibbles; `x = q * d + m`.
    Q5_1,
    /// 32 values: f16 `d`, 32 signed bytes; `x = q * d`.
    Q8_0,
    /// 32 values: f32 `d`, f32 sum, 32 signed bytes (an activation format).
    Q8_1,
    /// k-quant, 256 values per super-block.
    Q2_K,
    /// k-quant, 256 values per super-block.
    Q3_K,
    /// k-quant, 256 values per super-block.
    Q4_K,
    /// k-quant, 256 values per super-block.
    Q5_K,
    /// k-quant, 256 values per super-block.
    Q6_K,
    /// k-quant, 256 values per super-block (an activation format).
    Q8_K,
    /// 8-bit integer.
    I8,
    /// 16-bit integer.
    I16,
    /// 32-bit integer.
    I32,
    /// 64-bit integer.
    I64,
    /// 64-bit float.
    F64,
    /// bfloat16.
    BF16,
}

impl GgmlType {
    /// The type with ggml id `id`, if its layout is known.
    pub fn from_id(id: u32) -> Option<Self> {
        use GgmlType::*;
        Some(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2_K,
            11 => Q3_K,
            12 => Q4_K,
            13 => Q5_K,
            14 => Q6_K,
            15 => Q8_K,
            24 => I8,
            25 => I16,
            26 => I32,
            27 => I64,
            28 => F64,
            30 => BF16,
            _ => return None,
        })
    }

    /// The ggml id.
    pub fn id(self) -> u32 {
        use GgmlType::*;
        match self {
            F32 => 0,
            F16 => 1,
            Q4_0 => 2,
            Q4_1 => 3,
            Q5_0 => 6,
            Q5_1 => 7,
            Q8_0 => 8,
            Q8_1 => 9,
            Q2_K => 10,
            Q3_K => 11,
            Q4_K => 12,
            Q5_K => 13,
            Q6_K => 14,
            Q8_K => 15,
            I8 => 24,
            I16 => 25,
            I32 => 26,
            I64 => 27,
            F64 => 28,
            BF16 => 30,
        }
    }

    /// Values per block.
    pub fn block_len(self) -> usize {
        use GgmlType::*;
        match self {
            F32 | F16 | BF16 | F64 | I8 | I16 | I32 | I64 => 1,
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 => 32,
            Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | Q8_K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        use GgmlType::*;
        match self {
            F32 | I32 => 4,
            F16 | BF16 | I16 => 2,
            F64 | I64 => 8,
            I8 => 1,
            Q4_0 => 2 + 16,
            Q4_1 => 2 + 2 + 16,
            Q5_0 => 2 + 4 + 16,
            Q5_1 => 2 + 2 + 4 + 16,
            Q8_0 => 2 + 32,
            Q8_1 => 4 + 4 + 32,
            Q2_K => 256 / 16 + 256 / 4 + 2 + 2,
            Q3_K => 256 / 8 + 256 / 4 + 12 + 2,
            Q4_K => 2 + 2 + 12 + 256 / 2,
            Q5_K => 2 + 2 + 12 + 256 / 8 + 256 / 2,
            Q6_K => 256 / 2 + 256 / 4 + 256 / 16 + 2,
            Q8_K => 4 + 256 + 256 / 16 * 2,
        }
    }

    /// The ggml name (`Q4_1`, `F16`, ...).
    pub fn name(self) -> &'static str {
        use GgmlType::*;
        match self {
            F32 => "F32",
            F16 => "F16",
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q8_0 => "Q8_0",
            Q8_1 => "Q8_1",
            Q2_K => "Q2_K",
            Q3_K => "Q3_K",
            Q4_K => "Q4_K",
            Q5_K => "Q5_K",
            Q6_K => "Q6_K",
            Q8_K => "Q8_K",
            I8 => "I8",
            I16 => "I16",
            I32 => "I32",
            I64 => "I64",
            F64 => "F64",
            BF16 => "BF16",
        }
    }

    /// Whether [`dequantize`] converts this type to `f32`.
    pub fn can_dequantize(self) -> bool {
        use GgmlType::*;
        matches!(self, F32 | F16 | BF16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q4_K | Q6_K)
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One entry of the tensor table.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufTensorInfo {
    /// The llama.cpp name (`blk.0.attn_q.weight`).
    pub name: String,
    /// ggml dimensions, fastest-varying first.
    pub dims: Vec<u64>,
    /// The storage type.
    pub ggml_type: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
    /// Size of the data in bytes.
    pub n_bytes: usize,
}

impl GgufTensorInfo {
    /// The row-major shape, outermost dimension first (`dims` reversed): PyTorch's layout.
    pub fn shape(&self) -> Vec<usize> {
        // Each dim was checked to fit in usize when the table was read.
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// The number of values.
    pub fn num_elements(&self) -> usize {
        self.shape().iter().product()
    }
}

/// A parsed GGUF file: metadata, tensor table and the raw bytes.
#[derive(Clone, Debug)]
pub struct GgufFile {
    /// The format version (2 or 3).
    pub version: u32,
    /// Metadata key/value pairs.
    pub metadata: BTreeMap<String, GgufValue>,
    /// The tensor table, in file order.
    pub tensors: Vec<GgufTensorInfo>,
    /// The alignment of tensor data.
    pub alignment: u64,
    /// The file it was read from ([`open`](Self::open)); `None` for [`from_bytes`](Self::from_bytes).
    /// Errors about the file's contents name it.
    pub path: Option<PathBuf>,
    data_start: usize,
    bytes: Arc<Vec<u8>>,
}

/// One tensor's bytes, shareable without borrowing the [`GgufFile`] (for lazy dequantisation).
#[derive(Clone, Debug)]
pub struct GgufTensor {
    /// The table entry.
    pub info: GgufTensorInfo,
    bytes: Arc<Vec<u8>>,
    start: usize,
}

impl GgufTensor {
    /// The raw (possibly quantised) bytes.
    pub fn bytes(&self) -> &[u8] {
        // In bounds: checked against the file length when the table was read.
        &self.bytes[self.start..self.start + self.info.n_bytes]
    }

    /// The values as `f32`, row-major in [`GgufTensorInfo::shape`].
    pub fn to_f32(&self) -> Result<Vec<f32>, LlamaError> {
        dequantize(self.info.ggml_type, self.bytes(), self.info.num_elements()).map_err(|e| match e {
            LlamaError::GgufUnsupportedTensorType { ggml_type, .. } => {
                LlamaError::GgufUnsupportedTensorType { tensor: self.info.name.clone(), ggml_type }
            }
            other => other,
        })
    }
}

impl GgufFile {
    /// Reads and parses a GGUF file. Only the header is interpreted: a file without tensors (a
    /// vocabulary-only GGUF, as llama.cpp ships for its tokenizer tests) opens like any other.
    ///
    /// The path must be a regular file ([`polarity_hub::files::read_regular`]): a FIFO or a directory is
    /// an error, not a hang. Errors about the contents name the file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, LlamaError> {
        let path = path.as_ref();
        let bytes = polarity_hub::files::read_regular(path).map_err(|e| LlamaError::io(path, e))?;
        Self::parse(bytes, Some(path.to_path_buf()))
    }

    /// Parses GGUF bytes (errors name the file `<GGUF bytes>`).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, LlamaError> {
        Self::parse(bytes, None)
    }

    fn parse(bytes: Vec<u8>, path: Option<PathBuf>) -> Result<Self, LlamaError> {
        let file = display_name(path.as_deref());
        let invalid = |what: String| LlamaError::GgufInvalid { file: file.clone(), what };
        let mut reader = Reader { bytes: &bytes, pos: 0, file: &file, array_elements: 0 };
        let magic: [u8; 4] = reader.array("magic")?;
        if &magic != b"GGUF" {
            return Err(LlamaError::GgufBadMagic { file: file.clone(), magic });
        }
        let version = reader.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(LlamaError::GgufUnsupportedVersion { file: file.clone(), version });
        }
        let tensor_count = reader.u64("tensor count")?;
        let kv_count = reader.u64("metadata count")?;
        reader.check_count("metadata entries", kv_count, MAX_METADATA_ENTRIES, MIN_METADATA_ENTRY_BYTES)?;

        let mut metadata = BTreeMap::new();
        for index in 0..kv_count {
            let key = reader.name(&format!("metadata key #{index}"))?;
            let type_id = reader.u32(&format!("type of metadata {key:?}"))?;
            let value = reader.value(&key, type_id, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(invalid(format!("metadata key {key:?} appears twice")));
            }
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(GgufValue::U32(a)) if a.is_power_of_two() => u64::from(*a),
            Some(other) => {
                return Err(invalid(format!("general.alignment must be a power-of-two u32, found {other:?}")));
            }
        };

        // Counted against the bytes left after the metadata: each entry takes at least 32 bytes.
        reader.check_count("tensors", tensor_count, MAX_TENSORS, MIN_TENSOR_INFO_BYTES)?;
        let mut infos = Vec::with_capacity(tensor_count as usize);
        for index in 0..tensor_count {
            let name = reader.name(&format!("name of tensor #{index}"))?;
            let n_dims = reader.u32(&format!("rank of tensor {name:?}"))?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(invalid(format!("tensor {name:?} has {n_dims} dimensions (1 to 4 allowed)")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(reader.u64(&format!("dimensions of tensor {name:?}"))?);
            }
            let type_id = reader.u32(&format!("type of tensor {name:?}"))?;
            let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| LlamaError::GgufUnknownTensorType {
                file: file.clone(),
                tensor: name.clone(),
                type_id,
            })?;
            let offset = reader.u64(&format!("offset of tensor {name:?}"))?;
            let n_bytes = tensor_bytes(&name, &dims, ggml_type).map_err(invalid)?;
            infos.push(GgufTensorInfo { name, dims, ggml_type, offset, n_bytes });
        }

        let header_end = reader.pos as u64;
        let data_start = header_end
            .checked_next_multiple_of(alignment)
            .ok_or_else(|| invalid("data section offset overflows".into()))?;
        let file_len = bytes.len() as u64;
        let mut names = std::collections::HashSet::new();
        for info in &infos {
            if !names.insert(info.name.as_str()) {
                return Err(invalid(format!("tensor {:?} appears twice", info.name)));
            }
            if !info.offset.is_multiple_of(alignment) {
                return Err(invalid(format!(
                    "tensor {:?} offset {} is not a multiple of the alignment {alignment}",
                    info.name, info.offset
                )));
            }
            let end = data_start.checked_add(info.offset).and_then(|start| start.checked_add(info.n_bytes as u64));
            match end {
                Some(end) if end <= file_len => {}
                _ => {
                    return Err(LlamaError::GgufTruncated {
                        file: file.clone(),
                        what: format!("data of tensor {:?} ({:?} {})", info.name, info.dims, info.ggml_type),
                        offset: data_start.saturating_add(info.offset),
                        needed: info.n_bytes as u64,
                        len: file_len,
                    });
                }
            }
        }
        let data_start =
            usize::try_from(data_start).map_err(|_| invalid("data section offset does not fit in memory".into()))?;
        Ok(GgufFile { version, metadata, tensors: infos, alignment, path, data_start, bytes: Arc::new(bytes) })
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    /// A metadata value, or [`LlamaError::GgufMissingKey`].
    pub fn require(&self, key: &str) -> Result<&GgufValue, LlamaError> {
        self.get(key).ok_or_else(|| LlamaError::GgufMissingKey { file: self.display_name(), key: key.to_string() })
    }

    /// A required non-negative integer (any integer type), as `usize`.
    pub fn usize(&self, key: &str) -> Result<usize, LlamaError> {
        let value = self.require(key)?;
        value
            .as_u64()
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| self.wrong_type(key, "a non-negative integer", value))
    }

    /// An optional non-negative integer.
    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>, LlamaError> {
        if self.get(key).is_none() {
            return Ok(None);
        }
        self.usize(key).map(Some)
    }

    /// An optional float (`f32` or `f64`).
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>, LlamaError> {
        match self.get(key) {
            None => Ok(None),
            Some(value) => value.as_f64().map(Some).ok_or_else(|| self.wrong_type(key, "a float", value)),
        }
    }

    /// The file's name for messages: its path, or `<GGUF bytes>` when it was parsed from memory.
    pub fn display_name(&self) -> String {
        display_name(self.path.as_deref())
    }

    /// [`LlamaError::GgufWrongType`] for `key`, naming this file.
    pub fn wrong_type(&self, key: &str, expected: &'static str, found: &GgufValue) -> LlamaError {
        LlamaError::GgufWrongType {
            file: self.display_name(),
            key: key.to_string(),
            expected,
            found: found.type_name().to_string(),
        }
    }

    /// A required string.
    pub fn str(&self, key: &str) -> Result<&str, LlamaError> {
        let value = self.require(key)?;
        value.as_str().ok_or_else(|| self.wrong_type(key, "a string", value))
    }

    /// An optional boolean.
    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>, LlamaError> {
        match self.get(key) {
            None => Ok(None),
            Some(value) => value.as_bool().map(Some).ok_or_else(|| self.wrong_type(key, "a bool", value)),
        }
    }

    /// A required array of strings.
    pub fn strings(&self, key: &str) -> Result<Vec<&str>, LlamaError> {
        let value = self.require(key)?;
        let items = value.as_array().ok_or_else(|| self.wrong_type(key, "an array of strings", value))?;
        items
            .iter()
            .map(|item| item.as_str().ok_or_else(|| self.wrong_type(key, "an array of strings", item)))
            .collect()
    }

    /// The tensor table entry called `name`.
    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensors.iter().find(|info| info.name == name)
    }

    /// The tensor called `name`, with shared access to its bytes.
    pub fn tensor(&self, name: &str) -> Option<GgufTensor> {
        self.tensor_info(name).map(|info| GgufTensor {
            info: info.clone(),
            bytes: Arc::clone(&self.bytes),
            // Cannot overflow: data_start + offset + n_bytes <= file length was checked in from_bytes.
            start: self.data_start + info.offset as usize,
        })
    }
}

fn display_name(path: Option<&Path>) -> String {
    path.map_or_else(|| "<GGUF bytes>".to_string(), |path| path.display().to_string())
}

/// The byte size of a tensor, with every product checked; the error says what is wrong.
fn tensor_bytes(name: &str, dims: &[u64], ggml_type: GgmlType) -> Result<usize, String> {
    let invalid = |what: String| format!("tensor {name:?} {dims:?}: {what}");
    let mut elements: usize = 1;
    for &dim in dims {
        let dim = usize::try_from(dim).map_err(|_| invalid("dimension does not fit in memory".into()))?;
        elements = elements.checked_mul(dim).ok_or_else(|| invalid("element count overflows".into()))?;
    }
    let block_len = ggml_type.block_len();
    // Blocks never straddle rows: the row length (dims[0]) must be a whole number of blocks.
    if dims.first().is_some_and(|&row| !row.is_multiple_of(block_len as u64)) {
        return Err(invalid(format!("row length is not a multiple of the {ggml_type} block size {block_len}")));
    }
    (elements / block_len).checked_mul(ggml_type.block_bytes()).ok_or_else(|| invalid("byte size overflows".into()))
}

/// A cursor over the header that turns every short read into [`LlamaError::GgufTruncated`] and
/// every count beyond its bound into [`LlamaError::GgufInvalid`], naming `file`.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    file: &'a str,
    /// Array elements declared so far, against [`MAX_ARRAY_ELEMENTS`].
    array_elements: u64,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn invalid(&self, what: String) -> LlamaError {
        LlamaError::GgufInvalid { file: self.file.to_string(), what }
    }

    /// Refuses a declared `count` of items above `max`, or one the rest of the file cannot hold at
    /// `min_bytes` each (a truncation), before anything is reserved for them.
    fn check_count(&self, what: &str, count: u64, max: u64, min_bytes: u64) -> Result<(), LlamaError> {
        if count > max {
            return Err(self.invalid(format!("{count} {what} declared (at most {max} allowed)")));
        }
        let needed = count.saturating_mul(min_bytes);
        if needed > self.remaining() {
            return Err(LlamaError::GgufTruncated {
                file: self.file.to_string(),
                what: format!("{count} {what}"),
                offset: self.pos as u64,
                needed,
                len: self.bytes.len() as u64,
            });
        }
        Ok(())
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], LlamaError> {
        self.take_or(n, || what.to_string())
    }

    /// [`take`](Self::take), building the description only for an error (metadata arrays have
    /// hundreds of thousands of elements).
    fn take_or(&mut self, n: u64, what: impl Fn() -> String) -> Result<&'a [u8], LlamaError> {
        let truncated = || LlamaError::GgufTruncated {
            file: self.file.to_string(),
            what: what(),
            offset: self.pos as u64,
            needed: n,
            len: self.bytes.len() as u64,
        };
        let n = usize::try_from(n).map_err(|_| truncated())?;
        let end = self.pos.checked_add(n).filter(|&end| end <= self.bytes.len()).ok_or_else(truncated)?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], LlamaError> {
        let slice = self.take(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32, LlamaError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, LlamaError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string_bytes(&mut self, len: u64, what: &str) -> Result<String, LlamaError> {
        // `take` checks the length against the bytes left before anything is copied.
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.invalid(format!("{what} is not UTF-8")))
    }

    /// A metadata key or tensor name: a string of at most [`MAX_NAME_LEN`] bytes.
    fn name(&mut self, what: &str) -> Result<String, LlamaError> {
        let len = self.u64(what)?;
        if len > MAX_NAME_LEN {
            return Err(self.invalid(format!("{what} is {len} bytes long (at most {MAX_NAME_LEN} allowed)")));
        }
        self.string_bytes(len, what)
    }

    /// `N` bytes of the value of metadata `key`.
    fn value_bytes<const N: usize>(&mut self, key: &str) -> Result<[u8; N], LlamaError> {
        let slice = self.take_or(N as u64, || format!("value of metadata {key:?}"))?;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    fn value(&mut self, key: &str, type_id: u32, depth: usize) -> Result<GgufValue, LlamaError> {
        let what = || format!("value of metadata {key:?}");
        Ok(match type_id {
            0 => GgufValue::U8(u8::from_le_bytes(self.value_bytes(key)?)),
            1 => GgufValue::I8(i8::from_le_bytes(self.value_bytes(key)?)),
            2 => GgufValue::U16(u16::from_le_bytes(self.value_bytes(key)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.value_bytes(key)?)),
            4 => GgufValue::U32(u32::from_le_bytes(self.value_bytes(key)?)),
            5 => GgufValue::I32(i32::from_le_bytes(self.value_bytes(key)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.value_bytes(key)?)),
            7 => match u8::from_le_bytes(self.value_bytes(key)?) {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                other => return Err(self.invalid(format!("metadata {key:?}: bool byte {other}"))),
            },
            8 => {
                let len = u64::from_le_bytes(self.value_bytes(key)?);
                let bytes = self.take_or(len, what)?;
                let string = String::from_utf8(bytes.to_vec())
                    .map_err(|_| self.invalid(format!("a string in metadata {key:?} is not UTF-8")))?;
                GgufValue::String(string)
            }
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.invalid(format!("metadata {key:?}: arrays nested too deeply")));
                }
                let element_type = self.u32(&what())?;
                let count = self.u64(&what())?;
                // Bounded before reserving: by what the rest of the file can hold at the element type's
                // smallest size (a longer array is a truncation), and by the budget of elements left for
                // the whole file, which nested arrays share, so no level reserves from a declared count.
                let min_bytes = min_value_bytes(element_type).ok_or_else(|| LlamaError::GgufUnknownValueType {
                    file: self.file.to_string(),
                    key: key.to_string(),
                    type_id: element_type,
                })?;
                let budget = MAX_ARRAY_ELEMENTS - self.array_elements;
                if count > budget {
                    return Err(self.invalid(format!(
                        "metadata {key:?}: an array of {count} elements exceeds the {MAX_ARRAY_ELEMENTS} array \
                         elements a file may hold ({budget} left)"
                    )));
                }
                self.check_count(&format!("elements of metadata array {key:?}"), count, u64::MAX, min_bytes)?;
                self.array_elements += count;
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(key, element_type, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(u64::from_le_bytes(self.value_bytes(key)?)),
            11 => GgufValue::I64(i64::from_le_bytes(self.value_bytes(key)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.value_bytes(key)?)),
            type_id => {
                return Err(LlamaError::GgufUnknownValueType {
                    file: self.file.to_string(),
                    key: key.to_string(),
                    type_id,
                });
            }
        })
    }
}

/// The fewest bytes a value of GGUF type `type_id` takes (`None` for an unknown type): a string is
/// at least its 8-byte length, an array its element type and count.
fn min_value_bytes(type_id: u32) -> Option<u64> {
    Some(match type_id {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 4 + 8,
        _ => return None,
    })
}

/// Converts `n_elements` values stored as `ggml_type` in `bytes` to `f32`.
///
/// Block layouts follow ggml-common.h; inside a 32-value block of the 4- and 5-bit types the low
/// nibbles hold values 0..16 and the high nibbles values 16..32.
pub fn dequantize(ggml_type: GgmlType, bytes: &[u8], n_elements: usize) -> Result<Vec<f32>, LlamaError> {
    let block_len = ggml_type.block_len();
    let block_bytes = ggml_type.block_bytes();
    let expected_bytes = (n_elements / block_len).checked_mul(block_bytes);
    if !n_elements.is_multiple_of(block_len) || expected_bytes != Some(bytes.len()) {
        return Err(LlamaError::GgufTensorData(format!(
            "{n_elements} {ggml_type} values need {expected_bytes:?} bytes, got {}",
            bytes.len()
        )));
    }
    let mut out = Vec::with_capacity(n_elements);
    decode_blocks(ggml_type, bytes, &mut out)?;
    Ok(out)
}

/// Appends the values of the whole `ggml_type` blocks in `bytes` to `out` (a trailing partial block is
/// ignored; [`dequantize`] checks sizes first). Generic over the sink so that
/// a quantised matrix can decode rows straight into a preallocated slice.
pub(crate) fn decode_blocks(ggml_type: GgmlType, bytes: &[u8], out: &mut impl Extend<f32>) -> Result<(), LlamaError> {
    let block_bytes = ggml_type.block_bytes();
    let half = |b: &[u8]| f16::from_le_bytes([b[0], b[1]]).to_f32();
    let blocks = bytes.chunks_exact(block_bytes);
    match ggml_type {
        GgmlType::F32 => out.extend(blocks.map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        GgmlType::F16 => out.extend(blocks.map(half)),
        GgmlType::BF16 => out.extend(blocks.map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())),
        GgmlType::Q8_0 => {
            for block in blocks {
                let d = half(&block[0..2]);
                out.extend(block[2..34].iter().map(|&q| f32::from(q as i8) * d));
            }
        }
        GgmlType::Q4_0 => {
            for block in blocks {
                let d = half(&block[0..2]);
                let qs = &block[2..18];
                out.extend(qs.iter().map(|&q| (f32::from(q & 0x0f) - 8.0) * d));
                out.extend(qs.iter().map(|&q| (f32::from(q >> 4) - 8.0) * d));
            }
        }
        GgmlType::Q4_1 => {
            for block in blocks {
                let (d, m) = (half(&block[0..2]), half(&block[2..4]));
                let qs = &block[4..20];
                out.extend(qs.iter().map(|&q| f32::from(q & 0x0f) * d + m));
                out.extend(qs.iter().map(|&q| f32::from(q >> 4) * d + m));
            }
        }
        GgmlType::Q5_0 => {
            for block in blocks {
                let d = half(&block[0..2]);
                let high_bits = u32::from_le_bytes([block[2], block[3], block[4], block[5]]);
                let qs = &block[6..22];
                push_q5(out, qs, high_bits, |q| (q as f32 - 16.0) * d);
            }
        }
        GgmlType::Q5_1 => {
            for block in blocks {
                let (d, m) = (half(&block[0..2]), half(&block[2..4]));
                let high_bits = u32::from_le_bytes([block[4], block[5], block[6], block[7]]);
                let qs = &block[8..24];
                push_q5(out, qs, high_bits, |q| q as f32 * d + m);
            }
        }
        GgmlType::Q4_K => {
            for block in blocks {
                let (d, dmin) = (half(&block[0..2]), half(&block[2..4]));
                let scales: &[u8; 12] = block[4..16].try_into().map_err(|_| bad_block(ggml_type))?;
                let qs = &block[16..144];
                // 4 chunks of 32 bytes; each gives 32 values from low nibbles then 32 from high ones.
                for (chunk, q) in qs.chunks_exact(32).enumerate() {
                    let (sc_low, m_low) = k_scale_min(2 * chunk, scales);
                    let (sc_high, m_high) = k_scale_min(2 * chunk + 1, scales);
                    let (d1, m1) = (d * f32::from(sc_low), dmin * f32::from(m_low));
                    let (d2, m2) = (d * f32::from(sc_high), dmin * f32::from(m_high));
                    out.extend(q.iter().map(|&b| d1 * f32::from(b & 0x0f) - m1));
                    out.extend(q.iter().map(|&b| d2 * f32::from(b >> 4) - m2));
                }
            }
        }
        GgmlType::Q6_K => {
            for block in blocks {
                let (ql, qh, scales) = (&block[0..128], &block[128..192], &block[192..208]);
                let d = half(&block[208..210]);
                // Two halves of 128 values; each value's 6 bits are 4 from ql and 2 from qh.
                for half_index in 0..2 {
                    let (ql, qh) = (&ql[64 * half_index..], &qh[32 * half_index..]);
                    let sc = &scales[8 * half_index..];
                    let mut values = [0f32; 128];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = i32::from((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) - 32;
                        let q2 = i32::from((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32;
                        let q3 = i32::from((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                        let q4 = i32::from((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                        let scale = |i: usize| d * f32::from(sc[i] as i8);
                        values[l] = scale(is) * q1 as f32;
                        values[l + 32] = scale(is + 2) * q2 as f32;
                        values[l + 64] = scale(is + 4) * q3 as f32;
                        values[l + 96] = scale(is + 6) * q4 as f32;
                    }
                    out.extend(values);
                }
            }
        }
        other => {
            return Err(LlamaError::GgufUnsupportedTensorType {
                tensor: String::new(),
                ggml_type: other.name().into(),
            });
        }
    }
    Ok(())
}

fn bad_block(ggml_type: GgmlType) -> LlamaError {
    LlamaError::GgufTensorData(format!("malformed {ggml_type} block"))
}

/// Appends the 32 values of a Q5 block: value `j` is nibble `j` (low nibbles, then high ones) with
/// bit `j` of `high_bits` as its fifth bit.
fn push_q5(out: &mut impl Extend<f32>, qs: &[u8], high_bits: u32, value: impl Fn(u32) -> f32) {
    let fifth_bit = |j: usize| ((high_bits >> j) & 1) << 4;
    out.extend(qs.iter().enumerate().map(|(j, &q)| value(u32::from(q & 0x0f) | fifth_bit(j))));
    out.extend(qs.iter().enumerate().map(|(j, &q)| value(u32::from(q >> 4) | fifth_bit(j + 16))));
}

/// The 6-bit scale and minimum of sub-block `j` of a Q4_K/Q5_K super-block (ggml's `get_scale_min_k4`).
fn k_scale_min(j: usize, scales: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        let scale = (scales[j + 4] & 0x0f) | ((scales[j - 4] >> 6) << 4);
        let min = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4);
        (scale, min)
    }
}

/// Reverses llama.cpp's row permutation of `q_proj`/`k_proj` weights (`[rows, cols]`, row-major).
///
/// llama.cpp's converter interleaves the two rotary halves of each head (`reshape(heads, 2, half, cols)
/// .swapaxes(1, 2)`) to suit its RoPE kernel; transformers' GGUF loader undoes it with
/// `reshape(heads, half, 2, cols).swapaxes(1, 2)`, which this mirrors. `heads` is the number of
/// query heads for `q_proj` and of key/value heads for `k_proj`.
pub fn unpermute_rope_rows(values: &[f32], rows: usize, cols: usize, heads: usize) -> Result<Vec<f32>, LlamaError> {
    if values.len() != rows.saturating_mul(cols) {
        return Err(LlamaError::GgufTensorData(format!(
            "cannot un-permute a [{rows}, {cols}] matrix ({} values) into {heads} rotary heads",
            values.len()
        )));
    }
    let mut out = Vec::with_capacity(values.len());
    for source in rope_unpermuted_row_order(rows, heads)? {
        out.extend_from_slice(&values[source * cols..(source + 1) * cols]);
    }
    Ok(out)
}

/// The GGUF row that each Hugging Face row of a `q_proj`/`k_proj` weight comes from (see
/// [`unpermute_rope_rows`]): row `r` of the un-permuted matrix is row `order[r]` of the GGUF one.
/// Whole rows move, so quantised blocks (which never straddle rows) can be moved without decoding.
pub fn rope_unpermuted_row_order(rows: usize, heads: usize) -> Result<Vec<usize>, LlamaError> {
    if heads == 0 || !rows.is_multiple_of(2 * heads) {
        return Err(LlamaError::GgufTensorData(format!("cannot un-permute {rows} rows into {heads} rotary heads")));
    }
    let head_rows = rows / heads;
    let half = head_rows / 2;
    let mut order = Vec::with_capacity(rows);
    for head in 0..heads {
        for pair in 0..2 {
            // Row (pair, i) of the head in Hugging Face order is row (i, pair) in GGUF order.
            order.extend((0..half).map(|i| head * head_rows + 2 * i + pair));
        }
    }
    Ok(order)
}
