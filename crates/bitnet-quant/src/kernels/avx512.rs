//! AVX-512BW kernels, with AVX512-VNNI `vpdpbusd` in the `_vnni` entry points.
//!
//! One 32-byte I2_S block is broadcast to both halves of a zmm register, so that one register
//! holds the codes of weights 0..63 (bits 7-6 in the low half, bits 5-4 in the high half) and
//! another those of 64..127 (bits 3-2, 1-0), matching two contiguous 64-byte activation loads.
//! Fields are isolated by masks alone (plus at most one uniform shift), which leaves each
//! code multiplied by a power of two that is fixed per half; the 32-bit lane sums are shifted
//! back exactly at the end. The unsigned (scaled) codes multiply the signed activations with
//! `vpdpbusd`, or with `vpmaddubsw` (pair sums at most 2·12·128: no saturation) then
//! `vpmaddwd` by ones.
//!
//! GEMV streams one row at a time, two blocks per iteration for one token, one block for up to
//! four tokens at once (decode batches, [`GEMV_MAX_TOKENS`]); GEMM runs tiles of 4 rows
//! × 4 tokens, expanding each weight block once per tile of tokens.

use super::Job;
use crate::quantize::{act_scale_for, ActScale};
use std::arch::x86_64::*;
use std::ops::Range;

/// Blocks per GEMV loop iteration (each with its own accumulators).
const GEMV_UNROLL: usize = 2;
/// Far-apart rows GEMV reads at once (see [`super::gemv_rows`]).
const GEMV_STREAMS: usize = 2;
/// Up to this many tokens a call runs as GEMV passes of up to four tokens each (decode
/// batches: each weight block unpacked once per pass); more take the cache-blocked GEMM.
/// Measured on the EPYC dev box (`gemm_batch` bench, avx512-vnni, 2 threads, ms against the
/// GEMM): 6912x2560, 2 tokens 8.8 → 33.5 GB/s of weights, 4 tokens 8.1 → 13.6, 16 tokens
/// 1.03 → 0.81 ms (avx512 without VNNI 1.48 → 1.19); at 128 tokens (prefill, `gemm/`) the GEMM
/// is 2-7% ahead.
const GEMV_MAX_TOKENS: usize = 16;
/// Rows × tokens per GEMM tile.
const GEMM_ROWS: usize = 4;
const GEMM_TOKS: usize = 4;
/// GEMM cache blocking: weight bytes per row block (L2), activation bytes per token block (L1).
const GEMM_L2_BYTES: usize = 256 << 10;
const GEMM_L1_BYTES: usize = 32 << 10;

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
        if job.acts.len() <= GEMV_MAX_TOKENS {
            gemv_tokens::<VNNI>(job, rows);
        } else {
            gemm_rows::<VNNI>(job, rows);
        }
    }
}

/// GEMV over `rows` for every token of `job`, in [`super::gemv_passes`] over the weights (the
/// second pass of a thread's rows mostly finds them in L2).
#[inline(always)]
unsafe fn gemv_tokens<const VNNI: bool>(job: &Job, rows: Range<usize>) {
    // SAFETY: see `run`; every pass covers tokens t0..t0 + T below n_tok.
    unsafe {
        for (t0, n) in super::gemv_passes(job.acts.len()) {
            let r = rows.clone();
            match n {
                1 => super::gemv_rows::<Dots<VNNI>, GEMV_STREAMS, GEMV_UNROLL, 1>(job, r, t0),
                2 => super::gemv_rows::<Dots<VNNI>, GEMV_STREAMS, 1, 2>(job, r, t0),
                3 => super::gemv_rows::<Dots<VNNI>, GEMV_STREAMS, 1, 3>(job, r, t0),
                _ => super::gemv_rows::<Dots<VNNI>, GEMV_STREAMS, 1, 4>(job, r, t0),
            }
        }
    }
}

/// Per-half byte constants: `lo` in bytes 0..31, `hi` in bytes 32..63.
#[inline(always)]
unsafe fn halves8(lo: i8, hi: i8) -> __m512i {
    // SAFETY: register operations; the caller enabled AVX-512F.
    unsafe { _mm512_inserti64x4::<1>(_mm512_set1_epi8(lo), _mm256_set1_epi8(hi)) }
}

