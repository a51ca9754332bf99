//! One token's RMSNorm and BitLinear quantization fused into the ternary GEMV that reads them
//! (`gemv_norm.cu`): one kernel where decode otherwise runs a norm kernel and a GEMV.

use super::linear::{out_arg, DeviceTernary, QuantActs};
use super::{dptr, launch, need, to_i32, Dims};
use crate::device::Gpu;
use crate::layout::{padded_cols, CHUNK, TILE_ROWS};
use bitnet_core::{Error, Result};
use cudarc::driver::CudaSlice;

/// Most input features of the fused kernel (`GEMV_NORM_WIDE_MAX`); past `GEMV_NORM_MAX` (8192)
/// its wide form runs, which reads the row twice.
pub const NORM_GEMV_MAX_COLS: usize = 16384;
/// Most input features of the fused kernel's one-pass form (`GEMV_NORM_MAX`).
const NORM_GEMV_ONE_PASS_COLS: usize = 8192;

/// Whether the fused kernel takes rows of `d` features: at most [`NORM_GEMV_MAX_COLS`], a
/// multiple of 4 (it reads them four at a time).
pub fn norm_gemv_fits(d: usize) -> bool {
    d <= NORM_GEMV_MAX_COLS && d.is_multiple_of(4)
}

/// What the norm normalizes (one row of `w.cols()` values each).
pub enum NormSrc<'a> {
    /// The row itself.
    Plain(&'a CudaSlice<f32>),
    /// `relu(gate)² * up` (`gate` is not written).
    Relu2(&'a CudaSlice<f32>, &'a CudaSlice<f32>),
    /// `silu(gate) * up` (`gate` is not written).
    Silu(&'a CudaSlice<f32>, &'a CudaSlice<f32>),
}

impl NormSrc<'_> {
    /// Whether [`norm_ternary_gemv`] has a kernel mode for this input with (`normed`) or
    /// without a norm weight: plain and SiLU rows either way, relu² rows normed (the models'
    /// combinations).
    pub fn fused(&self, normed: bool) -> bool {
        match self {
            NormSrc::Plain(_) | NormSrc::Silu(..) => true,
            NormSrc::Relu2(..) => normed,
        }
    }
}

/// The norm argument of `gemv_norm_m1` (mirrors `NormArg` in gemv_norm.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct NormArg {
    x: u64,
    y: u64,
    w: u64,
    out: u64,
    q: u64,
    qscale: u64,
    qsum: u64,
    d: i32,
    kp: i32,
    eps: f32,
}

