//! The vocabulary projection (lm_head): int8 rows with one scale each, on tensor cores or CUDA
//! cores, or exact f32 rows.

use super::{dptr, launch, need, to_i32, upload, Dims};
use crate::device::Gpu;
use bitnet_core::{Error, Result};
use cudarc::driver::CudaSlice;

/// Vocabulary rows per tile of the int8 lm_head's device layout.
const LM_TILE_ROWS: usize = 16;

/// The int8 lm_head: `rows x cols` int8 and one scale per row. On the device, rows are padded
/// to whole tiles of 16 and columns to 64, and each tile is stored as its 64-column steps, one
/// after another, each step 16 rows x 64 bytes (1 KB) contiguous: a warp reading 8 rows of a
/// step reads 512 contiguous bytes (row-major, it read 8 separate 64-byte pieces).
pub struct LmI8 {
    rows: usize,
    cols: usize,
    dp: usize,
    data: CudaSlice<i8>,
    scales: CudaSlice<f32>,
}

impl LmI8 {
    /// Uploads quantized rows (`values`: `rows x cols`, row-major) and their scales.
    pub fn upload(
        gpu: &Gpu,
        values: &[i8],
        scales: &[f32],
        rows: usize,
        cols: usize,
    ) -> Result<Self> {
        if values.len() != rows * cols || scales.len() != rows || rows == 0 || cols == 0 {
            return Err(Error::shape(format!("int8 lm_head of {rows} x {cols}")));
        }
        let dp = cols.div_ceil(64) * 64;
        let tiles = rows.div_ceil(LM_TILE_ROWS);
        to_i32(tiles * LM_TILE_ROWS * dp, "lm_head size")?;
        Ok(LmI8 {
            rows,
            cols,
            dp,
            data: upload(gpu, &tile_rows(values, rows, cols, dp))?,
            scales: upload(gpu, scales)?,
        })
    }
    /// Vocabulary rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Hidden size.
    pub fn cols(&self) -> usize {
        self.cols
    }
}

/// `values` (`rows x cols`, row-major) in the device layout of [`LmI8`] (zero padding).
fn tile_rows(values: &[i8], rows: usize, cols: usize, dp: usize) -> Vec<i8> {
    let steps = dp / 64;
    let mut out = vec![0i8; rows.div_ceil(LM_TILE_ROWS) * LM_TILE_ROWS * dp];
    for (row, src) in values.chunks_exact(cols).enumerate() {
        let (tile, r) = (row / LM_TILE_ROWS, row % LM_TILE_ROWS);
        for (s, part) in src.chunks(64).enumerate() {
            let at = ((tile * steps + s) * LM_TILE_ROWS + r) * 64;
            out[at..at + part.len()].copy_from_slice(part);
        }
    }
    out
}

/// The f32 lm_head (`cols` must be a multiple of 4).
pub struct LmF32 {
    rows: usize,
    cols: usize,
    data: CudaSlice<f32>,
}

impl LmF32 {
    /// Uploads `rows x cols` f32 values.
    pub fn upload(gpu: &Gpu, values: &[f32], rows: usize, cols: usize) -> Result<Self> {
        if values.len() != rows * cols || rows == 0 || cols == 0 {
            return Err(Error::shape(format!("f32 lm_head of {rows} x {cols}")));
        }
        if !cols.is_multiple_of(4) {
            return Err(Error::unsupported(format!(
                "an f32 lm_head with {cols} columns (need a multiple of 4)"
            )));
        }
        to_i32(rows, "vocabulary")?;
        Ok(LmF32 { rows, cols, data: upload(gpu, values)? })
    }
    /// Vocabulary rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Hidden size.
    pub fn cols(&self) -> usize {
        self.cols
    }
}

/// Token batches of at most 8, as 8, 4, 2, 1 (the lm_head kernels' instantiations).
fn batches(rows: usize) -> impl Iterator<Item = (usize, usize)> {
    let mut t = 0;
    std::iter::from_fn(move || {
        let left = rows - t;
        let m = [8, 4, 2, 1].into_iter().find(|&m| m <= left)?;
        t += m;
        Some((t - m, m))
    })
}

const LM_THREADS: u32 = 256;

/// Which kernel computes the int8 lm_head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LmKernel {
    /// Tensor cores (f16 activations, f32 accumulation): the weights are read once per 64 rows.
    Mma,
    /// CUDA cores with f32 activations, at most 8 rows per pass (the weights are read again
    /// for every 8 rows).
    Simt,
}

/// Logits of `rows` f32 rows `x` (`rows x cols`): `out[t][v] = (Σ q[v]·x[t]) * scale[v]`, on
/// tensor cores (`BITNET_CUDA_LM=simt` selects [`LmKernel::Simt`]).
pub fn lm_head_i8(
    gpu: &Gpu,
    head: &LmI8,
    x: &CudaSlice<f32>,
    rows: usize,
    out: &mut CudaSlice<f32>,
) -> Result<()> {
    let kernel = if gpu.knobs().lm_simt { LmKernel::Simt } else { LmKernel::Mma };
    lm_head_i8_with(gpu, head, x, rows, out, kernel)
}

