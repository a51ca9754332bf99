//! ggml's Q8_0 and Q6_K: how embeddings and output weights ship in GGUF files.
//!
//! Both follow ggml's reference code (`ggml-quants.c`) to the bit:
//! - Q8_0: blocks of 32 as `{ f16 d; i8 qs[32] }` (34 bytes); `x = d * q`. Quantizing uses
//!   `d = amax / 127`, `q = round(x / d)` (half away from zero) with the f32 `d`, then stores
//!   `d` as f16, as `quantize_row_q8_0_ref` does.
//! - Q6_K: super-blocks of 256 as `{ u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d }`
//!   (210 bytes); `x = d * scale * (q - 32)` with 6-bit `q` from a nibble of `ql` and two
//!   bits of `qh` (see [`dequantize_q6_k_into`]).
//!
//! Sizes count elements of the flattened tensor; a 2-D tensor must also have whole blocks
//! per row (`cols` a multiple of the block), which ggml requires.

use super::format::read_f16;
use bitnet_core::{Error, Result};
use half::f16;

/// Elements per Q8_0 block.
pub const Q8_0_BLOCK: usize = 32;
/// Bytes per Q8_0 block.
pub const Q8_0_BLOCK_BYTES: usize = 34;
/// Elements per Q6_K super-block.
pub const Q6_K_BLOCK: usize = 256;
/// Bytes per Q6_K super-block.
pub const Q6_K_BLOCK_BYTES: usize = 210;

/// Checks that `n` is whole blocks and returns the byte size.
fn blocks(format: &'static str, n: usize, block: usize, block_bytes: usize) -> Result<usize> {
    if !n.is_multiple_of(block) {
        return Err(Error::shape(format!(
            "{format}: {n} elements is not a multiple of the block of {block}"
        )));
    }
    Ok(n / block * block_bytes)
}

/// Checks a buffer against `n` elements of a block format.
fn check_buffer(
    format: &'static str,
    bytes: &[u8],
    n: usize,
    block: usize,
    block_bytes: usize,
) -> Result<()> {
    let want = blocks(format, n, block, block_bytes)?;
    if bytes.len() != want {
        return Err(Error::shape(format!(
            "{format}: buffer has {} bytes, expected {want} for {n} elements",
            bytes.len()
        )));
    }
    Ok(())
}

/// Bytes of `n` elements in Q8_0.
pub fn q8_0_size(n: usize) -> Result<usize> {
    blocks("Q8_0", n, Q8_0_BLOCK, Q8_0_BLOCK_BYTES)
}

/// Bytes of `n` elements in Q6_K.
pub fn q6_k_size(n: usize) -> Result<usize> {
    blocks("Q6_K", n, Q6_K_BLOCK, Q6_K_BLOCK_BYTES)
}

/// Quantizes f32 values to Q8_0 bytes exactly as ggml's `quantize_row_q8_0_ref`.
pub fn quantize_q8_0(x: &[f32]) -> Result<Vec<u8>> {
    let mut out = vec![0u8; q8_0_size(x.len())?];
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        return Err(Error::invalid(format!("Q8_0: value {} at index {i} is not finite", x[i])));
    }
    for (src, dst) in x.chunks_exact(Q8_0_BLOCK).zip(out.chunks_exact_mut(Q8_0_BLOCK_BYTES)) {
        let amax = src.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        dst[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
        for (q, &v) in dst[2..].iter_mut().zip(src) {
            *q = ((v * id).round() as i8) as u8;
        }
    }
    Ok(out)
}

/// Dequantizes Q8_0 bytes into `out` (its length is the element count).
pub fn dequantize_q8_0_into(bytes: &[u8], out: &mut [f32]) -> Result<()> {
    check_buffer("Q8_0", bytes, out.len(), Q8_0_BLOCK, Q8_0_BLOCK_BYTES)?;
    for (src, dst) in bytes.chunks_exact(Q8_0_BLOCK_BYTES).zip(out.chunks_exact_mut(Q8_0_BLOCK)) {
        let d = read_f16(src, 0);
        for (y, &q) in dst.iter_mut().zip(&src[2..]) {
            *y = f32::from(q as i8) * d;
        }
    }
    Ok(())
}

