//! What a number was measured on: [`HardwareRecord`].

use std::fmt;

use polarity_core::Precision;
use serde::{Deserialize, Serialize};

/// burn's version in the workspace's Cargo.lock, read at build time.
pub const BURN_VERSION: &str = env!("POLARITY_BENCH_BURN_VERSION");
/// `git rev-parse --short HEAD` at build time, `unknown` without git.
pub const GIT_COMMIT: &str = env!("POLARITY_BENCH_GIT_COMMIT");
/// `rustc -V` of the compiler that built this crate.
pub const RUSTC_VERSION: &str = env!("POLARITY_BENCH_RUSTC_VERSION");

/// The widest vector instruction set the CPU offers (and the OS enables), as detected at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SimdLevel {
    /// x86: AVX-512 with bfloat16 dot products.
    Avx512Bf16,
    /// x86: AVX-512 foundation.
    Avx512F,
    /// x86: AVX2.
    Avx2,
    /// x86: SSE 4.2.
    Sse42,
    /// aarch64: NEON.
    Neon,
    /// None of the above.
    Scalar,
}

impl SimdLevel {
    /// Detects the level of this CPU.
    pub fn detect() -> Self {
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        {
            if std::arch::is_x86_feature_detected!("avx512bf16") {
                return SimdLevel::Avx512Bf16;
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                return SimdLevel::Avx512F;
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                return SimdLevel::Avx2;
            }
            if std::arch::is_x86_feature_detected!("sse4.2") {
                return SimdLevel::Sse42;
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            if std::arch::is_aarch64_feature_detected!("neon") {
                return SimdLevel::Neon;
            }
        }
        SimdLevel::Scalar
    }

    /// The name used in reports (`avx512bf16`, `avx512f`, `avx2`, `sse4.2`, `neon`, `scalar`).
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Avx512Bf16 => "avx512bf16",
            SimdLevel::Avx512F => "avx512f",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Sse42 => "sse4.2",
            SimdLevel::Neon => "neon",
            SimdLevel::Scalar => "scalar",
        }
    }
}

impl fmt::Display for SimdLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The hardware and software a measurement ran on, recorded next to every number.
///
/// ```
/// use polarity_bench::HardwareRecord;
/// use polarity_core::Precision;
///
/// let record = HardwareRecord::detect("flex (cpu)", Precision::F32);
/// assert!(record.logical_cores >= 1);
/// assert!(!record.burn_version.is_empty());
/// println!("{record}");
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HardwareRecord {
    /// The CPU's `model name` in `/proc/cpuinfo` (Linux; `None` elsewhere).
    pub cpu_model: Option<String>,
    /// Logical cores this process may use (`std::thread::available_parallelism`).
    pub logical_cores: usize,
    /// Threads in rayon's global pool, which runs the CPU backend's kernels.
    pub rayon_threads: usize,
    /// The widest vector instruction set detected.
    pub simd: SimdLevel,
    /// Whether the CPU has AMX tiles (`amx_tile` in `/proc/cpuinfo`'s flags; `false` where unknown).
    pub amx_tile: bool,
    /// The GPU's name (`nvidia-smi`), only in builds with the `cuda` feature; `None` where unavailable.
    pub gpu_name: Option<String>,
    /// The burn backend measured (`flex (cpu)`, `cuda`, ...), as the caller names it.
    pub backend: String,
    /// The type matrix products ran in.
    pub precision: Precision,
    /// burn's version, from the workspace's Cargo.lock at build time.
    pub burn_version: String,
    /// The short git commit of the build, `unknown` without git.
    pub git_commit: String,
    /// `rustc -V` of the compiler that built the harness.
    pub rustc_version: String,
    /// Operating system and architecture (`linux x86_64`).
    pub os: String,
    /// When the record was taken: UTC, RFC 3339 (`2026-05-01T12:00:00Z`).
    pub measured_at: String,
}

