//! One token through the whole layer stack in one persistent kernel (`decode.cu`): the batch-1
//! decode path. [`DecodeStack`] holds the layers' launch description and the kernel's scratch;
//! [`decode_layers`] runs it.

use super::linear::{out_arg_at, DeviceTernary, OutArg, MAX_SEGMENTS};
use super::{dptr, launch, need, to_i32, upload, zeros, CacheDims, Dims, RowsArg};
use crate::device::{dev_err, Gpu};
use crate::layout::{CHUNK, TILE_ROWS};
use bitnet_core::{Error, Result};
use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
use cudarc::driver::{CudaFunction, CudaSlice, DeviceRepr, ValidAsZeroBits};

/// Threads per block (`DEC_THREADS`).
const THREADS: u32 = 1024;
/// Most values of a normed row (`DEC_MAX_D`).
pub const DECODE_MAX_WIDTH: usize = 8192;
/// Largest head dimension (`32 * DEC_ND`).
const MAX_HEAD_DIM: usize = 128;
/// Dynamic shared memory before the weight slots: four mbarriers, then the int8 row.
const SLOTS_AT: usize = 64 + DECODE_MAX_WIDTH;
/// Most rows of the hidden state one block adds into (`DEC_MAX_XROWS`).
const MAX_XROWS: usize = 256;

/// Mirrors `DecMat` in decode.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct DecMat {
    w: u64,
    o: OutArg,
    kc: i32,
    tiles: i32,
    add: i32,
}

/// Mirrors `DecLayer`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct DecLayer {
    m: [DecMat; 4],
    norm: [u64; 4],
}

// SAFETY: plain `repr(C)` data (integers, floats, device addresses) with the layout of the CUDA
// struct it mirrors; all-zero bits are a valid value.
unsafe impl DeviceRepr for DecLayer {}
unsafe impl ValidAsZeroBits for DecLayer {}

/// Mirrors `DecArgs`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct DecArgs {
    layers: u64,
    x: u64,
    q: u64,
    k: u64,
    v: u64,
    att: u64,
    gate: u64,
    up: u64,
    part: u64,
    sync: u64,
    kc: u64,
    vc: u64,
    inv_freq: u64,
    rows: RowsArg,
    nlayers: i32,
    slots: i32,
    max_seq: i32,
    hidden: i32,
    qdim: i32,
    inter: i32,
    heads: i32,
    kvh: i32,
    hd: i32,
    eps: f32,
    scale: f32,
    max_splits: i32,
    split_len: i32,
    slot_off: [u32; 4],
    trace: u64,
}

/// The shape of the stack.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StackDims {
    /// Model width.
    pub hidden: usize,
    /// FFN width.
    pub inter: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Head dimension.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub eps: f32,
    /// Fewest positions per attention split, as [`super::attention_splits`] takes it.
    pub attn_split_len: usize,
}