/// Per-half 32-bit constants: `lo` in lanes 0..7, `hi` in lanes 8..15.
#[inline(always)]
unsafe fn halves32(lo: i32, hi: i32) -> __m512i {
    // SAFETY: as above.
    unsafe { _mm512_inserti64x4::<1>(_mm512_set1_epi32(lo), _mm256_set1_epi32(hi)) }
}

/// The 32-byte block at `p` in both halves of a register.
#[inline(always)]
unsafe fn block(p: *const u8) -> __m512i {
    // SAFETY: the caller guarantees 32 readable bytes at `p`.
    unsafe { _mm512_broadcast_i64x4(_mm256_loadu_si256(p as *const __m256i)) }
}

/// Codes of weights 0..63 and 64..127 of a broadcast block, each scaled by 4 in the low half
/// (bits 3-2 of a byte) and by 1 in the high half (bits 1-0); `m` is [`halves8`]`(0x0c, 0x03)`.
#[inline(always)]
unsafe fn codes_x4x1(w: __m512i, m: __m512i) -> (__m512i, __m512i) {
    // SAFETY: register operations; the caller enabled AVX-512BW.
    unsafe { (_mm512_and_si512(_mm512_srli_epi16::<4>(w), m), _mm512_and_si512(w, m)) }
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
            // |pair sum| <= 2·(3·4)·128, so neither the pairs nor their sum saturate.
            let p = _mm512_add_epi16(_mm512_maddubs_epi16(c0, x0), _mm512_maddubs_epi16(c1, x1));
            _mm512_add_epi32(acc, _mm512_madd_epi16(p, _mm512_set1_epi16(1)))
        }
    }
}

/// Sum of the lanes of `v` after an exact right shift by `sh` (lanes hold scaled sums).
#[inline(always)]
unsafe fn unscale_sum(v: __m512i, sh: __m512i) -> i32 {
    // SAFETY: register operations under AVX-512F.
    unsafe { _mm512_reduce_add_epi32(_mm512_srav_epi32(v, sh)) }
}

/// The two code registers of the 32-byte block at `p` as this flavour's [`GemvAcc::add`] takes
/// them. VNNI: masked only (bits 7-6 ×64 and 5-4 ×16 for weights 0..63, bits 3-2 ×4 and 1-0 ×1
/// for 64..127); otherwise [`codes_x4x1`].
#[inline(always)]
unsafe fn block_codes<const VNNI: bool>(p: *const u8) -> (__m512i, __m512i) {
    // SAFETY: 32 readable bytes at `p` (caller); register operations under AVX-512BW.
    unsafe {
        let (wv, m_lo) = (block(p), halves8(0x0c, 0x03));
        if VNNI {
            let m_hi = halves8(0xc0u8 as i8, 0x30);
            (_mm512_and_si512(wv, m_hi), _mm512_and_si512(wv, m_lo))
        } else {
            codes_x4x1(wv, m_lo)
        }
    }
}

/// Two accumulators of one GEMV row for a stream of blocks.
///
/// VNNI: the codes are only masked, never shifted: `a` collects bits 7-6 (×64, low half) and
/// 5-4 (×16, high half), `b` bits 3-2 (×4) and 1-0 (×1); every lane sum is a multiple of its
/// scale and is shifted back exactly in [`GemvAcc::sum`]. Otherwise `a` collects
/// [`codes_x4x1`] products through `vpmaddubsw`.
#[derive(Clone, Copy)]
struct GemvAcc {
    a: __m512i,
    b: __m512i,
}

impl GemvAcc {
    /// Adds one block, given as its [`block_codes`], times the 128 activations at `x`.
    #[inline(always)]
    unsafe fn add<const VNNI: bool>(&mut self, c: (__m512i, __m512i), x: *const i8) {
        // SAFETY: 128 activations at `x` are readable (caller).
        unsafe {
            let x0 = _mm512_loadu_si512(x as *const _);
            let x1 = _mm512_loadu_si512(x.add(64) as *const _);
            if VNNI {
                self.a = _mm512_dpbusd_epi32(self.a, c.0, x0);
                self.b = _mm512_dpbusd_epi32(self.b, c.1, x1);
            } else {
                self.a = dot2::<false>(self.a, c.0, x0, c.1, x1);
            }
        }
    }

