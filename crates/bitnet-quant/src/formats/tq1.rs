//! ggml TQ1_0: 256-weight blocks of 54 bytes (`qs[48]`, `qh[4]`, little-endian f16 `d`),
//! 1.6875 bits per weight.
//!
//! Each byte holds five base-3 digits (`t + 1`), first digit most significant, "pre-scaled"
//! as in ggml's `quantize_row_tq1_0_ref`: `byte = ceil(q * 256 / 243)` with `q` the base-3
//! number, so digit `k` is read back by `((byte * 3^k) as u8 as u16 * 3) >> 8`
//! (`dequantize_row_tq1_0`). Within a block:
//! - `qs[m]`, `m < 32`: elements `m + 32k`, `k = 0..5` (elements 0..160);
//! - `qs[32 + m]`, `m < 16`: elements `160 + m + 16k` (elements 160..240);
//! - `qh[j]`, `j < 4`: elements `240 + j + 4k`, `k = 0..4`; its fifth digit is 0.

use super::format::{check_dims, check_len, check_ternary, common_scale, read_f16, scale_to_f16};
use bitnet_core::Result;

/// Weights per block.
pub const BLOCK: usize = 256;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 54;
/// Bytes of packed digits per block (`qs` then `qh`), before the f16 scale.
const CODE_BYTES: usize = 52;
const NAME: &str = "TQ1_0";

/// Bytes of a packed `[rows, cols]` weight (`cols` a multiple of 256).
pub fn size(rows: usize, cols: usize) -> Result<usize> {
    let n = check_dims(NAME, rows, cols, 1, BLOCK)?;
    Ok(n / BLOCK * BLOCK_BYTES)
}

/// Encodes five base-3 digits (each 0..=2, `digits[0]` most significant) into one byte as ggml
/// does: `ceil(q * 256 / 243)`. Digits above 2 give an unspecified byte.
pub fn encode_trits(digits: [u8; 5]) -> u8 {
    let q = digits.iter().fold(0u32, |q, &d| q * 3 + u32::from(d));
    // ggml: `(q * 256 + (243 - 1)) / 243`, a ceiling division.
    (q * 256).div_ceil(243).min(255) as u8
}

/// Reads digit `k` (0 = most significant) of an encoded byte the way ggml does:
/// multiply by `3^k` modulo 256, then `(x * 3) >> 8`.
pub fn decode_trit(byte: u8, k: u32) -> u8 {
    let x = byte.wrapping_mul(3u8.wrapping_pow(k));
    ((u16::from(x) * 3) >> 8) as u8
}

/// The element of a block held by digit `k` of code byte `b`, if any (qh's fifth digit: none).
fn element(b: usize, k: usize) -> Option<usize> {
    match b {
        0..32 => Some(b + 32 * k),
        32..48 => Some(160 + (b - 32) + 16 * k),
        _ if k < 4 => Some(240 + (b - 48) + 4 * k),
        _ => None,
    }
}

/// Packs row-major ternary `values` with `scale` in every block's `d` (rounded to f16).
pub fn pack(values: &[i8], rows: usize, cols: usize, scale: f32) -> Result<Vec<u8>> {
    let n = check_dims(NAME, rows, cols, 1, BLOCK)?;
    check_ternary(NAME, values, n)?;
    let d = scale_to_f16(NAME, scale)?.to_le_bytes();
    let mut out = vec![0u8; n / BLOCK * BLOCK_BYTES];
    for (src, dst) in values.chunks_exact(BLOCK).zip(out.chunks_exact_mut(BLOCK_BYTES)) {
        for (b, byte) in dst[..CODE_BYTES].iter_mut().enumerate() {
            let mut digits = [0u8; 5];
            for (k, digit) in digits.iter_mut().enumerate() {
                if let Some(e) = element(b, k) {
                    *digit = (src[e] + 1) as u8;
                }
            }
            *byte = encode_trits(digits);
        }
        dst[CODE_BYTES..].copy_from_slice(&d);
    }
    Ok(out)
}

/// Unpacks to row-major ternary values and the tensor scale; blocks whose `d` differ by more
/// than f16 rounding (all-zero blocks aside) are refused as not supported.
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
    for (src, dst) in bytes.chunks_exact(BLOCK_BYTES).zip(values.chunks_exact_mut(BLOCK)) {
        for (b, &byte) in src[..CODE_BYTES].iter().enumerate() {
            for k in 0..5 {
                if let Some(e) = element(b, k) {
                    dst[e] = decode_trit(byte, k as u32) as i8 - 1;
                }
            }
        }
        scales.push(read_f16(src, CODE_BYTES));
    }
    Ok((values, scales))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_inverts_encode_for_all_243_digit_combinations() {
        for q in 0..243u32 {
            let mut digits = [0u8; 5];
            let mut r = q;
            for k in (0..5).rev() {
                digits[k] = (r % 3) as u8;
                r /= 3;
            }
            let byte = encode_trits(digits);
            let back: Vec<u8> = (0..5).map(|k| decode_trit(byte, k)).collect();
            assert_eq!(back, digits, "q = {q}, byte = {byte}");
        }
    }

    #[test]
    fn every_block_element_has_exactly_one_digit() {
        let mut seen = [0u8; BLOCK];
        for b in 0..CODE_BYTES {
            for k in 0..5 {
                if let Some(e) = element(b, k) {
                    seen[e] += 1;
                }
            }
        }
        assert!(seen.iter().all(|&c| c == 1));
    }

    #[test]
    fn hand_derived_bytes_match_ggml_arithmetic() {
        // ggml: q = 2*81 + 1*27 + 1*9 + 1*3 + 1 = 202; (202*256 + 242) / 243 = 213.
        assert_eq!(encode_trits([2, 1, 1, 1, 1]), 213);
        // All zeros: q = 121 -> 128; qh (four digits 1, then *3): q = 120 -> 127.
        assert_eq!(encode_trits([1, 1, 1, 1, 1]), 128);
        assert_eq!(encode_trits([1, 1, 1, 1, 0]), 127);
        // 200 = encode(2,1,0,0,0): 200*3 >> 8 = 2; (200*3 mod 256 = 88)*3 >> 8 = 1; ...
        assert_eq!(encode_trits([2, 1, 0, 0, 0]), 200);
        assert_eq!(decode_trit(200, 0), 2);
        assert_eq!(decode_trit(200, 1), 1);
        assert_eq!(decode_trit(200, 2), 0);
    }
}
