//! The int8 lm_head: vocabulary rows quantized to int8 with one f32 scale per row (a quarter
//! of the f32 bytes), times f32 activations (keeping activations in f32 adds no rounding
//! error).
//!
//! Every dot is summed in 16 lanes in the same order ([`dot_i8_f32_scalar`], the reference
//! for the AVX2 kernels), so a row's logits are the same bits alone or in a batch. The AVX2
//! kernel takes two far-apart vocabulary rows per call: two weight streams, and four
//! independent multiply-add chains (one row's two would wait on the multiply-add latency).
//! Several activation rows go two at a time (a two-by-two kernel: each weight widened once for
//! both) over a block of vocabulary rows small enough to stay in L2, so the weights come from
//! memory once, and each pass's activations (20 KB for 2560 columns) stay in L1.

use super::DenseMatrix;
use bitnet_core::{AlignedVec, Error, Result, ThreadPool};
use std::ops::Range;

/// `[rows, cols]` int8 with per-row scales (`w ≈ q * scale`).
pub struct I8Matrix {
    rows: usize,
    cols: usize,
    data: AlignedVec<i8>,
    scales: Vec<f32>,
}

/// Quantizes `x` symmetrically to [-127, 127]; returns the dequantization step.
fn quantize_sym(x: &[f32], out: &mut [i8]) -> f32 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    if amax == 0.0 || !amax.is_finite() {
        out.iter_mut().for_each(|o| *o = 0);
        return 0.0;
    }
    let s = 127.0 / amax;
    for (o, &v) in out.iter_mut().zip(x) {
        *o = (v * s).round_ties_even().clamp(-127.0, 127.0) as i8;
    }
    amax / 127.0
}

impl I8Matrix {
    /// Quantizes every row of `m`.
    pub fn quantize(m: &DenseMatrix, pool: &ThreadPool) -> Result<Self> {
        let (rows, cols) = (m.rows(), m.cols());
        let mut data = AlignedVec::<i8>::zeros(rows * cols);
        let mut scales = vec![0f32; rows];
        let err = std::sync::Mutex::new(None);
        let chunk = 1024;
        let mut pairs: Vec<(&mut [i8], &mut [f32])> =
            data.chunks_mut(chunk * cols).zip(scales.chunks_mut(chunk)).collect();
        pool.for_each_chunk_mut(&mut pairs, 1, &|c, p| {
            let (q, s) = &mut p[0];
            let mut row = vec![0f32; cols];
            for (j, (qr, sr)) in q.chunks_mut(cols).zip(s.iter_mut()).enumerate() {
                if let Err(e) = m.row_into(c * chunk + j, &mut row) {
                    *err.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                    return;
                }
                *sr = quantize_sym(&row, qr);
            }
        });
        if let Some(e) = err.into_inner().unwrap_or_else(|e| e.into_inner()) {
            return Err(e);
        }
        Ok(I8Matrix { rows, cols, data, scales })
    }

    /// `out[r, j] = x[r] · (q[j] * scale[j])` for `rows` rows of `x` (f32 activations).
    pub fn matmul(&self, x: &[f32], rows: usize, out: &mut [f32], pool: &ThreadPool) -> Result<()> {
        if x.len() < rows * self.cols || out.len() < rows * self.rows {
            return Err(Error::shape(format!(
                "int8 lm_head: {rows} rows need {} inputs and {} outputs",
                rows * self.cols,
                rows * self.rows
            )));
        }
        let k = Kernels::select();
        let n_vocab = self.rows;
        let cols = self.cols;
        let chunk = 256;
        if rows == 1 {
            // Decode: straight into `out`, no temporary.
            pool.for_each_chunk_mut(&mut out[..n_vocab], chunk, &|c, oc| {
                let j0 = c * chunk;
                let span = j0..j0 + oc.len();
                self.dot_rows(k, span, [&x[..cols]], k.dot2, |j, _, v| oc[j - j0] = v);
            });
            return Ok(());
        }
        // Several rows: a vocab-major temporary, each task's block of vocabulary rows (640 KB
        // for 2560 columns) read from memory by the first pass, from L2 by the others; a pass
        // takes two activation rows (20 KB, in L1), widening each weight once for both.
        let mut tmp = vec![0f32; rows * n_vocab];
        pool.for_each_chunk_mut(&mut tmp, chunk * rows, &|c, oc| {
            let j0 = c * chunk;
            let span = j0..j0 + oc.len() / rows;
            let x = |r: usize| &x[r * cols..(r + 1) * cols];
            let mut r = 0;
            while r + 2 <= rows {
                let put = |j: usize, t: usize, v: f32| oc[(j - j0) * rows + r + t] = v;
                self.dot_rows(k, span.clone(), [x(r), x(r + 1)], k.dot2x2, put);
                r += 2;
            }
            if r < rows {
                let put = |j: usize, _: usize, v: f32| oc[(j - j0) * rows + r] = v;
                self.dot_rows(k, span, [x(r)], k.dot2, put);
            }
        });
        for (j, tr) in tmp.chunks_exact(rows).enumerate() {
            for (r, &v) in tr.iter().enumerate() {
                out[r * n_vocab + j] = v;
            }
        }
        Ok(())
    }