/// Dequantizes `n` elements of Q8_0 bytes.
pub fn dequantize_q8_0(bytes: &[u8], n: usize) -> Result<Vec<f32>> {
    let mut out = vec![0.0; n];
    dequantize_q8_0_into(bytes, &mut out)?;
    Ok(out)
}

/// Dequantizes Q6_K bytes into `out` (its length is the element count), as ggml's
/// `dequantize_row_q6_K`: each 128-element half `h` of a super-block uses `ql[64h..]`,
/// `qh[32h..]`, `scales[8h..]`; for `l < 32` and `is = l / 16`,
/// element `l` = low nibble of `ql[l]` + bits 0-1 of `qh[l]` (scale `is`),
/// `l+32` = low nibble of `ql[l+32]` + bits 2-3 (scale `is+2`),
/// `l+64` = high nibble of `ql[l]` + bits 4-5 (scale `is+4`),
/// `l+96` = high nibble of `ql[l+32]` + bits 6-7 (scale `is+6`); value `d * scale * (q - 32)`.
pub fn dequantize_q6_k_into(bytes: &[u8], out: &mut [f32]) -> Result<()> {
    check_buffer("Q6_K", bytes, out.len(), Q6_K_BLOCK, Q6_K_BLOCK_BYTES)?;
    for (src, dst) in bytes.chunks_exact(Q6_K_BLOCK_BYTES).zip(out.chunks_exact_mut(Q6_K_BLOCK)) {
        let (ql, rest) = src.split_at(128);
        let (qh, rest) = rest.split_at(64);
        let scales = &rest[..16];
        let d = read_f16(rest, 16);
        for h in 0..2 {
            let (ql, qh, sc) = (&ql[64 * h..], &qh[32 * h..], &scales[8 * h..]);
            let y = &mut dst[128 * h..128 * (h + 1)];
            for l in 0..32 {
                let is = l / 16;
                let q = [
                    (ql[l] & 0xF) | ((qh[l] & 3) << 4),
                    (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4),
                    (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4),
                    (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4),
                ];
                for (g, &qg) in q.iter().enumerate() {
                    let s = f32::from(sc[is + 2 * g] as i8);
                    y[l + 32 * g] = d * s * f32::from(qg as i8 - 32);
                }
            }
        }
    }
    Ok(())
}

/// Dequantizes `n` elements of Q6_K bytes.
pub fn dequantize_q6_k(bytes: &[u8], n: usize) -> Result<Vec<f32>> {
    let mut out = vec![0.0; n];
    dequantize_q6_k_into(bytes, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_quantize_matches_ggml_by_hand() {
        // amax 127 -> d = 1, id = 1: q = roundf(x), halves away from zero.
        let mut x = [0.0f32; 32];
        x[0] = 127.0;
        x[1] = -63.5;
        x[2] = 2.5;
        x[3] = -0.49;
        let b = quantize_q8_0(&x).unwrap();
        assert_eq!(&b[..2], &f16::from_f32(1.0).to_le_bytes());
        assert_eq!(b[2..6], [127u8, (-64i8) as u8, 3, 0]);
        assert_eq!(dequantize_q8_0(&b, 32).unwrap()[1], -64.0);
    }

    #[test]
    fn q8_0_all_zero_block_has_zero_scale() {
        let b = quantize_q8_0(&[0.0; 64]).unwrap();
        assert!(b.iter().all(|&v| v == 0));
    }

    #[test]
    fn q8_0_refuses_non_finite_and_partial_blocks() {
        let mut x = [0.0f32; 32];
        x[5] = f32::NAN;
        assert!(matches!(quantize_q8_0(&x), Err(Error::InvalidArgument(_))));
        assert!(matches!(quantize_q8_0(&[0.0; 31]), Err(Error::Shape(_))));
        assert!(matches!(dequantize_q8_0(&[0; 33], 32), Err(Error::Shape(_))));
    }

    #[test]
    fn q6_k_all_zero_codes_give_minus_32_times_scale() {
        let mut b = vec![0u8; Q6_K_BLOCK_BYTES];
        for (i, s) in b[192..208].iter_mut().enumerate() {
            *s = (i as i8 - 8) as u8;
        }
        b[208..].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        let y = dequantize_q6_k(&b, 256).unwrap();
        // Element e uses scale index e / 16.
        for (e, &v) in y.iter().enumerate() {
            assert_eq!(v, 0.5 * ((e / 16) as f32 - 8.0) * -32.0);
        }
    }
}
