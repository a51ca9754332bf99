//! NEON kernels (aarch64), with the Armv8.2 dot-product extension (`sdot`) in the `_dotprod`
//! entry points.
//!
//! A 32-byte I2_S block is two 16-byte registers (bytes 0..15 and 16..31); each holds four 2-bit
//! fields per byte. Plain NEON shifts and masks them into the codes of weights 0..31, 32..63,
//! 64..95 and 96..127 (two registers each, one per half), multiplies each register with the
//! 16 activations it meets (`smull` / `smull2`, 16-bit products of at most 3·128), adds the
//! block's eight products per lane in 16 bits (at most 16·3·128) and widens them into 32-bit
//! lanes (`sadalp`). `sdot` needs fewer instructions: one shift by 4 and masks 0x0c / 0x03
//! give the codes of weights 0..31 and 64..95 times 4 and of 32..63 and 96..127 times 1, each
//! kind summed into its own accumulator; the first is a multiple of 4 and shifted back exactly
//! (as AVX-VNNI does in `avx2.rs`).
//!
//! GEMV streams rows as the x86 variants do (two far-apart segments, up to four tokens per
//! pass); GEMM runs cache-blocked tiles of 2 rows × 4 tokens ([`super::gemm_blocked`]).
//! Measured for correctness only (bit-exact against `scalar.rs` under qemu, with and without
//! the dot-product extension): no aarch64 machine was at hand to tune the constants, so they
//! follow the AVX2 kernel's.

use super::Job;
use crate::quantize::{act_scale_for, quantize_value, ActScale};
use std::arch::aarch64::*;
use std::ops::Range;

/// Blocks per GEMV loop iteration (each with its own accumulators).
const GEMV_UNROLL: usize = 2;
/// Far-apart rows GEMV reads at once (see [`super::gemv_rows`]).
const GEMV_STREAMS: usize = 2;
/// Up to this many tokens a call runs as GEMV passes of up to four tokens each; more take the
/// cache-blocked GEMM.
const GEMV_MAX_TOKENS: usize = 8;
/// Rows × tokens per GEMM tile.
const GEMM_ROWS: usize = 2;
const GEMM_TOKS: usize = 4;
/// GEMM cache blocking: weight bytes per row block (L2), activation bytes per token block (L1).
const GEMM_L2_BYTES: usize = 256 << 10;
const GEMM_L1_BYTES: usize = 32 << 10;

/// Computes output rows `rows` of every token of `job` (`smull` flavour).
///
/// # Safety
/// `job` must satisfy `launch`'s length checks (NEON is part of every aarch64 CPU).
#[target_feature(enable = "neon")]
pub(crate) unsafe fn run_neon(job: &Job, rows: Range<usize>) {
    // SAFETY: forwarded contract.
    unsafe { run::<false>(job, rows) }
}

/// Computes output rows `rows` of every token of `job` (`sdot` flavour).
///
/// # Safety
/// As [`run_neon`], plus the dot-product extension.
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn run_dotprod(job: &Job, rows: Range<usize>) {
    // SAFETY: forwarded contract.
    unsafe { run::<true>(job, rows) }
}

#[inline(always)]
unsafe fn run<const DOT: bool>(job: &Job, rows: Range<usize>) {
    // SAFETY (whole body): row r's weights and token t's activations lie inside `job.w` /
    // `job.xq` because r < rows and t < n_tok, as `launch` checked.
    unsafe {
        if job.acts.len() <= GEMV_MAX_TOKENS {
            for (t0, n) in super::gemv_passes(job.acts.len()) {
                let r = rows.clone();
                match n {
                    1 => super::gemv_rows::<Dots<DOT>, GEMV_STREAMS, GEMV_UNROLL, 1>(job, r, t0),
                    2 => super::gemv_rows::<Dots<DOT>, GEMV_STREAMS, 1, 2>(job, r, t0),
                    3 => super::gemv_rows::<Dots<DOT>, 1, 1, 3>(job, r, t0),
                    _ => super::gemv_rows::<Dots<DOT>, 1, 1, 4>(job, r, t0),
                }
            }
        } else {
            super::gemm_blocked::<Dots<DOT>, GEMM_ROWS, GEMM_TOKS>(
                job,
                rows,
                GEMM_L2_BYTES,
                GEMM_L1_BYTES,
            );
        }
    }
}