impl HardwareRecord {
    /// Records this machine now, for a measurement on `backend` with products in `precision`.
    pub fn detect(backend: &str, precision: Precision) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Self {
            cpu_model: cpu_model(&cpuinfo),
            logical_cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            rayon_threads: rayon::current_num_threads(),
            simd: SimdLevel::detect(),
            amx_tile: has_cpu_flag(&cpuinfo, "amx_tile"),
            gpu_name: gpu_name(),
            backend: backend.to_string(),
            precision,
            burn_version: BURN_VERSION.to_string(),
            git_commit: GIT_COMMIT.to_string(),
            rustc_version: RUSTC_VERSION.to_string(),
            os: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
            measured_at: now_rfc3339(),
        }
    }
}

impl fmt::Display for HardwareRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let amx = if self.amx_tile { "+amx" } else { "" };
        writeln!(
            f,
            "{} ({} logical cores, {} rayon threads, {}{amx}), GPU {}; backend {}, {} products",
            self.cpu_model.as_deref().unwrap_or("unknown CPU"),
            self.logical_cores,
            self.rayon_threads,
            self.simd,
            self.gpu_name.as_deref().unwrap_or("none"),
            self.backend,
            self.precision,
        )?;
        write!(
            f,
            "burn {}, commit {}, {}, {}, measured {}",
            self.burn_version, self.git_commit, self.rustc_version, self.os, self.measured_at
        )
    }
}

/// The first `model name` of a `/proc/cpuinfo` text.
fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find(|line| line.starts_with("model name"))
        .and_then(|line| line.split_once(':'))
        .map(|(_, name)| name.trim().to_string())
        .filter(|name| !name.is_empty())
}

/// Whether the first `flags` line of a `/proc/cpuinfo` text lists `flag`.
fn has_cpu_flag(cpuinfo: &str, flag: &str) -> bool {
    cpuinfo
        .lines()
        .find(|line| line.starts_with("flags"))
        .and_then(|line| line.split_once(':'))
        .is_some_and(|(_, flags)| flags.split_whitespace().any(|f| f == flag))
}

/// The first GPU's name from `nvidia-smi`, in `cuda` builds.
fn gpu_name() -> Option<String> {
    if !cfg!(feature = "cuda") {
        return None;
    }
    let output =
        std::process::Command::new("nvidia-smi").args(["--query-gpu=name", "--format=csv,noheader"]).output().ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    let name = text.lines().next()?.trim();
    (output.status.success() && !name.is_empty()).then(|| name.to_string())
}

/// The device memory this process holds, in bytes (`nvidia-smi --query-compute-apps`), in `cuda` builds;
/// `None` elsewhere, or where the driver does not list the process (a container's own PID namespace).
pub fn device_memory_bytes() -> Option<u64> {
    if !cfg!(feature = "cuda") {
        return None;
    }
    let output = std::process::Command::new("nvidia-smi")
        .args(["--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"])
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let pid = std::process::id().to_string();
    let text = String::from_utf8(output.stdout).ok()?;
    // One row per process and GPU: sum this process's rows (MiB).
    let mebibytes: Vec<u64> = text
        .lines()
        .filter_map(|line| line.split_once(','))
        .filter(|(row_pid, _)| row_pid.trim() == pid)
        .filter_map(|(_, used)| used.trim().parse().ok())
        .collect();
    (!mebibytes.is_empty()).then(|| mebibytes.iter().sum::<u64>() * 1024 * 1024)
}

/// Now, UTC, RFC 3339 to the second.
fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPUINFO: &str = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n\
                           flags\t\t: fpu sse4_2 avx2 avx512f amx_tile amx_bf16\n\nprocessor\t: 1\n";

    #[test]
    fn cpuinfo_is_read() {
        assert_eq!(cpu_model(CPUINFO).as_deref(), Some("Intel(R) Xeon(R) Platinum 8480+"));
        assert!(has_cpu_flag(CPUINFO, "amx_tile"));
        assert!(!has_cpu_flag(CPUINFO, "amx"));
        assert_eq!(cpu_model("processor : 0\n"), None);
        assert!(!has_cpu_flag("", "avx2"));
    }

    #[test]
    fn the_date_is_rfc3339_utc() {
        let now = now_rfc3339();
        assert!(now.ends_with('Z') && now.len() == "2026-05-01T12:00:00Z".len(), "{now}");
        assert!(chrono::DateTime::parse_from_rfc3339(&now).is_ok());
    }
}
