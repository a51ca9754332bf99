//! Typed launchers for every kernel. Each checks buffer lengths and sizes before launching, so a
//! bad call is an error, never an out-of-bounds access; all work is queued on [`Gpu::stream`].

use crate::device::{dev_err, Gpu};
use bitnet_core::{Error, Result};
use cudarc::driver::{CudaFunction, CudaSlice, DevicePtr, DeviceRepr, ValidAsZeroBits};
use std::ffi::c_void;

mod attn;
mod decode;
mod fused;
mod knobs;
mod linear;
mod lm_head;
mod misc;
mod sample;

pub use attn::{
    attention, attention_part_len, attention_split_limit, attention_splits, rope, rope_attention,
    rope_store, slots_distinct, split_len_pow2, store_kv, CacheDims, KvBuf,
};
pub use decode::{
    decode_layers, DecodeStack, StackDims, StackLayer, DECODE_MAX_WIDTH, DECODE_STAMPS,
};
pub use fused::{norm_gemv_fits, norm_ternary_gemv, NormSrc, NORM_GEMV_MAX_COLS};
pub(crate) use knobs::Knobs;
pub(crate) use linear::GEMM_ROWS;
pub use linear::{
    quantize_act, relu2_rms_norm, rms_norm, ternary_matmul, ternary_matmul_add,
    ternary_matmul_multi, DeviceTernary, QuantActs, MAX_SEGMENTS, SPLIT_SLOTS,
};
pub use lm_head::{lm_head_f32, lm_head_i8, lm_head_i8_with, LmF32, LmI8, LmKernel};
pub use misc::{add, copy, embed, gated_mul, read_xor, read_xor_blocks, EmbedTable, Gate};
pub use sample::{sample, sample_to_device, IdFetch, IdSlot, PickTo, SampleConfig, SampleScratch};

/// Most rows passed by value in [`RowsArg`] / [`IdsArg`].
pub const SMALL: usize = 8;

/// Slots and positions of a call's rows, as the kernels read them (mirrors `common.cuh`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RowsArg {
    n: i32,
    slot: [i32; SMALL],
    pos: [i32; SMALL],
    dev: u64,
}

/// Token ids of a call, as the kernels read them (mirrors `common.cuh`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdsArg {
    n: i32,
    id: [i32; SMALL],
    dev: u64,
}

fn to_i32(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v)
        .map_err(|_| Error::unsupported(format!("{what} = {v} exceeds the kernels' i32 range")))
}

impl RowsArg {
    /// Up to [`SMALL`] `(slot, pos)` pairs by value; `None` when there are more.
    pub fn small(rows: &[(usize, usize)]) -> Result<Option<Self>> {
        if rows.len() > SMALL {
            return Ok(None);
        }
        let mut a = RowsArg { n: rows.len() as i32, ..Default::default() };
        for (i, &(s, p)) in rows.iter().enumerate() {
            a.slot[i] = to_i32(s, "slot")?;
            a.pos[i] = to_i32(p, "position")?;
        }
        Ok(Some(a))
    }
    /// `n` rows whose `(slot, pos)` pairs are in `table` (`[n][2]` i32 on the device).
    pub fn device(gpu: &Gpu, table: &CudaSlice<i32>, n: usize) -> Result<Self> {
        need(table.len(), 2 * n, "row table")?;
        Ok(RowsArg { n: to_i32(n, "rows")?, dev: dptr(gpu, table), ..Default::default() })
    }
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.n as usize
    }
    /// No rows.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
}

impl IdsArg {
    /// Up to [`SMALL`] ids by value; `None` when there are more.
    pub fn small(ids: &[u32]) -> Result<Option<Self>> {
        if ids.len() > SMALL {
            return Ok(None);
        }
        let mut a = IdsArg { n: ids.len() as i32, ..Default::default() };
        for (i, &t) in ids.iter().enumerate() {
            a.id[i] = to_i32(t as usize, "token id")?;
        }
        Ok(Some(a))
    }
    /// `n` ids in `table` (i32 on the device).
    pub fn device(gpu: &Gpu, table: &CudaSlice<i32>, n: usize) -> Result<Self> {
        need(table.len(), n, "id table")?;
        Ok(IdsArg { n: to_i32(n, "ids")?, dev: dptr(gpu, table), ..Default::default() })
    }
    /// Number of ids.
    pub fn len(&self) -> usize {
        self.n as usize
    }
    /// No ids.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
}

pub(crate) fn need(have: usize, want: usize, what: &str) -> Result<()> {
    if have < want {
        return Err(Error::shape(format!("{what}: buffer of {have} elements, need {want}")));
    }
    Ok(())
}

/// The raw device address of a buffer (for kernel arguments).
pub(crate) fn dptr<T>(gpu: &Gpu, s: &CudaSlice<T>) -> u64 {
    s.device_ptr(gpu.stream()).0
}

/// A zeroed device buffer.
pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(gpu: &Gpu, len: usize) -> Result<CudaSlice<T>> {
    gpu.bind()?;
    gpu.stream().alloc_zeros::<T>(len.max(1)).map_err(|e| dev_err("cuMemAlloc", e))
}

/// A device copy of `data`.
pub fn upload<T: DeviceRepr>(gpu: &Gpu, data: &[T]) -> Result<CudaSlice<T>> {
    gpu.bind()?;
    if data.is_empty() {
        return Err(Error::invalid("uploading an empty buffer"));
    }
    gpu.stream().clone_htod(data).map_err(|e| dev_err("host-to-device copy", e))
}

