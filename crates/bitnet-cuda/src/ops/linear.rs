//! Ternary projections (GEMV / tensor-core GEMM), RMSNorm with fused quantization, and the
//! lm_head (int8 or f32 rows).

use super::{dptr, launch, need, to_i32, upload, zeros, Dims};
use crate::device::Gpu;
use crate::layout::{PackedTernary, CHUNK, TILE_ROWS};
use bitnet_core::{Error, Result};
use cudarc::driver::CudaSlice;

/// A ternary weight in the GPU layout: one matrix, or up to three stacked matrices that read
/// the same input (fused q/k/v, gate/up), each with its own rows and scale.
pub struct DeviceTernary {
    cols: usize,
    pub(super) kp: usize,
    pub(super) rows_padded: usize,
    /// (rows, padded rows, scale) of each stacked matrix, in row order.
    segs: Vec<(usize, usize, f32)>,
    pub(super) data: CudaSlice<u32>,
}

/// Most matrices stacked in one [`DeviceTernary`] (`OutArg` in common.cuh).
pub const MAX_SEGMENTS: usize = 3;

/// Output segments of a projection, as the kernels read them (mirrors `common.cuh`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct OutArg {
    y: [u64; MAX_SEGMENTS],
    n: [i32; MAX_SEGMENTS],
    off: [i32; MAX_SEGMENTS],
    s: [f32; MAX_SEGMENTS],
    segs: i32,
    add: i32,
}

impl OutArg {
    /// The same output added into (one stacked matrix): `y += W · x`.
    pub(super) fn adding(self) -> Result<Self> {
        if self.segs != 1 {
            return Err(Error::unsupported(format!(
                "adding a projection of {} stacked matrices into one output",
                self.segs
            )));
        }
        Ok(OutArg { add: 1, ..self })
    }
}

impl DeviceTernary {
    /// Uploads a packed matrix; `scale` multiplies every output (`s_w`).
    pub fn upload(gpu: &Gpu, w: &PackedTernary, scale: f32) -> Result<Self> {
        if !scale.is_finite() {
            return Err(Error::invalid(format!("weight scale {scale} is not finite")));
        }
        to_i32(w.padded_rows() * w.chunks(), "ternary chunks")?;
        gpu.ensure_split_scratch(w.padded_rows())?;
        Ok(DeviceTernary {
            cols: w.cols(),
            kp: w.padded_cols(),
            rows_padded: w.padded_rows(),
            segs: vec![(w.rows(), w.padded_rows(), scale)],
            data: upload(gpu, w.words())?,
        })
    }
    /// Stacks matrices with the same input width into one (device-to-device copies; the parts
    /// are freed): one kernel then computes every part's output.
    pub fn stack(gpu: &Gpu, parts: Vec<DeviceTernary>) -> Result<Self> {
        let Some(first) = parts.first() else {
            return Err(Error::invalid("stacking no matrices"));
        };
        let (cols, kp) = (first.cols, first.kp);
        let segs: Vec<_> = parts.iter().flat_map(|p| p.segs.iter().copied()).collect();
        if segs.len() > MAX_SEGMENTS || parts.iter().any(|p| p.kp != kp || p.cols != cols) {
            return Err(Error::shape(format!(
                "stacking {} matrices (at most {MAX_SEGMENTS}, all {cols} columns wide)",
                segs.len()
            )));
        }
        let rows_padded: usize = parts.iter().map(|p| p.rows_padded).sum();
        to_i32(rows_padded * (kp / CHUNK), "ternary chunks")?;
        gpu.ensure_split_scratch(rows_padded)?;
        let mut data = zeros::<u32>(gpu, parts.iter().map(|p| p.data.len()).sum())?;
        let mut at = 0;
        for p in &parts {
            let mut dst = data.slice_mut(at..at + p.data.len());
            gpu.stream()
                .memcpy_dtod(&p.data, &mut dst)
                .map_err(|e| crate::device::dev_err("device-to-device copy", e))?;
            at += p.data.len();
        }
        gpu.sync()?;
        Ok(DeviceTernary { cols, kp, rows_padded, segs, data })
    }
    /// Output features (over every stacked matrix).
    pub fn rows(&self) -> usize {
        self.segs.iter().map(|s| s.0).sum()
    }
    /// Output features of each stacked matrix.
    pub fn segment_rows(&self) -> Vec<usize> {
        self.segs.iter().map(|s| s.0).collect()
    }
    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Padded input features (the activation row stride).
    pub fn padded_cols(&self) -> usize {
        self.kp
    }
    /// The weight scale (of the first stacked matrix).
    pub fn scale(&self) -> f32 {
        self.segs[0].2
    }
    /// Bytes the kernels read per call.
    pub fn bytes(&self) -> usize {
        self.data.len() * 4
    }
}