    /// The exact integer dot product.
    #[inline(always)]
    unsafe fn sum<const VNNI: bool>(self) -> i32 {
        // SAFETY: register operations.
        unsafe {
            if VNNI {
                unscale_sum(self.a, halves32(6, 4)) + unscale_sum(self.b, halves32(2, 0))
            } else {
                unscale_sum(self.a, halves32(2, 0))
            }
        }
    }
}

/// Integer dot products of the `S` rows at `w[s]` with the `T` token rows at `x[t]`. Each row
/// is read front to back, `U` blocks per iteration; each block is unpacked once for the `T`
/// tokens, and every (row, block of the iteration, token) has its own accumulators.
#[inline(always)]
unsafe fn gemv_rows_at<const S: usize, const U: usize, const T: usize, const VNNI: bool>(
    w: [*const u8; S],
    row_bytes: usize,
    x: [*const i8; T],
) -> [[i32; T]; S] {
    // SAFETY: `row_bytes` at each `w[s]` and `4 * row_bytes` activations at each `x[t]` are
    // readable.
    unsafe {
        let zero = GemvAcc { a: _mm512_setzero_si512(), b: _mm512_setzero_si512() };
        let mut acc = [[[zero; T]; U]; S];
        let n_blocks = row_bytes / 32;
        let mut i = 0;
        while i + U <= n_blocks {
            for (acc, &w) in acc.iter_mut().zip(&w) {
                for (u, acc) in acc.iter_mut().enumerate() {
                    let c = block_codes::<VNNI>(w.add((i + u) * 32));
                    for (acc, &x) in acc.iter_mut().zip(&x) {
                        acc.add::<VNNI>(c, x.add((i + u) * 128));
                    }
                }
            }
            i += U;
        }
        for (u, i) in (i..n_blocks).enumerate() {
            for (acc, &w) in acc.iter_mut().zip(&w) {
                let c = block_codes::<VNNI>(w.add(i * 32));
                for (acc, &x) in acc[u].iter_mut().zip(&x) {
                    acc.add::<VNNI>(c, x.add(i * 128));
                }
            }
        }
        // Plain loops, no closures: a closure would not inherit this function's target
        // features, and its intrinsics would become calls.
        let mut out = [[0i32; T]; S];
        for (o, acc) in out.iter_mut().zip(&acc) {
            for (t, o) in o.iter_mut().enumerate() {
                let mut s = acc[0][t];
                for a in &acc[1..] {
                    s = GemvAcc {
                        a: _mm512_add_epi32(s.a, a[t].a),
                        b: _mm512_add_epi32(s.b, a[t].b),
                    };
                }
                *o = s.sum::<VNNI>();
            }
        }
        out
    }
}

/// This variant's dots for the shared GEMV row walk ([`super::gemv_rows`]: [`gemv_rows_at`])
/// and blocked GEMM ([`super::gemm_blocked`]: [`gemm_tile`]).
pub(crate) struct Dots<const VNNI: bool>;

impl<const VNNI: bool> super::RowDots for Dots<VNNI> {
    #[inline(always)]
    unsafe fn dots<const S: usize, const U: usize, const T: usize>(
        w: [*const u8; S],
        row_bytes: usize,
        x: [*const i8; T],
    ) -> [[i32; T]; S] {
        // SAFETY: forwarded contract.
        unsafe { gemv_rows_at::<S, U, T, VNNI>(w, row_bytes, x) }
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
        let m_lo = halves8(0x0c, 0x03);
        let kx = row_bytes * 4;
        let mut acc = [[_mm512_setzero_si512(); T]; R];
        for i in 0..row_bytes / 32 {
            let mut c = [(_mm512_setzero_si512(), _mm512_setzero_si512()); R];
            for (r, c) in c.iter_mut().enumerate() {
                *c = codes_x4x1(block(w.add(r * row_bytes + i * 32)), m_lo);
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
        if R * T == 16 {
            let mut v = [_mm512_setzero_si512(); 16];
            for r in 0..R {
                for t in 0..T {
                    v[r * T + t] = acc[r][t];
                }
            }
            let sums = reduce16_x4x1(&v);
            for r in 0..R {
                for t in 0..T {
                    out[r][t] = sums[r * T + t];
                }
            }
        } else {
            for r in 0..R {
                for t in 0..T {
                    out[r][t] = unscale_sum(acc[r][t], halves32(2, 0));
                }
            }
        }
        out
    }
}

/// Per 128-bit lane: `[a0 + a2, b0 + b2, a1 + a3, b1 + b3]`.
#[inline(always)]
unsafe fn add_interleaved32(a: __m512i, b: __m512i) -> __m512i {
    // SAFETY: register operations under AVX-512F.
    unsafe { _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b)) }
}

