//! How the CPU kernels split their work over rayon's threads: task sizes, and a sum of per-task
//! partials that does not depend on the scheduling.

/// Elements per rayon task for element-wise kernels: large enough to amortise scheduling, small
/// enough to split a layer's activations into many tasks.
pub(crate) const CHUNK: usize = 1 << 14;

/// Rows per rayon task for the norms' row-wise passes (a few hundred KB of activations).
pub(crate) const NORM_ROWS: usize = 64;

/// `target = Σ partials`, added in the given order (per-task sums of a parallel reduction, so that
/// the result does not depend on rayon's scheduling).
pub(crate) fn sum_in_order(target: &mut [f32], partials: impl IntoIterator<Item = Vec<f32>>) {
    target.fill(0.0);
    for partial in partials {
        target.iter_mut().zip(partial).for_each(|(a, b)| *a += b);
    }
}
