//! Matrix products on raw strided operands through the `gemm` crate: the attention kernels' per-head
//! products and the fused linear layer's one product on all cores.

/// `dst (+)= beta * lhs x rhs` for `[m, k] x [k, n]` operands given by pointer and (row, column)
/// strides; `accumulate` adds to `dst` instead of overwriting it. On the calling thread: the attention
/// kernels parallelise over heads (see [`product_with`] for one product on all cores).
///
/// # Safety
/// Every pointer must be valid for the elements its strides reach, and `dst` must not alias the inputs.
#[inline]
pub(crate) unsafe fn product(
    dims: [usize; 3],
    dst: (*mut f32, isize, isize),
    lhs: (*const f32, isize, isize),
    rhs: (*const f32, isize, isize),
    beta: f32,
    accumulate: bool,
) {
    // SAFETY: forwarded from the caller.
    unsafe { product_with(dims, dst, lhs, rhs, beta, accumulate, gemm::Parallelism::None) }
}

/// [`product`] with a choice of threads.
///
/// # Safety
/// As [`product`].
#[allow(clippy::too_many_arguments)] // gemm's own call takes more; a struct would only rename them.
#[inline]
pub(crate) unsafe fn product_with(
    [m, k, n]: [usize; 3],
    dst: (*mut f32, isize, isize),
    lhs: (*const f32, isize, isize),
    rhs: (*const f32, isize, isize),
    beta: f32,
    accumulate: bool,
    parallelism: gemm::Parallelism,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.0,
            dst.2,
            dst.1,
            accumulate,
            lhs.0,
            lhs.2,
            lhs.1,
            rhs.0,
            rhs.2,
            rhs.1,
            if accumulate { 1.0 } else { 0.0 },
            beta,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// A matrix inside a buffer: element `(i, j)` at `offset + i * row_stride + j * col_stride` (a
/// transposed or sliced view needs no copy).
#[derive(Debug, Clone, Copy)]
pub(crate) struct StridedMatrix<'a> {
    pub(crate) data: &'a [f32],
    pub(crate) offset: usize,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) row_stride: isize,
    pub(crate) col_stride: isize,
}

impl StridedMatrix<'_> {
    /// Whether every element lies inside `data`.
    pub(crate) fn in_bounds(&self) -> bool {
        if self.rows == 0 || self.cols == 0 {
            return true;
        }
        let mut low = self.offset as isize;
        let mut high = low;
        for (count, stride) in [(self.rows, self.row_stride), (self.cols, self.col_stride)] {
            let reach = (count as isize - 1) * stride;
            if reach < 0 { low += reach } else { high += reach }
        }
        low >= 0 && (high as usize) < self.data.len()
    }
}
