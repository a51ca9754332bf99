//! The CUDA backend's buffer, projection, lm_head and cache types, and its scratch.

use super::sample::SampleState;
use super::step::Step;
use super::writes::LayerWrites;
use crate::backend::RopeKey;
use bitnet_cuda::cudarc::driver::CudaSlice;
use bitnet_cuda::ops::{CacheDims, DeviceTernary, KvBuf, LmF32, LmI8, QuantActs};
use std::collections::HashMap;
use std::sync::Mutex;

/// Reused device buffers and small host staging vectors.
#[derive(Default)]
pub(super) struct Scratch {
    pub(super) quant: Option<QuantActs>,
    pub(super) part: Option<CudaSlice<f32>>,
    pub(super) rope: HashMap<(RopeKey, usize), CudaSlice<f32>>,
    pub(super) rows_host: Vec<(usize, usize)>,
    pub(super) rows_table: Vec<i32>,
    pub(super) rows_dev: Option<CudaSlice<i32>>,
    pub(super) rows_dev_valid: bool,
    pub(super) ids_host: Vec<i32>,
    pub(super) ids_dev: Option<CudaSlice<i32>>,
    pub(super) step: Step,
    pub(super) sample: SampleState,
    /// Embedding lookups queued so far (`writes.rs`).
    pub(super) embeds: u64,
}

/// An f32 activation buffer on the GPU, with the int8 copy of its rows that `rms_norm` wrote.
pub struct CudaBuf {
    pub(super) data: CudaSlice<f32>,
    pub(super) len: usize,
    pub(super) q: Option<QuantActs>,
    /// `(rows, width)` the int8 copy holds, while it matches `data`.
    pub(super) q_shape: Option<(usize, usize)>,
}

impl CudaBuf {
    pub(super) fn touched(&mut self) -> &mut CudaSlice<f32> {
        self.q_shape = None;
        &mut self.data
    }
}

/// A ternary projection in the GPU layout.
pub struct CudaLinear(pub(super) DeviceTernary);

/// The vocabulary projection on the GPU.
pub enum CudaLmHead {
    /// Exact f32 rows.
    F32(LmF32),
    /// int8 rows with per-row scales.
    I8(LmI8),
}

/// Keys and values of every layer and slot: `[layer][slot][kv_head][pos][head_dim]`, f32 or
/// f16 as the cache's `KvType`.
pub struct CudaCache {
    pub(super) dims: CacheDims,
    pub(super) k: KvBuf,
    pub(super) v: KvBuf,
    /// Which layers attention may read early (`writes.rs`).
    pub(super) written: LayerWrites,
}

pub(super) fn lock(m: &Mutex<Scratch>) -> std::sync::MutexGuard<'_, Scratch> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
