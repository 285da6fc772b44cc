//! Sums and dot products written with explicit lanes, inlined into the multiversioned kernels: float
//! addition is not associative, so the compiler only vectorises a sum written this way.

/// Independent accumulators in reductions.
pub(crate) const LANES: usize = 16;

/// `Σ v`.
#[inline(always)]
pub(crate) fn sum(values: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (acc, v) in lanes.iter_mut().zip(chunk) {
            *acc += v;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `Σ v^2`.
#[inline(always)]
pub(crate) fn sum_of_squares(values: &[f32]) -> f32 {
    centered_sum_of_squares(values, 0.0)
}

/// `Σ (v - center)^2`.
#[inline(always)]
pub(crate) fn centered_sum_of_squares(values: &[f32], center: f32) -> f32 {
    let mut lanes = [0f32; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|v| (v - center) * (v - center)).sum();
    for chunk in chunks {
        for (acc, v) in lanes.iter_mut().zip(chunk) {
            *acc += (v - center) * (v - center);
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `Σ a b`.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a_chunks.remainder().iter().zip(b_chunks.remainder()).map(|(a, b)| a * b).sum();
    for (a, b) in a_chunks.zip(b_chunks) {
        for ((acc, a), b) in lanes.iter_mut().zip(a).zip(b) {
            *acc += a * b;
        }
    }
    lanes.iter().sum::<f32>() + tail
}
