//! Devices and device selection with fallback to the CPU.

use crate::{Error, Result};
use std::fmt;
use std::str::FromStr;

/// Where tensors live and kernels run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Device {
    /// The host CPU.
    Cpu,
    /// An NVIDIA GPU by ordinal.
    Cuda(usize),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// What the user asked for: `auto`, `cpu`, `cuda` or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceRequest {
    /// CUDA when it works, otherwise the CPU.
    #[default]
    Auto,
    /// Exactly this device; failing to open it is an error.
    Exact(Device),
}

impl FromStr for DeviceRequest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim().to_ascii_lowercase();
        Ok(match s.as_str() {
            "auto" => DeviceRequest::Auto,
            "cpu" => DeviceRequest::Exact(Device::Cpu),
            "cuda" | "gpu" => DeviceRequest::Exact(Device::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(i)) => DeviceRequest::Exact(Device::Cuda(i)),
                _ => {
                    return Err(Error::invalid(format!(
                        "unknown device `{s}` (expected auto, cpu, cuda or cuda:N)"
                    )))
                }
            },
        })
    }
}

/// The outcome of device selection: the device, and why a fallback happened if it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selected {
    /// The device to use.
    pub device: Device,
    /// Set when `auto` fell back to the CPU: the reason, for one log line.
    pub fallback_reason: Option<String>,
}

impl DeviceRequest {
    /// Resolves the request. `probe_cuda(i)` tries to open CUDA device `i`.
    ///
    /// `Auto` falls back to the CPU (with the reason) when the probe fails; an exact
    /// CUDA request propagates the probe's error.
    pub fn select(self, probe_cuda: impl Fn(usize) -> Result<()>) -> Result<Selected> {
        match self {
            DeviceRequest::Exact(Device::Cpu) => {
                Ok(Selected { device: Device::Cpu, fallback_reason: None })
            }
            DeviceRequest::Exact(Device::Cuda(i)) => {
                probe_cuda(i).map_err(|e| e.context(format!("opening cuda:{i}")))?;
                Ok(Selected { device: Device::Cuda(i), fallback_reason: None })
            }
            DeviceRequest::Auto => match probe_cuda(0) {
                Ok(()) => Ok(Selected { device: Device::Cuda(0), fallback_reason: None }),
                Err(e) => {
                    Ok(Selected { device: Device::Cpu, fallback_reason: Some(e.to_string()) })
                }
            },
        }
    }
}

/// Bytes of host memory a new allocation can still be backed by: `MemAvailable` plus
/// `SwapFree` from `/proc/meminfo` (Linux), or `None` where that is not known.
///
/// Linux may grant an allocation larger than this (overcommit) and kill the process when its
/// pages are touched (as a buffer fills); callers sizing user-chosen buffers (a KV cache) check
/// against it.
pub fn host_memory_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_meminfo_available(&text)
}

/// `MemAvailable` + `SwapFree` (in bytes) from the text of `/proc/meminfo`.
fn parse_meminfo_available(text: &str) -> Option<u64> {
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kb = line[name.len()..].trim().strip_suffix("kB")?.trim();
        kb.parse::<u64>().ok()?.checked_mul(1024)
    };
    let avail = field("MemAvailable:")?;
    Some(avail.saturating_add(field("SwapFree:").unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_requests() {
        assert_eq!("auto".parse::<DeviceRequest>().unwrap(), DeviceRequest::Auto);
        assert_eq!("CPU".parse::<DeviceRequest>().unwrap(), DeviceRequest::Exact(Device::Cpu));
        assert_eq!(
            "cuda:3".parse::<DeviceRequest>().unwrap(),
            DeviceRequest::Exact(Device::Cuda(3))
        );
        assert!("tpu".parse::<DeviceRequest>().is_err());
        assert!("cuda:x".parse::<DeviceRequest>().is_err());
    }

    #[test]
    fn auto_falls_back_to_cpu_with_a_reason() {
        let s = DeviceRequest::Auto.select(|_| Err(Error::Device("no libcuda.so".into()))).unwrap();
        assert_eq!(s.device, Device::Cpu);
        assert!(s.fallback_reason.unwrap().contains("libcuda"));
        let s = DeviceRequest::Auto.select(|_| Ok(())).unwrap();
        assert_eq!(s.device, Device::Cuda(0));
    }

    #[test]
    fn exact_cuda_request_fails_loudly() {
        let r = DeviceRequest::Exact(Device::Cuda(1)).select(|_| Err(Error::Device("none".into())));
        assert!(r.unwrap_err().to_string().contains("opening cuda:1"));
    }

    #[test]
    fn meminfo_available_adds_free_swap() {
        let text = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   2000 kB\n\
                    SwapTotal: 0 kB\nSwapFree:        48 kB\n";
        assert_eq!(parse_meminfo_available(text), Some(2048 * 1024));
        assert_eq!(parse_meminfo_available("MemAvailable: 5 kB\n"), Some(5 * 1024));
        assert_eq!(parse_meminfo_available("MemTotal: 5 kB\n"), None);
        assert_eq!(parse_meminfo_available("MemAvailable: lots kB\n"), None);
        #[cfg(target_os = "linux")]
        assert!(host_memory_available().is_some_and(|b| b > 0));
    }
}
