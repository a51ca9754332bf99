//! AVX-512BW kernels, with AVX512-VNNI `vpdpbusd` in the `_vnni` entry points.
//!
//! One 32-byte I2_S block is broadcast to both halves of a zmm register and shifted right by
//! (6, 4) in the low/high half and by (2, 0): masked with 3, the two registers hold the codes
//! of weights 0..63 and 64..127 in order, matching two contiguous 64-byte activation loads.
//! The unsigned codes multiply the signed activations with `vpdpbusd` (or `vpmaddubsw`, whose
//! pair sums of at most 2·2·128 never saturate, then `vpmaddwd` by ones).
//!
//! GEMV runs 4 rows at a time with two accumulators each; GEMM runs tiles of 4 rows × 4
//! tokens, expanding each weight block once per tile of tokens.

use super::Job;
use crate::quantize::{act_scale_for, ActScale};
use std::arch::x86_64::*;
use std::ops::Range;

/// Rows per GEMV step.
const GEMV_ROWS: usize = 4;
/// Rows × tokens per GEMM tile.
const GEMM_ROWS: usize = 4;
const GEMM_TOKS: usize = 4;

/// Computes output rows `rows` of every token of `job` (`vpmaddubsw` flavour).
///
/// # Safety
/// The CPU must support AVX-512F and AVX-512BW; `job` must satisfy `launch`'s length checks.
#[target_feature(enable = "avx512f,avx512bw")]
pub(crate) unsafe fn run_maddubs(job: &Job, rows: Range<usize>) {
    // SAFETY: forwarded contract.
    unsafe { run::<false>(job, rows) }
}

/// Computes output rows `rows` of every token of `job` (`vpdpbusd` flavour).
///
/// # Safety
/// As [`run_maddubs`], plus AVX512-VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(crate) unsafe fn run_vnni(job: &Job, rows: Range<usize>) {
    // SAFETY: forwarded contract.
    unsafe { run::<true>(job, rows) }
}

#[inline(always)]
unsafe fn run<const VNNI: bool>(job: &Job, rows: Range<usize>) {
    // SAFETY (whole body): the weight pointer of row r and activation pointer of token t stay
    // inside `job.w` / `job.xq` because r < rows and t < n_tok, as `launch` checked.
    unsafe {
        if job.acts.len() == 1 {
            gemv_rows::<VNNI>(job, rows);
        } else {
            gemm_rows::<VNNI>(job, rows);
        }
    }
}

/// Shift counts (per 16-bit lane) and the code mask.
#[inline(always)]
unsafe fn consts() -> (__m512i, __m512i, __m512i) {
    // SAFETY: plain register operations; the caller enabled AVX-512F.
    unsafe {
        let hi = _mm512_inserti64x4::<1>(_mm512_set1_epi16(6), _mm256_set1_epi16(4));
        let lo = _mm512_inserti64x4::<1>(_mm512_set1_epi16(2), _mm256_setzero_si256());
        (hi, lo, _mm512_set1_epi8(3))
    }
}

/// The codes of weights 0..63 and 64..127 of the block at `p`.
#[inline(always)]
unsafe fn codes(p: *const u8, k: (__m512i, __m512i, __m512i)) -> (__m512i, __m512i) {
    // SAFETY: the caller guarantees 32 readable bytes at `p`.
    unsafe {
        let w = _mm512_broadcast_i64x4(_mm256_loadu_si256(p as *const __m256i));
        (
            _mm512_and_si512(_mm512_srlv_epi16(w, k.0), k.2),
            _mm512_and_si512(_mm512_srlv_epi16(w, k.1), k.2),
        )
    }
}

/// `acc + Σ c0·x0 + Σ c1·x1`, summed into 32-bit lanes.
#[inline(always)]
unsafe fn dot2<const VNNI: bool>(
    acc: __m512i,
    c0: __m512i,
    x0: __m512i,
    c1: __m512i,
    x1: __m512i,
) -> __m512i {
    // SAFETY: register operations; the caller enabled the features of this flavour.
    unsafe {
        if VNNI {
            _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(acc, c0, x0), c1, x1)
        } else {
            let p = _mm512_add_epi16(_mm512_maddubs_epi16(c0, x0), _mm512_maddubs_epi16(c1, x1));
            _mm512_add_epi32(acc, _mm512_madd_epi16(p, _mm512_set1_epi16(1)))
        }
    }
}

