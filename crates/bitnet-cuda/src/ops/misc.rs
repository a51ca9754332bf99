//! Embedding lookup and element-wise operations.

use super::{dptr, launch, need, to_i32, upload, Dims, IdsArg};
use crate::device::Gpu;
use bitnet_core::{Error, Result};
use cudarc::driver::CudaSlice;

/// An embedding table on the device, f16 or f32.
pub enum EmbedTable {
    /// f16 values (bits), `rows x cols`.
    F16 {
        /// Vocabulary rows.
        rows: usize,
        /// Hidden size.
        cols: usize,
        /// The table.
        data: CudaSlice<u16>,
    },
    /// f32 values, `rows x cols`.
    F32 {
        /// Vocabulary rows.
        rows: usize,
        /// Hidden size.
        cols: usize,
        /// The table.
        data: CudaSlice<f32>,
    },
}

impl EmbedTable {
    /// Uploads an f16 table (as bits).
    pub fn f16(gpu: &Gpu, bits: &[u16], rows: usize, cols: usize) -> Result<Self> {
        if bits.len() != rows * cols || rows == 0 || cols == 0 {
            return Err(Error::shape(format!("embedding of {rows} x {cols}")));
        }
        Ok(EmbedTable::F16 { rows, cols, data: upload(gpu, bits)? })
    }
    /// Uploads an f32 table.
    pub fn f32(gpu: &Gpu, vals: &[f32], rows: usize, cols: usize) -> Result<Self> {
        if vals.len() != rows * cols || rows == 0 || cols == 0 {
            return Err(Error::shape(format!("embedding of {rows} x {cols}")));
        }
        Ok(EmbedTable::F32 { rows, cols, data: upload(gpu, vals)? })
    }
    /// (rows, cols).
    pub fn dims(&self) -> (usize, usize) {
        match self {
            EmbedTable::F16 { rows, cols, .. } | EmbedTable::F32 { rows, cols, .. } => {
                (*rows, *cols)
            }
        }
    }
}

/// `out[r] = table[ids[r]]`; `host_ids` are the ids `ids` carries (range-checked here). The
/// kernel waits for its predecessor before it lets the next kernel launch, so nothing queued
/// after it starts before everything queued before it has finished (what
/// [`super::rope_attention`]'s `early` relies on).
pub fn embed(
    gpu: &Gpu,
    t: &EmbedTable,
    ids: &IdsArg,
    host_ids: &[u32],
    out: &mut CudaSlice<f32>,
) -> Result<()> {
    let (rows, cols) = t.dims();
    if let Some(&bad) = host_ids.iter().find(|&&i| i as usize >= rows) {
        return Err(Error::invalid(format!(
            "token id {bad} is out of range for a vocabulary of {rows}"
        )));
    }
    if host_ids.len() != ids.len() {
        return Err(Error::invalid("embed: ids and their device copy differ in length"));
    }
    need(out.len(), ids.len() * cols, "embed")?;
    let (op, a, d, n) =
        (dptr(gpu, out), *ids, to_i32(cols, "hidden")?, to_i32(rows, "vocabulary")?);
    let dims = Dims::line(ids.len() as u32, 256);
    match t {
        EmbedTable::F16 { data, .. } => {
            let tp = dptr(gpu, data);
            // Kernel: embed_f16(table, ids, out, d, rows); host ids < rows (checked), device
            // ids clamped.
            launch!(gpu, &gpu.k.embed_f16, dims; tp, a, op, d, n)
        }
        EmbedTable::F32 { data, .. } => {
            let tp = dptr(gpu, data);
            // Kernel: embed_f32(table, ids, out, d, rows); as embed_f16.
            launch!(gpu, &gpu.k.embed_f32, dims; tp, a, op, d, n)
        }
    }
}

fn elementwise_dims(gpu: &Gpu, len: usize) -> Dims {
    let blocks = len.div_ceil(256).min(gpu.info().sms as usize * 8).max(1);
    Dims::line(blocks as u32, 256)
}

