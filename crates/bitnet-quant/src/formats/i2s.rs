//! bitnet.cpp's I2_S (x86 layout), the CPU's canonical ternary layout.
//!
//! Blocks of 128 weights in 32 bytes, running along the flattened row-major
//! `[rows = out, cols = in]` tensor. A weight `w` is stored as the code `w + 1`
//! (-1 → 0, 0 → 1, +1 → 2). Byte `j` of a block holds weight `j` in bits 7-6, `j + 32` in
//! bits 5-4, `j + 64` in bits 3-2 and `j + 96` in bits 1-0. A GGUF I2_S tensor is the
//! `n / 4` packed bytes followed by a 32-byte tail whose first 4 bytes are the f32 scale
//! (the multiplier `s_w`, little endian; the rest is zero).
//!
//! [`I2sMatrix`] is the in-memory form the kernels read: every row starts on a block, rows
//! whose length is not a multiple of 128 are padded with code 1 (weight 0).
//!
//! ```
//! use bitnet_quant::formats::i2s::{self, I2sMatrix};
//!
//! let w: Vec<i8> = (0..256).map(|i| (i % 3) as i8 - 1).collect();
//! let bytes = i2s::pack(&w, 2, 128, 0.5).unwrap();
//! assert_eq!(bytes.len(), i2s::storage_bytes(2, 128).unwrap());
//! assert_eq!(i2s::unpack(&bytes, 2, 128).unwrap(), (w.clone(), 0.5));
//! let m = I2sMatrix::from_ternary(&w[..160], 1, 160, 0.5).unwrap();
//! assert_eq!((m.cols(), m.padded_cols()), (160, 256));
//! assert_eq!(m.to_ternary(), &w[..160]);
//! ```

use bitnet_core::{AlignedVec, DType, Error, Result, Tensor};

/// Weights per block.
pub const BLOCK: usize = 128;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 32;
/// Bytes of the scale tail after the packed weights.
pub const TAIL_BYTES: usize = 32;
/// The byte of four zero weights (code 1 in every 2-bit field).
pub const ZERO_BYTE: u8 = 0x55;
/// Largest row length the kernels accept (their i32 accumulators stay exact below it).
pub const MAX_COLS: usize = 1 << 20;

/// Bytes of a GGUF I2_S tensor of `rows x cols` (packed weights plus the 32-byte tail).
pub fn storage_bytes(rows: usize, cols: usize) -> Result<usize> {
    check_dims(rows, cols)?;
    Ok(rows * cols / 4 + TAIL_BYTES)
}

fn check_dims(rows: usize, cols: usize) -> Result<usize> {
    if rows == 0 || cols == 0 {
        return Err(Error::shape(format!("I2_S matrix of {rows} x {cols} is empty")));
    }
    if !cols.is_multiple_of(BLOCK) {
        return Err(Error::shape(format!(
            "I2_S needs cols to be a multiple of {BLOCK}, got {cols} (use I2sMatrix::from_ternary to pad)"
        )));
    }
    rows.checked_mul(cols).ok_or_else(|| Error::shape(format!("{rows} x {cols} overflows")))
}

fn encode(v: i8) -> Result<u8> {
    match v {
        -1..=1 => Ok((v + 1) as u8),
        _ => Err(Error::invalid(format!("value {v} is not ternary (-1, 0 or 1)"))),
    }
}

/// Packs whole blocks: `dst.len() * 4 == values.len()`, a multiple of 128.
fn pack_blocks(values: &[i8], dst: &mut [u8]) -> Result<()> {
    for (blk, out) in values.chunks_exact(BLOCK).zip(dst.chunks_exact_mut(BLOCK_BYTES)) {
        for (j, o) in out.iter_mut().enumerate() {
            *o = encode(blk[j])? << 6
                | encode(blk[j + 32])? << 4
                | encode(blk[j + 64])? << 2
                | encode(blk[j + 96])?;
        }
    }
    Ok(())
}

/// Unpacks whole blocks into weights (`code - 1`; the invalid code 3 reads as 2).
fn unpack_blocks(src: &[u8], dst: &mut [i8]) {
    for (blk, out) in src.chunks_exact(BLOCK_BYTES).zip(dst.chunks_exact_mut(BLOCK)) {
        for (j, &b) in blk.iter().enumerate() {
            out[j] = (b >> 6) as i8 - 1;
            out[j + 32] = ((b >> 4) & 3) as i8 - 1;
            out[j + 64] = ((b >> 2) & 3) as i8 - 1;
            out[j + 96] = (b & 3) as i8 - 1;
        }
    }
}

