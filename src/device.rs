//! `--device auto|cpu|cuda[:N]`: choosing where tensors live, and the process settings the CPU
//! device runs best with ([`tune_cpu_runtime`]).
//!
//! Asking for CUDA in a build without it, or on a machine without a usable GPU, is an error that
//! says which; `auto` takes the GPU when there is one and otherwise falls back to the CPU with one
//! line saying why.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(Self::Cuda(n)),
                _ => Err(format!("`{other}`: expected auto, cpu, cuda or cuda:N")),
            },
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Why the requested device is not available.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// This binary was compiled without the `cuda` feature.
    #[error(
        "this beatlab was built without CUDA support; build it with `scripts/build-cuda.sh` (cargo feature `cuda`)"
    )]
    NotBuilt,
    /// The CUDA driver or device could not be opened.
    #[error("CUDA device {index} is not available: {reason}")]
    Unavailable { index: usize, reason: String },
}

/// A resolved device and its name for the registry (`cpu`, `cuda:0`).
pub struct Resolved {
    pub device: Device,
    pub name: String,
    /// Set when `auto` fell back to the CPU: why.
    pub fallback: Option<String>,
}

/// Resolves a choice to a device.
pub fn resolve(choice: DeviceChoice) -> Result<Resolved, DeviceError> {
    let cpu = |fallback| Resolved {
        device: Device::Cpu,
        name: "cpu".into(),
        fallback,
    };
    match choice {
        DeviceChoice::Cpu => Ok(cpu(None)),
        DeviceChoice::Cuda(index) => open_cuda(index),
        DeviceChoice::Auto => match open_cuda(0) {
            Ok(r) => Ok(r),
            Err(e) => Ok(cpu(Some(e.to_string()))),
        },
    }
}

#[cfg(feature = "cuda")]
fn open_cuda(index: usize) -> Result<Resolved, DeviceError> {
    // cudarc panics (rather than erroring) when the driver library is missing: probe it first.
    let driver_present = unsafe {
        let handle = libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_LAZY);
        !handle.is_null()
    };
    if !driver_present {
        return Err(DeviceError::Unavailable {
            index,
            reason: "no NVIDIA driver (libcuda.so.1 not found)".into(),
        });
    }
    match std::panic::catch_unwind(|| Device::new_cuda(index)) {
        Ok(Ok(device)) => Ok(Resolved {
            device,
            name: format!("cuda:{index}"),
            fallback: None,
        }),
        Ok(Err(e)) => Err(DeviceError::Unavailable {
            index,
            // candle appends a backtrace when RUST_BACKTRACE is set: the first line says it all.
            reason: e.to_string().lines().next().unwrap_or_default().to_string(),
        }),
        Err(_) => Err(DeviceError::Unavailable {
            index,
            reason: "the CUDA runtime panicked while opening the device".into(),
        }),
    }
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(_index: usize) -> Result<Resolved, DeviceError> {
    Err(DeviceError::NotBuilt)
}

/// Process-wide CPU settings that make candle's training steps faster (docs/benchmarks.md, Beat:
/// measured on 2 cores). A binary calls it first thing in `main`, before any thread or large
/// buffer exists: `beatlab`, and `beatlab-bench` so that it measures what the product runs.
pub fn tune_cpu_runtime() {
    // glibc returns freed blocks above 128 KiB to the kernel at once, so every step of a training
    // loop faults its activation buffers in again (about 10 % of a Beat step in `perf`). Keeping
    // them in the heap costs the process its peak heap, which a training run reaches anyway.
    // 32 MiB is the highest mmap threshold glibc accepts (it ignores larger values).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator thresholds; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
    // candle runs elementwise ops on a pool of CANDLE_NUM_THREADS - 1 spinning workers beside
    // the rayon threads of its matrix products; on two cores the spinning competes with them (a
    // quarter of the samples in `perf`), so the pool is turned off there unless the user set it.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores <= 2 && std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: no other thread exists yet that could read the environment concurrently.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!("auto".parse(), Ok(DeviceChoice::Auto));
        assert_eq!("cuda:1".parse(), Ok(DeviceChoice::Cuda(1)));
        assert!("tpu".parse::<DeviceChoice>().is_err());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_a_clear_error_and_auto_falls_back() {
        assert!(matches!(
            resolve(DeviceChoice::Cuda(0)),
            Err(DeviceError::NotBuilt)
        ));
        let r = resolve(DeviceChoice::Auto).unwrap();
        assert_eq!(r.name, "cpu");
        assert!(r.fallback.unwrap().contains("without CUDA"));
    }
}
