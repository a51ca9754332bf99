//! BitLinear: per-token int8 activation quantization followed by the ternary kernel.
//!
//! ```
//! use bitnet_core::ThreadPool;
//! use bitnet_quant::bitlinear::{BitLinear, BitLinearScratch};
//! use bitnet_quant::formats::i2s::I2sMatrix;
//!
//! // y = W x with W = [[1, -1], [0, 1]] * 0.5 and x = [2, -2] (quantized exactly)
//! let w = I2sMatrix::from_ternary(&[1, -1, 0, 1], 2, 2, 0.5).unwrap();
//! let layer = BitLinear::new(w);
//! let (mut y, mut scratch) = (vec![0.0; 2], BitLinearScratch::default());
//! layer.forward(&[2.0, -2.0], 1, &mut y, &mut scratch, &ThreadPool::new(1)).unwrap();
//! assert_eq!(y, [2.0, -1.0]);
//! ```

use crate::formats::i2s::I2sMatrix;
use crate::kernels::{gemm, gemv};
use crate::quantize::{quantize_rows, ActScale};
use bitnet_core::{AlignedVec, Error, Result, ThreadPool};

/// A ternary linear layer without bias: `y = x Wᵀ` with BitNet b1.58 quantization.
#[derive(Clone, Debug)]
pub struct BitLinear {
    /// The packed ternary weight, `[out_features, in_features]`.
    pub weight: I2sMatrix,
}

/// Buffers reused across [`BitLinear::forward`] calls: they grow to the largest call seen,
/// so a warmed-up layer allocates nothing.
#[derive(Default)]
pub struct BitLinearScratch {
    xq: Option<AlignedVec<i8>>,
    acts: Vec<ActScale>,
}

impl BitLinearScratch {
    /// Scratch sized for up to `n_tok` tokens of `padded_cols` activations.
    pub fn with_capacity(n_tok: usize, padded_cols: usize) -> Self {
        let mut s = Self::default();
        s.reserve(n_tok, padded_cols);
        s
    }

    /// Grows the buffers (never shrinks) to hold `n_tok` rows of `padded_cols`.
    fn reserve(&mut self, n_tok: usize, padded_cols: usize) {
        let need = n_tok * padded_cols;
        if self.xq.as_ref().is_none_or(|v| v.len() < need) {
            self.xq = Some(AlignedVec::zeros(need));
        }
        if self.acts.len() < n_tok {
            self.acts.resize(n_tok, ActScale::default());
        }
    }
}

impl BitLinear {
    /// A layer over a packed weight.
    pub fn new(weight: I2sMatrix) -> Self {
        BitLinear { weight }
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        self.weight.cols()
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.weight.rows()
    }

    /// `out[t] = dequant(quant(x[t])) · dequant(W)ᵀ` for `n_tok` tokens: `x` is
    /// `n_tok × in_features`, `out` is `n_tok × out_features`.
    pub fn forward(
        &self,
        x: &[f32],
        n_tok: usize,
        out: &mut [f32],
        scratch: &mut BitLinearScratch,
        pool: &ThreadPool,
    ) -> Result<()> {
        let (k, kp, n) = (self.in_features(), self.weight.padded_cols(), self.out_features());
        if x.len() != n_tok * k || out.len() != n_tok * n {
            return Err(Error::shape(format!(
                "BitLinear {k} -> {n} of {n_tok} tokens needs {} inputs and {} outputs, got {} and {}",
                n_tok * k,
                n_tok * n,
                x.len(),
                out.len()
            )));
        }
        if n_tok == 0 {
            return Ok(());
        }
        scratch.reserve(n_tok, kp);
        let acts = &mut scratch.acts[..n_tok];
        let xq = match scratch.xq.as_mut() {
            Some(v) => &mut v[..n_tok * kp],
            None => return Err(Error::invalid("BitLinear scratch was not allocated")),
        };
        quantize_rows(x, k, xq, kp, acts)?;
        if n_tok == 1 {
            gemv(&self.weight, xq, acts[0], out, pool)
        } else {
            gemm(&self.weight, xq, acts, out, pool)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quantize::absmean_ternary;

    /// `y = dequant(xq) · dequant(W)ᵀ` in f64, from the quantized values.
    fn reference(layer: &BitLinear, x: &[f32], n_tok: usize) -> Vec<f64> {
        let (k, n) = (layer.in_features(), layer.out_features());
        let w = layer.weight.to_ternary();
        let s_w = f64::from(layer.weight.scale());
        let mut y = Vec::with_capacity(n_tok * n);
        for xt in x.chunks_exact(k) {
            let mut xq = vec![0i8; k];
            let a = crate::quantize::quantize_row(xt, &mut xq).unwrap();
            let xd: Vec<f64> = xq.iter().map(|&q| f64::from(q) / f64::from(a.scale)).collect();
            for wr in w.chunks_exact(k) {
                y.push(wr.iter().zip(&xd).map(|(&wv, &xv)| f64::from(wv) * s_w * xv).sum());
            }
        }
        y
    }

    fn layer(rows: usize, cols: usize) -> BitLinear {
        let latent: Vec<f32> =
            (0..rows * cols).map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0).collect();
        let (q, s) = absmean_ternary(&latent);
        BitLinear::new(I2sMatrix::from_ternary(&q, rows, cols, s).unwrap())
    }

    fn check(rows: usize, cols: usize, n_tok: usize, pool: &ThreadPool) {
        let l = layer(rows, cols);
        let x: Vec<f32> = (0..n_tok * cols).map(|i| ((i * 13 % 29) as f32 - 14.0) * 0.3).collect();
        let mut y = vec![0.0; n_tok * rows];
        let mut s = BitLinearScratch::default();
        l.forward(&x, n_tok, &mut y, &mut s, pool).unwrap();
        let want = reference(&l, &x, n_tok);
        let norm = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-12);
        for (i, (&g, &w)) in y.iter().zip(&want).enumerate() {
            assert!((f64::from(g) - w).abs() <= 1e-4 * norm.max(w.abs()), "{i}: {g} vs {w}");
        }
    }

    #[test]
    fn forward_matches_f32_reference_for_one_and_many_tokens() {
        let pool = ThreadPool::new(2);
        check(160, 64, 1, &pool);
        check(64, 160, 5, &pool);
        check(300, 2560, 1, &pool);
        check(96, 384, 128, &pool);
    }

    #[test]
    fn scratch_is_reused_once_warm() {
        let l = layer(32, 200);
        let pool = ThreadPool::new(1);
        let mut s = BitLinearScratch::with_capacity(4, l.weight.padded_cols());
        let ptr = s.xq.as_ref().unwrap().as_ptr();
        let mut y = vec![0.0; 4 * 32];
        for n_tok in [4, 1, 3] {
            l.forward(&vec![0.5; n_tok * 200], n_tok, &mut y[..n_tok * 32], &mut s, &pool).unwrap();
        }
        assert_eq!(s.xq.as_ref().unwrap().as_ptr(), ptr);
    }

    #[test]
    fn wrong_lengths_are_shape_errors() {
        let l = layer(8, 64);
        let mut s = BitLinearScratch::default();
        let pool = ThreadPool::new(1);
        assert!(l.forward(&[0.0; 63], 1, &mut [0.0; 8], &mut s, &pool).is_err());
        assert!(l.forward(&[0.0; 128], 2, &mut [0.0; 8], &mut s, &pool).is_err());
    }
}
