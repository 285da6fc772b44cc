//! Backends: the CPU default, and CUDA behind the `cuda` feature.
//!
//! Everything in polarity is generic over burn's `Backend`; these aliases pick the concrete one that the
//! examples and benches run on. Training is a type-level choice: wrap a backend in
//! [`burn::backend::Autodiff`] (see [`TrainBackend`]).
//!
//! burn's CUDA runtime panics inside cubecl when no driver is present, so [`default_device`] probes the
//! driver first (loading `libcuda` and asking it for a device count) and returns
//! [`CoreError::CudaUnavailable`] instead.

use burn::backend::Autodiff;
use burn::tensor::Device;

use crate::CoreError;

/// burn's ndarray backend (pure Rust, `matrixmultiply` GEMM, rayon threads).
pub type NdArrayBackend = burn::backend::NdArray<f32>;

/// burn's flex backend (pure Rust, `gemm` crate kernels, rayon threads).
pub type FlexBackend = burn::backend::Flex<f32>;

/// The CPU backend polarity uses by default: flex, the faster of burn's two pure-Rust CPU backends here.
///
/// Measured on 2 cores (`benches/encoder.rs`, numbers in `docs/performance.md`): flex runs its GEMM on
/// all cores (rayon) and is about 2x faster than ndarray on a 512x768x768 matmul, 1.5-1.85x faster on
/// MiniLM / BERT-base / DistilBERT forward passes and 1.4x faster on a MiniLM training step; the
/// workspace builds burn without default features, which leaves burn-ndarray single-threaded. Both
/// give the same MiniLM logits (`tests/cpu_backends.rs`: max |diff| ~4e-8, and both match
/// transformers within 1e-4).
pub type CpuBackend = FlexBackend;

/// The NVIDIA GPU backend (burn-cuda, through CubeCL).
#[cfg(feature = "cuda")]
pub type CudaBackend = burn_cuda::Cuda<f32, i32>;

/// The backend the examples run on: CUDA when built with `--features cuda`, else the CPU.
#[cfg(feature = "cuda")]
pub type DefaultBackend = CudaBackend;
/// The backend the examples run on: CUDA when built with `--features cuda`, else the CPU.
#[cfg(not(feature = "cuda"))]
pub type DefaultBackend = CpuBackend;

/// The default backend with automatic differentiation, for training.
pub type TrainBackend = Autodiff<DefaultBackend>;

/// The device of [`DefaultBackend`]: the first GPU with `--features cuda` (after probing the driver),
/// else the CPU.
pub fn default_device() -> Result<Device<DefaultBackend>, CoreError> {
    #[cfg(feature = "cuda")]
    {
        cuda::probe()?;
        Ok(burn_cuda::CudaDevice::new(0))
    }
    #[cfg(not(feature = "cuda"))]
    {
        Ok(Default::default())
    }
}

/// A short human-readable name of [`DefaultBackend`], for reports.
pub fn default_backend_name() -> &'static str {
    if cfg!(feature = "cuda") { "cuda" } else { "flex (cpu)" }
}

#[cfg(feature = "cuda")]
pub mod cuda {
    //! Probing the NVIDIA driver without touching cubecl, which panics where there is none.
    use crate::CoreError;

    type CuInit = unsafe extern "C" fn(flags: u32) -> i32;
    type CuDeviceGetCount = unsafe extern "C" fn(count: *mut i32) -> i32;

    /// The number of CUDA devices the driver reports, or why none can be used.
    pub fn device_count() -> Result<usize, CoreError> {
        let unavailable = |why: String| CoreError::CudaUnavailable(why);
        // SAFETY: loading the driver library runs its initialisers, which is what any CUDA program does.
        let library = unsafe { libloading::Library::new("libcuda.so.1") }
            .or_else(|_| unsafe { libloading::Library::new("libcuda.so") })
            .map_err(|e| unavailable(format!("cannot load the NVIDIA driver library libcuda.so.1 ({e})")))?;
        // SAFETY: the symbols have these C signatures in every CUDA driver API since 2.0.
        unsafe {
            let init =
                library.get::<CuInit>(b"cuInit\0").map_err(|e| unavailable(format!("libcuda has no cuInit ({e})")))?;
            let code = init(0);
            if code != 0 {
                return Err(unavailable(format!("cuInit failed with CUDA error {code}")));
            }
            let get_count = library
                .get::<CuDeviceGetCount>(b"cuDeviceGetCount\0")
                .map_err(|e| unavailable(format!("libcuda has no cuDeviceGetCount ({e})")))?;
            let mut count = 0i32;
            let code = get_count(&mut count);
            if code != 0 {
                return Err(unavailable(format!("cuDeviceGetCount failed with CUDA error {code}")));
            }
            Ok(count.max(0) as usize)
        }
    }

    /// `Ok` when at least one CUDA device is usable.
    pub fn probe() -> Result<(), CoreError> {
        match device_count()? {
            0 => Err(CoreError::CudaUnavailable("the NVIDIA driver reports no device".into())),
            _ => Ok(()),
        }
    }
}

static SEEDED_DRAWS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Holds the process's lock on the backend's random generator, from a seed to the last draw it governs.
///
/// burn's CPU backends keep one generator per process: code that seeds it and then draws (random weights,
/// lazily initialised parameters, dropout masks) can see another thread's draws in between. Model
/// construction in the recipes holds this guard from `B::seed` to the last initialised parameter, so that
/// ranks of a data-parallel group running as threads (and tests on parallel threads) build the same
/// weights from the same seed. A panicking holder does not poison the lock for the others.
pub fn seeded_draws() -> std::sync::MutexGuard<'static, ()> {
    SEEDED_DRAWS.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Seeds `B`'s generator on `device` with `seed` and runs `draw`, holding [`seeded_draws`] throughout: every
/// draw `draw` makes comes from that seed, whatever other threads of the process seed or draw.
pub fn with_seed<B: burn::tensor::backend::Backend, R>(device: &B::Device, seed: u64, draw: impl FnOnce() -> R) -> R {
    let _draws = seeded_draws();
    B::seed(device, seed);
    draw()
}