/// Integer dot products of `R` rows starting at `w` with the activation row `x`.
#[inline(always)]
unsafe fn gemv_tile<const R: usize, const VNNI: bool>(
    w: *const u8,
    row_bytes: usize,
    x: *const i8,
) -> [i32; R] {
    // SAFETY: R rows of `row_bytes` at `w` and `4 * row_bytes` activations at `x` are readable.
    unsafe {
        let k = consts();
        let mut a = [_mm512_setzero_si512(); R];
        let mut b = [_mm512_setzero_si512(); R];
        for i in 0..row_bytes / 32 {
            let x0 = _mm512_loadu_si512(x.add(i * 128) as *const _);
            let x1 = _mm512_loadu_si512(x.add(i * 128 + 64) as *const _);
            for r in 0..R {
                let (c0, c1) = codes(w.add(r * row_bytes + i * 32), k);
                if VNNI {
                    a[r] = _mm512_dpbusd_epi32(a[r], c0, x0);
                    b[r] = _mm512_dpbusd_epi32(b[r], c1, x1);
                } else {
                    a[r] = dot2::<false>(a[r], c0, x0, c1, x1);
                }
            }
        }
        let mut out = [0i32; R];
        for r in 0..R {
            out[r] = _mm512_reduce_add_epi32(_mm512_add_epi32(a[r], b[r]));
        }
        out
    }
}

#[inline(always)]
unsafe fn gemv_rows<const VNNI: bool>(job: &Job, rows: Range<usize>) {
    // SAFETY: see `run`.
    unsafe {
        let (w, rb, x) = (job.w.as_ptr(), job.row_bytes, job.xq.as_ptr());
        let mut r = rows.start;
        while r + GEMV_ROWS <= rows.end {
            let acc = gemv_tile::<GEMV_ROWS, VNNI>(w.add(r * rb), rb, x);
            for (i, &a) in acc.iter().enumerate() {
                job.store(0, r + i, a);
            }
            r += GEMV_ROWS;
        }
        for r in r..rows.end {
            let [a] = gemv_tile::<1, VNNI>(w.add(r * rb), rb, x);
            job.store(0, r, a);
        }
    }
}

/// Integer dot products of `R` rows at `w` with `T` activation rows at `x` (stride `4·row_bytes`).
#[inline(always)]
#[allow(clippy::needless_range_loop)] // acc[r][t] reads like the maths
unsafe fn gemm_tile<const R: usize, const T: usize, const VNNI: bool>(
    w: *const u8,
    row_bytes: usize,
    x: *const i8,
) -> [[i32; T]; R] {
    // SAFETY: R weight rows and T activation rows are readable at `w` and `x`.
    unsafe {
        let k = consts();
        let kx = row_bytes * 4;
        let mut acc = [[_mm512_setzero_si512(); T]; R];
        for i in 0..row_bytes / 32 {
            let mut c = [(_mm512_setzero_si512(), _mm512_setzero_si512()); R];
            for (r, c) in c.iter_mut().enumerate() {
                *c = codes(w.add(r * row_bytes + i * 32), k);
            }
            for t in 0..T {
                let xp = x.add(t * kx + i * 128);
                let x0 = _mm512_loadu_si512(xp as *const _);
                let x1 = _mm512_loadu_si512(xp.add(64) as *const _);
                for r in 0..R {
                    acc[r][t] = dot2::<VNNI>(acc[r][t], c[r].0, x0, c[r].1, x1);
                }
            }
        }
        let mut out = [[0i32; T]; R];
        for r in 0..R {
            for t in 0..T {
                out[r][t] = _mm512_reduce_add_epi32(acc[r][t]);
            }
        }
        out
    }
}