/// Overwrites the start of `dst` with `data` (queued on the stream).
pub fn write<T: DeviceRepr>(gpu: &Gpu, data: &[T], dst: &mut CudaSlice<T>) -> Result<()> {
    need(dst.len(), data.len(), "upload")?;
    if data.is_empty() {
        return Ok(());
    }
    let mut view = dst.slice_mut(..data.len());
    gpu.stream().memcpy_htod(data, &mut view).map_err(|e| dev_err("host-to-device copy", e))
}

/// Copies the first `out.len()` elements of `src` to the host (waits for the stream).
pub fn download<T: DeviceRepr>(gpu: &Gpu, src: &CudaSlice<T>, out: &mut [T]) -> Result<()> {
    need(src.len(), out.len(), "download")?;
    if out.is_empty() {
        return gpu.sync();
    }
    gpu.bind()?;
    let view = src.slice(..out.len());
    gpu.stream().memcpy_dtoh(&view, out).map_err(|e| dev_err("device-to-host copy", e))?;
    gpu.sync()
}

/// Grid and block of a launch, and the blocks per thread-block cluster along x (1: none;
/// more only on sm_90+, see `Gpu::cluster_max`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct Dims {
    pub grid: (u32, u32, u32),
    pub block: u32,
    pub cluster: u32,
}

impl Dims {
    /// A grid of `grid` blocks of `block` threads, no clusters.
    pub(crate) fn new(grid: (u32, u32, u32), block: u32) -> Self {
        Dims { grid, block, cluster: 1 }
    }
    /// A one-dimensional grid of `blocks` blocks of `block` threads, no clusters.
    pub(crate) fn line(blocks: u32, block: u32) -> Self {
        Dims::new((blocks, 1, 1), block)
    }
}

/// Launches `f` with the argument pointers `params`.
///
/// # Safety
/// `params` must point to values whose types and order match the kernel's signature exactly,
/// and every device address among them must be valid for the accesses the kernel makes with
/// the other arguments (each caller checks buffer lengths first).
pub(crate) unsafe fn launch_raw(
    gpu: &Gpu,
    f: &CudaFunction,
    d: Dims,
    smem: u32,
    params: &mut [*mut c_void],
    sizes: &[usize],
) -> Result<()> {
    if d.grid.0 == 0 || d.grid.1 == 0 || d.grid.2 == 0 {
        return Ok(());
    }
    {
        let mut rec = gpu.recorder();
        if rec.active {
            // SAFETY: `params[i]` points to `sizes[i]` bytes (this function's contract).
            unsafe { rec.record(f.cu_function(), (d, smem), params, sizes) };
            return Ok(());
        }
    }
    gpu.bind()?;
    launch_on(gpu, f.cu_function(), (d, smem), params)
}

/// Launches `f` on `gpu`'s stream with the programmatic-dependent-launch attribute when the
/// device supports it (every kernel waits for its predecessor with `PDL_WAIT`, common.cuh), and
/// as thread-block clusters when `Dims::cluster` > 1.
///
/// # Safety
/// As [`launch_raw`]: `params` must match `f`'s signature and point to valid arguments.
pub(crate) unsafe fn launch_on(
    gpu: &Gpu,
    f: cudarc::driver::sys::CUfunction,
    (Dims { grid, block, cluster }, smem): (Dims, u32),
    params: &mut [*mut c_void],
) -> Result<()> {
    use cudarc::driver::sys;
    // SAFETY: a zeroed attribute is a valid value of this plain C struct/union.
    let mut attrs: [sys::CUlaunchAttribute; 2] = std::mem::zeroed();
    let mut n = 0;
    if gpu.pdl() {
        let a = &mut attrs[n];
        a.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        a.value.programmaticStreamSerializationAllowed = 1;
        n += 1;
    }
    if cluster > 1 {
        let a = &mut attrs[n];
        a.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
        a.value.clusterDim.x = cluster;
        a.value.clusterDim.y = 1;
        a.value.clusterDim.z = 1;
        n += 1;
    }
    let cfg = sys::CUlaunchConfig {
        gridDimX: grid.0,
        gridDimY: grid.1,
        gridDimZ: grid.2,
        blockDimX: block,
        blockDimY: 1,
        blockDimZ: 1,
        sharedMemBytes: smem,
        hStream: gpu.stream().cu_stream(),
        attrs: attrs.as_mut_ptr(),
        numAttrs: n as u32,
    };
    // SAFETY: `cfg` and `attrs` live across the call; the caller vouches for `f` and `params`.
    sys::cuLaunchKernelEx(&cfg, f, params.as_mut_ptr(), std::ptr::null_mut())
        .result()
        .map_err(|e| dev_err("kernel launch", e))
}

/// `launch!(gpu, func, dims; a, b, c)`: launches with the local variables `a, b, c` as arguments;
/// `launch!(gpu, func, dims, smem; ...)` with `smem` bytes of dynamic shared memory.
macro_rules! launch {
    ($gpu:expr, $f:expr, $dims:expr; $($arg:ident),+ $(,)?) => {
        $crate::ops::launch!($gpu, $f, $dims, 0; $($arg),+)
    };
    ($gpu:expr, $f:expr, $dims:expr, $smem:expr; $($arg:ident),+ $(,)?) => {{
        let mut params = [$(std::ptr::addr_of!($arg) as *mut std::ffi::c_void),+];
        let sizes = [$(std::mem::size_of_val(&$arg)),+];
        // SAFETY: see the caller's comment: argument types match the kernel and buffer lengths
        // were checked; the argument locals outlive this call (the driver or the recorder copies
        // them).
        unsafe { $crate::ops::launch_raw($gpu, $f, $dims, $smem, &mut params, &sizes) }
    }};
}
pub(crate) use launch;
