//! The int8 lm_head: vocabulary rows quantized to int8 with one f32 scale per row, times
//! activations quantized per token to symmetric int8 ([-127, 127]).
//!
//! Exact integer dot products; the scalar `dot_i8_scalar` is the reference for the AVX2 one.

use super::DenseMatrix;
use bitnet_core::{AlignedVec, Error, Result, ThreadPool};

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

    /// `out[r, j] = (x[r] · w[j])` for `rows` rows of `x`.
    pub fn matmul(&self, x: &[f32], rows: usize, out: &mut [f32], pool: &ThreadPool) -> Result<()> {
        if x.len() < rows * self.cols || out.len() < rows * self.rows {
            return Err(Error::shape(format!(
                "int8 lm_head: {rows} rows need {} inputs and {} outputs",
                rows * self.cols,
                rows * self.rows
            )));
        }
        let mut xq = vec![0i8; self.cols];
        let dot = select_dot();
        for r in 0..rows {
            let sx = quantize_sym(&x[r * self.cols..(r + 1) * self.cols], &mut xq);
            let xq = &xq;
            let o = &mut out[r * self.rows..(r + 1) * self.rows];
            pool.for_each_chunk_mut(o, 512, &|c, oc| {
                for (j, v) in oc.iter_mut().enumerate() {
                    let row = c * 512 + j;
                    let w = &self.data[row * self.cols..(row + 1) * self.cols];
                    *v = dot(w, xq) as f32 * (self.scales[row] * sx);
                }
            });
        }
        Ok(())
    }
}

type DotFn = fn(&[i8], &[i8]) -> i32;

fn select_dot() -> DotFn {
    #[cfg(target_arch = "x86_64")]
    {
        if std::env::var("BITNET_KERNEL").ok().as_deref() != Some("scalar")
            && is_x86_feature_detected!("avx2")
        {
            return dot_i8_avx2_entry;
        }
    }
    dot_i8_scalar
}

/// Reference: exact i32 dot product of two int8 vectors.
pub fn dot_i8_scalar(a: &[i8], b: &[i8]) -> i32 {
    a.iter().zip(b).map(|(&x, &y)| x as i32 * y as i32).sum()
}

#[cfg(target_arch = "x86_64")]
fn dot_i8_avx2_entry(a: &[i8], b: &[i8]) -> i32 {
    // SAFETY: selected only when AVX2 was detected at run time.
    unsafe { dot_i8_avx2(a, b) }
}

/// AVX2 dot product. Requires values in [-127, 127] in `a` (sign trick: |a| * sign(b, a)).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_i8_avx2(a: &[i8], b: &[i8]) -> i32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let mut acc = _mm256_setzero_si256();
    let ones = _mm256_set1_epi16(1);
    let mut i = 0;
    while i + 32 <= n {
        // SAFETY: i + 32 <= n keeps both 32-byte loads in bounds; loadu has no alignment need.
        let va = _mm256_loadu_si256(a.as_ptr().add(i) as *const __m256i);
        let vb = _mm256_loadu_si256(b.as_ptr().add(i) as *const __m256i);
        let abs_a = _mm256_sign_epi8(va, va);
        let sb = _mm256_sign_epi8(vb, va);
        let p16 = _mm256_maddubs_epi16(abs_a, sb);
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p16, ones));
        i += 32;
    }
    let mut lanes = [0i32; 8];
    // SAFETY: lanes is 32 bytes.
    _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, acc);
    lanes.iter().sum::<i32>() + dot_i8_scalar(&a[i..n], &b[i..n])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> i8 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (((*seed >> 33) % 255) as i32 - 127) as i8
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_dot_equals_scalar_on_random_and_extreme_inputs() {
        if !is_x86_feature_detected!("avx2") {
            eprintln!("skipped: no AVX2");
            return;
        }
        let mut s = 7u64;
        for n in [0usize, 1, 31, 32, 33, 64, 100, 2560, 2561] {
            let a: Vec<i8> = (0..n).map(|_| lcg(&mut s)).collect();
            let b: Vec<i8> = (0..n).map(|_| lcg(&mut s)).collect();
            assert_eq!(dot_i8_avx2_entry(&a, &b), dot_i8_scalar(&a, &b), "n={n}");
            let a = vec![-127i8; n];
            let b = vec![-127i8; n];
            assert_eq!(dot_i8_avx2_entry(&a, &b), dot_i8_scalar(&a, &b));
            let b = vec![127i8; n];
            assert_eq!(dot_i8_avx2_entry(&a, &b), dot_i8_scalar(&a, &b));
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
    fn int8_matmul_is_close_to_f32() {
        let (rows, cols) = (300, 96);
        let vals: Vec<f32> = (0..rows * cols).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
        let t = bitnet_core::Tensor::from_f32([rows, cols], &vals).unwrap();
        let m = DenseMatrix::new(t, "w").unwrap();
        let pool = ThreadPool::new(2);
        let q = I8Matrix::quantize(&m, &pool).unwrap();
        let x: Vec<f32> = (0..cols).map(|i| ((i * 11 % 13) as f32 - 6.0) / 3.0).collect();
        let mut out = vec![0f32; rows];
        q.matmul(&x, 1, &mut out, &pool).unwrap();
        let maxabs = out.iter().fold(0f32, |m, v| m.max(v.abs()));
        let mut xq = vec![0i8; cols];
        let sx = quantize_sym(&x, &mut xq);
        for j in 0..rows {
            // Exactly the quantized maths...
            let w = &q.data[j * cols..(j + 1) * cols];
            let exact = dot_i8_scalar(w, &xq) as f64 * q.scales[j] as f64 * sx as f64;
            assert!((out[j] as f64 - exact).abs() < 1e-4 * maxabs as f64, "{j}");
            // ...and close to the f32 product (int8 rounding of both operands).
            let r: f32 = (0..cols).map(|k| vals[j * cols + k] * x[k]).sum();
            assert!((out[j] - r).abs() < 3e-2 * maxabs, "{j}: {} vs {r}", out[j]);
        }
    }
}
