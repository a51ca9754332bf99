//! bitnet.cpp I2_S as its ARM (NEON) build writes it: read-only here (the CPU's canonical
//! layout is the x86 one in `formats::i2s`); [`pack`] exists for tests and fixtures.
//!
//! From `quantize_i2_s` in bitnet.cpp's `src/ggml-bitnet-mad.cpp`, `__ARM_NEON` branch
//! (`QK_I2_S = 64`): the tensor's `n` weights, flattened row-major, form blocks of 64 in 16
//! bytes; weight `j` of block `i` is stored as `t + 1` in byte `16 * i + j % 16` at bits
//! `6 - 2 * (j / 16)`, so byte `k` holds weights `k`, `k+16`, `k+32`, `k+48` from the high
//! bits down. The f32 scale (little-endian) follows the `n / 4` packed bytes, padded to 32
//! bytes: `n / 4 + 32` bytes in all, as on x86. The NEON dot product in the same file reads it
//! the same way (`byte >> 6` meets activations `0..16`, `>> 4` meets `16..32`, ...).
//! Rows must be whole blocks (`cols % 64 == 0`), as that kernel requires.

use super::format::{check_dims, check_len, check_scale, check_ternary};
use bitnet_core::{Error, Result};

/// Weights per block.
pub const BLOCK: usize = 64;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 16;
/// Bytes after the packed weights: the f32 scale and its padding.
pub const SCALE_TAIL: usize = 32;
const NAME: &str = "I2_S (ARM)";

/// Bytes of a packed `[rows, cols]` weight, scale tail included (`cols` a multiple of 64).
pub fn size(rows: usize, cols: usize) -> Result<usize> {
    let n = check_dims(NAME, rows, cols, 1, BLOCK)?;
    Ok(n / 4 + SCALE_TAIL)
}

/// Byte index (within a block) and bit shift of weight `j` (0..64).
fn position(j: usize) -> (usize, u32) {
    (j % 16, 6 - 2 * (j / 16) as u32)
}

/// Packs row-major ternary `values` and the f32 `scale` in the ARM layout (for tests).
pub fn pack(values: &[i8], rows: usize, cols: usize, scale: f32) -> Result<Vec<u8>> {
    let n = check_dims(NAME, rows, cols, 1, BLOCK)?;
    check_ternary(NAME, values, n)?;
    check_scale(NAME, scale)?;
    let mut out = vec![0u8; n / 4 + SCALE_TAIL];
    for (src, dst) in values.chunks_exact(BLOCK).zip(out.chunks_exact_mut(BLOCK_BYTES)) {
        for (j, &t) in src.iter().enumerate() {
            let (byte, shift) = position(j);
            dst[byte] |= ((t + 1) as u8) << shift;
        }
    }
    out[n / 4..n / 4 + 4].copy_from_slice(&scale.to_le_bytes());
    Ok(out)
}

/// Unpacks the ARM layout to row-major ternary values and the f32 tensor scale.
pub fn unpack(bytes: &[u8], rows: usize, cols: usize) -> Result<(Vec<i8>, f32)> {
    let n = check_dims(NAME, rows, cols, 1, BLOCK)?;
    check_len(NAME, bytes.len(), n / 4 + SCALE_TAIL)?;
    let mut values = vec![0i8; n];
    for (b, (src, dst)) in
        bytes[..n / 4].chunks_exact(BLOCK_BYTES).zip(values.chunks_exact_mut(BLOCK)).enumerate()
    {
        for (j, v) in dst.iter_mut().enumerate() {
            let (byte, shift) = position(j);
            let code = (src[byte] >> shift) & 3;
            if code == 3 {
                return Err(Error::format(
                    NAME,
                    format!("code 3 (not ternary) at element {}", b * BLOCK + j),
                ));
            }
            *v = code as i8 - 1;
        }
    }
    let s = &bytes[n / 4..n / 4 + 4];
    Ok((values, f32::from_le_bytes([s[0], s[1], s[2], s[3]])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_positions_follow_the_neon_quantizer() {
        // group_idx = j / 16, group_pos = j % 16, shift 6 - 2 * group_idx.
        assert_eq!(position(0), (0, 6));
        assert_eq!(position(15), (15, 6));
        assert_eq!(position(16), (0, 4));
        assert_eq!(position(47), (15, 2));
        assert_eq!(position(63), (15, 0));
    }

    #[test]
    fn second_block_starts_at_byte_sixteen_and_scale_follows_codes() {
        let mut v = vec![0i8; 128];
        v[64] = 1; // block 1, weight 0: byte 16, bits 7-6
        v[127] = -1; // block 1, weight 63: byte 31, bits 1-0
        let p = pack(&v, 2, 64, 0.25).unwrap();
        assert_eq!(p.len(), 128 / 4 + 32);
        assert_eq!(p[16], 0b1001_0101);
        assert_eq!(p[31], 0b0101_0100);
        assert_eq!(p[0], 0b0101_0101);
        assert_eq!(&p[32..36], &0.25f32.to_le_bytes());
        assert!(p[36..].iter().all(|&b| b == 0));
        assert_eq!(unpack(&p, 2, 64).unwrap(), (v, 0.25));
    }

    #[test]
    fn columns_not_multiple_of_64_are_a_shape_error() {
        assert!(matches!(size(2, 96), Err(Error::Shape(_))));
        assert!(matches!(unpack(&[0; 64], 1, 96), Err(Error::Shape(_))));
    }
}
