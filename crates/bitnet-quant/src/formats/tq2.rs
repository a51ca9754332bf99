//! ggml TQ2_0: 256-weight blocks of 66 bytes (`qs[64]`, then a little-endian f16 `d`).
//!
//! As in ggml's `quantize_row_tq2_0_ref` / `dequantize_row_tq2_0`: element `n` of a block is
//! stored as `t + 1` in byte `32 * (n / 128) + n % 32`, bits `2 * ((n % 128) / 32)`
//! (least-significant pair first). Code 3 never occurs in a valid file.
//!
//! BitNet tensors carry one scale: every block holds the same `d`. [`unpack`] returns it and
//! refuses tensors whose blocks differ; [`unpack_with_block_scales`] returns them all.

use super::format::{check_dims, check_len, check_ternary, common_scale, read_f16, scale_to_f16};
use bitnet_core::{Error, Result};

/// Weights per block.
pub const BLOCK: usize = 256;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 66;
/// Bytes of packed codes per block (before the f16 scale).
const QS_BYTES: usize = 64;
const NAME: &str = "TQ2_0";

/// Bytes of a packed `[rows, cols]` weight (`cols` a multiple of 256).
pub fn size(rows: usize, cols: usize) -> Result<usize> {
    let n = check_dims(NAME, rows, cols, 1, BLOCK)?;
    Ok(n / BLOCK * BLOCK_BYTES)
}

/// Packs row-major ternary `values` with `scale` in every block's `d` (rounded to f16).
pub fn pack(values: &[i8], rows: usize, cols: usize, scale: f32) -> Result<Vec<u8>> {
    let n = check_dims(NAME, rows, cols, 1, BLOCK)?;
    check_ternary(NAME, values, n)?;
    let d = scale_to_f16(NAME, scale)?.to_le_bytes();
    let mut out = vec![0u8; n / BLOCK * BLOCK_BYTES];
    for (src, dst) in values.chunks_exact(BLOCK).zip(out.chunks_exact_mut(BLOCK_BYTES)) {
        for (i, &t) in src.iter().enumerate() {
            let (byte, shift) = position(i);
            dst[byte] |= ((t + 1) as u8) << shift;
        }
        dst[QS_BYTES..].copy_from_slice(&d);
    }
    Ok(out)
}

/// Unpacks to row-major ternary values and the tensor scale.
///
/// Blocks whose weights are all zero are ignored when comparing scales (their `d` is moot);
/// any other pair of blocks whose `d` differ by more than f16 rounding is refused.
pub fn unpack(bytes: &[u8], rows: usize, cols: usize) -> Result<(Vec<i8>, f32)> {
    let (values, scales) = unpack_with_block_scales(bytes, rows, cols)?;
    let scale = common_scale(NAME, &values, &scales, BLOCK)?;
    Ok((values, scale))
}

/// Unpacks to row-major ternary values and one scale per 256-weight block (row-major order).
pub fn unpack_with_block_scales(
    bytes: &[u8],
    rows: usize,
    cols: usize,
) -> Result<(Vec<i8>, Vec<f32>)> {
    let n = check_dims(NAME, rows, cols, 1, BLOCK)?;
    check_len(NAME, bytes.len(), n / BLOCK * BLOCK_BYTES)?;
    let mut values = vec![0i8; n];
    let mut scales = Vec::with_capacity(n / BLOCK);
    for (b, (src, dst)) in
        bytes.chunks_exact(BLOCK_BYTES).zip(values.chunks_exact_mut(BLOCK)).enumerate()
    {
        for (i, v) in dst.iter_mut().enumerate() {
            let (byte, shift) = position(i);
            let code = (src[byte] >> shift) & 3;
            if code == 3 {
                return Err(Error::format(
                    NAME,
                    format!("code 3 (not ternary) at element {}", b * BLOCK + i),
                ));
            }
            *v = code as i8 - 1;
        }
        scales.push(read_f16(src, QS_BYTES));
    }
    Ok((values, scales))
}

/// Byte index and bit shift of element `i` (0..256) inside a block.
fn position(i: usize) -> (usize, u32) {
    (32 * (i / 128) + i % 32, 2 * ((i % 128) / 32) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_positions_follow_ggml_layout() {
        // ggml: element m + l*32 (+128 for the second half) in byte m (+32), bits 2l.
        assert_eq!(position(0), (0, 0));
        assert_eq!(position(31), (31, 0));
        assert_eq!(position(32), (0, 2));
        assert_eq!(position(100), (4, 6));
        assert_eq!(position(128), (32, 0));
        assert_eq!(position(255), (63, 6));
    }

    #[test]
    fn single_plus_one_lands_in_the_documented_bits() {
        let mut v = vec![0i8; BLOCK];
        v[100] = 1; // byte 4, bits 6-7, code 2
        let p = pack(&v, 1, BLOCK, 1.0).unwrap();
        assert_eq!(p[4], 0b1001_0101);
        assert_eq!(p[5], 0b0101_0101);
        assert_eq!(&p[64..], &half::f16::from_f32(1.0).to_le_bytes());
    }

    #[test]
    fn code_three_is_a_format_error() {
        let mut p = pack(&[0i8; BLOCK], 1, BLOCK, 1.0).unwrap();
        p[7] |= 3;
        assert!(matches!(unpack(&p, 1, BLOCK), Err(Error::Format { .. })));
    }

    #[test]
    fn differing_block_scales_are_unsupported_but_all_zero_blocks_are_ignored() {
        let v = vec![1i8; 2 * BLOCK];
        let mut p = pack(&v, 1, 2 * BLOCK, 1.0).unwrap();
        p[BLOCK_BYTES + 64..].copy_from_slice(&half::f16::from_f32(2.0).to_le_bytes());
        let e = unpack(&p, 1, 2 * BLOCK).unwrap_err();
        assert!(e
            .to_string()
            .contains("not supported yet: TQ2_0 tensor with differing block scales"));
        let (_, s) = unpack_with_block_scales(&p, 1, 2 * BLOCK).unwrap();
        assert_eq!(s, vec![1.0, 2.0]);

        let mut z = v.clone();
        z[BLOCK..].fill(0);
        let mut p = pack(&z, 1, 2 * BLOCK, 0.75).unwrap();
        p[BLOCK_BYTES + 64..].copy_from_slice(&[0, 0]); // ggml writes d = 0 for an all-zero block
        assert_eq!(unpack(&p, 1, 2 * BLOCK).unwrap().1, 0.75);
    }
}