/// 128-bit lanes `[a.L0 + a.L1, a.L2 + a.L3, b.L0 + b.L1, b.L2 + b.L3]`.
#[inline(always)]
unsafe fn add_lane_pairs(a: __m512i, b: __m512i) -> __m512i {
    // SAFETY: register operations under AVX-512F.
    unsafe {
        _mm512_add_epi32(
            _mm512_shuffle_i32x4::<0b10_00_10_00>(a, b),
            _mm512_shuffle_i32x4::<0b11_01_11_01>(a, b),
        )
    }
}

/// The 16 lane sums of 16 accumulators whose low 256 bits hold sums scaled by 4 (as
/// [`codes_x4x1`] leaves them): a transpose-and-add tree of about 45 operations instead of
/// 16 separate reductions.
#[inline(always)]
unsafe fn reduce16_x4x1(v: &[__m512i; 16]) -> [i32; 16] {
    // SAFETY: register operations under AVX-512F.
    unsafe {
        // Within each 128-bit lane L: q[g] element j = Σ of lane L of v[4g + j].
        let mut q = [_mm512_setzero_si512(); 4];
        for (g, q) in q.iter_mut().enumerate() {
            let s01 = add_interleaved32(v[4 * g], v[4 * g + 1]);
            let s23 = add_interleaved32(v[4 * g + 2], v[4 * g + 3]);
            *q = _mm512_add_epi32(_mm512_unpacklo_epi64(s01, s23), _mm512_unpackhi_epi64(s01, s23));
        }
        // 128-bit lanes of e0: q[0] L0+L1 (×4), L2+L3 (×1), then the same of q[1]; e1 of
        // q[2], q[3]. The scaled sums are shifted back (exactly: they are multiples of 4).
        let unscale = _mm512_setr_epi32(2, 2, 2, 2, 0, 0, 0, 0, 2, 2, 2, 2, 0, 0, 0, 0);
        let e0 = _mm512_srav_epi32(add_lane_pairs(q[0], q[1]), unscale);
        let e1 = _mm512_srav_epi32(add_lane_pairs(q[2], q[3]), unscale);
        let f = add_lane_pairs(e0, e1);
        let mut out = [0i32; 16];
        _mm512_storeu_si512(out.as_mut_ptr() as *mut _, f);
        out
    }
}

impl<const VNNI: bool> super::TileDots for Dots<VNNI> {
    #[inline(always)]
    unsafe fn tile<const R: usize, const T: usize>(
        w: *const u8,
        row_bytes: usize,
        x: *const i8,
    ) -> [[i32; T]; R] {
        // SAFETY: forwarded contract.
        unsafe { gemm_tile::<R, T, VNNI>(w, row_bytes, x) }
    }
}

/// GEMM over `rows`, blocked so that a block of weight rows stays in L2 while a block of
/// tokens' activations stays in L1.
#[inline(always)]
unsafe fn gemm_rows<const VNNI: bool>(job: &Job, rows: Range<usize>) {
    // SAFETY: see `run`.
    unsafe {
        super::gemm_blocked::<Dots<VNNI>, GEMM_ROWS, GEMM_TOKS>(
            job,
            rows,
            GEMM_L2_BYTES,
            GEMM_L1_BYTES,
        );
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
