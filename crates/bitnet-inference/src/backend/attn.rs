//! CPU attention for one (row, head): scores against every cached key, softmax, then the
//! weighted sum of values. The body is compiled twice — baseline x86-64 (the reference) and
//! AVX2+FMA — and the wider one is chosen at run time.

use std::cell::RefCell;

thread_local! {
    /// Per-thread score buffer, grown as needed and reused (no allocation per token).
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `out = softmax(q·Kᵀ * scale) · V` over the first `n` rows of `k` and `v` (row length `q.len()`).
pub fn attend(q: &[f32], k: &[f32], v: &[f32], n: usize, scale: f32, out: &mut [f32]) {
    SCORES.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < n {
            s.resize(n.next_power_of_two(), 0.0);
        }
        #[cfg(target_arch = "x86_64")]
        {
            if std::env::var_os("BITNET_KERNEL").is_none_or(|v| v != "scalar")
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
            {
                // SAFETY: AVX2 and FMA were detected at run time.
                unsafe { attend_avx2(q, k, v, n, scale, out, &mut s[..n]) };
                return;
            }
        }
        attend_body(q, k, v, n, scale, out, &mut s[..n]);
    })
}

/// The reference: the same body compiled for the baseline target.
#[cfg(test)]
pub fn attend_scalar(q: &[f32], k: &[f32], v: &[f32], n: usize, scale: f32, out: &mut [f32]) {
    let mut s = vec![0f32; n];
    attend_body(q, k, v, n, scale, out, &mut s);
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
    attend_body(q, k, v, n, scale, out, scores)
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

#[inline(always)]
fn attend_body(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    n: usize,
    scale: f32,
    out: &mut [f32],
    scores: &mut [f32],
) {
    let d = q.len();
    let mut m = f32::NEG_INFINITY;
    for (p, s) in scores.iter_mut().enumerate() {
        *s = dot16(q, &k[p * d..(p + 1) * d]) * scale;
        m = m.max(*s);
    }
    let mut l = 0f32;
    for s in scores.iter_mut() {
        *s = (*s - m).exp();
        l += *s;
    }
    out.iter_mut().for_each(|o| *o = 0.0);
    for (p, &w) in scores.iter().enumerate().take(n) {
        for (o, &vv) in out.iter_mut().zip(&v[p * d..(p + 1) * d]) {
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
}