/// `acc + Σ a·b` over groups of four bytes (`sdot`). Stable Rust has no intrinsic for it yet
/// (`vdotq_s32` is unstable), hence the one instruction written out.
///
/// # Safety
/// The CPU must have the dot-product extension, enabled in the caller this inlines into.
#[inline(always)]
unsafe fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: one register-only instruction; the caller guarantees the extension.
    unsafe {
        std::arch::asm!(
            "sdot {0:v}.4s, {1:v}.16b, {2:v}.16b",
            inout(vreg) acc,
            in(vreg) a,
            in(vreg) b,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    acc
}

/// The codes of the block at `p`, register `i` meeting activations `16 i .. 16 i + 16`.
/// `sdot` flavour: registers 0, 1, 4, 5 hold codes times 4, registers 2, 3, 6, 7 codes times 1;
/// otherwise plain codes.
#[inline(always)]
unsafe fn block_codes<const DOT: bool>(p: *const u8) -> [int8x16_t; 8] {
    // SAFETY: the caller guarantees 32 readable bytes at `p`; register operations.
    unsafe {
        let (w0, w1) = (vld1q_u8(p), vld1q_u8(p.add(16)));
        let m3 = vdupq_n_u8(3);
        let s = |v: uint8x16_t| vreinterpretq_s8_u8(v);
        if DOT {
            let m12 = vdupq_n_u8(0x0c);
            let (h0, h1) = (vshrq_n_u8::<4>(w0), vshrq_n_u8::<4>(w1));
            [
                s(vandq_u8(h0, m12)),
                s(vandq_u8(h1, m12)),
                s(vandq_u8(h0, m3)),
                s(vandq_u8(h1, m3)),
                s(vandq_u8(w0, m12)),
                s(vandq_u8(w1, m12)),
                s(vandq_u8(w0, m3)),
                s(vandq_u8(w1, m3)),
            ]
        } else {
            [
                s(vshrq_n_u8::<6>(w0)),
                s(vshrq_n_u8::<6>(w1)),
                s(vandq_u8(vshrq_n_u8::<4>(w0), m3)),
                s(vandq_u8(vshrq_n_u8::<4>(w1), m3)),
                s(vandq_u8(vshrq_n_u8::<2>(w0), m3)),
                s(vandq_u8(vshrq_n_u8::<2>(w1), m3)),
                s(vandq_u8(w0, m3)),
                s(vandq_u8(w1, m3)),
            ]
        }
    }
}

/// Accumulators of one (row, token) dot product. `sdot`: `a` gathers the codes scaled by 4,
/// `b` the others; otherwise `a` gathers everything.
#[derive(Clone, Copy)]
struct Acc {
    a: int32x4_t,
    b: int32x4_t,
}

impl Acc {
    #[inline(always)]
    unsafe fn zero() -> Acc {
        // SAFETY: register operations.
        unsafe { Acc { a: vdupq_n_s32(0), b: vdupq_n_s32(0) } }
    }

    /// Adds one block, given as its [`block_codes`], times the 128 activations at `x`.
    #[inline(always)]
    unsafe fn add<const DOT: bool>(&mut self, c: &[int8x16_t; 8], x: *const i8) {
        // SAFETY: 128 activations at `x` are readable (caller); register operations.
        unsafe {
            let xs: [int8x16_t; 8] = std::array::from_fn(|i| vld1q_s8(x.add(16 * i)));
            if DOT {
                let mut a = self.a;
                let mut b = self.b;
                for i in [0, 1, 4, 5] {
                    a = sdot(a, c[i], xs[i]);
                }
                for i in [2, 3, 6, 7] {
                    b = sdot(b, c[i], xs[i]);
                }
                self.a = a;
                self.b = b;
            } else {
                let mut p = vmull_s8(vget_low_s8(c[0]), vget_low_s8(xs[0]));
                p = vmlal_high_s8(p, c[0], xs[0]);
                for i in 1..8 {
                    p = vmlal_s8(p, vget_low_s8(c[i]), vget_low_s8(xs[i]));
                    p = vmlal_high_s8(p, c[i], xs[i]);
                }
                self.a = vpadalq_s16(self.a, p);
            }
        }
    }

    /// The exact integer dot product.
    #[inline(always)]
    unsafe fn sum<const DOT: bool>(self) -> i32 {
        // SAFETY: register operations.
        unsafe {
            if DOT {
                (vaddvq_s32(self.a) >> 2).wrapping_add(vaddvq_s32(self.b))
            } else {
                vaddvq_s32(self.a)
            }
        }
    }
}

/// Integer dot products of the `S` rows at `w[s]` with the `T` token rows at `x[t]`, `U` blocks
/// per loop iteration; each block is unpacked once for the `T` tokens.
#[inline(always)]
unsafe fn dots_at<const S: usize, const U: usize, const T: usize, const DOT: bool>(
    w: [*const u8; S],
    row_bytes: usize,
    x: [*const i8; T],
) -> [[i32; T]; S] {
    // SAFETY: `row_bytes` at each `w[s]` and `4 * row_bytes` activations at each `x[t]` are
    // readable.
    unsafe {
        let mut acc = [[[Acc::zero(); T]; U]; S];
        let n_blocks = row_bytes / 32;
        let mut i = 0;
        while i + U <= n_blocks {
            for (acc, &w) in acc.iter_mut().zip(&w) {
                for (u, acc) in acc.iter_mut().enumerate() {
                    let c = block_codes::<DOT>(w.add((i + u) * 32));
                    for (acc, &x) in acc.iter_mut().zip(&x) {
                        acc.add::<DOT>(&c, x.add((i + u) * 128));
                    }
                }
            }
            i += U;
        }
        for (u, i) in (i..n_blocks).enumerate() {
            for (acc, &w) in acc.iter_mut().zip(&w) {
                let c = block_codes::<DOT>(w.add(i * 32));
                for (acc, &x) in acc[u].iter_mut().zip(&x) {
                    acc.add::<DOT>(&c, x.add(i * 128));
                }
            }
        }
        // Plain loops, no closures: a closure would not inherit the caller's target features.
        let mut out = [[0i32; T]; S];
        for (o, acc) in out.iter_mut().zip(&acc) {
            for (t, o) in o.iter_mut().enumerate() {
                let mut s = acc[0][t].sum::<DOT>();
                for a in &acc[1..] {
                    s = s.wrapping_add(a[t].sum::<DOT>());
                }
                *o = s;
            }
        }
        out
    }
}

/// This variant's dots for the shared GEMV row walk and GEMM tiles.
pub(crate) struct Dots<const DOT: bool>;

impl<const DOT: bool> super::RowDots for Dots<DOT> {
    #[inline(always)]
    unsafe fn dots<const S: usize, const U: usize, const T: usize>(
        w: [*const u8; S],
        row_bytes: usize,
        x: [*const i8; T],
    ) -> [[i32; T]; S] {
        // SAFETY: forwarded contract.
        unsafe { dots_at::<S, U, T, DOT>(w, row_bytes, x) }
    }
}

impl<const DOT: bool> super::TileDots for Dots<DOT> {
    #[inline(always)]
    unsafe fn tile<const R: usize, const T: usize>(
        w: *const u8,
        row_bytes: usize,
        x: *const i8,
    ) -> [[i32; T]; R] {
        // SAFETY: forwarded contract: R rows at `w`, T token rows at `x`.
        unsafe {
            let mut ws = [w; R];
            for (r, p) in ws.iter_mut().enumerate() {
                *p = w.add(r * row_bytes);
            }
            let mut xs = [x; T];
            for (t, p) in xs.iter_mut().enumerate() {
                *p = x.add(t * row_bytes * 4);
            }
            dots_at::<R, 1, T, DOT>(ws, row_bytes, xs)
        }
    }
}

/// `clamp(round_half_even(x * s), -128, 127)` of 16 floats at `p` (NaN → 0: `fcvtns` gives 0
/// for NaN, and the saturating narrowings clamp).
#[inline(always)]
unsafe fn quantize16(p: *const f32, vs: float32x4_t) -> int8x16_t {
    // SAFETY: the caller guarantees 16 readable floats at `p`; register operations.
    unsafe {
        let q = |i: usize| vcvtnq_s32_f32(vmulq_f32(vld1q_f32(p.add(4 * i)), vs));
        let lo = vcombine_s16(vqmovn_s32(q(0)), vqmovn_s32(q(1)));
        let hi = vcombine_s16(vqmovn_s32(q(2)), vqmovn_s32(q(3)));
        vcombine_s8(vqmovn_s16(lo), vqmovn_s16(hi))
    }
}

/// Bit-exact NEON twin of `quantize::quantize_row_scalar`; `out.len() == x.len()`.
///
/// # Safety
/// None beyond aarch64 (NEON is part of every aarch64 CPU).
#[target_feature(enable = "neon")]
pub(crate) unsafe fn quantize_row(x: &[f32], out: &mut [i8]) -> ActScale {
    let n = x.len().min(out.len());
    let main = n / 16 * 16;
    // SAFETY: all loads and stores stay below `main <= n`.
    unsafe {
        let p = x.as_ptr();
        // `fmaxnm` returns the number when one operand is NaN, as f32::max does.
        let mut vmax = vdupq_n_f32(0.0);
        for i in (0..main).step_by(4) {
            vmax = vmaxnmq_f32(vmax, vabsq_f32(vld1q_f32(p.add(i))));
        }
        let tail = x[main..n].iter().fold(0.0f32, |m, &v| m.max(v.abs()));
        let scale = act_scale_for(vmaxnmvq_f32(vmax).max(tail));
        let vs = vdupq_n_f32(scale);
        let mut sum = 0i32;
        for i in (0..main).step_by(16) {
            let q = quantize16(p.add(i), vs);
            vst1q_s8(out.as_mut_ptr().add(i), q);
            sum += i32::from(vaddlvq_s8(q));
        }
        for (o, &v) in out[main..n].iter_mut().zip(&x[main..n]) {
            *o = quantize_value(v, scale);
            sum += i32::from(*o);
        }
        ActScale { scale, sum }
    }
}