    /// Vocabulary row `j`'s weights.
    fn row(&self, j: usize) -> &[i8] {
        &self.data[j * self.cols..(j + 1) * self.cols]
    }

    /// `put(j, t, xs[t] · row j * scale[j])` for every `j` of `span` and every activation row
    /// `t`: rows `j` and `j + half` together through `pair`, a last odd row through the one-row
    /// dot.
    fn dot_rows<const T: usize>(
        &self,
        k: Kernels,
        span: Range<usize>,
        xs: [&[f32]; T],
        pair: PairFn<T>,
        mut put: impl FnMut(usize, usize, f32),
    ) {
        let half = span.len() / 2;
        for j in span.start..span.start + half {
            let d = pair([self.row(j), self.row(j + half)], xs);
            for (jj, d) in [j, j + half].into_iter().zip(d) {
                for (t, d) in d.into_iter().enumerate() {
                    put(jj, t, d * self.scales[jj]);
                }
            }
        }
        if span.len() % 2 == 1 {
            let j = span.end - 1;
            for (t, x) in xs.iter().enumerate() {
                put(j, t, (k.dot)(self.row(j), x) * self.scales[j]);
            }
        }
    }
}

type DotFn = fn(&[i8], &[f32]) -> f32;

/// Whether the AVX2 + FMA kernels run: detected at run time, unless `BITNET_KERNEL=scalar`.
#[cfg(target_arch = "x86_64")]
fn use_avx2() -> bool {
    std::env::var("BITNET_KERNEL").ok().as_deref() != Some("scalar")
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
}

/// Dots of two weight rows with `T` activation rows: `[weight row][activation row]`.
type PairFn<const T: usize> = fn([&[i8]; 2], [&[f32]; T]) -> [[f32; T]; 2];

/// The kernels of this CPU (AVX2 + FMA, or the scalar reference).
#[derive(Clone, Copy)]
struct Kernels {
    dot: DotFn,
    dot2: PairFn<1>,
    dot2x2: PairFn<2>,
}

impl Kernels {
    fn select() -> Kernels {
        #[cfg(target_arch = "x86_64")]
        if use_avx2() {
            return Kernels {
                dot: dot_i8_f32_avx2_entry,
                dot2: pair_avx2_entry,
                dot2x2: pair_avx2_entry,
            };
        }
        Kernels { dot: dot_i8_f32_scalar, dot2: pair_scalar, dot2x2: pair_scalar }
    }
}

/// Reference of the pair kernels: [`dot_i8_f32_scalar`] of each of `ws` with each of `xs`.
pub fn pair_scalar<const T: usize>(ws: [&[i8]; 2], xs: [&[f32]; T]) -> [[f32; T]; 2] {
    ws.map(|w| xs.map(|x| dot_i8_f32_scalar(w, x)))
}

/// Reference: `Σ w[i] * x[i]` with 16 interleaved f32 partial sums (the order the SIMD
/// versions use, so they agree to rounding).
pub fn dot_i8_f32_scalar(w: &[i8], x: &[f32]) -> f32 {
    let n = w.len().min(x.len());
    let mut acc = [0f32; 16];
    let body = n / 16 * 16;
    for (cw, cx) in w[..body].chunks_exact(16).zip(x[..body].chunks_exact(16)) {
        for i in 0..16 {
            acc[i] += cw[i] as f32 * cx[i];
        }
    }
    let tail: f32 = w[body..n].iter().zip(&x[body..n]).map(|(&a, &b)| a as f32 * b).sum();
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
fn dot_i8_f32_avx2_entry(w: &[i8], x: &[f32]) -> f32 {
    // SAFETY: selected only when AVX2 and FMA were detected at run time.
    unsafe { dot_i8_f32_avx2(w, x) }
}

/// AVX2 + FMA: int8 weights widened to f32, fused multiply-add, 16 lanes of partial sums.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_i8_f32_avx2(w: &[i8], x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = w.len().min(x.len());
    let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: i + 16 <= n bounds the 16-byte and two 32-byte loads; loadu needs no alignment.
        let wb = _mm_loadu_si128(w.as_ptr().add(i) as *const __m128i);
        let w0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(wb));
        let w1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(wb, 8)));
        a0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x.as_ptr().add(i)), a0);
        a1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x.as_ptr().add(i + 8)), a1);
        i += 16;
    }
    finish_avx2([a0, a1], &w[i..n], &x[i..n])
}

