//! The same operations composed from burn's tensor ops: what every backend other than burn-flex runs
//! (CUDA, ndarray), and the reference the fused kernels are tested against. Each is defined next to its
//! op in `ops/`.

pub use crate::ops::attention::composed as attention;
pub use crate::ops::gelu::composed as gelu;
pub use crate::ops::layer_norm::composed as layer_norm;
pub use crate::ops::rms_norm::composed as rms_norm;
pub use crate::ops::rope::composed as rotary;
pub use crate::ops::silu_gate::composed as silu_mul;