/// Per-token int8 activations (BitLinear quantization): `rows x kp` values, each row's scale
/// `s = 127 / max|x|` and `Σq`.
pub struct QuantActs {
    pub(super) q: CudaSlice<i8>,
    pub(super) scale: CudaSlice<f32>,
    pub(super) sum: CudaSlice<i32>,
    pub(super) rows: usize,
    pub(super) kp: usize,
}

impl QuantActs {
    /// Room for `rows` rows of `kp` (a multiple of 128) values.
    pub fn new(gpu: &Gpu, rows: usize, kp: usize) -> Result<Self> {
        if kp == 0 || !kp.is_multiple_of(crate::layout::K_ALIGN) {
            return Err(Error::invalid(format!("activation stride {kp} is not a multiple of 128")));
        }
        Ok(QuantActs {
            q: zeros(gpu, rows * kp)?,
            scale: zeros(gpu, rows)?,
            sum: zeros(gpu, rows)?,
            rows: 0,
            kp,
        })
    }
    /// True if `rows` rows of stride `kp` (a multiple of 128) fit; the stride follows the last
    /// quantization, so one buffer serves inputs of several widths.
    pub fn fits(&self, rows: usize, kp: usize) -> bool {
        kp.is_multiple_of(crate::layout::K_ALIGN)
            && kp > 0
            && rows <= self.scale.len()
            && rows * kp <= self.q.len()
    }
    /// Takes the buffer for `rows` rows of width `d` (stride `padded_cols(d)`), which the
    /// quantization about to be launched writes; an error, leaving it as it was, if they do not
    /// fit.
    pub(super) fn claim(&mut self, rows: usize, d: usize) -> Result<()> {
        let kp = crate::layout::padded_cols(d);
        if !self.fits(rows, kp) {
            return Err(Error::shape(format!("quantized activations do not fit {rows} x {d}")));
        }
        (self.kp, self.rows) = (kp, rows);
        Ok(())
    }
    /// Rows written by the last quantization.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Row stride.
    pub fn stride(&self) -> usize {
        self.kp
    }
    /// Copies (values, scales, sums) of the first `rows` rows to the host (tests).
    pub fn download(&self, gpu: &Gpu, rows: usize) -> Result<(Vec<i8>, Vec<f32>, Vec<i32>)> {
        let mut q = vec![0i8; rows * self.kp];
        let mut s = vec![0f32; rows];
        let mut x = vec![0i32; rows];
        super::download(gpu, &self.q, &mut q)?;
        super::download(gpu, &self.scale, &mut s)?;
        super::download(gpu, &self.sum, &mut x)?;
        Ok((q, s, x))
    }
}

const NORM_THREADS: u32 = 256;
/// Values per thread of the RMSNorm kernels (`NORM_PER`, `NORM_PER_WIDE` in norm.cu).
const NORM_PER: usize = 8;
const NORM_PER_WIDE: usize = 16;