/// Packs ternary `values` (row-major `rows x cols`) into GGUF I2_S bytes with the scale tail.
pub fn pack(values: &[i8], rows: usize, cols: usize, scale: f32) -> Result<Vec<u8>> {
    let n = check_dims(rows, cols)?;
    if values.len() != n {
        return Err(Error::shape(format!(
            "I2_S pack: {rows} x {cols} needs {n} values, got {}",
            values.len()
        )));
    }
    let mut out = vec![0u8; n / 4 + TAIL_BYTES];
    pack_blocks(values, &mut out[..n / 4])?;
    out[n / 4..n / 4 + 4].copy_from_slice(&scale.to_le_bytes());
    Ok(out)
}

/// Unpacks GGUF I2_S bytes (with the tail) of a `rows x cols` tensor into values and scale.
pub fn unpack(bytes: &[u8], rows: usize, cols: usize) -> Result<(Vec<i8>, f32)> {
    let n = check_dims(rows, cols)?;
    let scale = read_scale(bytes, n)?;
    let mut out = vec![0i8; n];
    unpack_blocks(&bytes[..n / 4], &mut out);
    if out.iter().any(|&v| v > 1) {
        return Err(Error::format("I2_S", "a 2-bit field holds the unused code 3"));
    }
    Ok((out, scale))
}