/// Runs tiles of `R` rows (starting at row `r`) over all tokens.
#[inline(always)]
unsafe fn gemm_row_group<const R: usize, const VNNI: bool>(job: &Job, r: usize) {
    // SAFETY: see `run`; rows r..r+R exist.
    unsafe {
        let (rb, n_tok) = (job.row_bytes, job.acts.len());
        let w = job.w.as_ptr().add(r * rb);
        let x = |t: usize| job.xq.as_ptr().add(t * rb * 4);
        let store = |t0: usize, acc: &[[i32; GEMM_TOKS]; R], nt: usize| {
            for (i, row) in acc.iter().enumerate() {
                for (j, &a) in row[..nt].iter().enumerate() {
                    job.store(t0 + j, r + i, a);
                }
            }
        };
        let mut t = 0;
        while t + GEMM_TOKS <= n_tok {
            store(t, &gemm_tile::<R, GEMM_TOKS, VNNI>(w, rb, x(t)), GEMM_TOKS);
            t += GEMM_TOKS;
        }
        let mut acc = [[0i32; GEMM_TOKS]; R];
        match n_tok - t {
            1 => gemm_tile::<R, 1, VNNI>(w, rb, x(t)).iter().zip(&mut acc).for_each(|(s, d)| {
                d[..1].copy_from_slice(s);
            }),
            2 => gemm_tile::<R, 2, VNNI>(w, rb, x(t)).iter().zip(&mut acc).for_each(|(s, d)| {
                d[..2].copy_from_slice(s);
            }),
            3 => gemm_tile::<R, 3, VNNI>(w, rb, x(t)).iter().zip(&mut acc).for_each(|(s, d)| {
                d[..3].copy_from_slice(s);
            }),
            _ => return,
        }
        store(t, &acc, n_tok - t);
    }
}

#[inline(always)]
unsafe fn gemm_rows<const VNNI: bool>(job: &Job, rows: Range<usize>) {
    // SAFETY: see `run`.
    unsafe {
        let mut r = rows.start;
        while r + GEMM_ROWS <= rows.end {
            gemm_row_group::<GEMM_ROWS, VNNI>(job, r);
            r += GEMM_ROWS;
        }
        for r in r..rows.end {
            gemm_row_group::<1, VNNI>(job, r);
        }
    }
}

/// Bit-exact AVX-512 twin of `quantize::quantize_row_scalar`; `out.len() == x.len()`.
///
/// # Safety
/// The CPU must support AVX-512F and AVX-512BW.
#[target_feature(enable = "avx512f,avx512bw")]
pub(crate) unsafe fn quantize_row(x: &[f32], out: &mut [i8]) -> ActScale {
    let n = x.len().min(out.len());
    let mask = |i: usize| -> __mmask16 {
        if n - i >= 16 {
            0xffff
        } else {
            (1u16 << (n - i)) - 1
        }
    };
    // SAFETY: every load/store is masked to the `n` valid elements of `x` and `out`.
    unsafe {
        let p = x.as_ptr();
        let mut vmax = _mm512_setzero_ps();
        for i in (0..n).step_by(16) {
            let v = _mm512_abs_ps(_mm512_maskz_loadu_ps(mask(i), p.add(i)));
            vmax = _mm512_max_ps(v, vmax); // a NaN `v` keeps `vmax`, like f32::max
        }
        let scale = act_scale_for(_mm512_reduce_max_ps(vmax));
        let (vs, lo, hi) = (_mm512_set1_ps(scale), _mm512_set1_ps(-128.0), _mm512_set1_ps(127.0));
        let mut vsum = _mm512_setzero_si512();
        for i in (0..n).step_by(16) {
            let m = mask(i);
            let v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, p.add(i)), vs);
            let v = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
            let v = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_ORD_Q>(v, v), v); // NaN -> 0
            let q = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(v, lo), hi));
            vsum = _mm512_add_epi32(vsum, q);
            _mm512_mask_cvtepi32_storeu_epi8(out.as_mut_ptr().add(i), m, q);
        }
        ActScale { scale, sum: _mm512_reduce_add_epi32(vsum) }
    }
}