/// `out[r] = w * x[r] / rms(x[r])` for `rows` rows of width `d = w.len()`; when `q` is given the
/// rows are also quantized into it (BitLinear quantization, bit-exact with the CPU's).
#[allow(clippy::too_many_arguments)]
pub fn rms_norm(
    gpu: &Gpu,
    x: &CudaSlice<f32>,
    w: &CudaSlice<f32>,
    d: usize,
    eps: f32,
    rows: usize,
    out: &mut CudaSlice<f32>,
    q: Option<&mut QuantActs>,
) -> Result<()> {
    need(x.len(), rows * d, "rms_norm input")?;
    norm_launch(gpu, (dptr(gpu, x), None), w, d, eps, rows, out, q)
}

/// [`rms_norm`] of `relu(gate)² * up` (the FFN's activation fused into its sub-norm; `gate` is
/// not written).
#[allow(clippy::too_many_arguments)]
pub fn relu2_rms_norm(
    gpu: &Gpu,
    gate: &CudaSlice<f32>,
    up: &CudaSlice<f32>,
    w: &CudaSlice<f32>,
    d: usize,
    eps: f32,
    rows: usize,
    out: &mut CudaSlice<f32>,
    q: Option<&mut QuantActs>,
) -> Result<()> {
    need(gate.len(), rows * d, "relu2_rms_norm gate")?;
    need(up.len(), rows * d, "relu2_rms_norm up")?;
    norm_launch(gpu, (dptr(gpu, gate), Some(dptr(gpu, up))), w, d, eps, rows, out, q)
}

/// Launches `rms_norm_q` on input `xy.0`, or on relu(`xy.0`)² * `xy.1` where `xy.1` is set;
/// lengths of both checked by the callers.
#[allow(clippy::too_many_arguments)]
fn norm_launch(
    gpu: &Gpu,
    xy: (u64, Option<u64>),
    w: &CudaSlice<f32>,
    d: usize,
    eps: f32,
    rows: usize,
    out: &mut CudaSlice<f32>,
    q: Option<&mut QuantActs>,
) -> Result<()> {
    need(w.len(), d, "rms_norm weight")?;
    need(out.len(), rows * d, "rms_norm output")?;
    // Values per thread: 8 (rms_norm_q) up to 8192 values a row, 16 (rms_norm_q_wide) up to 16384.
    let (kernel, per) = match d {
        d if d <= NORM_PER * 1024 => (&gpu.k.rms_norm_q, NORM_PER),
        d if d <= NORM_PER_WIDE * 1024 => (&gpu.k.rms_norm_q_wide, NORM_PER_WIDE),
        _ => return Err(Error::unsupported(format!("RMSNorm over {d} values (at most 16384)"))),
    };
    let ((xp, up), wp, op) = (xy, dptr(gpu, w), dptr(gpu, out));
    // The kernel's y is the relu² multiplier, and act says it is set.
    let (yp, act) = (up.unwrap_or(0), i32::from(up.is_some()));
    let (dd, mut kp) = (to_i32(d, "width")?, 0i32);
    let (mut qp, mut sp, mut mp) = (0u64, 0u64, 0u64);
    if let Some(q) = q {
        q.claim(rows, d)?;
        (qp, sp, mp, kp) = (dptr(gpu, &q.q), dptr(gpu, &q.scale), dptr(gpu, &q.sum), q.kp as i32);
    }
    let block = (d.div_ceil(per).div_ceil(32) * 32).clamp(32, 1024) as u32;
    let dims = Dims::line(rows as u32, block);
    // Kernel: rms_norm_q(_wide)(x, y, w, out, q, qscale, qsum, d, kp, eps, act); lengths checked
    // by the callers and above (y, set exactly when act is 1, as long as x), and block * per
    // >= d.
    launch!(gpu, kernel, dims; xp, yp, wp, op, qp, sp, mp, dd, kp, eps, act)
}

