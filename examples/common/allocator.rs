//! The examples' and benches' allocator (the benches include this file by path).

/// mimalloc keeps freed pages for reuse. With glibc's allocator every large tensor buffer (the
/// attention scores of one layer are ~100 MB at batch 32 x 256) is a fresh `mmap`, and page faults
/// took ~12 % of an encoder forward pass (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Sets mimalloc up for the long tensor workloads of the examples and benches:
///
/// - never return freed pages to the OS. By default it does so a second after a free; a training step
///   takes seconds, so every step re-faulted (and the kernel re-zeroed) gigabytes of activations: a
///   MiniLM step ran 2.25 samples/s with the default and 2.89 with `MIMALLOC_PURGE_DELAY=-1` (one run
///   each; the bench moves by about ±10 % between runs);
/// - ask for large (2 MB) OS pages. With Linux's transparent huge pages in `madvise` mode (the default
///   of many distributions) only memory that asks gets them, and the packed weights the bf16 kernel
///   streams then take fewer TLB misses: DistilBERT's bf16 forward pass run after the f32 lines in one
///   bench process went 29.6 / 28.7 / 25.5 samples/s with them against 26.4 / 24.0 / 22.0 without
///   (alternating runs, docs/performance.md). Where the OS has none, mimalloc uses normal pages.
pub fn configure_allocator() {
    // `mi_option_purge_delay` in mimalloc.h (v3); libmimalloc-sys has no constant for it.
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: each sets a process-wide integer option; mimalloc reads options atomically.
    unsafe {
        libmimalloc_sys::mi_option_set(PURGE_DELAY, -1);
        libmimalloc_sys::mi_option_set(libmimalloc_sys::mi_option_large_os_pages, 1);
    }
}
