//! Per-operation GPU time for `bitnet bench --profile` on CUDA: each backend operation is
//! bracketed by two timing events on the stream, and [`Profiler::take`] sums the elapsed times.
//! Decode graphs are off while profiling, so every kernel runs (and is timed) eagerly.

use bitnet_core::{Error, Result};
use bitnet_cuda::cudarc::driver::{sys, CudaEvent};
use bitnet_cuda::Gpu;
use std::sync::Mutex;

/// Operations timed, in report order.
pub(super) const OPS: [&str; 11] = [
    "embed",
    "rms_norm",
    "bitlinear",
    "rope(+store_kv)",
    "store_kv",
    "attention",
    "relu2_mul(+norm)",
    "add/copy",
    "lm_head",
    "norm+bitlinear",
    "all layers (one kernel)",
];

/// Pending (operation, start, end) event pairs and the totals taken so far.
#[derive(Default)]
pub(super) struct Profiler {
    pending: Mutex<Vec<(usize, CudaEvent, CudaEvent)>>,
}

fn timing_event(gpu: &Gpu) -> Result<CudaEvent> {
    gpu.context()
        .new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
        .map_err(|e| Error::Device(format!("creating a timing event: {e:?}")))
}

fn record(gpu: &Gpu, ev: &CudaEvent) -> Result<()> {
    ev.record(gpu.stream()).map_err(|e| Error::Device(format!("recording an event: {e:?}")))
}

impl Profiler {
    /// Runs `f` between two events recorded on `gpu`'s stream, attributed to `OPS[op]`.
    pub(super) fn time<T>(&self, gpu: &Gpu, op: usize, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let (start, end) = (timing_event(gpu)?, timing_event(gpu)?);
        record(gpu, &start)?;
        let r = f()?;
        record(gpu, &end)?;
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).push((op, start, end));
        Ok(r)
    }

    /// (operation, seconds, calls) since the last call; waits for the stream.
    pub(super) fn take(&self) -> Vec<(&'static str, f64, u64)> {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        let mut acc = [(0.0f64, 0u64); OPS.len()];
        for (op, s, e) in pending {
            // An event that cannot be read (a failed step) contributes nothing.
            if let Ok(ms) = s.elapsed_ms(&e) {
                acc[op].0 += ms as f64 / 1e3;
                acc[op].1 += 1;
            }
        }
        OPS.iter().zip(acc).map(|(n, (t, c))| (*n, t, c)).filter(|x| x.2 > 0).collect()
    }
}