/// BitLinear quantization of `rows` rows of width `d` from `x` into `q`.
pub fn quantize_act(
    gpu: &Gpu,
    x: &CudaSlice<f32>,
    d: usize,
    rows: usize,
    q: &mut QuantActs,
) -> Result<()> {
    need(x.len(), rows * d, "quantize input")?;
    let dd = to_i32(d, "width")?;
    q.claim(rows, d)?;
    let (xp, qp, sp, mp) = (dptr(gpu, x), dptr(gpu, &q.q), dptr(gpu, &q.scale), dptr(gpu, &q.sum));
    let kp = q.kp as i32;
    let dims = Dims::line(rows as u32, NORM_THREADS);
    // Kernel: quantize_act(x, q, qscale, qsum, d, kp); lengths checked above.
    launch!(gpu, &gpu.k.quantize_act, dims; xp, qp, sp, mp, dd, kp)
}

/// `out[t] = (q[t] · W) * s_w / s_a[t]` for the first `rows` quantized rows: the dp4a GEMV for up
/// to 4 rows (`BITNET_GEMV_MAX_M`, at most 8), the int8 tensor-core GEMM above.
pub fn ternary_matmul(
    gpu: &Gpu,
    w: &DeviceTernary,
    q: &QuantActs,
    rows: usize,
    out: &mut CudaSlice<f32>,
) -> Result<()> {
    ternary_matmul_multi(gpu, w, q, rows, &mut [out])
}

/// `acc[t] += (q[t] · W) * s_w / s_a[t]` (a layer's residual add in the projection's store: the
/// product rounded, then added, as [`ternary_matmul`] and a separate add would); one matrix.
pub fn ternary_matmul_add(
    gpu: &Gpu,
    w: &DeviceTernary,
    q: &QuantActs,
    rows: usize,
    acc: &mut CudaSlice<f32>,
) -> Result<()> {
    let o = out_arg(gpu, w, rows, &mut [acc])?.adding()?;
    matmul(gpu, w, q, rows, o)
}

/// [`ternary_matmul`] of a stacked matrix: stacked matrix `j`'s rows go to `outs[j]`
/// (`rows x` its rows).
pub fn ternary_matmul_multi(
    gpu: &Gpu,
    w: &DeviceTernary,
    q: &QuantActs,
    rows: usize,
    outs: &mut [&mut CudaSlice<f32>],
) -> Result<()> {
    let o = out_arg(gpu, w, rows, outs)?;
    matmul(gpu, w, q, rows, o)
}