/// A gated feed-forward's activation (see [`gated_mul`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// `relu(gate)^2 * up` (BitNet b1.58).
    Relu2,
    /// `silu(gate) * up` (LLaMA-architecture BitNet checkpoints).
    Silu,
}

/// `gate = act(gate) * up` over the first `len` values.
pub fn gated_mul(
    gpu: &Gpu,
    act: Gate,
    gate: &mut CudaSlice<f32>,
    up: &CudaSlice<f32>,
    len: usize,
) -> Result<()> {
    need(gate.len().min(up.len()), len, "gated_mul")?;
    let (gp, upp, n) = (dptr(gpu, gate), dptr(gpu, up), to_i32(len, "length")?);
    let f = match act {
        Gate::Relu2 => &gpu.k.relu2_mul,
        Gate::Silu => &gpu.k.silu_mul,
    };
    // Kernel: relu2_mul / silu_mul(gate, up, len); both hold len values (checked).
    launch!(gpu, f, elementwise_dims(gpu, len); gp, upp, n)
}

/// `x += y` over the first `len` values.
pub fn add(gpu: &Gpu, x: &mut CudaSlice<f32>, y: &CudaSlice<f32>, len: usize) -> Result<()> {
    need(x.len().min(y.len()), len, "add")?;
    let (xp, yp, n) = (dptr(gpu, x), dptr(gpu, y), to_i32(len, "length")?);
    // Kernel: add_f32(x, y, len); both hold len values (checked).
    launch!(gpu, &gpu.k.add, elementwise_dims(gpu, len); xp, yp, n)
}

/// `dst[dst_off..dst_off + len] = src[src_off..src_off + len]` (device copy on the stream).
pub fn copy(
    gpu: &Gpu,
    src: &CudaSlice<f32>,
    src_off: usize,
    dst: &mut CudaSlice<f32>,
    dst_off: usize,
    len: usize,
) -> Result<()> {
    need(src.len(), src_off + len, "copy source")?;
    need(dst.len(), dst_off + len, "copy destination")?;
    if len == 0 {
        return Ok(());
    }
    let (dp, sp, n) = (
        dptr(gpu, dst) + 4 * dst_off as u64,
        dptr(gpu, src) + 4 * src_off as u64,
        to_i32(len, "length")?,
    );
    // Kernel: copy_f32(dst, src, len); both ranges are inside their buffers (checked).
    launch!(gpu, &gpu.k.copy, elementwise_dims(gpu, len); dp, sp, n)
}

/// Threads per [`read_xor`] block; each reads four 16-byte words per grid stride.
const READ_THREADS: usize = 256;

/// Blocks [`read_xor`] runs for `words16` 16-byte words (one output value each).
pub fn read_xor_blocks(gpu: &Gpu, words16: usize) -> usize {
    words16.div_ceil(READ_THREADS * 4).clamp(1, 8 * gpu.info().sms as usize)
}

/// Reads `data`'s first `words16` 16-byte words once and writes, per block, the XOR of the
/// 32-bit words it read into `out[..read_xor_blocks(..)]` (their XOR is that of all the data):
/// a read-only stream at the GEMV's load width, which the kernel bench times for the device's
/// read bandwidth. `data` must start 16-byte aligned (device allocations do).
pub fn read_xor(
    gpu: &Gpu,
    data: &CudaSlice<u8>,
    words16: usize,
    out: &mut CudaSlice<u32>,
) -> Result<()> {
    need(data.len(), 16 * words16, "read_xor data")?;
    let blocks = read_xor_blocks(gpu, words16);
    need(out.len(), blocks, "read_xor output")?;
    if words16 == 0 {
        return Ok(());
    }
    let (p, o, n) = (dptr(gpu, data), dptr(gpu, out), words16 as i64);
    let dims = Dims::line(blocks as u32, READ_THREADS as u32);
    // Kernel: read_xor(p, n, out); p holds n 16-byte words and out one u32 per block (checked).
    launch!(gpu, &gpu.k.read_xor, dims; p, n, o)
}
