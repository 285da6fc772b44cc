//! A float32 tensor on a CPU backend that misses the fused kernels is logged, once per op. A test
//! binary of its own: the log is once per process.

use std::sync::{Arc, Mutex};

use burn::backend::{Flex, NdArray};
use burn::prelude::*;
use burn::tensor::DType;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;

/// The formatted log, collected in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

#[test]
fn a_cpu_float32_fallback_is_logged_once_per_op_naming_the_backend() {
    let captured = Captured::default();
    let _subscriber = tracing_subscriber::fmt().with_writer(captured.clone()).with_ansi(false).finish().set_default();
    let device = Default::default();
    // The fused paths, and float types the kernels do not take, say nothing.
    polarity_kernels::gelu(Tensor::<Flex, 2>::ones([2, 3], &device));
    polarity_kernels::gelu(Tensor::<Flex, 2>::ones([2, 3], &device).cast(DType::F16));
    let log = || String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert_eq!(log(), "");

    for _ in 0..3 {
        polarity_kernels::gelu(Tensor::<NdArray, 2>::ones([2, 3], &Default::default()));
    }
    polarity_kernels::rms_norm(
        Tensor::<NdArray, 2>::ones([2, 3], &Default::default()),
        Tensor::ones([3], &Default::default()),
        1e-6,
    );
    let log = log();
    assert_eq!(log.matches("gelu on float32 CPU tensors takes the composed path").count(), 1, "{log}");
    assert_eq!(log.matches("rms_norm on float32 CPU tensors takes the composed path").count(), 1, "{log}");
    assert!(log.contains("WARN") && log.contains("NdArray"), "{log}");
}
