//! Seeded random weights drawn fast and in parallel, the same for a seed on any number of threads.
//!
//! A counter-based generator: value `i` of a stream is a SplitMix64 finaliser of `key + (i + 1) * γ`
//! (Steele, Lea and Flood's SplitMix64, whose successive states are exactly these), so any slice of a
//! stream can be drawn on its own and rayon's split of the work never changes the values. `key` mixes
//! the caller's seed with a stream number (one per tensor), so tensors drawn from one seed are
//! independent. It is a statistical generator for weights, not a cryptographic one.
//!
//! ```
//! use polarity_llama::layers::random::RandomStream;
//!
//! let stream = RandomStream::new(42, 7);
//! let (mut a, mut b) = (vec![0u8; 1000], vec![0u8; 1000]);
//! stream.fill_bytes(&mut a);
//! stream.fill_bytes(&mut b);
//! assert_eq!(a, b); // deterministic
//! assert_ne!(a, {
//!     let mut c = vec![0u8; 1000];
//!     RandomStream::new(42, 8).fill_bytes(&mut c);
//!     c
//! });
//! ```

use rayon::prelude::*;

/// SplitMix64's increment, the golden-ratio constant.
const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// Values per parallel task: small buffers stay on one thread.
const VALUES_PER_TASK: usize = 1 << 16;

/// SplitMix64's output function (a bijection of `u64` with good avalanche).
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One stream of random numbers: `(seed, stream)` picks it, the position in it picks the value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RandomStream {
    key: u64,
}

impl RandomStream {
    /// Stream number `stream` of `seed` (one stream per tensor keeps tensors independent).
    pub fn new(seed: u64, stream: u64) -> Self {
        Self { key: mix(mix(seed ^ GAMMA).wrapping_add(stream.wrapping_mul(GAMMA))) }
    }

    /// The `index`-th 64-bit value of the stream.
    pub fn u64_at(&self, index: u64) -> u64 {
        mix(self.key.wrapping_add(index.wrapping_add(1).wrapping_mul(GAMMA)))
    }

    /// Fills `out` with the stream's first `out.len()` bytes (eight per 64-bit value, little-endian).
    pub fn fill_bytes(&self, out: &mut [u8]) {
        const TASK_BYTES: usize = VALUES_PER_TASK * 8;
        out.par_chunks_mut(TASK_BYTES).enumerate().for_each(|(task, chunk)| {
            let first = (task * VALUES_PER_TASK) as u64;
            for (i, bytes) in chunk.chunks_mut(8).enumerate() {
                let value = self.u64_at(first + i as u64).to_le_bytes();
                bytes.copy_from_slice(&value[..bytes.len()]);
            }
        });
    }

    /// Fills `out` with normal values of mean 0 and standard deviation `std` (Box-Muller: two values per
    /// 64-bit draw, its high and low halves as the two uniforms).
    pub fn fill_normal(&self, out: &mut [f32], std: f32) {
        const TASK_VALUES: usize = VALUES_PER_TASK * 2;
        out.par_chunks_mut(TASK_VALUES).enumerate().for_each(|(task, chunk)| {
            let first = (task * VALUES_PER_TASK) as u64;
            for (i, pair) in chunk.chunks_mut(2).enumerate() {
                let bits = self.u64_at(first + i as u64);
                // Two 24-bit uniforms (f32's precision): u1 in (0, 1], so its logarithm is finite (the
                // tails end at 5.8 standard deviations), u2 in [0, 1).
                let u1 = ((bits >> 40) as f32 + 1.0) / 16_777_216.0;
                let u2 = ((bits >> 8) & 0x00ff_ffff) as f32 / 16_777_216.0;
                let radius = (-2.0 * u1.ln()).sqrt() * std;
                let (sin, cos) = (std::f32::consts::TAU * u2).sin_cos();
                pair[0] = radius * cos;
                if let Some(second) = pair.get_mut(1) {
                    *second = radius * sin;
                }
            }
        });
    }

    /// `len` normal values of mean 0 and standard deviation `std` (see [`fill_normal`](Self::fill_normal)).
    pub fn normal(&self, len: usize, std: f32) -> Vec<f32> {
        let mut values = vec![0f32; len];
        self.fill_normal(&mut values, std);
        values
    }
}