fn read_scale(bytes: &[u8], n: usize) -> Result<f32> {
    if bytes.len() != n / 4 + TAIL_BYTES {
        return Err(Error::format(
            "I2_S",
            format!("{n} weights need {} bytes, got {}", n / 4 + TAIL_BYTES, bytes.len()),
        ));
    }
    let s = &bytes[n / 4..n / 4 + 4];
    Ok(f32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// A ternary weight matrix in the kernels' layout: I2_S rows, each padded to whole blocks.
///
/// Row `r` is the bytes `r * row_bytes .. (r + 1) * row_bytes` of [`I2sMatrix::bytes`].
/// Activations passed to the kernels must have [`I2sMatrix::padded_cols`] entries per token,
/// zero past [`I2sMatrix::cols`] (as [`crate::quantize::quantize_row`] writes them).
#[derive(Clone, Debug)]
pub struct I2sMatrix {
    rows: usize,
    cols: usize,
    row_bytes: usize,
    /// Holds the packed rows at its start (possibly followed by the GGUF tail).
    data: Tensor,
    zero_copy: bool,
    scale: f32,
}

fn check_matrix_dims(rows: usize, cols: usize, scale: f32) -> Result<()> {
    if rows == 0 || cols == 0 {
        return Err(Error::shape(format!("I2_S matrix of {rows} x {cols} is empty")));
    }
    if cols > MAX_COLS {
        return Err(Error::unsupported(format!(
            "I2_S rows of {cols} columns (the kernels take at most {MAX_COLS})"
        )));
    }
    if !scale.is_finite() {
        return Err(Error::format("I2_S", format!("weight scale {scale} is not finite")));
    }
    Ok(())
}

impl I2sMatrix {
    /// Packs ternary `values` (row-major `rows x cols`, any `cols`) with weight scale `scale`,
    /// padding each row to a multiple of 128 columns with zero weights.
    pub fn from_ternary(values: &[i8], rows: usize, cols: usize, scale: f32) -> Result<Self> {
        check_matrix_dims(rows, cols, scale)?;
        if Some(values.len()) != rows.checked_mul(cols) {
            return Err(Error::shape(format!(
                "I2sMatrix: {rows} x {cols} needs {} values, got {}",
                rows.saturating_mul(cols),
                values.len()
            )));
        }
        let padded = cols.div_ceil(BLOCK) * BLOCK;
        let row_bytes = padded / 4;
        let mut bytes = AlignedVec::<u8>::zeros(rows * row_bytes);
        let mut row = vec![0i8; padded];
        for (src, dst) in values.chunks_exact(cols).zip(bytes.chunks_exact_mut(row_bytes)) {
            row[..cols].copy_from_slice(src);
            pack_blocks(&row, dst)?;
        }
        let data = Tensor::from_bytes(DType::U8, [rows * row_bytes], &bytes)?;
        Ok(I2sMatrix { rows, cols, row_bytes, data, zero_copy: false, scale })
    }

    /// Wraps a GGUF I2_S tensor (packed bytes plus tail; dtype I2S or U8, owned or mmap'd).
    ///
    /// No bytes are copied when `cols % 128 == 0`; otherwise rows straddle blocks and are
    /// repacked (padded). Codes are not validated on the zero-copy path: the unused code 3
    /// acts as weight +2 in every kernel alike.
    pub fn from_i2s_tensor(t: Tensor, rows: usize, cols: usize) -> Result<Self> {
        let n = rows
            .checked_mul(cols)
            .filter(|n| n.is_multiple_of(BLOCK))
            .ok_or_else(|| Error::shape(format!("I2_S tensor of {rows} x {cols}")))?;
        match t.dtype() {
            DType::I2S if t.elem_count() == n => {}
            DType::U8 => {}
            d => {
                return Err(Error::format(
                    "I2_S",
                    format!("expected an i2_s tensor of {n} weights, got {d} {}", t.shape()),
                ))
            }
        }
        let scale = read_scale(t.bytes(), n)?;
        check_matrix_dims(rows, cols, scale)?;
        if !cols.is_multiple_of(BLOCK) {
            let mut values = vec![0i8; n];
            unpack_blocks(&t.bytes()[..n / 4], &mut values);
            return Self::from_ternary(&values, rows, cols, scale);
        }
        Ok(I2sMatrix { rows, cols, row_bytes: cols / 4, data: t, zero_copy: true, scale })
    }

    /// The weights as ternary values (row-major `rows x cols`, padding dropped).
    pub fn to_ternary(&self) -> Vec<i8> {
        let mut row = vec![0i8; self.padded_cols()];
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for r in 0..self.rows {
            unpack_blocks(self.row(r), &mut row);
            out.extend_from_slice(&row[..self.cols]);
        }
        out
    }

    /// Output features (rows).
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Input features (logical columns, without padding).
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Columns including padding: a multiple of 128; the activation length the kernels take.
    pub fn padded_cols(&self) -> usize {
        self.row_bytes * 4
    }
    /// Bytes per packed row (`padded_cols / 4`).
    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }
    /// The weight scale `s_w` (dequantized weight = ternary value × `s_w`).
    pub fn scale(&self) -> f32 {
        self.scale
    }
    /// The packed rows, `rows * row_bytes` bytes (no tail).
    pub fn bytes(&self) -> &[u8] {
        &self.data.bytes()[..self.rows * self.row_bytes]
    }
    /// Packed row `r` (panics if `r >= rows`).
    pub fn row(&self, r: usize) -> &[u8] {
        &self.bytes()[r * self.row_bytes..(r + 1) * self.row_bytes]
    }
    /// Whether the bytes are the source tensor's own (e.g. a view into an mmap'd file).
    pub fn is_zero_copy(&self) -> bool {
        self.zero_copy
    }
    /// Whether the bytes live in a memory-mapped file.
    pub fn is_mapped(&self) -> bool {
        self.data.is_mapped()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn block_layout_matches_bitnet_cpp() {
        let mut w = vec![0i8; 128];
        w[0] = 1; // byte 0 bits 7-6 = 2
        w[32] = -1; // byte 0 bits 5-4 = 0
        w[97] = 1; // byte 1 bits 1-0 = 2
        w[65] = -1; // byte 1 bits 3-2 = 0
        let b = pack(&w, 1, 128, 1.0).unwrap();
        assert_eq!(b[0], 0b10_00_01_01);
        assert_eq!(b[1], 0b01_01_00_10);
        assert!(b[2..32].iter().all(|&x| x == ZERO_BYTE));
    }

    #[test]
    fn tail_holds_the_scale_then_zeros() {
        let b = pack(&[0i8; 256], 2, 128, 0.125).unwrap();
        assert_eq!(b.len(), 64 + 32);
        assert_eq!(&b[64..68], &0.125f32.to_le_bytes());
        assert!(b[68..].iter().all(|&x| x == 0));
    }

    #[test]
    fn bad_inputs_are_clear_errors() {
        let e = pack(&[0i8; 160], 1, 160, 1.0).unwrap_err().to_string();
        assert!(e.contains("multiple of 128"), "{e}");
        assert!(pack(&[0i8; 100], 1, 128, 1.0).is_err());
        let e = pack(&[2i8; 128], 1, 128, 1.0).unwrap_err().to_string();
        assert!(e.contains("not ternary"), "{e}");
        let e = unpack(&[0u8; 40], 1, 128).unwrap_err().to_string();
        assert!(e.contains("need 64 bytes, got 40"), "{e}");
        let mut b = pack(&[0i8; 128], 1, 128, 1.0).unwrap();
        b[3] = 0xff;
        assert!(unpack(&b, 1, 128).unwrap_err().to_string().contains("code 3"));
        assert!(storage_bytes(0, 128).is_err());
        assert!(I2sMatrix::from_ternary(&[0; 6], 2, 4, f32::NAN).is_err());
        assert!(I2sMatrix::from_ternary(&[0; 6], 2, 4, 1.0).is_err());
    }

    #[test]
    fn padded_rows_use_the_zero_code() {
        let m = I2sMatrix::from_ternary(&[1i8; 64], 1, 64, 2.0).unwrap();
        assert_eq!((m.padded_cols(), m.row_bytes(), m.scale()), (128, 32, 2.0));
        assert_eq!(m.bytes()[0], 0b10_10_01_01); // weights 0 and 32 set, 64 and 96 padding
        assert_eq!(m.to_ternary(), vec![1i8; 64]);
        assert!(!m.is_zero_copy());
    }

    #[test]
    fn gguf_tensor_with_whole_blocks_is_wrapped_without_copy() {
        let w: Vec<i8> = (0..512).map(|i| ((i * 7) % 3) as i8 - 1).collect();
        let bytes = pack(&w, 2, 256, 0.75).unwrap();
        let t = Tensor::from_bytes(DType::I2S, [2, 256], &bytes).unwrap();
        let ptr = t.bytes().as_ptr();
        let m = I2sMatrix::from_i2s_tensor(t, 2, 256).unwrap();
        assert!(m.is_zero_copy());
        assert_eq!(m.bytes().as_ptr(), ptr);
        assert_eq!((m.scale(), m.to_ternary()), (0.75, w));
    }

    #[test]
    fn gguf_tensor_with_ragged_rows_is_repacked() {
        // 4 rows of 160: 640 weights = 5 blocks running across rows.
        let w: Vec<i8> = (0..640).map(|i| ((i * 5) % 3) as i8 - 1).collect();
        let mut bytes = vec![0u8; 160 + 32];
        pack_blocks(&w, &mut bytes[..160]).unwrap();
        bytes[160..164].copy_from_slice(&3.0f32.to_le_bytes());
        let t = Tensor::from_bytes(DType::U8, [bytes.len()], &bytes).unwrap();
        let m = I2sMatrix::from_i2s_tensor(t, 4, 160).unwrap();
        assert!(!m.is_zero_copy());
        assert_eq!((m.padded_cols(), m.scale()), (256, 3.0));
        assert_eq!(m.to_ternary(), w);
        let t = Tensor::from_bytes(DType::U8, [10], &[0; 10]).unwrap();
        assert!(I2sMatrix::from_i2s_tensor(t, 4, 160).is_err());
    }

    #[test]
    fn mapped_tensor_stays_mapped() {
        use std::io::Write;
        let w: Vec<i8> = (0..256).map(|i| (i % 3) as i8 - 1).collect();
        let bytes = pack(&w, 1, 256, 0.5).unwrap();
        let dir = std::env::temp_dir().join(format!("bitnet-quant-i2s-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("w.bin");
        let mut f = std::fs::File::create(&p).unwrap();
        f.write_all(&[0u8; 32]).unwrap();
        f.write_all(&bytes).unwrap();
        drop(f);
        let map = bitnet_core::map_file(&p).unwrap();
        let t = Tensor::from_mmap(DType::I2S, [1, 256], map, 32, bytes.len()).unwrap();
        let m = I2sMatrix::from_i2s_tensor(t, 1, 256).unwrap();
        assert!(m.is_zero_copy() && m.is_mapped());
        assert_eq!(m.to_ternary(), w);
        std::fs::remove_dir_all(dir).ok();
    }

    fn ternary(n: usize) -> impl Strategy<Value = Vec<i8>> {
        prop::collection::vec(-1i8..=1, n)
    }

    proptest! {
        #[test]
        fn pack_unpack_round_trips(rows in 1usize..4, blocks in 1usize..4, seed in ternary(1536)) {
            let cols = blocks * BLOCK;
            let w = &seed[..rows * cols];
            let b = pack(w, rows, cols, 1.5).unwrap();
            prop_assert_eq!(b.len(), storage_bytes(rows, cols).unwrap());
            prop_assert_eq!(unpack(&b, rows, cols).unwrap(), (w.to_vec(), 1.5));
            let m = I2sMatrix::from_ternary(w, rows, cols, 1.5).unwrap();
            prop_assert_eq!(m.bytes(), &b[..rows * cols / 4]);
        }

        #[test]
        fn matrix_round_trips_any_cols(rows in 1usize..5, cols in 1usize..300, seed in ternary(1500)) {
            let w = &seed[..rows * cols];
            let m = I2sMatrix::from_ternary(w, rows, cols, 1.0).unwrap();
            prop_assert_eq!(m.padded_cols() % BLOCK, 0);
            prop_assert_eq!(m.to_ternary(), w.to_vec());
        }
    }
}