/// One token: `out = rms_norm(src) * nw` (what [`super::rms_norm`] writes, within about an ulp:
/// a value is scaled as `(x·w)·inv`, not `w·(x·inv)`) with its int8 quantization in `q` (exactly
/// the CPU's quantization of `out`), then `outs = W · q` as
/// [`super::ternary_matmul_multi`] computes it (with `add`, `outs[0] += W · q` as
/// [`super::ternary_matmul_add`]); one kernel. `nw` holds `w.cols()` weights; with `None`
/// there is no norm: `out` = `src` itself (plain or SiLU-gated) and `q` its quantization.
#[allow(clippy::too_many_arguments)]
pub fn norm_ternary_gemv(
    gpu: &Gpu,
    src: NormSrc<'_>,
    nw: Option<&CudaSlice<f32>>,
    eps: f32,
    out: &mut CudaSlice<f32>,
    q: &mut QuantActs,
    w: &DeviceTernary,
    outs: &mut [&mut CudaSlice<f32>],
    add: bool,
) -> Result<()> {
    let d = w.cols();
    let kp = padded_cols(d);
    if !norm_gemv_fits(d) || kp > NORM_GEMV_MAX_COLS || kp != w.kp {
        return Err(Error::unsupported(format!(
            "fused norm + GEMV over {d} features (at most {NORM_GEMV_MAX_COLS}, a multiple of 4)"
        )));
    }
    if !src.fused(nw.is_some()) {
        return Err(Error::unsupported(
            "fused GEMV of relu² without a norm (the models have none)",
        ));
    }
    let k = &gpu.k;
    // (input, second input, kernels for one and two groups per tile and for wide rows)
    let (x, y, [f1, f2, fw]) = match src {
        NormSrc::Plain(x) if nw.is_some() => {
            (x, None, [&k.gemv_norm1_plain, &k.gemv_norm2_plain, &k.gemv_norm_wide_plain])
        }
        NormSrc::Plain(x) => {
            (x, None, [&k.gemv_norm1_none, &k.gemv_norm2_none, &k.gemv_norm_wide_none])
        }
        NormSrc::Relu2(g, u) => {
            (g, Some(u), [&k.gemv_norm1_relu2, &k.gemv_norm2_relu2, &k.gemv_norm_wide_relu2])
        }
        NormSrc::Silu(g, u) if nw.is_some() => (
            g,
            Some(u),
            [&k.gemv_norm1_silu_normed, &k.gemv_norm2_silu_normed, &k.gemv_norm_wide_silu_normed],
        ),
        NormSrc::Silu(g, u) => {
            (g, Some(u), [&k.gemv_norm1_silu, &k.gemv_norm2_silu, &k.gemv_norm_wide_silu])
        }
    };
    need(x.len(), d, "fused norm input")?;
    if let Some(y) = y {
        need(y.len(), d, "fused norm second input")?;
    }
    if let Some(nw) = nw {
        need(nw.len(), d, "rms_norm weight")?;
    }
    need(out.len(), d, "rms_norm output")?;
    let o = out_arg(gpu, w, 1, outs)?;
    let o = if add { o.adding()? } else { o };
    q.claim(1, d)?;
    let n = NormArg {
        x: dptr(gpu, x),
        y: y.map_or(0, |y| dptr(gpu, y)),
        w: nw.map_or(0, |nw| dptr(gpu, nw)),
        out: dptr(gpu, out),
        q: dptr(gpu, &q.q),
        qscale: dptr(gpu, &q.scale),
        qsum: dptr(gpu, &q.sum),
        d: d as i32,
        kp: kp as i32,
        eps,
    };
    // The kernel reads and writes the rows four floats (or four int8) at a time.
    let ptrs = [n.x, n.y, n.w, n.out, n.q];
    if ptrs.iter().any(|p| !p.is_multiple_of(16)) {
        return Err(Error::unsupported("fused norm + GEMV on buffers not 16-byte aligned"));
    }
    let tiles = w.rows_padded / TILE_ROWS;
    // One block of 1024 threads per SM: 8 / groups GEMV blocks of `groups` x 128 threads (the
    // GEMV's groups per tile for one token).
    let sms = gpu.info().sms as usize;
    let groups = gpu.knobs().gemv_shape(tiles, 1, sms).1;
    let (f, subs) = if kp > NORM_GEMV_ONE_PASS_COLS {
        (fw, 4) // two groups per tile
    } else if groups == 2 {
        (f2, 4)
    } else {
        (f1, 8)
    };
    let grid = tiles.div_ceil(subs).min(sms).max(1);
    let dims = Dims::line(grid as u32, 1024);
    let (wp, kc, tiles) = (dptr(gpu, &w.data), (w.kp / CHUNK) as i32, to_i32(tiles, "tiles")?);
    // Kernel: gemv_norm_m1_gG_<mode>(W, n, o, kc, tiles); W holds tiles x 8 rows x kc chunks;
    // n's x, y, w, out hold d values (a multiple of 4, 16-byte aligned as q: checked above) and
    // q kp <= 16384 (checked above), qscale/qsum one; each o.y[j] holds o.n[j] values (out_arg).
    launch!(gpu, f, dims; wp, n, o, kc, tiles)
}
