//! Host-side preparation of the CUDA backend's tables: embedding, lm_head rows, RoPE
//! frequencies. Pure Rust (no device), the same maths as the CPU backend.

use crate::backend::DenseMatrix;
use bitnet_core::{DType, Result};

/// Runs `f(first_row, rows_chunk_out)` over chunks of `rows` rows of `width` outputs, on all cores.
fn par_rows<T: Send>(
    out: &mut [T],
    width: usize,
    f: impl Fn(usize, &mut [T]) -> Result<()> + Sync,
) -> Result<()> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 16);
    let rows = out.len() / width.max(1);
    let per = rows.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let hs: Vec<_> = out
            .chunks_mut(per * width)
            .enumerate()
            .map(|(i, c)| {
                let f = &f;
                s.spawn(move || f(i * per, c))
            })
            .collect();
        hs.into_iter().try_for_each(|h| {
            h.join()
                .unwrap_or_else(|_| Err(bitnet_core::Error::invalid("a worker thread panicked")))
        })
    })
}

/// The table as f16 bits when it is stored as f16, else `None`.
pub(crate) fn f16_bits(m: &DenseMatrix) -> Option<Vec<u16>> {
    if m.tensor().dtype() != DType::F16 {
        return None;
    }
    let b = m.tensor().bytes();
    Some(b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect())
}

/// Every row as f32.
pub(crate) fn f32_rows(m: &DenseMatrix) -> Result<Vec<f32>> {
    let cols = m.cols();
    let mut out = vec![0f32; m.rows() * cols];
    par_rows(&mut out, cols, |r0, chunk| {
        for (j, row) in chunk.chunks_exact_mut(cols).enumerate() {
            m.row_into(r0 + j, row)?;
        }
        Ok(())
    })?;
    Ok(out)
}

/// Quantizes `x` symmetrically to [-127, 127] (as the CPU's int8 lm_head); returns the step.
pub(crate) fn quantize_sym(x: &[f32], out: &mut [i8]) -> f32 {
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

/// Every row quantized to int8 with one scale per row (the CPU's `I8Matrix`).
pub(crate) fn i8_rows(m: &DenseMatrix) -> Result<(Vec<i8>, Vec<f32>)> {
    let cols = m.cols();
    let mut q = vec![0i8; m.rows() * cols];
    let mut scales = vec![0f32; m.rows()];
    let step = std::sync::Mutex::new(Vec::<(usize, f32)>::new());
    par_rows(&mut q, cols, |r0, chunk| {
        let mut row = vec![0f32; cols];
        let mut local = Vec::with_capacity(chunk.len() / cols);
        for (j, qr) in chunk.chunks_exact_mut(cols).enumerate() {
            m.row_into(r0 + j, &mut row)?;
            local.push((r0 + j, quantize_sym(&row, qr)));
        }
        step.lock().unwrap_or_else(|e| e.into_inner()).extend(local);
        Ok(())
    })?;
    for (r, s) in step.into_inner().unwrap_or_else(|e| e.into_inner()) {
        scales[r] = s;
    }
    Ok((q, scales))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitnet_core::Tensor;

    #[test]
    fn int8_rows_match_row_by_row_quantization() {
        let (rows, cols) = (37, 24);
        let vals: Vec<f32> =
            (0..rows * cols).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        let mut vals2 = vals.clone();
        vals2[5 * cols..6 * cols].iter_mut().for_each(|v| *v = 0.0); // an all-zero row
        let m = DenseMatrix::new(Tensor::from_f32([rows, cols], &vals2).unwrap(), "w").unwrap();
        let (q, s) = i8_rows(&m).unwrap();
        for r in 0..rows {
            let mut want = vec![0i8; cols];
            let step = quantize_sym(&vals2[r * cols..(r + 1) * cols], &mut want);
            assert_eq!(&q[r * cols..(r + 1) * cols], &want[..], "row {r}");
            assert_eq!(s[r], step);
        }
        assert_eq!(s[5], 0.0);
        assert_eq!(f32_rows(&m).unwrap(), vals2);
        assert!(f16_bits(&m).is_none());
    }
}
