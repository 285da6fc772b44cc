//! What the benches share.

use std::time::Duration;

/// mimalloc keeps freed pages for reuse. With glibc's allocator every large tensor buffer (the
/// attention scores of one layer are ~100 MB at batch 32 x 256) is a fresh `mmap`, and page faults
/// took ~12 % of an encoder forward pass (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, SamplingMode};

/// Ten flat samples after a one-second warm-up, measured for about `measurement_s` seconds: model
/// benchmarks take seconds per call on 2 cores, so criterion's defaults would run for hours.
pub fn configure(group: &mut BenchmarkGroup<'_, WallTime>, measurement_s: u64) {
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(measurement_s));
}
