//! Inverted dropout with a parallel counter-based mask, and that mask's generator, which the
//! attention kernels also draw their weight dropout from.

use burn::nn::Dropout;
use burn::prelude::*;
use burn::tensor::Distribution;

use crate::dispatch::{Op, Path};

static DROPOUT: Op = Op::new("dropout");

/// Inverted dropout, `x * mask / (1 - prob)`, active only under autodiff (training), as burn's
/// [`Dropout`].
///
/// On the CPU default the mask comes from a counter-based generator filled on all cores and enters
/// the graph as a constant: one multiplication. burn's own dropout draws its Bernoulli mask one
/// element at a time on one thread, which took ~16 % of a MiniLM training step. The generator's seed
/// is drawn from the backend's random stream, so `B::seed` still makes runs reproducible. Other
/// devices use burn's dropout.
pub fn dropout<B: Backend, const D: usize>(layer: &Dropout, x: Tensor<B, D>) -> Tensor<B, D> {
    let device = x.device();
    // Without autodiff dropout is the identity, and with `prob == 0` it draws nothing: neither needs a path.
    if !B::ad_enabled(&device) || layer.prob == 0.0 || DROPOUT.path::<B>([x.dtype()]) != Path::FlexAutodiff {
        return layer.forward(x);
    }
    let keep = 1.0 - layer.prob;
    let seed = random_seed::<B>(&device);
    let dims = x.dims();
    let mut mask = vec![0f32; dims.iter().product()];
    cpu::dropout_mask(&mut mask, seed, keep);
    x * Tensor::from_data(burn::tensor::TensorData::new(mask, dims), &device)
}

/// 64 bits from the backend's random stream, so that `B::seed` governs the kernels' generators too.
pub(crate) fn random_seed<B: Backend>(device: &B::Device) -> u64 {
    let draws = Tensor::<B, 1>::random([2], Distribution::Uniform(0.0, 1.0), device).into_data();
    draws.iter::<f32>().fold(0u64, |acc, u| (acc << 32) | u64::from(u.to_bits()))
}

/// The mask generator on `f32` slices.
pub(super) mod cpu {
    use multiversion::multiversion;
    use rayon::prelude::*;

    use crate::threading::CHUNK;

    #[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma"))]
    pub fn dropout_mask_slice(mask: &mut [f32], first_index: u64, seed: u64, keep_threshold: u32, scale: f32) {
        for (i, m) in mask.iter_mut().enumerate() {
            // SplitMix64's finaliser over (seed, index): a counter-based generator, so every chunk draws
            // its own numbers independently of how rayon splits the work.
            let mut z = seed.wrapping_add((first_index + i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            *m = if ((z >> 32) as u32) < keep_threshold { scale } else { 0.0 };
        }
    }

    /// Fills `mask` with `1 / keep` where a uniform draw falls below `keep`, 0 elsewhere: an inverted
    /// dropout mask, deterministic in `seed`.
    pub fn dropout_mask(mask: &mut [f32], seed: u64, keep: f64) {
        let (threshold, scale) = (keep_threshold(keep), (1.0 / keep) as f32);
        mask.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(chunk, mask)| dropout_mask_slice(mask, (chunk * CHUNK) as u64, seed, threshold, scale));
    }

    /// `keep` as a threshold on 32 random bits.
    pub fn keep_threshold(keep: f64) -> u32 {
        (keep * 2f64.powi(32)).min(u32::MAX as f64) as u32
    }
}
