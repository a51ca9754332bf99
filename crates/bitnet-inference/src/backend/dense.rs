//! Dense (floating-point or ggml-quantized) matrices: embedding tables and the lm_head.

use bitnet_core::{DType, Error, Result, Tensor};

/// A `[rows, cols]` matrix stored as F32, F16, BF16 (or ggml Q8_0 / Q6_K), read row by row.
#[derive(Clone, Debug)]
pub struct DenseMatrix {
    rows: usize,
    cols: usize,
    tensor: Tensor,
}

impl DenseMatrix {
    /// Wraps a 2-D tensor.
    pub fn new(tensor: Tensor, what: &str) -> Result<Self> {
        let (rows, cols) = super::float_matrix(&tensor, what)?;
        Ok(DenseMatrix { rows, cols, tensor })
    }
    /// Rows (vocabulary size for embeddings).
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Columns (hidden size).
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// The underlying tensor.
    pub fn tensor(&self) -> &Tensor {
        &self.tensor
    }

    /// Row `i` converted to f32 into `out` (`out.len() == cols`).
    pub fn row_into(&self, i: usize, out: &mut [f32]) -> Result<()> {
        if i >= self.rows {
            return Err(Error::invalid(format!("row {i} out of range ({} rows)", self.rows)));
        }
        if out.len() != self.cols {
            return Err(Error::shape(format!("row buffer {} != cols {}", out.len(), self.cols)));
        }
        let c = self.cols;
        let b = self.tensor.bytes();
        match self.tensor.dtype() {
            DType::F32 => {
                for (o, ch) in out.iter_mut().zip(b[i * c * 4..(i + 1) * c * 4].chunks_exact(4)) {
                    *o = f32::from_le_bytes([ch[0], ch[1], ch[2], ch[3]]);
                }
            }
            DType::F16 => {
                for (o, ch) in out.iter_mut().zip(b[i * c * 2..(i + 1) * c * 2].chunks_exact(2)) {
                    *o = half::f16::from_le_bytes([ch[0], ch[1]]).to_f32();
                }
            }
            DType::BF16 => {
                for (o, ch) in out.iter_mut().zip(b[i * c * 2..(i + 1) * c * 2].chunks_exact(2)) {
                    *o = half::bf16::from_le_bytes([ch[0], ch[1]]).to_f32();
                }
            }
            d @ (DType::Q8_0 | DType::Q6K) => {
                let row_bytes = d.storage_bytes(c)?;
                let src = &b[i * row_bytes..(i + 1) * row_bytes];
                dequantize_ggml(d, src, out)?;
            }
            d => return Err(Error::unsupported(format!("{d} dense rows"))),
        }
        Ok(())
    }
}

fn dequantize_ggml(d: DType, src: &[u8], out: &mut [f32]) -> Result<()> {
    use bitnet_quant::formats::ggml;
    match d {
        DType::Q8_0 => ggml::dequantize_q8_0_into(src, out),
        DType::Q6K => ggml::dequantize_q6_k_into(src, out),
        d => Err(Error::unsupported(format!("dequantizing {d} rows"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_rows_dequantize_like_the_whole_tensor() {
        let (rows, cols) = (3, 64);
        let x: Vec<f32> = (0..rows * cols).map(|i| ((i * 7 % 23) as f32 - 11.0) / 7.0).collect();
        let q = bitnet_quant::formats::ggml::quantize_q8_0(&x).unwrap();
        let whole = bitnet_quant::formats::ggml::dequantize_q8_0(&q, rows * cols).unwrap();
        let t = Tensor::from_bytes(DType::Q8_0, [rows, cols], &q).unwrap();
        let m = DenseMatrix::new(t, "emb").unwrap();
        let mut row = vec![0f32; cols];
        for r in 0..rows {
            m.row_into(r, &mut row).unwrap();
            assert_eq!(row, whole[r * cols..(r + 1) * cols]);
        }
        assert!(m.row_into(rows, &mut row).is_err());
    }
}
