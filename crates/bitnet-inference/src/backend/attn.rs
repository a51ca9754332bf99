//! CPU attention for one (row, head): scores against every cached key, softmax, then the
//! weighted sum of values. The body is compiled twice — baseline x86-64 (the reference) and
//! AVX2+FMA — and the wider one is chosen at run time. Keys and values are f32 or f16
//! ([`attend_f16`]): an f16 row is widened to f32 (exactly) and then goes through the same f32
//! arithmetic, so f16 rows attend bit for bit as f32 rows holding the same values would.

use half::f16;
use half::slice::HalfFloatSliceExt;
use std::cell::RefCell;

thread_local! {
    /// Per-thread score buffer, grown as needed and reused (no allocation per token).
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Per-thread f32 copy of one f16 key or value row (head_dim values), reused likewise.
    static ROW: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Whether the AVX2+FMA body may run: detected, and not turned off by `BITNET_KERNEL=scalar`.
#[cfg(target_arch = "x86_64")]
fn avx2_fma() -> bool {
    std::env::var_os("BITNET_KERNEL").is_none_or(|v| v != "scalar")
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
}

/// Grows a per-thread buffer to at least `n` values (to a power of two, so it settles).
fn grown(buf: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if buf.len() < n {
        buf.resize(n.next_power_of_two(), 0.0);
    }
    &mut buf[..n]
}

/// `out = softmax(q·Kᵀ * scale) · V` over the first `n` rows of `k` and `v` (row length `q.len()`).
pub fn attend(q: &[f32], k: &[f32], v: &[f32], n: usize, scale: f32, out: &mut [f32]) {
    SCORES.with(|s| {
        let mut s = s.borrow_mut();
        let s = grown(&mut s, n);
        #[cfg(target_arch = "x86_64")]
        {
            if avx2_fma() {
                // SAFETY: AVX2 and FMA were detected at run time.
                unsafe { attend_avx2(q, k, v, n, scale, out, s) };
                return;
            }
        }
        attend_body(AsIs, q, k, v, n, scale, out, s, &mut []);
    })
}

/// [`attend`] over f16 keys and values: each row is widened to f32 as it is read, then the
/// arithmetic is [`attend`]'s, operation for operation.
pub fn attend_f16(q: &[f32], k: &[f16], v: &[f16], n: usize, scale: f32, out: &mut [f32]) {
    SCORES.with(|s| {
        ROW.with(|row| {
            let (mut s, mut row) = (s.borrow_mut(), row.borrow_mut());
            let (s, row) = (grown(&mut s, n), grown(&mut row, q.len()));
            #[cfg(target_arch = "x86_64")]
            {
                if avx2_fma() && is_x86_feature_detected!("f16c") {
                    // SAFETY: AVX2, FMA and F16C were detected at run time.
                    unsafe { attend_avx2_f16(q, k, v, n, scale, out, s, row) };
                    return;
                }
            }
            attend_body(Portable, q, k, v, n, scale, out, s, row);
        })
    })
}

/// The reference: the same body compiled for the baseline target.
#[cfg(test)]
pub fn attend_scalar(q: &[f32], k: &[f32], v: &[f32], n: usize, scale: f32, out: &mut [f32]) {
    let mut s = vec![0f32; n];
    attend_body(AsIs, q, k, v, n, scale, out, &mut s, &mut []);
}

/// [`attend_f16`]'s reference: the f16 body compiled for the baseline target.
#[cfg(test)]
pub fn attend_scalar_f16(q: &[f32], k: &[f16], v: &[f16], n: usize, scale: f32, out: &mut [f32]) {
    let (mut s, mut row) = (vec![0f32; n], vec![0f32; q.len()]);
    attend_body(Portable, q, k, v, n, scale, out, &mut s, &mut row);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_avx2(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    n: usize,
    scale: f32,
    out: &mut [f32],
    scores: &mut [f32],
) {
    attend_body(AsIs, q, k, v, n, scale, out, scores, &mut [])
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_avx2_f16(
    q: &[f32],
    k: &[f16],
    v: &[f16],
    n: usize,
    scale: f32,
    out: &mut [f32],
    scores: &mut [f32],
    row: &mut [f32],
) {
    attend_body(F16c(()), q, k, v, n, scale, out, scores, row)
}

/// How a stored key or value row becomes the f32 row the arithmetic reads.
trait Widen<T>: Copy {
    /// `src` as f32: `src` itself, or its values written into `buf` (`src.len()` values).
    fn widen<'a>(self, src: &'a [T], buf: &'a mut [f32]) -> &'a [f32];
}

/// f32 rows, read in place (no copy).
#[derive(Clone, Copy)]
struct AsIs;

impl Widen<f32> for AsIs {
    #[inline(always)]
    fn widen<'a>(self, src: &'a [f32], _: &'a mut [f32]) -> &'a [f32] {
        src
    }
}

/// f16 rows through `half`'s slice conversion (which picks F16C at run time itself).
#[derive(Clone, Copy)]
struct Portable;

impl Widen<f16> for Portable {
    #[inline(always)]
    fn widen<'a>(self, src: &'a [f16], buf: &'a mut [f32]) -> &'a [f32] {
        let buf = &mut buf[..src.len()];
        src.convert_to_f32_slice(buf);
        buf
    }
}

/// f16 rows through F16C, 8 values per instruction, inlined into the AVX2 body. Made only in
/// [`attend_avx2_f16`], which runs only where F16C was detected: holding one proves it.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct F16c(());

#[cfg(target_arch = "x86_64")]
impl Widen<f16> for F16c {
    #[inline(always)]
    fn widen<'a>(self, src: &'a [f16], buf: &'a mut [f32]) -> &'a [f32] {
        use std::arch::x86_64::{__m128i, _mm256_cvtph_ps, _mm256_storeu_ps, _mm_loadu_si128};
        let buf = &mut buf[..src.len()];
        let (s8, mut d8) = (src.chunks_exact(8), buf.chunks_exact_mut(8));
        let tail = s8.remainder();
        for (s, d) in s8.zip(&mut d8) {
            // SAFETY: F16C is available (see the type); `s` is 8 f16 (16 bytes, read
            // unaligned) and `d` 8 f32 (32 bytes, written unaligned).
            unsafe {
                let h = _mm_loadu_si128(s.as_ptr().cast::<__m128i>());
                _mm256_storeu_ps(d.as_mut_ptr(), _mm256_cvtph_ps(h));
            }
        }
        // f16 -> f32 is exact: the software conversion gives the same values as F16C.
        for (d, s) in d8.into_remainder().iter_mut().zip(tail) {
            *d = s.to_f32_const();
        }
        buf
    }
}

/// Dot product with 16 independent partial sums (vectorizes to 2x8 or 1x16 lanes).
#[inline(always)]
pub fn dot16(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The attention of one (row, head); `row` is where `widen` may put one key or value row
/// (`q.len()` values; unused for f32).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn attend_body<T, W: Widen<T>>(
    widen: W,
    q: &[f32],
    k: &[T],
    v: &[T],
    n: usize,
    scale: f32,
    out: &mut [f32],
    scores: &mut [f32],
    row: &mut [f32],
) {
    let d = q.len();
    let mut m = f32::NEG_INFINITY;
    for (p, s) in scores.iter_mut().enumerate() {
        *s = dot16(q, widen.widen(&k[p * d..(p + 1) * d], row)) * scale;
        m = m.max(*s);
    }
    let mut l = 0f32;
    for s in scores.iter_mut() {
        *s = (*s - m).exp();
        l += *s;
    }
    out.iter_mut().for_each(|o| *o = 0.0);
    for (p, &w) in scores.iter().enumerate().take(n) {
        for (o, &vv) in out.iter_mut().zip(widen.widen(&v[p * d..(p + 1) * d], row)) {
            *o += w * vv;
        }
    }
    let inv = 1.0 / l;
    out.iter_mut().for_each(|o| *o *= inv);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, d: usize, seed: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let f = |i: usize, m: usize, o: f32| ((i * m % 97) as f32 - 48.0) / 48.0 * o;
        let q = (0..d).map(|i| f(i + seed, 7, 2.0)).collect();
        let k = (0..n * d).map(|i| f(i + seed, 13, 1.5)).collect();
        let v = (0..n * d).map(|i| f(i + seed, 17, 3.0)).collect();
        (q, k, v)
    }

    fn reference(q: &[f32], k: &[f32], v: &[f32], n: usize, scale: f32) -> Vec<f64> {
        let d = q.len();
        let s: Vec<f64> = (0..n)
            .map(|p| (0..d).map(|i| q[i] as f64 * k[p * d + i] as f64).sum::<f64>() * scale as f64)
            .collect();
        let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
        let z: f64 = e.iter().sum();
        (0..d).map(|i| (0..n).map(|p| e[p] / z * v[p * d + i] as f64).sum()).collect()
    }

    #[test]
    fn attention_equals_a_float64_softmax_on_odd_sizes() {
        for (n, d) in [(1usize, 16usize), (37, 16), (5, 64), (300, 128), (17, 33)] {
            let (q, k, v) = data(n, d, n + d);
            let want = reference(&q, &k, &v, n, 0.125);
            let mut a = vec![f32::NAN; d];
            let mut b = vec![f32::NAN; d];
            attend(&q, &k, &v, n, 0.125, &mut a);
            attend_scalar(&q, &k, &v, n, 0.125, &mut b);
            for i in 0..d {
                assert!((a[i] as f64 - want[i]).abs() < 1e-4, "n={n} d={d} i={i}");
                assert!((a[i] - b[i]).abs() <= 1e-5 * b[i].abs().max(1.0), "simd vs scalar");
            }
        }
    }

    #[test]
    fn huge_scores_do_not_overflow() {
        let d = 16;
        let q = vec![100.0f32; d];
        let k = vec![100.0f32; 3 * d];
        let v: Vec<f32> = (0..3 * d).map(|i| (i / d) as f32).collect();
        let mut out = vec![0f32; d];
        attend(&q, &k, &v, 3, 1.0, &mut out);
        assert!(out.iter().all(|x| (x - 1.0).abs() < 1e-5), "{out:?}");
    }

    /// `x` rounded to f16, and the same values as f32 (exact).
    fn halves(x: &[f32]) -> (Vec<f16>, Vec<f32>) {
        let h: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
        let f = h.iter().map(|v| v.to_f32()).collect();
        (h, f)
    }

    fn bits(x: &[f32]) -> Vec<u32> {
        x.iter().map(|v| v.to_bits()).collect()
    }

    #[test]
    fn f16_rows_attend_bit_for_bit_as_f32_rows_of_the_same_values() {
        // head_dim 33 and 20 leave a tail after F16C's 8-value steps.
        for n in [1usize, 3, 17, 130] {
            for d in [8usize, 20, 33, 40, 64, 128] {
                let (q, k, v) = data(n, d, 3 * n + d);
                let ((k16, k32), (v16, v32)) = (halves(&k), halves(&v));
                let scale = 1.0 / (d as f32).sqrt();
                let mut want = vec![f32::NAN; d];
                let mut got = vec![f32::NAN; d];
                attend(&q, &k32, &v32, n, scale, &mut want);
                attend_f16(&q, &k16, &v16, n, scale, &mut got);
                assert_eq!(bits(&got), bits(&want), "dispatched, n={n} d={d}");
                attend_scalar(&q, &k32, &v32, n, scale, &mut want);
                attend_scalar_f16(&q, &k16, &v16, n, scale, &mut got);
                assert_eq!(bits(&got), bits(&want), "scalar, n={n} d={d}");
                let r = reference(&q, &k32, &v32, n, scale);
                assert!(got.iter().zip(&r).all(|(g, r)| (*g as f64 - r).abs() < 1e-4));
            }
        }
    }

    #[test]
    fn f16_rows_read_only_their_own_rows() {
        // Rows past `n` (a longer cache) and a second call on the same thread's buffers must
        // not change the result.
        let (n, d) = (5, 64);
        let (q, k, v) = data(n + 3, d, 11);
        let ((k16, k32), (v16, v32)) = (halves(&k), halves(&v));
        let mut want = vec![0f32; d];
        attend(&q, &k32[..n * d], &v32[..n * d], n, 0.125, &mut want);
        for _ in 0..2 {
            let mut got = vec![f32::NAN; d];
            attend_f16(&q, &k16, &v16, n, 0.125, &mut got);
            assert_eq!(bits(&got), bits(&want));
        }
    }
}
