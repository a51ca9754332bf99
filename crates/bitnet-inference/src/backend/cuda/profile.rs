//! Per-operation GPU time for `bitnet bench --profile` on CUDA: each backend operation is
//! bracketed by two timing events on the stream, and [`Profiler::take`] sums the elapsed times.
//! Decode graphs are off while profiling, so every kernel runs (and is timed) eagerly.

use bitnet_core::{Error, Result};
use bitnet_cuda::cudarc::driver::{sys, CudaEvent};
use bitnet_cuda::Gpu;
use std::sync::Mutex;

/// The operations timed, in report order (each backend call is timed as one of them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Op {
    Embed,
    RmsNorm,
    Bitlinear,
    Rope,
    StoreKv,
    Attention,
    GatedMul,
    AddCopy,
    LmHead,
    NormBitlinear,
    OneKernel,
}

impl Op {
    /// Every operation, in report order (`Op::ALL[op as usize] == op`).
    const ALL: [Op; 11] = [
        Op::Embed,
        Op::RmsNorm,
        Op::Bitlinear,
        Op::Rope,
        Op::StoreKv,
        Op::Attention,
        Op::GatedMul,
        Op::AddCopy,
        Op::LmHead,
        Op::NormBitlinear,
        Op::OneKernel,
    ];

    /// The name in the profile report.
    fn name(self) -> &'static str {
        match self {
            Op::Embed => "embed",
            Op::RmsNorm => "rms_norm",
            Op::Bitlinear => "bitlinear",
            Op::Rope => "rope(+store_kv)",
            Op::StoreKv => "store_kv",
            Op::Attention => "attention",
            Op::GatedMul => "relu2_mul(+norm)/silu_mul",
            Op::AddCopy => "add/copy",
            Op::LmHead => "lm_head",
            Op::NormBitlinear => "norm+bitlinear",
            Op::OneKernel => "all layers (one kernel)",
        }
    }
}

/// Pending (operation, start, end) event pairs and the totals taken so far.
#[derive(Default)]
pub(super) struct Profiler {
    pending: Mutex<Vec<(Op, CudaEvent, CudaEvent)>>,
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
    /// Runs `f` between two events recorded on `gpu`'s stream, attributed to `op`.
    pub(super) fn time<T>(&self, gpu: &Gpu, op: Op, f: impl FnOnce() -> Result<T>) -> Result<T> {
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
        let mut acc = [(0.0f64, 0u64); Op::ALL.len()];
        for (op, s, e) in pending {
            // An event that cannot be read (a failed step) contributes nothing.
            if let Ok(ms) = s.elapsed_ms(&e) {
                acc[op as usize].0 += ms as f64 / 1e3;
                acc[op as usize].1 += 1;
            }
        }
        Op::ALL.iter().zip(acc).map(|(op, (t, c))| (op.name(), t, c)).filter(|x| x.2 > 0).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::Op;

    #[test]
    fn ops_are_listed_once_in_declaration_order() {
        for (i, op) in Op::ALL.iter().enumerate() {
            assert_eq!(*op as usize, i, "{op:?}");
        }
        let mut names: Vec<_> = Op::ALL.iter().map(|op| op.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Op::ALL.len());
    }
}