/// One layer: the fused q/k/v, o, fused gate/up and down projections, and the input,
/// attention-sub, post-attention and FFN-sub norm weights.
pub struct StackLayer<'a> {
    /// q/k/v, o, gate/up, down.
    pub mats: [&'a DeviceTernary; 4],
    /// input, attention-sub, post-attention, FFN-sub.
    pub norms: [&'a CudaSlice<f32>; 4],
}

/// The layer stack as the persistent decode kernel reads it, with its scratch. It refers to the
/// layers' weights by address: keep them alive (and unmoved on the device) as long as this.
pub struct DecodeStack {
    layers: CudaSlice<DecLayer>,
    nlayers: usize,
    dims: StackDims,
    scratch: Vec<CudaSlice<f32>>,
    part: CudaSlice<f32>,
    sync: CudaSlice<u32>,
    max_splits: usize,
    slot_off: [u32; 4],
    smem: u32,
    grid: u32,
    trace: Option<CudaSlice<u64>>,
    /// `decode_layers` (its own module, compiled on first use).
    kernel: CudaFunction,
}

/// Global-timer stamps per block and layer in a trace (`DEC_STAMPS`, decode.cu says which).
pub const DECODE_STAMPS: usize = 20;

/// Why the stack cannot run as one kernel, if it cannot.
fn check(layers: &[StackLayer<'_>], d: &StackDims) -> std::result::Result<(), String> {
    let (h, qd, kvd) = (d.hidden, d.heads * d.head_dim, d.kv_heads * d.head_dim);
    if layers.is_empty() || d.heads == 0 || d.kv_heads == 0 || !d.heads.is_multiple_of(d.kv_heads) {
        return Err("no layers, or heads not a multiple of kv heads".into());
    }
    if d.head_dim > MAX_HEAD_DIM || !d.head_dim.is_multiple_of(2) {
        return Err(format!("head dimension {} (at most {MAX_HEAD_DIM}, even)", d.head_dim));
    }
    if [h, qd, d.inter].iter().any(|w| !w.is_multiple_of(4)) {
        return Err(format!("normed rows of {h}, {qd} and {} values (multiples of 4)", d.inter));
    }
    let want: [(&[usize], usize); 4] =
        [(&[qd, kvd, kvd], h), (&[h], qd), (&[d.inter; 2], h), (&[h], d.inter)];
    for (i, l) in layers.iter().enumerate() {
        for (p, (m, (rows, cols))) in l.mats.iter().zip(want).enumerate() {
            if m.segment_rows() != rows || m.cols() != cols || m.padded_cols() > DECODE_MAX_WIDTH {
                return Err(format!(
                    "layer {i} projection {p}: {:?} x {}",
                    m.segment_rows(),
                    m.cols()
                ));
            }
        }
        let widths = [h, qd, h, d.inter];
        if l.norms.iter().zip(widths).any(|(n, w)| n.len() < w) {
            return Err(format!("layer {i}: norm weights shorter than their rows"));
        }
    }
    Ok(())
}

impl DecodeStack {
    /// Prepares `layers` for [`decode_layers`]; [`Error::Unsupported`] (saying why) when their
    /// shapes or the device do not fit the kernel.
    pub fn new(gpu: &Gpu, layers: &[StackLayer<'_>], dims: StackDims) -> Result<Self> {
        let off = |why: String| Err(Error::unsupported(format!("one-kernel decode: {why}")));
        if let Err(why) = check(layers, &dims) {
            return off(why);
        }
        if gpu.info().cc.0 < 9 {
            return off("needs compute capability 9.0 (bulk copies into shared memory)".into());
        }
        let kernel = gpu.decode_kernel()?;
        let f = &kernel;
        let grid = gpu.info().sms;
        let xrows = (layers[0].mats[1].rows_padded / TILE_ROWS).div_ceil(grid as usize) * TILE_ROWS;
        if xrows > MAX_XROWS {
            return off(format!(
                "{xrows} rows of the hidden state per block (at most {MAX_XROWS})"
            ));
        }
        // Each block's share of a matrix: its contiguous tile range, at most ceil(tiles / grid).
        let mut slot_off = [0u32; 4];
        let mut at = SLOTS_AT;
        for (p, m) in layers[0].mats.iter().enumerate() {
            slot_off[p] = at as u32;
            let tiles = m.rows_padded / TILE_ROWS;
            at += tiles.div_ceil(grid as usize) * (m.kp / CHUNK) * TILE_ROWS * 16;
            at = at.div_ceil(128) * 128;
        }
        let attr = |a| gpu.context().attribute(a).map_err(|e| dev_err("cuDeviceGetAttribute", e));
        let optin =
            attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?;
        let fattr = |a| f.get_attribute(a).map_err(|e| dev_err("cuFuncGetAttribute", e));
        let stat = fattr(CUfunction_attribute::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)?;
        if at + stat.max(0) as usize > optin.max(0) as usize {
            return off(format!("{at} B of weight slots do not fit in shared memory"));
        }
        let smem = at as u32;
        f.set_attribute(
            CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            smem as i32,
        )
        .map_err(|e| dev_err("cuFuncSetAttribute", e))?;
        let per_sm = f
            .occupancy_max_active_blocks_per_multiprocessor(THREADS, at, None)
            .map_err(|e| dev_err("occupancy", e))?;
        if per_sm < 1 {
            return off("a block does not fit on an SM".into());
        }
        let (qd, kvd) = (dims.heads * dims.head_dim, dims.kv_heads * dims.head_dim);
        // q, k, v, att, gate, up.
        let mut scratch = Vec::new();
        for n in [qd, kvd, kvd, qd, dims.inter, dims.inter] {
            scratch.push(zeros::<f32>(gpu, n)?);
        }
        let ptr = |i: usize| dptr(gpu, &scratch[i]);
        let outs =
            [[ptr(0), ptr(1), ptr(2)], [0; MAX_SEGMENTS], [ptr(4), ptr(5), 0], [0; MAX_SEGMENTS]];
        let mut host = Vec::with_capacity(layers.len());
        for l in layers {
            let mut dl = DecLayer::default();
            for (p, m) in l.mats.iter().enumerate() {
                dl.m[p] = DecMat {
                    w: dptr(gpu, &m.data),
                    o: out_arg_at(m, outs[p]),
                    kc: to_i32(m.kp / CHUNK, "chunks")?,
                    tiles: to_i32(m.rows_padded / TILE_ROWS, "tiles")?,
                    add: i32::from(p == 1 || p == 3),
                };
                dl.norm[p] = dptr(gpu, l.norms[p]);
            }
            // The norms read their weights four at a time.
            if dl.norm.iter().any(|p| !p.is_multiple_of(16)) {
                return off("norm weights not 16-byte aligned".into());
            }
            host.push(dl);
        }
        // Split as the separate attention kernels split one row (their limit, reached at long
        // contexts, and dims.attn_split_len).
        let max_splits = super::attention_split_limit(gpu, 1, dims.heads);
        Ok(DecodeStack {
            layers: upload(gpu, &host)?,
            nlayers: layers.len(),
            dims,
            scratch,
            part: zeros(gpu, dims.heads * max_splits * (dims.head_dim + 2))?,
            sync: zeros(gpu, 2 + dims.heads)?,
            max_splits,
            slot_off,
            smem,
            grid,
            kernel,
            trace: None,
        })
    }

    /// Turns stamping on (for `bitnet-cuda-bench --stack`): each launch then writes
    /// [`DECODE_STAMPS`] global-timer stamps per block and layer, read by [`DecodeStack::trace`].
    pub fn stamp(&mut self, gpu: &Gpu) -> Result<()> {
        let n = self.grid as usize * self.nlayers * DECODE_STAMPS;
        self.trace = Some(zeros(gpu, n)?);
        Ok(())
    }

    /// The last launch's stamps: `[block][layer][DECODE_STAMPS]` nanoseconds (empty when off).
    pub fn trace(&self, gpu: &Gpu) -> Result<Vec<u64>> {
        let Some(t) = &self.trace else { return Ok(Vec::new()) };
        let mut out = vec![0u64; t.len()];
        super::download(gpu, t, &mut out)?;
        Ok(out)
    }

    /// Blocks per launch (one per SM).
    pub fn blocks(&self) -> usize {
        self.grid as usize
    }
}

/// Runs one token (hidden state `x`, updated in place: the residual stream after the last layer)
/// through every layer of `s`: RoPE and attention at the row's slot and position, whose keys and
/// values go into the cache (`c`; `inv_freq`: the `head_dim / 2` RoPE inverse frequencies).
#[allow(clippy::too_many_arguments)]
pub fn decode_layers(
    gpu: &Gpu,
    s: &DecodeStack,
    x: &mut CudaSlice<f32>,
    kc: &mut CudaSlice<f32>,
    vc: &mut CudaSlice<f32>,
    c: &CacheDims,
    rows: &RowsArg,
    inv_freq: &CudaSlice<f32>,
) -> Result<()> {
    let d = &s.dims;
    if rows.len() != 1
        || c.layers < s.nlayers
        || c.kv_heads != d.kv_heads
        || c.head_dim != d.head_dim
    {
        return Err(Error::invalid(format!(
            "one-kernel decode of {} rows over a cache of {} layers x {} x {}",
            rows.len(),
            c.layers,
            c.kv_heads,
            c.head_dim
        )));
    }
    need(x.len(), d.hidden, "hidden state")?;
    need(kc.len().min(vc.len()), c.len()?, "KV cache")?;
    need(inv_freq.len(), d.head_dim / 2, "rope frequencies")?;
    if !dptr(gpu, x).is_multiple_of(16) {
        return Err(Error::invalid("one-kernel decode: hidden state not 16-byte aligned"));
    }
    let p = |i: usize| dptr(gpu, &s.scratch[i]);
    let a = DecArgs {
        layers: dptr(gpu, &s.layers),
        x: dptr(gpu, x),
        q: p(0),
        k: p(1),
        v: p(2),
        att: p(3),
        gate: p(4),
        up: p(5),
        part: dptr(gpu, &s.part),
        sync: dptr(gpu, &s.sync),
        kc: dptr(gpu, kc),
        vc: dptr(gpu, vc),
        inv_freq: dptr(gpu, inv_freq),
        rows: *rows,
        nlayers: to_i32(s.nlayers, "layers")?,
        slots: to_i32(c.slots, "slots")?,
        max_seq: to_i32(c.max_seq, "max_seq")?,
        hidden: d.hidden as i32,
        qdim: (d.heads * d.head_dim) as i32,
        inter: d.inter as i32,
        heads: d.heads as i32,
        kvh: d.kv_heads as i32,
        hd: d.head_dim as i32,
        eps: d.eps,
        scale: 1.0 / (d.head_dim as f32).sqrt(),
        max_splits: s.max_splits as i32,
        split_len: to_i32(super::split_len_pow2(d.attn_split_len), "attention split length")?,
        slot_off: s.slot_off,
        trace: s.trace.as_ref().map_or(0, |t| dptr(gpu, t)),
    };
    let dims = Dims::line(s.grid, THREADS);
    // Kernel: decode_layers(a): every address in `a` is a live buffer of the size the kernel
    // reads (checked here and in DecodeStack::new); grid = SMs, one resident block each
    // (occupancy checked in new), so the grid barriers cannot wait on an unscheduled block.
    launch!(gpu, &s.kernel, dims, s.smem; a)
}