/// [`lm_head_i8`] with an explicit kernel.
pub fn lm_head_i8_with(
    gpu: &Gpu,
    head: &LmI8,
    x: &CudaSlice<f32>,
    rows: usize,
    out: &mut CudaSlice<f32>,
    kernel: LmKernel,
) -> Result<()> {
    need(x.len(), rows * head.cols, "lm_head input")?;
    need(out.len(), rows * head.rows, "lm_head output")?;
    let (wp, sp, xp, op) =
        (dptr(gpu, &head.data), dptr(gpu, &head.scales), dptr(gpu, x), dptr(gpu, out));
    let (vocab, d) = (head.rows as i32, head.cols as i32);
    if kernel == LmKernel::Mma {
        let (dp, m_tok) = (head.dp as i32, to_i32(rows, "rows")?);
        let dims = Dims::line(head.rows.div_ceil(128) as u32, 256);
        for t0 in (0..rows).step_by(64) {
            let left = rows - t0;
            let f = match left {
                1..=8 => &gpu.k.lmm1,
                9..=16 => &gpu.k.lmm2,
                17..=32 => &gpu.k.lmm4,
                _ => &gpu.k.lmm8,
            };
            let tok0 = t0 as i32;
            // Kernel: lm_i8_mma_tNT(W, wscale, x, out, vocab, dp, d, m_tok, tok0): W holds
            // vocab x dp bytes (dp a multiple of 64), x m_tok x d, out m_tok x vocab (checked);
            // tokens past m_tok are neither read nor written.
            launch!(gpu, f, dims; wp, sp, xp, op, vocab, dp, d, m_tok, tok0)?;
        }
        return Ok(());
    }
    let dq = (head.dp / 16) as i32;
    let dims = Dims::line(head.rows.div_ceil(8) as u32, LM_THREADS);
    for (t0, m) in batches(rows) {
        let f = match m {
            8 => &gpu.k.lm_i8_8,
            4 => &gpu.k.lm_i8_4,
            2 => &gpu.k.lm_i8_2,
            _ => &gpu.k.lm_i8_1,
        };
        let tok0 = t0 as i32;
        // Kernel: lm_i8_mM(W, wscale, x, out, vocab, dq, d, tok0); tokens tok0..tok0+M < rows.
        launch!(gpu, f, dims; wp, sp, xp, op, vocab, dq, d, tok0)?;
    }
    Ok(())
}

/// Logits of `rows` f32 rows `x` (`rows x cols`): `out[t][v] = Σ w[v]·x[t]`.
pub fn lm_head_f32(
    gpu: &Gpu,
    head: &LmF32,
    x: &CudaSlice<f32>,
    rows: usize,
    out: &mut CudaSlice<f32>,
) -> Result<()> {
    need(x.len(), rows * head.cols, "lm_head input")?;
    need(out.len(), rows * head.rows, "lm_head output")?;
    let (wp, xp, op) = (dptr(gpu, &head.data), dptr(gpu, x), dptr(gpu, out));
    let (vocab, dq) = (head.rows as i32, (head.cols / 4) as i32);
    let dims = Dims::line(head.rows.div_ceil(8) as u32, LM_THREADS);
    for (t0, m) in batches(rows) {
        let f = match m {
            8 => &gpu.k.lm_f32_8,
            4 => &gpu.k.lm_f32_4,
            2 => &gpu.k.lm_f32_2,
            _ => &gpu.k.lm_f32_1,
        };
        let tok0 = t0 as i32;
        // Kernel: lm_f32_mM(W, x, out, vocab, dq, tok0); tokens tok0..tok0+M < rows.
        launch!(gpu, f, dims; wp, xp, op, vocab, dq, tok0)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{batches, tile_rows};

    #[test]
    fn batches_cover_every_row_once_in_kernel_sizes() {
        for rows in 0..40 {
            let b: Vec<_> = batches(rows).collect();
            assert_eq!(b.iter().map(|x| x.1).sum::<usize>(), rows);
            let mut t = 0;
            for (t0, m) in b {
                assert_eq!(t0, t);
                assert!([1, 2, 4, 8].contains(&m));
                t += m;
            }
        }
    }

    #[test]
    fn tiles_hold_each_row_step_as_64_contiguous_bytes() {
        let (rows, cols, dp) = (19, 70, 128);
        let values: Vec<i8> = (0..rows * cols).map(|i| (i % 251) as i8).collect();
        let t = tile_rows(&values, rows, cols, dp);
        assert_eq!(t.len(), 32 * dp);
        for row in 0..32 {
            for col in 0..dp {
                let at = ((row / 16 * 2 + col / 64) * 16 + row % 16) * 64 + col % 64;
                let want = if row < rows && col < cols { values[row * cols + col] } else { 0 };
                assert_eq!(t[at], want, "row {row} col {col}");
            }
        }
    }
}