/// The dot of [`dot_i8_f32_avx2`] from its two accumulators (16 lanes, summed in order) and
/// the weights and activations past its last whole 16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn finish_avx2(acc: [std::arch::x86_64::__m256; 2], w: &[i8], x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let mut lanes = [0f32; 16];
    // SAFETY: lanes holds 16 f32.
    _mm256_storeu_ps(lanes.as_mut_ptr(), acc[0]);
    _mm256_storeu_ps(lanes.as_mut_ptr().add(8), acc[1]);
    let tail: f32 = w.iter().zip(x).map(|(&a, &b)| a as f32 * b).sum();
    lanes.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
fn pair_avx2_entry<const T: usize>(ws: [&[i8]; 2], xs: [&[f32]; T]) -> [[f32; T]; 2] {
    // SAFETY: selected only when AVX2 and FMA were detected at run time.
    unsafe { pair_avx2(ws, xs) }
}

/// [`dot_i8_f32_avx2`] of two weight rows with `T` activation rows: each 16 weights are
/// widened once for every activation row, each 16 activations loaded once for both weight
/// rows; 4·T independent multiply-add chains. Each dot is summed in the one-row kernel's lanes
/// and order (the same bits).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn pair_avx2<const T: usize>(ws: [&[i8]; 2], xs: [&[f32]; T]) -> [[f32; T]; 2] {
    use std::arch::x86_64::*;
    let n = ws.iter().map(|w| w.len()).chain(xs.iter().map(|x| x.len())).min().unwrap_or(0);
    let mut a = [[[_mm256_setzero_ps(); 2]; T]; 2];
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: i + 16 <= n bounds the 16-byte load of each weight row and the two 32-byte
        // loads of each activation row (all hold at least n values); loadu needs no alignment.
        let mut wv = [[_mm256_setzero_ps(); 2]; 2];
        for (wv, w) in wv.iter_mut().zip(&ws) {
            let wb = _mm_loadu_si128(w.as_ptr().add(i) as *const __m128i);
            wv[0] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(wb));
            wv[1] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(wb, 8)));
        }
        for (t, x) in xs.iter().enumerate() {
            let x0 = _mm256_loadu_ps(x.as_ptr().add(i));
            let x1 = _mm256_loadu_ps(x.as_ptr().add(i + 8));
            for (acc, wv) in a.iter_mut().zip(&wv) {
                acc[t][0] = _mm256_fmadd_ps(wv[0], x0, acc[t][0]);
                acc[t][1] = _mm256_fmadd_ps(wv[1], x1, acc[t][1]);
            }
        }
        i += 16;
    }
    let mut out = [[0f32; T]; 2];
    for ((o, acc), w) in out.iter_mut().zip(a).zip(&ws) {
        for ((o, acc), x) in o.iter_mut().zip(acc).zip(&xs) {
            *o = finish_avx2(acc, &w[i..n], &x[i..n]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 33) % 2001) as f32 / 1000.0 - 1.0
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_dot_equals_scalar_on_random_and_extreme_inputs() {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            eprintln!("skipped: no AVX2/FMA");
            return;
        }
        let mut s = 7u64;
        for n in [0usize, 1, 15, 16, 17, 64, 100, 2560, 2561] {
            let w: Vec<i8> = (0..n).map(|_| (lcg(&mut s) * 127.0) as i8).collect();
            let x: Vec<f32> = (0..n).map(|_| lcg(&mut s) * 3.0).collect();
            let (a, b) = (dot_i8_f32_avx2_entry(&w, &x), dot_i8_f32_scalar(&w, &x));
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "n={n}: {a} vs {b}");
            let w = vec![-127i8; n];
            let x = vec![1e30f32; n];
            let (a, b) = (dot_i8_f32_avx2_entry(&w, &x), dot_i8_f32_scalar(&w, &x));
            assert!(a == b || (a - b).abs() <= 1e-5 * b.abs(), "extreme n={n}: {a} vs {b}");
        }
    }

    /// The pair kernels (two weight rows by one and by two activation rows) give each dot's
    /// one-row result, bit for bit (AVX2 against the AVX2 one-row kernel, the scalar reference
    /// against the scalar one).
    #[test]
    fn two_row_dots_equal_one_row_dots() {
        let mut s = 11u64;
        for n in [0usize, 1, 15, 16, 17, 64, 100, 2560, 2561] {
            let x: Vec<f32> = (0..n).map(|_| lcg(&mut s) * 3.0).collect();
            let mut w: Vec<Vec<i8>> =
                (0..2).map(|_| (0..n).map(|_| (lcg(&mut s) * 127.0) as i8).collect()).collect();
            for case in 0..3 {
                match case {
                    1 => w[1].iter_mut().for_each(|v| *v = 0),
                    2 => w[0].iter_mut().for_each(|v| *v = -127),
                    _ => {}
                }
                let ws: [&[i8]; 2] = [&w[0], &w[1]];
                for x in [x.clone(), x.iter().map(|v| v * 1e30).collect()] {
                    let one = ws.map(|w| [dot_i8_f32_scalar(w, &x)]);
                    assert_eq!(pair_scalar(ws, [&x]), one, "scalar n={n}");
                    let y: Vec<f32> = x.iter().rev().map(|v| -v).collect();
                    let xs: [&[f32]; 2] = [&x, &y];
                    let grid = ws.map(|w| xs.map(|x| dot_i8_f32_scalar(w, x)));
                    assert_eq!(pair_scalar(ws, xs), grid, "scalar 2x2 n={n}");
                    #[cfg(target_arch = "x86_64")]
                    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                        let bits = |v: [f32; 2]| v.map(f32::to_bits);
                        let one = ws.map(|w| dot_i8_f32_avx2_entry(w, &x).to_bits());
                        let two = pair_avx2_entry(ws, [&x]).map(|[d]| d.to_bits());
                        assert_eq!(two, one, "avx2 n={n}");
                        let grid = ws.map(|w| bits(xs.map(|x| dot_i8_f32_avx2_entry(w, x))));
                        let got = pair_avx2_entry(ws, xs).map(bits);
                        assert_eq!(got, grid, "avx2 2x2 n={n}");
                    }
                }
            }
        }
    }

    #[test]
    fn symmetric_quantization_handles_zero_rows_and_extremes() {
        let mut q = [0i8; 3];
        assert_eq!(quantize_sym(&[0.0, 0.0, 0.0], &mut q), 0.0);
        assert_eq!(q, [0, 0, 0]);
        let s = quantize_sym(&[-2.0, 1.0, 2.0], &mut q);
        assert_eq!(q, [-127, 64, 127]);
        assert!((s - 2.0 / 127.0).abs() < 1e-9);
    }

    #[test]
    fn int8_matmul_is_the_dequantized_product_for_several_rows() {
        let (rows, cols) = (301, 96); // blocks of 256 and 45 rows: odd halves
        let vals: Vec<f32> =
            (0..rows * cols).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
        let t = bitnet_core::Tensor::from_f32([rows, cols], &vals).unwrap();
        let m = DenseMatrix::new(t, "w").unwrap();
        let pool = ThreadPool::new(2);
        let q = I8Matrix::quantize(&m, &pool).unwrap();
        let n_tok = 7; // three pairs of activation rows and one alone
        let x: Vec<f32> = (0..n_tok * cols).map(|i| ((i * 11 % 13) as f32 - 6.0) / 3.0).collect();
        let mut out = vec![0f32; n_tok * rows];
        q.matmul(&x, n_tok, &mut out, &pool).unwrap();
        let maxabs = out.iter().fold(0f32, |m, v| m.max(v.abs()));
        for r in 0..n_tok {
            let xr = &x[r * cols..(r + 1) * cols];
            for j in 0..rows {
                let w = &q.data[j * cols..(j + 1) * cols];
                let exact: f64 = w.iter().zip(xr).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>()
                    * q.scales[j] as f64;
                let got = out[r * rows + j] as f64;
                assert!((got - exact).abs() < 1e-5 * maxabs as f64, "{r},{j}");
                let f: f32 = (0..cols).map(|k| vals[j * cols + k] * xr[k]).sum();
                assert!((out[r * rows + j] - f).abs() < 1e-2 * maxabs, "{r},{j}");
            }
        }
        // Each row alone (the one-row path) gives the same bits.
        for r in 0..n_tok {
            let mut one = vec![0f32; rows];
            q.matmul(&x[r * cols..(r + 1) * cols], 1, &mut one, &pool).unwrap();
            assert_eq!(one, out[r * rows..(r + 1) * rows], "row {r} alone");
        }
        assert!(q.matmul(&x, n_tok + 1, &mut out, &pool).is_err());
    }
}