/// The GEMV or GEMM of `rows` quantized rows into `o`.
fn matmul(gpu: &Gpu, w: &DeviceTernary, q: &QuantActs, rows: usize, o: OutArg) -> Result<()> {
    if q.kp != w.kp || rows > q.rows || rows == 0 {
        return Err(Error::shape(format!(
            "ternary matmul: weight stride {} vs activations {} ({} of {} rows quantized)",
            w.kp, q.kp, rows, q.rows
        )));
    }
    let (wp, xp, sa, sx) =
        (dptr(gpu, &w.data), dptr(gpu, &q.q), dptr(gpu, &q.scale), dptr(gpu, &q.sum));
    let (kc, kp) = ((w.kp / CHUNK) as i32, w.kp as i32);
    if let Some(f) = gpu.k.gemv(rows).filter(|_| rows <= gpu.knobs().gemv_max_rows()) {
        let tiles = w.rows_padded / TILE_ROWS;
        let (bps, groups) = gpu.knobs().gemv_shape(tiles, rows, gpu.info().sms as usize);
        let grid = if bps == 0 { tiles } else { tiles.min(bps * gpu.info().sms as usize) };
        let dims = Dims::line(grid as u32, 128 * groups as u32);
        let tiles = to_i32(tiles, "tiles")?;
        // Kernel: gemv_mM(W, xq, sa, sx, o, kc, kp, tiles); W holds tiles x 8 rows x kc chunks,
        // xq rows x kp, each o.y[j] rows x o.n[j] (checked above).
        return launch!(gpu, f, dims; wp, xp, sa, sx, o, kc, kp, tiles);
    }
    let m_tok = to_i32(rows, "rows")?;
    let (f, nt) = match rows {
        0..=16 => (&gpu.k.gemm2, 2),
        17..=32 => (&gpu.k.gemm4, 4),
        _ => (&gpu.k.gemm8, 8),
    };
    let groups = rows.div_ceil(nt * 8);
    let row_blocks = w.rows_padded.div_ceil(GEMM_ROWS);
    let (ws, ws_stride) = gpu.split_scratch();
    let kc_n = w.kp / CHUNK;
    // Split K when one pass would leave SMs idle: aim at a few blocks per SM with at least two
    // chunks per split, while every split's partial sums fit the scratch.
    let slots = groups * nt * 8;
    let most = if row_blocks * GEMM_ROWS <= ws_stride { SPLIT_SLOTS / slots } else { 1 };
    let want =
        (gpu.knobs().split_blocks_per_sm() * gpu.info().sms as usize).div_ceil(row_blocks * groups);
    let splits = want.clamp(1, (kc_n / 2).clamp(1, 16).min(most.max(1)));
    let (ws_stride, rows_padded) = (ws_stride as i32, to_i32(w.rows_padded, "rows")?);
    let dims = Dims::new((row_blocks as u32, groups as u32, splits as u32), 128);
    // Kernel: gemm_mma_tNT(W, xq, sa, sx, o, m_tok, kc, kp, rows_padded, ws, ws_stride): same
    // buffers as the GEMV (weight rows past rows_padded are not read); with splits > 1, ws
    // holds SPLIT_SLOTS x ws_stride int32 (splits x slots <= SPLIT_SLOTS token rows, rows <
    // row_blocks * GEMM_ROWS <= ws_stride) and the kernel writes partial sums there instead.
    launch!(gpu, f, dims; wp, xp, sa, sx, o, m_tok, kc, kp, rows_padded, ws, ws_stride)?;
    if splits == 1 {
        return Ok(());
    }
    let (slots, sp) = (slots as i32, splits as i32);
    let dims = Dims::line((rows * w.rows_padded).div_ceil(256) as u32, 256);
    // Kernel: gemm_reduce(ws, sa, sx, o, m_tok, rows_padded, slots, ws_stride, splits): reads
    // the slices the GEMM just wrote (same bounds), writes o as the GEMV would.
    launch!(gpu, &gpu.k.gemm_reduce, dims; ws, sa, sx, o, m_tok, rows_padded, slots, ws_stride, sp)
}

/// The kernels' output argument for `rows` tokens of `w` into `outs` (one per stacked matrix,
/// lengths checked).
pub(super) fn out_arg(
    gpu: &Gpu,
    w: &DeviceTernary,
    rows: usize,
    outs: &mut [&mut CudaSlice<f32>],
) -> Result<OutArg> {
    if outs.len() != w.segs.len() {
        return Err(Error::shape(format!(
            "ternary matmul: {} outputs for {} stacked matrices",
            outs.len(),
            w.segs.len()
        )));
    }
    for (&(n, _, _), y) in w.segs.iter().zip(outs.iter()) {
        need(y.len(), rows * n, "ternary matmul output")?;
    }
    let mut ptrs = [0u64; MAX_SEGMENTS];
    for (p, y) in ptrs.iter_mut().zip(outs.iter()) {
        *p = dptr(gpu, &**y);
    }
    Ok(out_arg_at(w, ptrs))
}

/// The output segments of `w` written to the device addresses `ptrs` (one per stacked matrix,
/// each of room for its rows: the caller's check).
pub(super) fn out_arg_at(w: &DeviceTernary, ptrs: [u64; MAX_SEGMENTS]) -> OutArg {
    let mut o = OutArg { segs: w.segs.len() as i32, ..Default::default() };
    let mut off = 0;
    for (j, &(n, np, s)) in w.segs.iter().enumerate() {
        (o.y[j], o.n[j], o.off[j], o.s[j]) = (ptrs[j], n as i32, off as i32, s);
        off += np;
    }
    o
}

/// Weight rows per GEMM block (`GEMM_ROWS` in gemm.cu).
pub(crate) const GEMM_ROWS: usize = 128;

/// Token rows (summed over splits) the split-K GEMM scratch holds.
pub const SPLIT_SLOTS: usize = 512;
