//! What the benches share.

use std::time::Duration;

#[path = "../../examples/common/allocator.rs"]
mod allocator;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, SamplingMode};

/// Ten flat samples after a one-second warm-up, measured for about `measurement_s` seconds: model
/// benchmarks take seconds per call on 2 cores, so criterion's defaults would run for hours.
pub fn configure(group: &mut BenchmarkGroup<'_, WallTime>, measurement_s: u64) {
    allocator::configure_allocator();
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(measurement_s));
}
