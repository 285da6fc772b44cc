//! The floating-point type matrix products run in.

use std::fmt;
use std::str::FromStr;

use burn::tensor::FloatDType;
use serde::{Deserialize, Serialize};

/// The type of the matrix products, with parameters, gradients and optimiser state kept in f32:
/// mixed precision as HF Trainer's `--bf16` / `--fp16` (PyTorch autocast) run it. polarity's models
/// apply it through `polarity_kernels::autocast`; the trainer adds loss scaling for [`F16`](Self::F16).
///
/// ```
/// use polarity_core::Precision;
///
/// let precision: Precision = "bf16".parse().unwrap();
/// assert_eq!(precision, Precision::Bf16);
/// assert_eq!(precision.to_string(), "bf16");
/// assert!(!precision.needs_loss_scaling());
/// assert!("f8".parse::<Precision>().is_err());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Everything in f32 (the default).
    #[default]
    F32,
    /// Products in bfloat16: f32's range, 8 bits of mantissa; no loss scaling needed.
    Bf16,
    /// Products in IEEE half precision: 11 bits of mantissa but a range that ends at 65504, so small
    /// gradients underflow unless the loss is scaled up (dynamic loss scaling).
    F16,
}

impl Precision {
    /// All values, in order.
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::Bf16, Precision::F16];

    /// The type products are computed in, `None` for plain f32.
    pub fn compute_dtype(self) -> Option<FloatDType> {
        match self {
            Precision::F32 => None,
            Precision::Bf16 => Some(FloatDType::BF16),
            Precision::F16 => Some(FloatDType::F16),
        }
    }

    /// Whether training needs dynamic loss scaling (f16's narrow range).
    pub fn needs_loss_scaling(self) -> bool {
        self == Precision::F16
    }

    /// The name used on command lines and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let name = name.to_ascii_lowercase();
        Precision::ALL
            .into_iter()
            .find(|p| {
                p.name() == name || (name == "fp16" && *p == Precision::F16) || (name == "fp32" && *p == Precision::F32)
            })
            .ok_or_else(|| format!("unknown precision {name:?} (expected f32, bf16 or f16)"))
    }
}
